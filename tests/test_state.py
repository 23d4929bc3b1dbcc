"""The state API (`volley.state`, `volley list`, `volley summary`) against real workers: tasks
that finish, fail, wait for an argument, are cancelled and run on actors are listed as they
are; filters, limits and totals; an actor's restarts and death; the same on a real 3-node
cluster (each task shows the node it ran on), and the CLI's table and JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import poll

import volley
import volley.state as state


@volley.remote
def ok(x: int) -> int:
    return x


@volley.remote
def boom() -> None:
    raise ValueError("state-api boom")


@volley.remote
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@volley.remote
def after(x: float) -> float:
    return x


@volley.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()


def _job() -> str:
    """This driver's job: its node's number in a cluster (the test cluster outlives a test's
    driver, and the head remembers the tasks of the ones before), 0 on one machine."""
    mine = [n for n in volley.nodes() if n["driver"] and n["pid"] == os.getpid()]
    return str(mine[0]["node_id"]) if mine else "0"


def _by_name(name: str, **kw) -> list[dict]:
    return state.list_tasks(
        filters=[("name", "=", name), ("job_id", "=", _job())], limit=None, **kw
    )


def _settled(name: str, n: int, states=("FINISHED",)) -> list[dict]:
    """The rows of task ``name`` once ``n`` of them are in one of ``states`` (a cluster's head
    hears of them with the next heartbeats)."""
    rows = poll(
        lambda: (r := _by_name(name)) and sum(t["state"] in states for t in r) >= n and r,
        timeout=20,
    )
    assert rows, f"{n} {name} task(s) in {states}: {_by_name(name)}"
    return rows


def test_tasks_are_listed_as_they_ran(volley_2cpu):
    refs = [ok.remote(i) for i in range(5)]
    assert volley.get(refs) == list(range(5))
    rows = _settled("ok", 5)
    assert len(rows) == 5
    ids = {r.hex()[:32] for r in refs}
    assert {t["task_id"] for t in rows} == ids
    for t in rows:
        assert t["state"] == "FINISHED"
        assert t["worker_pid"] and t["node_id"] is not None and t["attempt"] == 0
        assert t["submitted_ms"] <= t["started_ms"] <= t["ended_ms"]
        assert t["duration_ms"] == t["ended_ms"] - t["started_ms"]
        assert t["error_kind"] is None and "traceback" not in t

    # A limit bounds the rows, not the count.
    job = ("job_id", "=", _job())
    r = state.query("tasks", [("name", "=", "ok"), job], limit=2)
    assert (len(r["rows"]), r["total"], r["truncated"]) == (2, 5, True)
    assert state.query("tasks", {"name": "ok", "state": "RUNNING"}, limit=None)["total"] == 0
    others = state.list_tasks(filters=[("name", "!=", "ok"), job], limit=None)
    assert len(others) == len(state.list_tasks(filters=[job], limit=None)) - 5
    one = state.get_task(refs[3])
    assert one["task_id"] == refs[3].hex()[:32] and one["state"] == "FINISHED"
    assert "traceback" in one
    assert state.get_task("0" * 32) is None


def test_a_failed_task_has_its_error_and_traceback(volley_2cpu):
    ref = boom.remote()
    with pytest.raises(ValueError):
        volley.get(ref)
    [row] = _settled("boom", 1, ("FAILED",))
    assert row["state"] == "FAILED"
    assert row["error_kind"] == "TASK_EXCEPTION"
    assert "state-api boom" in row["error_message"]
    assert "traceback" not in row
    detail = state.get_task(ref)
    assert "ValueError" in detail["traceback"] and "state-api boom" in detail["traceback"]
    failed = state.list_tasks(filters={"state": "FAILED", "name": "boom", "job_id": _job()})
    assert [t["task_id"] for t in failed] == [row["task_id"]]


def test_a_task_waits_for_its_argument_then_runs(volley_2cpu):
    slow = nap.remote(1.5)
    dep = after.remote(slow)
    waiting = poll(
        lambda: (r := _by_name("after")) and r[0]["state"] == "WAITING_ARGS" and r, timeout=10
    )
    assert waiting, _by_name("after")
    assert waiting[0]["waiting_for"]
    detail = state.get_task(dep)
    if detail["state"] == "WAITING_ARGS" and detail["node_id"] == waiting[0]["node_id"] == 0:
        # On one machine the scheduler says it in its own words.
        assert "waits for 1 of its arguments" in detail["waiting_for"], detail
    assert volley.get(dep) == 1.5
    [row] = _settled("after", 1)
    assert row["waiting_for"] is None and row["state"] == "FINISHED"


def test_a_cancelled_task_shows_as_cancelled(volley_2cpu):
    blockers = [nap.remote(3) for _ in range(4)]
    victim = after.remote(nap.remote(3))
    volley.cancel(victim)
    with pytest.raises(volley.TaskCancelledError):
        volley.get(victim, timeout=30)
    [row] = _settled("after", 1, ("CANCELLED",))
    assert row["error_kind"] == "CANCELLED"
    for b in blockers:
        volley.cancel(b, force=True)


def test_actor_calls_and_the_actor_itself(volley_2cpu):
    c = Counter.remote()
    assert volley.get([c.incr.remote() for _ in range(3)]) == [1, 2, 3]
    aid = c._actor_ref.hex()
    calls = _settled("Counter.incr", 3)
    assert {t["actor_id"] for t in calls} == {aid}
    actor = poll(lambda: (a := state.get_actor(c)) and a["state"] == "ALIVE" and a, timeout=20)
    assert actor, state.get_actor(c)
    assert actor["class_name"] == "Counter" and actor["restarts"] == 0 and actor["pid"]
    assert actor["actor_id"] == aid
    mine = state.list_actors(filters={"class_name": "Counter", "job_id": _job()})
    assert [a["actor_id"] for a in mine] == [aid]
    s = state.summarize_actors(filters={"job_id": _job()})
    assert s["by_class"]["Counter"]["states"] == {"ALIVE": 1}


def test_an_actors_restarts_and_death_cause(volley_2cpu):
    c = Counter.options(max_restarts=1).remote()
    pid = volley.get(c.pid.remote())
    os.kill(pid, signal.SIGKILL)
    restarted = poll(
        lambda: (a := state.get_actor(c)) and a["restarts"] == 1 and a["state"] == "ALIVE" and a,
        timeout=30,
    )
    assert restarted, state.get_actor(c)
    assert restarted["pid"] != pid
    volley.kill(c)
    dead = poll(lambda: (a := state.get_actor(c)) and a["state"] == "DEAD" and a, timeout=20)
    assert dead, state.get_actor(c)
    assert "kill" in dead["death_cause"]
    assert dead["restarts"] == 1


def test_summaries_count_by_function_and_state(volley_2cpu):
    volley.get([ok.remote(i) for i in range(4)])
    with pytest.raises(ValueError):
        volley.get(boom.remote())
    _settled("ok", 4)
    _settled("boom", 1, ("FAILED",))
    s = state.summarize_tasks(filters={"job_id": _job()})
    assert s["by_name"]["ok"]["states"] == {"FINISHED": 4}
    assert s["by_name"]["boom"]["states"] == {"FAILED": 1}
    assert s["by_name"]["ok"]["max_ms"] >= s["by_name"]["ok"]["p50_ms"] >= 0


@volley.remote
def nested_leaf(x: int) -> int:
    return x


@volley.remote
def outer(n: int) -> list[int]:
    return volley.get([nested_leaf.remote(i) for i in range(n)])


@volley.remote
class Spawner:
    def spawn(self, n: int) -> list[int]:
        return volley.get([nested_leaf.remote(10 + i) for i in range(n)])


def test_nested_tasks_belong_to_their_parents_job(volley_2cpu):
    """A task submitted by a task, or by an actor's method, is its parent's job's (it was
    listed with no job before, so a job's filter missed it)."""
    assert volley.get(outer.remote(3)) == [0, 1, 2]
    s = Spawner.remote()
    assert volley.get(s.spawn.remote(2)) == [10, 11]
    # Five nested tasks, all of this driver's job (a job filter finds them).
    nested = _settled("nested_leaf", 5)
    assert len(nested) == 5, nested
    assert {t["job_id"] for t in nested} == {_job()}


