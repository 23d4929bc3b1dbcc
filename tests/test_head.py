"""The cluster's head: its key-value table (``volley.library.kv_*``) and its directory
(``volley.library.directory``), on a lone node (its own head) and across a real 3-node cluster,
from the driver, from inside tasks and from another driver."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import poll

import volley
from volley import library


@volley.remote
def kv_in_task(key: str, value: str) -> tuple[bool, bytes | None, list]:
    """From a worker: put-if-absent, read back, list."""
    won = library.kv_put(key, value, overwrite=False, namespace="tasks")
    return won, library.kv_get(key, namespace="tasks"), library.kv_keys(namespace="tasks")


def test_kv_on_a_lone_node(volley_2cpu):
    assert library.kv_put("a", "1") is True
    assert library.kv_get("a") == b"1"
    assert library.kv_put("a", b"2", overwrite=False) is False
    assert library.kv_get("a") == b"1"
    assert library.kv_put("a", b"\x00\xff") is True
    assert library.kv_get("a") == b"\x00\xff"
    # Namespaces are apart.
    assert library.kv_get("a", namespace="other") is None
    assert library.kv_put("a", "x", namespace="other")
    assert library.kv_get("a", namespace="other") == b"x"
    # Keys: sorted, by prefix, str for a str prefix and bytes for a bytes prefix.
    for k in ("p/2", "p/1", "q/1"):
        library.kv_put(k, "v")
    assert library.kv_keys("p/") == ["p/1", "p/2"]
    assert library.kv_keys(b"p/") == [b"p/1", b"p/2"]
    assert library.kv_keys() == ["a", "p/1", "p/2", "q/1"]
    assert library.kv_delete("p/1") is True
    assert library.kv_delete("p/1") is False
    assert library.kv_keys("p/") == ["p/2"]


def test_kv_rejects_bad_input_at_the_call(volley_2cpu):
    with pytest.raises(TypeError, match="a key must be str or bytes, not int"):
        library.kv_put(1, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a value must be str or bytes, not dict"):
        library.kv_put("k", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="namespace must be a str"):
        library.kv_get("k", namespace=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a prefix must be str or bytes"):
        library.kv_keys(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 4096 bytes"):
        library.kv_get("k" * 5000)
    with pytest.raises(ValueError, match="object store"):
        library.kv_put("k", b"x" * ((4 << 20) + 1))
    assert library.kv_get("k") is None, "nothing was stored"


def test_kv_from_tasks_on_a_lone_node(volley_2cpu):
    """Tasks use the node's head through their worker connection; of many tasks racing to
    claim one key, exactly one wins, and all see its value."""
    results = volley.get([kv_in_task.remote("claim", f"task-{i}") for i in range(8)])
    winners = [i for i, (won, _, _) in enumerate(results) if won]
    assert len(winners) == 1, results
    value = f"task-{winners[0]}".encode()
    assert all(v == value for _, v, _ in results), results
    assert all(keys == ["claim"] for _, _, keys in results), results
    assert library.kv_get("claim", namespace="tasks") == value


def test_the_directory_of_a_lone_node(volley_2cpu):
    @volley.remote
    class Named:
        def ping(self) -> str:
            return "pong"

    a = Named.options(name="dir-a", namespace="ns1").remote()
    assert volley.get(a.ping.remote()) == "pong"
    d = library.directory()
    assert [(x["name"], x["namespace"], x["class_name"]) for x in d["actors"]] == [
        ("dir-a", "ns1", Named.__qualname__)  # type: ignore[attr-defined]
    ]
    assert set(d) == {"actors", "placement_groups", "jobs"}
    volley.kill(a)
    poll(lambda: not library.directory()["actors"], timeout=10)


# ------------------------------------------------------------------------ a real cluster


def _other_driver(cluster, body: str) -> str:
    """Runs ``body`` in a second driver of ``cluster``; its stdout."""
    code = (
        "import volley\n"
        "from volley import library\n"
        f"volley.init(address={cluster.head!r}, token={cluster.token!r})\n" + body
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_kv_across_a_cluster(three_node_cluster):
    """A value one driver puts is read by another driver and by tasks on every node; tasks on
    several nodes racing for one key: exactly one wins."""
    assert library.kv_put("shared", "from-driver-1", namespace="cl")
    out = _other_driver(
        three_node_cluster,
        "print('GOT', library.kv_get('shared', namespace='cl'))\n"
        "print('PUT', library.kv_put('second', 'from-driver-2', namespace='cl'))\n",
    )
    assert "GOT b'from-driver-1'" in out and "PUT True" in out, out
    assert library.kv_get("second", namespace="cl") == b"from-driver-2"

    @volley.remote(scheduling_strategy="SPREAD")
    def claim(i: int) -> tuple[bool, bytes | None, str]:
        import os

        won = library.kv_put("leader", f"t{i}", overwrite=False, namespace="cl")
        return won, library.kv_get("leader", namespace="cl"), os.environ["VOLLEY_NODE_ADDRESS"]

    results = volley.get([claim.remote(i) for i in range(6)])
    assert len({node for _, _, node in results}) >= 2, results  # from several nodes
    assert sum(won for won, _, _ in results) == 1, results
    winner = [i for i, (won, _, _) in enumerate(results) if won][0]
    assert all(v == f"t{winner}".encode() for _, v, _ in results), results
    assert library.kv_keys(namespace="cl") == ["leader", "second", "shared"]


def test_the_directory_lists_an_actor_named_on_another_node(three_node_cluster):
    """An actor another driver named (running on another node of the cluster) is listed by
    this driver's ``directory()``, with that driver's job, and found by ``get_actor``."""
    code = (
        "import sys, os, volley\n"
        f"volley.init(address={three_node_cluster.head!r}, token={three_node_cluster.token!r})\n"
        "@volley.remote\n"
        "class Far:\n"
        "    def where(self):\n"
        "        return os.environ['VOLLEY_NODE_ADDRESS']\n"
        "a = Far.options(name='far-away', namespace='dir').remote()\n"
        "print('AT', volley.get(a.where.remote()), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        env=three_node_cluster.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert line.startswith("AT "), line
        where = line.split()[1]

        def listed():
            actors = library.directory()["actors"]
            return [a for a in actors if (a["namespace"], a["name"]) == ("dir", "far-away")]

        entry = poll(listed, timeout=15)
        assert entry[0]["class_name"] == "Far"
        nodes = {n["node_id"]: n["address"] for n in volley.nodes()}
        assert nodes[entry[0]["node_id"]] == where
        assert volley.get(volley.get_actor("far-away", namespace="dir").where.remote()) == where
        jobs = library.directory()["jobs"]
        assert len([j for j in jobs if j["end_time"] is None]) == 2, jobs  # both drivers
    finally:
        if p.stdin:
            p.stdin.close()
        p.wait(timeout=30)
    # The other driver gone, its job ends and its actor leaves the directory.
    poll(lambda: not listed(), timeout=15)
    jobs = library.directory()["jobs"]
    assert len([j for j in jobs if j["end_time"] is not None]) >= 1, jobs


def test_two_drivers_racing_for_a_name_exactly_one_wins(three_node_cluster, tmp_path):
    """Two drivers (each with a node of its own) create an actor of one name at the same moment:
    the head gives the name to exactly one; the other gets today's duplicate-name error."""
    go = tmp_path / "go"
    code = (
        "import os, sys, time, volley\n"
        f"volley.init(address={three_node_cluster.head!r}, token={three_node_cluster.token!r})\n"
        "@volley.remote\n"
        "class Leader:\n"
        "    def ping(self):\n"
        "        return 'pong'\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.005)\n"
        "try:\n"
        "    a = Leader.options(name='leader', namespace='race').remote()\n"
        "    print('WON', volley.get(a.ping.remote()), flush=True)\n"
        "    sys.stdin.readline()\n"
        "except ValueError as e:\n"
        "    print('TAKEN', e, flush=True)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=three_node_cluster.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Both drivers in the cluster before the start.
        poll(lambda: len([j for j in library.directory()["jobs"] if j["end_time"] is None]) >= 3,
             timeout=30)  # fmt: skip
        go.write_text("")
        lines = [p.stdout.readline() if p.stdout else "" for p in procs]
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=30)
    assert sorted(line.split()[0] for line in lines if line) == ["TAKEN", "WON"], lines
    taken = next(line for line in lines if line.startswith("TAKEN"))
    assert "already exists in namespace 'race'" in taken, taken


