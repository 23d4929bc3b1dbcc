"""CSP channels (PyCSP's model) on the node's primitive service: rendezvous and buffered
channels with many readers and writers, alternation (``select``), poison, retire and broadcast.

A channel lives in the node of the process that made it (in Rust, ``volley_runtime::prims``);
a ``send``, ``recv`` or ``select`` is one message to the node and its answer, and a blocked op
waits in the node, first come first served. Channels and their ends are passed to tasks and
actors of the same node like any value. Messages are pickled (cloudpickle for what the C
pickler refuses). See docs/channel.md.

>>> from volley.channel import Channel, select
>>> ch = Channel(capacity=2)
>>> ch.send("hello"); ch.recv()
'hello'
>>> a, b = Channel(1), Channel(1)
>>> b.send(42)
>>> select([a.recv, b.recv])
(1, 42)
"""

from __future__ import annotations

import itertools
import pickle
import time
from typing import Any, AsyncIterator, Iterator

from . import _core
from ._queue import _dumps
from ._session import at_shutdown, ensure_init
from .exceptions import ChannelClosed

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelPoisoned",
    "ChannelRetired",
    "ReaderEnd",
    "WriterEnd",
    "select",
    "select_async",
    "poison",
    "retire",
]


class ChannelPoisoned(ChannelClosed):
    """The channel was poisoned: every waiting and later op on it (and a ``select`` with a
    guard on it) fails with this error. PyCSP's ``ChannelPoisonException``."""


class ChannelRetired(ChannelClosed):
    """All the reader ends (writer ends) of the channel retired: it is closed for its writers
    (readers). PyCSP's ``ChannelRetireException``."""


_MY_NODE: list[int] = []

# A message whose buffer (numpy array, bytes) or pickle is at least this big travels through the
# object store: the channel carries its ref, and the node holds the object while the message
# travels (so the sender may drop everything at once); the receiver gets it without a copy.
# Only when the session is one node: in a cluster every message travels inline.
LARGE_MESSAGE = 1 << 20


class _Stored:
    """A large message in the object store: its ref, whether the stored value is the
    message's pickle (else the value itself: a numpy array or buffer), and the node that
    holds the object for the message."""

    __slots__ = ("ref", "pickled", "node")

    def __init__(self, ref: Any, pickled: bool, node: int) -> None:
        self.ref, self.pickled, self.node = ref, pickled, node

    def __reduce__(self) -> tuple:
        return (_Stored, (self.ref, self.pickled, self.node))


def _buffer_size(value: Any) -> int | None:
    t = type(value)
    if t is bytes or t is bytearray:
        return len(value)
    if t is memoryview:
        return value.nbytes
    if t.__module__ == "numpy" and t.__name__ == "ndarray":
        return int(value.nbytes)
    return None


def _encode(value: Any) -> tuple[bytes, bytes | None]:
    """The message for ``value``, and the id of the object the node now holds for it (a large
    message: release it with ``_release`` if the message is not sent)."""
    from ._objects import put

    size = _buffer_size(value)
    if not _single_node():
        # A bare ref unpickled on another node cannot find its object yet: in a cluster a
        # message travels inline (at most MAX_PRIM_ITEM bytes pickled).
        return _dumps(value), None
    if size is None or size < LARGE_MESSAGE:
        data = _dumps(value)
        if len(data) < LARGE_MESSAGE:
            return data, None
        stored = _Stored(put(data), True, _my_node())
    else:
        stored = _Stored(put(value), False, _my_node())
    oid = stored.ref.binary()
    _core.chan_hold([oid], True)
    return pickle.dumps(stored, protocol=5), oid


def _release(oid: bytes | None) -> None:
    if oid is not None:
        _core.chan_hold([oid], False)


def _decode(data: bytes) -> Any:
    value = pickle.loads(data)
    if type(value) is not _Stored:
        return value
    from ._objects import get

    # This process holds the object now (the value got: a view of the store keeps its
    # segment): the node's hold for the message can go.
    ref = value.ref
    try:
        obj = get(ref)
    finally:
        # Only the holding node can let go (a receiver on another node leaves the hold: the
        # object stays until the session ends; see docs/channel.md).
        if value.node == _my_node():
            _core.chan_hold([ref.binary()], False)
    return pickle.loads(obj) if value.pickled else obj


