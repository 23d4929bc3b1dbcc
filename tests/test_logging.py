"""Worker stdout/stderr streamed to the driver's stdout/stderr with a
``(task_name pid=1234)`` prefix on every line; log_to_driver=False turns it off."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import driver_env, poll, write_script

import volley


class Output:
    """Accumulates what capfd captured, so a test can poll for lines to arrive."""

    def __init__(self, capfd):
        self.capfd = capfd
        self.out = ""
        self.err = ""

    def read(self):
        out, err = self.capfd.readouterr()
        self.out += out
        self.err += err

    def wait_for(self, pattern, stream="out", timeout=5.0):
        def found():
            self.read()
            return re.search(pattern, getattr(self, stream), re.MULTILINE)

        match = poll(found, timeout=timeout)
        assert match, f"{pattern!r} not in driver std{stream} after {timeout}s:\n{self.out}"
        return match


@pytest.fixture
def output(capfd):
    return Output(capfd)


@volley.remote
def say_hello(text):
    print(text)
    return os.getpid()


@volley.remote
def complain(text):
    print(text, file=sys.stderr)
    return os.getpid()


@volley.remote
def multi_line():
    print("first line\nsecond line")
    print("third line")
    return os.getpid()


@volley.remote
def print_then_wait(text, path, timeout=60.0):
    print(text)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@volley.remote
def print_then_crash(text):
    print(text, flush=True)
    os._exit(1)


# --------------------------------------------------------------------------- streaming on


@pytest.mark.usefixtures("volley_2cpu")
def test_stdout_line_prefixed_with_task_name_and_pid(output):
    pid = volley.get(say_hello.remote("hello from task"))
    match = output.wait_for(r"^\(say_hello pid=(\d+)\) hello from task$")
    assert int(match.group(1)) == pid
    assert pid != os.getpid()


@pytest.mark.usefixtures("volley_2cpu")
def test_stderr_goes_to_driver_stderr(output):
    pid = volley.get(complain.remote("something went wrong"))
    match = output.wait_for(r"^\(complain pid=(\d+)\) something went wrong$", stream="err")
    assert int(match.group(1)) == pid
    assert "something went wrong" not in output.out


@pytest.mark.usefixtures("volley_2cpu")
def test_every_line_is_prefixed(output):
    pid = volley.get(multi_line.remote())
    output.wait_for(r"third line$")
    lines = [ln for ln in output.out.splitlines() if "line" in ln]
    assert lines == [
        f"(multi_line pid={pid}) first line",
        f"(multi_line pid={pid}) second line",
        f"(multi_line pid={pid}) third line",
    ]


@pytest.mark.usefixtures("volley_2cpu")
def test_prefix_uses_name_from_options(output):
    pid = volley.get(say_hello.options(name="custom_name").remote("named output"))
    match = output.wait_for(r"^\(custom_name pid=(\d+)\) named output$")
    assert int(match.group(1)) == pid


@pytest.mark.usefixtures("volley_2cpu")
def test_output_streams_while_task_still_runs(output, tmp_path):
    release = tmp_path / "release"
    ref = print_then_wait.remote("still running", str(release))
    try:
        output.wait_for(r"^\(print_then_wait pid=\d+\) still running$")
        assert volley.wait([ref], num_returns=1, timeout=0) == ([], [ref])
    finally:
        release.touch()
    assert volley.get(ref, timeout=60) > 0


@pytest.mark.usefixtures("volley_2cpu")
def test_output_of_many_tasks_all_arrives(output):
    pids = volley.get([say_hello.remote(f"line number {i}") for i in range(30)])
    output.wait_for(r"line number 29$")
    poll(lambda: (output.read(), output.out.count("line number") >= 30)[1], timeout=5)
    found = re.findall(r"^\(say_hello pid=(\d+)\) line number (\d+)$", output.out, re.MULTILINE)
    assert sorted(int(i) for _, i in found) == list(range(30))
    assert {int(p) for p, _ in found} == set(pids)


@pytest.mark.usefixtures("volley_2cpu")
def test_output_of_task_whose_worker_crashes_arrives(output):
    ref = print_then_crash.options(max_retries=0).remote("last words")
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(ref, timeout=60)
    output.wait_for(r"^\(print_then_crash pid=\d+\) last words$")


@pytest.mark.usefixtures("volley_2cpu")
def test_driver_output_is_not_prefixed(output):
    print("plain driver line")
    volley.get(say_hello.remote("task line"))
    output.wait_for(r"task line$")
    assert "plain driver line" in output.out.splitlines()


# --------------------------------------------------------------------------- streaming off


@pytest.mark.usefixtures("no_volley")
def test_log_to_driver_false_suppresses_worker_output(output):
    volley.init(num_cpus=2, log_to_driver=False)
    pid = volley.get(say_hello.remote("should stay silent"))
    assert volley.get(complain.remote("also silent")) > 0
    assert pid != os.getpid()
    # Positive control within the same test: the driver's own output is still captured.
    print("driver still talks")
    time.sleep(1.0)  # give a (wrongly) relayed line time to arrive
    output.read()
    assert "driver still talks" in output.out
    assert "should stay silent" not in output.out + output.err
    assert "also silent" not in output.out + output.err
    volley.shutdown()


# --------------------------------------------------------------------------- diagnostics


def run_driver(tmp_path, body: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs ``body`` as a driver with its own session directory; (the process, that dir)."""
    session = tmp_path / "session"
    script = write_script(tmp_path, body)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={**driver_env(), "VOLLEY_SESSION_DIR": str(session), **env},
    )
    return proc, session


