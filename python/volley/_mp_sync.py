"""``multiprocessing``'s queues and synchronisation objects over volley's own.

Each class is the ``volley.util.queue`` or ``volley.sync`` class (so it is shared by the
driver, tasks, actors and ``Process`` children on every node, and picklable to any of them)
with ``multiprocessing``'s signatures and rules where they differ from ``threading``'s:
``acquire(block=True, timeout=None)`` with a negative timeout meaning "do not wait" and a
timeout ignored when not blocking, ``Queue.close()`` making later ``put``/``get`` raise
``ValueError``, ``JoinableQueue.join()`` returning None, ``Event``'s ``repr``.
"""

from __future__ import annotations

from typing import Any, Callable

from . import sync as _sync
from .util.queue import Empty, Full
from .util.queue import JoinableQueue as _JoinableQueue
from .util.queue import Queue as _Queue

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Queue",
    "RLock",
    "Semaphore",
    "SimpleQueue",
]


def _wait_for(block: bool, timeout: float | None) -> tuple[bool, float | None]:
    """``multiprocessing``'s (block, timeout) as volley's: no timeout without blocking,
    None waits for ever, a negative timeout waits not at all."""
    if not block:
        return False, None
    if timeout is None:
        return True, None
    return True, max(float(timeout), 0.0)


# ------------------------------------------------------------------------------ queues


class Queue(_Queue):
    """``multiprocessing.Queue(maxsize=0)``: a queue of the node that made it, shared by
    every process of the cluster. ``put``/``get`` raise ``queue.Full``/``queue.Empty``;
    after ``close()`` this handle's ``put`` and ``get`` raise ``ValueError``.

    >>> from volley.multiprocessing import Queue
    >>> q = Queue()
    >>> q.put("job"); q.get(timeout=5)
    'job'
    >>> q.close(); q.put("late")
    Traceback (most recent call last):
    ValueError: Queue Queue(...) is closed
    """

    #: Whether this handle was closed (a handle unpickled elsewhere starts open).
    _closed = False

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        super().__init__(maxsize)

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Appends ``obj``, waiting up to ``timeout`` seconds for room; ``queue.Full`` if
        none came."""
        self._check_closed()
        block, timeout = _wait_for(block, timeout)
        super().put(obj, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes the first item, waiting up to ``timeout`` seconds; ``queue.Empty`` if none
        came."""
        self._check_closed()
        block, timeout = _wait_for(block, timeout)
        return super().get(block, timeout)

    def close(self) -> None:
        """This process puts and gets no more through this handle (others still can: the
        queue lives in its node until ``shutdown()`` or the session's end)."""
        self._closed = True


class JoinableQueue(Queue, _JoinableQueue):
    """``multiprocessing.JoinableQueue``: a :class:`Queue` with ``task_done`` and ``join``.

    >>> from volley.multiprocessing import JoinableQueue
    >>> q = JoinableQueue()
    >>> q.put(1); q.get(timeout=5)
    1
    >>> q.task_done(); q.join()
    """

    def task_done(self) -> None:
        """Marks one item got as processed; ``ValueError`` if called more times than items
        were put."""
        try:
            super().task_done()
        except ValueError as e:
            raise ValueError(f"task_done() called too many times ({e})") from None

    def join(self, timeout: float | None = None) -> None:  # type: ignore[override]
        """Waits until every item put has been marked done (``timeout``, a volley addition:
        ``TimeoutError`` saying how many are left if that passes first)."""
        if super().join(timeout):
            return
        raise TimeoutError(
            f"JoinableQueue.join(): items put are still not marked done with task_done() after "
            f"{timeout} s ({self.qsize()} not even taken)"
        )


class SimpleQueue:
    """``multiprocessing.SimpleQueue``: ``put``, ``get`` (waits), ``empty``, ``close``.

    >>> from volley.multiprocessing import SimpleQueue
    >>> q = SimpleQueue()
    >>> q.empty(); q.put(3); q.get()
    True
    3
    """

    def __init__(self, *, ctx: Any = None) -> None:
        self._queue = Queue()

    def __reduce__(self) -> tuple:
        return (_simple_queue, (self._queue,))

    def __repr__(self) -> str:
        return f"Simple{self._queue!r}"

    @property
    def closed(self) -> bool:
        return self._queue._closed

    def put(self, obj: Any) -> None:
        """Appends ``obj``."""
        self._queue.put(obj)

    def get(self) -> Any:
        """Takes the first item, waiting for one."""
        return self._queue.get()

    def empty(self) -> bool:
        """Whether the queue holds no item now."""
        return self._queue.empty()

    def close(self) -> None:
        """This handle puts and gets no more. Closing again does nothing."""
        self._queue.close()


