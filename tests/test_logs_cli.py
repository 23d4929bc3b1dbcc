"""Worker logs kept in the session directory and ``volley logs``: real drivers, real workers,
the real command; the files' modes, rotation and the follow mode."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import driver_env, poll, write_script

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARN)\] "

PRINTING_DRIVER = """
import os, sys, volley
volley.init(num_cpus=1)

@volley.remote
def chatty(n):
    for i in range(n):
        print(f"out line {i}")
    print("an error line", file=sys.stderr)
    return os.getpid()

print("worker", volley.get(chatty.remote(LINES)), flush=True)
volley.shutdown()
"""


def _run_driver(tmp_path: Path, body: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    session = tmp_path / "session"
    proc = subprocess.run(
        [sys.executable, str(write_script(tmp_path, body))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={**driver_env(), "VOLLEY_SESSION_DIR": str(session), **env},
    )
    assert proc.returncode == 0, proc.stderr
    return proc, session


def volley_cli(session: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "volley._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**driver_env(), "VOLLEY_SESSION_DIR": str(session)},
    )
    if check:
        assert out.returncode == 0, (out.stdout, out.stderr)
    return out


def test_a_workers_output_is_kept_in_a_private_file_that_volley_logs_prints(tmp_path):
    proc, session = _run_driver(tmp_path, PRINTING_DRIVER.replace("LINES", "3"))
    pid = int(re.search(r"^worker (\d+)$", proc.stdout, re.M).group(1))
    # Still forwarded to the driver, as before.
    assert f"(chatty pid={pid}) out line 2" in proc.stdout
    assert f"(chatty pid={pid}) an error line" in proc.stderr

    listed = json.loads(volley_cli(session, "logs", "--json").stdout)
    mine = [f for f in listed if f["kind"] == "worker" and f["pid"] == pid]
    assert len(mine) == 1, listed
    path = session / "logs" / mine[0]["name"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((session / "logs").stat().st_mode) == 0o700
    assert mine[0]["size"] == path.stat().st_size > 0
    # Only workers that wrote something have a file (the others' would be empty).
    assert all(f["size"] > 0 for f in listed if f["kind"] == "worker"), listed

    text = volley_cli(session, "logs", "--worker", str(pid)).stdout
    lines = text.splitlines()
    assert len(lines) == 4, text
    assert re.match(STAMP + rf"\(chatty pid={pid}\) out line 0$", lines[0]), lines[0]
    assert " INFO] " in lines[0] and " WARN] " in lines[3], text
    assert lines[3].endswith("an error line")

    tail = volley_cli(session, "logs", "--worker", str(pid), "--tail", "2").stdout
    assert tail.splitlines() == lines[-2:]
    # The same file by its name, as the list shows it.
    assert volley_cli(session, "logs", mine[0]["name"]).stdout == text
    # The plain list shows it too.
    assert mine[0]["name"] in volley_cli(session, "logs").stdout


def test_volley_logs_refuses_what_is_not_a_log_and_says_what_is_missing(tmp_path):
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    (session / "logs").mkdir(mode=0o700)
    (session / "token").write_text("secret")
    out = volley_cli(session, "logs", "../token", check=False)
    assert out.returncode != 0 and "no log named '../token'" in out.stderr, out.stderr
    out = volley_cli(session, "logs", "--worker", "1", check=False)
    assert out.returncode != 0 and "no log of worker pid 1" in out.stderr, out.stderr
    out = volley_cli(session, "logs", "--node", "99", check=False)
    assert out.returncode != 0 and "no node 99 runs on this machine" in out.stderr, out.stderr
    out = volley_cli(session, "logs", "--task", "ab" * 16, check=False)
    assert out.returncode != 0 and "task" in out.stderr, out.stderr
    # A logs directory others can read is refused, not listed.
    os.chmod(session / "logs", 0o755)
    out = volley_cli(session, "logs", check=False)
    assert out.returncode != 0 and "mode 755" in out.stderr, out.stderr


def test_a_workers_log_is_rotated_past_its_bound(tmp_path):
    proc, session = _run_driver(
        tmp_path, PRINTING_DRIVER.replace("LINES", "400"), VOLLEY_LOG_MAX_BYTES="4096"
    )
    pid = int(re.search(r"^worker (\d+)$", proc.stdout, re.M).group(1))
    files = {p.name: p.stat().st_size for p in (session / "logs").glob(f"worker-*-{pid}.log*")}
    assert len(files) == 2, files  # the file and its one rotated part, no more
    # 400 lines of ~60 bytes: most were dropped, and neither part passes the bound by more
    # than one chunk of output.
    assert all(size <= 4096 + 64 * 1024 for size in files.values()), files
    last = volley_cli(session, "logs", "--worker", str(pid), "--tail", "1").stdout
    assert last.rstrip().endswith("an error line"), last


FOLLOWED_DRIVER = """
import os, sys, time, volley
volley.init(num_cpus=1)

