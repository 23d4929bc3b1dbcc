"""A worker that keeps getting from a queue with a backlog takes its items in batches (one
round trip for many gets): the items it has not handed out yet stay counted, are recalled for
another getter, go back when its task ends, and are not lost when it is killed.

The batching itself (sizes, who may take a batch, recalls) is tested without processes in
crates/volley-runtime/src/prims/tests.rs; these tests check that nothing a user can see
changes, with real processes.
"""

from __future__ import annotations

import os
import signal

import volley
from volley.exceptions import ActorDiedError
from volley.util.queue import Queue

N = 4000
TAKE = 1000  # a fast loop of gets: it ends inside a batch, the rest waiting in the buffer


def filled(n: int = N) -> Queue:
    q = Queue()
    for i in range(n):
        q.put(i)
    return q


@volley.remote(num_cpus=0)
class Streamer:
    def pid(self) -> int:
        return os.getpid()

    def blocking_then_awaited(self, q: Queue, n: int) -> list:
        """Gets `n` items fast (a batch waits in this process's buffer), then `n` more with
        `get_async`, then `n` more blocking: the awaited gets must take the buffer first."""
        import asyncio

        got = [q.get(timeout=60) for _ in range(n)]

        async def awaited() -> list:
            return [await q.get_async(timeout=60) for _ in range(n)]

        got += asyncio.run(awaited())
        got += [q.get(timeout=60) for _ in range(n)]
        return got

    def take_then_hold(self, q: Queue, n: int, done: Queue, release: Queue) -> str:
        """Gets `n` items fast, reports them, then waits (in another queue's get) with what
        is left of its batch still in its buffer."""
        got = [q.get(timeout=60) for _ in range(n)]
        done.put(got)
        release.get(timeout=120)
        return "released"


@volley.remote
def take(q: Queue, n: int) -> list:
    return [q.get(timeout=60) for _ in range(n)]


def test_a_task_end_gives_the_buffer_back_in_order(volley_2cpu):
    q = filled()
    assert volley.get(take.remote(q, TAKE), timeout=60) == list(range(TAKE))
    assert q.qsize() == N - TAKE
    assert [q.get(timeout=10) for _ in range(N - TAKE)] == list(range(TAKE, N))
    assert q.empty()


def test_a_getter_recalls_a_busy_consumers_buffer(volley_2cpu):
    """The consumer's main thread waits elsewhere; its buffered items still reach the driver,
    oldest first, and count in qsize meanwhile."""
    q, done, release = filled(), Queue(), Queue()
    s = Streamer.remote()
    held = s.take_then_hold.remote(q, TAKE, done, release)
    assert done.get(timeout=60) == list(range(TAKE))
    assert q.qsize() == N - TAKE
    assert [q.get(timeout=30) for _ in range(N - TAKE)] == list(range(TAKE, N))
    assert q.qsize() == 0
    release.put("go")
    assert volley.get(held, timeout=60) == "released"


def test_a_consumer_killed_with_a_buffer_loses_nothing(volley_2cpu):
    q, done, release = filled(), Queue(), Queue()
    s = Streamer.remote()
    pid = volley.get(s.pid.remote(), timeout=60)
    held = s.take_then_hold.remote(q, TAKE, done, release)
    assert done.get(timeout=60) == list(range(TAKE))
    os.kill(pid, signal.SIGKILL)
    try:
        volley.get(held, timeout=60)
        raise AssertionError("the killed actor's call returned")
    except ActorDiedError:
        pass
    assert [q.get(timeout=30) for _ in range(N - TAKE)] == list(range(TAKE, N))
    assert q.qsize() == 0


@volley.remote(num_cpus=0)
class Collector:
    def collect(self, q: Queue) -> list:
        got = []
        while (x := q.get(timeout=60)) is not None:
            got.append(x)
        return got


def test_streaming_consumers_share_without_loss_or_reorder(volley_2cpu):
    """Each item reaches exactly one consumer, and each sees the items in the queue's order,
    while one of them may hold a batch the others' gets recall (a recall may overtake the
    batch it is about: the node asks again). Three rounds: the races differ each time."""
    consumers = [Collector.remote() for _ in range(3)]
    for _ in range(3):
        q = filled(5 * N)
        for _ in consumers:
            q.put(None)
        got = volley.get([c.collect.remote(q) for c in consumers], timeout=120)
        assert sorted(x for g in got for x in g) == list(range(5 * N))
        for g in got:
            assert g == sorted(g)
        q.shutdown()


def test_awaited_gets_take_the_processs_batch_first(volley_2cpu):
    q = filled(3 * TAKE)
    s = Streamer.remote()
    assert volley.get(s.blocking_then_awaited.remote(q, TAKE), timeout=120) == list(range(3 * TAKE))
    assert q.qsize() == 0
    q.shutdown()