def _simple_queue(queue: Queue) -> SimpleQueue:
    s = SimpleQueue.__new__(SimpleQueue)
    s._queue = queue
    return s


# ------------------------------------------------------------------------ locks & co.


class _Acquire:
    """``multiprocessing``'s ``acquire(block=True, timeout=None)`` (``threading``'s names are
    ``blocking`` and ``timeout=-1``) on a ``volley.sync`` lock or semaphore, and ``with``."""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Takes the lock (or a unit): at once if ``block`` is false, else waiting up to
        ``timeout`` seconds (None: for ever); whether it got it."""
        return super().acquire(*_wait_for(block, timeout))  # type: ignore[misc]

    def __enter__(self) -> bool:
        return self.acquire()


class Lock(_Acquire, _sync.Lock):
    """``multiprocessing.Lock``: ``acquire(block=True, timeout=None)``, ``release``, ``with``.
    Releasing a lock nobody holds raises ``RuntimeError``.

    >>> from volley.multiprocessing import Lock
    >>> lock = Lock()
    >>> lock.acquire(), lock.acquire(False), lock.acquire(timeout=0.01)
    (True, False, False)
    >>> lock.release()
    """

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__()


class RLock(_Acquire, _sync.RLock):
    """``multiprocessing.RLock``: a lock its owner may take again (and must release as often).

    >>> from volley.multiprocessing import RLock
    >>> r = RLock()
    >>> r.acquire(), r.acquire(); r.release(); r.release()
    (True, True)
    """

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__()


class Semaphore(_Acquire, _sync.Semaphore):
    """``multiprocessing.Semaphore(value=1)``: ``acquire(block, timeout)``, ``release()``,
    ``get_value()``.

    >>> from volley.multiprocessing import Semaphore
    >>> s = Semaphore(2)
    >>> s.acquire(), s.acquire(), s.acquire(False), s.get_value()
    (True, True, False, 0)
    >>> s.release(); s.get_value()
    1
    """

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        super().__init__(value)


class BoundedSemaphore(_Acquire, _sync.BoundedSemaphore):
    """``multiprocessing.BoundedSemaphore(value=1)``: releasing past ``value`` raises
    ``ValueError``.

    >>> from volley.multiprocessing import BoundedSemaphore
    >>> b = BoundedSemaphore(1)
    >>> b.release()
    Traceback (most recent call last):
    ValueError: ...
    """

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        super().__init__(value)


class Event(_sync.Event):
    """``multiprocessing.Event``: ``set``, ``clear``, ``is_set``, ``wait(timeout)``.

    >>> from volley.multiprocessing import Event
    >>> e = Event()
    >>> e.wait(0.01), repr(e).endswith("unset>")
    (False, True)
    >>> e.set(); e.wait()
    True
    """

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__()

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the flag is set, up to ``timeout`` seconds; whether it is set."""
        if timeout is not None and timeout < 0:
            timeout = 0
        return super().wait(timeout)

    def __repr__(self) -> str:
        state = "set" if self.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {state}>"


class Condition(_sync.Condition):
    """``multiprocessing.Condition(lock=None)``: ``wait``, ``wait_for``, ``notify(n=1)``,
    ``notify_all`` over a volley ``Lock`` or ``RLock`` (an ``RLock`` by default).

    >>> from volley.multiprocessing import Condition
    >>> c = Condition()
    >>> with c:
    ...     c.wait(0.01)
    False
    """

    def __init__(self, lock: Any = None, *, ctx: Any = None) -> None:
        super().__init__(RLock() if lock is None else lock)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Takes the condition's lock, as ``Lock.acquire``."""
        return super().acquire(*_wait_for(block, timeout))

    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock, waits for a notify up to ``timeout`` seconds, takes the lock
        back; False if the time ran out."""
        if timeout is not None and timeout < 0:
            timeout = 0
        return super().wait(timeout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Waits until ``predicate()`` is true, up to ``timeout`` seconds; its last value."""
        if timeout is not None and timeout < 0:
            timeout = 0
        return super().wait_for(predicate, timeout)


class Barrier(_sync.Barrier):
    """``multiprocessing.Barrier(parties, action=None, timeout=None)``.

    >>> from volley.multiprocessing import Barrier
    >>> Barrier(1).wait()
    0
    """

    def __init__(
        self,
        parties: int,
        action: Callable[[], Any] | None = None,
        timeout: float | None = None,
        *,
        ctx: Any = None,
    ) -> None:
        super().__init__(parties, action, timeout)


__all__ += ["Empty", "Full"]
