"""``multiprocessing.Pool`` on volley: change the import, keep the script.

Before::

    from multiprocessing import Pool

After::

    from volley.multiprocessing import Pool

How it works, and why. A pool's work runs as ordinary volley tasks, one task per chunk, on the
worker processes that every other task uses (on any node of the cluster). A chunk holds its
share of a CPU only while it runs (``cpu_share(processes)``: one CPU each, or less when there are
more processes than CPUs so that ``processes`` chunks can still run at once). The pool's own
feeder thread keeps at most ``processes`` chunks in flight and hands out the rest as chunks
finish, oldest call first. So an open pool holds nothing while it is idle, and two pools, or a
pool and ``@remote`` tasks and a ``volley.futures.Executor``, share the CPUs and all make
progress. (The earlier design, one actor per pool process holding its CPU for the pool's whole
life, made everything else wait while a pool was open.)

A pool also works inside a task: waiting for its results lends the task's CPU to the pool's
chunks (a thread waits in volley on them), as ``volley.get`` does.

What a pool process means for the script stays as in ``multiprocessing``:

- ``initializer(*initargs)`` runs when the pool opens, in ``processes`` worker processes (as
  ``multiprocessing`` starts its processes; a pool closed with no work has run it), and once per
  (worker process, pool) in general: a chunk that lands in a process where it has not run
  (a per-process registry keyed by the pool's id) runs it first. The script's own
  (``__main__``) functions of one pool share their globals in that process as they do after a
  fork, so what the initializer sets is seen by the functions that run later; each pool has its
  own namespace.
- ``maxtasksperchild=N``: after the N-th chunk of the pool in a worker process, that process
  retires: it sends the chunk's result, then exits cleanly; the node gives it no more work, takes
  back what was queued behind it (no retry used) and starts a replacement (``_core.
  retire_worker``).
- Errors: ``get()`` raises the task's exception with its own class (``type(e) is ValueError``),
  the remote traceback as its ``__cause__`` (a ``multiprocessing.pool.RemoteTraceback``), as the
  standard library does. ``SystemExit`` and ``KeyboardInterrupt`` raised by a task come back the
  same way (``multiprocessing``'s pool loses the task and its ``get()`` hangs; volley reports it
  as ``concurrent.futures.ProcessPoolExecutor`` does). An argument that cannot be pickled fails
  the call with a ``volley.SerializationError`` (a ``pickle.PicklingError``) that is also of the
  class of the pickling error itself; a result that ``multiprocessing`` could not send back (the
  standard pickler refuses it: a lambda, a lock) is a ``multiprocessing.pool.MaybeEncodingError``
  (see ``_Results``).
- ``imap``/``imap_unordered`` read their input lazily, a bounded number of chunks ahead of the
  consumer (all of it once the pool is closed, so ``join`` finishes), and an error raised by the
  input comes out of ``next()`` at its place.

Callbacks run in the pool's own callback thread, one at a time, as in ``multiprocessing``'s
result thread (a callback may wait on a call of its pool that has no callback; waiting on one
that has raises ``RuntimeError`` where ``multiprocessing`` hangs).

Differences a script may notice: a worker process that dies makes the call it was running fail
with ``volley.WorkerCrashedError`` (``multiprocessing`` hangs); pool processes are volley's
shared workers, so ``os.getpid()`` in a task does not tell the pool's processes apart from other
work's.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import multiprocessing as _mp
import multiprocessing.pool as _mp_pool
import pickle
import reprlib
import sys
import threading
import types
import uuid
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator

from . import put, remote
from .exceptions import SerializationError, TaskError, VolleyError, original_error
from .library import (
    cancel_soon,
    capture_error,
    cpu_share,
    init_if_needed,
    lending_cpu,
    retire_worker,
    total_cpus,
    traceback_text,
    unwrap_remote,
)

__all__ = ["Pool", "TimeoutError", "cpu_count"]

TimeoutError = _mp.TimeoutError

# Chunks an imap may run ahead of its consumer, per pool process (at least _MIN_AHEAD).
_AHEAD_PER_PROCESS = 2
_MIN_AHEAD = 8
# How long join() after terminate() lets running chunks stop on their interrupt before their
# processes are killed.
_TERMINATE_GRACE_S = 2.0
# Pools a worker process remembers (initializer run, namespace); the oldest is forgotten first
# (its initializer runs again if that pool comes back).
_MAX_POOLS_PER_PROCESS = 32


def cpu_count() -> int:
    """The CPUs of the volley cluster (or machine)."""
    return total_cpus()


# ------------------------------------------------------------------ in the worker process


class _PoolState:
    """What a worker process keeps for one pool: the namespace its ``__main__`` functions
    share, and how many of its chunks ran here."""

    __slots__ = ("globals", "tasks")

    def __init__(self) -> None:
        self.globals: dict = {}
        self.tasks = 0


# pool id -> its state in this process; present once the pool's initializer has run here.
_pools: collections.OrderedDict[str, _PoolState] = collections.OrderedDict()


def _shared_globals(fn: Any, namespace: dict) -> Any:
    """``fn`` rebound to ``namespace`` if it is a function of the script (``__main__``) that
    travelled by value, so that the pool's functions share globals as after a fork."""
    if (
        not isinstance(fn, types.FunctionType)
        or fn.__module__ != "__main__"
        or fn.__globals__ is namespace
    ):
        return fn
    main = sys.modules.get("__main__")
    if main is not None and fn.__globals__ is getattr(main, "__dict__", None):
        return fn  # The worker's own __main__ (the driver's, inline): nothing to share.
    for k, v in fn.__globals__.items():
        namespace.setdefault(k, v)
    new = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__dict__.update(fn.__dict__)
    return new


