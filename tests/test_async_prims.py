"""asyncio variants of the node's primitives (queue, channel, lock, semaphore, event, barrier):
awaited from the driver, from async actors and from tasks running an event loop, in real
processes. They must not block the loop, and a cancelled awaiter (``task.cancel()``,
``asyncio.wait_for``) must lose nothing: an item got for it goes back, a lock it was granted
goes to the next waiter."""

from __future__ import annotations

import asyncio
import time

import pytest

import volley
from volley import _core
from volley.channel import Channel, ChannelPoisoned, select_async
from volley.exceptions import ChannelClosed
from volley.sync import Barrier, BrokenBarrierError, Condition, Event, Lock, RLock, Semaphore
from volley.util.queue import Empty, Full, Queue


def run(coro):
    return asyncio.run(coro)


@volley.remote
def async_producer(q: Queue, n: int) -> int:
    async def main():
        for i in range(n):
            await q.put_async(i)
        await q.put_async(None)
        return n

    return asyncio.run(main())


@volley.remote
def async_consumer(q: Queue) -> list:
    async def main():
        got = []
        while (x := await q.get_async(timeout=30)) is not None:
            got.append(x)
        return got

    return asyncio.run(main())


@volley.remote(num_cpus=0)
class AsyncWaiter:
    """An async actor: one call awaits a queue while other calls go on."""

    async def get(self, q: Queue, timeout: float):
        return await q.get_async(timeout=timeout)

    async def ping(self) -> str:
        return "pong"

    async def recv_all(self, ch: Channel) -> list:
        return [v async for v in ch.reader()]

    async def locked_add(self, lock: Lock, q: Queue, tag: str, n: int) -> int:
        for i in range(n):
            async with lock:
                q.put((tag, i, "in"))
                await asyncio.sleep(0.001)
                q.put((tag, i, "out"))
        return n

    async def wait_event(self, e: Event) -> bool:
        return await e.wait_async(timeout=30)

    async def consume_when(self, cond: Condition, q: Queue, want: int) -> int:
        """Waits (async) on ``cond`` until ``q`` holds ``want`` items."""
        async with cond:
            assert await cond.wait_for_async(lambda: q.qsize() >= want, timeout=60)
            return q.qsize()


def test_producer_and_consumer_coroutines_in_the_driver(volley_2cpu):
    q = Queue(maxsize=2)

    async def main():
        async def produce():
            for i in range(50):
                await q.put_async(i)  # waits for room: maxsize 2
            await q.put_async(None)

        async def consume():
            got = []
            while (x := await q.get_async(timeout=30)) is not None:
                got.append(x)
            return got

        _, got = await asyncio.gather(produce(), consume())
        return got

    assert run(main()) == list(range(50))
    assert _core.prims_awaited() == 0


def test_tasks_running_event_loops_move_items_across_processes(volley_2cpu):
    q = Queue(maxsize=4)
    consumer = async_consumer.remote(q)
    producer = async_producer.remote(q, 100)
    assert volley.get(producer, timeout=60) == 100
    assert volley.get(consumer, timeout=60) == list(range(100))


def test_an_async_actor_awaiting_get_keeps_serving_other_calls(volley_2cpu):
    q = Queue()
    a = AsyncWaiter.remote()
    pending = a.get.remote(q, 30)
    # The actor's loop is free while its get waits in the node: other calls are answered.
    for _ in range(3):
        assert volley.get(a.ping.remote(), timeout=10) == "pong"
    ready, _ = volley.wait([pending], timeout=0.2)
    assert not ready
    q.put("item")
    assert volley.get(pending, timeout=10) == "item"


def test_get_async_timeout_raises_empty_promptly(volley_2cpu):
    q = Queue()

    async def main():
        t = time.monotonic()
        with pytest.raises(Empty):
            await q.get_async(timeout=0.2)
        return time.monotonic() - t

    assert 0.15 < run(main()) < 5
    q.put(1)
    assert q.qsize() == 1 and q.get() == 1


