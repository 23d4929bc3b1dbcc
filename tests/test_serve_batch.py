"""``@serve.batch`` (volley.serve._batching) under real asyncio concurrency and once inside a
real volley async actor: batch sizes and counts, the timeout flushing a partial batch, errors,
settings checked at decoration and by the setters, one queue per instance, and the adaptive
wait under a burst and a trickle. Nothing asserts on timings: where a wait could be long the
test bounds the whole run generously (a wrong wait would take many times longer)."""

from __future__ import annotations

import asyncio
import math

import pytest

import volley
from volley.serve._batching import _AdaptiveWait, batch

WAIT_S = 30.0


def run(coro, timeout: float = WAIT_S, what: str = "the batched calls"):
    async def bounded():
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            raise AssertionError(f"{what} did not finish within {timeout} s") from None

    return asyncio.run(bounded())


class Recorder:
    """A batched method that records each batch it gets."""

    def __init__(self, cost_s: float = 0.0):
        self.batches: list[list[int]] = []
        self.cost_s = cost_s

    @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def square(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        if self.cost_s:
            await asyncio.sleep(self.cost_s)
        return [x * x for x in xs]


# --------------------------------------------------------------------------- gathering


def test_32_concurrent_calls_are_gathered_into_batches_of_at_most_max_batch_size():
    r = Recorder()

    async def main():
        return await asyncio.gather(*(r.square(i) for i in range(32)))

    assert run(main()) == [i * i for i in range(32)]
    assert [len(b) for b in r.batches] == [8, 8, 8, 8]
    assert sorted(x for b in r.batches for x in b) == list(range(32))


def test_a_partial_batch_waits_to_fill_then_goes_when_full():
    sizes = []

    @batch(max_batch_size=5, batch_wait_timeout_s=WAIT_S * 10)
    async def ident(xs):
        sizes.append(len(xs))
        return xs

    async def main():
        first = [asyncio.create_task(ident(i)) for i in range(3)]
        for _ in range(20):  # the loop turns; the batcher holds the 3 calls for more
            await asyncio.sleep(0)
        assert not any(t.done() for t in first), "a partial batch ran before its wait was over"
        rest = [asyncio.create_task(ident(i)) for i in range(3, 5)]
        return await asyncio.gather(*first, *rest)

    assert run(main()) == [0, 1, 2, 3, 4]
    assert sizes == [5]


def test_the_timeout_flushes_a_partial_batch():
    r = Recorder()

    async def main():
        return await asyncio.gather(*(r.square(i) for i in range(3)))

    assert run(main(), what="a partial batch of 3 (max 8, wait 0.05 s)") == [0, 1, 4]
    assert [len(b) for b in r.batches] == [3]


def test_calls_that_come_while_a_batch_runs_make_the_next_batch():
    r = Recorder(cost_s=0.05)

    async def main():
        first = asyncio.create_task(r.square(1))
        while not r.batches:  # wait until the first batch is running
            await asyncio.sleep(0.001)
        later = [r.square(i) for i in range(2, 12)]
        return await asyncio.gather(first, *later)

    assert run(main()) == [i * i for i in range(1, 12)]
    assert [len(b) for b in r.batches] == [1, 8, 2]


def test_each_instance_has_its_own_queue():
    a, b = Recorder(), Recorder()

    async def main():
        return await asyncio.gather(*(m.square(i) for i in range(6) for m in (a, b)))

    run(main())
    assert [sorted(x) for x in a.batches] == [list(range(6))]
    assert [sorted(x) for x in b.batches] == [list(range(6))]


def test_a_function_batches_in_each_new_event_loop():
    sizes = []

    @batch(max_batch_size=4, batch_wait_timeout_s=1.0)
    async def inc(xs):
        sizes.append(len(xs))
        return [x + 1 for x in xs]

    async def main():
        return await asyncio.gather(*(inc(i) for i in range(4)))

    assert run(main()) == [1, 2, 3, 4]
    assert run(main()) == [1, 2, 3, 4]  # asyncio.run made a new loop; a new queue serves it
    assert sizes == [4, 4]


def test_bare_decorator_uses_the_defaults():
    sizes = []

    @batch
    async def echo(xs):
        sizes.append(len(xs))
        return xs

    async def main():
        return await asyncio.gather(*(echo(i) for i in range(25)))

    assert run(main()) == list(range(25))
    assert sizes == [10, 10, 5]


def test_a_caller_that_gives_up_is_left_out_of_the_batch():
    seen = []

    @batch(max_batch_size=3, batch_wait_timeout_s=WAIT_S * 10)
    async def echo(xs):
        seen.append(list(xs))
        return xs

    async def main():
        quitter = asyncio.create_task(echo(-1))
        await asyncio.sleep(0)
        quitter.cancel()
        return await asyncio.gather(*(echo(i) for i in range(3)))

    assert run(main()) == [0, 1, 2]
    assert seen == [[0, 1, 2]]


# --------------------------------------------------------------------------- errors


def test_an_exception_fails_every_call_of_its_batch_and_only_that_batch():
    @batch(max_batch_size=3, batch_wait_timeout_s=1.0)
    async def checked(xs):
        if any(x < 0 for x in xs):
            raise ValueError(f"negative input in {xs}")
        return xs

    async def main():
        bad = await asyncio.gather(*(checked(x) for x in (1, -1, 2)), return_exceptions=True)
        good = await asyncio.gather(*(checked(x) for x in (3, 4, 5)))
        return bad, good

    bad, good = run(main())
    assert all(isinstance(e, ValueError) and "negative input in [1, -1, 2]" in str(e) for e in bad)
    assert good == [3, 4, 5]


def test_a_wrong_length_return_is_a_clear_error_in_each_caller():
    @batch(max_batch_size=3, batch_wait_timeout_s=1.0)
    async def short(xs):
        return xs[:-1]

    @batch(max_batch_size=3, batch_wait_timeout_s=1.0)
    async def scalar(xs):
        return 42

    async def main(f):
        return await asyncio.gather(*(f(x) for x in range(3)), return_exceptions=True)

    errors = run(main(short))
    assert len(errors) == 3 and all(isinstance(e, ValueError) for e in errors)
    assert "returned 2 results for a batch of 3 inputs" in str(errors[0])
    errors = run(main(scalar))
    assert all(isinstance(e, TypeError) and "returned a int" in str(e) for e in errors)

    @batch(max_batch_size=3, batch_wait_timeout_s=1.0)
    async def mapping(xs):
        return {str(x): x for x in xs}  # the right length, but not indexed by position

    errors = run(main(mapping))
    assert all(isinstance(e, KeyError) for e in errors)
    assert run(main(short)) and run(main(mapping)), "a bad return stopped the queue"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8", None])
def test_a_bad_max_batch_size_is_refused_at_decoration(bad):
    with pytest.raises(ValueError, match="max_batch_size is an int >= 1"):
        batch(max_batch_size=bad)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, True, "0.1", None])