class _Results:
    """A chunk's results on their way back, pickled by the standard library's pickler (as
    ``multiprocessing`` sends them) inside volley's own pickling of the chunk's return value,
    so that refs in them are still recorded.

    What the standard pickler cannot send is a ``MaybeEncodingError`` (a lambda, a local
    function, a lock), as in ``multiprocessing``, although volley's cloudpickle would send
    some of it. One exception keeps scripts working as under ``fork``: a class or function
    of the script (``__main__``), which ``multiprocessing``'s workers find by name, travels by
    value (cloudpickle's), since a volley worker's ``__main__`` is not the script.

    The common path costs one pass of the C pickler (no per-object Python hook, unlike
    cloudpickle's); results holding the script's own classes take a second pass with such a
    hook (as cloudpickle's). A large stream and the out-of-band buffers (numpy arrays) travel
    out of band, not copied into volley's stream."""

    __slots__ = ("values",)

    def __init__(self, values: list):
        self.values = values

    def __reduce_ex__(self, protocol: int) -> tuple:
        values = self.values
        buffers: list = []
        try:
            data = _std_dumps(values, 5, buffer_callback=buffers.append)
        except Exception:
            buffers = []
            f = io.BytesIO()
            try:
                _ScriptNamesPickler(f, 5, buffer_callback=buffers.append).dump(values)
            except Exception as e:
                return _Unsendable, (repr(e), _short_repr(values))
            data = f.getvalue()
        stream: Any = pickle.PickleBuffer(data) if len(data) >= _OUT_OF_BAND_MIN else data
        if not buffers:  # (a builtin travels by name more cheaply than a function of this file)
            return pickle.loads, (stream,)
        return _std_loads, (stream, buffers)


_std_dumps = pickle.dumps
# A stream at least this large travels out of band (as volley sends a large bytes value).
_OUT_OF_BAND_MIN = 4096


def _std_loads(stream: Any, buffers: list) -> list:
    return pickle.loads(stream, buffers=buffers)


def _short_repr(x: Any) -> str:
    try:
        return reprlib.repr(x)
    except Exception as e:
        return f"<{type(x).__name__} whose repr() raised {type(e).__name__}>"


class _ScriptNamesPickler(pickle.Pickler):
    """The standard pickler, except that a class or function of the script (``__main__``, not
    local: the names a forked ``multiprocessing`` worker finds) travels by value, pickled by
    cloudpickle (once per stream: the pickler memoizes it)."""

    def reducer_override(self, obj: Any) -> Any:
        if (
            isinstance(obj, (type, types.FunctionType))
            and getattr(obj, "__module__", None) == "__main__"
            and "<" not in getattr(obj, "__qualname__", "<")
        ):
            import cloudpickle  # loaded already: volley pickles with it in every worker

            return pickle.loads, (cloudpickle.dumps(obj, protocol=5),)
        return NotImplemented


class _Unsendable:
    """Stands for results the worker could not send: becomes the chunk's error in the driver."""

    def __init__(self, exc: str, value: str):
        self.exc, self.value = exc, value

    def error(self) -> BaseException:
        err = _mp_pool.MaybeEncodingError.__new__(_mp_pool.MaybeEncodingError)
        Exception.__init__(err, self.exc, self.value)
        err.exc, err.value = self.exc, self.value
        return err


