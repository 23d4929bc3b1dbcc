"""The history a head writes to its session directory covers jobs too: a job's row as it is
submitted, runs and ends (``history/jobs.jsonl``), an index of which log file holds whose output
(``history/logs.jsonl``), and task and actor rows naming a submitted job by its submission id as
the live state API does. ``volley list jobs --session DIR`` and ``volley job list --session DIR``
read them after the head is gone (SIGKILLed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import poll
from test_cluster import Cluster

from volley import job


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volley._cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_jobs_and_their_logs_are_in_the_history_after_the_head_crashed(tmp_path):
    c = Cluster(tmp_path)
    code = (
        "import volley\nvolley.init(address='auto')\n"
        "@volley.remote\ndef sq(x):\n    return x * x\n"
        "@volley.remote\nclass Box:\n    def get(self):\n        return 7\n"
        "b = Box.remote()\n"
        "print(sum(volley.get([sq.remote(i) for i in range(4)])), volley.get(b.get.remote()))\n"
    )
    history = c.session / "history"
    try:
        c.start_nodes(1)
        client = job.JobSubmissionClient(c.head, token=c.token)
        jid = client.submit_job(["python", "-c", code], submission_id="hist-job")
        row = client.wait(jid, timeout=60)
        assert row["status"] == "SUCCEEDED", (row, client.get_job_logs(jid))
        failed = client.submit_job(["python", "-c", "import sys; sys.exit('bad input')"])
        assert client.wait(failed, timeout=30)["status"] == "FAILED"

        def written():
            jobs = {r["job_id"]: r for r in _lines(history / "jobs.jsonl")}
            tasks = [t for t in _lines(history / "tasks.jsonl") if t["name"] == "sq"]
            ended = {j: jobs.get(j, {}).get("status") for j in (jid, failed)}
            done = ended == {jid: "SUCCEEDED", failed: "FAILED"}
            boxes = [a for a in _lines(history / "actors.jsonl") if a["class_name"] == "Box"]
            indexed = {e["kind"] for e in _lines(history / "logs.jsonl")} >= {"job", "actor"}
            four = len({t["task_id"] for t in tasks}) == 4
            return done and four and boxes and indexed and (jobs, tasks)

        got = poll(written, timeout=20)
        assert got, sorted(p.name for p in history.iterdir()) if history.exists() else "none"
        jobs, tasks = got
        # Each change of a job is a line: submitted (or started) and ended.
        lines = [r for r in _lines(history / "jobs.jsonl") if r["job_id"] == jid]
        assert lines[-1]["status"] == "SUCCEEDED" and lines[-1]["exit_code"] == 0
        assert {r["status"] for r in lines} >= {"RUNNING", "SUCCEEDED"}, lines
        # Tasks and actors of the submitted job name it by its submission id, as live.
        assert {t["job_id"] for t in tasks} == {jid}, tasks
        actors = [a for a in _lines(history / "actors.jsonl") if a["class_name"] == "Box"]
        assert actors and {a["job_id"] for a in actors} == {jid}, actors
        # The index names the job's output and its workers' logs, with whose they are.
        index = _lines(history / "logs.jsonl")
        assert {"file": f"jobs/{jid}.log", "kind": "job", "job_id": jid, "node_id": 0,
                "pid": row["driver_pid"]} in index, index  # fmt: skip
        workers = [e for e in index if e["kind"] == "worker" and e["job_id"] == jid]
        assert workers and all(e["file"].startswith("logs/worker-") for e in workers), index
        # (A worker's file is made when it first writes; these wrote nothing.) The tasks ran
        # on the head: their files are named by its pid and theirs.
        head_pid = c.procs[0].pid
        ran = [t for t in _lines(history / "tasks.jsonl") if t.get("worker_pid")]
        assert {e["file"] for e in workers} == {
            f"logs/worker-{head_pid}-{t['worker_pid']}.log" for t in ran if t["job_id"] == jid
        }, (index, ran)
        box = [e for e in index if e["kind"] == "actor"]
        assert box and box[0]["actor_id"] == actors[0]["actor_id"], index
        assert (os.stat(history / "jobs.jsonl").st_mode & 0o777) == 0o600
        c.kill(0)  # SIGKILL: the history is what is left
    finally:
        c.stop()
    env = dict(os.environ)
    out = _cli("list", "jobs", "--session", str(c.session), "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = {r["job_id"]: r for r in json.loads(out.stdout)["rows"]}
    assert rows[jid]["status"] == "SUCCEEDED" and rows[failed]["status"] == "FAILED", rows
    assert "bad input" in rows[failed]["message"]
    out = _cli("list", "jobs", "--session", str(c.session), "--filter", "status=FAILED",
               "--json", env=env)  # fmt: skip
    assert [r["job_id"] for r in json.loads(out.stdout)["rows"]] == [failed], out
    out = _cli("job", "list", "--session", str(c.session), env=env)
    assert out.returncode == 0 and jid in out.stdout and "SUCCEEDED" in out.stdout, out
    out = _cli("job", "list", "--session", str(tmp_path / "nowhere"), env=env)
    assert out.returncode == 1 and "no volley jobs recorded" in out.stderr, out