def test_a_bad_batch_wait_timeout_is_refused_at_decoration(bad):
    with pytest.raises(ValueError, match="batch_wait_timeout_s is a number of seconds >= 0"):
        batch(batch_wait_timeout_s=bad)


def test_what_cannot_be_batched_is_refused_at_decoration():
    with pytest.raises(TypeError, match="goes on an async def"):

        @batch
        def sync(xs):
            return xs

    with pytest.raises(TypeError, match="async generators"):

        @batch
        async def gen(xs):
            yield xs

    with pytest.raises(TypeError, match="takes 3 positional parameters"):

        @batch
        async def three(self, xs, ys):
            return xs

    with pytest.raises(ValueError, match="adaptive is True or False"):
        batch(adaptive="auto")


def test_the_setters_change_later_batches_and_check_their_values():
    r = Recorder()

    async def burst(n):
        return await asyncio.gather(*(r.square(i) for i in range(n)))

    Recorder.square.set_max_batch_size(3)
    try:
        run(burst(7))
        assert [len(b) for b in r.batches] == [3, 3, 1]
        with pytest.raises(ValueError, match="max_batch_size"):
            r.square.set_max_batch_size(0)  # through the bound method too
        with pytest.raises(ValueError, match="batch_wait_timeout_s"):
            r.square.set_batch_wait_timeout_s(-1)
        r.square.set_batch_wait_timeout_s(WAIT_S * 10)
        r.batches.clear()

        async def waits_to_fill():
            t = [asyncio.create_task(r.square(1)), asyncio.create_task(r.square(2))]
            for _ in range(20):
                await asyncio.sleep(0)
            assert not any(x.done() for x in t), "the longer wait was not applied"
            return await asyncio.gather(*t, r.square(3))

        assert run(waits_to_fill()) == [1, 4, 9]
        assert [len(b) for b in r.batches] == [3]
    finally:
        Recorder.square.set_max_batch_size(8)
        Recorder.square.set_batch_wait_timeout_s(0.05)


