"""``concurrent.futures`` on volley: :class:`Executor`, a drop-in for ``ProcessPoolExecutor``.

Before::

    from concurrent.futures import ProcessPoolExecutor as Executor

After::

    from volley.futures import Executor

Every call is a volley task, so it runs on any core of the machine or of the cluster, and large
arguments and results go through the shared-memory object store. Futures are real
``concurrent.futures.Future`` objects: ``as_completed``, ``wait`` and callbacks from the
standard library work with them.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from . import _api
from ._map import _task_of, total_cpus

__all__ = ["Executor"]


@_api.remote
def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


class _Future(cf.Future):
    """A ``concurrent.futures.Future`` whose ``result()``/``exception()`` wait in volley
    directly when the call is running (no hop through the thread that completes futures)."""

    _ref: Any = None

    def _settle(self, value: Any, error: BaseException | None) -> None:
        with self._condition:
            if self._state in ("FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED"):
                return
        try:
            if error is None:
                self.set_result(value)
            else:
                self.set_exception(error)
        except cf.InvalidStateError:
            pass  # The other path settled it first.

    def _wait_volley(self, timeout: float | None) -> None:
        ref = self._ref
        if ref is None or self.done() or not self.running():
            return
        try:
            value = _api.get(ref, timeout=timeout)
        except _api.GetTimeoutError:
            raise cf.TimeoutError() from None
        except BaseException as e:  # the call's own error
            self._settle(None, e)
        else:
            self._settle(value, None)

    def result(self, timeout: float | None = None) -> Any:
        self._wait_volley(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_volley(timeout)
        return super().exception(timeout)


class Executor(cf.Executor):
    """Runs calls as volley tasks: ``submit``, ``map``, ``shutdown``, a context manager.

    ``max_workers`` bounds how many calls are handed to volley at once (default: four per CPU
    of the cluster, so workers never wait for the next call); calls beyond it wait here, where
    ``Future.cancel()`` can still cancel them. As with
    ``ProcessPoolExecutor``, a call that has been handed to a worker is running and can no
    longer be cancelled. Task options (``num_cpus``, ``num_gpus``, ``resources``,
    ``max_retries``) apply to every call.

    >>> from volley.futures import Executor
    >>> with Executor() as ex:
    ...     f = ex.submit(pow, 2, 10)
    ...     print(f.result(), list(ex.map(abs, [-1, -2])))
    1024 [1, 2]
    """

    def __init__(self, max_workers: int | None = None, **options: Any):
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        _api._ensure_init()
        self._max_workers = max_workers or 4 * total_cpus()
        self._options = _api._check_options(dict(options)) if options else {}
        self._call = _call.options(**self._options) if options else _call
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._running: dict[Any, cf.Future] = {}
        self._shutdown = False
        self._idle = threading.Condition(self._lock)
        self._functions: dict[Any, Any] = {}

    # ------------------------------------------------------------------ submit

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedules ``fn(*args, **kwargs)``; returns its ``Future``.

        >>> ex.submit(sum, [1, 2, 3]).result()
        6
        """
        fut = _Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append((fut, fn, args, kwargs))
        self._dispatch()
        return fut

    def _dispatch(self) -> None:
        """Hands queued calls to volley while fewer than ``max_workers`` run."""
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self._max_workers:
                    return
                fut, fn, args, kwargs = self._queue.popleft()
                if not fut.set_running_or_notify_cancel():
                    continue  # Cancelled while it waited here.
                try:
                    ref = self._remote(fn).remote(*args, **kwargs)
                except BaseException as e:  # unpicklable arguments: the caller's future says so
                    fut.set_exception(e)
                    continue
                fut._ref = ref
                self._running[ref] = fut
            ref.future().add_done_callback(lambda vf, ref=ref: self._finished(ref, vf))

    def _finished(self, ref: Any, vf: cf.Future) -> None:
        with self._lock:
            fut = self._running.pop(ref, None)
            if not self._running and not self._queue:
                self._idle.notify_all()
        if fut is not None:
            e = vf.exception()
            fut._settle(vf.result() if e is None else None, e)
        self._dispatch()

    def _remote(self, fn: Callable) -> Any:
        """The remote function for ``fn``: made once per function (shipped to the workers
        once), or the generic caller for what cannot be a dict key."""
        try:
            rf = self._functions.get(fn)
        except TypeError:
            return _Caller(self._call, fn)
        if rf is None:
            rf = _api.remote(**self._options)(fn) if self._options else _api.remote(fn)
            if not isinstance(rf, _api.RemoteFunction):
                return _Caller(self._call, fn)  # a class: called, not made an actor
            self._functions[fn] = rf
        return rf

    # ------------------------------------------------------------------ map

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator:
        """Like the built-in ``map``, with the calls run in parallel; results in order.

        The iterables are read at once (as ``concurrent.futures`` does). ``chunksize`` items go
        to a worker together. If a call raises, its exception is raised when the iterator
        reaches its value; ``timeout`` (seconds from this call) raises ``TimeoutError`` for a
        result not ready in time.

        >>> list(ex.map(pow, [2, 3], [5, 2]))
        [32, 9]
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables)]
            return _results(futures, deadline)
        fn, _, name = _task_of(fn)
        items = list(zip(*iterables))
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        futures = [self.submit(_chunk_in_worker, fn, c, name) for c in chunks]
        return _chunk_results(futures, deadline)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls after this. ``cancel_futures`` cancels the calls still waiting here;
        ``wait`` blocks until the others are done.

        >>> ex.shutdown(wait=True)
        """
        with self._lock:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
        for fut, *_ in dropped:
            fut.cancel()
        if wait:
            with self._lock:
                while self._running or self._queue:
                    self._idle.wait(0.1)


class _Caller:
    """Calls ``fn`` through the generic ``_call`` task."""

    def __init__(self, call: Any, fn: Callable):
        self.call, self.fn = call, fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.call.remote(self.fn, args, kwargs)


def _chunk_in_worker(fn: Callable, items: list, name: str) -> tuple[list, Any]:
    from ._map import run_items

    results, _, error = run_items(fn, items, True, name)
    return results, error


def _results(futures: list, deadline: float | None) -> Iterator:
    try:
        futures.reverse()
        while futures:
            f = futures.pop()
            if deadline is None:
                yield f.result()
            else:
                yield f.result(max(0.0, deadline - time.monotonic()))
    finally:
        for f in futures:
            f.cancel()


def _chunk_results(futures: list, deadline: float | None) -> Iterator:
    for part in _results(futures, deadline):
        results, error = part
        yield from results
        if error is not None:
            raise error
