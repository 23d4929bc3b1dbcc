"""Queues across the nodes of a real cluster (node daemons on 127.0.0.x): a queue lives in the
node that made it and its ends work from every node, their ops forwarded to its home; when that
node dies, whoever waits on it is told which node went, instead of waiting forever."""

from __future__ import annotations

import time

import pytest

import volley
from volley.exceptions import ChannelClosed
from volley.util.queue import Empty, Queue

pytestmark = pytest.mark.timeout(180)


def _on(cluster) -> list:
    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    return [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in cluster.addrs]


@volley.remote(num_cpus=0.25)
def produce(q: Queue, tag: str, n: int) -> str:
    import os

    for i in range(n):
        q.put((tag, i))
    return os.environ["VOLLEY_NODE_ADDRESS"]


@volley.remote(num_cpus=0.25)
def consume(q: Queue, n: int) -> list:
    return [q.get(timeout=60) for _ in range(n)]


@volley.remote(num_cpus=0)
class Home:
    """Makes a queue in its own node."""

    def make(self, maxsize: int = 0) -> Queue:
        self.q = Queue(maxsize=maxsize)
        return self.q

    def where(self) -> str:
        import os

        return os.environ["VOLLEY_NODE_ADDRESS"]


def test_a_drivers_queue_is_fed_by_tasks_on_every_node(three_node_cluster):
    q = Queue()
    on = _on(three_node_cluster)
    refs = [
        produce.options(scheduling_strategy=s).remote(q, f"p{k}", 200) for k, s in enumerate(on)
    ]
    got = [q.get(timeout=60) for _ in range(600)]
    assert sorted(volley.get(refs, timeout=60)) == sorted(three_node_cluster.addrs)
    for k in range(3):  # each producer's items arrive whole and in its order
        assert [i for tag, i in got if tag == f"p{k}"] == list(range(200))
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    q.shutdown()


def test_a_bounded_queue_on_one_node_between_tasks_on_two_others(three_node_cluster):
    on = _on(three_node_cluster)
    home = Home.options(scheduling_strategy=on[0]).remote()
    q = volley.get(home.make.remote(maxsize=4), timeout=60)
    # The consumer starts first and parks at the home, on another node.
    take = consume.options(scheduling_strategy=on[2]).remote(q, 300)
    put = produce.options(scheduling_strategy=on[1]).remote(q, "x", 300)
    assert volley.get(put, timeout=90) == three_node_cluster.addrs[1]
    assert volley.get(take, timeout=90) == [("x", i) for i in range(300)]
    # The driver's own ops go to the home too.
    q.put("from the driver")
    assert q.qsize() == 1 and q.get(timeout=30) == "from the driver"
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    volley.kill(home)


def test_a_timed_out_get_at_another_node_loses_nothing(three_node_cluster):
    on = _on(three_node_cluster)
    home = Home.options(scheduling_strategy=on[1]).remote()
    q = volley.get(home.make.remote(), timeout=60)
    t = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert time.monotonic() - t < 10
    q.put("later")
    assert volley.get(consume.options(scheduling_strategy=on[2]).remote(q, 1), timeout=60) == [
        "later"
    ]
    volley.kill(home)


def test_waiting_on_a_queue_whose_node_died_says_which(three_node_cluster):
    # Last in this module: it kills a node.
    cluster = three_node_cluster
    on = _on(cluster)
    home = Home.options(scheduling_strategy=on[2]).remote()
    q = volley.get(home.make.remote(), timeout=60)
    where = volley.get(home.where.remote(), timeout=60)
    waiter = consume.options(scheduling_strategy=on[1]).remote(q, 1)
    time.sleep(0.5)  # the waiter parks at the home
    cluster.kill(cluster.addrs_index(where))
    with pytest.raises(ChannelClosed, match=r"node \d+, which is gone|node \d+, which"):
        q.get(timeout=60)
    with pytest.raises(Exception, match="ChannelClosed|node"):
        volley.get(waiter, timeout=60)
