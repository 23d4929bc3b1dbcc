"""asyncio variants across the nodes of a real cluster (node daemons on 127.0.0.x): an async
actor on another node awaits a queue and a lock that live in the driver's node; its ops are
forwarded there, and a cancelled awaiter there loses nothing here."""

from __future__ import annotations

import asyncio

import pytest

import volley
from volley.sync import Lock
from volley.util.queue import Queue

pytestmark = pytest.mark.timeout(180)


def _on(cluster) -> list:
    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    return [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in cluster.addrs]


@volley.remote(num_cpus=0)
class Remote:
    async def get(self, q: Queue) -> object:
        return await q.get_async(timeout=60)

    async def ping(self) -> str:
        return "pong"

    async def cancelled_gets(self, q: Queue, n: int) -> int:
        """Starts and cancels ``n`` gets while items arrive; puts back what it really got."""
        kept = 0
        for _ in range(n):
            task = asyncio.create_task(q.get_async())
            await asyncio.sleep(0.002)
            task.cancel()
            try:
                item = await task
            except asyncio.CancelledError:
                continue
            await q.put_async(item)
            kept += 1
        return kept

    async def hold(self, lock: Lock, q: Queue) -> str:
        async with lock:
            q.put("held")
            await asyncio.sleep(0.2)
        return "released"


def test_an_async_actor_on_another_node_awaits_the_drivers_queue(three_node_cluster):
    q = Queue()
    on = _on(three_node_cluster)
    a = Remote.options(scheduling_strategy=on[1]).remote()
    ref = a.get.remote(q)
    assert volley.get(a.ping.remote(), timeout=30) == "pong"  # its loop is not blocked
    q.put("x")
    assert volley.get(ref, timeout=30) == "x"


def test_cancelled_remote_awaiters_lose_nothing(three_node_cluster):
    q = Queue()
    on = _on(three_node_cluster)
    a = Remote.options(scheduling_strategy=on[2]).remote()
    ref = a.cancelled_gets.remote(q, 40)
    for i in range(40):
        q.put(i)
    volley.get(ref, timeout=60)
    assert sorted(q.get(timeout=10) for _ in range(40)) == list(range(40))
    assert q.qsize() == 0


def test_async_with_a_drivers_lock_from_another_node(three_node_cluster):
    lock, q = Lock(), Queue()
    on = _on(three_node_cluster)
    a = Remote.options(scheduling_strategy=on[1]).remote()
    ref = a.hold.remote(lock, q)
    assert q.get(timeout=30) == "held"
    assert lock.acquire(timeout=30)  # waits for the actor's release
    lock.release()
    assert volley.get(ref, timeout=30) == "released"
