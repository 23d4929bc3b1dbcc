"""volley.sync across the nodes of a real cluster (node daemons on 127.0.0.x): a lock lives in
the node that made it and its handles work from every node, their ops forwarded to its home; a
holder on another node that is SIGKILLed hands the lock on, and the next acquirer is told."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import volley
from volley.sync import Barrier, Lock

pytestmark = pytest.mark.timeout(180)


def _on(cluster) -> list:
    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    return [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in cluster.addrs]


@volley.remote(num_cpus=0.25)
def add_under_lock(lock: Lock, path: str, times: int) -> str:
    for _ in range(times):
        with lock:
            p = Path(path)
            p.write_text(str(int(p.read_text()) + 1))
    return os.environ["VOLLEY_NODE_ADDRESS"]


@volley.remote(num_cpus=0.25)
def wait_at(b: Barrier) -> int:
    return b.wait(timeout=60)


@volley.remote(num_cpus=0)
class Holder:
    def pid(self) -> int:
        return os.getpid()

    def take(self, lock: Lock, timeout: float = 60) -> tuple[bool, bool]:
        got = lock.acquire(timeout=timeout)
        return got, lock.previous_holder_died


def test_a_lock_guards_a_counter_from_tasks_on_three_nodes(three_node_cluster, tmp_path):
    path = tmp_path / "counter"
    path.write_text("0")
    lock = Lock()
    on = _on(three_node_cluster)
    refs = [add_under_lock.options(scheduling_strategy=s).remote(lock, str(path), 100) for s in on]
    assert sorted(volley.get(refs, timeout=120)) == sorted(three_node_cluster.addrs)
    assert int(path.read_text()) == 300
    assert not lock.locked()


def test_a_barrier_of_tasks_on_three_nodes(three_node_cluster):
    b = Barrier(3)
    on = _on(three_node_cluster)
    got = volley.get([wait_at.options(scheduling_strategy=s).remote(b) for s in on], timeout=90)
    assert sorted(got) == [0, 1, 2]


def test_a_holder_on_another_node_sigkilled_hands_the_lock_on(three_node_cluster):
    on = _on(three_node_cluster)
    lock = Lock()  # the driver's node is its home; the holder and the waiter are elsewhere
    holder = Holder.options(scheduling_strategy=on[1]).remote()
    waiter = Holder.options(scheduling_strategy=on[2]).remote()
    pid = volley.get(holder.pid.remote(), timeout=60)
    assert volley.get(holder.take.remote(lock), timeout=60) == (True, False)
    parked = waiter.take.remote(lock)
    time.sleep(0.5)  # it parks at the home
    assert not volley.wait([parked], timeout=0)[0]
    os.kill(pid, signal.SIGKILL)
    assert volley.get(parked, timeout=60) == (True, True)