_SINGLE: list[bool] = []


def _forget_session() -> None:
    _SINGLE.clear()
    _MY_NODE.clear()


at_shutdown(_forget_session)


def _single_node() -> bool:
    """Whether this session is one node (not a cluster), asked once per process."""
    if not _SINGLE:
        from ._session import nodes

        _SINGLE.append(len(nodes()) <= 1)
    return _SINGLE[0]


def _my_node() -> int:
    """This process's node id (0 outside a cluster), asked once."""
    if not _MY_NODE:
        from ._runtime_context import _own_node

        _MY_NODE.append(int(_own_node().get("node_id", 0)))
    return _MY_NODE[0]


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return timeout


class Channel:
    """A CSP channel: ``capacity`` 0 is a rendezvous (``send`` returns only once a receiver
    took the item), n > 0 buffers n items (``send`` on a full channel waits: backpressure).
    Any number of processes send and receive; waiting ones are served first come, first served.

    With ``broadcast=True`` every reader end (``reader()``) gets each message, through a buffer
    of its own of ``max(capacity, 1)`` items; a writer waits while some reader's buffer is full,
    and while there is no reader end at all.

    ``send``/``recv`` on the channel itself suit simple use; ``reader()`` and ``writer()`` give
    ends (PyCSP's ``+chan``/``-chan``) that count towards retiring: once every reader end
    retired, writers fail with :class:`ChannelRetired`, and vice versa.

    >>> ch = Channel(capacity=1, name="numbers")
    >>> ch.send(1)
    >>> ch.recv()
    1
    >>> try:
    ...     ch.recv(timeout=0.01)
    ... except TimeoutError as e:
    ...     print(e)
    recv on channel 'numbers' waited 0.01 s for a sender
    """

    def __init__(self, capacity: int = 0, *, broadcast: bool = False, name: str | None = None):
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 0:
            raise ValueError(f"capacity must be 0 (rendezvous) or more, not {capacity}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        ensure_init()
        self._capacity = capacity
        self._broadcast = bool(broadcast)
        self._id = _core.chan_create(capacity, self._broadcast, name or "")
        self._name = name

    @classmethod
    def _attach(cls, chan_id: int, capacity: int, broadcast: bool, name: str | None) -> Channel:
        ch = cls.__new__(cls)
        ch._id, ch._capacity, ch._broadcast, ch._name = chan_id, capacity, broadcast, name
        return ch

    def __reduce__(self) -> tuple:
        return (Channel._attach, (self._id, self._capacity, self._broadcast, self._name))

    def __repr__(self) -> str:
        kind = ", broadcast=True" if self._broadcast else ""
        return f"Channel({self._label()}, capacity={self._capacity}{kind})"

    def _label(self) -> str:
        return repr(self._name) if self._name else f"#{self._id}"

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def name(self) -> str | None:
        return self._name

    def send(self, value: Any, timeout: float | None = None) -> None:
        """Sends ``value``: returns once a receiver took it (capacity 0) or it is buffered,
        waiting up to ``timeout`` seconds (None: for ever); ``TimeoutError`` then."""
        timeout = _check_timeout(timeout)
        data, oid = _encode(value)
        try:
            sent = _core.chan_send(self._id, data, timeout)
        except BaseException:
            _release(oid)
            raise
        if not sent:
            _release(oid)
            raise TimeoutError(
                f"send on channel {self._label()} waited {timeout} s for "
                + ("a receiver" if self._capacity == 0 else "buffer room")
            )

    def recv(self, timeout: float | None = None) -> Any:
        """Receives the next value, waiting up to ``timeout`` seconds (None: for ever) for a
        sender; ``TimeoutError`` then. On a broadcast channel, receive from a ``reader()``."""
        return self._recv(0, timeout)

    def _recv(self, reg: int, timeout: float | None) -> Any:
        data = _core.chan_recv(self._id, reg, _check_timeout(timeout))
        if data is None:
            raise TimeoutError(f"recv on channel {self._label()} waited {timeout} s for a sender")
        return _decode(data)

    def __iter__(self) -> Iterator[Any]:
        """Receives until the channel is poisoned or its writers all retired."""
        return _iterate(lambda: self.recv())

    async def send_async(self, value: Any, timeout: float | None = None) -> None:
        """``send`` for asyncio: awaits the receiver (or buffer room) without blocking the
        event loop. Cancelling the awaiting coroutine withdraws a message not yet taken.

        >>> import asyncio
        >>> ch = Channel(capacity=1)
        >>> async def main():
        ...     await ch.send_async("hi")
        ...     return await ch.recv_async(timeout=5)
        >>> asyncio.run(main())
        'hi'
        """
        from . import _async_prims

        timeout = _check_timeout(timeout)
        data, oid = _encode(value)
        try:
            kind, answer = await _async_prims.call(
                _core.prim_start, "send", self._id, 0, data, timeout=timeout
            )
            if kind == "full":
                raise TimeoutError(
                    f"send on channel {self._label()} waited {timeout} s for "
                    + ("a receiver" if self._capacity == 0 else "buffer room")
                )
            _check_answer(kind, answer)
        except BaseException:
            _release(oid)
            raise

    async def recv_async(self, timeout: float | None = None) -> Any:
        """``recv`` for asyncio: awaits a sender without blocking the event loop. If the
        awaiting coroutine is cancelled, a message already got for it goes back to the
        channel for the next receiver."""
        return await self._recv_async(0, timeout)

    async def _recv_async(self, reg: int, timeout: float | None) -> Any:
        from . import _async_prims

        timeout = _check_timeout(timeout)
        kind, answer = await _async_prims.call(
            _core.prim_start, "recv", self._id, reg, timeout=timeout
        )
        if kind == "empty":
            raise TimeoutError(f"recv on channel {self._label()} waited {timeout} s for a sender")
        _check_answer(kind, answer)
        return _decode(answer)

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for value in channel``: receives until the channel is poisoned or its
        writers all retired."""
        return _aiterate(lambda: self.recv_async())

    def reader(self) -> ReaderEnd:
        """A reader end (PyCSP's ``+chan``): it counts among the channel's readers until it
        retires (or is dropped, or its process dies)."""
        return ReaderEnd(self)

    def writer(self) -> WriterEnd:
        """A writer end (PyCSP's ``-chan``): it counts among the channel's writers until it
        retires (or is dropped, or its process dies)."""
        return WriterEnd(self)

    def poison(self) -> None:
        """Poisons the channel: every waiting and later op on it, from every process, raises
        :class:`ChannelPoisoned`; buffered items are dropped."""
        _core.chan_poison(self._id)


def _iterate(recv: Any) -> Iterator[Any]:
    while True:
        try:
            value = recv()
        except (ChannelPoisoned, ChannelRetired):
            return
        yield value


def _check_answer(kind: str, answer: Any) -> None:
    """Raises the error an awaited channel op's answer carries (as the blocking op would)."""
    if kind == "poisoned":
        raise ChannelPoisoned(answer)
    if kind == "retired":
        raise ChannelRetired(answer)
    if kind == "closed":
        raise ChannelClosed(answer)
    if kind == "error":
        raise ValueError(answer)


async def _aiterate(recv: Any) -> AsyncIterator[Any]:
    while True:
        try:
            value = await recv()
        except (ChannelPoisoned, ChannelRetired):
            return
        yield value


class _End:
    """A registered end of a channel; retires on ``retire()``, on leaving a ``with`` block,
    and when its process dies. Pickled, it registers a new end that the unpickling process
    takes over, so it keeps counting while it travels."""

    _reader = False

    def __init__(self, channel: Channel, reg: int | None = None) -> None:
        self._chan = channel
        self._retired = False
        self._reg = _core.chan_join(channel._id, self._reader) if reg is None else reg

    @classmethod
    def _claim(cls, channel: Channel, reg: int) -> _End:
        return cls(channel, _core.chan_claim(channel._id, reg, cls._reader))

    def __reduce__(self) -> tuple:
        if self._retired:
            raise ChannelRetired(f"{self!r} was retired: it cannot be passed on")
        reg = _core.chan_join(self._chan._id, self._reader, True)
        return (type(self)._claim, (self._chan, reg))

    def __repr__(self) -> str:
        state = ", retired" if self._retired else ""
        return f"{type(self).__name__}({self._chan._label()}{state})"

    @property
    def channel(self) -> Channel:
        return self._chan

    def _check(self) -> None:
        if self._retired:
            raise ChannelRetired(f"{self!r} was retired")

    def retire(self) -> None:
        """Retires this end: once every reader (writer) end of the channel retired, its
        writers (readers) fail with :class:`ChannelRetired`. Retiring again does nothing."""
        if not self._retired:
            self._retired = True
            _core.chan_leave(self._reg, True)

    def poison(self) -> None:
        """Poisons the channel (see :meth:`Channel.poison`)."""
        self._chan.poison()

    def __enter__(self) -> _End:
        return self

    def __exit__(self, *exc: object) -> None:
        self.retire()

    def __del__(self) -> None:
        # Dropped without retiring: it stops counting, and closes nothing.
        if not getattr(self, "_retired", True):
            self._retired = True
            try:
                _core.chan_leave(self._reg, False)
            except Exception:
                pass  # The session is gone, and the channel with it.


class ReaderEnd(_End):
    """The reading end of a channel (``channel.reader()``); iterating it receives until the
    channel is poisoned or all its writers retired.

    >>> ch = Channel(capacity=3)
    >>> with ch.writer() as out, ch.reader() as inp:
    ...     for i in range(3):
    ...         out(i)
    ...     out.retire()
    ...     list(inp)
    [0, 1, 2]
    """

    _reader = True

    def recv(self, timeout: float | None = None) -> Any:
        """Receives the next value (see :meth:`Channel.recv`)."""
        self._check()
        return self._chan._recv(self._reg if self._chan._broadcast else 0, timeout)

    __call__ = recv  # PyCSP: ``value = cin()``

    def __iter__(self) -> Iterator[Any]:
        return _iterate(self.recv)

    async def recv_async(self, timeout: float | None = None) -> Any:
        """Receives the next value for asyncio (see :meth:`Channel.recv_async`)."""
        self._check()
        return await self._chan._recv_async(self._reg if self._chan._broadcast else 0, timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for value in reader``: receives until the channel is poisoned or all its
        writers retired.

        >>> import asyncio
        >>> ch = Channel(capacity=2)
        >>> async def main():
        ...     with ch.writer() as out, ch.reader() as inp:
        ...         await out.send_async(1); await out.send_async(2)
        ...         out.retire()
        ...         return [v async for v in inp]
        >>> asyncio.run(main())
        [1, 2]
        """
        return _aiterate(self.recv_async)


class WriterEnd(_End):
    """The writing end of a channel (``channel.writer()``); calling it sends (PyCSP's
    ``cout(value)``)."""

    def send(self, value: Any, timeout: float | None = None) -> None:
        """Sends ``value`` (see :meth:`Channel.send`)."""
        self._check()
        self._chan.send(value, timeout)

    __call__ = send

    async def send_async(self, value: Any, timeout: float | None = None) -> None:
        """Sends ``value`` for asyncio (see :meth:`Channel.send_async`)."""
        self._check()
        await self._chan.send_async(value, timeout)


def _guard(g: Any) -> tuple[Channel, int, Any]:
    """(channel, reader registration, a 1-tuple of the value to send or None) of one guard."""
    if isinstance(g, tuple):
        if len(g) != 2:
            raise ValueError(f"a send guard is (channel.send, value), not a {len(g)}-tuple")
        method, value = g
        target = getattr(method, "__self__", None)
        if getattr(method, "__name__", None) != "send" or not isinstance(
            target, (Channel, WriterEnd)
        ):
            raise TypeError(f"a send guard is (channel.send, value), not ({method!r}, ...)")
        if isinstance(target, WriterEnd):
            target._check()
            target = target._chan
        return target, 0, (value,)
    target = getattr(g, "__self__", None)
    if getattr(g, "__name__", None) not in ("recv", "__call__") or not isinstance(
        target, (Channel, ReaderEnd)
    ):
        raise TypeError(f"a select guard is channel.recv or (channel.send, value), not {g!r}")
    if isinstance(target, ReaderEnd):
        target._check()
        reg = target._reg if target._chan._broadcast else 0
        return target._chan, reg, None
    return target, 0, None


def select(
    guards: list,
    timeout: float | None = None,
    skip: bool = False,
    priority: bool = False,
) -> tuple[int | None, Any]:
    """Alternation: commits exactly one ready guard and returns ``(index, value)``: the value a
    recv guard (``ch.recv``) received, or None for a send guard (``(ch.send, value)``).

    Among several ready guards it picks fairly (a rotating start, PyCSP's ``FairSelect``), or
    the first in order with ``priority=True`` (``PriSelect``). With no ready guard it waits up
    to ``timeout`` seconds (``TimeoutError`` then), or with ``skip=True`` returns
    ``(None, None)`` at once. A poisoned (retired) guard's channel raises
    :class:`ChannelPoisoned` (:class:`ChannelRetired`).

    Guards on channels of one node are committed there atomically, and a waiting select is
    parked in that node. Guards on channels of several nodes are tried node by node, each try
    atomic at its node (so exactly one guard fires), in a rotating order (by first guard with
    ``priority``) and, while none is ready, again after a pause that grows to 5 ms: a waiting
    cross-node select polls instead of parking.

    >>> a, b = Channel(1), Channel(1)
    >>> select([a.recv, (b.send, "x")], priority=True)
    (1, None)
    >>> select([a.recv], skip=True)
    (None, None)
    >>> b.recv()
    'x'
    """
    if not isinstance(guards, (list, tuple)) or not guards:
        raise ValueError("select needs a non-empty list of guards (ch.recv or (ch.send, value))")
    parsed = [_guard(g) for g in guards]
    timeout = _check_timeout(timeout)
    held: list[bytes | None] = []
    wire = []
    try:
        for ch, reg, send in parsed:
            data, oid = _encode(send[0]) if send is not None else (None, None)
            held.append(oid)
            wire.append((ch._id, reg, data))
        if len(_homes(wire)) > 1:
            answer = _select_across_nodes(wire, timeout, bool(skip), bool(priority))
        else:
            answer = _core.chan_select(wire, timeout, bool(skip), bool(priority))
    except BaseException:
        for oid in held:
            _release(oid)
        raise
    for i, oid in enumerate(held):
        if answer is None or answer[0] != i:
            _release(oid)  # a send guard that did not fire
    if answer is None:
        if skip:
            return None, None
        names = ", ".join(ch._label() for ch, _, _ in parsed)
        raise TimeoutError(f"select on channels {names} waited {timeout} s for a ready guard")
    index, data = answer
    return index, (None if data is None else _decode(data))


# A primitive's id names its home node above this bit (volley_proto::PRIM_HOME_SHIFT).
_HOME_SHIFT = 40
_POLL_MAX = 0.005
_select_turn = itertools.count()


def _homes(wire: list) -> list[list[int]]:
    """The guards' indexes grouped by their channels' home node, in the order of each node's
    first guard."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(wire):
        groups.setdefault(g[0] >> _HOME_SHIFT, []).append(i)
    return list(groups.values())


def _select_round(
    wire: list, order: list[list[int]], priority: bool
) -> tuple[int, bytes | None] | None:
    """One round of a select over channels of several nodes: a non-blocking select at each
    node in turn (atomic there, so at most one guard fires); the first that fires."""
    start = 0 if priority else next(_select_turn) % len(order)
    for k in range(len(order)):
        idx = order[(start + k) % len(order)]
        got = _core.chan_select([wire[i] for i in idx], None, True, priority)
        if got is not None:
            return idx[got[0]], got[1]
    return None


def _pause(pause: float, deadline: float | None) -> float | None:
    """How long to wait before the next round (None: the deadline passed)."""
    if deadline is None:
        return pause
    left = deadline - time.monotonic()
    return None if left <= 0 else min(pause, left)


def _select_across_nodes(
    wire: list, timeout: float | None, skip: bool, priority: bool
) -> tuple[int, bytes | None] | None:
    """A select over channels of several nodes: rounds of :func:`_select_round` until a guard
    fires, ``timeout`` passes or, with ``skip``, after one round."""
    order = _homes(wire)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.0002
    while (got := _select_round(wire, order, priority)) is None:
        step = None if skip else _pause(pause, deadline)
        if step is None:
            return None
        time.sleep(step)
        pause = min(pause * 2, _POLL_MAX)
    return got


async def _select_across_nodes_async(
    wire: list, timeout: float | None, priority: bool
) -> tuple[int, bytes | None] | None:
    """:func:`_select_across_nodes` for asyncio: the loop runs between rounds (a round does
    not wait), and a cancelled awaiter fires no guard."""
    import asyncio

    order = _homes(wire)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.0002
    while (got := _select_round(wire, order, priority)) is None:
        step = _pause(pause, deadline)
        if step is None:
            return None
        await asyncio.sleep(step)
        pause = min(pause * 2, _POLL_MAX)
    return got


async def select_async(
    guards: list, timeout: float | None = None, priority: bool = False
) -> tuple[int, Any]:
    """:func:`select` for asyncio: awaits a ready guard without blocking the event loop;
    ``TimeoutError`` after ``timeout`` seconds. If the awaiting coroutine is cancelled, no
    guard fires (a message a recv guard got goes back to its channel).

    >>> import asyncio
    >>> a, b = Channel(1), Channel(1)
    >>> b.send(7)
    >>> asyncio.run(select_async([a.recv, b.recv]))
    (1, 7)
    """
    from . import _async_prims

    if not isinstance(guards, (list, tuple)) or not guards:
        raise ValueError("select needs a non-empty list of guards (ch.recv or (ch.send, value))")
    parsed = [_guard(g) for g in guards]
    timeout = _check_timeout(timeout)
    held: list[bytes | None] = []
    wire = []
    answer = None
    try:
        for ch, reg, send in parsed:
            data, oid = _encode(send[0]) if send is not None else (None, None)
            held.append(oid)
            wire.append((ch._id, reg, data))
        if len(_homes(wire)) > 1:
            answer = await _select_across_nodes_async(wire, timeout, bool(priority))
        else:
            kind, value = await _async_prims.call(
                _core.prim_start_select, wire, bool(priority), timeout=timeout
            )
            if kind == "selected":
                answer = value
            elif kind != "empty":
                _check_answer(kind, value)
    finally:
        for i, oid in enumerate(held):
            if answer is None or answer[0] != i:
                _release(oid)  # a send guard that did not fire
    if answer is None:
        names = ", ".join(ch._label() for ch, _, _ in parsed)
        raise TimeoutError(f"select on channels {names} waited {timeout} s for a ready guard")
    index, data = answer
    return index, (None if data is None else _decode(data))


def poison(*ends: Channel | _End) -> None:
    """Poisons each channel (PyCSP's ``poison(chan_end, ...)``).

    >>> from volley.channel import Channel, ChannelPoisoned, poison
    >>> a, b = Channel(1), Channel(1)
    >>> poison(a, b.writer())
    >>> try:
    ...     b.recv()
    ... except ChannelPoisoned:
    ...     print("poisoned")
    poisoned
    """
    for e in ends:
        e.poison()


def retire(*ends: _End) -> None:
    """Retires each end (PyCSP's ``retire(chan_end, ...)``).

    >>> from volley.channel import Channel, ChannelRetired, retire
    >>> ch = Channel(1)
    >>> out = ch.writer()
    >>> retire(out)
    >>> try:
    ...     ch.recv()
    ... except ChannelRetired as e:
    ...     print("retired")
    retired
    """
    for e in ends:
        e.retire()
