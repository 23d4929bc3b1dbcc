"""``concurrent.futures`` on volley: :class:`Executor`, a drop-in for ``ProcessPoolExecutor``.

Before::

    from concurrent.futures import ProcessPoolExecutor as Executor

After::

    from volley.futures import Executor

Every call is a volley task, so it runs on any core of the machine or of the cluster, and large
arguments and results go through the shared-memory object store. Futures are real
``concurrent.futures.Future`` objects: ``as_completed``, ``wait`` and callbacks from the
standard library work with them. Errors are the standard library's: a call's exception comes
back with its own class (the remote traceback is its ``__cause__``, a
``concurrent.futures.process._RemoteTraceback``), and a call whose worker died raises
:class:`BrokenProcessPool` (a ``concurrent.futures.process.BrokenProcessPool`` that is also a
``volley.WorkerCrashedError``).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import concurrent.futures.process as cfp
import logging
import multiprocessing
import sys
import threading
import time
import types
import uuid
import weakref
from typing import Any, Callable, Iterable, Iterator

from . import get, put, remote
from .exceptions import (
    ActorDiedError,
    GetTimeoutError,
    SerializationError,
    TaskError,
    VolleyError,
    WorkerCrashedError,
    original_error,
)
from .library import (
    check_options,
    init_if_needed,
    retire_worker,
    run_items,
    total_cpus,
    unwrap_remote,
)

__all__ = ["Executor", "BrokenProcessPool"]


class BrokenProcessPool(WorkerCrashedError, cfp.BrokenProcessPool):
    """A call could not run or finish because its worker process died, could not load its
    arguments, or the executor is broken (its ``initializer`` raised).

    It is both the standard library's ``BrokenProcessPool`` (so ``except BrokenExecutor``
    works, as ``ProcessPoolExecutor`` documents) and volley's own ``WorkerCrashedError``; the
    error volley reported is its ``__cause__``.

    >>> issubclass(BrokenProcessPool, cf.BrokenExecutor)
    True
    """


# ---------------------------------------------------------------------------- in the worker

#: The executors (by token) whose initializer has run in this process. A worker process is
#: shared by every executor (and every task), so each executor's initializer runs once in each
#: process, before that executor's first call there.
_initialized: set[str] = set()
#: Calls of each executor with ``max_tasks_per_child`` (by token) that ran in this process.
_calls: dict[str, int] = {}


class _InitializerFailed(Exception):
    """Raised in a worker whose run of the executor's ``initializer`` raised."""


def _run(
    token: str,
    init: tuple | None,
    fn: Callable,
    args: tuple,
    kwargs: dict,
    max_tasks: int | None = None,
) -> Any:
    """A call of the executor: its initializer first if this process has not run it yet; after
    the ``max_tasks``-th call of the executor here, the process retires once it has sent the
    call's result (``volley.library.retire_worker``, as a ``Pool``'s ``maxtasksperchild``)."""
    if max_tasks is not None:
        done = _calls.get(token, 0) + 1
        if done >= max_tasks:
            _calls.pop(token, None)
            retire_worker()  # whatever the call does: it was this process's last
        else:
            _calls[token] = done
    if init is not None and token not in _initialized:
        initializer, initargs = init
        try:
            initializer(*initargs)
        except BaseException as e:
            # What ProcessPoolExecutor's worker logs before it exits.
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=True
            )
            raise _InitializerFailed(
                f"the executor's initializer raised {type(e).__name__}: {e}"
            ) from None
        _initialized.add(token)
    return fn(*args, **kwargs)


_call = remote(_run)


# ---------------------------------------------------------------------------- in the driver


def _broken(message: str, cause: BaseException | None) -> BrokenProcessPool:
    err = BrokenProcessPool(message)
    err.__cause__ = cause
    return err


def _stdlib_error(e: BaseException) -> BaseException:
    """The error ``ProcessPoolExecutor`` reports for what volley raised for a call."""
    if isinstance(e, (BrokenProcessPool, cf.CancelledError, cf.TimeoutError)):
        return e
    if isinstance(e, TaskError):
        err = original_error(e, cfp._RemoteTraceback)
        if isinstance(err, _InitializerFailed):
            return _broken(f"A process in the process pool could not start: {err}", err)
        return err
    if isinstance(e, (WorkerCrashedError, ActorDiedError)):
        return _broken(f"A process in the process pool was terminated abruptly: {e}", e)
    if isinstance(e, SerializationError) and str(e).startswith(
        ("could not deserialize the arguments", "could not load the function")
    ):
        # The worker could not load the call (ProcessPoolExecutor's worker dies of it).
        return _broken(f"A process in the process pool could not load the call: {e}", e)
    if type(e) is VolleyError or not isinstance(e, VolleyError):
        # volley shut down; or the result could not be unpickled here (ProcessPoolExecutor's
        # result thread dies of it).
        return _broken(f"A call's result could not be received: {type(e).__name__}: {e}", e)
    return e


