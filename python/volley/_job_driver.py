"""The start of a submitted job's driver on the head (``head/jobs.rs`` runs
``python -m volley._job_driver [--working-dir HASH] -- ENTRYPOINT...``).

It unpacks the job's working directory with the runtime_env helpers (the package the head
wrote, checked against its hash), makes it the current directory and puts it first on
``PYTHONPATH``, then replaces itself with the entrypoint (same process, so the head's
``driver_pid`` is the driver's). ``python``/``python3`` as the program means this Python, the
one volley runs with on the head. An entrypoint that cannot start exits with status 127 and
says why on stderr (the job's log), which the head shows as the job's message.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    working_dir = None
    if argv[:1] == ["--working-dir"]:
        working_dir, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("volley: the job has no entrypoint", file=sys.stderr)
        return 2
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
        argv = [sys.executable, *argv[1:]]
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"volley: the job's entrypoint {argv[0]!r} could not start: {e}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
