"""Locks, semaphores, events, barriers and conditions that the driver, tasks and actors of a
cluster share, with ``threading``'s and ``multiprocessing``'s signatures (docs/sync.md).

Each primitive lives in the node that made it (in Rust, ``volley_runtime::prims``), not in an
actor: an uncontended ``acquire`` is one message to the node and its answer (forwarded to that
node from another one), and waiters queue first come, first served. A held lock is a *lease*:
when the process holding it dies, the lock is released and the next acquirer is told
(``previous_holder_died``, or ``LockLost`` with ``on_holder_death="raise"``), so a crashed task
never leaves a lock held for ever.

>>> from volley.sync import Lock
>>> lock = Lock()
>>> with lock:
...     lock.locked()
True
>>> lock.locked()
False
>>> lock.shutdown()
"""

from __future__ import annotations

import functools
import pickle
import threading
import time
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any, TypeVar

from . import _core
from ._session import ensure_init
from .exceptions import ChannelClosed

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "LockLost",
    "RLock",
    "Semaphore",
]

#: ``Condition.notify_all``'s count: every waiter.
_ALL = 1 << 62

F = TypeVar("F", bound=Callable[..., Any])


class LockLost(RuntimeError):
    """Raised by ``acquire`` of a lock made with ``on_holder_death="raise"`` when the lock's
    previous holder died holding it: the caller *holds the lock now*, and what the lock guards
    may be half-updated. Repair it, then ``release()`` the lock.

    >>> issubclass(LockLost, RuntimeError)
    True
    """


# A primitive's id names its home node above this bit (volley_proto::PRIM_HOME_SHIFT).
_HOME_SHIFT = 40


def _node_here() -> int | None:
    try:
        from ._runtime_context import _own_node

        return int(_own_node()["node_id"])
    except Exception:  # no session any more: the message says so without a node
        return None


