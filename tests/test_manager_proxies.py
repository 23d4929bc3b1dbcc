"""``multiprocessing.Manager`` proxies passed to volley: tasks run with their driver's authkey.

A ``Manager``'s server accepts only connections that prove they know the authkey of the process
that started it (``multiprocessing.current_process().authkey``); a proxy unpickled in another
process uses that process's authkey. volley's workers are not the driver's children, so each
task carries its driver's key (inside the task, over the node's authenticated links) and runs
with it: on one node, on every node of a cluster, and for several drivers of different keys
sharing one cluster's workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import driver_env, finish_driver, read_line_with_prefix
from test_cluster import Cluster

import volley
import volley.futures
import volley.multiprocessing


def _authkey() -> bytes:
    return bytes(multiprocessing.current_process().authkey)


@pytest.fixture(scope="module")
def manager():
    # Started before volley runs in this module (a fork of the test process either way: the
    # server must not be disturbed by, nor disturb, the volley it inherits).
    with multiprocessing.Manager() as m:
        yield m


@volley.remote
def fill(q, d, ns, i: int) -> int:
    q.put(i)
    d[i] = i * 10
    ns.last = i
    return i


@volley.remote
def nested_fill(q, d, ns, i: int) -> int:
    # A task submitted by a task carries the same key.
    return volley.get(fill.remote(q, d, ns, i))


@volley.remote
def worker_authkey() -> bytes:
    return _authkey()


@volley.remote
def key_leaks() -> list[str]:
    """Where this worker could have been given the key in the clear: its command line and its
    environment (readable by the user's other processes, and copied to its children)."""
    key = _authkey()
    found = []
    for name in ("cmdline", "environ"):
        with open(f"/proc/self/{name}", "rb") as f:
            data = f.read()
        if key in data or key.hex().encode() in data:
            found.append(name)
    return found


def drain(q, n: int) -> list:
    return sorted(q.get(timeout=30) for _ in range(n))


def test_queue_dict_and_namespace_in_tasks(volley_shared, manager):
    q, d, ns = manager.Queue(), manager.dict(), manager.Namespace()
    assert volley.get([fill.remote(q, d, ns, i) for i in range(6)], timeout=60) == list(range(6))
    assert drain(q, 6) == list(range(6))
    assert dict(d) == {i: i * 10 for i in range(6)}
    assert ns.last in range(6)


def test_nested_tasks_carry_the_key(volley_shared, manager):
    q, d, ns = manager.Queue(), manager.dict(), manager.Namespace()
    assert volley.get([nested_fill.remote(q, d, ns, i) for i in range(3)], timeout=60) == [0, 1, 2]
    assert drain(q, 3) == [0, 1, 2]


def test_tasks_run_with_the_drivers_key_and_it_is_not_in_argv_or_environ(volley_shared):
    assert volley.get(worker_authkey.remote(), timeout=60) == _authkey()
    assert volley.get(key_leaks.remote(), timeout=60) == []


@volley.remote
class Recorder:
    def __init__(self, q):
        self.q = q  # a proxy unpickled when the actor starts

    def record(self, d, x):
        self.q.put(x)
        d[x] = True
        return x


@volley.remote
class Submitter:
    def run(self, q, d, ns, i):
        # A task submitted from an actor's method runs with the actor's driver's key too.
        return volley.get(fill.remote(q, d, ns, i))


def test_tasks_an_actor_submits_carry_the_key(volley_shared, manager):
    q, d, ns = manager.Queue(), manager.dict(), manager.Namespace()
    s = Submitter.remote()
    assert volley.get([s.run.remote(q, d, ns, i) for i in range(3)], timeout=60) == [0, 1, 2]
    assert drain(q, 3) == [0, 1, 2]
    volley.kill(s)


def test_an_actor_uses_proxies(volley_shared, manager):
    q, d = manager.Queue(), manager.dict()
    r = Recorder.remote(q)
    assert volley.get([r.record.remote(d, i) for i in range(4)], timeout=60) == [0, 1, 2, 3]
    assert drain(q, 4) == [0, 1, 2, 3]
    assert sorted(d.keys()) == [0, 1, 2, 3]
    volley.kill(r)


def _pool_job(args):
    q, d, i = args
    q.put(i)
    d[i] = i + 100
    return i


def test_pool_workers_use_proxies(volley_shared, manager):
    q, d = manager.Queue(), manager.dict()
    with volley.multiprocessing.Pool(2) as pool:
        assert pool.map(_pool_job, [(q, d, i) for i in range(5)]) == list(range(5))
    assert drain(q, 5) == list(range(5))
    assert dict(d) == {i: i + 100 for i in range(5)}


def test_executor_workers_use_proxies(volley_shared, manager):
    q, d = manager.Queue(), manager.dict()
    with volley.futures.Executor(max_workers=2) as ex:
        futures = [ex.submit(_pool_job, (q, d, i)) for i in range(5)]
        assert [f.result(timeout=60) for f in futures] == list(range(5))
    assert drain(q, 5) == list(range(5))
    assert dict(d) == {i: i + 100 for i in range(5)}


# ------------------------------------------------------------------------- several drivers


DRIVER = """
import json, multiprocessing, os, sys
from multiprocessing.managers import SyncManager
import volley
from volley import NodeAffinitySchedulingStrategy as On

@volley.remote
def job(d, tag, i):
    from multiprocessing import current_process
    d[i] = (os.environ["VOLLEY_NODE_ADDRESS"], bytes(current_process().authkey).hex())
    return i

if __name__ == "__main__":
    with {manager} as m:
        d = m.dict()
        volley.init(address={head!r}, token={token!r})
        nodes = [n["node_id"] for n in volley.nodes() if not n["driver"]]
        print("READY", flush=True)
        sys.stdin.readline()  # both drivers are connected: go
        refs = [
            job.options(scheduling_strategy=On(nodes[i % len(nodes)])).remote(d, {tag!r}, i)
            for i in range(24)
        ]
        assert volley.get(refs, timeout=120) == list(range(24))
        values = dict(d)
        print("RESULT", json.dumps({{
            "mine": bytes(multiprocessing.current_process().authkey).hex(),
            "nodes": sorted({{v[0] for v in values.values()}}),
            "keys": sorted({{v[1] for v in values.values()}}),
            "count": len(values),
        }}), flush=True)
        volley.shutdown()
"""


def test_two_drivers_of_different_keys_share_a_3_node_cluster(tmp_path: Path):
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1")
        c.start(False, "127.0.0.2")
        c.start(False, "127.0.0.3")
        procs = []
        # One Manager on a Unix socket (the default), one on TCP 127.0.0.1.
        managers = {"a": "multiprocessing.Manager()", "b": 'SyncManager(("127.0.0.1", 0))'}
        for tag, manager in managers.items():
            script = tmp_path / f"driver_{tag}.py"
            text = DRIVER.format(head=c.head, token=c.token, tag=tag, manager=manager)
            script.write_text(textwrap.dedent(text))
            err = open(tmp_path / f"driver_{tag}.stderr", "w")
            p = subprocess.Popen(
                [sys.executable, str(script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=dict(driver_env(), VOLLEY_SESSION_DIR=c.env["VOLLEY_SESSION_DIR"]),
                cwd=str(tmp_path),
            )
            err.close()
            p._volley_stderr_path = tmp_path / f"driver_{tag}.stderr"
            procs.append(p)
        try:
            for p in procs:
                read_line_with_prefix(p, "READY", timeout=60)
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [json.loads(read_line_with_prefix(p, "RESULT", timeout=120)) for p in procs]
            for p in procs:
                finish_driver(p)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    finally:
        c.stop()
    a, b = results
    assert a["mine"] != b["mine"]
    for r in results:
        assert r["count"] == 24
        # Every task, on every node, ran with its own driver's key.
        assert r["keys"] == [r["mine"]]
        assert len(r["nodes"]) == 3, r["nodes"]


def test_the_key_is_not_in_a_workers_environment_on_a_cluster_node(tmp_path: Path):
    """The key never reaches a node's files or processes' environments: a worker on another
    node has it only while running the driver's task, from the task."""
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1")
        c.start(False, "127.0.0.2")
        here = Path(__file__).parent
        shipped = [
            str(here / m) for m in ("test_manager_proxies.py", "conftest.py", "test_cluster.py")
        ]
        volley.init(address=c.head, token=c.token, runtime_env={"py_modules": shipped})
        strategy = volley.NodeAffinitySchedulingStrategy
        for n in [n["node_id"] for n in volley.nodes() if not n["driver"]]:
            ref = key_leaks.options(scheduling_strategy=strategy(n)).remote()
            assert volley.get(ref, timeout=60) == []
            ref = worker_authkey.options(scheduling_strategy=strategy(n)).remote()
            assert volley.get(ref, timeout=60) == _authkey()
        volley.shutdown()
        key = _authkey()
        for root, _, files in os.walk(tmp_path):
            for name in files:
                data = (Path(root) / name).read_bytes()
                assert key not in data and key.hex().encode() not in data, name
    finally:
        volley.shutdown()
        c.stop()


LATE_DRIVER = """
import sys
import volley

@volley.remote
def key():
    from multiprocessing import current_process
    return bytes(current_process().authkey)

@volley.remote
def put_in(q, x):
    q.put(x)
    return x

if __name__ == "__main__":
    volley.init(num_cpus=1)
    # init did not import multiprocessing (a start-up cost): no key to carry yet.
    assert "multiprocessing" not in sys.modules, "init imported multiprocessing"
    first = volley.get(key.remote(), timeout=60)
    import multiprocessing
    mine = bytes(multiprocessing.current_process().authkey)
    assert first != mine
    with multiprocessing.Manager() as m:
        q = m.Queue()
        assert volley.get(put_in.remote(q, 7), timeout=60) == 7
        assert q.get(timeout=10) == 7
        assert volley.get(key.remote(), timeout=60) == mine
    volley.shutdown()
    print("LATE OK", flush=True)
"""


def test_a_driver_that_imports_multiprocessing_after_init_passes_its_key(tmp_path: Path):
    script = tmp_path / "late.py"
    script.write_text(LATE_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env=driver_env(),
    )
    assert proc.returncode == 0 and "LATE OK" in proc.stdout, (proc.stdout, proc.stderr)