@volley.remote
def ticker(path):
    i = 0
    while not os.path.exists(path):
        print(f"tick {i}", flush=True)
        i += 1
        time.sleep(0.05)
    return os.getpid()

ref = ticker.remote(sys.argv[1])
print("started", flush=True)
volley.get(ref)
volley.shutdown()
"""


def test_follow_prints_lines_as_the_worker_writes_them(tmp_path):
    session = tmp_path / "session"
    stop = tmp_path / "stop"
    script = write_script(tmp_path, FOLLOWED_DRIVER)
    env = {**driver_env(), "VOLLEY_SESSION_DIR": str(session)}
    driver = subprocess.Popen(
        [sys.executable, str(script), str(stop)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=str(tmp_path),
    )
    follower = None
    try:

        def worker_log():
            d = session / "logs"
            found = list(d.glob("worker-*.log")) if d.exists() else []
            return found[0] if found else None

        log = poll(worker_log, timeout=60)
        assert log, "no worker log appeared"
        pid = log.name.split("-")[2].split(".")[0]
        follower = subprocess.Popen(
            [sys.executable, "-m", "volley._cli", "logs", "--worker", pid, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        os.set_blocking(follower.stdout.fileno(), False)
        seen = []

        def ticks():
            try:
                seen.append(os.read(follower.stdout.fileno(), 1 << 16).decode())
            except BlockingIOError:
                pass
            return [int(n) for n in re.findall(r"tick (\d+)", "".join(seen))]

        first = poll(ticks, timeout=30)
        assert first, "volley logs --follow printed nothing"
        # Lines written after it started arrive too.
        later = poll(lambda: max(ticks()) >= max(first) + 10 and ticks(), timeout=30)
        assert later, f"no new lines followed: {''.join(seen)[-300:]}"
        numbers = ticks()
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "lines lost"
    finally:
        stop.touch()
        if follower is not None:
            follower.send_signal(signal.SIGINT)
            follower.wait(timeout=10)
        driver.wait(timeout=60)
    assert follower.returncode == 0, follower.stderr.read().decode()


def test_volley_logs_lists_an_empty_session(tmp_path):
    out = volley_cli(tmp_path / "nothing", "logs")
    assert "no logs in" in out.stdout
    assert json.loads(volley_cli(tmp_path / "nothing", "logs", "--json").stdout) == []


@pytest.mark.parametrize("bad", ["--tail", "--worker"])
def test_volley_logs_options_need_numbers(tmp_path, bad):
    out = volley_cli(tmp_path, "logs", bad, "x", check=False)
    assert out.returncode == 2 and "invalid int value" in out.stderr


def test_volley_logs_of_a_task_and_an_actor_on_a_cluster(tmp_path):
    # --task and --actor find the worker through the state API (the head's tables), then its
    # log file; a task of no such id says so.
    from test_cluster import Cluster

    import volley

    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start_nodes(2)
        volley.init(address=c.head, token=c.token)

        @volley.remote
        def speaks():
            print("said by the task", flush=True)
            return os.getpid()

        @volley.remote(num_cpus=0)
        class Talker:
            def talk(self):
                print("said by the actor", flush=True)
                return os.getpid()

        ref = speaks.remote()
        volley.get(ref)
        actor = Talker.remote()
        volley.get(actor.talk.remote())
        env = dict(c.env, VOLLEY_TOKEN=c.token, VOLLEY_ADDRESS=c.head)

        def logs(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "volley._cli", "logs", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        # The rows reach the head with the nodes' heartbeats.
        out = poll(lambda: (r := logs("--task", ref.hex()[:32])).returncode == 0 and r, timeout=20)
        assert out and "said by the task" in out.stdout, out
        rows = poll(
            lambda: [a for a in volley.state.list_actors() if a["class_name"].endswith("Talker")],
            timeout=20,
        )
        assert rows, volley.state.list_actors()
        actor_id = rows[0]["actor_id"]
        out = poll(lambda: (r := logs("--actor", actor_id)).returncode == 0 and r, timeout=20)
        assert out and "said by the actor" in out.stdout, out
        bad = logs("--task", "0" * 32)
        assert bad.returncode != 0 and "0" * 32 in bad.stderr, bad.stderr
    finally:
        volley.shutdown()
        c.stop()
