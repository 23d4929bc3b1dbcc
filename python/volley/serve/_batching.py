"""``@serve.batch``: concurrent single calls gathered into one call on a list.

A model answers 32 inputs at once nearly as fast as one; a replica gets its requests one at a
time, concurrently (it is an async actor). ``@serve.batch`` sits between the two: each call puts
its one argument in a queue and awaits its own answer; a loop in the replica's event loop takes
up to ``max_batch_size`` waiting arguments (waiting at most ``batch_wait_timeout_s`` for the
batch to fill), calls the decorated ``async def`` once with the list, and hands element ``i`` of
the returned list to the ``i``-th caller. An exception fails every call of its batch; a list of
the wrong length is an error in each caller. Ray Serve's ``@serve.batch``, under the same names.

``adaptive=True`` (BentoML's idea) picks the wait itself: it keeps the recent gap between
arrivals and fits each batch's latency as ``fixed + per_item * n``; with ``n`` calls waiting it
waits for one more only while the expected time until the next one, times the ``n`` callers
that would wait for it, is less than the fixed cost a separate batch would spend on it; and
while calls come faster than the model serves them (they queue anyway) it fills the batch.
``batch_wait_timeout_s`` is then the most it ever waits. A trickle of calls is answered at once
(no wait: a batch of one costs nothing extra); a burst fills batches.

One queue per decorated function, and per instance for a method (so each replica batches its
own calls), bound to the event loop of its first call.

>>> import asyncio
>>> @batch(max_batch_size=4, batch_wait_timeout_s=0.1)
... async def double(xs):
...     return [2 * x for x in xs]
>>> async def main():
...     return await asyncio.gather(*(double(i) for i in range(6)))
>>> asyncio.run(main())
[0, 2, 4, 6, 8, 10]
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
import weakref
from collections import deque
from typing import Any, Callable

__all__ = ["batch"]


def _check_size(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"max_batch_size is an int >= 1, not {n!r}")
    return n


def _check_wait(s: object) -> float:
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s < 0:
        raise ValueError(f"batch_wait_timeout_s is a number of seconds >= 0, not {s!r}")
    return float(s)


class _Settings:
    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float, adaptive: bool) -> None:
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.adaptive = adaptive


class _AdaptiveWait:
    """The adaptive mode's decision, free of clocks and loops (it is told the times), so that it
    can be checked on made-up arrivals and latencies.

    With ``n`` calls waiting, waiting for one more is worth it while ``n * gap < fixed``: the
    ``n`` callers each wait about one ``gap`` (the recent time between arrivals), and the newcomer
    joins this batch instead of paying a batch's ``fixed`` cost on its own. It then waits at most
    ``fixed / n`` for that arrival, so a wrong guess costs the waiting callers together no more
    than one batch's fixed cost.

    Calls that come faster than the model serves them (``gap < per_item``, the fitted cost of
    one more item in a batch) queue up whatever the batcher does: then a full batch is the
    most work per fixed cost, and it waits for the batch to fill, at most ``max(4 * gap,
    per_item)`` for each next call (a burst that stops costs about that).
    """

    SMOOTHING = 0.2  # weight of the newest sample in the moving averages

    def __init__(self) -> None:
        self.gap: float | None = None
        self.last_arrival: float | None = None
        # Recent latency of each batch size seen (a moving average per size), so that a long
        # trickle of batches of one does not erase what bigger batches cost.
        self.latency: dict[int, float] = {}
        self._fit: tuple[float, float] | None = None  # (fixed, per_item), refitted after a run

    def arrived(self, now: float) -> None:
        if self.last_arrival is not None:
            g = max(0.0, now - self.last_arrival)
            self.gap = g if self.gap is None else self.gap + self.SMOOTHING * (g - self.gap)
        self.last_arrival = now

    def ran(self, n: int, seconds: float) -> None:
        t = max(0.0, seconds)
        old = self.latency.get(n)
        self.latency[n] = t if old is None else old + self.SMOOTHING * (t - old)
        self._fit = None

    def fit(self) -> tuple[float, float] | None:
        """``(fixed, per_item)``: a batch's latency as ``fixed + per_item * n``, fitted by least
        squares on the recent latency of each batch size seen (one size only: all of its cost
        is taken as fixed); None before the first batch."""
        if self._fit is None and self.latency:
            points = list(self.latency.items())
            k = len(points)
            mean_n = sum(n for n, _ in points) / k
            mean_t = sum(t for _, t in points) / k
            var = sum((n - mean_n) ** 2 for n, _ in points)
            slope = 0.0
            if var > 0:
                slope = max(0.0, sum((n - mean_n) * (t - mean_t) for n, t in points) / var)
            fixed = min(max(0.0, mean_t - slope * mean_n), max(t for _, t in points))
            self._fit = (fixed, slope)
        return self._fit

    def wait_s(self, n: int, waited: float, max_wait: float) -> float:
        """How much longer to wait for another call with ``n`` waiting, the oldest for
        ``waited`` seconds: 0 means run the batch now."""
        fit = self.fit()
        if self.gap is None or fit is None:
            return 0.0
        fixed, per_item = fit
        if n * self.gap < fixed:
            step = fixed / n
        elif self.gap < per_item:
            step = max(4 * self.gap, per_item)
        else:
            return 0.0
        return max(0.0, min(max_wait - waited, step))


class _Call:
    __slots__ = ("item", "future", "at")

    def __init__(self, item: Any, future: asyncio.Future[Any], at: float) -> None:
        self.item = item
        self.future = future
        self.at = at


class _Queue:
    """The waiting calls of one function (or one instance's method) in one event loop, and the
    task that runs their batches."""

    def __init__(self, batcher: _Batcher, owner: object) -> None:
        self.batcher = batcher
        self.owner: Callable[[], object] | None = None
        if owner is not None:
            try:
                self.owner = weakref.ref(owner)
            except TypeError:  # no weak references to it: hold it
                self.owner = lambda: owner
        self.loop = asyncio.get_running_loop()
        self.calls: deque[_Call] = deque()
        self.arrival = asyncio.Event()
        self.policy = _AdaptiveWait()
        self.task = self.loop.create_task(self._run(), name=f"serve.batch {batcher.name}")

    def put(self, item: Any) -> asyncio.Future[Any]:
        now = time.monotonic()
        future = self.loop.create_future()
        self.calls.append(_Call(item, future, now))
        self.policy.arrived(now)
        self.arrival.set()
        return future

    async def _wait(self, timeout: float) -> bool:
        """Waits up to ``timeout`` for another call; whether one came."""
        self.arrival.clear()
        try:
            await asyncio.wait_for(self.arrival.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _gather(self) -> None:
        """Returns once a batch should run: full, or its wait is over."""
        settings = self.batcher.settings
        while not self.calls:
            self.arrival.clear()
            await self.arrival.wait()
        while len(self.calls) < settings.max_batch_size:
            waited = time.monotonic() - self.calls[0].at
            if settings.adaptive:
                wait = self.policy.wait_s(len(self.calls), waited, settings.batch_wait_timeout_s)
            else:
                wait = settings.batch_wait_timeout_s - waited
            if wait <= 0 or not await self._wait(wait):
                return

    async def _run(self) -> None:
        try:
            while True:
                await self._gather()
                batch: list[_Call] = []
                while self.calls and len(batch) < self.batcher.settings.max_batch_size:
                    call = self.calls.popleft()
                    if not call.future.done():  # a caller that gave up is left out
                        batch.append(call)
                if batch:
                    await self._call(batch)
        finally:
            for call in self.calls:
                if not call.future.done():
                    call.future.set_exception(
                        RuntimeError(f"@serve.batch {self.batcher.name}: its queue stopped")
                    )

    async def _call(self, batch: list[_Call]) -> None:
        items = [c.item for c in batch]
        start = time.perf_counter()
        try:
            if self.owner is None:
                results = await self.batcher.func(items)
            else:
                owner = self.owner()
                if owner is None:
                    raise RuntimeError(f"@serve.batch {self.batcher.name}: the instance is gone")
                results = await self.batcher.func(owner, items)
            error = self._check(results, len(items))
            if error is None:
                results = [results[i] for i in range(len(items))]
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            stopped = RuntimeError(f"@serve.batch {self.batcher.name}: its queue stopped")
            if task is not None and task.cancelling():  # the queue itself is being stopped
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(stopped)
                raise
            error = RuntimeError(f"@serve.batch {self.batcher.name} was cancelled inside")
            error.__cause__ = e
        except Exception as e:
            error = e
        self.policy.ran(len(items), time.perf_counter() - start)
        for i, call in enumerate(batch):
            if call.future.done():
                continue
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(results[i])

    def _check(self, results: Any, n: int) -> Exception | None:
        name = self.batcher.name
        try:
            got = len(results)
        except TypeError:
            return TypeError(
                f"@serve.batch {name} returned a {type(results).__name__}; it must return a "
                f"list with one result per input ({n} inputs)"
            )
        if got != n:
            return ValueError(
                f"@serve.batch {name} returned {got} results for a batch of {n} inputs; it "
                "must return one result per input, in order"
            )
        return None


class _Batcher:
    """The decorated function's settings and its queues (one per instance and event loop)."""

    def __init__(self, func: Callable[..., Any], settings: _Settings, method: bool) -> None:
        self.func = func
        self.settings = settings
        self.method = method
        self.name = getattr(func, "__qualname__", repr(func))
        self.queues: dict[tuple[int, int], _Queue] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The queues live in one process's event loop; a copy elsewhere starts its own.
        return {**self.__dict__, "queues": {}}

    def queue(self, owner: object) -> _Queue:
        loop = asyncio.get_running_loop()
        key = (id(owner), id(loop))
        q = self.queues.get(key)
        if (
            q is None
            or q.loop is not loop
            or q.task.done()
            or (owner is not None and q.owner and q.owner() is not owner)
        ):
            for k, old in list(self.queues.items()):
                if old.loop.is_closed() or old.task.done():
                    del self.queues[k]
            q = self.queues[key] = _Queue(self, owner)
            if owner is not None:
                try:
                    weakref.finalize(owner, self._forget, key, q)
                except TypeError:
                    pass
        return q

    def _forget(self, key: tuple[int, int], q: _Queue) -> None:
        if self.queues.get(key) is q:
            del self.queues[key]
        if not q.loop.is_closed():
            q.loop.call_soon_threadsafe(q.task.cancel)

    async def call(self, owner: object, item: Any) -> Any:
        return await self.queue(owner).put(item)

    def set_max_batch_size(self, new_max_batch_size: int) -> None:
        """Changes ``max_batch_size`` for the batches formed from now on (every instance's)."""
        self.settings.max_batch_size = _check_size(new_max_batch_size)

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None:
        """Changes ``batch_wait_timeout_s`` (the most the adaptive mode waits) for the batches
        formed from now on (every instance's)."""
        self.settings.batch_wait_timeout_s = _check_wait(new_batch_wait_timeout_s)


def _is_method(func: Callable[..., Any]) -> bool:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in inspect.signature(func).parameters.values() if p.kind in kinds]
    if len(params) == 1:
        return False
    if len(params) == 2:
        return True
    raise TypeError(
        f"@serve.batch goes on an async def taking one list (or self and one list); "
        f"{func.__qualname__} takes {len(params)} positional parameters"
    )