class _Future(cf.Future):
    """A ``concurrent.futures.Future`` whose ``result()``/``exception()`` wait in volley
    directly when the call is running (no hop through the thread that completes futures)."""

    _ref: Any = None
    _executor: Any = staticmethod(lambda: None)  # a weak reference to its executor

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
            value = get(ref, timeout=timeout)
        except GetTimeoutError:
            raise cf.TimeoutError() from None
        except KeyboardInterrupt:
            raise  # Ctrl-C while waiting here (a task's own comes as a TaskError)
        except BaseException as e:  # the call's own error
            err = _stdlib_error(e)
            self._settle(None, err)
        else:
            err = None
            self._settle(value, None)
            del value
        executor = self._executor()
        if executor is not None:
            # Done here before the thread that completes volley's futures sees it: the executor
            # forgets the call now, so that it keeps no result this future returns.
            executor._forget(ref, settled=True)
            executor._check_broken(err)
            executor._dispatch()

    def result(self, timeout: float | None = None) -> Any:
        self._wait_volley(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_volley(timeout)
        return super().exception(timeout)


_PLAIN_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType)
_MAX_FUNCTIONS = 256


def _held_by_its_module(fn: Any) -> bool:
    """Whether ``fn`` is a plain function found under its own name in its module."""
    if type(fn) not in _PLAIN_FUNCTIONS:
        return False
    obj = sys.modules.get(getattr(fn, "__module__", None) or "")
    qualname = getattr(fn, "__qualname__", "")
    if obj is None or "<" in qualname:
        return False
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


