"""Jobs: run a driver program on a cluster's head, under its supervision (``volley job ...``).

A job is a command (``python script.py args``) that the head runs for you: its working
directory is zipped here and unpacked on the head, its environment variables set, its output
kept in the head's session directory (``jobs/<id>.log``) and its status too (``jobs/<id>.json``),
so both outlive the job. The driver finds the cluster through ``VOLLEY_ADDRESS`` and its id in
``VOLLEY_JOB_ID``; ``stop`` ends it (SIGTERM to its process group, SIGKILL 5 s later), and with it
its tasks and actors (detached actors stay).

Each call asks the head at ``address`` (``"HOST:PORT"``; by default ``VOLLEY_ADDRESS``, else the
head started on this machine), with the cluster token (``VOLLEY_TOKEN``, else the session's token
file) and TLS certificate if any; no ``volley.init()`` is needed.

Example (needs a running head; see docs/jobs.md)::

    >>> from volley import job  # doctest: +SKIP
    >>> jid = job.submit("python script.py", working_dir=".")  # doctest: +SKIP
    >>> job.wait(jid, timeout=60)["status"]  # doctest: +SKIP
    'SUCCEEDED'
    >>> print(job.logs(jid))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import _cluster, _core, _runtime_dir, _runtime_env

__all__ = [
    "MAX_WORKING_DIR_BYTES",
    "TERMINAL",
    "JobSubmissionClient",
    "info",
    "list_jobs",
    "logs",
    "recorded_jobs",
    "status",
    "stop",
    "submit",
    "tail",
    "wait",
]

#: The statuses a job does not leave.
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# How often ``tail`` and ``wait`` ask the head again while nothing new came.
_POLL_S = 0.2

#: The most bytes of a zipped working directory a job ships (the head checks it too:
#: ``volley_proto::MAX_JOB_PACKAGE``).
MAX_WORKING_DIR_BYTES = 64 << 20

# The working directory goes to the head in chunks, each a request of its own after the
# handshake (whose deadline is 5 s): a chunk starts at 64 KiB and doubles while one takes under
# half a second, halves while one takes over 1.5 s, between 8 KiB and 4 MiB
# (``volley_proto::MAX_JOB_UPLOAD_CHUNK``).
_CHUNK_MIN, _CHUNK_START, _CHUNK_MAX = 8 << 10, 64 << 10, 4 << 20


def _resources(
    num_cpus: float | None, num_gpus: float | None, resources: dict[str, float] | None
) -> list[tuple[str, int]]:
    """The entrypoint's resources as the head takes them: (name, thousandths)."""
    if not (resources is None or isinstance(resources, dict)):
        raise TypeError("entrypoint_resources must map a resource's name to an amount")
    want: dict[str, Any] = dict(resources or {})
    for name, amount in (("CPU", num_cpus), ("GPU", num_gpus)):
        if amount is not None:
            if name in want:
                raise ValueError(f"give {name} once: as entrypoint_num_{name.lower()}s")
            want[name] = amount
    out = []
    for name, amount in sorted(want.items()):
        if not isinstance(name, str) or not name:
            raise ValueError(f"entrypoint resources: {name!r} cannot name a resource")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"entrypoint resources: {name} must be a number >= 0, not {amount!r}")
        milli = round(amount * 1000)
        if milli:
            out.append((name, milli))
    return out


def _pip_args(pip: Any) -> list[str]:
    """``runtime_env["pip"]`` as ``pip install`` arguments: a list of requirements (options
    such as ``--no-index`` may be among them), or ``{"packages": [...],
    "pip_install_options": [...]}``."""
    if isinstance(pip, dict):
        unknown = set(pip) - {"packages", "pip_install_options"}
        if unknown:
            raise ValueError(
                f"runtime_env pip: unknown key(s) {sorted(unknown)}; it takes packages and "
                "pip_install_options"
            )
        pip = list(pip.get("pip_install_options") or []) + list(pip.get("packages") or [])
    if not isinstance(pip, (list, tuple)) or not all(isinstance(a, str) and a for a in pip):
        raise TypeError("runtime_env pip must be a list of requirements (non-empty str)")
    return list(pip)


