"""asyncio integration (``await ref``) and ``ref.future()`` (concurrent.futures)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import pytest

import volley

pytestmark = pytest.mark.usefixtures("volley_shared")


@volley.remote
def add(x, y):
    return x + y


@volley.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@volley.remote
def fail(msg):
    raise ValueError(msg)


@volley.remote
def wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "released"


# --------------------------------------------------------------------------- await


def test_await_ref_in_asyncio_run():
    async def main():
        return await add.remote(20, 22)

    assert asyncio.run(main()) == 42


def test_await_put_ref():
    ref = volley.put({"k": [1, 2]})

    async def main():
        return await ref

    assert asyncio.run(main()) == {"k": [1, 2]}


def test_await_already_finished_ref():
    ref = add.remote(1, 1)
    assert volley.get(ref) == 2

    async def main():
        return await ref

    assert asyncio.run(main()) == 2


def test_gather_many_refs():
    refs = [add.remote(i, i) for i in range(20)]

    async def main():
        return await asyncio.gather(*refs)

    assert asyncio.run(main()) == [2 * i for i in range(20)]


def test_await_failed_ref_raises_task_error():
    async def main():
        await fail.remote("async failure")

    with pytest.raises(ValueError) as info:
        asyncio.run(main())
    assert isinstance(info.value, volley.TaskError)
    assert "async failure" in str(info.value)


def test_await_does_not_block_the_event_loop(tmp_path):
    release = tmp_path / "release"
    ref = wait_for_file.remote(str(release))

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while ticks < 20:
                ticks += 1
                await asyncio.sleep(0.01)
            release.touch()  # only reachable while the loop keeps running

        result, _ = await asyncio.gather(ref, ticker())
        return result, ticks

    assert asyncio.run(asyncio.wait_for(main(), timeout=60)) == ("released", 20)


def test_asyncio_wait_for_timeout_on_slow_ref():
    ref = sleep_then.remote(1.0, "late")

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.ensure_future(ref), timeout=0.1)
        return "timed out"

    assert asyncio.run(main()) == "timed out"
    assert volley.get(ref, timeout=30) == "late"


def test_await_inside_multiple_event_loops():
    for i in range(3):

        async def main(i=i):
            return await add.remote(i, 100)

        assert asyncio.run(main()) == 100 + i


def test_await_ref_returned_through_task_chain():
    async def main():
        a = add.remote(1, 2)
        b = add.remote(a, 3)
        return await b

    assert asyncio.run(main()) == 6


# --------------------------------------------------------------------------- future()


def test_future_result():
    fut = add.remote(2, 3).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=30) == 5
    assert fut.done()


def test_future_exception():
    fut = fail.remote("future failure").future()
    exc = fut.exception(timeout=30)
    assert isinstance(exc, volley.TaskError)
    assert isinstance(exc, ValueError)
    assert "future failure" in str(exc)
    with pytest.raises(ValueError):
        fut.result(timeout=1)


def test_future_result_timeout():
    ref = sleep_then.remote(1.0, "slow")
    fut = ref.future()
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.1)
    assert not fut.done()
    assert fut.result(timeout=30) == "slow"


def test_futures_work_with_as_completed_and_wait():
    futures = [add.remote(i, 0).future() for i in range(10)]
    done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=60)}
    assert done == set(range(10))
    finished, pending = concurrent.futures.wait(futures, timeout=30)
    assert len(finished) == 10 and not pending


def test_future_done_callback():
    fut = add.remote(40, 2).future()
    got = concurrent.futures.Future()
    fut.add_done_callback(lambda f: got.set_result(f.result()))
    assert got.result(timeout=30) == 42


def test_wrap_future_in_asyncio():
    ref = add.remote(7, 8)

    async def main():
        return await asyncio.wrap_future(ref.future())

    assert asyncio.run(main()) == 15
