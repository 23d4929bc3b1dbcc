"""A driver's own node (``volley.init()`` without a cluster) writes the history too when asked
(``init(history=True)`` or ``VOLLEY_HISTORY=1``): each driver into a directory of its own under
``<session>/history/`` (``driver-<pid>-<ms>/``, made exclusively, 0700), which
``volley list tasks --session DIR`` merges, after the drivers were SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest
from conftest import kill_driver, poll, read_line_with_prefix, start_driver, write_script

import volley

DRIVER = """
import time, volley
volley.init(num_cpus=1{arg})

@volley.remote
def {name}(x):
    return x

print("ran", sum(volley.get([{name}.remote(i) for i in range(5)])), flush=True)
time.sleep(600)
"""


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volley._cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _finished(session, env: dict) -> dict[str, int]:
    r = _cli("list", "tasks", "--session", str(session), "--json", "--limit", "100", env=env)
    if r.returncode != 0:
        return {}
    counts: dict[str, int] = {}
    for row in json.loads(r.stdout)["rows"]:
        if row["state"] == "FINISHED":
            counts[row["name"]] = counts.get(row["name"], 0) + 1
    return counts


def test_two_sigkilled_drivers_histories_are_kept_apart_and_read_together(tmp_path, monkeypatch):
    session = tmp_path / "session"
    monkeypatch.setenv("VOLLEY_SESSION_DIR", str(session))
    monkeypatch.delenv("VOLLEY_HISTORY", raising=False)
    quiet = start_driver(write_script(tmp_path, DRIVER.format(arg="", name="quiet"), "q.py"))
    first = start_driver(
        write_script(tmp_path, DRIVER.format(arg=", history=True", name="first"), "a.py")
    )
    monkeypatch.setenv("VOLLEY_HISTORY", "1")
    second = start_driver(write_script(tmp_path, DRIVER.format(arg="", name="second"), "b.py"))
    procs = [quiet, first, second]
    try:
        for p in procs:
            assert read_line_with_prefix(p, "ran") == "10"
        env = dict(os.environ)
        # Readable while the drivers run, within a writer's period or two.
        want = {"first": 5, "second": 5}
        assert poll(lambda: _finished(session, env) == want, 20), _finished(session, env)
        for p in (first, second):
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    finally:
        for p in procs:
            kill_driver(p)
    # After the SIGKILL: the rows stay, from two directories of their own (the driver without
    # the flag wrote none).
    assert _finished(session, env) == want
    dirs = sorted((session / "history").iterdir(), key=lambda d: int(d.name.split("-")[1]))
    assert [d.name.split("-")[1] for d in dirs] == [str(p) for p in sorted([first.pid, second.pid])]
    for d, p in zip(dirs, sorted([first, second], key=lambda p: p.pid)):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        assert stat.S_IMODE((d / "tasks.jsonl").stat().st_mode) == 0o600, d
        # Its index names the files of its workers' output (logs/worker-<driver pid>-<pid>.log).
        index = [json.loads(x) for x in (d / "logs.jsonl").read_text().splitlines()]
        files = {e["file"] for e in index if e["kind"] == "worker"}
        assert files and all(f.startswith(f"logs/worker-{p.pid}-") for f in files), index
    # Each driver's own session is job "0" in its directory: both are listed, RUNNING (they
    # were killed), beside one that exited and ended its own.
    done = start_driver(write_script(tmp_path, "import volley\nvolley.init(num_cpus=1)\n", "d.py"))
    assert done.wait(timeout=60) == 0
    r = _cli("list", "jobs", "--session", str(session), "--json", env=env)
    assert r.returncode == 0, r
    rows = {row["driver_pid"]: row for row in json.loads(r.stdout)["rows"]}
    assert sorted(rows) == sorted([first.pid, second.pid, done.pid]), r.stdout
    assert {rows[p.pid]["job_id"] for p in (first, second, done)} == {"0"}
    assert rows[first.pid]["status"] == rows[second.pid]["status"] == "RUNNING", rows
    assert rows[done.pid]["status"] == "SUCCEEDED" and rows[done.pid]["end_ms"], rows
    # `volley job list --session` reads the same folders.
    r = _cli("job", "list", "--session", str(session), "--json", env=env)
    assert r.returncode == 0, r
    listed = {row["driver_pid"]: row["status"] for row in json.loads(r.stdout)}
    assert listed == {p.pid: rows[p.pid]["status"] for p in (first, second, done)}, listed
    r = _cli("list", "tasks", "--session", str(session), "--filter", "name=quiet", env=env)
    assert r.returncode == 0 and "quiet" not in r.stdout, r


def test_history_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="history must be True, False or None, not 'yes'"):
        volley.init(num_cpus=1, history="yes")
    with pytest.raises(ValueError, match="history=True is for a driver's own node"):
        volley.init(address="127.0.0.1:1", history=True)
    # A history folder that is not this user's private directory is refused, not written into.
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (session / "history").symlink_to(elsewhere)
    monkeypatch.setenv("VOLLEY_SESSION_DIR", str(session))
    with pytest.raises(OSError, match="history"):
        volley.init(num_cpus=1, history=True)
    assert not volley.is_initialized()
    assert list(elsewhere.iterdir()) == []
