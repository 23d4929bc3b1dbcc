"""``multiprocessing.Pool`` on volley: change the import, keep the script.

Before::

    from multiprocessing import Pool

After::

    from volley.multiprocessing import Pool

Each of the pool's processes is a volley actor (a worker process of its own, on any node of the
cluster) that ran ``initializer(*initargs)`` when it started. Work goes to them in chunks, a
process taking the next chunk when it has finished one, as in ``multiprocessing``. Differences a
script may notice: callbacks run in a volley thread rather than the pool's result thread, and a
worker process that dies makes the calls it was running fail with ``volley.ActorDiedError``
(``multiprocessing`` hangs) while the pool starts a replacement.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as _mp
import os
import sys
import threading
import types
from typing import Any, Callable, Iterable, Iterator

from . import _api
from ._actor import kill
from ._map import _task_of, cpu_share, run_items, total_cpus

__all__ = ["Pool", "TimeoutError", "cpu_count"]

TimeoutError = _mp.TimeoutError


def cpu_count() -> int:
    """The CPUs of the volley cluster (or machine)."""
    return total_cpus()


# The globals of the script's (``__main__``'s) functions in a pool process. Such functions
# travel by value, each with its own copy of the globals it uses; rebinding them to one
# namespace makes them share globals as they do in a forked process (what an initializer
# sets is seen by the functions that run later).
_main_globals: dict = {}


def _shared_globals(fn: Any) -> Any:
    if (
        not isinstance(fn, types.FunctionType)
        or fn.__module__ != "__main__"
        or fn.__globals__ is _main_globals
    ):
        return fn
    main = sys.modules.get("__main__")
    if main is not None and fn.__globals__ is getattr(main, "__dict__", None):
        return fn  # The worker's own __main__: nothing to share.
    for k, v in fn.__globals__.items():
        _main_globals.setdefault(k, v)
    new = types.FunctionType(
        fn.__code__, _main_globals, fn.__name__, fn.__defaults__, fn.__closure__
    )
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__dict__.update(fn.__dict__)
    return new


class _PoolProcess:
    """One of a pool's processes (a volley actor)."""

    def __init__(self, initializer: Callable | None, initargs: tuple):
        if initializer is not None:
            _shared_globals(initializer)(*initargs)

    def run(self, fn: Callable, items: list, star: bool, name: str) -> tuple:
        return run_items(_shared_globals(fn), items, star, name)

    def call(self, fn: Callable, args: tuple, kwds: dict, name: str) -> tuple:
        from ._map import capture_error

        try:
            return [_shared_globals(fn)(*args, **kwds)], 0.0, None
        except Exception as e:
            return [], 0.0, capture_error(e, name)

    def pid(self) -> int:
        return os.getpid()


_PoolActor = _api.remote(_PoolProcess)