def _entrypoint(entrypoint: str | Sequence[str]) -> tuple[list[str], str]:
    """(argv, the command line to show) from a shell-like string or a list of arguments."""
    if isinstance(entrypoint, str):
        argv = shlex.split(entrypoint)
        shown = entrypoint
    elif isinstance(entrypoint, Sequence) and all(isinstance(a, str) for a in entrypoint):
        argv = list(entrypoint)
        shown = shlex.join(argv)
    else:
        raise TypeError("entrypoint must be a command line (str) or a list of str")
    if not argv:
        raise ValueError("a job needs an entrypoint, e.g. 'python script.py'")
    return argv, shown


def _pack(working_dir: str | os.PathLike | None) -> tuple[str, bytes] | None:
    if working_dir is None:
        return None
    root = Path(os.fspath(working_dir)).resolve()
    if not root.is_dir():
        raise ValueError(f"working_dir {os.fspath(working_dir)!r} is not a directory")
    data = _runtime_env._zip_dir(root)
    if len(data) > MAX_WORKING_DIR_BYTES:
        raise ValueError(
            f"working_dir {os.fspath(working_dir)!r} packs to {len(data) >> 20} MiB, over the "
            f"{MAX_WORKING_DIR_BYTES >> 20} MiB a job submission carries; leave large data out "
            "of it (volley.put, shared storage)"
        )
    return hashlib.sha256(data).hexdigest()[:32], data


