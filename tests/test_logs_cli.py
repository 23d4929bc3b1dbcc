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
import time
import urllib.error
import urllib.request
from collections.abc import Callable
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

# One write: the worker's forwarded lines reach this stdout from another thread meanwhile.
sys.stdout.write(f"worker {volley.get(chatty.remote(LINES))}\\n")
sys.stdout.flush()
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
    # Alone on the machine it finds no node at all; beside another driver's node (another test
    # run, a developer's session) that node answers that it is not node 99: both refuse.
    assert out.returncode != 0 and "no node 99" in out.stderr, out.stderr
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


def _follower_reader(proc: subprocess.Popen) -> Callable[[], str]:
    """What ``proc`` printed so far (its stdout made non-blocking)."""
    os.set_blocking(proc.stdout.fileno(), False)
    seen: list[str] = []

    def text() -> str:
        try:
            seen.append(os.read(proc.stdout.fileno(), 1 << 16).decode())
        except BlockingIOError:
            pass
        return "".join(seen)

    return text


def test_volley_logs_of_another_machines_node(tmp_path):
    # Three nodes, each with a session directory of its own (as on three machines), and a CLI
    # with a fourth: `volley logs --node N` and `--task` read node N's files through the head,
    # `--follow` polls them, and only plain log names of that node's logs/ can be read.
    from test_cluster import Cluster

    import volley

    volley.shutdown()
    c = Cluster(tmp_path)
    follower = None
    try:
        for i in range(3):
            c.env = dict(c.env, VOLLEY_SESSION_DIR=str(tmp_path / f"machine-{i}"))
            extra = ("--resources", json.dumps({f"m{i}": 2}))
            c.start(i == 0, f"127.0.0.{i + 1}", extra=(*extra, "--dashboard-port", "0"))
        volley.init(address=c.head, token=c.token)
        ids = {n["addr"]: n["node_id"] for n in volley.state.list_nodes() if not n["driver"]}
        far_node = ids[c.started[2]]

        @volley.remote(num_cpus=0, resources={"m2": 1})
        class Far:
            def say(self, text: str) -> int:
                print(text, flush=True)
                return os.getpid()

        @volley.remote(num_cpus=0, resources={"m2": 1})
        def far_task() -> int:
            print("said by a far task", flush=True)
            return os.getpid()

        far = Far.remote()
        pid = volley.get(far.say.remote("first line from afar"))
        ref = far_task.remote()
        volley.get(ref)
        here = tmp_path / "cli-machine"
        env = dict(
            driver_env(), VOLLEY_SESSION_DIR=str(here), VOLLEY_ADDRESS=c.head, VOLLEY_TOKEN=c.token
        )

        def logs(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "volley._cli", "logs", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        out = poll(
            lambda: (
                (r := logs("--node", str(far_node), "--worker", str(pid))).returncode == 0
                and "first line from afar" in r.stdout
                and r
            ),
            timeout=20,
        )
        assert out, logs("--node", str(far_node), "--worker", str(pid))
        # The file is on that node's machine only.
        [name] = [p.name for p in (tmp_path / "machine-2" / "logs").glob(f"worker-*-{pid}.log")]
        assert not (tmp_path / "machine-0" / "logs" / name).exists() and not here.exists()
        out = logs("--node", str(far_node), name, "--tail", "1")
        assert out.returncode == 0 and out.stdout.strip().endswith("first line from afar")
        out = poll(lambda: (r := logs("--task", ref.hex()[:32])).returncode == 0 and r, timeout=20)
        assert out and "said by a far task" in out.stdout, logs("--task", ref.hex()[:32])

        # The head's dashboard reads the same files through the same request.
        line = next(x for x in c.log(0).splitlines() if "dashboard at" in x)
        base, token = line.split("dashboard at ")[1].split("?token=")

        def api(query: str) -> tuple[int, dict]:
            req = urllib.request.Request(
                base.rstrip("/") + "/api/v0/logs?" + query,
                headers={"Authorization": "Bearer " + token},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, {"error": e.read().decode()}

        status, page = api(f"node={far_node}&worker={pid}")
        assert status == 200 and "first line from afar" in "\n".join(page["lines"]), page
        status, page = api(f"task={ref.hex()[:32]}")
        assert status == 200 and "said by a far task" in "\n".join(page["lines"]), page
        status, page = api(f"node={far_node}&worker=1")
        assert status == 400 and f"no log of worker 1 on node {far_node}" in page["error"]

        follower = subprocess.Popen(
            [sys.executable, "-m", "volley._cli", "logs", "--node", str(far_node), "--worker",
             str(pid), "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        printed = _follower_reader(follower)
        assert poll(lambda: "first line from afar" in printed(), timeout=30), printed()
        volley.get(far.say.remote("a later line from afar"))
        assert poll(lambda: "a later line from afar" in printed(), timeout=30), printed()

        # Errors: a name that is not a log of that node, a link, a node that does not exist.
        bad = logs("--node", str(far_node), "../../machine-0/logs/x.log")
        assert bad.returncode != 0 and "has no log named" in bad.stderr, bad.stderr
        from volley import _core

        with pytest.raises(ValueError, match="not the name of a volley log file"):
            _core.node_read_log(c.head, c.token, far_node, "../secret.log")
        secret = tmp_path / "secret.log"
        secret.write_text("not for volley logs\n")
        (tmp_path / "machine-2" / "logs" / "link.log").symlink_to(secret)
        with pytest.raises(ValueError) as e:
            _core.node_read_log(c.head, c.token, far_node, "link.log")
        assert "not for volley logs" not in str(e.value)
        bad = logs("--node", "99", "--worker", str(pid))
        assert bad.returncode != 0 and "no node 99 in the cluster" in bad.stderr, bad.stderr
        # A driver's node takes no connections: the head asks it over its heartbeat link.
        [me] = [n["node_id"] for n in volley.nodes() if n["driver"] and n["pid"] == os.getpid()]
        _, node_pid, _ = _core.node_logs(c.head, c.token, me)
        assert node_pid == os.getpid()
    finally:
        if follower is not None:
            follower.send_signal(signal.SIGINT)
            follower.wait(timeout=10)
        volley.shutdown()
        c.stop()


WAITING_DRIVER = """
import faulthandler, os, sys, time, volley
faulthandler.dump_traceback_later(30)  # a driver stuck before "ready" shows where (stderr)
volley.init(num_cpus=1)

@volley.remote
def speaks():
    print("said in a driver's own node", flush=True)
    return os.getpid()

ref = speaks.remote()
pid = volley.get(ref)
# One write: the driver's stdout is unbuffered (PYTHONUNBUFFERED), so print's pieces would be
# separate writes, and the worker's forwarded line could land between them.
os.write(1, f"ready {ref.hex()[:32]} {pid}\\n".encode())
faulthandler.cancel_dump_traceback_later()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
volley.shutdown()
"""


def test_volley_list_and_logs_reach_a_drivers_own_node(tmp_path):
    # Drivers that run their own node (no cluster) answer `volley list` and `volley logs` from
    # another process over their Unix socket; with several, the CLI names them and --address
    # local:PID picks one.
    stop = tmp_path / "stop"
    script = write_script(tmp_path, WAITING_DRIVER)
    drivers = [
        subprocess.Popen(
            [sys.executable, str(script), str(stop)],
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / f"driver-{i}.err", "wb"),
            env={**driver_env(), "VOLLEY_SESSION_DIR": str(tmp_path / f"session-{i}")},
            cwd=str(tmp_path),
            text=True,
        )
        for i in range(2)
    ]
    try:
        seen: list[list[str]] = [[], []]  # every line each driver printed, for the failure

        def ready_line(i: int) -> list[str]:
            # The worker's own line comes to the driver's stdout too.
            for line in drivers[i].stdout:
                seen[i].append(line)
                if line.startswith("ready "):
                    return line.split()
            return []

        # Read in threads with a deadline, so a driver stuck before "ready" fails this test
        # with its stacks (faulthandler's, after 30 s) rather than hang it.
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(ready_line, i) for i in range(2)]
            cf.wait(futures, timeout=60)
            errs = [(tmp_path / f"driver-{i}.err").read_text(errors="replace") for i in range(2)]
            if not all(f.done() for f in futures):
                for d in drivers:
                    d.kill()  # ends the readers
            ready = [f.result() if f.done() else [] for f in futures]
        assert all(ready), (ready, errs, seen)
        (_, task, worker), _ = ready
        env = {**driver_env(), "VOLLEY_SESSION_DIR": str(tmp_path / "cli")}
        env.pop("VOLLEY_ADDRESS", None)
        at = f"local:{drivers[0].pid}"

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "volley._cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        out = cli("list", "tasks", "--address", at, "--json")
        assert out.returncode == 0, out.stderr
        [row] = json.loads(out.stdout)["rows"]
        assert (row["task_id"], row["state"], row["worker_pid"]) == (task, "FINISHED", int(worker))
        out = cli("list", "workers", "--address", at, "--json")
        assert out.returncode == 0, out.stderr
        assert int(worker) in {w["pid"] for w in json.loads(out.stdout)["rows"]}
        out = cli("logs", "--task", task, "--address", at)
        assert out.returncode == 0 and "said in a driver's own node" in out.stdout, out.stderr
        # Two drivers: without --address the CLI says which ones run.
        out = cli("list", "tasks")
        assert out.returncode == 1, out.stdout
        assert all(str(d.pid) in out.stderr for d in drivers), out.stderr
        assert "--address local:PID" in out.stderr
        out = cli("list", "tasks", "--address", "local:1")
        assert out.returncode == 1 and "no volley driver with pid 1" in out.stderr, out.stderr
        # The socket answers the state API's questions only (not a job submission, say).
        from volley import _core, state

        [sock] = [n["socket"] for n in state.embedded_nodes() if n["pid"] == drivers[0].pid]
        with pytest.raises(ConnectionError, match="answers the state API's questions only"):
            _core.job_list(f"local:{sock}", "", None)
    finally:
        stop.touch()
        for d in drivers:
            d.wait(timeout=60)


JOINED_DRIVER = """
import os, sys, time, volley
volley.init(address=sys.argv[1], token=sys.argv[2])
ref = volley.put(b"kept by the driver's node" * 40)
me = [n["node_id"] for n in volley.nodes() if n["driver"] and n["pid"] == os.getpid()]
print("ready", me[0], ref.hex(), flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
volley.shutdown()
"""


@pytest.mark.one_node("starts a cluster of its own")
def test_a_joined_drivers_node_is_reached_through_the_head(tmp_path):
    # A driver's node takes no connections; the head asks it over the link the driver keeps
    # for its heartbeats. `volley list workers|objects` include its rows, `volley logs --node`
    # reads its files (on its machine only), `volley logs` lists every node's files, and a
    # SIGSTOPped driver is named in `missing` within the deadline instead of holding it up.
    from test_cluster import Cluster

    c = Cluster(tmp_path)
    stop = tmp_path / "stop"
    drv_session = tmp_path / "driver-machine"
    driver = None
    try:
        for i in range(3):
            # Dead after a minute: the stopped driver stays in the view while it is asked.
            c.start(i == 0, f"127.0.0.{i + 1}", extra=("--dead-after-ms", "60000"))
        driver = subprocess.Popen(
            [sys.executable, str(write_script(tmp_path, JOINED_DRIVER)), c.head, c.token,
             str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**driver_env(), "VOLLEY_SESSION_DIR": str(drv_session)},
            text=True,
        )  # fmt: skip
        ready = next((ln.split() for ln in driver.stdout if ln.startswith("ready ")), None)
        assert ready, "the driver did not start"
        me, oid = int(ready[1]), ready[2]
        # A file only the driver's machine has (0600, in its private logs/ directory).
        logs_dir = drv_session / "logs"
        for d in (drv_session, logs_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        name = f"worker-{driver.pid}-1.log"
        fd = os.open(logs_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"only on the driver's machine\n")
        os.close(fd)
        env = {**driver_env(), "VOLLEY_SESSION_DIR": str(tmp_path / "cli-machine")}
        env.pop("VOLLEY_ADDRESS", None)
        env["VOLLEY_TOKEN"] = c.token

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "volley._cli", *args, "--address", c.head],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        def listed(kind: str) -> dict:
            out = cli("list", kind, "--limit", "0", "--json")
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        workers = listed("workers")
        assert workers["missing"] == [] and me in {w["node_id"] for w in workers["rows"]}, workers
        objects = listed("objects")
        assert objects["missing"] == [], objects
        assert any(o["object_id"] == oid and o["node_id"] == me for o in objects["rows"]), objects
        out = cli("logs", "--node", str(me), name)
        assert out.returncode == 0 and out.stdout == "only on the driver's machine\n", out
        # No arguments: every node's files, the driver's among them.
        out = cli("logs", "--json")
        assert out.returncode == 0, out.stderr
        every = json.loads(out.stdout)
        assert {"node_id": me, "name": name} in [
            {"node_id": f["node_id"], "name": f["name"]} for f in every
        ], every
        out = cli("logs")
        assert out.returncode == 0 and "NODE" in out.stdout, out
        row = next(ln for ln in out.stdout.splitlines() if name in ln)
        assert row.split()[0] == str(me), out.stdout
        bad = subprocess.run(
            [sys.executable, "-m", "volley._cli", "logs", "--address", "127.0.0.1:1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "127.0.0.1:1" in bad.stderr, bad.stderr

        os.kill(driver.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            partial = listed("workers")
            took = time.monotonic() - began
            assert took < 20, took  # the deadline is 3 s; 20 leaves room for a loaded machine
            [gone] = partial["missing"]
            assert gone.startswith(f"node {me} (driver pid {driver.pid})"), gone
            assert "no answer within" in gone, gone
            assert me not in {w["node_id"] for w in partial["rows"]}, partial
            out = cli("logs", "--node", str(me), name)
            assert out.returncode != 0 and "no answer within" in out.stderr, out
            out = cli("logs")
            said = f"not in this list: node {me} (driver pid {driver.pid}) did not answer"
            assert out.returncode == 0 and said in out.stderr, out
            assert name not in out.stdout, out.stdout
        finally:
            os.kill(driver.pid, signal.SIGCONT)
        # Woken, the driver says its heartbeat came late, in its own driver-<pid>.log: what
        # `volley logs --node N` prints for a driver's node.
        out = poll(
            lambda: (r := cli("logs", "--node", str(me))).returncode == 0 and "late" in r.stdout,
            timeout=30,
        )
        assert out, cli("logs", "--node", str(me))
        assert (drv_session / "logs" / f"driver-{driver.pid}.log").exists()
    finally:
        stop.touch()
        if driver is not None:
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()
        c.stop()
