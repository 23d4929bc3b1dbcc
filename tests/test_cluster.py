"""A real cluster on this machine: a head and nodes started with the `volley` command as separate
daemons on 127.0.0.x addresses, each with its own object store and workers, joined over
authenticated TCP; a driver connects with `volley.init(address=...)`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NODE_LOGS, proc_state, wait_for

import volley
import volley.library
import volley.state

HEARTBEAT_MS = 100
DEAD_AFTER_MS = 1500


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmp: Path, token: str = "test-token-0123456789"):
        self.session = tmp / "session"
        self.token = token
        self.env = dict(os.environ, VOLLEY_SESSION_DIR=str(self.session))
        self.env.pop("VOLLEY_TOKEN", None)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.tmp = tmp
        self.head = f"127.0.0.1:{_free_port('127.0.0.1')}"
        self.started: list[str] = []

    def addrs_index(self, addr: str) -> int:
        """The index (for ``kill``) of the node started at ``addr``."""
        return self.started.index(addr)

    def start_nodes(self, count: int, last_extra: tuple = ()) -> list[str]:
        """A head on 127.0.0.1 and count - 1 nodes on 127.0.0.2, ...; the last one gets
        ``last_extra`` as well. Sets and returns ``addrs``."""
        self.addrs = [
            self.start(i == 0, f"127.0.0.{i + 1}", extra=last_extra if i == count - 1 else ())
            for i in range(count)
        ]
        return self.addrs

    def start(self, head: bool, host: str, cpus: float = 1, extra: tuple = ()) -> str:
        port = self.head.split(":")[1] if head else str(_free_port(host))
        role = ["--head"] if head else ["--address", self.head]
        argv = [
            sys.executable, "-m", "volley._cli", "start", *role, "--host", host, "--port", port,
            "--num-cpus", str(cpus), "--token", self.token, "--block",
            "--heartbeat-ms", str(HEARTBEAT_MS), "--dead-after-ms", str(DEAD_AFTER_MS),
            "--object-store-memory", str(256 << 20), *extra,
        ]  # fmt: skip
        log = self.tmp / f"node-{len(self.procs)}.log"
        out = open(log, "wb")
        # Each node its own package cache, as if on its own machine.
        env = dict(self.env, VOLLEY_PACKAGES_DIR=str(self.tmp / f"packages-{len(self.procs)}"))
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        out.close()
        self.procs.append(p)
        self.logs.append(log)
        NODE_LOGS.append(log)
        self.started.append(f"{host}:{port}")
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text(errors="replace"):
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        return f"{host}:{port}"

    def kill(self, index: int) -> None:
        """SIGKILL a node's daemon and its workers."""
        os.killpg(self.procs[index].pid, signal.SIGKILL)
        self.procs[index].wait()

    def log(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _wait_nodes(n: int, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = [x for x in volley.nodes() if not x["driver"]]
        if len(nodes) == n or time.monotonic() > deadline:
            return nodes
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster_daemons(tmp_path_factory):
    volley.shutdown()
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.start_nodes(3, last_extra=("--num-gpus", "2"))  # the last with two fake GPUs
    yield c
    volley.shutdown()
    c.stop()


@pytest.fixture
def cluster(cluster_daemons):
    """The module's 3-node cluster, with this process connected to it as a driver (again, if a
    test in between shut the connection down)."""
    c = cluster_daemons
    # (On one machine nodes() lists the driver's own node: a cluster has nodes that are not.)
    if not volley.is_initialized() or all(n["driver"] for n in volley.nodes()):
        volley.shutdown()
        volley.init(address=c.head, token=c.token)
    assert len(_wait_nodes(3)) == 3
    return c


@volley.remote
def where(delay: float = 0.0) -> str:
    time.sleep(delay)
    return os.environ["VOLLEY_NODE_ADDRESS"]


def test_tasks_run_on_every_node(cluster):
    # Three 1-CPU nodes, tasks that take a while: they must spread over all of them.
    seen = volley.get([where.remote(0.3) for _ in range(6)])
    assert set(seen) == set(cluster.addrs)
    assert os.environ.get("VOLLEY_NODE_ADDRESS") is None  # the driver ran none


def test_large_arrays_travel_both_ways(cluster):
    @volley.remote
    def scale(a, k):
        return a * k, float(a.sum())

    arr = np.arange(1 << 19, dtype=np.float64)  # 4 MiB: through the stores on both sides
    ref = volley.put(arr)
    out = volley.get([scale.remote(ref, k) for k in range(1, 5)])
    for k, (scaled, total) in enumerate(out, start=1):
        assert total == float(arr.sum())
        assert np.array_equal(scaled, arr * k)


def test_a_value_of_many_chunks_arrives_intact_on_each_node_and_back(cluster):
    """A value pulled in several chunks (8 MiB each, the last one short), spliced from the
    socket into the receiving node's store: every byte must be where it was on the driver. A
    large result comes back to the driver's store the same way."""
    import hashlib

    @volley.remote
    def digest(a):
        return hashlib.sha256(a).hexdigest(), a.nbytes

    @volley.remote
    def reverse(a):
        return a[::-1].copy()

    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, size=(20 << 20) + 4099, dtype=np.uint8)  # not page-aligned
    want = (hashlib.sha256(arr).hexdigest(), arr.nbytes)
    ref = volley.put(arr)
    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    on = [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in cluster.addrs]
    assert volley.get([digest.options(scheduling_strategy=s).remote(ref) for s in on]) == [
        want
    ] * len(on)
    back = volley.get(reverse.options(scheduling_strategy=on[1]).remote(ref))
    assert np.array_equal(back, arr[::-1])


def test_refs_inside_arguments_and_nested_tasks(cluster):
    @volley.remote
    def total(refs):
        return sum(volley.get(refs))

    @volley.remote
    def fib(n):
        if n < 2:
            return n
        return sum(volley.get([fib.remote(n - 1), fib.remote(n - 2)]))

    refs = [volley.put(i) for i in range(10)]
    assert volley.get(total.remote(refs)) == 45
    assert volley.get(fib.remote(7)) == 13


def test_a_large_value_nested_in_a_put_reaches_each_node_again_and_again(cluster):
    # The outer value is small (it travels inline with each task), the array it names is large
    # (each node pulls it once and keeps a copy for the driver's node). The copy used to go
    # with the outer value at the first task's end, and the node's next task naming it failed
    # with ObjectLostError ("was no longer kept here"): 10 rounds in 40 did.
    @volley.remote(scheduling_strategy="SPREAD")
    def use(box, k):
        return int(volley.get(box["r"]).sum()) + k

    for rnd in range(6):
        inner = volley.put(np.full(300_000, rnd, dtype=np.int64))
        outer = volley.put({"r": inner})
        out = volley.get([use.remote(outer, k) for k in range(6)], timeout=60)
        assert out == [300_000 * rnd + k for k in range(6)], rnd


def test_task_errors_keep_their_type(cluster):
    @volley.remote
    def boom():
        raise KeyError("far away")

    with pytest.raises(volley.TaskError) as e:
        volley.get(boom.remote())
    assert isinstance(e.value, KeyError)
    assert "far away" in str(e.value)

    @volley.remote
    def inspect(refs):
        try:
            volley.get(refs[0])
        except KeyError as err:
            return os.environ["VOLLEY_NODE_ADDRESS"], str(err)
        return None

    # A failed ref inside the arguments of a task on another node holds the original error.
    failed = boom.remote()
    volley.wait([failed])
    out = volley.get([inspect.remote([failed]) for _ in range(3)])
    assert all(o is not None and "far away" in o[1] for o in out)


def test_a_task_no_node_can_run_fails_at_once(cluster):
    @volley.remote(num_cpus=8)
    def huge():
        return 1

    with pytest.raises(volley.UnschedulableError):
        volley.get(huge.remote(), timeout=10)


def test_gpu_tasks_go_to_the_node_with_gpus_and_see_theirs(cluster):
    @volley.remote(num_gpus=1, num_cpus=0)  # the node has one CPU: let both run at once
    def gpu_task():
        time.sleep(0.3)
        return os.environ["VOLLEY_NODE_ADDRESS"], os.environ.get("CUDA_VISIBLE_DEVICES")

    out = volley.get([gpu_task.remote() for _ in range(2)])
    assert {addr for addr, _ in out} == {cluster.addrs[2]}
    assert sorted(dev for _, dev in out) == ["0", "1"]
    with pytest.raises(volley.UnschedulableError):
        volley.get(gpu_task.options(num_gpus=3).remote(), timeout=10)


def test_status_lists_the_nodes(cluster):
    text = _status_text(cluster)
    for a in cluster.addrs:
        assert a in text
    assert "3 node(s)" in text
    assert re.search(r"GPU [0-2]/2", text)  # used/total (in use a moment ago, perhaps)


def test_a_wrong_token_is_refused_clearly(cluster):
    code = (
        "import volley\n"
        "try:\n"
        f"    volley.init(address={cluster.head!r}, token='not-the-token')\n"
        "except ConnectionError as e:\n"
        "    print('REFUSED', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=30
    )
    assert "REFUSED" in out.stdout and "wrong cluster token" in out.stdout, out
    assert "refused a connection" in cluster.log(0)
    assert volley.get(where.remote()) in cluster.addrs  # the cluster serves on


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the wrong protocol
        b"\xff\xff\xff\xff" + b"\x00" * 64,  # a frame claiming 4 GiB
        b"\x00\x00\x00\x05abc",  # truncated
        os.urandom(4096),
    ],
)
def test_garbage_on_every_port_closes_only_that_connection(cluster, payload):
    for addr in cluster.addrs:
        host, port = addr.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.recv(4096)  # the challenge
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):  # the node closes its end
                    pass
            except OSError:  # reset, or already closed
                pass
    assert set(volley.get([where.remote(0.3) for _ in range(6)])) == set(cluster.addrs)