def test_tasks_on_several_nodes_racing_for_a_name_exactly_one_wins(three_node_cluster):
    """Tasks spread over the nodes each try to create an actor of one name: exactly one makes
    it; the others get the duplicate-name error, or with ``get_if_exists`` that same actor."""

    @volley.remote
    class Holder:
        def node(self) -> str:
            import os

            return os.environ["VOLLEY_NODE_ADDRESS"]

    @volley.remote(scheduling_strategy="SPREAD")
    def make(i: int) -> tuple[str, str]:
        import os

        try:
            h = Holder.options(name="task-leader", namespace="tasks-race").remote()
            volley.get(h.node.remote())
            return "WON", os.environ["VOLLEY_NODE_ADDRESS"]
        except ValueError as e:
            return "TAKEN", str(e)

    results = volley.get([make.remote(i) for i in range(6)], timeout=60)
    assert [r for r, _ in results].count("WON") == 1, results
    assert all("already exists" in msg for r, msg in results if r == "TAKEN"), results
    # The winner's node told the head of the actor as its creation returned (it did not wait
    # for its next heartbeat): get_actor from this driver's node finds it at once.
    leader = volley.get_actor("task-leader", namespace="tasks-race")
    again = Holder.options(name="task-leader", namespace="tasks-race", get_if_exists=True).remote()
    assert volley.get(again.node.remote()) == volley.get(leader.node.remote())
    volley.kill(leader)


