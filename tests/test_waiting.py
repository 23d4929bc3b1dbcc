"""A task or actor that cannot start says why: a notice on the driver's stderr (once per function
or class), the message of ``GetTimeoutError``, and ``volley status`` on one machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import driver_env, finish_driver, read_line_with_prefix, start_driver, write_script

import volley

# Two 1-CPU actors hold both CPUs of a 2-CPU node; `f` then cannot start.
ACTORS_HOLD_THE_CPUS = """
import os, sys, time
os.environ["VOLLEY_WAIT_NOTICE_S"] = "1"
import volley

volley.init(num_cpus=2)

@volley.remote(num_cpus=1)
class Counter:
    def ping(self):
        return os.getpid()

@volley.remote(num_cpus=1)
def f(x):
    return x * 10

actors = [Counter.remote(), Counter.remote()]
volley.get([a.ping.remote() for a in actors], timeout=60)
"""


def _notices(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    return [line for line in lines if line.startswith("volley: ") and " has waited " in line]


def test_a_task_behind_two_actors_is_explained_once_and_in_the_timeout_error(tmp_path):
    script = write_script(
        tmp_path,
        ACTORS_HOLD_THE_CPUS
        + """
refs = [f.remote(1), f.remote(2)]
try:
    volley.get(refs[0], timeout=3)
    print("NO TIMEOUT")
except volley.GetTimeoutError as e:
    print("TIMEOUT", e)
# Both CPUs free up once the actors are gone: the tasks run.
for a in actors:
    volley.kill(a)
print("RESULTS", volley.get(refs, timeout=60))
""",
    )
    proc = start_driver(script)
    timeout = read_line_with_prefix(proc, "TIMEOUT ")
    assert "task 'f' is queued, waiting for 1 CPU" in timeout, timeout
    assert "all 2 CPUs are held by actor 'Counter' (2 of them)" in timeout, timeout
    assert read_line_with_prefix(proc, "RESULTS ") == "[10, 20]"
    _, err = finish_driver(proc)
    assert proc.returncode == 0, err
    notices = _notices(err)
    # One line for the function, not one per task, and not repeated while it waits.
    assert len(notices) == 1, err
    assert notices[0].startswith("volley: task 'f' has waited "), notices
    assert notices[0].endswith("s for 1 CPU: all 2 CPUs are held by actor 'Counter' (2 of them)"), (
        notices
    )


def test_a_placement_group_holding_the_cpus_is_named(tmp_path):
    script = write_script(
        tmp_path,
        """
import os
os.environ["VOLLEY_WAIT_NOTICE_S"] = "1"
import volley
from volley import placement_group, remove_placement_group

volley.init(num_cpus=2)
pg = placement_group([{"CPU": 1}, {"CPU": 1}], name="gang")
assert pg.wait(30)

@volley.remote
def g():
    return "ran"

ref = g.remote()
try:
    volley.get(ref, timeout=3)
    print("NO TIMEOUT")
except volley.GetTimeoutError as e:
    print("TIMEOUT", e)
remove_placement_group(pg)
print("RESULT", volley.get(ref, timeout=60))
""",
    )
    proc = start_driver(script)
    timeout = read_line_with_prefix(proc, "TIMEOUT ")
    assert "all 2 CPUs are held by placement group 'gang'" in timeout, timeout
    assert read_line_with_prefix(proc, "RESULT ") == "ran"
    _, err = finish_driver(proc)
    assert proc.returncode == 0, err
    notices = _notices(err)
    assert len(notices) == 1, err
    assert "task 'g' has waited" in notices[0]
    assert "all 2 CPUs are held by placement group 'gang' (" in notices[0], notices


def test_an_actor_that_cannot_start_is_noticed_by_its_class(tmp_path):
    script = write_script(
        tmp_path,
        ACTORS_HOLD_THE_CPUS
        + """
@volley.remote(num_cpus=1)
class Late:
    def ping(self):
        return "up"

late = Late.remote()
try:
    volley.get(late.ping.remote(), timeout=3)
    print("NO TIMEOUT")
except volley.GetTimeoutError as e:
    print("TIMEOUT", e)
volley.kill(actors[0])
print("LATE", volley.get(late.ping.remote(), timeout=60))
""",
    )
    proc = start_driver(script)
    timeout = read_line_with_prefix(proc, "TIMEOUT ")
    assert "its actor 'Late', which has not started" in timeout, timeout
    assert "held by actor 'Counter' (2 of them)" in timeout, timeout
    assert read_line_with_prefix(proc, "LATE ") == "up"
    _, err = finish_driver(proc)
    assert proc.returncode == 0, err
    notices = _notices(err)
    assert len(notices) == 1, err
    assert notices[0].startswith("volley: actor 'Late' has waited "), notices
    assert "to start, for 1 CPU: all 2 CPUs are held by actor 'Counter' (2 of them)" in notices[0]


def test_no_notice_when_turned_off_and_a_bad_setting_is_refused(tmp_path, no_volley, monkeypatch):
    script = write_script(
        tmp_path,
        ACTORS_HOLD_THE_CPUS.replace('NOTICE_S"] = "1"', 'NOTICE_S"] = "0"')
        + """
ref = f.remote(1)
try:
    volley.get(ref, timeout=2.5)
except volley.GetTimeoutError:
    print("TIMEOUT")
