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

#: The most bytes of a zipped working directory a submission carries (the head checks it too:
#: ``volley_proto::MAX_JOB_PACKAGE``).
MAX_WORKING_DIR_BYTES = 64 << 20


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

    def submit_job(
        self,
        entrypoint: str | Sequence[str],
        *,
        working_dir: str | os.PathLike | None = None,
        runtime_env: dict[str, Any] | None = None,
        submission_id: str | None = None,
    ) -> str:
        """Starts ``entrypoint`` on the head; gives the job's id.

        ``runtime_env`` takes ``working_dir`` and ``env_vars`` (as ``volley.init``'s does).
        """
        argv, shown = _entrypoint(entrypoint)
        env = dict(runtime_env or {})
        unknown = set(env) - {"working_dir", "env_vars"}
        if unknown:
            raise ValueError(
                f"runtime_env of a job: unknown key(s) {sorted(unknown)}; a job takes "
                "working_dir and env_vars (its tasks can have a runtime_env of their own)"
            )
        if working_dir is not None and env.get("working_dir") is not None:
            raise ValueError("give working_dir once: as an argument or in runtime_env")
        env_vars = env.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise TypeError("runtime_env: env_vars must map str to str")
        package = _pack(working_dir if working_dir is not None else env.get("working_dir"))
        row = _core.job_submit(
            *self._conn(), argv, shown, submission_id, package, sorted(env_vars.items())
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
        return _core.job_stop(*self._conn(), job_id)["status"] not in TERMINAL

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
) -> str:
    """Runs ``entrypoint`` as a job on the cluster's head; its id (see ``JobSubmissionClient``).

    Example::

        >>> volley.job.submit("python train.py --epochs 3", working_dir=".")  # doctest: +SKIP
        'job-3f9a1c2b4d5e'
    """
    return JobSubmissionClient(address).submit_job(
        entrypoint, working_dir=working_dir, runtime_env=runtime_env, submission_id=submission_id
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
    """The jobs a head recorded in a session directory (``jobs/*.json``), oldest first: what
    ``volley job list`` shows when the head is not running any more.

    Example::

        >>> volley.job.recorded_jobs("/tmp/volley-1000")  # doctest: +SKIP
        [{'job_id': 'job-3f9a1c2b4d5e', 'status': 'SUCCEEDED', ...}]
    """
    base = Path(session_dir) if session_dir is not None else _cluster.session_dir()
    jobs = base / "jobs"
    if not _runtime_dir.check_private_dir(base) or not _runtime_dir.check_private_dir(jobs):
        return []
    rows = []
    for p in sorted(jobs.glob("*.json")):
        try:
            row = json.loads(_runtime_dir.read_file(p) or b"")
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and "job_id" in row:
            rows.append(row)
    rows.sort(key=lambda r: (r.get("start_ms") or 0, r["job_id"]))
    return rows
