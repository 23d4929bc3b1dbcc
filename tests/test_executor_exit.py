"""volley.futures.Executor at interpreter exit (issue 16, bug 8), with real driver scripts: the
submitted calls finish (as with ProcessPoolExecutor), and a submit from an atexit handler raises
RuntimeError instead of starting volley again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HELPERS = """
import os, time

def slow_touch(path, delay):
    time.sleep(delay)
    open(path, "w").close()
    return path
"""


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "exit_helpers.py").write_text(HELPERS)
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submitted_calls_finish_at_interpreter_exit(tmp_path):
    # Longer than volley's own grace at shutdown (1 s), and more calls than workers.
    out = run_script(
        tmp_path,
        f"""
        import volley
        from volley.futures import Executor
        from exit_helpers import slow_touch

        volley.init(num_cpus=2)
        ex = Executor(max_workers=2)
        for i in range(4):
            ex.submit(slow_touch, {str(tmp_path)!r} + f"/done-{{i}}", 1.5)
        waiting = Executor(max_workers=1)
        waiting.submit(slow_touch, {str(tmp_path)!r} + "/after-shutdown", 1.5)
        waiting.shutdown(wait=False)
        print("leaving")
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "leaving"
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("done", "after")))
    assert made == ["after-shutdown", "done-0", "done-1", "done-2", "done-3"], out.stderr


def test_a_submit_from_an_atexit_handler_raises_runtime_error(tmp_path):
    out = run_script(
        tmp_path,
        """
        import atexit
        import volley

        @atexit.register
        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError as e:
                print("runtime-error:", e)
            print("initialised:", volley.is_initialized())

        from volley.futures import Executor

        ex = Executor(max_workers=2)
        assert ex.submit(id, 42).result() > 0
        """,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines == [
        "runtime-error: cannot schedule new futures after interpreter shutdown",
        "initialised: False",  # volley was not started again
    ], out.stderr
