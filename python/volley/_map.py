"""``volley.map`` and ``volley.starmap``: a lazy parallel ``map`` over any iterables.

Items go to workers in chunks, each chunk one task. With ``chunksize="auto"`` the first chunks
are small and the size then follows the measured time per item, so a chunk holds about
``_TARGET_CHUNK_S`` of work: a million no-ops travel in a few hundred tasks (the cost is
pickling), while slow items go one by one (no worker waits behind another's long chunk). At most
a few chunks per CPU are in flight, so an endless iterable is read only as fast as it is
consumed. ``volley.joblib`` runs its batches with the same chunk runner (``run_items``);
``volley.multiprocessing`` has a chunk task of its own (a pool's initializer and
``maxtasksperchild`` go with it). Both report errors with ``capture_error`` and lend a waiting
task's CPU with ``lending_cpu``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import threading
from typing import Any, Callable, Iterable, Iterator

from . import _core
from ._actor import ActorMethod
from ._core import ObjectRef
from ._map_items import _run_chunk
from ._objects import cancel_soon, get, put, wait
from ._progress import Bar
from ._remote import remote
from ._remote_function import unwrap
from ._session import nodes

# How long a chunk should take to run, once the time per item is known.
_TARGET_CHUNK_S = 0.02
# The most items in one chunk.
_MAX_CHUNK = 65536
# Chunks in flight per CPU.
_WINDOW_PER_CPU = 3


run_chunk = remote(_run_chunk)


def _node_cpus() -> list[float]:
    """CPUs of each node that runs tasks, seen from a driver (empty inside a task)."""
    if _core.mode() != "driver":
        return []
    return [n["num_cpus"] for n in nodes() if not n["driver"]]


def total_cpus() -> int:
    """CPUs of the cluster (or of this machine, inside a task).

    >>> volley.init(num_cpus=2)
    volley.Context(num_cpus=2)
    >>> library.total_cpus()
    2
    >>> volley.shutdown()
    """
    ns = _node_cpus()
    if ns:
        return max(1, int(sum(ns)))
    if _core.mode() == "driver":
        total = _core.stats().get("cpu_total")
        if total:
            return max(1, int(total))
    return os.cpu_count() or 1


def cpu_share(processes: int) -> float:
    """The CPUs each of ``processes`` equal workers may hold so that all of them start at once.

    At most one CPU each. Shares are packed node by node, so three processes on two 1-CPU
    nodes get 0.5 each (two fit on one node, one on the other), not 0.666 (one per node).

    >>> volley.init(num_cpus=2)
    volley.Context(num_cpus=2)
    >>> library.cpu_share(4)
    0.5
    >>> volley.shutdown()
    """
    per_node = [round(c * 1000) for c in _node_cpus()]
    if not any(per_node):
        per_node = [total_cpus() * 1000]
    best = 0  # when even a thousandth each is too much: no CPU held, all start
    for c in per_node:
        for k in range(1, processes + 1):
            s = min(1000, c // k)  # k processes on this node
            if s <= best:
                break
            if sum(n // s for n in per_node) >= processes:
                best = s
                break
    return best / 1000


def _task_of(fn: Any) -> tuple[Callable, Any, str]:
    """(the Python function, the remote function to run chunks with, a name) for ``fn``: a
    ``@volley.remote`` function keeps its options (CPUs, resources, retries)."""
    if not callable(fn):
        raise TypeError(f"map needs a callable, not {type(fn).__name__}")
    fn, options, name = unwrap(fn, "map")
    return fn, run_chunk.options(**options) if options else run_chunk, name


def _actor_method(fn: Any) -> Any:
    """``fn`` if it is an actor method (``handle.method``), else None; one that does not return
    exactly one value is refused here, at once."""
    if not isinstance(fn, ActorMethod):
        return None
    if fn._num_returns != 1:
        raise TypeError(
            f"map needs an actor method that returns one value per call; "
            f"'{fn._display}' has num_returns={fn._num_returns!r}"
        )
    return fn


class _Sizer:
    """Chunk sizes: fixed, or ``auto`` (ramping up from 1, then following the time per
    item)."""

    def __init__(self, chunksize: Any, total: int | None, cpus: int):
        if chunksize != "auto" and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be 'auto' or an int >= 1, not {chunksize!r}")
        self.fixed = None if chunksize == "auto" else chunksize
        self.total = total
        self.cpus = cpus
        self.per_item: float | None = None
        self.next = 1

    def size(self, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        n = self.next
        if self.per_item is not None:
            n = int(_TARGET_CHUNK_S / max(self.per_item, 1e-9))
        if remaining is not None:
            # Leave work for every CPU at the end: no chunk bigger than a share of the rest,
            # unless that share would run for under a quarter of the target: splitting fast
            # items further only adds round trips (10,000 no-ops went out in ~30 shrinking
            # chunks, 0.15x Pool.map's time).
            share = remaining // (2 * self.cpus)
            if self.per_item is not None:
                share = max(share, int(_TARGET_CHUNK_S / 4 / max(self.per_item, 1e-9)))
            n = min(n, max(1, share))
        return max(1, min(n, _MAX_CHUNK))

    def measured(self, items: int, seconds: float) -> None:
        if self.fixed is not None or items == 0:
            return
        per = seconds / items
        self.per_item = per if self.per_item is None else 0.5 * self.per_item + 0.5 * per
        self.next = min(self.next * 4, _MAX_CHUNK)


def _length(iterables: tuple) -> int | None:
    try:
        return min(len(it) for it in iterables)
    except TypeError:
        return None


class MapIterator(Iterator):
    """What ``volley.map`` returns: an iterator over the results; work starts at once.

    ``close()`` (or dropping it) cancels the chunks still running; ``tasks`` counts the chunks
    submitted so far (each one task).
    """

    def __init__(
        self,
        fn: Any,
        items: Iterator,
        star: bool,
        total: int | None,
        ordered: bool,
        chunksize: Any,
        progress: Any,
        window: int | None = None,
    ):
        # An actor method runs in its actor: one call per item (the actor serialises them
        # anyway), results in order as for a function.
        self._actor = _actor_method(fn)
        if self._actor is not None:
            self._fn, self._task, self._name = fn, None, self._actor._display
            chunksize = 1
        else:
            self._fn, self._task, self._name = _task_of(fn)
        cpus = total_cpus()
        self._sizer = _Sizer(chunksize, total, cpus)
        self._items = items
        self._star = star
        self._remaining = total
        self._ordered = ordered
        self._window = window or max(4, _WINDOW_PER_CPU * cpus)
        self._inflight: collections.OrderedDict[ObjectRef, int] = collections.OrderedDict()
        self._ready: collections.deque = collections.deque()
        self._error: BaseException | None = None
        self._exhausted = False
        self._closed = False
        self._gen = self._results()
        self.tasks = 0
        self._fn_ref = None if self._actor is not None else put(self._fn)
        self._bar = None
        if progress:
            desc = progress if isinstance(progress, str) else self._name
            self._bar = Bar(total, desc)
        self._fill()

    def _fill(self) -> None:
        while not self._exhausted and len(self._inflight) < self._window:
            n = self._sizer.size(self._remaining)
            chunk = list(itertools.islice(self._items, n))
            if len(chunk) < n:
                self._exhausted = True
            if not chunk:
                break
            if self._remaining is not None:
                self._remaining -= len(chunk)
            if self._actor is not None:
                item = chunk[0]
                ref = self._actor.remote(*item) if self._star else self._actor.remote(item)
            else:
                ref = self._task.remote(self._fn_ref, chunk, self._star, self._name)
            self._inflight[ref] = len(chunk)
            self.tasks += 1

    def _collect(self, ref: ObjectRef) -> None:
        n = self._inflight.pop(ref)
        try:
            if self._actor is not None:
                results, seconds, error = [get(ref)], 0.0, None
            else:
                results, seconds, error = get(ref)
        except BaseException as e:  # the chunk itself failed (a worker died, cancelled)
            results, seconds, error = [], 0.0, e
        self._sizer.measured(len(results) + (error is not None), seconds)
        if results:
            self._ready.append(results)
        if self._bar is not None:
            self._bar.update(len(results) if error is None else n)
        if error is not None and self._error is None:
            self._error = error
            self._stop()

    def _stop(self) -> None:
        self._exhausted = True
        for r in list(self._inflight):
            try:
                cancel_soon(r)
            except Exception:
                pass
        self._inflight.clear()

    def _chunks(self) -> Iterator[list]:
        """The result lists of the chunks, in the order they are to be yielded."""
        while True:
            while self._ready:
                yield self._ready.popleft()
            if self._error is not None:
                err, self._error = self._error, None
                self.close()
                raise err
            if not self._inflight:
                self.close()
                return
            if self._ordered:
                ref = next(iter(self._inflight))
            else:
                # _collect's get fetches the value: wait's fetch would move it twice.
                ready, _ = wait(list(self._inflight), num_returns=1, fetch_local=False)
                ref = ready[0]
            self._collect(ref)
            self._fill()

    def _results(self) -> Iterator:
        # Item by item in C: no Python frame is resumed per result, only per chunk.
        return itertools.chain.from_iterable(self._chunks())

    def __iter__(self) -> Iterator:
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop()
        if self._bar is not None:
            self._bar.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def map(
    fn: Callable,
    *iterables: Iterable,
    ordered: bool = True,
    chunksize: int | str = "auto",
    progress: bool | str = False,
    method: Any = None,
) -> Any:
    """Applies ``fn`` to every item of ``iterables`` in parallel; a lazy iterator over the
    results, like ``multiprocessing.Pool.imap`` (``map(fn, a, b)`` calls ``fn(a[i], b[i])`` and
    stops at the shortest).

    Work starts at once and runs ahead of the consumer by a few chunks per CPU. With
    ``ordered=False`` results come as they finish. ``chunksize="auto"`` sizes chunks from the
    measured time per item; an int fixes it. A ``@volley.remote`` function keeps its options
    (``num_cpus``, ``resources``, ``max_retries``). An actor method (``handle.method``) works
    too: each item is one call on that actor. ``progress=True`` (or a label) shows a
    progress bar. If ``fn`` raises, the results before that item are yielded, then its
    exception is raised (the same class, with the remote traceback) and the rest is cancelled.

    Over an actor pool, ``volley.map(pool, items, method="name")`` calls
    ``actor.name.remote(item)`` on the pool's actors, one call per item, each actor taking
    the next item as it finishes (``method`` may also be a function ``(actor, item) ->
    ObjectRef``, as ``ActorPool.map`` takes); an actor that dies leaves the pool and its calls
    are made again on the others (docs/map.md).

    >>> list(volley.map(lambda x: x * x, range(5)))
    [0, 1, 4, 9, 16]
    >>> sorted(volley.map(pow, [2, 3], [5, 2], ordered=False))
    [9, 32]
    """
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    total = _length(iterables)
    star = len(iterables) > 1
    pool_map = _pool_map(fn, method)
    if pool_map is not None:
        items = zip(*iterables) if star else iter(iterables[0])
        return pool_map(method, items, star, ordered, progress, total)
    if len(iterables) == 1:
        return MapIterator(fn, iter(iterables[0]), False, total, ordered, chunksize, progress)
    return MapIterator(fn, zip(*iterables), True, total, ordered, chunksize, progress)


def starmap(
    fn: Callable,
    iterable: Iterable,
    *,
    ordered: bool = True,
    chunksize: int | str = "auto",
    progress: bool | str = False,
    method: Any = None,
) -> Any:
    """Like :func:`map`, with each item a tuple of arguments: ``fn(*item)`` (over an actor
    pool, ``actor.method.remote(*item)``).

    >>> list(volley.starmap(pow, [(2, 5), (3, 2)]))
    [32, 9]
    """
    total = _length((iterable,))
    pool_map = _pool_map(fn, method)
    if pool_map is not None:
        return pool_map(method, iter(iterable), True, ordered, progress, total)
    return MapIterator(fn, iter(iterable), True, total, ordered, chunksize, progress)


def _pool_map(fn: Any, method: Any) -> Any:
    """The pool's map if ``fn`` is an ``ActorPool`` (it has ``_volley_map``: looked up on the
    type, as an actor handle answers any attribute), else None; ``method`` is refused
    without a pool."""
    pool_map = getattr(type(fn), "_volley_map", None)
    if pool_map is None:
        if method is not None:
            raise TypeError(
                "method= is for volley.map over a volley.util.ActorPool, not over "
                f"{type(fn).__name__}"
            )
        return None
    return functools.partial(pool_map, fn)


@contextlib.contextmanager
def lending_cpu(running: Callable[[], list], name: str) -> Iterator[None]:
    """While the caller (an adapter inside a task) waits for its own inner calls by other means
    than ``volley.get``: a thread blocks in volley on ``running()``'s refs meanwhile, so that
    the task's CPU is lent to them, as ``get`` lends it (without it, outer calls holding every
    CPU would wait for ever for inner ones). Outside a task it does nothing.

    >>> pending = []  # the refs the caller waits for, by its own means
    >>> with library.lending_cpu(lambda: pending, "my-lib-lend"):
    ...     pass  # wait for them here
    """
    if _core.mode() != "worker":
        yield
        return
    stop = threading.Event()

    def lend() -> None:
        while not stop.is_set():
            refs = running()
            if refs:
                try:
                    # Blocking is the point here, not the values (the caller gets them).
                    wait(refs, num_returns=1, timeout=0.05, fetch_local=False)
                except Exception:
                    pass
            stop.wait(0.002)

    t = threading.Thread(target=lend, name=name, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