def test_other_kinds(volley_2cpu):
    nodes = state.list_nodes()
    assert nodes and all(n["alive"] for n in nodes)
    # Each node goes by the number volley.nodes() and the task rows give it (a lone node: 0).
    assert {n["node_id"] for n in nodes} == {n["node_id"] for n in volley.nodes()}, nodes
    named = Counter.options(name="state-named").remote()
    volley.get(named.incr.remote())
    listed = poll(
        lambda: any(a["name"] == "state-named" for n in state.list_nodes() for a in n["named"]),
        timeout=20,
    )
    assert listed, state.list_nodes()
    ref = volley.put(b"x" * 100)
    objs = state.list_objects(limit=None)
    assert any(o["object_id"] == ref.hex() for o in objs), objs
    assert all(
        w["state"] in ("STARTING", "IDLE", "BUSY", "BLOCKED", "ACTOR") for w in state.list_workers()
    )
    assert isinstance(state.list_placement_groups(), list)
    jobs = state.list_jobs()
    assert any(j["status"] == "RUNNING" and j["entrypoint"] is None for j in jobs), jobs


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: state.query("gizmos"), "unknown state kind 'gizmos'"),
        (lambda: state.list_tasks(filters=[("colour", "=", "red")]), "no field 'colour'"),
        (lambda: state.list_tasks(filters=[("state", "=", "SLEEPING")]), "not a task state"),
        (lambda: state.list_tasks(filters=[("state", "~", "FAILED")]), "operator '~'"),
        (lambda: state.list_tasks(filters=["state=FAILED"]), "(key, op, value)"),
        (lambda: state.list_tasks(limit=-1), "limit must be"),
        (lambda: state.list_actors(filters={"colour": "red"}), "no field 'colour'"),
        (lambda: state.list_tasks(filters={"node_id": "abc"}), "not a number"),
    ],
)
def test_bad_queries_say_what_is_allowed(volley_2cpu, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volley._cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.one_node("starts a cluster of its own")
def test_on_a_three_node_cluster_with_the_cli(tmp_path):
    from test_cluster import Cluster, _wait_nodes

    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start_nodes(3)
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        refs = [nap.remote(0.3) for _ in range(9)]
        volley.get(refs)
        with pytest.raises(ValueError):
            volley.get(boom.remote())
        rows = _settled("nap", 9)
        nodes = {t["node_id"] for t in rows}
        assert len(nodes) >= 2, rows  # three 1-CPU nodes shared the nine tasks
        driver = {n["node_id"] for n in volley.nodes() if n["driver"]}
        assert not nodes & driver, (nodes, driver)
        assert all(t["worker_pid"] for t in rows)
        [failed] = _settled("boom", 1, ("FAILED",))
        assert "state-api boom" in state.get_task(failed["task_id"])["traceback"]

        env = dict(c.env, VOLLEY_TOKEN=c.token)
        out = _cli("list", "tasks", "--address", c.head, "--filter", "name=nap", "--json", env=env)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["total"] == 9 and {t["state"] for t in answer["rows"]} == {"FINISHED"}

        out = _cli("list", "tasks", "--address", c.head, "--filter", "state!=FINISHED", env=env)
        assert out.returncode == 0, out.stderr
        assert "TASK_ID" in out.stdout and "boom" in out.stdout and "nap" not in out.stdout
        assert "1 of 1 tasks" in out.stdout

        out = _cli("list", "nodes", "--address", c.head, env=env)
        assert out.returncode == 0 and "NODE_ID" in out.stdout, out.stderr

        out = _cli("summary", "tasks", "--address", c.head, env=env)
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("nap "))
        assert line.split()[4] == "9", out.stdout  # the FINISHED column

        out = _cli("list", "gizmos", "--address", c.head, env=env)
        assert out.returncode != 0 and "invalid choice" in out.stderr
        out = _cli("list", "tasks", "--address", c.head, "--filter", "colour=red", env=env)
        assert out.returncode == 1 and "no field 'colour'" in out.stderr
        out = _cli("list", "tasks", "--address", "127.0.0.1:1", env=env)
        assert out.returncode == 1 and "127.0.0.1:1" in out.stderr
    finally:
        volley.shutdown()
        c.stop()