DIAGNOSED_DRIVER = """
import volley
volley.init(num_cpus=1)

@volley.remote
def inc(x):
    return x + 1

assert volley.get([inc.remote(i) for i in range(10)]) == list(range(1, 11))
print("log:", volley._core.diagnostics_file())
volley.shutdown()
"""


@pytest.mark.usefixtures("no_volley")
def test_node_diagnostics_go_to_a_log_file_not_the_terminal(tmp_path):
    # The hook makes every use of the node's state lock "slow": a backtrace is written (at
    # most one per 10 s), as a state lock really held for seconds would write one.
    proc, session = run_driver(tmp_path, DIAGNOSED_DRIVER, VOLLEY_TEST_SLOW_LOCK_MS="0")
    assert proc.returncode == 0, proc.stderr
    assert "state lock" not in proc.stderr and "backtrace" not in proc.stderr.lower()
    assert proc.stderr.strip() == ""
    logs = session / "logs"
    files = list(logs.iterdir())
    assert [str(f) for f in files] == [proc.stdout.split("log: ")[1].strip()]
    text = files[0].read_text()
    assert re.match(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARN\] volley: the node's state lock was "
        r"held for ",
        text,
    ), text[:300]
    assert text.count("state lock was held") == 1  # rate-limited
    assert os.stat(files[0]).st_mode & 0o777 == 0o600
    assert os.stat(logs).st_mode & 0o777 == 0o700


@pytest.mark.usefixtures("no_volley")
def test_a_driver_without_diagnostics_writes_no_log_file(tmp_path):
    proc, session = run_driver(tmp_path, DIAGNOSED_DRIVER)
    assert proc.returncode == 0, proc.stderr
    assert "log: None" in proc.stdout
    assert not (session / "logs").exists()


@pytest.mark.usefixtures("no_volley")
def test_diagnostics_are_not_written_into_a_log_dir_others_can_enter(tmp_path):
    logs = tmp_path / "session" / "logs"
    logs.mkdir(parents=True)
    os.chmod(logs, 0o777)
    proc, _ = run_driver(tmp_path, DIAGNOSED_DRIVER, VOLLEY_TEST_SLOW_LOCK_MS="0")
    assert proc.returncode == 0, proc.stderr
    assert list(logs.iterdir()) == []
    # Said once, then the diagnostic goes to stderr rather than being lost.
    assert f"cannot write diagnostics to {logs}" in proc.stderr
    assert "need 700" in proc.stderr
    assert "state lock was held" in proc.stderr


LARGE_FUNCTION_DRIVER = """
import volley
volley.init(num_cpus=1)
table = bytes(range(256)) * (48 * 1024)  # 12 MiB, captured by the function

@volley.remote
def lookup(i):
    return table[i]

assert volley.get([lookup.remote(i) for i in range(3)]) == [0, 1, 2]
assert volley.get(lookup.remote(5)) == 5
volley.shutdown()
"""


@pytest.mark.usefixtures("no_volley")
def test_a_large_function_warns_once_on_the_terminal(tmp_path):
    proc, _ = run_driver(tmp_path, LARGE_FUNCTION_DRIVER)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "when pickled" in line]
    assert len(warnings) == 1, proc.stderr
    assert (
        "driver.py:10: UserWarning: function 'lookup' is 13 MB when pickled (it captures "
        "'table', 13 MB): put large data with volley.put and pass the ref"
    ) in warnings[0]


INTERLEAVED_DRIVER = """
import sys
import volley
volley.init(num_cpus=1)

@volley.remote
def chatter(n):
    for i in range(n):
        print("worker says", i)
    return n

ref = chatter.remote(3000)
for i in range(3000):
    print("driver", "line", i, "ends")  # four writes each, were stdout left unbuffered
assert volley.get(ref) == 3000
print("stdout", sys.stdout.line_buffering, sys.stdout.write_through)
volley.shutdown()
"""


@pytest.mark.usefixtures("no_volley")
def test_a_workers_lines_never_split_an_unbuffered_drivers_line(tmp_path):
    # driver_env sets PYTHONUNBUFFERED: each piece of a print would be its own write, and the
    # worker's lines, written to the same pipe, could land between them.
    proc, _ = run_driver(tmp_path, INTERLEAVED_DRIVER)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    mine = [ln for ln in lines if not ln.startswith("(chatter pid=")]
    assert mine[:-1] == [f"driver line {i} ends" for i in range(3000)], [
        ln for ln in mine if not re.fullmatch(r"driver line \d+ ends", ln)
    ][:5]
    assert mine[-1] == "stdout True False"
    theirs = [ln.split(") ", 1)[1] for ln in lines if ln.startswith("(chatter pid=")]
    assert theirs == [f"worker says {i}" for i in range(3000)]