""",
    )
    proc = start_driver(script)
    read_line_with_prefix(proc, "TIMEOUT")
    _, err = finish_driver(proc)
    assert proc.returncode == 0, err
    assert _notices(err) == [], err
    monkeypatch.setenv("VOLLEY_WAIT_NOTICE_S", "soon")
    with pytest.raises(ValueError, match="VOLLEY_WAIT_NOTICE_S must be a number of seconds"):
        volley.init(num_cpus=1)
    assert not volley.is_initialized()


def _status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volley._cli", "status", *args],
        capture_output=True,
        text=True,
        env=driver_env(),
        timeout=60,
    )


def test_status_shows_a_drivers_own_node_with_its_queued_tasks(tmp_path):
    script = write_script(
        tmp_path,
        ACTORS_HOLD_THE_CPUS
        + """
refs = [f.remote(i) for i in range(4)]
print("QUEUED", flush=True)
sys.stdin.readline()
""",
    )
    proc = start_driver(script, stdin=subprocess.PIPE)
    try:
        read_line_with_prefix(proc, "QUEUED")
        out = _status()
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        mine = [i for i, line in enumerate(lines) if f"driver pid {proc.pid}:" in line]
        assert len(mine) == 1, out.stdout
        assert "CPU 2/2" in lines[mine[0]], out.stdout
        assert "4 task(s) waiting" in lines[mine[0]], out.stdout
        assert lines[mine[0] + 1].strip() == (
            "4 x task 'f': waiting for 1 CPU: all 2 CPUs are held by actor 'Counter' (2 of them)"
        ), out.stdout
        listed = json.loads(_status("--json").stdout)
        node = next(n for n in listed if n["pid"] == proc.pid)
        assert node["tasks_waiting"] == 4 and node["driver"] and node["num_cpus"] == 2
    finally:
        proc.stdin.close()
    _, err = finish_driver(proc)
    assert proc.returncode == 0, err


def test_in_a_cluster_the_node_that_queues_the_task_tells_the_driver(tmp_path):
    from test_cluster import Cluster

    c = Cluster(tmp_path)
    c.env["VOLLEY_WAIT_NOTICE_S"] = "1"
    try:
        c.start(True, "127.0.0.1", cpus=2)
        script = write_script(
            tmp_path,
            ACTORS_HOLD_THE_CPUS.replace(
                "volley.init(num_cpus=2)", f"volley.init(address={c.head!r}, token={c.token!r})"
            )
            + """
ref = f.remote(1)
try:
    volley.get(ref, timeout=3)
    print("NO TIMEOUT")
except volley.GetTimeoutError as e:
    print("TIMEOUT", e)
volley.kill(actors[0])
print("RESULT", volley.get(ref, timeout=60))
""",
        )
        proc = start_driver(script)
        timeout = read_line_with_prefix(proc, "TIMEOUT ")
        assert "task 'f' was sent to node 1" in timeout, timeout
        assert read_line_with_prefix(proc, "RESULT ") == "10"
        _, err = finish_driver(proc)
        assert proc.returncode == 0, err
        notices = _notices(err)
        assert len(notices) == 1, err
        assert re.fullmatch(
            r"volley: task 'f' has waited \d+ s on node 1 for 1 CPU: all 2 CPUs are held by "
            r"actor 'Counter' \(2 of them\)",
            notices[0],
        ), notices
    finally:
        c.stop()


# Sends a status query (one frame) to the abstract socket argv[1]; prints the answer's length,
# or "closed" if the node closed the connection without one.
RAW_STATUS_QUERY = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect("\\0" + sys.argv[1])
req = b"\\xffvolley-status\\xff"
try:
    s.sendall(struct.pack(">I", len(req)) + req)
    head = s.recv(4)
except OSError:  # closed at once (another user's connection is not even read)
    head = b""
print(struct.unpack(">I", head)[0] if len(head) == 4 else "closed")
"""


def _python_for_nobody() -> str | None:
    """An interpreter user ``nobody`` may run (this one may live under /root)."""
    for exe in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        try:
            ok = subprocess.run(
                [exe, "-I", "-S", "-c", "pass"], user=65534, group=65534, cwd="/",
                capture_output=True, timeout=30,
            )  # fmt: skip
        except OSError:
            continue
        if ok.returncode == 0:
            return exe
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to ask as another user")
def test_another_user_gets_no_status_from_a_drivers_node(tmp_path):
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no interpreter that user nobody may run")
    script = write_script(
        tmp_path,
        """
import sys
import volley
volley.init(num_cpus=1)
print("UP", flush=True)
sys.stdin.readline()
# The refusal is a diagnostic: in the driver's log file, not on its stderr.
log = volley._core.diagnostics_file()
print("LOG", open(log).read().replace(chr(10), " ") if log else "", flush=True)
""",
    )
    proc = start_driver(script, stdin=subprocess.PIPE)
    try:
        read_line_with_prefix(proc, "UP")
        listed = json.loads(_status("--json").stdout)
        name = next(n["socket"] for n in listed if n["pid"] == proc.pid)
        ask = [python, "-I", "-S", "-c", RAW_STATUS_QUERY, name]
        mine = subprocess.run(ask, capture_output=True, text=True, timeout=30)
        assert int(mine.stdout) > 0, mine.stderr
        theirs = subprocess.run(
            ask, capture_output=True, text=True, timeout=30, user=65534, group=65534, cwd="/"
        )
        assert theirs.stdout.strip() == "closed", (theirs.stdout, theirs.stderr)
    finally:
        proc.stdin.close()
    out, err = finish_driver(proc)
    assert proc.returncode == 0, err
    assert "refused a connection to the node from another user" in out, out
    assert "another user" not in err