def _named(method: F) -> F:
    """Makes a lost primitive's error name it and its home node (shut down, made in another
    session, used from another node, or volley shut down in this process)."""

    @functools.wraps(method)
    def wrapper(self: _Prim, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ChannelClosed as e:
            here = _node_here()
            where = (
                "" if here is None or here == self._home else f"; this process is on node {here}"
            )
            raise ChannelClosed(
                f"{self!r}, made on node {self._home}, is gone: {e}{where}"
            ) from None
        except RuntimeError as e:
            if "not initialised" not in str(e):
                raise
            raise ChannelClosed(
                f"{self!r}, made on node {self._home}, is gone: volley was shut down in this "
                "process (a primitive lives in its node's session)"
            ) from None

    return wrapper  # type: ignore[return-value]


def _named_async(method: F) -> F:
    """:func:`_named` for a coroutine method."""

    @functools.wraps(method)
    async def wrapper(self: _Prim, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except ChannelClosed as e:
            raise ChannelClosed(f"{self!r}, made on node {self._home}, is gone: {e}") from None

    return wrapper  # type: ignore[return-value]


def _task_holder() -> int:
    """The holder an awaited acquire takes units for: the running asyncio task (not the
    loop's thread, which many tasks share), so an ``RLock`` is reentrant per task."""
    import asyncio

    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        task = None
    if task is None:
        raise RuntimeError("acquire_async must be awaited inside an asyncio task")
    return id(task)


def _answer(kind: str, value: Any) -> Any:
    """The value of an awaited op's answer; raises the error it carries, as the blocking op
    would."""
    if kind == "closed":
        raise ChannelClosed(value)
    if kind == "error":
        raise RuntimeError(value)
    if kind == "broken":
        raise BrokenBarrierError(value)
    return value


async def _acquire_async(prim: Any, timeout: float | None) -> bool | None:
    """An awaited acquire of one unit of ``prim`` (a lock or a semaphore) for the running
    task: None if the timeout passed, else whether the unit was freed by a dead holder."""
    from . import _async_prims

    me = _task_holder()
    timeout = _async_prims.check_timeout(timeout)
    kind, value = await _async_prims.call(
        _core.prim_start, "acquire", prim._id, me, timeout=timeout
    )
    if kind == "empty":
        return None
    died, _ = _answer(kind, value)
    prim._held[me] = prim._held.get(me, 0) + 1
    prim._async_held += 1
    prim.previous_holder_died = died
    return bool(died)


def _acquire_timeout(blocking: bool, timeout: float | None) -> float | None:
    """``threading``'s rules: -1 or None waits for ever; a timeout needs ``blocking``."""
    if timeout is None or timeout == -1:
        return None
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number")
    return timeout


def _wait_timeout(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be a non-negative number or None, not {timeout!r}")
    return timeout


class _Prim:
    """A handle on a primitive of a node: its id (which names its home node); pickled as
    that."""

    _kind = ""
    _id: int

    def _make(self, value: int = 0, lock: int = 0) -> None:
        ensure_init()
        self._id = _core.sync_create(self._kind, value, lock)

    def _attach_state(self, prim_id: int) -> None:
        self._id = prim_id

    @property
    def _home(self) -> int:
        """The node the primitive lives in: its id's top bits (volley_proto::prim_home)."""
        return self._id >> _HOME_SHIFT

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id})"

    @_named
    def shutdown(self) -> None:
        """Drops the primitive for every process: each waiting and later op on it raises
        ``ChannelClosed``. Shutting it down again does nothing."""
        _core.sync_close(self._id)


class Lock(_Prim):
    """A lock (``threading.Lock``/``multiprocessing.Lock``) for the processes of a cluster.

    Any holder may release it, as with ``threading.Lock``. When the process holding it dies,
    it is released: the next ``acquire`` returns True and sets ``previous_holder_died``
    (``on_holder_death="release"``, the default) or raises ``LockLost`` holding the lock
    (``on_holder_death="raise"``).

    >>> from volley.sync import Lock
    >>> lock = Lock()
    >>> lock.acquire(), lock.acquire(blocking=False), lock.acquire(timeout=0.01)
    (True, False, False)
    >>> lock.release(); lock.previous_holder_died
    False
    >>> lock.shutdown()
    """

    _kind = "lock"

    def __init__(self, *, on_holder_death: str = "release") -> None:
        if on_holder_death not in ("release", "raise"):
            raise ValueError(
                f'on_holder_death must be "release" or "raise", not {on_holder_death!r}'
            )
        self._raise = on_holder_death == "raise"
        self._make()
        self._init_local()

    def _init_local(self) -> None:
        #: Holds this process has, by thread: a release of a held unit need not wait.
        self._held: dict[int, int] = {}
        #: Units held by asyncio tasks (``acquire_async``).
        self._async_held = 0
        #: Whether the last successful ``acquire`` through this handle took a unit whose
        #: holder had died (what the lock guards may be half-updated).
        self.previous_holder_died = False

    @classmethod
    def _attach(cls, prim_id: int, raise_: bool) -> Lock:
        lock = cls.__new__(cls)
        lock._attach_state(prim_id)
        lock._raise = raise_
        lock._init_local()
        return lock

    def __reduce__(self) -> tuple:
        return (self._attach, (self._id, self._raise))

    @_named
    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        """Takes the lock, waiting up to ``timeout`` seconds (-1 or None: for ever; not at all
        unless ``blocking``); whether it got it. Ctrl-C stops the wait."""
        me = threading.get_native_id()
        got, died = _core.sync_acquire(self._id, me, blocking, _acquire_timeout(blocking, timeout))
        if got:
            self._held[me] = self._held.get(me, 0) + 1
            self.previous_holder_died = died
            if died and self._raise:
                raise LockLost(
                    f"{self!r}: its previous holder died holding it; you hold it now: repair "
                    "what it guards, then release() it"
                )
        return got

    def _me(self) -> int:
        """The holder a release is for: this thread, or the running asyncio task if it
        holds a unit it took with ``acquire_async``."""
        if self._async_held:
            try:
                task = _task_holder()
            except RuntimeError:
                pass
            else:
                if self._held.get(task):
                    return task
        return threading.get_native_id()

    @_named_async
    async def acquire_async(self, timeout: float | None = None) -> bool:
        """``acquire`` for asyncio: awaits the lock without blocking the event loop, up to
        ``timeout`` seconds (None: for ever); whether it got it. The holder is the running
        asyncio task. If the awaiting coroutine is cancelled, a lock granted meanwhile is
        released again (the next waiter gets it).

        >>> import asyncio
        >>> from volley.sync import Lock
        >>> lock = Lock()
        >>> async def main():
        ...     async with lock:
        ...         return lock.locked()
        >>> asyncio.run(main())
        True
        >>> lock.shutdown()
        """
        died = await _acquire_async(self, timeout)
        if died is None:
            return False
        if died and self._raise:
            raise LockLost(
                f"{self!r}: its previous holder died holding it; you hold it now: repair "
                "what it guards, then release() it"
            )
        return True

    async def __aenter__(self) -> bool:
        return await self.acquire_async()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    @_named
    def release(self) -> None:
        """Releases the lock; ``RuntimeError`` if it is not held."""
        me = self._me()
        held = self._held.get(me, 0)
        # Held through this handle: the release cannot fail, so a worker does not wait.
        _core.sync_release(self._id, me, held > 0)
        if held > 1:
            self._held[me] = held - 1
        else:
            self._held.pop(me, None)
        if held and me != threading.get_native_id():
            self._async_held -= 1

    @_named
    def locked(self) -> bool:
        """Whether some process holds the lock now."""
        return _core.sync_state(self._id)[0] > 0

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RLock(Lock):
    """A reentrant lock (``threading.RLock``): its owner (one thread of one process) may
    acquire it again and must release it as many times; others wait.

    >>> from volley.sync import RLock
    >>> r = RLock()
    >>> with r:
    ...     with r:
    ...         r.locked()
    True
    >>> r.shutdown()
    """

    _kind = "rlock"


class Semaphore(_Prim):
    """A counting semaphore (``threading.Semaphore``/``multiprocessing.Semaphore``):
    ``value`` units; ``acquire`` takes one, waiting while there is none. Units held by a process
    that dies are released, and ``previous_holder_died`` tells the next taker.

    >>> from volley.sync import Semaphore
    >>> s = Semaphore(2)
    >>> s.acquire(), s.acquire(), s.acquire(timeout=0.01)
    (True, True, False)
    >>> s.release(2); s.get_value()
    2
    >>> s.shutdown()
    """

    _kind = "semaphore"

    def __init__(self, value: int = 1) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"semaphore initial value must be >= 0, not {value}")
        self._value = value
        self._make(value)
        self._init_local()

    def _init_local(self) -> None:
        self._held: dict[int, int] = {}
        self._async_held = 0
        self.previous_holder_died = False

    _me = Lock._me

    @_named_async
    async def acquire_async(self, timeout: float | None = None) -> bool:
        """``acquire`` for asyncio: awaits a unit without blocking the event loop, up to
        ``timeout`` seconds (None: for ever); whether it got one. If the awaiting coroutine
        is cancelled, a unit granted meanwhile is given back.

        >>> import asyncio
        >>> from volley.sync import Semaphore
        >>> s = Semaphore(1)
        >>> async def main():
        ...     async with s:
        ...         return s.get_value()
        >>> asyncio.run(main()), s.get_value()
        (0, 1)
        >>> s.shutdown()
        """
        died = await _acquire_async(self, timeout)
        if died is None:
            return False
        return True

    async def __aenter__(self) -> bool:
        return await self.acquire_async()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    @classmethod
    def _attach(cls, prim_id: int, value: int) -> Semaphore:
        s = cls.__new__(cls)
        s._attach_state(prim_id)
        s._value = value
        s._init_local()
        return s

    def __reduce__(self) -> tuple:
        return (self._attach, (self._id, self._value))

    @_named
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Takes a unit, waiting up to ``timeout`` seconds (None: for ever; not at all unless
        ``blocking``); whether it got one."""
        me = threading.get_native_id()
        got, died = _core.sync_acquire(self._id, me, blocking, _acquire_timeout(blocking, timeout))
        if got:
            self._held[me] = self._held.get(me, 0) + 1
            self.previous_holder_died = died
        return got

    @_named
    def release(self, n: int = 1) -> None:
        """Gives back ``n`` units (any process may release, as with ``threading``)."""
        if n < 1:
            raise ValueError("n must be one or more")
        me = self._me()
        for _ in range(n):
            held = self._held.get(me, 0)
            try:
                _core.sync_release(self._id, me, held > 0)
            except RuntimeError as e:
                if "too many" not in str(e):
                    raise
                raise ValueError(str(e)) from None  # BoundedSemaphore's over-release
            if held > 1:
                self._held[me] = held - 1
            else:
                self._held.pop(me, None)
            if held and me != threading.get_native_id():
                self._async_held -= 1

    @_named
    def get_value(self) -> int:
        """The free units now (``multiprocessing.Semaphore.get_value``)."""
        return _core.sync_state(self._id)[0]

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release`` past its initial value raises ``ValueError``.

    >>> from volley.sync import BoundedSemaphore
    >>> b = BoundedSemaphore(1)
    >>> try:
    ...     b.release()
    ... except ValueError as e:
    ...     print(e)
    Semaphore released too many times
    >>> b.shutdown()
    """

    _kind = "bounded_semaphore"