@pytest.mark.one_node("starts a cluster of its own")
def test_the_history_outlives_a_crashed_head(tmp_path):
    from test_cluster import Cluster

    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start_nodes(1)
        volley.init(address=c.head, token=c.token)
        volley.get([ok.remote(i) for i in range(6)])
        with pytest.raises(ValueError):
            volley.get(boom.remote())
        k = Counter.remote()
        volley.get(k.incr.remote())
        _settled("ok", 6)
        _settled("boom", 1, ("FAILED",))
        history = c.session / "history"
        assert poll(
            lambda: (
                (history / "tasks.jsonl").exists()
                and (history / "tasks.jsonl").read_text().count('"FINISHED"') >= 7
                and (history / "actors.jsonl").exists()
            ),
            timeout=20,
        ), sorted(p.name for p in history.iterdir()) if history.exists() else "no history dir"
        assert (os.stat(history).st_mode & 0o777) == 0o700
        assert (os.stat(history / "tasks.jsonl").st_mode & 0o777) == 0o600
        volley.shutdown()
        c.kill(0)  # the head crashes: SIGKILL, no goodbye
    finally:
        volley.shutdown()
        c.stop()
    env = dict(os.environ)
    out = _cli(
        "list", "tasks", "--session", str(c.session), "--filter", "name=ok", "--json", env=env
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["total"] == 6 and {t["state"] for t in answer["rows"]} == {"FINISHED"}
    out = _cli(
        "list",
        "tasks",
        "--session",
        str(c.session),
        "--filter",
        "state=FAILED",
        "--detail",
        env=env,
    )
    assert out.returncode == 0 and "state-api boom" in out.stdout and "Traceback" in out.stdout, out
    out = _cli("list", "actors", "--session", str(c.session), env=env)
    assert out.returncode == 0 and "Counter" in out.stdout, out
    out = _cli("summary", "tasks", "--session", str(c.session), env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out
    rows = state.query("tasks", {"name": "boom"}, session=c.session)["rows"]
    assert len(rows) == 1 and "traceback" not in rows[0]
    out = _cli("list", "nodes", "--session", str(c.session), env=env)
    assert out.returncode == 1 and "holds tasks and actors" in out.stderr
    out = _cli("list", "tasks", "--session", str(tmp_path / "nowhere"), env=env)
    assert out.returncode == 1 and "no volley history" in out.stderr


@volley.remote(num_cpus=0)
class Holder:
    """Keeps one object of its own node's (put by its worker) alive."""

    def hold(self) -> str:
        self.ref = volley.put(b"x" * 1000)
        return self.ref.hex()


@pytest.mark.one_node("starts a cluster of its own")
def test_workers_and_objects_of_every_node_and_one_that_does_not_answer(tmp_path):
    # The head asks every live node for its workers and objects and merges the answers
    # (filters and limits as for tasks); a node that does not answer (SIGSTOPped: its socket
    # still accepts, it never replies) is named in `missing` within the deadline, not waited on.
    from test_cluster import Cluster, _wait_nodes

    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        for i in range(3):
            # Dead after a minute: the stopped node stays in the view while it is asked.
            extra = ("--dead-after-ms", "60000", "--resources", json.dumps({f"n{i}": 1}))
            c.start(i == 0, f"127.0.0.{i + 1}", extra=extra)
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        ids = {n["addr"]: n["node_id"] for n in state.list_nodes() if not n["driver"]}
        node = [ids[a] for a in c.started]
        holders = [Holder.options(resources={f"n{i}": 1}).remote() for i in range(3)]
        held = volley.get([h.hold.remote() for h in holders])
        env = dict(c.env, VOLLEY_TOKEN=c.token)

        def ls(*args: str) -> dict:
            out = _cli("list", *args, "--address", c.head, "--json", env=env)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        every = ls("workers", "--limit", "0")
        # The driver's node takes no connections: the head asks it over its heartbeat link.
        [me] = [n["node_id"] for n in volley.nodes() if n["driver"] and n["pid"] == os.getpid()]
        assert every["missing"] == [] and me in {w["node_id"] for w in every["rows"]}, every
        assert set(node) <= {w["node_id"] for w in every["rows"] if w["state"] == "ACTOR"}
        assert every["total"] == len(every["rows"]) and not every["truncated"]
        second = ls("workers", "--filter", f"node_id={node[1]}", "--limit", "0")
        assert second["rows"] and {w["node_id"] for w in second["rows"]} == {node[1]}
        assert second["total"] == len(second["rows"]) < every["total"]
        one = ls("workers", "--limit", "1")
        assert len(one["rows"]) == 1 and one["total"] == every["total"] and one["truncated"]
        objects = ls("objects", "--limit", "0")
        for n, oid in zip(node, held):
            assert any(o["object_id"] == oid and o["node_id"] == n for o in objects["rows"]), (
                n,
                oid,
                objects,
            )
        third = ls("objects", "--filter", f"node_id={node[2]}", "--filter", "spilled=false")
        assert held[2] in {o["object_id"] for o in third["rows"]}, third
        assert {o["node_id"] for o in third["rows"]} == {node[2]}
        assert third["total"] == len(third["rows"]) < objects["total"]
        # From the driver: its own node (which takes no connections) is merged in.
        mine = state.query("workers", limit=None)
        assert mine["missing"] == [] and set(node) <= {w["node_id"] for w in mine["rows"]}

        os.kill(c.procs[2].pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            partial = ls("workers", "--limit", "0")
            took = time.monotonic() - began
            assert took < 20, took
            [gone] = partial["missing"]
            assert gone.startswith(f"node {node[2]} ") and "no answer within" in gone, gone
            rows_of = {w["node_id"] for w in partial["rows"]}
            assert node[2] not in rows_of and {node[0], node[1]} <= rows_of, partial
            text = _cli("list", "workers", "--address", c.head, env=env)
            assert text.returncode == 0, text.stderr
            assert f"not in this answer: node {node[2]} " in text.stderr, text.stderr
            bad = _cli("list", "objects", "--address", c.head, "--filter", "colour=red", env=env)
            assert bad.returncode == 1 and "no field 'colour'" in bad.stderr, bad.stderr
        finally:
            os.kill(c.procs[2].pid, signal.SIGCONT)
    finally:
        volley.shutdown()
        c.stop()


# ---------------------------------------------------------------- range filters (numbers)


def test_range_filters_compare_times_and_durations(volley_2cpu):
    volley.get([nap.remote(0.3) for _ in range(2)] + [ok.remote(i) for i in range(3)])
    naps = _settled("nap", 2)
    _settled("ok", 3)
    job = ("job_id", "=", _job())
    first = min(t["started_ms"] for t in naps)
    last_end = max(t["ended_ms"] for t in naps)
    slow = state.list_tasks(filters=[("duration_ms", ">=", 250), job], limit=None)
    assert {t["name"] for t in slow} == {"nap"} and len(slow) == 2, slow
    since = state.list_tasks(filters=[("name", "=", "nap"), ("started_ms", ">=", first), job])
    assert len(since) == 2, since
    assert state.list_tasks(filters=[("ended_ms", ">", last_end + 60_000), job]) == []
    # changed_ms: what submitted, started or ended after a moment (the stream page's question).
    changed = state.list_tasks(filters=[("changed_ms", ">", last_end - 1), job], limit=None)
    assert {t["task_id"] for t in naps} & {t["task_id"] for t in changed}, changed
    # The ordering operators on a string field or with a value that is no number.
    for filters, message in [
        ([("state", ">", "1")], "'>' compares numbers"),
        ([("started_ms", ">", "soon")], "'soon' is not a number"),
        ([("started_ms", "=>", 1)], "operator '=>'"),
    ]:
        with pytest.raises(ValueError, match=message):
            state.list_tasks(filters=filters)
    with pytest.raises(ValueError, match="compares numbers"):
        state.list_actors(filters=[("class_name", ">", 1)])
    assert state.list_actors(filters=[("restarts", ">", 1000)]) == []


def test_cli_range_filters_over_a_sessions_history(tmp_path):
    from volley._cli_state import _parse_filter

    assert _parse_filter("started_ms>1700000000000") == ("started_ms", ">", "1700000000000")
    assert _parse_filter("duration_ms>=5") == ("duration_ms", ">=", "5")
    assert _parse_filter("ended_ms<=7") == ("ended_ms", "<=", "7")
    assert _parse_filter("name!=f") == ("name", "!=", "f")
    assert _parse_filter("a<b=c") == ("a", "<", "b=c")
    for bad in ("started_ms", ">5", "a!b"):
        with pytest.raises(ValueError, match="KEY>N"):
            _parse_filter(bad)
    history = tmp_path / "history"
    history.mkdir()
    rows = [
        {"task_id": f"{i:032x}", "name": "f", "state": "FINISHED", "submitted_ms": 1000 * i,
         "started_ms": 1000 * i + 10, "ended_ms": 1000 * i + 10 + 100 * i,
         "duration_ms": 100 * i}
        for i in range(1, 6)
    ] + [{"task_id": f"{9:032x}", "name": "f", "state": "QUEUED", "submitted_ms": 9000,
          "started_ms": None, "ended_ms": None, "duration_ms": None}]  # fmt: skip
    (history / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ)

    def total(*filters: str) -> int:
        args = [a for f in filters for a in ("--filter", f)]
        out = _cli("list", "tasks", "--session", str(tmp_path), *args, "--json", env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["total"]

    assert total("duration_ms>=300") == 3
    assert total("started_ms<3000") == 2, "a task not started is ordered with nothing"
    assert total("changed_ms>8000") == 1  # the queued one, submitted at 9000
    assert total("ended_ms>0", "duration_ms<200") == 1
    out = _cli("list", "tasks", "--session", str(tmp_path), "--filter", "ended_ms>x", env=env)
    assert out.returncode == 1 and "'x' is not a number" in out.stderr, out
    out = _cli("list", "tasks", "--session", str(tmp_path), "--filter", "state>1", env=env)
    assert out.returncode == 1 and "'>' compares numbers" in out.stderr, out
