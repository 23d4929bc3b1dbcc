"""The start of a submitted job's driver on the head (``head/jobs.rs`` runs
``python -m volley._job_driver [--working-dir HASH] [--pip JSON --venvs DIR] -- ENTRYPOINT...``).

It unpacks the job's working directory with the runtime_env helpers (the package the head
wrote, checked against its hash), makes it the current directory and puts it first on
``PYTHONPATH``; with ``--pip`` it makes (or reuses) a virtual environment for that list of
``pip install`` arguments under ``--venvs`` (``python -m venv --system-site-packages``, keyed by
the list's hash; pip's output goes to the job's log) and runs the entrypoint's ``python`` there.
Then it replaces itself with the entrypoint (same process, so the head's ``driver_pid`` is the
driver's). ``python``/``python3`` as the program means this Python (or the venv's). An
entrypoint that cannot start exits with status 127 and says why on stderr (the job's log),
which the head shows as the job's message; a failed install exits with 1 and pip's error as
its last line. An entrypoint that holds GPUs (``--entrypoint-num-gpus``) sees them, and no
others, in ``CUDA_VISIBLE_DEVICES``.

Before it execs, it forks a watchdog into the job's process group: the head starts the driver
with a parent-death signal (SIGKILL when the head dies), and the watchdog, told of the driver's
death the same way, kills the rest of the group when the head is gone too, so nothing the job
started outlives a head that was SIGKILLed.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1

# How many times (50 ms apart) the watchdog looks whether the head is gone once the driver is.
_HEAD_GONE_CHECKS = 40


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), to tell it from a later
    process with the same id; None if it is gone or a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode(errors="replace").rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X", "x") else fields[19]


def _watchdog(head: int, head_started: str | None) -> None:
    """Forks the process that ends the job's process group when the driver dies and the head
    is gone as well (see the module documentation). The driver goes on at once."""
    driver = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    if os.fork() != 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGTERM})
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if os.getppid() == driver:
            # SIGTERM: `volley job stop` signals the whole group; the watchdog just goes.
            got = signal.sigwait({signal.SIGUSR1, signal.SIGTERM})
            if got == signal.SIGTERM:
                os._exit(0)
        # A driver killed by the head's death is told while the head is still exiting (the
        # signal comes when its spawner thread dies): look for a short while.
        for _ in range(_HEAD_GONE_CHECKS):
            if head_started is not None and _start_time(head) != head_started:
                os.killpg(0, signal.SIGKILL)
            time.sleep(0.05)
    finally:
        os._exit(0)


def _venv(venvs: Path, args: list[str]) -> str:  # noqa: PLR0915
    """The Python of the venv for ``pip install ARGS`` (made now if it is not there): its
    output goes to stdout (the job's log). Raises ``RuntimeError`` with pip's error."""
    from . import _runtime_dir

    key = hashlib.sha256(json.dumps(args).encode()).hexdigest()[:24]
    _runtime_dir.ensure_private_dir(venvs)
    home = venvs / key
    python = home / "bin" / "python"
    ready = home / ".volley-ready"
    lock_fd = os.open(
        venvs / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    with os.fdopen(lock_fd, "r+b") as lock:
        # One job makes a venv while the others with the same list wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            print(f"volley: using the virtual environment {home} (pip {args})", flush=True)
            return str(python)
        if home.is_symlink():
            raise RuntimeError(f"refusing to use {home}: it is a symlink")
        shutil.rmtree(home, ignore_errors=True)  # a half-made one
        print(f"volley: making a virtual environment for pip {args} in {home}", flush=True)
        subprocess.run(
            # Without pip of its own (fast, and Debian's Python may lack ensurepip): the pip
            # of this Python's environment, named below, installs into it.
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(home)],
            check=True,
            stdout=sys.stdout,
            stderr=subprocess.STDOUT,
        )
        # The venv sees the system's packages, not those of a venv this Python runs in
        # (volley's own, for one): name those too.
        site_dirs = subprocess.run(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        ours = [p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]
        volley_root = str(Path(__file__).resolve().parent.parent)
        Path(site_dirs, "_volley_parent.pth").write_text("\n".join([volley_root, *ours]) + "\n")
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
        print("volley: " + " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        last = error = ""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            if line.strip():
                last = line.strip()
                if last.lower().startswith("error"):
                    error = last
        sys.stdout.flush()
        if proc.wait() != 0:
            shutil.rmtree(home, ignore_errors=True)
            raise RuntimeError(f"pip could not install {args}: {error or last}")
        ready.write_bytes(b"")
        return str(python)


def _show_gpus() -> None:
    """The entrypoint sees the GPUs the head's node holds for it (``VOLLEY_JOB_GPUS``, their
    indices there) in ``CUDA_VISIBLE_DEVICES`` and no others, as a task does."""
    held = os.environ.pop("VOLLEY_JOB_GPUS", "")
    if held:
        from ._gpus import device_names

        ids = [int(i) for i in held.split(",") if i.isdigit()]
        names = device_names(ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names)


def main(argv: list[str]) -> int:
    working_dir = pip = venvs = None
    while argv[:1] in (["--working-dir"], ["--pip"], ["--venvs"]):
        if argv[0] == "--working-dir":
            working_dir = argv[1]
        elif argv[0] == "--pip":
            pip = json.loads(argv[1])
        else:
            venvs = Path(argv[1])
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("volley: the job has no entrypoint", file=sys.stderr)
        return 2
    head = os.getppid()
    _watchdog(head, _start_time(head))
    _show_gpus()
    python = sys.executable
    if pip:
        try:
            python = _venv(venvs or Path.cwd() / "venvs", pip)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            print(f"volley: the job's runtime_env pip failed: {e}", file=sys.stderr, flush=True)
            return 1
    if working_dir is not None:
        from . import _runtime_env

        try:
            wd = str(_runtime_env._unpacked(working_dir))
        except (OSError, RuntimeError) as e:
            print(f"volley: could not unpack the job's working directory: {e}", file=sys.stderr)
            return 127
        os.chdir(wd)
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = wd + (os.pathsep + path if path else "")
    if argv[0] in ("python", "python3"):
        argv = [python, *argv[1:]]
    elif pip:
        # Other programs find the venv's scripts (and its python) first.
        os.environ["PATH"] = str(Path(python).parent) + os.pathsep + os.environ.get("PATH", "")
        os.environ["VIRTUAL_ENV"] = str(Path(python).parent.parent)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"volley: the job's entrypoint {argv[0]!r} could not start: {e}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