def _remote_error(e: BaseException, name: str) -> BaseException:
    """``e`` as a value that travels back: a ``TaskError`` of ``e``'s class with the remote
    traceback (``SystemExit`` and ``KeyboardInterrupt`` too), from the user's function on."""
    # Drop the frames of the chunk runner (this file).
    here = f'  File "{__file__}"'
    keep, skip = [], False
    for line in traceback_text(e).splitlines(keepends=True):
        if line.startswith(here):
            skip = True
            continue
        if skip and line.startswith("    "):
            continue
        skip = False
        keep.append(line)
    return capture_error(e, name, "".join(keep))


def _pool_chunk(
    pool_id: str,
    init: tuple,
    maxtasks: int | None,
    fn: Callable,
    work: Any,
    star: bool,
    call: bool,
    name: str,
) -> tuple[list, BaseException | None]:
    """Runs one chunk of a pool (or one ``apply``) in a worker: ``(results, error)``, the
    results before the first item that raised and that item's error."""
    state = _pools.get(pool_id)
    out: list = []
    try:
        if state is None:
            state = _PoolState()
            initializer, initargs = init
            if initializer is not None:
                _shared_globals(initializer, state.globals)(*initargs)
            _pools[pool_id] = state
            while len(_pools) > _MAX_POOLS_PER_PROCESS:
                _pools.popitem(last=False)
        else:
            _pools.move_to_end(pool_id)
        if fn is None:  # the pool's start: only the initializer
            return out, None
        f = _shared_globals(fn, state.globals)
        if call:
            args, kwds = work
            out.append(f(*args, **kwds))
        elif star:
            for item in work:
                out.append(f(*item))
        else:
            for item in work:
                out.append(f(item))
        error = None
    except BaseException as e:  # SystemExit and KeyboardInterrupt come back too
        error = _remote_error(e, name)
    if state is not None and maxtasks is not None:
        state.tasks += 1
        if state.tasks >= maxtasks:
            _pools.pop(pool_id, None)
            try:
                retire_worker()  # exits after sending this result
            except RuntimeError:
                pass  # not in a worker process (cannot happen for a task)
    return (out if _plain(out) else _Results(out)), error


# Results of these types need no check (the standard pickler takes them) nor the wrapper's cost.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(out: list) -> bool:
    """Whether ``out`` is a few values of plain types, or short tuples of them (an ``apply``'s
    number, an ``imap``'s pair): cheaper to check than to wrap (about 5 us a chunk)."""
    if len(out) > 32:
        return False
    plain = _PLAIN
    for v in out:
        t = type(v)
        if t not in plain and not (t is tuple and len(v) <= 8 and all(type(x) in plain for x in v)):
            return False
    return True


_chunk_task = remote(max_retries=0)(_pool_chunk)


# ------------------------------------------------------------------ in the driver

_here = threading.local()


class _ByAttribute:
    """Travels as ``getattr(owner, name)``, as the standard pickler sends a method bound to a
    class: its function then runs from its module's source (tracebacks show the lines), not
    from a by-value copy."""

    def __init__(self, owner: Any, name: str):
        self.owner, self.name = owner, name

    def __reduce__(self) -> tuple:
        return getattr, (self.owner, self.name)


class _Source:
    """The work of one call (``apply``, ``map``, ``imap``...), handed out chunk by chunk."""

    def __init__(
        self,
        result: Any,
        task: Any,
        fn: Any,
        name: str,
        star: bool,
        call: bool,
        chunks: Iterator[tuple[int, Any, BaseException | None]],
        lazy: bool,
        wake: Callable[..., None] | None = None,
    ):
        # An imap's result is held weakly: once its consumer drops it, reading stops (and the
        # feeder wakes to forget it).
        self._result = weakref.ref(result, wake) if lazy else (lambda r=result: r)
        self.task, self.fn, self.name, self.star, self.call = task, fn, name, star, call
        self.chunks = chunks
        self.lazy = lazy
        self.taken = 0
        self.total: int | None = None  # chunks, when known
        self.busy = False  # a thread is taking its next chunk
        self.cheap = not lazy  # its next chunk is quick to take (no user code reads the input)

    def result(self) -> Any:
        return self._result()


