"""OpenMP-style parallel loops and blocks over volley's workers (PyMP's ``p.range`` and
``with pymp.Parallel(n) as p:``).

:func:`parallel_range` runs ``fn`` over the indices ``0..n`` in a team of worker tasks that
share the index space as OpenMP's schedules do: ``static`` (fixed blocks, or chunks dealt round
robin), ``dynamic`` (each member takes the next chunk when it is free) and ``guided`` (chunks
that shrink as the work runs out). :func:`parallel` runs one function on every member of a team
at once, with its member number, a barrier, its share of a range and an all-reduce. The members
exchange chunk numbers and reduced values through a ``volley.SharedDict`` (an atomic counter for
the dynamic schedules), and a ``volley.sync.Barrier``; the data they work on is usually a
:func:`volley.shared_array` they all write.
"""

from __future__ import annotations

import math
import operator
import secrets
from typing import Any, Callable, Iterator

import volley
from volley import library

__all__ = ["Parallel", "Team", "parallel", "parallel_range"]

_SCHEDULES = ("static", "dynamic", "guided")
_STOP = 1 << 60  # added to the chunk counter by a member that failed: the others stop


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` (Python 3.11); before, the note is only kept in ``__notes__``."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]  # type: ignore[attr-defined]


def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, not {value}")
    return value


def _chunks(n: int, schedule: str, chunk: int | None, workers: int) -> list[tuple[int, int]]:
    """The chunks ``(start, stop)`` of ``0..n`` in the order the members take them."""
    if schedule == "static" and chunk is None:  # one contiguous block per member
        base, extra = divmod(n, workers)
        out, start = [], 0
        for k in range(workers):
            stop = start + base + (1 if k < extra else 0)
            out.append((start, stop))
            start = stop
        return out
    if schedule == "guided":  # OpenMP: remaining / members, never below `chunk`
        least = chunk or 1
        out, start = [], 0
        while start < n:
            size = max(least, math.ceil((n - start) / workers))
            out.append((start, min(n, start + size)))
            start += size
        return out
    size = chunk if chunk is not None else max(1, math.ceil(n / (workers * 32)))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _run_chunk(
    fn: Callable, start: int, stop: int, ranges: bool, keep: bool, name: str
) -> tuple[list | Any, tuple[int, BaseException] | None]:
    """``fn`` over one chunk: ``(results, None)``, or ``(partial, (index, error))``."""
    if ranges:
        try:
            out = fn(range(start, stop))
        except Exception as e:
            return None, (start, library.capture_error(e, name))
        return out if keep else None, None
    results: list = []
    i = start
    try:
        if keep:
            append = results.append
            for i in range(start, stop):
                append(fn(i))
        else:
            for i in range(start, stop):
                fn(i)
    except Exception as e:
        return results, (i, library.capture_error(e, name))
    return (results if keep else None), None


def _member(
    fn: Callable,
    member: int,
    chunks: list[tuple[int, int]],
    counter: Any,
    workers: int,
    ranges: bool,
    keep: bool,
    name: str,
) -> tuple[list, tuple[int, BaseException] | None]:
    """One member of a parallel_range team: its chunks (dealt round robin for a static
    schedule, taken from the shared counter otherwise); ``([(k, results)], error)``."""
    done: list = []
    if counter is None:
        mine = range(member, len(chunks), workers)
        for k in mine:
            out, err = _run_chunk(fn, *chunks[k], ranges, keep, name)
            done.append((k, out))
            if err is not None:
                return done, err
        return done, None
    d, key = counter
    while True:
        k = d.incr(key) - 1
        if k >= len(chunks):
            return done, None
        out, err = _run_chunk(fn, *chunks[k], ranges, keep, name)
        done.append((k, out))
        if err is not None:
            d.incr(key, _STOP)  # the others take no further chunk
            return done, err


def parallel_range(
    n: int,
    fn: Callable[[Any], Any],
    schedule: str = "static",
    chunk: int | None = None,
    *,
    ranges: bool = False,
    num_workers: int | None = None,
    results: bool = True,
) -> list | None:
    """Calls ``fn(i)`` for every ``i`` in ``range(n)`` in a team of ``num_workers`` worker tasks
    (by default one per CPU of the cluster) and returns the results in index order, or None
    with ``results=False`` (when ``fn`` writes a shared array: nothing travels back). With
    ``ranges=True`` it calls ``fn(range(start, stop))`` once per chunk instead (vectorise inside)
    and returns one result per chunk, in order.

    ``schedule`` shares the indices out as OpenMP's do: ``"static"`` gives each member one
    contiguous block (or, with ``chunk``, chunks of that size dealt round robin); ``"dynamic"``
    has each member take the next chunk of ``chunk`` indices when it is free (default
    ``n / (32 * members)``): for uneven work; ``"guided"`` takes chunks of the remaining work
    divided by the members, never below ``chunk`` (default 1). Each chunk a dynamic member takes
    costs one message to the head, so keep chunks well above a few hundred microseconds of work.

    An exception in ``fn`` is raised here, as ``fn`` raised it (a ``volley.TaskError`` too, with
    its remote traceback), with the index in a note and in its ``index`` attribute (the lowest
    failing index when several fail). The failing member stops; with a dynamic or guided
    schedule the others take no further chunk, with a static one each finishes its own share
    (static members do not talk to each other). ``fn`` may be a ``@volley.remote`` function:
    its options (``num_cpus``, ...) apply to the members.

    >>> squares = volley.shared_array(10, dtype="int64")
    >>> def square(i):
    ...     squares[i] = i * i
    >>> volley.parallel_range(10, square, results=False)
    >>> squares.tolist()
    [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    >>> volley.parallel_range(6, lambda i: i % 4, schedule="dynamic", chunk=2)
    [0, 1, 2, 3, 0, 1]
    >>> volley.parallel_range(6, lambda r: sum(r), ranges=True, num_workers=2)
    [3, 12]
    """
    n = _check_int("n", n, 0)
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(_SCHEDULES)}, not {schedule!r}")
    if chunk is not None:
        chunk = _check_int("chunk", chunk, 1)
    func, options, name = library.unwrap_remote(fn, "parallel_range")
    if n == 0:  # nothing to run: no team
        return [] if results else None
    library.init_if_needed()
    workers = _check_int("num_workers", num_workers, 1) if num_workers is not None else None
    workers = workers or max(1, int(library.total_cpus()))
    chunks = _chunks(n, schedule, chunk, workers)
    workers = max(1, min(workers, len(chunks)))
    counter = None
    if schedule != "static":
        d = volley.SharedDict(f"volley.parallel_range/{secrets.token_hex(8)}")
        counter = (d, "next")
    opts = {"num_cpus": library.cpu_share(workers), "max_retries": 0, **options}
    task = volley.remote(**opts)(_member)
    # Pickled once, not once per member (a closure may hold large data); refs that are
    # arguments reach the members as their values.
    shipped = volley.put(func) if workers > 1 else func
    shipped_chunks = volley.put(chunks) if workers > 1 and len(chunks) > 64 else chunks
    try:
        refs = [
            task.remote(shipped, m, shipped_chunks, counter, workers, ranges, results, name)
            for m in range(workers)
        ]
        parts = volley.get(refs)
    finally:
        if counter is not None:
            counter[0].clear()
    errors = [err for _, err in parts if err is not None]
    if errors:
        index, error = min(errors, key=operator.itemgetter(0))
        error.index = index  # type: ignore[attr-defined]
        _add_note(error, f"parallel_range: fn raised at index {index}")
        raise error
    if not results:
        return None
    by_chunk = dict(kv for done, _ in parts for kv in done)
    if ranges:
        return [by_chunk[k] for k in range(len(chunks))]
    out: list = []
    for k in range(len(chunks)):
        out.extend(by_chunk[k])
    return out


# ------------------------------------------------------------------------------ parallel blocks


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "sum": operator.add,
    "+": operator.add,
    "prod": operator.mul,
    "*": operator.mul,
    "min": min,
    "max": max,
    "and": lambda a, b: a and b,
    "or": lambda a, b: a or b,
}


class Team:
    """What each member of a :func:`parallel` block gets: who it is (``thread_num`` of
    ``num_threads``, PyMP's and OpenMP's names), its share of a range, a barrier, an
    all-reduce and a lock for critical sections."""

    def __init__(
        self, thread_num: int, num_threads: int, barrier: Any, lock: Any, board: Any
    ) -> None:
        self.thread_num = thread_num
        self.num_threads = num_threads
        self._barrier = barrier
        self.lock = lock  #: a ``volley.sync.Lock`` shared by the team (``with p.lock:``)
        self._board = board
        self._round = 0  # reduce calls so far
        self._loops = 0  # xrange calls so far

    def __repr__(self) -> str:
        return f"Team(thread_num={self.thread_num}, num_threads={self.num_threads})"

    def range(self, start: int, stop: int | None = None, step: int = 1) -> range:
        """This member's share of ``range(start, stop, step)`` (or ``range(start)``): one
        contiguous block, the blocks of the members in order covering it exactly once (PyMP's
        ``p.range``, OpenMP's static schedule).

        >>> volley.parallel(3).run(lambda p: p.range(10))
        [range(0, 4), range(4, 7), range(7, 10)]
        """
        whole = range(start) if stop is None else range(start, stop, step)
        base, extra = divmod(len(whole), self.num_threads)
        k = self.thread_num
        lo = k * base + min(k, extra)
        hi = lo + base + (1 if k < extra else 0)
        return whole[lo:hi]

    def xrange(
        self, start: int, stop: int | None = None, step: int = 1, *, chunk: int = 1
    ) -> Iterator[int]:
        """The indices of ``range(start, stop, step)`` (or ``range(start)``) that this member
        takes, ``chunk`` at a time, when it is ready for more (PyMP's ``p.xrange``, OpenMP's
        dynamic schedule): together the members cover it exactly once. Each chunk costs one
        message to the head; every member must iterate the team's ``xrange`` calls in the
        same order (each call is one shared counter).

        >>> def work(p):
        ...     return list(p.xrange(6, chunk=2))
        >>> sorted(i for mine in volley.parallel(2).run(work) for i in mine)
        [0, 1, 2, 3, 4, 5]
        """
        chunk = _check_int("chunk", chunk, 1)
        whole = range(start) if stop is None else range(start, stop, step)
        self._loops += 1
        key = f"xrange{self._loops}"
        while True:
            lo = (self._board.incr(key) - 1) * chunk
            if lo >= len(whole):
                return
            yield from whole[lo : lo + chunk]

    def barrier(self, timeout: float | None = None) -> None:
        """Waits until every member of the team has called it (``threading.BrokenBarrierError``
        after ``timeout`` seconds, for every member waiting; also when a member ended without
        calling it).

        >>> def phases(p, board):
        ...     board[str(p.thread_num)] = p.thread_num  # phase 1: every member writes
        ...     p.barrier()
        ...     return sorted(board.values())  # phase 2: every write is seen
        >>> volley.parallel(2).run(phases, volley.SharedDict("phases-example"))
        [[0, 1], [0, 1]]
        """
        self._barrier.wait(timeout)

    def reduce(self, value: Any, op: str | Callable[[Any, Any], Any] = "sum") -> Any:
        """Combines the ``value`` of every member with ``op`` (``"sum"``, ``"prod"``, ``"min"``,
        ``"max"``, ``"and"``, ``"or"`` or a function of two values) and returns the result to
        every member (an all-reduce; a barrier for the team). Values are combined in member
        order, so a non-commutative ``op`` is deterministic. Every member must call it.

        >>> volley.parallel(2).run(lambda p: (p.reduce(p.thread_num + 1), p.reduce([p.thread_num])))
        [(3, [0, 1]), (3, [0, 1])]
        """
        combine = _OPS.get(op) if isinstance(op, str) else op
        if combine is None or not callable(combine):
            raise ValueError(f"op must be one of {', '.join(_OPS)} or a function, not {op!r}")
        self._round += 1
        prefix = f"r{self._round}/"
        self._board[f"{prefix}{self.thread_num:06d}"] = value
        self._barrier.wait()
        values = [v for k, v in self._board.items() if k.startswith(prefix)]
        if len(values) != self.num_threads:  # the barrier orders the writes before the reads
            raise RuntimeError(f"reduce: {len(values)} of {self.num_threads} values arrived")
        out = values[0]
        for v in values[1:]:
            out = combine(out, v)
        self._barrier.wait()  # no member starts the next round's writes before all have read
        if self.thread_num == 0:
            for k in range(self.num_threads):
                self._board.pop(f"{prefix}{k:06d}", None)
        return out


def _block(fn: Callable, team: Team, args: tuple, kwargs: dict) -> Any:
    return fn(team, *args, **kwargs)


class Parallel:
    """A team of ``num_workers`` members (see :func:`parallel`)."""

    def __init__(self, num_workers: int | None = None) -> None:
        if num_workers is not None:
            _check_int("num_workers", num_workers, 1)
        self.num_workers = num_workers

    def __repr__(self) -> str:
        return f"volley.parallel({self.num_workers})"

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list:
        """Runs ``fn(team, *args, **kwargs)`` on every member at once; the members' return
        values in member order. An exception of any member is raised here (as in
        :func:`parallel_range`, with ``thread_num`` in a note); the barrier is aborted so that
        the other members do not wait for it.

        >>> volley.parallel(2).run(lambda p, x: x * p.thread_num, 10)
        [0, 10]
        """
        func, options, name = library.unwrap_remote(fn, "parallel")
        library.init_if_needed()
        workers = self.num_workers or max(1, int(library.total_cpus()))
        barrier = volley.sync.Barrier(workers)
        lock = volley.sync.Lock()
        board = volley.SharedDict(f"volley.parallel/{secrets.token_hex(8)}")
        opts = {"num_cpus": library.cpu_share(workers), "max_retries": 0, **options}
        task = volley.remote(**opts)(_guarded)
        shipped = volley.put(func) if workers > 1 else func  # pickled once for every member
        try:
            refs = [
                task.remote(shipped, Team(k, workers, barrier, lock, board), args, kwargs, name)
                for k in range(workers)
            ]
            outs, errors, first_done = _collect(refs, barrier)
        finally:
            board.clear()
            barrier.shutdown()
            lock.shutdown()
        if errors:
            # The first error raised, not a member's BrokenBarrierError that followed from it.
            k = min(errors, key=lambda k: (_is_broken_barrier(errors[k]), k))
            error = errors[k]
            error.thread_num = k  # type: ignore[attr-defined]
            _add_note(error, f"parallel: raised in member thread_num={k}")
            if _is_broken_barrier(error) and first_done is not None:
                _add_note(
                    error,
                    f"member thread_num={first_done} returned while this one waited at a "
                    f"barrier (or reduce) it never reached: every member must call each barrier",
                )
            raise error
        return outs

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., list]:
        """As a decorator: ``fn(*args)`` runs the block (see :meth:`run`)."""
        import functools

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> list:
            return self.run(fn, *args, **kwargs)

        return run


def _collect(refs: list, barrier: Any) -> tuple[list, dict[int, BaseException], int | None]:
    """The members' results as they finish: ``(outputs, errors by member, the first member
    that returned normally)``. Once any member has finished (returned, raised, or its process
    died), no barrier of the team can complete again, so it is aborted: the members waiting at
    it raise ``BrokenBarrierError`` instead of waiting for ever."""
    where = {ref: k for k, ref in enumerate(refs)}
    outs: list = [None] * len(refs)
    errors: dict[int, BaseException] = {}
    first_done = None
    pending = list(refs)
    while pending:
        done, pending = volley.wait(pending, num_returns=1)
        for ref in done:
            k = where[ref]
            try:
                outs[k], err = volley.get(ref)
            except Exception as e:  # the member's process died, or it could not start
                err = e
            if err is not None:
                errors[k] = err
            elif first_done is None:
                first_done = k
        if pending:
            try:
                barrier.abort()
            except Exception:  # already dropped
                pass
    return outs, errors, first_done


def _is_broken_barrier(e: BaseException) -> bool:
    import threading

    return isinstance(e, threading.BrokenBarrierError)


def _guarded(
    fn: Callable, team: Team, args: tuple, kwargs: dict, name: str
) -> tuple[Any, BaseException | None]:
    try:
        return fn(team, *args, **kwargs), None
    except BaseException as e:
        try:
            team._barrier.abort()  # the members waiting for this one stop waiting
        except Exception:
            pass
        if not isinstance(e, Exception):  # SystemExit, KeyboardInterrupt: the task fails
            raise
        return None, library.capture_error(e, name)


def parallel(num_workers: int | None = None) -> Parallel:
    """A parallel block (PyMP's ``with pymp.Parallel(4) as p:``, OpenMP's ``#pragma omp
    parallel``): ``parallel(n).run(fn, *args)`` runs ``fn(p, *args)`` on ``n`` workers at once
    (by default one per CPU of the cluster) and returns their results in member order; used as a
    decorator, calling the function runs the block. ``p`` is a :class:`Team`: ``p.thread_num``,
    ``p.num_threads``, ``p.range(n)`` (this member's share), ``p.xrange(n)`` (indices handed out
    dynamically), ``p.barrier()``,
    ``p.reduce(value, op)`` and ``p.lock``. All members start together (each holds an equal share
    of the CPUs), so a barrier never waits for a member that has no CPU.

    >>> hist = volley.shared_array((2, 4), dtype="int64")
    >>> data = volley.shared_array(1000, dtype="int64")
    >>> data[:] = [i % 4 for i in range(1000)]
    >>> @volley.parallel(2)
    ... def histogram(p, data, hist):
    ...     for i in p.range(len(data)):
    ...         hist[p.thread_num, data[i]] += 1
    ...     p.barrier()
    ...     return p.reduce(int(hist[p.thread_num].sum()))
    >>> histogram(data, hist)
    [1000, 1000]
    >>> hist.sum(axis=0).tolist()
    [250, 250, 250, 250]
    """
    return Parallel(num_workers)