class _ClassMethod:
    """``cls.name`` looked up where it is called: a classmethod travels by reference (its
    class's), as the standard library's pickle sends it, not by value as cloudpickle would (a
    copy of its module's globals, and no source lines in its traceback)."""

    __slots__ = ("cls", "name")

    def __init__(self, cls: type, name: str):
        self.cls, self.name = cls, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.cls, self.name)(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return (_ClassMethod, (self.cls, self.name))


def _by_reference(fn: Any) -> Any:
    """``fn``, or a :class:`_ClassMethod` for a classmethod found under its name."""
    if type(fn) is types.MethodType and isinstance(fn.__self__, type):
        try:
            if getattr(fn.__self__, fn.__name__) == fn:
                return _ClassMethod(fn.__self__, fn.__name__)
        except Exception:  # an odd class: send it as it is
            pass
    return fn


# Interpreter exit: like the standard library, wait for the calls submitted to every executor
# before anything else shuts down (threading's exit hooks run before atexit's, and volley's own
# shutdown is an atexit handler), and refuse new calls from then on.
_executors: weakref.WeakSet = weakref.WeakSet()
_exiting = False
_exit_hook = False
_exit_lock = threading.Lock()


def _python_exit() -> None:
    global _exiting
    _exiting = True
    for ex in list(_executors):
        ex._wait_idle()


def _register_exit_hook() -> None:
    global _exit_hook, _exiting
    with _exit_lock:
        if _exit_hook:
            return
        try:
            threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
        except RuntimeError:  # "can't register atexit after shutdown"
            _exiting = True
        _exit_hook = True


class Executor(cf.Executor):
    """Runs calls as volley tasks: ``submit``, ``map``, ``shutdown``, a context manager; the
    arguments of ``concurrent.futures.ProcessPoolExecutor``.

    ``max_workers`` bounds how many calls are handed to volley at once (default: four per CPU
    of the cluster, so workers never wait for the next call); calls beyond it wait here, where
    ``Future.cancel()`` can still cancel them. As with ``ProcessPoolExecutor``, a call that has
    been handed to a worker is running and can no longer be cancelled.

    ``initializer(*initargs)`` runs once in each worker process before the first call of this
    executor there (worker processes are shared with other volley work, so it runs in each
    process that gets one of its calls). If it raises, the executor is broken, as
    ``ProcessPoolExecutor`` is: the pending calls and every later ``submit`` raise
    :class:`BrokenProcessPool`. ``initargs`` are pickled once, when the executor is made (a
    ``multiprocessing.Queue``, which can only be inherited by a process at its start, cannot be
    among them: use a ``multiprocessing.Manager().Queue()``).

    ``max_tasks_per_child``: a worker process that has run that many calls of this executor
    retires (it sends the last call's result, exits, and the node starts a fresh one), as a
    ``volley.multiprocessing.Pool``'s ``maxtasksperchild`` does; ``max_workers`` then defaults
    to one call in flight per CPU.

    ``mp_context`` is accepted and kept for code that passes it: volley's workers are fresh
    interpreters it starts itself (as with the ``"spawn"`` start method) whatever the context,
    on this machine or on other nodes of the cluster; they are never forked from this process.

    Task options (``num_cpus``, ``num_gpus``, ``resources``, ``max_retries``) apply to every
    call. A call whose worker dies is retried (``max_retries``, default 3) before it raises
    :class:`BrokenProcessPool`; other calls are not affected and the executor stays usable.

    At interpreter exit, submitted calls finish before volley shuts down (as with
    ``ProcessPoolExecutor``); a ``submit`` from an ``atexit`` handler raises ``RuntimeError``.

    >>> from volley.futures import Executor
    >>> with Executor() as ex:
    ...     f = ex.submit(pow, 2, 10)
    ...     print(f.result(), list(ex.map(abs, [-1, -2])))
    1024 [1, 2]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        **options: Any,
    ):
        if max_workers is not None and (
            not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers <= 0
        ):
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context is not None and not hasattr(mp_context, "get_start_method"):
            raise TypeError(
                f"mp_context must be a multiprocessing context, not {type(mp_context).__name__}"
            )
        self._options = check_options(dict(options)) if options else {}
        init_if_needed()
        _register_exit_hook()
        if max_workers is None:
            max_workers = total_cpus() if max_tasks_per_child else 4 * total_cpus()
        self._max_workers = max_workers
        self._mp_context = mp_context or multiprocessing.get_context("spawn")
        self._max_tasks = max_tasks_per_child
        self._token = uuid.uuid4().hex
        self._init: Any = None
        if initializer is not None:
            # Pickled once (a SerializationError here, at once, if it cannot be).
            self._init = put((initializer, initargs))
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._running: dict[Any, _Future] = {}
        self._settling = 0  # calls over whose futures are not settled yet (see _forget)
        self._functions: dict[Callable, Any] = {}  # see _remote_function
        self._shutdown = False
        self._broken: str | bool = False
        self._idle = threading.Condition(self._lock)
        _executors.add(self)

    # ------------------------------------------------------------------ submit

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedules ``fn(*args, **kwargs)``; returns its ``Future``.

        >>> ex = Executor(max_workers=2)
        >>> ex.submit(sum, [1, 2, 3]).result()
        6
        """
        if not callable(fn):
            raise TypeError(f"submit needs a callable, not {type(fn).__name__}")
        fut = _Future()
        with self._lock:
            if self._broken:
                raise BrokenProcessPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            self._queue.append((fut, fn, args, kwargs))
        self._dispatch()
        return fut

    def _dispatch(self) -> None:
        """Hands queued calls to volley while fewer than ``max_workers`` run."""
        started = []
        with self._lock:
            while self._queue and not self._broken:
                if len(self._running) >= self._max_workers:
                    break
                fut, fn, args, kwargs = self._queue.popleft()
                if not fut.set_running_or_notify_cancel():
                    continue  # Cancelled while it waited here.
                try:
                    ref = self._start(fn, args, kwargs)
                except BaseException as e:  # unpicklable arguments: the caller's future says so
                    fut.set_exception(e)
                    continue
                finally:
                    del fn, args, kwargs  # nothing here keeps a call's objects alive
                fut._executor = weakref.ref(self)  # first: a waiter that sees _ref finds it
                fut._ref = ref
                self._running[ref] = fut
                started.append(ref)
        for ref in started:
            ref.future().add_done_callback(lambda vf, ref=ref: self._finished(ref, vf))

    def _start(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if self._init is None and self._max_tasks is None:
            rf = self._remote_function(fn)
            if rf is not None:  # args and kwargs as they are: submit(f, self=1) is f(self=1)
                return rf._submit(args, kwargs, rf._options)
        opts = self._options
        if "name" not in opts:
            name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
            opts = dict(opts, name=name if isinstance(name, str) else type(fn).__name__)
        call = (self._token, self._init, _by_reference(fn), args, kwargs, self._max_tasks)
        return _call._submit(call, {}, opts)

    def _remote_function(self, fn: Callable) -> Any:
        """A remote function made once for ``fn`` (so it is pickled and shipped once), for a
        function its module holds anyway (``pow``, ``module.f``): keeping it costs nothing.
        None for anything else (a lambda, a closure, a bound method, a callable object), which
        goes with each call and is dropped with it."""
        rf = self._functions.get(fn) if type(fn) in _PLAIN_FUNCTIONS else None
        if rf is None and _held_by_its_module(fn):
            rf = remote(**self._options)(fn) if self._options else remote(fn)
            rf._check = None  # a wrong call fails its future, as with ProcessPoolExecutor
            if len(self._functions) >= _MAX_FUNCTIONS:
                self._functions.pop(next(iter(self._functions)))
            self._functions[fn] = rf
        return rf

    def _finished(self, ref: Any, vf: cf.Future) -> None:
        """A call finished (in the thread that completes volley's futures). The next queued
        call starts first and the caller's future is settled last: this thread holds the
        result only for the instant it hands it over, not while it submits more work (the
        map iterator promises to keep no result it returned, and so does this thread)."""
        e = vf.exception()
        err = None if e is None else _stdlib_error(e)
        fut = self._forget(ref)
        try:
            self._check_broken(err)
            self._dispatch()
        finally:
            if fut is not None:
                try:
                    fut._settle(vf.result() if e is None else None, err)
                finally:
                    self._settled()

    def _forget(self, ref: Any, settled: bool = False) -> _Future | None:
        """The call of ``ref`` is over: its future, no longer among the running ones (None if
        it was forgotten already). Unless it is ``settled`` already, it counts as settling
        until ``_settled``, so that ``shutdown(wait=True)`` returns only once every future is
        done."""
        with self._lock:
            fut = self._running.pop(ref, None)
            if fut is not None and not settled:
                self._settling += 1
            elif self._is_idle():
                self._idle.notify_all()
            return fut

    def _settled(self) -> None:
        with self._lock:
            self._settling -= 1
            if self._is_idle():
                self._idle.notify_all()

    def _is_idle(self) -> bool:
        """(Under ``_lock``) no call runs, waits here or is being settled."""
        return not self._running and not self._queue and not self._settling

    def _check_broken(self, err: BaseException | None) -> None:
        """Breaks the executor if ``err`` (a call's) says its initializer raised."""
        if isinstance(err, BrokenProcessPool) and isinstance(err.__cause__, _InitializerFailed):
            self._break(str(err))

    def _break(self, reason: str) -> None:
        """The executor is broken (its initializer raised): every pending call fails."""
        with self._lock:
            if self._broken:
                return
            self._broken = reason
            pending = [f for f, *_ in self._queue] + list(self._running.values())
            self._queue.clear()
            self._running.clear()
            self._idle.notify_all()
        for f in pending:
            f._settle(None, BrokenProcessPool(reason))

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
        result not ready in time. The iterator keeps no result it has returned.

        >>> list(ex.map(pow, [2, 3], [5, 2]))
        [32, 9]
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables)]
            return _results(futures, deadline)
        fn, _, name = unwrap_remote(fn, "map")
        items = list(zip(*iterables))
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        del items
        futures = [self.submit(_chunk_in_worker, fn, c, name) for c in chunks]
        return _chunk_results(futures, deadline)

    # ------------------------------------------------------------------ shutdown

    def _wait_idle(self) -> None:
        with self._lock:
            while not self._is_idle():
                self._idle.wait(0.1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls after this. ``cancel_futures`` cancels the calls still waiting here;
        ``wait`` blocks until the others are done. The calls left run to the end either way.

        >>> ex.shutdown(wait=True)
        """
        with self._lock:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            idle = self._is_idle()
            if idle:
                self._idle.notify_all()
        for fut, *_ in dropped:
            fut.cancel()
        del dropped
        if wait:
            self._wait_idle()


def _chunk_in_worker(fn: Callable, items: list, name: str) -> tuple[list, Any]:
    results, _, error = run_items(fn, items, True, name)
    return results, error


def _result_of(futures: list, deadline: float | None) -> Any:
    """The result of the next future (popped: the list no longer keeps it)."""
    f = futures.pop()
    try:
        return f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
    finally:
        f.cancel()  # on a timeout: the call is not wanted any more
        del f


def _results(futures: list, deadline: float | None) -> Iterator:
    try:
        futures.reverse()
        while futures:
            yield _result_of(futures, deadline)
    finally:
        for f in futures:
            f.cancel()


def _chunk_results(futures: list, deadline: float | None) -> Iterator:
    for results, error in _results(futures, deadline):
        results.reverse()
        while results:
            yield results.pop()
        if error is not None:
            raise _stdlib_error(error)