class Pool:
    """A drop-in for ``multiprocessing.Pool`` whose work runs as volley tasks.

    ``processes`` (default: the cluster's CPUs) is how many chunks run at once;
    ``initializer(*initargs)`` runs when the pool opens, in ``processes`` worker processes, and
    in any other worker process before the pool's first chunk there; ``maxtasksperchild``
    retires a worker process after that many of the pool's chunks; ``context`` is accepted and
    ignored. An idle pool holds no CPU.

    >>> from volley.multiprocessing import Pool
    >>> with Pool(2) as p:
    ...     p.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    _state = "INIT"

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
            type(maxtasksperchild) is not int or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        init_if_needed()
        self._processes = processes or total_cpus()
        # Each running chunk holds its share of the CPUs, so that `processes` chunks fit at
        # once even when there are more processes than CPUs (in thousandths, rounded down).
        self._cpus = cpu_share(self._processes)
        self._id = uuid.uuid4().hex
        self._init_ref = put((initializer, tuple(initargs)))
        self._maxtasks = maxtasksperchild
        self._ahead = max(_MIN_AHEAD, _AHEAD_PER_PROCESS * self._processes)
        # Reentrant: a dropped imap result wakes the feeder from a weakref callback, which may
        # run in any thread, even one holding the lock.
        self._cond = threading.Condition(threading.RLock())
        self._sources: collections.deque[_Source] = collections.deque()
        self._inflight: dict[Any, tuple[_Source, int]] = {}  # ref -> (its call, chunk index)
        self._starting = 0  # slots taken by the feeder for a chunk not yet submitted
        self._feeder: threading.Thread | None = None
        self._callbacks = _Callbacks()
        self._state = "RUN"
        if initializer is not None:
            self._start_processes()

    def _start_processes(self) -> None:
        """Runs the initializer now in ``processes`` worker processes, as ``multiprocessing``
        starts its processes (each runs it before its first task): a pool closed with no work
        has run it too. Once per (process, pool): these chunks run it where it has not run,
        as any chunk of the pool does, and hold a slot each until they end, so the pool's
        first calls start after them (as in ``multiprocessing``). If it raises, the error is
        printed here, and the calls whose chunks meet it again fail with it."""
        result = ApplyResult(self._processes, None, self._initializer_failed)
        work = iter([(i, None, None) for i in range(self._processes)])
        task = _chunk_task.options(num_cpus=self._cpus)
        src = _Source(result, task, None, "pool initializer", False, True, work, lazy=False)
        src.total = self._processes
        self._add(src)

    def _initializer_failed(self, error: BaseException) -> None:
        if self._state == "TERMINATE":  # the start was cut short: nothing failed
            return
        print(
            f"volley: the initializer of {self!r} raised {type(error).__name__}: {error}\n"
            "(it runs again before the pool's first chunk in each process; calls whose chunks "
            "meet the error fail with it)",
            file=sys.stderr,
        )

    def __repr__(self) -> str:
        return f"<volley.multiprocessing.Pool state={self._state} pool_size={self._processes}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # ------------------------------------------------------------------ dispatching

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _task_for(self, func: Any) -> tuple[Any, Callable, str]:
        """(the remote function running the chunks, the Python function, its name): a
        ``@volley.remote`` function keeps its options (resources, CPUs...)."""
        if not callable(func):
            raise TypeError(f"Pool needs a callable, not {type(func).__name__}")
        fn, opts, name = unwrap_remote(func, "pool task")
        if isinstance(fn, types.MethodType) and isinstance(fn.__self__, type):
            fn = _ByAttribute(fn.__self__, fn.__name__)
        for key in ("max_retries", "retry_exceptions", "num_returns"):
            opts.pop(key, None)  # a chunk is one call that returns one value, never retried
        opts.setdefault("num_cpus", self._cpus)
        return _chunk_task.options(**opts), fn, name

    def _add(self, source: _Source) -> None:
        with self._cond:
            self._check_running()
            self._sources.append(source)
        # The chunks of an apply or a map go out from the caller's thread while there is room:
        # a call then costs no hop through the feeder thread (nor, for a lone apply, that
        # thread's start). Their later chunks go out as chunks finish (`_finished`). The feeder
        # thread serves the imaps: their input may run user code, and their consumer's reading
        # is what lets the next chunks go.
        if not source.lazy:
            self._hand_out_cheap()
        with self._cond:
            feeder_needed = any(src.lazy or not src.cheap for src in self._sources)
            if feeder_needed and self._feeder is None and self._state != "TERMINATE":
                self._feeder = threading.Thread(
                    target=self._feed, name="volley-pool-feeder", daemon=True
                )
                self._feeder.start()
            self._cond.notify_all()

    def _lending(self) -> contextlib.AbstractContextManager:
        """While the caller waits for a result: inside a task, the task's CPU is lent to the
        pool's running chunks (a task that waits for its pool while every CPU runs such a task
        would otherwise wait forever)."""

        def running() -> list:
            with self._cond:
                return list(self._inflight)

        return lending_cpu(running, "volley-pool-lend")

    def _wake(self, *_: Any) -> None:
        with self._cond:
            self._cond.notify_all()

    def _pick(self) -> _Source | None:
        """The oldest call that may hand out a chunk now, marked busy (the lock is held)."""
        if len(self._inflight) + self._starting >= self._processes:
            return None
        found, dead = None, []
        for src in self._sources:
            if src.busy:  # another thread is taking its next chunk
                continue
            result = src.result()
            if result is None:  # an imap nobody reads any more
                dead.append(src)
                continue
            if src.lazy and self._state == "RUN" and src.taken - result._taken >= self._ahead:
                continue
            found = src
            break
        for src in dead:
            self._sources.remove(src)
        if found is not None:
            found.busy = True
            self._starting += 1
        return found

    def _handed_out(self, src: _Source) -> None:
        with self._cond:
            src.busy = False
            self._starting -= 1
            self._cond.notify_all()

    def _feed(self) -> None:
        """The feeder thread: hands out chunks, at most ``processes`` in flight; it ends when
        no call has work left (and starts again with the next call)."""
        while True:
            with self._cond:
                while True:
                    # (_pick first: it forgets the imaps nobody reads, which may leave none.)
                    src = self._pick() if self._state != "TERMINATE" else None
                    if src is not None:
                        break
                    if self._state == "TERMINATE" or not self._sources:
                        self._feeder = None
                        self._cond.notify_all()
                        return
                    self._cond.wait()
            try:
                self._hand_out(src)
            finally:
                self._handed_out(src)

    def _hand_out(self, src: _Source) -> None:
        """Takes the next chunk of ``src`` (reading its input, outside the lock) and submits it."""
        try:
            index, work, error = next(src.chunks)
        except StopIteration:
            with self._cond:
                if src in self._sources:
                    self._sources.remove(src)
            result = src.result()
            if result is not None and src.lazy:
                result._expect(src.taken)
            return
        src.taken += 1
        if src.total is not None and src.taken >= src.total:
            # The last chunk of a map: forget the call (and its input) now.
            with self._cond:
                if src in self._sources:
                    self._sources.remove(src)
        result = src.result()
        if result is None:
            return
        if error is not None:  # the input raised: that chunk is this error, and the call ends
            with self._cond:
                if src in self._sources:
                    self._sources.remove(src)
            result._part(index, [], error)
            if src.lazy:
                result._expect(src.taken)
            return
        if self._state == "TERMINATE":  # terminate() came while this chunk was being taken
            result._fail(VolleyError("the pool was terminated"))
            return
        try:
            ref = src.task.remote(
                self._id,
                self._init_ref,
                self._maxtasks if src.fn is not None else None,  # the start's chunks: not counted
                src.fn,
                work,
                src.star,
                src.call,
                src.name,
            )
        except BaseException as e:
            result._part(index, [], _submit_error(e))
            return
        with self._cond:
            terminated = self._state == "TERMINATE"
            self._inflight[ref] = (src, index)  # not the result: an imap's is held weakly
        if terminated:  # terminate() came while it was being submitted
            result._fail(VolleyError("the pool was terminated"))
            cancel_soon(ref)
        ref.future().add_done_callback(lambda f, r=ref: self._finished(r, f))

    def _finished(self, ref: Any, f: Any) -> None:
        with self._cond:
            src, index = self._inflight.get(ref, (None, 0))
        result = src.result() if src is not None else None
        try:
            results, error = f.result()
        except BaseException as e:  # the chunk itself failed: a crash, a cancel, pickling...
            results, error = [], e
        if type(results) is _Unsendable:
            results, error = [], results.error()
        elif type(results) is _Results:  # not pickled (the chunk ran in this process)
            results = results.values
        if error is not None:
            error = _pool_error(error)
        try:
            if result is not None:
                result._part(index, results, error)
        finally:
            with self._cond:
                self._inflight.pop(ref, None)
                self._cond.notify_all()
            # The next chunk of a map or apply (or an imap of a list) goes out from here at
            # once: taking it is cheap. An imap's input may be slow: the feeder thread reads it.
            self._hand_out_cheap()

    def _hand_out_cheap(self) -> None:
        """Hands out chunks that are cheap to take from this thread while there is room. A
        chunk that finishes at once calls back into ``_finished`` in this thread: that call
        hands out nothing, and this loop goes on instead (no recursion, no chunk left behind)."""
        if getattr(_here, "handing_out", False):
            return
        while True:
            with self._cond:
                src = self._pick() if self._state != "TERMINATE" else None
                if src is not None and not src.cheap:
                    src.busy = False
                    self._starting -= 1
                    self._cond.notify_all()  # the feeder's to take
                    src = None
            if src is None:
                return
            _here.handing_out = True
            try:
                self._hand_out(src)
            finally:
                _here.handing_out = False
                self._handed_out(src)

    # ------------------------------------------------------------------ the API

    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` in a pool process; waits for it.

        >>> p = Pool(2)
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
        task, fn, name = self._task_for(func)
        result = ApplyResult(1, callback, error_callback, single=True)
        result._lending = self._lending
        if callback is not None or error_callback is not None:
            result._callbacks = self._callbacks
        work = (tuple(args), dict(kwds or {}))
        src = _Source(result, task, fn, name, False, True, iter([(0, work, None)]), lazy=False)
        src.total = 1
        self._add(src)
        return result

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
        task, fn, name = self._task_for(func)
        items = list(iterable)  # as in multiprocessing: the input is read here, at the call
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra:
                chunksize += 1
        elif not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        if not items:
            return MapResult(0, callback, error_callback)
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        del items
        result = MapResult(len(chunks), callback, error_callback)
        result._lending = self._lending
        if callback is not None or error_callback is not None:
            result._callbacks = self._callbacks
        fn_ref = put(fn) if len(chunks) > 1 else fn
        src = _Source(result, task, fn_ref, name, star, False, _chunks_of(chunks), lazy=False)
        src.total = len(chunks)
        del chunks
        self._add(src)
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
        """An iterator over ``func(x)`` for ``x`` in ``iterable``, in order. The input is read
        lazily, a few chunks ahead of the consumer; an error it raises comes out of ``next()``.

        >>> list(p.imap(abs, [-1, 2]))
        [1, 2]
        """
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """Like :meth:`imap`, in the order the results finish.

        >>> sorted(p.imap_unordered(abs, [-1, 2]))
        [1, 2]
        >>> p.terminate()
        """
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func: Callable, iterable: Iterable, chunksize: int, ordered: bool):
        self._check_running()
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        task, fn, name = self._task_for(func)
        result = _IterResult(ordered, self._wake)
        result._lending = self._lending
        chunks = _read_chunks(iterable, chunksize)
        fn_ref = put(fn)
        src = _Source(result, task, fn_ref, name, False, False, chunks, True, self._wake)
        src.cheap = type(iterable) in (list, tuple, range)
        self._add(src)
        return result

    def close(self) -> None:
        """No more work: what was submitted still runs (all of an imap's input is read)."""
        with self._cond:
            if self._state == "RUN":
                self._state = "CLOSE"
            self._cond.notify_all()

    def terminate(self) -> None:
        """Stops at once: every call not finished fails (``volley.VolleyError``); queued chunks
        are dropped, running ones are interrupted (see :meth:`join`)."""
        with self._cond:
            self._state = "TERMINATE"
            dropped = list(self._sources)
            self._sources.clear()
            running = list(self._inflight)
            # Calls with chunks running fail now too: what their cancelled chunks report (a
            # KeyboardInterrupt, say) is not their outcome.
            dropped += [src for src, _ in self._inflight.values() if src not in dropped]
            self._cond.notify_all()
        # The calls fail before their chunks are interrupted: a cancelled chunk reports (a
        # KeyboardInterrupt, from a volley thread) as soon as it stops, and that report must
        # find its call already failed rather than become the call's outcome.
        for src in dropped:
            result = src.result()
            if result is not None:
                result._fail(VolleyError("the pool was terminated"))
        for ref in running:
            try:
                cancel_soon(ref)
            except Exception:
                pass

    def join(self) -> None:
        """Waits for the pool's work to end (after :meth:`close` or :meth:`terminate`; after
        ``terminate``, chunks still running after 2 s have their processes killed)."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")

        def ended() -> bool:
            return (
                not self._sources
                and not self._inflight
                and not self._starting
                and self._feeder is None
            )

        with self._cond:
            if self._state != "TERMINATE" or self._cond.wait_for(ended, _TERMINATE_GRACE_S):
                self._cond.wait_for(ended)
                return
            stuck = list(self._inflight)
        # Chunks that ignore the interrupt of terminate(): their processes are killed (and
        # replaced), as multiprocessing's terminate() kills its processes.
        for ref in stuck:
            try:
                cancel_soon(ref, force=True)
            except Exception:
                pass
        with self._cond:
            self._cond.wait_for(ended)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __del__(self, _warn: Callable = warnings.warn) -> None:
        if self._state == "RUN":
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
            try:
                self.terminate()
            except Exception:
                pass


def _chunks_of(chunks: list) -> Iterator[tuple[int, Any, None]]:
    """``(index, items, None)`` per chunk, each let go once handed out."""
    chunks.reverse()
    for i in range(len(chunks)):
        yield i, chunks.pop(), None


def _read_chunks(iterable: Iterable, chunksize: int) -> Iterator[tuple[int, Any, Any]]:
    """``(index, items, None)`` per chunk of ``iterable``, read as they are asked for; an error
    of the input becomes ``(index, None, error)`` and ends it."""
    try:
        it = iter(iterable)
    except Exception as e:
        yield 0, None, e
        return
    for i in itertools.count():
        try:
            chunk = list(itertools.islice(it, chunksize))
        except Exception as e:
            yield i, None, e
            return
        if not chunk:
            return
        yield i, chunk, None


def _submit_error(e: BaseException) -> BaseException:
    """An error submitting a chunk: a pickling failure is a ``SerializationError`` (a
    ``pickle.PicklingError``) that is also of the class of what failed (as the standard
    library's pool raises that)."""
    cause = e.__cause__
    if isinstance(e, SerializationError) and isinstance(cause, Exception):
        if isinstance(cause, SerializationError):
            return e
        try:
            cls = type(
                f"SerializationError({type(cause).__name__})", (SerializationError, type(cause)), {}
            )
            err = cls.__new__(cls, *cause.args)
            err.args = (str(e),)
            err.__cause__ = cause
            return err
        except TypeError:
            return e
    return e


def _pool_error(e: BaseException) -> BaseException:
    """What a pool call raises for a chunk's error ``e``."""
    if (
        isinstance(e, SerializationError)
        and not isinstance(e, TaskError)
        and "could not serialize the result" in str(e)
    ):
        # The chunk ran, but its results could not be sent back (the worker's message says
        # which value): multiprocessing's error for that.
        return _mp_pool.MaybeEncodingError(e, "the results of the chunk")
    return original_error(e, _mp_pool.RemoteTraceback)


class _Callbacks:
    """A pool's callback thread, as ``multiprocessing``'s result thread: the calls' callbacks
    run there one at a time, in the order the calls finish, not in volley's thread that
    completes every future of the process (where a slow callback held up every other pool's
    results, and a callback waiting on its own pool hung). The thread ends after a second
    without work and starts again with the next callback."""

    _IDLE_S = 1.0

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._queue.append(fn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="volley-pool-callbacks", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()

    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(self._IDLE_S)
                if not self._queue:
                    self._thread = None
                    return
                fn = self._queue.popleft()
            try:
                fn()
            except BaseException as e:  # SystemExit from a callback: the thread must go on
                print(f"volley: a pool callback raised {type(e).__name__}: {e}", file=sys.stderr)


class ApplyResult:
    """The result of ``apply_async`` (and the base of :class:`MapResult`)."""

    # Its pool's: waiting inside a task lends the task's CPU to the pool's chunks.
    _lending: Callable[[], Any] = contextlib.nullcontext
    # Its pool's callback thread, where it has a callback.
    _callbacks: _Callbacks | None = None

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
            if self._event.is_set() or self._left == 0:
                return
            if error is not None and self._error is None:
                self._error = error
            self._parts[index] = results
            self._left -= 1
            done = self._left == 0 or error is not None
            if done:
                self._left = 0
        if done:
            self._deliver()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._event.is_set() or self._left == 0:
                return
            self._error = error
            self._left = 0
        self._deliver()

    def _deliver(self) -> None:
        if self._callbacks is None:
            self._finish()
        else:
            self._callbacks.run(self._finish)

    def _finish(self) -> None:
        # Callbacks first, then waiters wake (as in multiprocessing).
        try:
            if self._error is not None:
                if self._error_callback is not None:
                    self._error_callback(self._error)
            elif self._callback is not None:
                self._callback(self._value())
        except Exception as e:  # a callback's error must not kill the thread
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
        if not self._event.is_set():
            if timeout is None and self._callbacks is not None and self._callbacks.in_thread():
                # (With a timeout, it times out: a poll such as get(timeout=0) is fine.)
                raise RuntimeError(
                    "a callback of the pool waits for a call of the same pool that has a "
                    "callback: the pool's callbacks run one at a time, so that call's could "
                    "never run (multiprocessing hangs here); wait for a call without callbacks, "
                    "or outside the callback"
                )
            with self._lending():
                self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Its value: raises the call's exception, or ``multiprocessing.TimeoutError``."""
        self.wait(timeout)
        if not self._event.is_set():
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value()


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async`` / ``starmap_async``: ``get()`` is the list of values."""


class _IterResult(Iterator):
    """What ``imap``/``imap_unordered`` return."""

    _lending: Callable[[], Any] = contextlib.nullcontext

    def __init__(self, ordered: bool, wake: Callable[[], None]):
        self._ordered = ordered
        self._wake = wake
        self._cond = threading.Condition()
        self._chunks: dict[int, tuple[list, BaseException | None]] = {}
        self._order: collections.deque[int] = collections.deque()
        self._next = 0
        self._total: int | None = None
        self._taken = 0  # chunks handed to the consumer
        self._buffer: collections.deque = collections.deque()
        self._failed = False  # terminate() failed the call: later chunks are dropped

    def _expect(self, n: int) -> None:
        with self._cond:
            self._total = n
            self._cond.notify_all()

    def _part(self, index: int, results: list, error: BaseException | None) -> None:
        with self._cond:
            if self._failed:  # a chunk that was running when the call failed: not its outcome
                return
            self._chunks[index] = (results, error)
            self._order.append(index)
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._failed:
                return
            self._failed = True
            index = max([self._next - 1, *self._chunks, *self._order]) + 1
            self._chunks[index] = ([], error)
            self._order.append(index)
            self._total = index + 1 if self._ordered else len(self._chunks) + self._taken
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
                    if self._total is not None and self._taken >= self._total:
                        return True
                    return (want in self._chunks) if want is not None else bool(self._order)

                if not arrived():
                    with self._lending():
                        if not self._cond.wait_for(arrived, timeout):
                            raise TimeoutError
                if self._total is not None and self._taken >= self._total:
                    raise StopIteration
                index = want if want is not None else self._order.popleft()
                if want is not None:
                    self._order.remove(index)
                    self._next += 1
                results, error = self._chunks.pop(index)
                self._taken += 1
            self._wake()  # the pool may read further ahead now
            self._buffer.extend((True, v) for v in results)
            if error is not None:
                self._buffer.append((False, error))
        ok, value = self._buffer.popleft()
        if not ok:
            raise value
        return value


IMapIterator = _IterResult

# Shared ctypes objects (multiprocessing.sharedctypes): python/volley/_mp_values.py.
from ._mp_values import Array, RawArray, RawValue, Value  # noqa: E402

__all__ += ["Array", "RawArray", "RawValue", "Value"]

# ----------------------------------------------------------------- Manager (volley._mp_manager)
from . import _mp_manager as managers  # noqa: E402  (``volley.multiprocessing.managers``)
from ._mp_manager import Manager  # noqa: E402

sys.modules[__name__ + ".managers"] = managers
managers.SyncManager.register("Pool", Pool, managers.PoolProxy)
__all__ += ["Manager", "managers"]  # noqa: PLE0605


# ------------------------------------------------- beyond Pool (processes, pipes, queues, locks)
from ._mp_connection import Connection, Pipe  # noqa: E402
from ._mp_context import (  # noqa: E402
    AuthenticationError,
    BufferTooShort,
    freeze_support,
    get_all_start_methods,
    get_context,
    get_logger,
    get_start_method,
    log_to_stderr,
    set_executable,
    set_forkserver_preload,
    set_start_method,
)
from ._mp_process import (  # noqa: E402
    Process,
    ProcessError,
    active_children,
    current_process,
    parent_process,
)
from ._mp_sync import (  # noqa: E402
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    JoinableQueue,
    Lock,
    Queue,
    RLock,
    Semaphore,
    SimpleQueue,
)

__all__ += [
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Connection",
    "Event",
    "JoinableQueue",
    "Lock",
    "Pipe",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "Semaphore",
    "SimpleQueue",
    "active_children",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]