def batch(
    func: Callable[..., Any] | None = None,
    /,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    adaptive: bool = False,
) -> Any:
    """Makes an ``async def`` that takes a list and returns a list of the same length callable
    with one element at a time: concurrent calls are gathered into one call of up to
    ``max_batch_size`` elements, waiting up to ``batch_wait_timeout_s`` seconds for a batch to
    fill (``adaptive=True``: as long as waiting pays, at most ``batch_wait_timeout_s``; see the
    module's text). Works on methods (one queue per instance) and functions, bare
    (``@batch``) or with arguments. The wrapper's ``set_max_batch_size(n)`` and
    ``set_batch_wait_timeout_s(s)`` change the settings for the batches formed after.

    >>> class Model:
    ...     def __init__(self):
    ...         self.sizes = []
    ...     @batch(max_batch_size=8, batch_wait_timeout_s=1.0)
    ...     async def __call__(self, xs):
    ...         self.sizes.append(len(xs))
    ...         return [x + 1 for x in xs]
    >>> m = Model()
    >>> async def burst():
    ...     return await asyncio.gather(*(m(i) for i in range(16)))
    >>> asyncio.run(burst())[-3:], m.sizes
    ([14, 15, 16], [8, 8])
    """
    size = _check_size(max_batch_size)
    wait = _check_wait(batch_wait_timeout_s)
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive is True or False, not {adaptive!r}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(func):
            raise TypeError(
                f"@serve.batch does not take async generators yet ({func.__qualname__}): "
                "return a list instead"
            )
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"@serve.batch goes on an async def, and {getattr(func, '__qualname__', func)!r} "
                "is not one: the batch is gathered in the event loop"
            )
        batcher = _Batcher(func, _Settings(size, wait, adaptive), _is_method(func))
        if batcher.method:

            async def wrapper(self: Any, item: Any, /) -> Any:
                return await batcher.call(self, item)
        else:

            async def wrapper(item: Any, /) -> Any:  # type: ignore[misc]
                return await batcher.call(None, item)

        functools.update_wrapper(wrapper, func)
        wrapper.set_max_batch_size = batcher.set_max_batch_size  # type: ignore[attr-defined]
        wrapper.set_batch_wait_timeout_s = batcher.set_batch_wait_timeout_s  # type: ignore[attr-defined]
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