def test_unauthenticated_peers_cannot_join(cluster):
    # Right protocol, no token: a fresh node with a wrong token exits with a clear message.
    bad = Cluster(cluster.tmp, token="wrong-token-wrong-token")
    bad.head = cluster.head
    with pytest.raises(AssertionError, match="wrong cluster token"):
        bad.start(False, "127.0.0.4")
    bad.stop()
    assert len([n for n in volley.nodes() if not n["driver"]]) == 3


def test_a_killed_node_is_declared_dead_and_its_tasks_retried(tmp_path):
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        addrs = c.start_nodes(2)
        c.start(False, "127.0.0.3")
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        refs = [where.options(max_retries=3).remote(1.0) for _ in range(6)]
        time.sleep(0.4)  # they are running everywhere now
        c.kill(2)
        t0 = time.monotonic()
        results = volley.get(refs, timeout=60)
        assert set(results) <= set(addrs), results  # all finished on the survivors
        assert len(_wait_nodes(2, timeout=DEAD_AFTER_MS / 1000 + 5)) == 2
        assert time.monotonic() - t0 < 30
        # A task that may not be retried fails with a clear error instead.
        doomed = [where.options(max_retries=0).remote(2.0) for _ in range(4)]
        time.sleep(0.4)
        c.kill(1)
        outcomes = []
        for r in doomed:
            try:
                outcomes.append(volley.get(r, timeout=60))
            except volley.WorkerCrashedError as e:
                assert "died" in str(e)
                outcomes.append("lost")
        assert "lost" in outcomes and addrs[0] in outcomes
    finally:
        volley.shutdown()
        c.stop()


@volley.remote
class Counter:
    def __init__(self, start):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def where(self):
        return os.environ["VOLLEY_NODE_ADDRESS"], os.getpid()


def _alive(pid: int) -> bool:
    # (A process that exits between opening its stat and reading it fails the read with
    # ESRCH: proc_state says None for that too.)
    return proc_state(pid) not in (None, "Z")


def test_actors_are_placed_on_the_nodes_and_keep_order(cluster):
    actors = [Counter.remote(100 * i) for i in range(3)]
    places = volley.get([a.where.remote() for a in actors])
    assert {addr for addr, _ in places} == set(cluster.addrs)  # one per node
    assert volley.get([a.incr.remote(5) for a in actors]) == [5, 105, 205]
    refs = [actors[0].incr.remote() for _ in range(200)]
    assert volley.get(refs) == list(range(6, 206))  # in submission order, state kept
    assert volley.actor_state(actors[0])["state"] == "ALIVE"
    volley.kill(actors[1])
    with pytest.raises(volley.ActorDiedError):
        volley.get(actors[1].incr.remote())
    killed_pid = places[1][1]
    deadline = time.monotonic() + 10  # the kill reached the actor's node
    while _alive(killed_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(killed_pid)

    @volley.remote
    class Broken:
        def __init__(self):
            raise ValueError("no init")

        def f(self):
            return 1

    with pytest.raises(volley.ActorCreationError) as e:
        volley.get(Broken.remote().f.remote())
    assert isinstance(e.value.cause, ValueError)


def test_an_actor_is_restarted_on_another_node_when_its_node_dies(tmp_path):
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1")
        second = c.start(False, "127.0.0.2")
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(2)) == 2
        # Two actors: one lands on each node (the least loaded first).
        a = Counter.options(max_restarts=1, max_task_retries=1).remote(0)
        b = Counter.options(max_restarts=0).remote(0)
        where = dict(zip("ab", volley.get([a.where.remote(), b.where.remote()])))
        on_second = [k for k, (addr, _) in where.items() if addr == second]
        assert len(on_second) == 1
        victim = {"a": a, "b": b}[on_second[0]]
        volley.get(victim.incr.remote(10))
        c.kill(1)
        if on_second[0] == "a":
            # Restarted elsewhere: __init__ again (state lost), later calls work.
            assert volley.get(a.incr.remote(1), timeout=30) == 1
            assert volley.get(a.where.remote())[0] != second
            assert volley.actor_state(a)["restarts"] == 1
        else:
            with pytest.raises(volley.ActorDiedError, match="died"):
                volley.get(b.incr.remote(1), timeout=30)
    finally:
        volley.shutdown()
        c.stop()