def test_a_head_that_never_answers_is_an_error_that_names_it(tmp_path):
    """A head that takes a member's question and then says nothing (stopped, wedged) makes the
    question fail after the answer timeout (30 s; ``VOLLEY_HEAD_TIMEOUT_S`` here), with an
    error that names the head's address, rather than hang the driver."""
    from test_cluster import Cluster

    c = Cluster(tmp_path)
    c.env["VOLLEY_TEST_HEAD_STALL_MS"] = "60000"
    try:
        c.start(True, "127.0.0.1")
        code = (
            "import time, volley\n"
            "from volley import library\n"
            f"volley.init(address={c.head!r}, token={c.token!r})\n"
            "t0 = time.monotonic()\n"
            "try:\n"
            "    library.kv_get('k')\n"
            "except ConnectionError as e:\n"
            "    print('AFTER', round(time.monotonic() - t0, 1), 'ERROR', e, flush=True)\n"
        )

        def ask(timeout: str) -> tuple[float, str]:
            env = dict(c.env, VOLLEY_HEAD_TIMEOUT_S=timeout)
            del env["VOLLEY_TEST_HEAD_STALL_MS"]
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            assert "ERROR" in out.stdout, out.stdout
            return float(out.stdout.split()[1]), out.stdout

        after, out = ask("1")
        assert after < 10, out  # 1 s and a connection, not 30 s or the head's 60 s
        assert f"the head at {c.head}: no answer within 1.0 s" in out, out
        # A limit that is no number is said so, at once.
        after, out = ask("soon")
        assert after < 5, out
        assert 'VOLLEY_HEAD_TIMEOUT_S must be a positive number of seconds, not "soon"' in out
    finally:
        c.stop()
