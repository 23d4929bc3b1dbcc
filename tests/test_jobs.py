"""Jobs (``volley job ...``, ``volley.job``) against a real cluster: a head and a node started
with the ``volley`` command; each job's driver is a real process the head starts, stops and
watches, its output and status kept in the head's session directory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import poll
from test_cluster import Cluster, _alive, _free_port

from volley import job

# Every job script finds the cluster through VOLLEY_ADDRESS (and the token in the session
# directory it shares with the head).
INIT = "import os, volley\nvolley.init(address='auto')\n"


@pytest.fixture(scope="module")
def jc(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("jobs"))
    c.start_nodes(2)
    yield c
    c.stop()


@pytest.fixture
def client(jc):
    return job.JobSubmissionClient(jc.head, token=jc.token)


def _script(tmp: Path, code: str, name: str = "script.py") -> Path:
    d = tmp / "wd"
    d.mkdir(exist_ok=True)
    (d / name).write_text(code)
    return d


def cli(jc: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volley._cli", "job", *args],
        env=jc.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _poll(what, timeout: float = 20, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def test_a_job_runs_tasks_on_the_cluster_and_keeps_its_output(jc, client, tmp_path):
    wd = _script(
        tmp_path,
        INIT
        + "@volley.remote\ndef sq(x):\n    return x * x\n"
        + "print('sum', sum(volley.get([sq.remote(i) for i in range(10)])))\n"
        + "print('job', os.environ['VOLLEY_JOB_ID'], 'on', os.environ['VOLLEY_ADDRESS'])\n"
        + "print('context', volley.get_runtime_context().get_job_id())\n",
    )
    jid = client.submit_job("python script.py", working_dir=wd)
    row = client.wait(jid, timeout=60)
    out = client.get_job_logs(jid)
    assert row["status"] == "SUCCEEDED", (row, out)
    assert row["exit_code"] == 0 and row["end_ms"] >= row["start_ms"] > 0
    assert row["entrypoint"] == "python script.py" and row["driver_pid"] > 0
    assert "sum 285" in out and f"job {jid} on {jc.head}" in out
    # Its row and output are in the head's session directory, private to this user.
    for suffix in (".json", ".log"):
        p = jc.session / "jobs" / f"{jid}{suffix}"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert json.loads((jc.session / "jobs" / f"{jid}.json").read_text())["status"] == "SUCCEEDED"
    # `volley job list` and `status` show it; the driver's own session is linked to it, not
    # listed as a job of its own.
    listed = json.loads(cli(jc, "list", "--json").stdout)
    mine = [r for r in listed if r["job_id"] == jid]
    assert len(mine) == 1 and mine[0]["status"] == "SUCCEEDED"
    assert mine[0]["driver_node"] is not None
    assert not [
        r for r in listed if r["entrypoint"] is None and r["driver_pid"] == row["driver_pid"]
    ]
    st = cli(jc, "status", jid)
    assert st.returncode == 0 and f"job {jid}: SUCCEEDED" in st.stdout, st
    # Its tasks carry the job's id in the state API, as its driver's runtime context names it.
    assert f"context {jid}" in out

    last: list = []

    def tasks():
        r = subprocess.run(
            [sys.executable, "-m", "volley._cli", "list", "tasks", "--filter", f"job_id={jid}"]
            + ["--address", jc.head, "--json", "--limit", "0"],
            env=dict(jc.env, VOLLEY_TOKEN=jc.token),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        last[:] = [answer]
        return answer["rows"] if answer["total"] == 10 else None

    rows = poll(tasks, timeout=20)
    assert rows and {(t["name"], t["job_id"]) for t in rows} == {("sq", jid)}, (
        rows,
        [(t["task_id"], t["state"], t["node_id"]) for a in last for t in a["rows"]],
    )


def test_a_failing_job_is_failed_with_its_exit_code_and_last_line(client, tmp_path):
    wd = _script(tmp_path, "import sys\nprint('about to fail', flush=True)\n"
                 "sys.exit('the input was bad')\n")  # fmt: skip
    jid = client.submit_job(["python", "script.py"], working_dir=wd)
    row = client.wait(jid, timeout=30)
    assert row["status"] == "FAILED" and row["exit_code"] == 1, row
    assert "status 1" in row["message"] and "the input was bad" in row["message"], row
    assert "about to fail" in client.get_job_logs(jid)


def test_stop_ends_the_job_and_its_actors_but_not_detached_ones(jc, client, tmp_path):
    wd = _script(
        tmp_path,
        INIT
        + "@volley.remote\nclass A:\n    def pid(self):\n        return os.getpid()\n"
        + "a = A.remote()\n"
        + "d = A.options(name='keeper', lifetime='detached').remote()\n"
        + "print('PIDS', volley.get(a.pid.remote()), volley.get(d.pid.remote()), flush=True)\n"
        + "import time\nwhile True:\n    time.sleep(1)\n",
    )
    jid = client.submit_job("python script.py", working_dir=wd, submission_id="stopme")
    assert jid == "stopme"
    out = _poll(lambda: "PIDS" in client.get_job_logs(jid) and client.get_job_logs(jid), 60)
    assert out, client.get_job_info(jid)
    actor, detached = (int(p) for p in out.split("PIDS")[1].split()[:2])
    assert _alive(actor) and _alive(detached)
    r = cli(jc, "stop", jid)
    assert r.returncode == 0 and f"job {jid}: STOPPED" in r.stdout, r
    row = client.get_job_info(jid)
    assert row["status"] == "STOPPED" and row["message"] == "stopped on request", row
    assert row["exit_code"] == -signal.SIGTERM
    assert _poll(lambda: not _alive(actor), 15), "the job's actor outlived its stopped job"
    assert _alive(detached), "a detached actor stays after its job, as in Ray"
    os.kill(detached, signal.SIGKILL)
    # Stopping a job that is over changes nothing.
    assert client.stop_job(jid) is False
    assert client.get_job_status(jid) == "STOPPED"


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(client, tmp_path):
    wd = _script(
        tmp_path,
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\nwhile True:\n    time.sleep(1)\n",
    )
    jid = client.submit_job("python script.py", working_dir=wd)
    assert _poll(lambda: "ready" in client.get_job_logs(jid), 30)
    t = time.monotonic()
    assert client.stop_job(jid) is True
    row = client.wait(jid, timeout=30)
    assert row["status"] == "STOPPED" and row["exit_code"] == -signal.SIGKILL, row
    assert time.monotonic() - t >= 4, "SIGKILL came before the grace period"


def test_the_working_dir_and_env_vars_are_shipped_with_the_cli(jc, tmp_path):
    wd = _script(
        tmp_path,
        "import sys, helper\nprint('helper says', helper.VALUE, 'args', sys.argv[1:])\n"
        "import os\nprint('GREETING', os.environ['GREETING'])\n"
        "print('data', open('data.txt').read())\n",
    )
    (wd / "helper.py").write_text("VALUE = 42\n")
    (wd / "data.txt").write_text("from the working dir")
    env = json.dumps({"env_vars": {"GREETING": "hello"}})
    r = cli(jc, "submit", "--working-dir", str(wd), "--runtime-env-json", env, "--",
            "python", "script.py", "--flag", "x")  # fmt: skip
    assert r.returncode == 0, r
    assert "helper says 42 args ['--flag', 'x']" in r.stdout, r
    assert "GREETING hello" in r.stdout and "data from the working dir" in r.stdout, r
    assert "SUCCEEDED" in r.stdout.splitlines()[-1]


def test_logs_follow_streams_output_while_the_job_runs(jc, client, tmp_path):
    go = tmp_path / "go"
    wd = _script(
        tmp_path,
        "import os, time\nprint('first line', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
        "print('second line', flush=True)\n",
    )
    jid = client.submit_job("python script.py", working_dir=wd)
    stream = client.tail_job_logs(jid)
    got = ""
    while "first line" not in got:
        got += next(stream)
    # The first line arrived while the job still waits for us.
    assert client.get_job_status(jid) == "RUNNING"
    go.touch()
    got += "".join(stream)  # ends when the job is over and its output all given
    assert got == "first line\nsecond line\n"
    assert client.get_job_status(jid) == "SUCCEEDED"
    # The CLI's --follow prints the same and returns when the job is over.
    r = cli(jc, "logs", jid, "--follow")
    assert r.returncode == 0 and r.stdout == "first line\nsecond line\n", r


def test_errors_are_clear(jc, client, tmp_path):
    with pytest.raises(ValueError, match='no job "nope"'):
        client.get_job_info("nope")
    r = cli(jc, "status", "nope")
    assert r.returncode == 1 and 'no job "nope"' in r.stderr, r
    r = cli(jc, "logs", "nope")
    assert r.returncode == 1 and 'no job "nope"' in r.stderr, r
    # No head at the address: the error names it.
    dead = f"127.0.0.1:{_free_port('127.0.0.1')}"
    with pytest.raises(ConnectionError, match=f"head at {dead}"):
        job.JobSubmissionClient(dead, token="t").submit_job("python -c pass")
    r = subprocess.run(
        [sys.executable, "-m", "volley._cli", "job", "submit", "--address", dead, "--token",
         "t", "--", "python", "-c", "pass"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1 and dead in r.stderr, r
    r = cli(jc, "submit", "--runtime-env-json", "{not json", "--", "python", "-c", "pass")
    assert r.returncode == 2 and "not valid JSON" in r.stderr, r
    r = cli(jc, "submit", "--runtime-env-json", '{"conda": "x"}', "--", "python", "-c", "pass")
    assert r.returncode == 1 and "unknown key(s) ['conda']" in r.stderr, r
    r = cli(jc, "submit", "--")
    assert r.returncode == 2 and "after `--`" in r.stderr, r
    with pytest.raises(ValueError, match='"A=B" cannot be an environment variable'):
        client.submit_job("python -c pass", runtime_env={"env_vars": {"A=B": "v"}})
    with pytest.raises(TypeError, match="env_vars must map str to str"):
        client.submit_job("python -c pass", runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(ValueError, match="give working_dir once"):
        client.submit_job("python -c pass", working_dir=".", runtime_env={"working_dir": "."})
    with pytest.raises(ValueError, match="is not a directory"):
        client.submit_job("python x.py", working_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="job id .* is not valid"):
        client.submit_job("python -c pass", submission_id="../escape")
    jid = client.submit_job("python -c pass", submission_id="twice")
    with pytest.raises(ValueError, match="exists already"):
        client.submit_job("python -c pass", submission_id="twice")
    client.wait(jid, timeout=30)
    # An entrypoint that cannot start fails the job, saying why.
    jid = client.submit_job("no-such-program-volley --x")
    row = client.wait(jid, timeout=30)
    assert row["status"] == "FAILED" and row["exit_code"] == 127, row
    assert "'no-such-program-volley' could not start" in row["message"], row


def test_a_working_dir_of_megabytes_ships_and_one_over_the_limit_is_refused(
    client, tmp_path, monkeypatch
):
    big = tmp_path / "big"
    big.mkdir()
    noise = os.urandom(3 << 20)  # random: does not compress
    (big / "noise.bin").write_bytes(noise)
    (big / "check.py").write_text(
        "import hashlib\nprint(hashlib.sha256(open('noise.bin', 'rb').read()).hexdigest())\n"
    )
    jid = client.submit_job("python check.py", working_dir=big)
    assert client.wait(jid, timeout=30)["status"] == "SUCCEEDED"
    assert client.get_job_logs(jid).strip() == hashlib.sha256(noise).hexdigest()
    monkeypatch.setattr(job, "MAX_WORKING_DIR_BYTES", 2 << 20)
    with pytest.raises(ValueError, match="packs to 3 MiB, over the 2 MiB a job submission"):
        client.submit_job("python x.py", working_dir=big)


@pytest.mark.slow
def test_a_working_dir_over_the_real_limit_is_refused(client, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "noise.bin").write_bytes(os.urandom(65 << 20))
    with pytest.raises(ValueError, match="over the 64 MiB a job submission carries"):
        client.submit_job("python x.py", working_dir=big)


def test_a_jobs_status_and_logs_survive_the_job_and_the_head(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_nodes(1)
        client = job.JobSubmissionClient(c.head, token=c.token)
        jid = client.submit_job(["python", "-c", "print('kept')"])
        assert client.wait(jid, timeout=30)["status"] == "SUCCEEDED"
        # A job still running when the head stops is stopped with it.
        running = client.submit_job(["python", "-c", "import time; time.sleep(60)"])
        assert client.get_job_status(running) == "RUNNING"
        pid = client.get_job_info(running)["driver_pid"]
        c.stop()
        assert not _alive(pid)
        # With the head gone, the CLI reads the session directory's records.
        r = cli(c, "list", "--json")
        assert r.returncode == 0, r
        rows = {x["job_id"]: x for x in json.loads(r.stdout)}
        assert rows[jid]["status"] == "SUCCEEDED" and "showing the jobs recorded" in r.stderr
        assert rows[running]["status"] == "STOPPED", rows[running]
        assert rows[running]["message"] == "stopped: the head shut down"
        r = cli(c, "logs", jid)
        assert r.returncode == 0 and r.stdout == "kept\n", r
        # A head restarted in the same session lists them again.
        c.procs.clear()
        c.start(True, "127.0.0.1")
        client = job.JobSubmissionClient(c.head, token=c.token)
        assert client.get_job_status(jid) == "SUCCEEDED"
        assert client.get_job_logs(jid) == "kept\n"
        # A head that crashed could not record how its running jobs ended: the next one
        # says so.
        orphan = client.submit_job(["python", "-c", "import time; time.sleep(60)"])
        pid = client.get_job_info(orphan)["driver_pid"]
        c.kill(0)
        assert _poll(lambda: not _alive(pid), 15), "the driver outlived its SIGKILLed head"
        c.procs.clear()
        c.start(True, "127.0.0.1")
        client = job.JobSubmissionClient(c.head, token=c.token)
        row = client.get_job_info(orphan)
        assert row["status"] == "FAILED" and "head stopped while the job ran" in row["message"]
    finally:
        c.stop()


def test_a_sigkilled_heads_drivers_and_what_they_started_end_and_show_failed(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_nodes(1)
        client = job.JobSubmissionClient(c.head, token=c.token)
        # The driver starts a child in its process group: the head's death must end both.
        code = (
            "import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print('CHILD', p.pid, flush=True)\ntime.sleep(120)\n"
        )
        jid = client.submit_job(["python", "-c", code])
        out = _poll(lambda: "CHILD" in client.get_job_logs(jid) and client.get_job_logs(jid), 30)
        assert out, client.get_job_info(jid)
        child = int(out.split("CHILD")[1].split()[0])
        driver = client.get_job_info(jid)["driver_pid"]
        assert _alive(driver) and _alive(child)
        c.kill(0)  # SIGKILL: the head records nothing
        assert _poll(lambda: not _alive(driver), 15), "the driver outlived its SIGKILLed head"
        assert _poll(lambda: not _alive(child), 15), "the driver's child outlived the head"
        # Its record still says RUNNING; the head restarted in the same session says it died.
        rec = json.loads((c.session / "jobs" / f"{jid}.json").read_text())
        assert rec["status"] == "RUNNING"
        c.procs.clear()
        c.start(True, "127.0.0.1")
        client = job.JobSubmissionClient(c.head, token=c.token)
        row = client.get_job_info(jid)
        assert row["status"] == "FAILED" and "it died" in row["message"], row
        assert row["end_ms"] is not None
        # A job that simply ends leaves what it started alone (the head is alive).
        code = (
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
            " start_new_session=False)\nprint('CHILD', p.pid, flush=True)\n"
        )
        jid = client.submit_job(["python", "-c", code])
        assert client.wait(jid, timeout=30)["status"] == "SUCCEEDED"
        child = int(client.get_job_logs(jid).split("CHILD")[1].split()[0])
        time.sleep(0.5)
        assert _alive(child), "the watchdog killed a finished job's group while the head lives"
        os.kill(child, signal.SIGKILL)
    finally:
        c.stop()


class SlowLink:
    """A TCP relay between a client and the head that passes ``rate`` bytes a second each way,
    like a slow link: a request of several MB takes longer than the head's 5-s handshake."""

    def __init__(self, target: str, rate: int):
        import socket
        import threading

        self.rate, self.target = rate, target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.relayed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.target.split(":")
            b = socket.create_connection((host, int(port)))
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src, dst):
        import socket

        try:
            while data := src.recv(16 << 10):
                time.sleep(len(data) / self.rate)
                dst.sendall(data)
                self.relayed += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def test_a_working_dir_of_megabytes_ships_through_a_slow_link(jc, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    noise = os.urandom(5 << 19)  # 2.5 MB, random: does not compress
    (big / "noise.bin").write_bytes(noise)
    (big / "check.py").write_text(
        "import hashlib\nprint(hashlib.sha256(open('noise.bin', 'rb').read()).hexdigest())\n"
    )
    link = SlowLink(jc.head, rate=400_000)  # 2.5 MB: over 6 s on the wire, each way
    try:
        client = job.JobSubmissionClient(link.address, token=jc.token)
        t = time.monotonic()
        jid = client.submit_job("python check.py", working_dir=big)
        took = time.monotonic() - t
        assert took > 5, f"the link was not slow ({took:.1f} s): the test proves nothing"
        assert link.relayed > len(noise)
        row = client.wait(jid, timeout=60)
        assert row["status"] == "SUCCEEDED", (row, client.get_job_logs(jid))
        assert client.get_job_logs(jid).strip() == hashlib.sha256(noise).hexdigest()
        # The head keeps it by hash: the same directory again is not sent again.
        sent = link.relayed
        again = client.submit_job("python check.py", working_dir=big)
        assert link.relayed - sent < 100_000, link.relayed - sent
        assert client.wait(again, timeout=60)["status"] == "SUCCEEDED"
    finally:
        link.close()


def test_an_upload_over_the_cap_or_not_matching_its_hash_is_refused_and_leaves_nothing(jc):
    from volley import _core

    conn = (jc.head, jc.token, None)
    packages = jc.tmp / "packages-0"
    before = set(os.listdir(packages)) if packages.exists() else set()
    h = "ab" * 16
    with pytest.raises(ValueError, match="packs to 65 MiB, over the 64 MiB a job can ship"):
        _core.job_upload(*conn, h, 65 << 20, 0, b"x" * 10)
    with pytest.raises(ValueError, match="goes past its total"):
        _core.job_upload(*conn, h, 10, 5, b"x" * 10)
    with pytest.raises(ValueError, match="is not a working directory's hash"):
        _core.job_upload(*conn, "../../etc", 10, 0, b"x" * 10)
    # Chunks that do not make the hash's bytes: refused whole, nothing kept.
    assert _core.job_upload(*conn, h, 20, 0, b"x" * 10) == 10
    assert _core.job_upload(*conn, h, 20, 0, b"x" * 10) == 10  # a chunk sent twice: skipped
    with pytest.raises(ValueError, match="does not match its hash"):
        _core.job_upload(*conn, h, 20, 10, b"y" * 10)
    # An upload left half done is not a package either, and a submission cannot name it.
    assert _core.job_upload(*conn, "cd" * 16, 20, 0, b"x" * 10) == 10
    with pytest.raises(ValueError, match="has no working directory"):
        _core.job_submit(*conn, ["python", "-c", "pass"], "x", None, "cd" * 16, [])
    after = set(os.listdir(packages)) if packages.exists() else set()
    assert after == before, after - before


def test_entrypoint_resources_hold_the_heads_node_and_a_job_waits_pending(jc, client, tmp_path):
    go = tmp_path / "go"
    hold = (
        f"import os, time\nprint('holding', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
    )
    first = client.submit_job(["python", "-c", hold], entrypoint_num_cpus=1)
    assert _poll(lambda: "holding" in client.get_job_logs(first), 30)
    # The head's node has 1 CPU in all, held by the first job: the second waits, saying why.
    r = cli(jc, "submit", "--no-wait", "--entrypoint-num-cpus", "1", "--",
            "python", "-c", "print('second ran')")  # fmt: skip
    assert r.returncode == 0, r
    second = r.stdout.split("job ")[1].split()[0]
    row = client.get_job_info(second)
    assert row["status"] == "PENDING" and row["driver_pid"] is None, row
    assert "waiting for 1 CPU on the head's node: 0 of 1 free" in row["message"], row
    # One that asks for nothing runs meanwhile.
    free = client.submit_job(["python", "-c", "print('free')"])
    assert client.wait(free, timeout=30)["status"] == "SUCCEEDED"
    assert client.get_job_status(second) == "PENDING"
    go.touch()
    assert client.wait(first, timeout=30)["status"] == "SUCCEEDED"
    row = client.wait(second, timeout=30)
    assert row["status"] == "SUCCEEDED" and row["message"] is None, row
    assert client.get_job_logs(second) == "second ran\n"
    # A pending job can be stopped; asking for more than the head's node has is refused.
    go.unlink()
    first = client.submit_job(["python", "-c", hold], entrypoint_resources={"CPU": 1})
    assert _poll(lambda: "holding" in client.get_job_logs(first), 30)
    waiting = client.submit_job(["python", "-c", "pass"], entrypoint_num_cpus=0.5)
    assert client.get_job_info(waiting)["status"] == "PENDING"
    assert client.stop_job(waiting) is True
    row = client.get_job_info(waiting)
    assert row["status"] == "STOPPED" and "before it started" in row["message"], row
    go.touch()
    assert client.wait(first, timeout=30)["status"] == "SUCCEEDED"
    with pytest.raises(ValueError, match="asks for 2 CPU, and the head's node, where it runs, "
                       "has 1 in all"):  # fmt: skip
        client.submit_job("python -c pass", entrypoint_num_cpus=2)
    r = cli(jc, "submit", "--entrypoint-resources", '{"disk": 1}', "--", "python", "-c", "pass")
    assert r.returncode == 1 and "asks for 1 disk" in r.stderr and "has 0 in all" in r.stderr, r
    r = cli(jc, "submit", "--entrypoint-resources", "[1]", "--", "python", "-c", "pass")
    assert r.returncode == 2 and "must be a JSON object" in r.stderr, r
    with pytest.raises(ValueError, match="GPU must be a number >= 0"):
        client.submit_job("python -c pass", entrypoint_num_gpus=-1)
    with pytest.raises(ValueError, match="give CPU once"):
        client.submit_job("python -c pass", entrypoint_num_cpus=1, entrypoint_resources={"CPU": 1})
    with pytest.raises(TypeError, match="entrypoint_resources must map"):
        client.submit_job("python -c pass", entrypoint_resources=[("CPU", 1)])
    with pytest.raises(ValueError, match="disk must be a number >= 0, not 'x'"):
        client.submit_job("python -c pass", entrypoint_resources={"disk": "x"})


def _tiny_wheel(tmp: Path) -> Path:
    """A wheel of one tiny module, made by hand (no build tools, no network)."""
    import base64
    import zipfile

    files = {
        "volley_tiny_pkg/__init__.py": b"VALUE = 'tiny 42'\n",
        "volley_tiny_pkg-0.1.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: volley-tiny-pkg\nVersion: 0.1\n"
        ),
        "volley_tiny_pkg-0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("volley_tiny_pkg-0.1.dist-info/RECORD,,")
    files["volley_tiny_pkg-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = tmp / "volley_tiny_pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


def test_a_jobs_pip_runs_it_in_a_venv_made_once_and_a_bad_requirement_fails_it(
    client, jc, tmp_path
):
    pip = ["--no-index", "--no-build-isolation", str(_tiny_wheel(tmp_path))]
    code = "import volley, volley_tiny_pkg, sys; print(volley_tiny_pkg.VALUE, sys.prefix)"
    jid = client.submit_job(["python", "-c", code], runtime_env={"pip": pip})
    row = client.wait(jid, timeout=120)
    out = client.get_job_logs(jid)
    assert row["status"] == "SUCCEEDED", (row, out)
    assert "tiny 42" in out and "making a virtual environment" in out, out
    assert "Successfully installed volley-tiny-pkg" in out, out  # pip's output is in the log
    venv = out.split("tiny 42 ")[1].split()[0]
    assert venv.startswith(str(jc.session / "jobs" / "venvs")), venv
    # Not installed where the head runs; the same list again uses the same venv.
    r = subprocess.run([sys.executable, "-c", "import volley_tiny_pkg"], capture_output=True)
    assert r.returncode != 0
    jid = client.submit_job(["python", "-c", code], runtime_env={"pip": pip})
    row = client.wait(jid, timeout=60)
    out = client.get_job_logs(jid)
    assert row["status"] == "SUCCEEDED" and "using the virtual environment" in out, (row, out)
    # A requirement pip cannot find fails the job with pip's error at the end of its message.
    bad = client.submit_job(
        ["python", "-c", "print('never')"],
        runtime_env={"pip": ["--no-index", "volley-no-such-package-anywhere"]},
    )
    row = client.wait(bad, timeout=120)
    assert row["status"] == "FAILED" and row["exit_code"] == 1, row
    assert "pip could not install" in row["message"], row
    assert row["message"].endswith(
        "No matching distribution found for volley-no-such-package-anywhere"
    ), row
    assert "never" not in client.get_job_logs(bad)
    with pytest.raises(TypeError, match="pip must be a list"):
        client.submit_job("python -c pass", runtime_env={"pip": "numpy"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pip_check'\]"):
        client.submit_job("python -c pass", runtime_env={"pip": {"pip_check": True}})


def _status(c: Cluster) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "volley._cli", "status"],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.stdout + r.stderr


def test_a_jobs_entrypoint_cpu_is_held_against_tasks_until_it_ends_or_crashes(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_nodes(1)  # the head alone, with 1 CPU
        client = job.JobSubmissionClient(c.head, token=c.token)
        go = tmp_path / "go"
        hold = (
            f"import os, time\nprint('holding', flush=True)\n"
            f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
        )
        holder = client.submit_job(["python", "-c", hold], entrypoint_num_cpus=1)
        assert _poll(lambda: "holding" in client.get_job_logs(holder), 30)
        assert _poll(lambda: "CPU 1/1" in _status(c), 20), _status(c)
        # A job asking for nothing runs, but its task waits for the CPU the first job holds,
        # and `volley status` names that job as the holder.
        task = INIT + (
            "@volley.remote\ndef f():\n    return 'task ran'\n"
            "r = f.remote()\nprint('submitted', flush=True)\nprint(volley.get(r), flush=True)\n"
        )
        user = client.submit_job(["python", "-c", task])
        assert _poll(lambda: "submitted" in client.get_job_logs(user), 30)
        held = f"held by job '{holder}'"
        assert _poll(lambda: held in _status(c), 20), _status(c)
        assert "task ran" not in client.get_job_logs(user)
        assert client.get_job_status(user) == "RUNNING"
        go.touch()
        assert client.wait(holder, timeout=30)["status"] == "SUCCEEDED"
        row = client.wait(user, timeout=30)
        assert row["status"] == "SUCCEEDED", (row, client.get_job_logs(user))
        assert "task ran" in client.get_job_logs(user)
        # A job that crashes gives its CPU back: the next job's task runs at once.
        crash = client.submit_job(["python", "-c", "import os; os._exit(3)"], entrypoint_num_cpus=1)
        assert client.wait(crash, timeout=30)["status"] == "FAILED"
        again = client.submit_job(["python", "-c", task])
        row = client.wait(again, timeout=60)
        assert row["status"] == "SUCCEEDED" and "task ran" in client.get_job_logs(again), row
        assert _poll(lambda: "CPU 0/1" in _status(c), 20), _status(c)
        # A stopped job gives its CPU back too.
        go.unlink()
        stopped = client.submit_job(["python", "-c", hold], entrypoint_num_cpus=1)
        assert _poll(lambda: "holding" in client.get_job_logs(stopped), 30)
        assert _poll(lambda: "CPU 1/1" in _status(c), 20), _status(c)
        assert client.stop_job(stopped) is True
        assert client.wait(stopped, timeout=30)["status"] == "STOPPED"
        assert _poll(lambda: "CPU 0/1" in _status(c), 20), _status(c)
        # A job whose entrypoint wants the CPU a task holds waits PENDING, naming the task,
        # and starts once the task ends, while the task's job still runs.
        after = tmp_path / "after"
        busy = INIT + (
            "@volley.remote\ndef busy(p):\n    import os, time\n"
            "    while not os.path.exists(p):\n        time.sleep(0.05)\n"
            f"print('busy', flush=True)\nvolley.get(busy.remote({str(go)!r}))\n"
            "import os, time\nprint('freed', flush=True)\n"
            f"while not os.path.exists({str(after)!r}):\n    time.sleep(0.05)\n"
        )
        tasker = client.submit_job(["python", "-c", busy])
        assert _poll(lambda: "busy" in client.get_job_logs(tasker), 30)
        assert _poll(lambda: "CPU 1/1" in _status(c), 20), _status(c)
        waiting = client.submit_job(["python", "-c", "print('second')"], entrypoint_num_cpus=1)
        row = client.get_job_info(waiting)
        assert row["status"] == "PENDING", row
        why = "waiting for 1 CPU on the head's node: the one CPU is held by task 'busy'"
        assert why in row["message"], row
        go.touch()
        row = client.wait(waiting, timeout=30)
        assert row["status"] == "SUCCEEDED" and row["message"] is None, row
        assert client.get_job_status(tasker) == "RUNNING"
        after.touch()
        assert client.wait(tasker, timeout=30)["status"] == "SUCCEEDED"
    finally:
        c.stop()