def test_a_cancelled_get_loses_nothing(volley_2cpu):
    q = Queue()

    async def main():
        # Cancelled while parked in the node: the node stops waiting.
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelled after the item was got for it, before it resumed: the item goes back.
        for i in range(30):
            task = asyncio.create_task(q.get_async())
            await asyncio.sleep(0)
            q.put(i)
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                got = None
            if got is not None:
                # Taken for real (this item, or one an earlier cancelled get gave back): put
                # it back for the count below.
                q.put(got)

    run(main())
    got = sorted(q.get(timeout=5) for _ in range(30))
    assert got == list(range(30))
    assert q.qsize() == 0
    assert poll(lambda: _core.prims_awaited() == 0)


def poll(cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_wait_for_timeouts_lose_nothing_under_a_stream_of_puts(volley_2cpu):
    q = Queue()
    n = 200

    @volley.remote
    def feed(q: Queue, n: int) -> int:
        for i in range(n):
            q.put(i)
            time.sleep(0.0005)
        return n

    async def main():
        got = []
        while len(got) < n:
            try:
                got.append(await asyncio.wait_for(q.get_async(), 0.001))
            except asyncio.TimeoutError:
                pass  # cancelled: whatever it got went back
        return got

    ref = feed.remote(q, n)
    got = run(main())
    volley.get(ref, timeout=30)
    assert sorted(got) == list(range(n))
    assert q.qsize() == 0


def test_put_async_on_a_full_queue_waits_and_times_out(volley_2cpu):
    q = Queue(maxsize=1)
    q.put("a")

    async def main():
        with pytest.raises(Full):
            await q.put_async("b", timeout=0.1)
        # Cancelled while waiting for room: the item is not put.
        task = asyncio.create_task(q.put_async("c"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert q.get() == "a" and q.qsize() == 0


def test_shutdown_fails_an_awaited_get(volley_2cpu):
    q = Queue()

    async def main():
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.1)
        q.shutdown()
        with pytest.raises(ChannelClosed):
            await task

    run(main())


def test_channel_async_send_recv_iteration_and_poison(volley_2cpu):
    ch = Channel()  # rendezvous
    a = AsyncWaiter.remote()
    ref = a.recv_all.remote(ch)

    async def main():
        with ch.writer() as out:
            for i in range(20):
                await out.send_async(i)
            out.retire()

    run(main())
    assert volley.get(ref, timeout=30) == list(range(20))

    other = Channel(1)

    async def poisoned():
        task = asyncio.create_task(other.recv_async())
        await asyncio.sleep(0.1)
        other.poison()
        with pytest.raises(ChannelPoisoned):
            await task
        with pytest.raises(TimeoutError):
            await Channel(0).send_async("x", timeout=0.05)

    run(poisoned())


def test_a_cancelled_channel_recv_gives_the_message_back(volley_2cpu):
    ch = Channel(capacity=100)

    async def main():
        for i in range(30):
            task = asyncio.create_task(ch.recv_async())
            await asyncio.sleep(0)
            ch.send(i)
            task.cancel()
            try:
                got = await task
                ch.send(got)  # received for real: back for the count below
            except asyncio.CancelledError:
                pass
        a, b = Channel(1), Channel(1)
        b.send("b")
        assert await select_async([a.recv, b.recv], timeout=5) == (1, "b")

    run(main())
    assert sorted(ch.recv(timeout=5) for _ in range(30)) == list(range(30))
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.05)


def test_async_with_lock_excludes_across_actors(volley_2cpu):
    lock, q = Lock(), Queue()
    actors = [AsyncWaiter.remote() for _ in range(2)]
    refs = [a.locked_add.remote(lock, q, str(k), 10) for k, a in enumerate(actors)]
    assert volley.get(refs, timeout=60) == [10, 10]
    events = [q.get(timeout=5) for _ in range(40)]
    # Each "in" is followed by its own "out": no two holders at once.
    for i in range(0, 40, 2):
        assert events[i][:2] == events[i + 1][:2]
        assert (events[i][2], events[i + 1][2]) == ("in", "out")
    assert not lock.locked()


def test_a_cancelled_acquire_does_not_keep_the_lock(volley_2cpu):
    lock = Lock()
    lock.acquire()

    async def main():
        task = asyncio.create_task(lock.acquire_async())
        await asyncio.sleep(0.1)
        lock.release()  # granted to the awaiting task ...
        task.cancel()  # ... which is cancelled before (or after) it resumes
        try:
            got = await task
        except asyncio.CancelledError:
            got = False
        if got:
            lock.release()
        assert await lock.acquire_async(timeout=5)
        lock.release()
        # A timeout says False and holds nothing.
        lock.acquire()
        assert await lock.acquire_async(timeout=0.05) is False
        lock.release()

    run(main())
    assert poll(lambda: not lock.locked())


def test_rlock_is_reentrant_per_task_and_semaphore_counts(volley_2cpu):
    r, s = RLock(), Semaphore(2)

    async def main():
        async with r:
            async with r:
                assert r.locked()

        async def other():
            return await r.acquire_async(timeout=0.05)

        async with r:
            # Another task is another holder: it waits.
            assert await asyncio.create_task(other()) is False
        async with s:
            async with s:
                assert s.get_value() == 0
                assert await s.acquire_async(timeout=0.05) is False
        return s.get_value()

    assert run(main()) == 2
    assert not r.locked()


def test_event_and_barrier_wait_async(volley_2cpu):
    e = Event()
    a = AsyncWaiter.remote()
    ref = a.wait_event.remote(e)
    assert volley.get(a.ping.remote(), timeout=10) == "pong"
    e.set()
    assert volley.get(ref, timeout=10) is True

    b = Barrier(2)

    async def main():
        got = await asyncio.gather(b.wait_async(timeout=10), b.wait_async(timeout=10))
        assert sorted(got) == [0, 1]
        assert await Event().wait_async(timeout=0.05) is False
        with pytest.raises(BrokenBarrierError):
            await Barrier(2).wait_async(timeout=0.05)

    run(main())


def test_condition_wait_async_in_an_actor_and_the_driver(volley_2cpu):
    cond, q = Condition(), Queue()
    waiter = AsyncWaiter.remote()
    got = waiter.consume_when.remote(cond, q, 3)
    for i in range(3):
        time.sleep(0.1)
        with cond:
            q.put(i)
            cond.notify_all()
    assert volley.get(got, timeout=60) == 3

    async def main():
        # A timeout says False and the task holds the lock again; notify from a task works.
        async with cond:
            assert await cond.wait_async(timeout=0.05) is False
            cond.notify()

        # A cancelled wait takes the lock back before CancelledError, and `async with`
        # releases it: the lock is free afterwards.
        async def waits():
            async with cond:
                await cond.wait_async()

        task = asyncio.create_task(waits())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with cond:
            pass
        assert not cond._lock.locked()

    run(main())
    q.shutdown()
    cond.shutdown()


def test_bad_input_is_refused_at_the_call(volley_2cpu):
    q = Queue()

    async def main():
        with pytest.raises(ValueError, match="timeout"):
            await q.get_async(timeout=-1)
        with pytest.raises(ValueError, match="no awaitable"):
            _core.prim_start("frobnicate", q._id)
        with pytest.raises(RuntimeError, match="not held|unlocked"):
            Lock().release()

    run(main())
    with pytest.raises(RuntimeError, match="asyncio task"):
        # Not in a task: there is no holder to take the lock for.
        Lock().acquire_async().send(None)


def test_volley_shutdown_fails_an_awaited_get(volley_2cpu):
    q = Queue()

    async def main():
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.1)
        volley.shutdown()
        with pytest.raises(ChannelClosed, match="shut down"):
            await asyncio.wait_for(task, 10)

    run(main())