class JobSubmissionClient:
    """Submits and watches jobs on the cluster whose head is at ``address``.

    ``address``, ``token`` and ``tls_cert`` default as ``volley status`` finds them
    (``VOLLEY_ADDRESS``/``VOLLEY_TOKEN``/``VOLLEY_TLS_CERT``, else what the head started on this
    machine recorded). A head that cannot be reached is a ``ConnectionError`` that names the
    address; an unknown job id or a bad submission, a ``ValueError``.

    Example::

        >>> client = JobSubmissionClient("127.0.0.1:6380")  # doctest: +SKIP
        >>> jid = client.submit_job("python -c 'print(1)'")  # doctest: +SKIP
        >>> client.wait(jid, timeout=30)["status"]  # doctest: +SKIP
        'SUCCEEDED'
    """

    def __init__(
        self, address: str | None = None, *, token: str | None = None, tls_cert: str | None = None
    ) -> None:
        self.address = _cluster.resolve_address(address or "auto")
        self._token = _cluster.resolve_token(token)
        self._tls = _cluster.resolve_tls_cert(tls_cert)

    def _conn(self) -> tuple[str, str, str | None]:
        return self.address, self._token, self._tls

    def _upload(self, hash_: str, data: bytes) -> None:
        """Sends a zipped working directory in chunks sized to the link (see _CHUNK_*); the
        head keeps what it got, so each request goes on from where the head is."""
        total, have, chunk = len(data), -1, _CHUNK_START
        while have < total:
            offset = max(have, 0)
            piece = data[offset : offset + chunk] if have >= 0 else b""
            t = time.monotonic()
            have = _core.job_upload(*self._conn(), hash_, total, offset, piece)
            took = time.monotonic() - t
            if piece and took < 0.5:
                chunk = min(chunk * 2, _CHUNK_MAX)
            elif took > 1.5:
                chunk = max(chunk // 2, _CHUNK_MIN)

    def submit_job(
        self,
        entrypoint: str | Sequence[str],
        *,
        working_dir: str | os.PathLike | None = None,
        runtime_env: dict[str, Any] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_resources: dict[str, float] | None = None,
    ) -> str:
        """Starts ``entrypoint`` on the head; gives the job's id.

        ``runtime_env`` takes ``working_dir``, ``env_vars`` (as ``volley.init``'s does) and
        ``pip`` (a list of requirements: the head runs the job in a virtual environment with
        them installed, made once per list). The working directory is uploaded first, in
        chunks. ``entrypoint_num_cpus``/``_gpus``/``_resources`` are what the driver holds on
        the head's node while it runs; the job is PENDING until the jobs running there leave
        it them.
        """
        argv, shown = _entrypoint(entrypoint)
        env = dict(runtime_env or {})
        unknown = set(env) - {"working_dir", "env_vars", "pip"}
        if unknown:
            raise ValueError(
                f"runtime_env of a job: unknown key(s) {sorted(unknown)}; a job takes "
                "working_dir, env_vars and pip (its tasks can have a runtime_env of their own)"
            )
        resources = _resources(entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_resources)
        pip = _pip_args(env["pip"]) if env.get("pip") is not None else []
        if working_dir is not None and env.get("working_dir") is not None:
            raise ValueError("give working_dir once: as an argument or in runtime_env")
        env_vars = env.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise TypeError("runtime_env: env_vars must map str to str")
        if submission_id is not None and not isinstance(submission_id, str):
            raise TypeError("submission_id must be a str")
        package = _pack(working_dir if working_dir is not None else env.get("working_dir"))
        if package is not None:
            self._upload(*package)
        row = _core.job_submit(
            *self._conn(),
            argv,
            shown,
            submission_id,
            package[0] if package else None,
            sorted(env_vars.items()),
            resources,
            pip,
        )
        return row["job_id"]

    def get_job_info(self, job_id: str) -> dict[str, Any]:
        """The job's row: ``job_id, status, entrypoint, driver_pid, start_ms, end_ms,
        exit_code, message, driver_node``."""
        return _core.job_status(*self._conn(), job_id)

    def get_job_status(self, job_id: str) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
        return self.get_job_info(job_id)["status"]

    def get_job_logs(self, job_id: str) -> str:
        """Everything the job's driver printed so far (stdout and stderr)."""
        return b"".join(self._chunks(job_id, follow=False)).decode(errors="replace")

    def tail_job_logs(self, job_id: str) -> Iterator[str]:
        """The job's output as it comes, until the job is over and all of it was given."""
        for chunk in self._chunks(job_id, follow=True):
            yield chunk.decode(errors="replace")

    def _chunks(self, job_id: str, follow: bool) -> Iterator[bytes]:
        offset = 0
        while True:
            data, offset, done = _core.job_logs(*self._conn(), job_id, offset)
            if data:
                yield data
                continue
            if done or not follow:
                return
            time.sleep(_POLL_S)

    def stop_job(self, job_id: str) -> bool:
        """Stops the job; False if it was over already."""
        if self.get_job_status(job_id) in TERMINAL:
            return False
        # (A PENDING job is STOPPED at once: its answer is terminal already.)
        _core.job_stop(*self._conn(), job_id)
        return True

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job the head knows, oldest first: submitted jobs and the drivers that joined
        by themselves (``entrypoint`` None), as rows like ``get_job_info``'s."""
        return _core.job_list(*self._conn())

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Waits until the job is over; its row. ``TimeoutError`` (saying its status) after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            row = self.get_job_info(job_id)
            if row["status"] in TERMINAL:
                return row
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} is still {row['status']} after {timeout} s "
                    f"(head at {self.address})"
                )
            time.sleep(_POLL_S)


def submit(
    entrypoint: str | Sequence[str],
    *,
    address: str | None = None,
    working_dir: str | os.PathLike | None = None,
    runtime_env: dict[str, Any] | None = None,
    submission_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    entrypoint_resources: dict[str, float] | None = None,
) -> str:
    """Runs ``entrypoint`` as a job on the cluster's head; its id (see ``JobSubmissionClient``).

    Example::

        >>> volley.job.submit("python train.py --epochs 3", working_dir=".",
        ...                   entrypoint_num_cpus=1)  # doctest: +SKIP
        'job-3f9a1c2b4d5e'
    """
    return JobSubmissionClient(address).submit_job(
        entrypoint,
        working_dir=working_dir,
        runtime_env=runtime_env,
        submission_id=submission_id,
        entrypoint_num_cpus=entrypoint_num_cpus,
        entrypoint_num_gpus=entrypoint_num_gpus,
        entrypoint_resources=entrypoint_resources,
    )