# --------------------------------------------------------------------------- the adaptive wait


def test_adaptive_policy_waits_under_a_burst_and_not_under_a_trickle():
    burst = _AdaptiveWait()
    for n in (1, 4, 8, 2):
        burst.ran(n, 0.050)  # a 50 ms fixed cost, nothing per item
    for i in range(20):
        burst.arrived(i * 0.001)  # one call a millisecond
    assert burst.fit() == pytest.approx((0.050, 0.0))
    assert burst.wait_s(1, 0.0, max_wait=1.0) == pytest.approx(0.050)  # waits, at most fixed/n
    assert burst.wait_s(10, 0.0, max_wait=1.0) == pytest.approx(0.005)
    assert burst.wait_s(1, 0.99, max_wait=1.0) == pytest.approx(0.01)  # bounded by the max wait
    assert burst.wait_s(60, 0.0, max_wait=1.0) == 0.0  # 60 callers x 1 ms > 50 ms: go

    trickle = _AdaptiveWait()
    for n in (1, 1, 1):
        trickle.ran(n, 0.050)
    for i in range(20):
        trickle.arrived(i * 0.200)  # one call every 200 ms
    assert trickle.wait_s(1, 0.0, max_wait=1.0) == 0.0


def test_adaptive_policy_does_not_wait_without_a_fixed_cost_or_before_it_knows():
    linear = _AdaptiveWait()
    for n in (1, 2, 4, 8):
        linear.ran(n, 0.010 * n)  # cost grows with the batch: batching saves nothing
    for i in range(10):
        linear.arrived(i * 0.020)  # and calls come slower than the model serves them
    assert linear.fit() == pytest.approx((0.0, 0.010), abs=1e-12)
    assert linear.wait_s(1, 0.0, max_wait=1.0) == 0.0

    fresh = _AdaptiveWait()
    assert fresh.wait_s(1, 0.0, max_wait=1.0) == 0.0  # no arrivals or batches seen yet
    fresh.arrived(0.0)
    fresh.ran(1, 0.5)
    assert fresh.wait_s(1, 0.0, max_wait=1.0) == 0.0  # one arrival: no gap known


def test_adaptive_policy_fills_the_batch_when_calls_outpace_the_model():
    busy = _AdaptiveWait()
    for n in (1, 8, 32, 16):
        busy.ran(n, 0.0003 + 0.0002 * n)  # 0.3 ms a batch, 0.2 ms an item
    for i in range(50):
        busy.arrived(i * 0.0001)  # a call every 0.1 ms: faster than 0.2 ms an item
    fixed, per_item = busy.fit()
    assert (fixed, per_item) == (pytest.approx(0.0003), pytest.approx(0.0002))
    # 20 waiting x 0.1 ms > 0.3 ms: a newcomer saves less than they lose, but they queue anyway
    assert busy.wait_s(20, 0.0, max_wait=0.05) == pytest.approx(0.0004)  # 4 gaps
    assert busy.wait_s(20, 0.0499, max_wait=0.05) == pytest.approx(0.0001)  # the bound
    for i in range(50):
        busy.arrived(0.005 + i * 0.001)  # the calls slow to one a millisecond
    assert busy.wait_s(20, 0.0, max_wait=0.05) == 0.0