class Event(_Prim):
    """An event (``threading.Event``/``multiprocessing.Event``): ``wait`` blocks
    until some process calls ``set``.

    >>> from volley.sync import Event
    >>> e = Event()
    >>> e.is_set(), e.wait(timeout=0.01)
    (False, False)
    >>> e.set(); e.wait()
    True
    >>> e.shutdown()
    """

    _kind = "event"

    def __init__(self) -> None:
        self._make()

    @classmethod
    def _attach(cls, prim_id: int) -> Event:
        e = cls.__new__(cls)
        e._attach_state(prim_id)
        return e

    def __reduce__(self) -> tuple:
        return (self._attach, (self._id,))

    @_named
    def is_set(self) -> bool:
        """Whether the flag is set."""
        return _core.sync_state(self._id)[0] == 1

    @_named
    def set(self) -> None:
        """Sets the flag, waking every waiter."""
        _core.event_set(self._id, True)

    @_named
    def clear(self) -> None:
        """Clears the flag."""
        _core.event_set(self._id, False)

    @_named
    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the flag is set, up to ``timeout`` seconds; whether it is set."""
        return _core.event_wait(self._id, _wait_timeout(timeout))

    @_named_async
    async def wait_async(self, timeout: float | None = None) -> bool:
        """``wait`` for asyncio: awaits the flag without blocking the event loop, up to
        ``timeout`` seconds; whether it is set.

        >>> import asyncio
        >>> from volley.sync import Event
        >>> e = Event()
        >>> e.set()
        >>> asyncio.run(e.wait_async(timeout=5))
        True
        >>> e.shutdown()
        """
        from . import _async_prims

        kind, value = await _async_prims.call(
            _core.prim_start, "wait", self._id, timeout=_wait_timeout(timeout)
        )
        if kind == "empty":
            return False
        _answer(kind, value)
        return True


class Barrier(_Prim):
    """A barrier (``threading.Barrier``): ``wait`` returns once ``parties``
    processes (or threads) wait, each with its arrival index (0 for the first). A wait that
    times out, ``abort()``, or a party that dies while waiting breaks it: every waiting and
    later ``wait`` raises ``BrokenBarrierError`` until ``reset()``.

    ``action`` (picklable: it travels with the barrier) is called by the last party to
    arrive, before any party's ``wait`` returns; if it raises, the barrier breaks (the others
    get ``BrokenBarrierError``) and that party's ``wait`` raises what it raised.

    >>> from volley.sync import Barrier
    >>> b = Barrier(1)
    >>> b.wait(), b.parties, b.broken
    (0, 1, False)
    >>> b.shutdown()
    >>> ran = []
    >>> b = Barrier(1, action=lambda: ran.append("all here"))
    >>> b.wait(), ran
    (0, ['all here'])
    >>> b.shutdown()
    """

    _kind = "barrier"

    def __init__(
        self, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None
    ) -> None:
        if not isinstance(parties, int) or isinstance(parties, bool) or parties < 1:
            raise ValueError(f"parties must be an int >= 1, not {parties!r}")
        if action is not None and not callable(action):
            raise TypeError(f"action must be callable, not {type(action).__name__}")
        self._parties, self._timeout = parties, _wait_timeout(timeout)
        self._action = action
        # With an action, a second barrier holds the parties until the last one has run it.
        self._gate: Barrier | None = None if action is None else Barrier(parties)
        self._make(parties)

    @classmethod
    def _attach(
        cls,
        prim_id: int,
        parties: int,
        timeout: float | None,
        action: Callable[[], Any] | None = None,
        gate: Barrier | None = None,
    ) -> Barrier:
        b = cls.__new__(cls)
        b._attach_state(prim_id)
        b._parties, b._timeout = parties, timeout
        b._action, b._gate = action, gate
        return b

    def __reduce__(self) -> tuple:
        if self._action is None:
            return (self._attach, (self._id, self._parties, self._timeout))
        import cloudpickle  # an action may be a lambda or a local function

        action = cloudpickle.dumps(self._action)
        return (
            _attach_barrier_with_action,
            (self._id, self._parties, self._timeout, action, self._gate),
        )

    def _run_action(self, index: int) -> None:
        """The last party to arrive runs the action; if it raises, the barrier breaks."""
        if self._action is None or index != self._parties - 1:
            return
        try:
            self._action()
        except BaseException:
            self.abort()
            raise

    @_named
    def wait(self, timeout: float | None = None) -> int:
        """Waits until ``parties`` wait, up to ``timeout`` seconds (default: the barrier's);
        this party's arrival index. ``BrokenBarrierError`` if it is or gets broken."""
        t = self._timeout if timeout is None else _wait_timeout(timeout)
        index = _core.barrier_wait(self._id, t)
        if self._gate is not None:
            self._run_action(index)
            self._gate.wait(t)
        return index

    @_named_async
    async def wait_async(self, timeout: float | None = None) -> int:
        """``wait`` for asyncio: awaits the other parties without blocking the event loop;
        this party's arrival index. ``BrokenBarrierError`` if it is or gets broken (a timeout
        breaks it, as with ``wait``)."""
        from . import _async_prims

        t = self._timeout if timeout is None else _wait_timeout(timeout)
        kind, value = await _async_prims.call(_core.prim_start, "barrier_wait", self._id, timeout=t)
        index = _answer(kind, value)
        if self._gate is not None:
            self._run_action(index)
            await self._gate.wait_async(t)
        return index

    @_named
    def abort(self) -> None:
        """Breaks the barrier: every waiting and later ``wait`` raises ``BrokenBarrierError``."""
        _core.barrier_break(self._id, False)
        if self._gate is not None:
            self._gate.abort()

    @_named
    def reset(self) -> None:
        """Makes the barrier whole again; waits parked now raise ``BrokenBarrierError``."""
        _core.barrier_break(self._id, True)
        if self._gate is not None:
            self._gate.reset()

    def shutdown(self) -> None:
        """Drops the barrier for every process (see :meth:`Lock.shutdown`)."""
        super().shutdown()
        if self._gate is not None:
            self._gate.shutdown()

    @property
    def parties(self) -> int:
        """How many waits release the barrier."""
        return self._parties

    @property
    @_named
    def n_waiting(self) -> int:
        """How many parties wait now."""
        return _core.sync_state(self._id)[0]

    @property
    @_named
    def broken(self) -> bool:
        """Whether the barrier is broken."""
        return _core.sync_state(self._id)[1] or (self._gate is not None and self._gate.broken)


def _attach_barrier_with_action(
    prim_id: int,
    parties: int,
    timeout: float | None,
    action: bytes,
    gate: Barrier | None,
) -> Barrier:
    """Unpickles a :class:`Barrier` made with an action (see ``Barrier.__reduce__``)."""
    return Barrier._attach(prim_id, parties, timeout, pickle.loads(action), gate)


class Condition(_Prim):
    """A condition variable (``threading.Condition``), over a volley ``Lock`` or
    ``RLock`` (a new ``RLock`` by default). ``wait`` releases the lock, waits for a
    ``notify``, and holds the lock again before it returns.

    >>> from volley.sync import Condition
    >>> c = Condition()
    >>> with c:
    ...     c.wait(timeout=0.01)
    False
    >>> c.shutdown()
    """

    _kind = "condition"

    def __init__(self, lock: Lock | None = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, Lock):
            raise TypeError(
                f"a volley Condition needs a volley.sync.Lock or RLock, not {type(lock).__name__}"
            )
        self._lock = lock
        self._make(lock=lock._id)

    @classmethod
    def _attach(cls, prim_id: int, lock: Lock) -> Condition:
        c = cls.__new__(cls)
        c._attach_state(prim_id)
        c._lock = lock
        return c

    def __reduce__(self) -> tuple:
        return (self._attach, (self._id, self._lock))

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        """Acquires the condition's lock (see ``Lock.acquire``)."""
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Releases the condition's lock."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    async def __aenter__(self) -> bool:
        return await self._lock.acquire_async()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()

    @_named_async
    async def wait_async(self, timeout: float | None = None) -> bool:
        """``wait`` for asyncio, in a task that holds the lock (``async with cond:``): awaits a
        ``notify`` without blocking the event loop; False if ``timeout`` passed first. A
        cancelled awaiter still takes the lock back before ``CancelledError`` goes on, so the
        ``async with`` that holds it releases it, as after a ``wait``.

        >>> import asyncio
        >>> from volley.sync import Condition
        >>> c = Condition()
        >>> async def main():
        ...     async with c:
        ...         return await c.wait_async(timeout=0.01)
        >>> asyncio.run(main())
        False
        >>> c.shutdown()
        """
        from . import _async_prims

        kind, value = await _async_prims.call(
            _core.prim_start,
            "cond_wait",
            self._id,
            _task_holder(),
            timeout=_wait_timeout(timeout),
            finish_on_cancel=True,
        )
        died, notified = _answer(kind, value)
        self._lock.previous_holder_died = died
        return bool(notified)

    async def wait_for_async(
        self, predicate: Callable[[], Any], timeout: float | None = None
    ) -> Any:
        """``wait_for`` for asyncio: awaits until ``predicate()`` is true (checked with the
        lock held), up to ``timeout`` seconds; the predicate's last value."""
        end = None if timeout is None else time.monotonic() + _wait_timeout(timeout)  # type: ignore[operator]
        result = predicate()
        while not result:
            left = None
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    break
            await self.wait_async(left)
            result = predicate()
        return result

    @_named
    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock (every hold of an RLock), waits up to ``timeout`` seconds for a
        ``notify``, and takes the lock again; False if the timeout passed first."""
        me = threading.get_native_id()
        notified, died = _core.cond_wait(self._id, me, _wait_timeout(timeout))
        self._lock.previous_holder_died = died
        return notified

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Waits until ``predicate()`` is true (checked with the lock held), up to ``timeout``
        seconds; the predicate's last value."""
        end = None if timeout is None else time.monotonic() + _wait_timeout(timeout)  # type: ignore[operator]
        result = predicate()
        while not result:
            left = None
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    break
            self.wait(left)
            result = predicate()
        return result

    @_named
    def notify(self, n: int = 1) -> None:
        """Wakes up to ``n`` waiters; the caller must hold the lock."""
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        # The lock's holder: this thread, or the running task that took it with ``async with``.
        _core.cond_notify(self._id, self._lock._me(), n)

    def notify_all(self) -> None:
        """Wakes every waiter; the caller must hold the lock."""
        self.notify(_ALL)

    def shutdown(self) -> None:
        """Drops the condition (its lock stays: shut it down too if nobody needs it)."""
        super().shutdown()