def info(job_id: str, *, address: str | None = None) -> dict[str, Any]:
    """The job's row (see ``JobSubmissionClient.get_job_info``).

    Example::

        >>> volley.job.info("job-3f9a1c2b4d5e")["exit_code"]  # doctest: +SKIP
        0
    """
    return JobSubmissionClient(address).get_job_info(job_id)


def status(job_id: str, *, address: str | None = None) -> str:
    """The job's status: ``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``.

    Example::

        >>> volley.job.status("job-3f9a1c2b4d5e")  # doctest: +SKIP
        'RUNNING'
    """
    return JobSubmissionClient(address).get_job_status(job_id)


def logs(job_id: str, *, address: str | None = None) -> str:
    """What the job's driver printed so far.

    Example::

        >>> print(volley.job.logs("job-3f9a1c2b4d5e"))  # doctest: +SKIP
    """
    return JobSubmissionClient(address).get_job_logs(job_id)


def tail(job_id: str, *, address: str | None = None) -> Iterator[str]:
    """The job's output as it comes, until the job ends.

    Example::

        >>> for text in volley.job.tail("job-3f9a1c2b4d5e"):  # doctest: +SKIP
        ...     print(text, end="")
    """
    return JobSubmissionClient(address).tail_job_logs(job_id)


def stop(job_id: str, *, address: str | None = None) -> bool:
    """Stops the job (its driver, tasks and actors); False if it was over already.

    Example::

        >>> volley.job.stop("job-3f9a1c2b4d5e")  # doctest: +SKIP
        True
    """
    return JobSubmissionClient(address).stop_job(job_id)


def list_jobs(*, address: str | None = None) -> list[dict[str, Any]]:
    """Every job of the cluster, oldest first.

    Example::

        >>> [j["status"] for j in volley.job.list_jobs()]  # doctest: +SKIP
        ['SUCCEEDED', 'RUNNING']
    """
    return JobSubmissionClient(address).list_jobs()


def wait(job_id: str, timeout: float | None = None, *, address: str | None = None) -> dict:
    """Waits for the job to end; its row (``TimeoutError`` after ``timeout`` seconds).

    Example::

        >>> volley.job.wait("job-3f9a1c2b4d5e", timeout=600)["status"]  # doctest: +SKIP
        'SUCCEEDED'
    """
    return JobSubmissionClient(address).wait(job_id, timeout)


def recorded_jobs(session_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The jobs a head recorded in a session directory (``jobs/*.json`` and its history), and
    the drivers that wrote their own history (``init(history=True)``), oldest first: what
    ``volley job list`` shows when the head is not running any more.

    Example::

        >>> volley.job.recorded_jobs("/tmp/volley-1000")  # doctest: +SKIP
        [{'job_id': 'job-3f9a1c2b4d5e', 'status': 'SUCCEEDED', ...}]
    """
    base = Path(session_dir) if session_dir is not None else _cluster.session_dir()
    if not _runtime_dir.check_private_dir(base):
        return []
    # Keyed by (folder, id): each driver that wrote its own history (``history/driver-*/``,
    # ``init(history=True)``) is its own job "0".
    latest: dict[tuple[str, str], dict] = {}
    # The history (``history/jobs.jsonl``, the last line of an id wins) has the drivers that
    # joined by themselves too; a submitted job's own record is written last, so it wins.
    hist = base / "history"
    if _runtime_dir.check_private_dir(hist):
        drivers = sorted(d for d in hist.glob("driver-*") if _runtime_dir.check_private_dir(d))
        for folder in (hist, *drivers):
            for name in ("jobs.1.jsonl", "jobs.jsonl"):
                for line in (_runtime_dir.read_file(folder / name) or b"").splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash
                    if isinstance(row, dict) and "job_id" in row:
                        latest[(folder.name, row["job_id"])] = row
    jobs = base / "jobs"
    if _runtime_dir.check_private_dir(jobs):
        for p in sorted(jobs.glob("*.json")):
            try:
                row = json.loads(_runtime_dir.read_file(p) or b"")
            except (OSError, ValueError):
                continue
            if isinstance(row, dict) and "job_id" in row:
                latest[("history", row["job_id"])] = row
    rows = sorted(latest.values(), key=lambda r: (r.get("start_ms") or 0, r["job_id"]))
    return rows
