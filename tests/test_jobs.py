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
        return answer["rows"] if answer["total"] == 10 else None

    rows = poll(tasks, timeout=20)
    assert rows and {(t["name"], t["job_id"]) for t in rows} == {("sq", jid)}, rows


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
    r = cli(jc, "submit", "--runtime-env-json", '{"pip": ["x"]}', "--", "python", "-c", "pass")
    assert r.returncode == 1 and "unknown key(s) ['pip']" in r.stderr, r
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
        os.killpg(pid, signal.SIGKILL)
        c.procs.clear()
        c.start(True, "127.0.0.1")
        client = job.JobSubmissionClient(c.head, token=c.token)
        row = client.get_job_info(orphan)
        assert row["status"] == "FAILED" and "head stopped while the job ran" in row["message"]
    finally:
        c.stop()
