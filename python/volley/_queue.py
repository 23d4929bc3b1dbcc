"""A queue on this node's primitive service: ``multiprocessing.Queue``'s and Ray's
``util.queue.Queue``'s methods, for the driver, tasks and actors of one node.

The queue's items live in the node (in Rust, ``volley_runtime::prims``), not in an actor: a
``put`` or ``get`` is one message to the node and its answer, and a blocked ``get`` waits in
the node, first come first served. Items are pickled (the C pickler, or cloudpickle for what
it cannot pickle, such as lambdas).
"""

from __future__ import annotations

import pickle
import queue as _stdqueue
from typing import Any

from . import _core
from ._session import ensure_init

Empty = _stdqueue.Empty
Full = _stdqueue.Full


def _dumps(item: Any) -> bytes:
    try:
        return pickle.dumps(item, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle  # lambdas, local classes: what the C pickler refuses

        return cloudpickle.dumps(item, protocol=5)


def _timeout(block: bool, timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be a non-negative number, not {timeout!r}")
    return timeout if block else None


def _check_answer(kind: str, value: Any) -> None:
    """Raises the error an awaited queue op's answer carries (as the blocking op would)."""
    if kind == "closed":
        from .exceptions import ChannelClosed

        raise ChannelClosed(value)
    if kind == "error":
        raise ValueError(value)


class Queue:
    """A first-in first-out queue that tasks, actors and the driver of one node share.

    ``maxsize`` bounds it (0: unbounded): ``put`` on a full queue waits for room. The queue
    lives in the node that made it until ``shutdown()`` (or the node's end); it is passed to
    tasks and actors like any value. Ops on a shut queue raise ``volley.exceptions.ChannelClosed``.

    >>> from volley.util.queue import Queue, Empty
    >>> q = Queue(maxsize=2)
    >>> q.put("a"); q.put_nowait("b")
    >>> q.full(), q.qsize()
    (True, 2)
    >>> q.get(), q.get_nowait()
    ('a', 'b')
    >>> try:
    ...     q.get(timeout=0.01)
    ... except Empty:
    ...     print("empty")
    empty
    >>> q.shutdown()
    """

    def __init__(self, maxsize: int = 0) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        ensure_init()
        self._maxsize = max(maxsize, 0)
        self._id = _core.queue_create(self._maxsize)

    @classmethod
    def _attach(cls, queue_id: int, maxsize: int) -> Queue:
        q = cls.__new__(cls)
        q._id, q._maxsize = queue_id, maxsize
        return q

    def __reduce__(self) -> tuple:
        return (self._attach, (self._id, self._maxsize))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id}, maxsize={self._maxsize})"

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Appends ``item``, waiting up to ``timeout`` seconds (None: for ever) for room in a
        full queue; raises ``queue.Full`` if there is none (at once when ``block`` is false)."""
        # An unbounded queue always has room: a worker sends the item without waiting for
        # the node's answer (a failure, such as a shut queue, raises at its next queue op).
        unbounded = self._maxsize == 0
        if not _core.queue_put(self._id, _dumps(item), block, _timeout(block, timeout), unbounded):
            raise Full

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes the first item, waiting up to ``timeout`` seconds (None: for ever) for one;
        raises ``queue.Empty`` if none came (at once when ``block`` is false)."""
        data = _core.queue_get(self._id, block, _timeout(block, timeout))
        if data is None:
            raise Empty
        return pickle.loads(data)

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio (Ray's name): awaits room without blocking the event loop.
        Cancelling the awaiting coroutine withdraws the item if it was not put yet.

        >>> import asyncio
        >>> from volley.util.queue import Queue
        >>> q = Queue()
        >>> async def main():
        ...     await q.put_async("x")
        ...     return await q.get_async(timeout=5)
        >>> asyncio.run(main())
        'x'
        >>> q.shutdown()
        """
        if not block or self._maxsize == 0:
            # Answered at once (an unbounded queue always has room): nothing to await.
            return self.put(item, block=False)
        from . import _async_prims

        timeout = _async_prims.check_timeout(timeout)
        kind, value = await _async_prims.call(
            _core.prim_start, "put", self._id, 0, _dumps(item), timeout=timeout
        )
        if kind == "full":
            raise Full
        _check_answer(kind, value)

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio (Ray's name): awaits an item without blocking the event loop;
        ``queue.Empty`` if none came within ``timeout`` seconds. If the awaiting coroutine is
        cancelled (``task.cancel()``, ``asyncio.wait_for``), an item already got for it goes
        back to the head of the queue: nothing is lost."""
        if not block:
            return self.get(block=False)
        from . import _async_prims

        timeout = _async_prims.check_timeout(timeout)
        kind, value = await _async_prims.call(_core.prim_start, "get", self._id, timeout=timeout)
        if kind == "empty":
            raise Empty
        _check_answer(kind, value)
        return pickle.loads(value)

    async def join_async(self, timeout: float | None = None) -> bool:
        """``join`` for asyncio: awaits until every item put has been marked done; False if
        ``timeout`` seconds passed first."""
        from . import _async_prims

        timeout = _async_prims.check_timeout(timeout)
        kind, value = await _async_prims.call(_core.prim_start, "join", self._id, timeout=timeout)
        if kind == "empty":
            return False
        _check_answer(kind, value)
        return True

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def put_nowait_batch(self, items: list) -> None:
        """Puts each of ``items`` without waiting (Ray's name); raises ``queue.Full`` at the
        first that finds the queue full (those before it stay put)."""
        for item in items:
            self.put_nowait(item)

    def get_nowait_batch(self, num_items: int) -> list:
        """Takes ``num_items`` items without waiting (Ray's name); raises ``queue.Empty`` if
        fewer are there (taking none)."""
        if num_items > self.qsize():
            raise Empty(f"fewer than {num_items} items in the queue")
        return [self.get_nowait() for _ in range(num_items)]

    def qsize(self) -> int:
        """How many items the queue holds now."""
        return _core.queue_size(self._id)

    size = qsize  # Ray's name

    def empty(self) -> bool:
        """Whether the queue holds no item now."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether a bounded queue holds ``maxsize`` items now."""
        return self._maxsize > 0 and self.qsize() >= self._maxsize

    def task_done(self) -> None:
        """Marks one item got earlier as processed (``JoinableQueue``); ``ValueError`` if
        called more times than items were put."""
        _core.queue_task_done(self._id)

    def join(self, timeout: float | None = None) -> bool:
        """Waits until every item put has been marked done with ``task_done`` (``JoinableQueue``);
        False if ``timeout`` seconds passed first."""
        return _core.queue_join(self._id, _timeout(True, timeout))

    def shutdown(self) -> None:
        """Shuts the queue down for every process: its items are dropped, and every waiting and
        later op raises ``ChannelClosed``. Shutting it again does nothing."""
        _core.queue_close(self._id)

    def close(self) -> None:
        """``multiprocessing.Queue.close``: nothing to release in this process (the queue lives
        in the node until ``shutdown``)."""

    def join_thread(self) -> None:
        """``multiprocessing.Queue.join_thread``: there is no feeder thread to wait for."""

    def cancel_join_thread(self) -> None:
        """``multiprocessing.Queue.cancel_join_thread``: there is no feeder thread."""


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: a :class:`Queue` (every volley queue counts unfinished
    items for ``task_done``/``join``).

    >>> from volley.util.queue import JoinableQueue
    >>> q = JoinableQueue()
    >>> q.put(1); q.get()
    1
    >>> q.task_done(); q.join()
    True
    >>> q.shutdown()
    """