class _Slot:
    """A pool process and what it runs now."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.outstanding = 0
        self.done = 0
        self.retiring = False


class _Job:
    """A batch of work for one call of the pool process: ``run`` (a chunk) or ``call``."""

    __slots__ = ("method", "args", "result", "index")

    def __init__(self, method: str, args: tuple, result: Any, index: int):
        self.method, self.args, self.result, self.index = method, args, result, index


class Pool:
    """A drop-in for ``multiprocessing.Pool`` whose processes are volley workers.

    ``processes`` defaults to the cluster's CPUs (more processes than CPUs share them);
    ``maxtasksperchild`` replaces a process after that many tasks (chunks);
    ``context`` is accepted and ignored.

    >>> from volley.multiprocessing import Pool
    >>> with Pool(2) as p:
    ...     p.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
    ):
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        _api._ensure_init()
        self._processes = processes or total_cpus()
        # Each process holds its share of the CPUs, so that more processes than CPUs start.
        # (In thousandths, rounded down: three processes on one 2-CPU node take 0.666 each.)
        self._cpus = cpu_share(self._processes)
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: collections.deque[_Job] = collections.deque()
        self._state = "RUN"
        self._slots = [self._new_slot() for _ in range(self._processes)]

    def _new_slot(self) -> _Slot:
        actor = _PoolActor.options(num_cpus=self._cpus, max_restarts=3)
        return _Slot(actor.remote(self._initializer, self._initargs))

    def __repr__(self) -> str:
        return f"<volley.multiprocessing.Pool state={self._state} pool_size={self._processes}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # ------------------------------------------------------------------ dispatching

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _submit(self, jobs: list[_Job]) -> None:
        with self._lock:
            self._check_running()
            self._queue.extend(jobs)
        self._dispatch()

    def _dispatch(self) -> None:
        """Gives queued jobs to processes with fewer than two outstanding (one running, one
        ready to go)."""
        started = []
        with self._lock:
            for slot in self._slots:
                while self._queue and slot.outstanding < 2 and not slot.retiring:
                    limit = self._maxtasks
                    if limit is not None and slot.done + slot.outstanding >= limit:
                        break
                    job = self._queue.popleft()
                    slot.outstanding += 1
                    ref = getattr(slot.handle, job.method).remote(*job.args)
                    started.append((slot, job, ref))
        for slot, job, ref in started:
            ref.future().add_done_callback(lambda f, s=slot, j=job: self._finished(s, j, f))

    def _finished(self, slot: _Slot, job: _Job, f: Any) -> None:
        error = f.exception()
        if error is None:
            results, _, error = f.result()
        else:
            results = []
        retire = None
        with self._lock:
            slot.outstanding -= 1
            slot.done += 1
            if self._maxtasks is not None and slot.done >= self._maxtasks:
                slot.retiring = True
            if slot.retiring and slot.outstanding == 0 and slot in self._slots:
                retire = slot
                if self._state == "RUN":
                    self._slots[self._slots.index(slot)] = self._new_slot()
                else:
                    self._slots.remove(slot)
            self._changed.notify_all()
        if retire is not None:
            kill(retire.handle)
        job.result._part(job.index, results, error)
        self._dispatch()

    # ------------------------------------------------------------------ the API

    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` in a pool process; waits for it.

        >>> p.apply(pow, (2, 5))
        32
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable,
        args: tuple = (),
        kwds: dict | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> ApplyResult:
        """Like :meth:`apply`, returning an :class:`ApplyResult` at once; ``callback`` gets the
        value, ``error_callback`` the exception.

        >>> p.apply_async(pow, (2, 5)).get(timeout=10)
        32
        """
        self._check_running()
        fn, _, name = _task_of(func)
        result = ApplyResult(1, callback, error_callback, single=True)
        self._submit([_Job("call", (fn, tuple(args), dict(kwds or {}), name), result, 0)])
        return result

    def _chunks(self, iterable: Iterable, chunksize: int | None) -> tuple[list[list], int]:
        items = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra:
                chunksize += 1
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        return [items[i : i + chunksize] for i in range(0, len(items), chunksize)], len(items)

    def _map_async(
        self,
        func: Callable,
        iterable: Iterable,
        star: bool,
        chunksize: int | None,
        callback: Callable | None,
        error_callback: Callable | None,
    ) -> MapResult:
        self._check_running()
        fn, _, name = _task_of(func)
        chunks, _ = self._chunks(iterable, chunksize)
        result = MapResult(len(chunks), callback, error_callback)
        self._submit([_Job("run", (fn, c, star, name), result, i) for i, c in enumerate(chunks)])
        return result

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, in parallel.

        >>> p.map(abs, [-1, 2])
        [1, 2]
        """
        return self._map_async(func, iterable, False, chunksize, None, None).get()

    def map_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> MapResult:
        """Like :meth:`map`, returning a :class:`MapResult` at once.

        >>> p.map_async(abs, [-1, 2]).get()
        [1, 2]
        """
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, in parallel.

        >>> p.starmap(pow, [(2, 5), (3, 2)])
        [32, 9]
        """
        return self._map_async(func, iterable, True, chunksize, None, None).get()

    def starmap_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> MapResult:
        """Like :meth:`starmap`, returning a :class:`MapResult` at once."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """An iterator over ``func(x)`` for ``x`` in ``iterable``, in order.

        >>> list(p.imap(abs, [-1, 2]))
        [1, 2]
        """
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """Like :meth:`imap`, in the order the results finish.

        >>> sorted(p.imap_unordered(abs, [-1, 2]))
        [1, 2]
        """
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func: Callable, iterable: Iterable, chunksize: int, ordered: bool):
        self._check_running()
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        fn, _, name = _task_of(func)
        result = _IterResult(ordered)
        it = iter(iterable)
        jobs = []
        for i in itertools.count():
            chunk = list(itertools.islice(it, chunksize))
            if not chunk:
                break
            jobs.append(_Job("run", (fn, chunk, False, name), result, i))
        result._expect(len(jobs))
        self._submit(jobs)
        return result

    def close(self) -> None:
        """No more work: the processes exit once what was submitted is done."""
        with self._lock:
            if self._state == "RUN":
                self._state = "CLOSE"

    def terminate(self) -> None:
        """Stops the processes at once; work not finished fails."""
        with self._lock:
            self._state = "TERMINATE"
            dropped = list(self._queue)
            self._queue.clear()
            slots, self._slots = self._slots, []
            self._changed.notify_all()
        for slot in slots:
            kill(slot.handle)
        from .exceptions import VolleyError

        for job in dropped:
            job.result._part(job.index, [], VolleyError("the pool was terminated"))

    def join(self) -> None:
        """Waits for the processes to exit (after :meth:`close` or :meth:`terminate`)."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        with self._lock:
            while self._queue or any(s.outstanding for s in self._slots):
                self._changed.wait(0.1)
            slots, self._slots = self._slots, []
        for slot in slots:
            kill(slot.handle)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "RUN" and getattr(self, "_slots", None):
            try:
                self.terminate()
            except Exception:
                pass


class ApplyResult:
    """The result of ``apply_async`` (and the base of :class:`MapResult`)."""

    def __init__(
        self,
        parts: int,
        callback: Callable | None,
        error_callback: Callable | None,
        single: bool = False,
    ):
        self._parts: list[Any] = [None] * parts
        self._left = parts
        self._error: BaseException | None = None
        self._callback = callback
        self._error_callback = error_callback
        self._single = single
        self._event = threading.Event()
        self._lock = threading.Lock()
        if parts == 0:
            self._finish()

    def _part(self, index: int, results: list, error: BaseException | None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            if error is not None and self._error is None:
                self._error = error
            self._parts[index] = results
            self._left -= 1
            done = self._left == 0 or error is not None
        if done:
            self._finish()

    def _finish(self) -> None:
        # Callbacks first, then waiters wake (as in multiprocessing).
        try:
            if self._error is not None:
                if self._error_callback is not None:
                    self._error_callback(self._error)
            elif self._callback is not None:
                self._callback(self._value())
        except Exception as e:  # a callback's error must not kill the volley thread
            print(f"volley: a pool callback raised {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            self._event.set()

    def _value(self) -> Any:
        if self._single:
            return self._parts[0][0]
        return [v for part in self._parts for v in part]

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether it finished without raising (``ValueError`` if not finished)."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        """Waits until it has finished, or ``timeout`` seconds."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Its value: raises the call's exception, or ``multiprocessing.TimeoutError``."""
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value()


class MapResult(ApplyResult):
    """The result of ``map_async`` / ``starmap_async``: ``get()`` is the list of values."""


class _IterResult(Iterator):
    """What ``imap``/``imap_unordered`` return."""

    def __init__(self, ordered: bool):
        self._ordered = ordered
        self._cond = threading.Condition()
        self._chunks: dict[int, tuple[list, BaseException | None]] = {}
        self._order: collections.deque[int] = collections.deque()
        self._next = 0
        self._total: int | None = None
        self._taken = 0
        self._buffer: collections.deque = collections.deque()

    def _expect(self, n: int) -> None:
        with self._cond:
            self._total = n
            self._cond.notify_all()

    def _part(self, index: int, results: list, error: BaseException | None) -> None:
        with self._cond:
            self._chunks[index] = (results, error)
            self._order.append(index)
            self._cond.notify_all()

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next value (raising the exception of an item that raised, then going on);
        ``multiprocessing.TimeoutError`` after ``timeout`` seconds."""
        while not self._buffer:
            with self._cond:
                if self._total is not None and self._taken >= self._total:
                    raise StopIteration
                want = self._next if self._ordered else None

                def arrived(want: int | None = want) -> bool:
                    return (want in self._chunks) if want is not None else bool(self._order)

                ok = self._cond.wait_for(arrived, timeout)
                if not ok:
                    raise TimeoutError
                index = want if want is not None else self._order.popleft()
                if want is not None:
                    self._order.remove(index)
                    self._next += 1
                results, error = self._chunks.pop(index)
                self._taken += 1
            self._buffer.extend((True, v) for v in results)
            if error is not None:
                self._buffer.append((False, error))
        ok, value = self._buffer.popleft()
        if not ok:
            raise value
        return value
