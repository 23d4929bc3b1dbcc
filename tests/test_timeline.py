"""``volley.timeline`` and ``volley timeline``: the recorded tasks as a Chrome trace."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import volley


@volley.remote
def tl_sleep(s):
    time.sleep(s)
    return s


@volley.remote
def tl_boom():
    raise ValueError("boom")


def test_trace_has_a_slice_per_task_on_its_workers_track(volley_2cpu, tmp_path):
    refs = [tl_sleep.remote(0.05) for _ in range(6)]
    volley.get(refs)
    volley.wait([tl_boom.remote()])
    path = tmp_path / "trace.json"
    events = volley.timeline(path, filters=[("name", "!=", "nothing")])
    doc = json.loads(path.read_text())
    assert doc["traceEvents"] == events
    slices = [e for e in events if e["ph"] == "X" and e["name"] in ("tl_sleep", "tl_boom")]
    sleeps = [e for e in slices if e["name"] == "tl_sleep"]
    assert len(sleeps) == 6
    # Each slice lasts about its sleep (the times are milliseconds).
    assert all(40_000 <= e["dur"] < 5_000_000 for e in sleeps), sleeps
    # Two workers ran them: a track each, named, and the tasks on one track do not overlap.
    tracks = {(e["pid"], e["tid"]) for e in sleeps}
    assert 1 <= len(tracks) <= 2
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    for track in tracks:
        assert names[track] == f"worker {track[1]}"
        mine = sorted(
            (e["ts"], e["ts"] + e["dur"]) for e in sleeps if (e["pid"], e["tid"]) == track
        )
        assert all(a[1] <= b[0] + 1000 for a, b in zip(mine, mine[1:])), mine
    boom = [e for e in slices if e["name"] == "tl_boom"]
    assert len(boom) == 1 and boom[0]["args"]["error"].startswith("TASK_EXCEPTION")
    assert len({e["args"]["task_id"] for e in sleeps}) == 6


def test_the_cli_writes_a_trace_of_a_heads_tasks_and_says_what_is_wrong(tmp_path):
    from test_cluster import Cluster

    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start_nodes(1)
        env = dict(c.env, VOLLEY_TOKEN=c.token)
        script = tmp_path / "drv.py"
        script.write_text(
            "import volley\n"
            f"volley.init(address={c.head!r}, token={c.token!r})\n"
            "@volley.remote\n"
            "def tl_cli(x):\n    return x\n"
            "print(volley.get([tl_cli.remote(i) for i in range(5)]))\n"
        )
        subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=120)
        out = tmp_path / "t.json"
        cmd = [sys.executable, "-m", "volley._cli", "timeline", "-o", str(out)]
        cmd += ["--address", c.head, "--filter", "name=tl_cli"]
        deadline = time.monotonic() + 20
        while True:  # the rows reach the head with the driver node's heartbeats
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            slices = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
            if len(slices) == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(slices) == 5 and "wrote 5 tasks" in r.stdout, (r.stdout, slices)
        bad = subprocess.run(
            [*cmd[:6], "--address", c.head, "--filter", "nokey"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "KEY=VALUE" in bad.stderr, bad.stderr
    finally:
        c.stop()


def test_a_task_queued_behind_another_on_its_worker_starts_when_that_one_ends(volley_2cpu):
    # Six 0.2-s tasks on two workers: four wait in the workers' pipelines behind the running
    # ones. Their start (and so their duration) is when they ran, not when they were handed over.
    refs = [tl_sleep.remote(0.2) for _ in range(6)]
    volley.get(refs)
    rows = [volley.state.get_task(r) for r in refs]
    assert all(r["state"] == "FINISHED" for r in rows), rows
    assert all(190 <= r["duration_ms"] < 380 for r in rows), [r["duration_ms"] for r in rows]
    by_worker: dict[int, list[dict]] = {}
    for r in rows:
        by_worker.setdefault(r["worker_pid"], []).append(r)
    for runs in by_worker.values():
        runs.sort(key=lambda r: r["started_ms"])
        assert all(a["ended_ms"] <= b["started_ms"] for a, b in zip(runs, runs[1:])), runs