def test_actors_end_when_their_driver_exits(cluster):
    code = (
        "import os, volley\n"
        f"volley.init(address={cluster.head!r}, token={cluster.token!r})\n"
        "@volley.remote\n"
        "class A:\n"
        "    def pid(self):\n"
        "        return os.getpid()\n"
        "actors = [A.remote() for _ in range(3)]\n"
        "print('PIDS', *volley.get([a.pid.remote() for a in actors]), flush=True)\n"
        "os._exit(0)\n"  # no shutdown: the nodes notice the connection close
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=60
    )
    pids = [int(p) for p in out.stdout.split("PIDS")[1].split()]
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_runtime_env_ships_the_drivers_code_and_files_to_every_node(cluster, tmp_path):
    # A module and a data file that exist only in the driver's directory.
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "helper_only_here.py").write_text("def triple(x):\n    return 3 * x\n")
    (project / "pkg" / "__init__.py").write_text("NAME = 'pkg'\n")
    (project / "settings.txt").write_text("from the driver\n")
    code = (
        "import os, volley\n"
        f"volley.init(address={cluster.head!r}, token={cluster.token!r},\n"
        "            runtime_env={'working_dir': '.', 'env_vars': {'JOB_FLAG': 'yes'}})\n"
        "@volley.remote\n"
        "def job(x):\n"
        "    import helper_only_here, pkg\n"
        "    return (os.environ['VOLLEY_NODE_ADDRESS'], helper_only_here.triple(x), pkg.NAME,\n"
        "            open('settings.txt').read().strip(), os.environ.get('JOB_FLAG'))\n"
        "@volley.remote\n"
        "def outer():\n"
        "    return volley.get(job.remote(5))[1]\n"  # nested: the same environment
        "@volley.remote\n"
        "class Holder:\n"
        "    def get(self):\n"
        "        import helper_only_here\n"
        "        return helper_only_here.triple(7)\n"
        "import time\n"
        "out = volley.get([job.options(num_cpus=0.5).remote(i) for i in range(12)])\n"
        "print('NODES', len({o[0] for o in out}))\n"
        "print('VALUES', sorted({o[1:] for o in out if o[1] == 3}))\n"
        "print('NESTED', volley.get(outer.remote()))\n"
        "print('ACTOR', volley.get(Holder.remote().get.remote()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=cluster.env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "NODES 3" in out.stdout, out.stdout  # it ran on every node
    assert "VALUES [(3, 'pkg', 'from the driver', 'yes')]" in out.stdout
    assert "NESTED 15" in out.stdout and "ACTOR 21" in out.stdout


@volley.remote(num_cpus=0.25)
def spread_from_a_task():
    spread = where.options(scheduling_strategy="SPREAD", num_cpus=0.25)
    return [volley.get(spread.remote(0), timeout=30) for _ in range(6)]


def test_scheduling_strategies(cluster):
    nodes = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    # SPREAD: short tasks that would all fit on one node still go to every node, even when
    # each ends before the next is sent (the nodes take turns, as in Ray).
    spread = where.options(scheduling_strategy="SPREAD", num_cpus=0.25)
    assert set(volley.get([spread.remote(0.2) for _ in range(6)])) == set(cluster.addrs)
    one_by_one = [volley.get(spread.remote(0), timeout=30) for _ in range(6)]
    assert set(one_by_one) == set(cluster.addrs), one_by_one
    # The same from a task on one node: that node is one of those taking turns.
    assert set(volley.get(spread_from_a_task.remote(), timeout=60)) == set(cluster.addrs)
    # Node affinity: every task on the chosen node, even with others idle.
    target = cluster.addrs[1]
    pinned = where.options(scheduling_strategy=volley.NodeAffinitySchedulingStrategy(nodes[target]))
    assert set(volley.get([pinned.remote(0.05) for _ in range(6)])) == {target}
    # Hard affinity to a node that does not exist fails; soft runs anywhere.
    missing = volley.NodeAffinitySchedulingStrategy(999)
    with pytest.raises(volley.UnschedulableError, match="not in the cluster"):
        volley.get(where.options(scheduling_strategy=missing).remote(), timeout=10)
    soft = volley.NodeAffinitySchedulingStrategy(999, soft=True)
    assert volley.get(where.options(scheduling_strategy=soft).remote()) in cluster.addrs
    with pytest.raises(ValueError, match="scheduling_strategy"):
        where.options(scheduling_strategy="PACK")


def test_actors_with_node_affinity_and_spread(cluster):
    nodes = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    # Hard affinity: each actor on the node it names.
    for addr in cluster.addrs:
        pin = volley.NodeAffinitySchedulingStrategy(nodes[addr])
        a = Counter.options(scheduling_strategy=pin, num_cpus=0).remote(0)
        assert volley.get(a.where.remote())[0] == addr
        volley.kill(a)
    # Hard affinity to a node that does not exist is refused (like any actor no node can
    # host); soft starts anywhere.
    with pytest.raises(ValueError, match="not in the cluster"):
        Counter.options(scheduling_strategy=volley.NodeAffinitySchedulingStrategy(999)).remote(0)
    soft = volley.NodeAffinitySchedulingStrategy(999, soft=True)
    a = Counter.options(scheduling_strategy=soft, num_cpus=0).remote(0)
    assert volley.get(a.where.remote())[0] in cluster.addrs
    volley.kill(a)
    # SPREAD: one actor per node.
    spread = [Counter.options(scheduling_strategy="SPREAD", num_cpus=0).remote(0) for _ in range(3)]
    assert {volley.get(a.where.remote())[0] for a in spread} == set(cluster.addrs)
    for a in spread:
        volley.kill(a)


def test_actor_handles_passed_to_tasks_on_other_nodes(cluster):
    counter = Counter.remote(0)
    home = volley.get(counter.where.remote())[0]

    @volley.remote(num_cpus=0.5)
    def bump(handle, n):
        # Its calls go to the actor's node, in this task's order.
        refs = [handle.incr.remote() for _ in range(n)]
        return os.environ["VOLLEY_NODE_ADDRESS"], volley.get(refs)

    # Two on each node, the actor's own included: six short tasks left to the scheduler may
    # all run on one node (SPREAD too), and then no handle would have left the actor's node.
    ids = sorted(n["node_id"] for n in volley.nodes() if not n["driver"])
    on = [volley.NodeAffinitySchedulingStrategy(ids[i % len(ids)]) for i in range(6)]
    out = volley.get([bump.options(scheduling_strategy=s).remote(counter, 10) for s in on])
    assert len({node for node, _ in out} - {home}) >= 1  # some ran away from the actor
    for _, values in out:
        assert values == sorted(values)  # each caller's calls in its order
    assert sorted(v for _, values in out for v in values) == list(range(1, 61))
    assert volley.get(counter.incr.remote()) == 61


def test_refs_made_on_another_node_and_returned(cluster):
    @volley.remote
    def add(a, b):
        time.sleep(0.2)  # still running when `produce` returns its ref
        return a + b

    @volley.remote
    def fails():
        time.sleep(0.2)
        raise ValueError("made far away")

    @volley.remote
    def produce():
        return [add.remote(1, 2), fails.remote()]

    inner, bad = volley.get(produce.remote())
    assert volley.get(add.remote(inner, 10)) == 13  # used as an argument here
    assert volley.get(inner) == 3
    with pytest.raises(volley.TaskError, match="made far away"):
        volley.get(bad)


def test_an_actor_on_another_node_stops_when_its_last_handle_goes(cluster):
    a = Counter.remote(0)
    addr, pid = volley.get(a.where.remote())
    assert addr in cluster.addrs
    del a  # the release reaches the actor's node, which stops it
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


@volley.remote
def shout(tag: str) -> str:
    time.sleep(0.3)
    addr = os.environ["VOLLEY_NODE_ADDRESS"]
    print(f"OUT {tag} {addr}", flush=True)
    print(f"ERR {tag} {addr}", file=sys.stderr, flush=True)
    return addr


def test_output_of_tasks_on_every_node_reaches_the_driver(cluster, capfd):
    # Each node sends its workers' output back on the link the driver's node opened to it
    # (the driver subscribes when it joins), stdout to stdout and stderr to stderr.
    tag = os.urandom(4).hex()
    seen = set(volley.get([shout.remote(tag) for _ in range(6)]))
    assert seen == set(cluster.addrs)
    out = err = ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        if all(f"OUT {tag} {a}" in out and f"ERR {tag} {a}" in err for a in seen):
            break
        time.sleep(0.1)
    for a in seen:
        assert f"OUT {tag} {a}" in out, (a, out)
        assert f"ERR {tag} {a}" in err, (a, err)


def test_restarts_on_the_hosting_node_are_reported_to_the_driver(cluster, capfd):
    a = Counter.options(max_restarts=1).remote(5)
    _, pid = volley.get(a.where.remote())
    assert volley.actor_state(a)["pid"] == pid
    os.kill(pid, signal.SIGKILL)  # its node restarts it in place
    deadline = time.monotonic() + 15
    while volley.actor_state(a)["restarts"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert volley.actor_state(a)["restarts"] == 1
    assert volley.get(a.incr.remote(), timeout=30) == 6  # __init__(5) ran again
    assert volley.actor_state(a)["pid"] not in (pid, None)
    assert "restarting it (restart 1 of 1)" in capfd.readouterr().err


# ------------------------------------------------------------------ placement groups

InBundle = volley.PlacementGroupSchedulingStrategy


def _node_addrs() -> dict[int, str]:
    return {n["node_id"]: n["address"] for n in volley.nodes() if not n["driver"]}


def test_placement_groups_across_nodes(cluster):
    addr_of = _node_addrs()
    # STRICT_SPREAD: one bundle per node; each bundle's tasks run on its node.
    pg = volley.placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD", name="gang")
    assert pg.wait(20)
    row = volley.placement_group_table(pg)
    assert row["state"] == "CREATED"
    nodes = row["bundles_to_node_id"]
    assert len(set(nodes)) == 3
    ran = volley.get(
        [where.options(scheduling_strategy=InBundle(pg, i)).remote() for i in range(3)]
    )
    assert ran == [addr_of[n] for n in nodes]
    # Every CPU is reserved: a fourth bundle waits; a plain task waits too.
    more = volley.placement_group([{"CPU": 1}])
    assert not more.wait(0.5)
    plain = where.remote()
    assert volley.wait([plain], timeout=0.3)[0] == []
    # Actors go into bundles on other nodes too.
    actors = [
        Counter.options(scheduling_strategy=InBundle(pg, i), num_cpus=1).remote(i) for i in range(3)
    ]
    placed = volley.get([a.where.remote() for a in actors], timeout=30)
    assert [addr for addr, _ in placed] == [addr_of[n] for n in nodes]
    volley.remove_placement_group(pg)
    for a in actors:
        with pytest.raises(volley.ActorDiedError, match="placement group was removed"):
            volley.get(a.incr.remote(), timeout=20)
    assert more.wait(20)  # the released CPUs went to the waiting group...
    assert volley.get(plain, timeout=20) in cluster.addrs  # ...and to the plain task
    volley.remove_placement_group(more)
    # Four bundles that need a node each cannot exist on three nodes.
    with pytest.raises(volley.UnschedulableError, match="STRICT_SPREAD"):
        volley.placement_group([{"CPU": 0.5}] * 4, strategy="STRICT_SPREAD").wait(10)


def test_strict_pack_and_gpu_bundles_across_nodes(cluster):
    addr_of = _node_addrs()
    # Only the third node has GPUs: both bundles go there, each with its own GPU.
    pg = volley.placement_group([{"CPU": 0.5, "GPU": 1}] * 2, strategy="STRICT_PACK")
    assert pg.wait(20)
    nodes = volley.placement_group_table(pg)["bundles_to_node_id"]
    assert nodes[0] == nodes[1] and addr_of[nodes[0]] == cluster.addrs[2]

    @volley.remote(num_cpus=0.5, num_gpus=1)
    def gpu_env():
        return os.environ["VOLLEY_NODE_ADDRESS"], os.environ["CUDA_VISIBLE_DEVICES"]

    out = volley.get(
        [gpu_env.options(scheduling_strategy=InBundle(pg, i)).remote() for i in range(2)]
    )
    assert {a for a, _ in out} == {cluster.addrs[2]}
    assert sorted(d for _, d in out) == ["0", "1"]
    # A task in a bundle submits into the group too, from its own node.

    @volley.remote(num_cpus=0)
    def nested(group):
        s = InBundle(group, 1)
        return volley.get(gpu_env.options(scheduling_strategy=s).remote())

    assert volley.get(nested.remote(pg), timeout=20)[0] == cluster.addrs[2]
    volley.remove_placement_group(pg)


def test_bundles_on_a_dead_node_are_placed_again_and_groups_die_with_their_driver(tmp_path):
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1")
        c.start(False, "127.0.0.2")
        c.start(False, "127.0.0.3")
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        addr_of = _node_addrs()
        pg = volley.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert pg.wait(20)
        nodes = volley.placement_group_table(pg)["bundles_to_node_id"]
        # Kill a node holding a bundle (not the head).
        victim = next(n for n in nodes if addr_of[n] != c.head)
        c.kill(c.addrs_index(addr_of[victim]))
        deadline = time.monotonic() + 30
        while True:
            row = volley.placement_group_table(pg)
            if row["state"] == "CREATED" and victim not in row["bundles_to_node_id"]:
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.1)
        assert len(set(row["bundles_to_node_id"])) == 2
        survivors = set(row["bundles_to_node_id"])
        ran = volley.get(
            [where.options(scheduling_strategy=InBundle(pg, i)).remote() for i in range(2)],
            timeout=30,
        )
        assert {addr_of[n] for n in survivors} == set(ran)
        # A driver that exits takes its groups with it: the CPUs come back.
        volley.remove_placement_group(pg)
        other = subprocess.run(
            [sys.executable, "-c",
             "import volley\n"
             f"volley.init(address={c.head!r}, token={c.token!r})\n"
             "pg = volley.placement_group([{'CPU': 1}, {'CPU': 1}], strategy='STRICT_SPREAD')\n"
             "assert pg.wait(20)\n"
             "print('held', flush=True)\n"],
            env=c.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "held" in other.stdout, other.stderr
        again = volley.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert again.wait(20)
    finally:
        volley.shutdown()
        c.stop()


def test_calls_to_actors_on_other_nodes_carry_refs_still_being_made(cluster):
    @volley.remote
    def slow(x):
        time.sleep(0.5)
        return x

    @volley.remote
    class Hub:
        def total(self, xs):
            return sum(volley.get(xs))

        async def poke(self, other):
            return await other.incr.remote(5)

    hub = Hub.remote()
    # Refs inside the arguments, not ready when the call is made: the call waits for them.
    assert volley.get(hub.total.remote([slow.remote(i) for i in range(4)]), timeout=30) == 6
    # A handle to an actor still starting: the call goes with where it lives.
    fresh = Counter.remote(0)
    assert volley.get(hub.poke.remote(fresh), timeout=30) == 5
    assert volley.get(fresh.incr.remote(1), timeout=30) == 6


def test_streams_from_other_nodes(cluster):
    @volley.remote(num_returns="streaming")
    def chunks(n, size):
        for i in range(n):
            yield os.environ["VOLLEY_NODE_ADDRESS"], np.full(size, i, dtype=np.int64)
        raise ValueError("ran dry")

    # Streaming tasks run on the nodes (the driver has no CPUs); items of store size travel.
    gens = [chunks.remote(3, 200_000) for _ in range(3)]
    seen = set()
    for g in gens:
        got = []
        with pytest.raises(ValueError, match="ran dry"):
            for ref in g:
                addr, arr = volley.get(ref)
                seen.add(addr)
                got.append(int(arr[0]))
                assert arr.shape == (200_000,) and (arr == arr[0]).all()
        assert got == [0, 1, 2]
    assert seen <= set(cluster.addrs) and len(seen) >= 2

    @volley.remote
    class Source:
        @volley.method(num_returns="streaming")
        def count(self, n):
            for i in range(n):
                yield i, os.environ["VOLLEY_NODE_ADDRESS"]

    sources = [Source.remote() for _ in range(3)]
    places = set()
    for s in sources:
        items = [volley.get(r) for r in s.count.remote(50)]
        assert [i for i, _ in items] == list(range(50))
        places.update(addr for _, addr in items)
    assert len(places) >= 2
    # An abandoned stream does not disturb the next one.
    g = sources[0].count.remote(1000)
    assert volley.get(next(iter(g)))[0] == 0
    del g
    assert [volley.get(r)[0] for r in sources[0].count.remote(3)] == [0, 1, 2]


def test_short_tasks_queued_behind_a_long_one_on_a_node_move_to_idle_nodes(cluster, tmp_path):
    @volley.remote
    def hold(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return "released"

    @volley.remote
    def tiny(i):
        return i

    release = str(tmp_path / "release")
    long_ref = hold.remote(release)
    try:
        refs = [tiny.remote(i) for i in range(300)]
        ready, not_ready = volley.wait(refs, num_returns=len(refs), timeout=30)
        assert not_ready == [], f"{len(not_ready)} tasks stuck behind the long one"
        assert volley.get(refs) == list(range(300))
        assert volley.wait([long_ref], timeout=0)[0] == []
    finally:
        open(release, "w").close()
    assert volley.get(long_ref, timeout=30) == "released"


def test_cancel_running_tasks_on_other_nodes(cluster):
    @volley.remote(max_retries=0)
    def nap(seconds):
        time.sleep(seconds)
        return os.getpid()

    # Interrupt: the task's sleep ends with the cancellation; its worker lives on.
    refs = [nap.remote(30) for _ in range(3)]
    time.sleep(1.0)
    for r in refs:
        volley.cancel(r)
    for r in refs:
        with pytest.raises(volley.TaskCancelledError):
            volley.get(r, timeout=20)
    # Force: the worker process is killed.
    pids = volley.get([nap.remote(0.01) for _ in range(6)])
    doomed = nap.remote(30)
    time.sleep(1.0)
    volley.cancel(doomed, force=True)
    with pytest.raises((volley.TaskCancelledError, volley.WorkerCrashedError)):
        volley.get(doomed, timeout=20)
    assert volley.get(nap.remote(0), timeout=20) > 0
    assert len(set(pids)) >= 2


def _status_text(cluster) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "volley._cli", "status", "--address", cluster.head,
         "--token", cluster.token],
        env=cluster.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_status_and_nodes_read_one_snapshot(cluster):
    """``volley status --json`` (asked of the head) and ``volley.nodes()`` (this driver's view)
    give each node as the same snapshot, with the scheduler's and the store's counters."""
    out = subprocess.run(
        [sys.executable, "-m", "volley._cli", "status", "--json", "--address", cluster.head,
         "--token", cluster.token],
        env=cluster.env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    status = {n["address"]: n for n in json.loads(out.stdout) if not n["driver"]}
    nodes = {n["address"]: n for n in volley.nodes() if not n["driver"]}
    assert set(status) == set(nodes) == set(cluster.addrs)
    for addr, n in nodes.items():
        assert set(n) == set(status[addr]), addr
        sched, store = n["scheduler"], n["store"]
        assert n["workers"] == sched["workers_alive"] + sched["workers_starting"]
        assert (store["used"], store["capacity"]) == (n["store_used"], n["store_capacity"])
        assert store["objects"] >= store["objects_in_memory"]


def test_status_says_what_waits_and_why(cluster):
    holder = volley.placement_group([{"GPU": 2, "CPU": 0.5}], name="all-gpus")
    waiting_group = None
    try:
        assert holder.wait(20)
        waiting_group = volley.placement_group([{"GPU": 1}], name="later")

        @volley.remote(num_gpus=1, num_cpus=0)
        def gpu_work():
            return os.environ["CUDA_VISIBLE_DEVICES"]

        refs = [gpu_work.remote() for _ in range(2)]
        pattern = re.compile(r"2 x task '\S*gpu_work': waiting for 0 CPU, 1 GPU")
        # Until every line is there: the tasks show as sent to a node before that node reports
        # why they wait, which took longer than one poll under load.
        deadline = time.monotonic() + 30
        while True:
            text = _status_text(cluster)
            if (
                "placement group 'later'" in text
                and "waiting for resources" in text
                and pattern.search(text)
                and "1 placement-group bundle(s)" in text
            ):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        volley.remove_placement_group(holder)
        assert sorted(volley.get(refs, timeout=30)) in (["0", "1"], ["0", "0"], ["1", "1"])
        assert waiting_group.wait(20)
    finally:
        # A failure above must not leave the GPUs and half a CPU held for the tests after it.
        for pg in (holder, waiting_group):
            if pg is not None:
                with contextlib.suppress(Exception):
                    volley.remove_placement_group(pg)


def _poll_actor(name: str, present: bool, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            h = volley.get_actor(name)
            if present:
                return h
        except ValueError:
            if not present:
                return None
        assert time.monotonic() < deadline, f"{name}: expected present={present}"
        time.sleep(0.05)


def test_named_actors_are_found_from_other_drivers(cluster, tmp_path):
    script = tmp_path / "other.py"
    script.write_text(
        "import os, volley\n"
        f"volley.init(address={cluster.head!r}, token={cluster.token!r})\n"
        "@volley.remote\n"
        "class Box:\n"
        "    def __init__(self): self.items = []\n"
        "    def add(self, x): self.items.append(x); return len(self.items)\n"
        "    def all(self): return self.items, os.environ['VOLLEY_NODE_ADDRESS']\n"
        "keep = Box.options(name='registry', lifetime='detached').remote()\n"
        "temp = Box.options(name='scratch').remote()\n"
        "volley.get([keep.add.remote('from the first driver'), temp.add.remote(1)])\n"
        "print('made', flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], env=cluster.env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert "made" in out.stdout, out.stderr
    # The detached one outlives its driver and is found by name from this one.
    registry = _poll_actor("registry", present=True)
    assert volley.get(registry.add.remote("from the second"), timeout=20) == 2
    items, addr = volley.get(registry.all.remote(), timeout=20)
    assert items == ["from the first driver", "from the second"] and addr in cluster.addrs
    # The other one ended with its driver.
    _poll_actor("scratch", present=False)
    # Names are the cluster's: taken here too; get_if_exists gives the existing one.
    with pytest.raises(ValueError, match="registry"):
        Counter.options(name="registry").remote(0)
    same = Counter.options(name="registry", get_if_exists=True).remote(0)
    assert volley.get(same.all.remote(), timeout=20)[0] == items
    volley.kill(registry)
    _poll_actor("registry", present=False)


def _settled(read, timeout: float = 15.0, quiet: float = 1.5):
    """``read()`` once it has not changed for ``quiet`` seconds: many heartbeats, so the view
    is fresh and nothing is moving (two reads 0.3 s apart were fooled by a transfer counted
    0.4 s late)."""
    last = read()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def test_a_large_value_crosses_to_a_node_once_for_many_tasks(cluster):
    @volley.remote
    def head_of(a, i):
        return float(a[i])

    target = next(n for n in volley.nodes() if n["address"] == cluster.addrs[1])
    pin = volley.NodeAffinitySchedulingStrategy(target["node_id"])
    size = 32 << 20
    arr = np.arange(size // 8, dtype=np.float64)
    ref = volley.put(arr)

    def received() -> int:
        return next(n for n in volley.nodes() if n["node_id"] == target["node_id"])[
            "bytes_received"
        ]

    before = _settled(received)
    assert volley.get(
        [head_of.options(scheduling_strategy=pin).remote(ref, i) for i in range(8)]
    ) == [float(i) for i in range(8)]
    assert volley.get(head_of.options(scheduling_strategy=pin).remote(ref, 9)) == 9.0
    deadline = time.monotonic() + 5
    while received() - before < size and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    moved = received() - before
    assert size <= moved < 2 * size, f"{moved} bytes for 9 tasks on one {size}-byte value"
    # Once the driver drops it, the node lets its copy go (and a new value travels again).
    del ref
    ref2 = volley.put(arr + 1)
    assert volley.get(head_of.options(scheduling_strategy=pin).remote(ref2, 0)) == 1.0


def test_a_task_on_a_large_result_runs_where_the_result_was_made(cluster):
    """A node keeps a copy of a large result it sent back: a later task that needs it goes
    there (it has a free CPU) and runs on that copy, without moving the bytes again. The copy
    goes when the driver drops the value."""

    @volley.remote
    def make(n):
        return np.arange(n, dtype=np.float64)

    @volley.remote
    def total(a):
        return os.environ["VOLLEY_NODE_ADDRESS"], float(a.sum())

    node = {n["address"]: n for n in volley.nodes() if not n["driver"]}[cluster.addrs[1]]
    pin = volley.NodeAffinitySchedulingStrategy(node["node_id"])
    n = 4 << 20  # 32 MiB

    def node_view() -> tuple:
        me = next(x for x in volley.nodes() if x["node_id"] == node["node_id"])
        return me["bytes_received"], me["store_used"]

    # The node's counters first settle: a transfer from an earlier test can still be counted
    # a moment after that test ended (seen: 0.4 s), and must not count as this test's.
    _settled(node_view)
    ref = make.options(scheduling_strategy=pin).remote(n)
    volley.wait([ref])
    received, _ = _settled(node_view)
    assert volley.get(total.remote(ref)) == (cluster.addrs[1], float(n * (n - 1) // 2))
    time.sleep(0.3)
    assert node_view()[0] == received, "the value was sent to the node that made it"
    _, used = node_view()
    assert used >= 8 * n, "the node keeps its copy while the driver holds the value"
    del ref
    deadline = time.monotonic() + 5
    while node_view()[1] > used - 8 * n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node_view()[1] <= used - 8 * n, "the copy goes with the driver's value"
    # A result that takes more than half of the node's store (256 MiB) is not kept there.
    _, before = _settled(node_view)
    big = make.options(scheduling_strategy=pin).remote(17 << 20)  # 136 MiB
    volley.wait([big])
    deadline = time.monotonic() + 5  # the view lags a heartbeat or two
    while node_view()[1] >= before + (8 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = node_view()[1]
    assert after < before + (8 << 20), f"kept: {before} -> {after} bytes in the node's store"
    del big


def test_a_value_sent_to_every_node_leaves_the_driver_twice(cluster):
    """Broadcast: the nodes that got a value serve it to the next ones (a tree of fan-out two),
    so the driver's uplink carries it twice however many nodes need it."""

    @volley.remote
    def total(a):
        return float(a.sum())

    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    pin = [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in cluster.addrs]
    size = 24 << 20
    arr = np.ones(size // 8, dtype=np.float64)
    ref = volley.put(arr)

    def counts() -> dict:
        return {n["address"]: (n["bytes_received"], n["bytes_served"]) for n in volley.nodes()}

    before = _settled(counts)
    # The first node gets it from the driver; then two more pull it at once: one from the
    # driver, one from the first node.
    assert volley.get(total.options(scheduling_strategy=pin[0]).remote(ref)) == size / 8
    rest = [total.options(scheduling_strategy=p).remote(ref) for p in pin[1:]]
    assert volley.get(rest) == [size / 8] * 2
    deadline = time.monotonic() + 5
    while True:
        after = counts()
        got = {a: after[a][0] - before[a][0] for a in cluster.addrs}
        served = {a: after[a][1] - before.get(a, (0, 0))[1] for a in after}
        # Each node's counters reach the head with its heartbeat: wait until every byte
        # received has also been counted where it was served.
        done = all(g >= size for g in got.values()) and sum(served.values()) >= sum(got.values())
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    one = got[cluster.addrs[0]]  # the value as stored: the array and its pickle's header
    assert size <= one < size + 4096 and got == dict.fromkeys(cluster.addrs, one), got
    driver = [a for a in after if a not in cluster.addrs]
    assert sum(served[a] for a in driver) == 2 * one, served
    assert served[cluster.addrs[0]] == one, served


def test_a_pull_from_a_relay_that_hangs_goes_back_to_the_driver(tmp_path):
    """A node that holds a copy is frozen (SIGSTOP) just as another node is told to pull the
    value from it: once the head declares it dead, the pull goes to the driver instead."""
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        addrs = c.start_nodes(2)
        addrs.append(c.start(False, "127.0.0.3"))
        volley.init(address=c.head, token=c.token)
        ids = {n["address"]: n["node_id"] for n in _wait_nodes(3)}
        pin = {a: volley.NodeAffinitySchedulingStrategy(ids[a]) for a in addrs}

        @volley.remote
        def total(a):
            return float(a.sum())

        arr = np.ones(3 << 20, dtype=np.float64)
        ref = volley.put(arr)
        # The relay-to-be (node 2) gets its copy first; the driver then serves node 3, and
        # the head is sent to the first holder by node id: the relay, now frozen.
        on = lambda a: total.options(scheduling_strategy=pin[a]).remote(ref)  # noqa: E731
        assert volley.get(on(addrs[1])) == arr.size
        os.killpg(c.procs[1].pid, signal.SIGSTOP)
        refs = [on(addrs[2]), on(addrs[0])]
        assert volley.get(refs, timeout=30) == [arr.size] * 2
        assert "declared dead" in c.log(0)
        deadline = time.monotonic() + 5  # the byte counts in the view lag a heartbeat or two
        while True:
            served = {n["address"]: n["bytes_served"] for n in volley.nodes()}
            if served[""] >= 3 * arr.nbytes or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert served[""] >= 3 * arr.nbytes, served  # the driver: all three in the end
    finally:
        os.killpg(c.procs[1].pid, signal.SIGKILL)
        volley.shutdown()
        c.stop()


def test_the_head_dies_and_comes_back(tmp_path):
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        head = c.start(True, "127.0.0.1")
        others = [c.start(False, "127.0.0.2"), c.start(False, "127.0.0.3")]
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        refs = [where.options(max_retries=3).remote(0.5) for _ in range(12)]
        time.sleep(0.3)
        c.kill(0)  # the head, with its tasks
        # The job finishes on the other nodes, and new work goes there meanwhile.
        assert set(volley.get(refs, timeout=60)) <= set(others)
        assert set(volley.get([where.remote(0.1) for _ in range(6)], timeout=60)) <= set(others)
        # A head started again at the same address: the nodes and the driver join it again.
        c.start(True, "127.0.0.1")
        time.sleep(1.5)  # the nodes and the driver try to join again every 0.5 s
        deadline = time.monotonic() + 20
        while {n["address"] for n in volley.nodes() if not n["driver"]} != {head, *others}:
            assert time.monotonic() < deadline, volley.nodes()
            time.sleep(0.1)
        # Nodes rejoin one by one (a link opened before its node rejoined is cut then, and its
        # tasks retried): within a few rounds every node runs tasks again.
        seen: set = set()
        for _ in range(10):
            seen |= set(volley.get([where.remote(0.2) for _ in range(9)], timeout=60))
            if seen == {head, *others}:
                break
        assert seen == {head, *others}
    finally:
        volley.shutdown()
        c.stop()


def _self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    out = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=volley-cluster"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return str(cert), str(key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls_on_every_connection(tmp_path):
    volley.shutdown()
    cert, key = _self_signed(tmp_path)
    c = Cluster(tmp_path)
    tls = ("--tls-cert", cert, "--tls-key", key)
    try:
        c.start(True, "127.0.0.1", extra=tls)
        second = c.start(False, "127.0.0.2", extra=tls)
        # Without the certificate a driver cannot connect (and the nodes keep serving).
        with pytest.raises(ConnectionError, match="VOLLEY_TLS_CERT"):
            volley.init(address=c.head, token=c.token)
        volley.shutdown()
        # Another certificate is not the cluster's.
        (tmp_path / "other").mkdir()
        other_cert, _ = _self_signed(tmp_path / "other")
        with pytest.raises(ConnectionError, match="TLS handshake failed"):
            volley.init(address=c.head, token=c.token, tls_cert=other_cert)
        volley.shutdown()
        volley.init(address=c.head, token=c.token, tls_cert=cert)
        assert len(_wait_nodes(2)) == 2

        @volley.remote
        def echo(a):
            return a * 2, os.environ["VOLLEY_NODE_ADDRESS"]

        big = np.arange(4_000_000, dtype=np.float64)  # 32 MB each way, encrypted
        out = volley.get([echo.remote(big) for _ in range(4)], timeout=60)
        assert {addr for _, addr in out} == {c.head, second}
        assert all(np.array_equal(a, big * 2) for a, _ in out)
        status = subprocess.run(
            [sys.executable, "-m", "volley._cli", "status", "--address", c.head,
             "--token", c.token, "--tls-cert", cert],
            env=c.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0 and second in status.stdout, status.stderr
        # Plain bytes on a TLS port: that connection ends, the cluster goes on.
        with socket.create_connection(("127.0.0.2", int(second.split(":")[1])), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 100)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
        assert volley.get(echo.remote(np.ones(3)), timeout=30)[0].tolist() == [2.0, 2.0, 2.0]
    finally:
        volley.shutdown()
        c.stop()


# ------------------------------------------------------------ actors made on any node


@volley.remote(num_cpus=0)
class Maker:
    """Creates actors from inside an actor (as serve's controller does) and reports where they
    run; keeps their handles so that they live."""

    def __init__(self):
        self.made = []

    def where(self):
        return os.environ["VOLLEY_NODE_ADDRESS"]

    def make(self, **options):
        a = Counter.options(**options).remote(0)
        self.made.append(a)
        return volley.get(a.where.remote(), timeout=60)[0]

    def make_many(self, n, **options):
        made = [Counter.options(**options).remote(0) for _ in range(n)]
        self.made.extend(made)
        return [addr for addr, _ in volley.get([a.where.remote() for a in made], timeout=60)]

    def handles(self):
        return list(self.made)

    def drop(self):
        for a in self.made:
            volley.kill(a)
        self.made.clear()


@volley.remote(num_cpus=0)
def make_in_task(**options):
    a = Counter.options(**options).remote(0)
    try:
        # (A 0-CPU task may run on the driver's node, which has no address.)
        here = os.environ.get("VOLLEY_NODE_ADDRESS")
        return here, volley.get(a.where.remote(), timeout=60)[0]
    finally:
        volley.kill(a)


def test_actors_made_inside_actors_and_tasks_are_placed_across_the_cluster(cluster):
    nodes = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    head, plain, gpu_node = cluster.addrs  # the last one has the two GPUs
    on_head = volley.NodeAffinitySchedulingStrategy(nodes[head])
    maker = Maker.options(scheduling_strategy=on_head).remote()
    try:
        assert volley.get(maker.where.remote()) == head
        # What fits on the maker's node runs there (the local node first)...
        assert volley.get(maker.make.remote()) == head
        # ...a resource only another node has: that node (was "this node has 0; it can never
        # run").
        assert volley.get(maker.make.remote(num_gpus=1), timeout=60) == gpu_node
        # Nothing anywhere has it: the cluster-wide error, at once.
        with pytest.raises(volley.TaskError, match="no node in the cluster has more than 2"):
            volley.get(maker.make.remote(num_gpus=3), timeout=30)
        # SPREAD from inside an actor: over the nodes, not all on the maker's.
        spread = volley.get(maker.make_many.remote(3, scheduling_strategy="SPREAD"), timeout=60)
        assert len(set(spread)) >= 2, spread
        # No room on the maker's node now (1 CPU each): the others with room.
        volley.get(maker.drop.remote())
        held = volley.get(maker.make_many.remote(2, num_cpus=1), timeout=60)
        assert len(set(held)) == 2, held
        volley.get(maker.drop.remote())
    finally:
        volley.kill(maker)
    # Node affinity from inside a task on another node: hard, and soft to a node that is not.
    pin = volley.NodeAffinitySchedulingStrategy(nodes[gpu_node])
    ran, placed = volley.get(
        make_in_task.options(scheduling_strategy=on_head).remote(scheduling_strategy=pin)
    )
    assert (ran, placed) == (head, gpu_node)
    soft = volley.NodeAffinitySchedulingStrategy(999, soft=True)
    assert volley.get(make_in_task.remote(scheduling_strategy=soft))[1] in cluster.addrs
    hard = volley.NodeAffinitySchedulingStrategy(999)
    with pytest.raises(volley.TaskError, match="not in the cluster"):
        volley.get(make_in_task.remote(scheduling_strategy=hard), timeout=30)


def test_handles_returned_from_other_nodes_reach_their_actors(cluster):
    nodes = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    head, plain, gpu_node = cluster.addrs
    # An actor on another node makes two actors (one on its node, one on the GPU node) and
    # returns their handles: the driver's calls reach each (were "names an actor that no
    # longer exists": the result did not say where they live).
    m = Maker.options(scheduling_strategy=volley.NodeAffinitySchedulingStrategy(nodes[plain]))
    m = m.remote()
    try:
        assert volley.get(m.make.remote()) == plain
        assert volley.get(m.make.remote(num_gpus=1)) == gpu_node
        here, far = volley.get(m.handles.remote())
        assert volley.get(here.where.remote(), timeout=30)[0] == plain
        assert volley.get(far.where.remote(), timeout=30)[0] == gpu_node
        assert volley.get([here.incr.remote(), far.incr.remote(2)], timeout=30) == [1, 2]
        # Passed on again, into a task on a third node.
        assert volley.get(call_incr.options(scheduling_strategy=_pin(nodes[head])).remote(far)) == 3
    finally:
        volley.get(m.drop.remote())
        volley.kill(m)


def _pin(node_id: int) -> volley.NodeAffinitySchedulingStrategy:
    return volley.NodeAffinitySchedulingStrategy(node_id)


@volley.remote(num_cpus=0)
def call_incr(handle):
    return volley.get(handle.incr.remote())


def test_a_sigkilled_actor_on_another_node_is_dead_everywhere(cluster):
    nodes = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    plain = cluster.addrs[1]
    pin = volley.NodeAffinitySchedulingStrategy(nodes[plain])
    # Made inside an actor on that node (the driver's handle is a route, as serve's are), and
    # one the driver made there itself.
    maker = Maker.options(scheduling_strategy=pin).remote()
    volley.get(maker.make.remote(name="victim", lifetime="detached", scheduling_strategy=pin))
    routed = _poll_actor("victim", present=True)
    direct = Counter.options(scheduling_strategy=pin).remote(0)
    try:
        for handle in (routed, direct):
            addr, pid = volley.get(handle.where.remote(), timeout=30)
            assert addr == plain
            wait_for(
                lambda h=handle: (volley.state.get_actor(h) or {}).get("state") == "ALIVE",
                "the head's row of the actor, ALIVE",
            )
            os.kill(pid, signal.SIGKILL)

            def dead(h=handle) -> bool:
                row = volley.state.get_actor(h) or {}
                here = volley.actor_state(h) or {}
                return all(
                    d.get("state") == "DEAD" and "SIGKILL" in (d.get("death_cause") or "")
                    for d in (row, here)
                )

            wait_for(dead, "the actor DEAD with its cause in the head's row and here", 15)
            with pytest.raises(volley.ActorDiedError, match="Counter"):
                volley.get(handle.incr.remote(), timeout=30)
        # Its name is free again.
        _poll_actor("victim", present=False)
    finally:
        volley.kill(maker)


def test_the_heads_node_id_is_the_same_everywhere(cluster):
    hid = volley.library.head_node_id()
    assert {n["address"]: n["node_id"] for n in volley.nodes()}[cluster.head] == hid

    @volley.remote(num_cpus=0)
    def seen_from_a_task():
        return volley.library.head_node_id()

    nodes = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    pin = volley.NodeAffinitySchedulingStrategy(nodes[cluster.addrs[1]])
    assert volley.get(seen_from_a_task.options(scheduling_strategy=pin).remote()) == hid
    on_head = volley.NodeAffinitySchedulingStrategy(hid)
    a = Counter.options(name="on_the_head", scheduling_strategy=on_head).remote(0)
    try:
        assert volley.get(a.where.remote())[0] == cluster.head
        listed = wait_for(
            lambda: [x for x in volley.library.directory()["actors"] if x["name"] == "on_the_head"],
            "the head's directory to list the named actor",
        )
        assert listed[0]["node_id"] == hid
    finally:
        volley.kill(a)


@volley.remote
class Box:
    """Dunder methods a handle calls (as Ray's do): ``__call__``, ``__len__``, ``__getitem__``."""

    def __init__(self, items):
        self.items = list(items)

    def __call__(self, x):
        return x * 2

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_handles_call_the_dunder_methods_the_class_defines(cluster):
    b = Box.remote("abc")
    assert volley.get([b.__call__.remote(4), b.__len__.remote(), b.__getitem__.remote(1)]) == [
        8,
        3,
        "b",
    ]
    # One the class does not define, and __init__ (never called through a handle): none.
    with pytest.raises(AttributeError, match="__contains__"):
        b.__contains__  # noqa: B018
    with pytest.raises(AttributeError):
        b.__init__.remote  # noqa: B018 (the handle's own __init__, not the actor's)
    volley.kill(b)


@pytest.mark.slow
def test_nested_tasks_across_nodes_again_and_again(tmp_path):
    """Stress (``-m slow``): nested tasks spread over three nodes, 30 times with a fresh driver
    each time. Under load a heartbeat can come late enough for the head to declare a live
    node or driver dead; its peers then cut it off and it retries, so no run hangs."""
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1")
        c.start(False, "127.0.0.2")
        c.start(False, "127.0.0.3")
        for _ in range(30):
            volley.init(address=c.head, token=c.token)
            assert len(_wait_nodes(3)) == 3

            @volley.remote(max_retries=-1)
            def fib(n):
                if n < 2:
                    return n
                return sum(volley.get([fib.remote(n - 1), fib.remote(n - 2)]))

            assert volley.get(fib.remote(7), timeout=60) == 13
            volley.shutdown()
    finally:
        volley.shutdown()
        c.stop()


def _driver_naming_a_late_actor(cluster, tmp_path, name: str, seconds: int, then: str):
    """Another driver (a process of its own, on its own driver's node) that creates actor
    ``name`` whose constructor's argument takes ``seconds``, prints "named", then waits for a
    line on its stdin and runs ``then`` (with ``box``, the actor's handle)."""
    script = tmp_path / f"{name}.py"
    script.write_text(
        "import os, sys, time, volley\n"
        f"volley.init(address={cluster.head!r}, token={cluster.token!r})\n"
        "@volley.remote\n"
        "def slow():\n"
        f"    time.sleep({seconds})\n"
        "    return ['made late']\n"
        "@volley.remote\n"
        "class Box:\n"
        "    def __init__(self, items): self.items = list(items)\n"
        "    def add(self, x): self.items.append(x); return len(self.items)\n"
        "    def all(self): return self.items\n"
        f"box = Box.options(name={name!r}, lifetime='detached').remote(slow.remote())\n"
        "print('named', flush=True)\n"
        "sys.stdin.readline()\n"
        f"{then}\n"
    )
    p = subprocess.Popen(
        [sys.executable, str(script)], env=cluster.env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = p.stdout.readline().strip()
    if line != "named":
        p.kill()
        raise AssertionError(f"the other driver printed {line!r}: {p.stderr.read()}")
    return p


def test_a_named_actor_waiting_for_its_arguments_is_reached_from_another_driver(cluster, tmp_path):
    # Its creator's driver names it while its constructor's argument is still being computed:
    # another driver finds it by name at once, and its calls run once the actor is up.
    then = "print(volley.get(box.all.remote(), timeout=30), flush=True)"
    p = _driver_naming_a_late_actor(cluster, tmp_path, "late", 3, then)
    try:
        late = _poll_actor("late", present=True)
        assert volley.get(late.add.remote("from here"), timeout=30) == 2
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "['made late', 'from here']"
        assert volley.get(late.all.remote(), timeout=30) == ["made late", "from here"]
        volley.kill(late)
        _poll_actor("late", present=False)
    finally:
        p.kill()
        p.wait()


def test_calls_to_a_named_actor_whose_creator_left_before_placing_it_fail(cluster, tmp_path):
    # The other driver names an actor whose argument takes 30 s, then exits: the actor never
    # started anywhere. A call made here meanwhile waits, then fails saying its node left,
    # rather than hanging.
    p = _driver_naming_a_late_actor(cluster, tmp_path, "never-placed", 30, "os._exit(0)")
    try:
        box = _poll_actor("never-placed", present=True)
        ref = box.all.remote()
        # (Its creator's node may not be in this node's view yet: the directory answers first.)
        waits = r"which a driver's node \(node \d+\) holds|to appear in this node's view"
        with pytest.raises(volley.GetTimeoutError, match=waits):
            volley.get(ref, timeout=0.5)
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=30)
        with pytest.raises(volley.ActorDiedError, match="died"):
            volley.get(ref, timeout=30)
    finally:
        p.kill()
        p.wait()