def test_adaptive_mode_fills_batches_under_a_burst():
    sizes = []

    @batch(max_batch_size=8, batch_wait_timeout_s=WAIT_S, adaptive=True)
    async def model(xs):
        sizes.append(len(xs))
        await asyncio.sleep(0.25)  # a fixed cost per batch, long beside the loop's turns
        return xs

    async def main():
        for n in (3, 5):  # the policy learns the fixed cost
            await asyncio.gather(*(model(i) for i in range(n)))
        sizes.clear()
        calls = []
        for i in range(16):  # then a burst: one call per turn of the loop
            calls.append(asyncio.create_task(model(i)))
            await asyncio.sleep(0)
        return await asyncio.gather(*calls)

    assert run(main(), what="a burst of 16 with adaptive batching") == list(range(16))
    assert sizes == [8, 8]


def test_adaptive_mode_does_not_hold_a_trickle_for_its_max_wait():
    sizes = []

    @batch(max_batch_size=8, batch_wait_timeout_s=WAIT_S, adaptive=True)
    async def model(xs):
        sizes.append(len(xs))
        await asyncio.sleep(0.01)
        return xs

    async def main():
        out = []
        for i in range(10):  # one caller at a time, with a pause between calls
            out.append(await model(i))
            await asyncio.sleep(0.02)
        return out

    # With a fixed wait of 30 s this would take 300 s; the adaptive wait is at most the fixed
    # cost (10 ms) per call.
    assert run(main(), timeout=WAIT_S / 2, what="10 trickled calls") == list(range(10))
    assert sizes == [1] * 10


# --------------------------------------------------------------------------- in a real actor


@volley.remote
class BatchedModel:
    def __init__(self):
        self.sizes: list[int] = []

    @batch(max_batch_size=8, batch_wait_timeout_s=1.0)
    async def __call__(self, xs: list[int]) -> list[int]:
        self.sizes.append(len(xs))
        return [x * 10 for x in xs]

    async def batch_sizes(self) -> list[int]:
        return self.sizes


@pytest.mark.usefixtures("volley_shared")
def test_inside_a_real_async_actor_32_calls_make_batches_of_at_most_8():
    model = BatchedModel.remote()
    refs = [model.__call__.remote(i) for i in range(32)]
    assert volley.get(refs, timeout=WAIT_S) == [i * 10 for i in range(32)]
    sizes = volley.get(model.batch_sizes.remote(), timeout=WAIT_S)
    assert sum(sizes) == 32 and max(sizes) <= 8
    assert max(sizes) > 1, f"the 32 concurrent calls were not batched: {sizes}"


def test_a_cancellation_inside_the_batch_function_fails_its_callers_not_the_queue():
    calls = []

    @batch(max_batch_size=2, batch_wait_timeout_s=1.0)
    async def fragile(xs):
        calls.append(list(xs))
        if len(calls) == 1:
            raise asyncio.CancelledError  # as an awaited thing cancelled under it would
        return xs

    async def main():
        first = await asyncio.gather(fragile(1), fragile(2), return_exceptions=True)
        second = await asyncio.gather(fragile(3), fragile(4))
        return first, second

    first, second = run(main())
    assert all(isinstance(e, RuntimeError) and "cancelled inside" in str(e) for e in first)
    assert second == [3, 4]


def test_adaptive_policy_keeps_what_big_batches_cost_through_a_trickle():
    p = _AdaptiveWait()
    for n in (4, 16, 32):
        p.ran(n, 0.001 + 0.0002 * n)
    for _ in range(500):  # a long trickle: batches of one
        p.ran(1, 0.0012)
    assert p.fit() == (pytest.approx(0.001), pytest.approx(0.0002))
