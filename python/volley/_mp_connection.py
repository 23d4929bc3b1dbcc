"""``multiprocessing.Pipe`` on volley channels: connections that work between processes of
any node.

A duplex pipe is two buffered ``volley.channel`` channels, one each way; a ``Connection`` holds
the reader end of one and the writer end of the other (``duplex=False``: one channel, a
read-only and a write-only connection). What ``multiprocessing`` gets from the operating
system's pipe follows from the channel's ends: ``close()`` retires this connection's ends, and
a process that dies retires the ends it held, so the other side's ``recv`` raises ``EOFError``
once the buffered messages are read, and its ``send`` raises ``BrokenPipeError``. As with a
pipe, every copy of a connection counts: a parent that passed ``child_conn`` to a ``Process``
and kept its own copy open does not see EOF until it closes that copy too.

``send(obj)`` and ``send_bytes(buf)`` travel as what they are (the object pickled once by the
channel, large numpy arrays through the object store on one node), tagged, so that ``recv``
after ``send_bytes`` unpickles the bytes and ``recv_bytes`` after ``send`` gets the pickle,
as with ``multiprocessing``.
"""

from __future__ import annotations

import collections
import os
import pickle
import threading
import time
from typing import Any

from .channel import Channel, ChannelRetired
from .exceptions import ChannelClosed

__all__ = ["BufferTooShort", "Connection", "Pipe"]

from multiprocessing import AuthenticationError, BufferTooShort  # noqa: E402, F401

#: Messages a pipe buffers one way before ``send`` waits (an OS pipe holds 64 KiB).
PIPE_CAPACITY = 1024

#: Messages ``fileno()``'s thread receives ahead of the reader (its pipe then holds as many
#: bytes, far below a pipe's 64 KiB, so its writes never block).
_PUMP_AHEAD = 1024

_OBJ, _BYTES = 0, 1
_EOF = object()


class Connection:
    """One end of a ``Pipe``: ``send``/``recv`` of picklable objects, ``send_bytes``/
    ``recv_bytes``/``recv_bytes_into`` of bytes, ``poll(timeout)``, ``close``, ``fileno``.
    Picklable: pass it to a ``Process``, a task or an actor on any node.

    >>> from volley.multiprocessing import Pipe
    >>> a, b = Pipe()
    >>> a.send({"x": 1}); b.recv()
    {'x': 1}
    >>> b.send_bytes(b"raw"); a.poll(1), a.recv_bytes()
    (True, b'raw')
    >>> b.close(); a.recv()
    Traceback (most recent call last):
    EOFError: the other end of the pipe was closed
    """

    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader = reader
        self._writer = writer
        self._init_local()

    def _init_local(self) -> None:
        self._closed = False
        self._stash: collections.deque = collections.deque()  # received, not yet read
        self._lock = threading.Lock()
        self._pump: _Pump | None = None

    def __reduce__(self) -> tuple:
        self._check_closed()
        if self._stash:
            raise ValueError(
                "a Connection holding a message it received with poll() cannot be pickled: "
                "recv() it first"
            )
        return (_rebuild, (self._reader, self._writer))

    def __repr__(self) -> str:
        mode = "".join(m for m, end in (("r", self._reader), ("w", self._writer)) if end)
        return f"<Connection {mode}{' closed' if self._closed else ''}>"

    # -------------------------------------------------------------- state

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called on this connection."""
        return self._closed

    @property
    def readable(self) -> bool:
        """Whether this connection can receive."""
        return self._reader is not None

    @property
    def writable(self) -> bool:
        """Whether this connection can send."""
        return self._writer is not None

    def _check_closed(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def _check_readable(self) -> None:
        self._check_closed()
        if self._reader is None:
            raise OSError("connection is write-only")

    def _check_writable(self) -> None:
        self._check_closed()
        if self._writer is None:
            raise OSError("connection is read-only")

    def close(self) -> None:
        """Closes this connection: the other side's ``recv`` raises ``EOFError`` once no open
        copy of this end is left. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        for end in (self._reader, self._writer):
            if end is not None:
                try:
                    end.retire()
                except ChannelClosed:
                    pass
        if self._pump is not None:
            self._pump.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # As a pipe's fd is closed with its object: the other side sees EOF.
        try:
            self.close()
        except Exception:
            pass

    # -------------------------------------------------------------- sending

    def _send(self, message: tuple) -> None:
        self._check_writable()
        try:
            self._writer.send(message)
        except ChannelRetired:
            raise BrokenPipeError(32, "the other end of the pipe was closed") from None
        except ChannelClosed as e:
            raise BrokenPipeError(32, f"the pipe is gone: {e}") from None

    def send(self, obj: Any) -> None:
        """Sends ``obj`` (pickled) to the other end."""
        self._send((_OBJ, obj))

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Sends ``size`` bytes of the bytes-like ``buf`` from ``offset`` as one message."""
        m = memoryview(buf).cast("B")
        if offset < 0:
            raise ValueError("offset is negative")
        if len(m) < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = len(m) - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > len(m):
            raise ValueError("buffer length < offset + size")
        self._send((_BYTES, bytes(m[offset : offset + size])))

    # -------------------------------------------------------------- receiving

    def _take(self, timeout: float | None) -> tuple | object | None:
        """The next message (or ``_EOF``), waiting up to ``timeout`` s (None: for ever);
        None if none came."""
        if self._stash:
            return self._stash.popleft()
        if self._pump is not None:
            return self._pump.take(timeout)
        try:
            return self._reader.recv(timeout=timeout)
        except TimeoutError:
            return None
        except ChannelRetired:
            return _EOF
        except ChannelClosed:
            return _EOF

    def _next(self) -> tuple:
        self._check_readable()
        with self._lock:
            message = self._take(None)
        if message is _EOF:
            self._stash.appendleft(_EOF)  # EOF stays EOF
            raise EOFError("the other end of the pipe was closed")
        assert isinstance(message, tuple)
        return message

    def recv(self) -> Any:
        """The next object the other end sent (waits for one); ``EOFError`` once the other
        end is closed and nothing is left."""
        kind, payload = self._next()
        return pickle.loads(payload) if kind == _BYTES else payload

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """The next message as bytes; ``OSError`` (and this connection closed) if it is
        longer than ``maxlength``."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._bytes(self._next())
        if maxlength is not None and len(data) > maxlength:
            self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Reads the next message into the writable buffer ``buf`` at byte ``offset``; its
        length. ``BufferTooShort`` (holding the message) if it does not fit."""
        m = memoryview(buf).cast("B")
        if offset < 0 or offset > len(m):
            raise ValueError("offset out of bounds" if offset >= 0 else "negative offset")
        data = self._bytes(self._next())
        if len(data) > len(m) - offset:
            raise BufferTooShort(data)
        m[offset : offset + len(data)] = data
        return len(data)

    @staticmethod
    def _bytes(message: tuple) -> bytes:
        kind, payload = message
        return payload if kind == _BYTES else pickle.dumps(payload, protocol=5)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or EOF) is there to read, waiting up to ``timeout`` seconds
        (None: for ever)."""
        self._check_readable()
        if timeout is not None and timeout < 0:
            timeout = 0.0
        with self._lock:
            if self._stash:
                return True
            if self._pump is not None:
                return self._pump.ready(timeout)
            message = self._take(timeout)
            if message is None:
                return False
            self._stash.append(message)
            return True

    def fileno(self) -> int:
        """A file descriptor that is readable while a message (or EOF) waits here, for
        ``select``/``multiprocessing.connection.wait``. The first call starts a thread that
        receives this connection's messages ahead into this process (where a ``multiprocessing``
        pipe would hold them in the kernel)."""
        self._check_readable()
        with self._lock:
            if self._pump is None:
                self._pump = _Pump(self._reader, self._stash)
            return self._pump.fd


class _Pump:
    """Receives a connection's messages in a thread, so that an fd can say one is there: one
    byte in a pipe per message held, and the pipe's write end stays readable at EOF."""

    def __init__(self, reader: Any, stash: collections.deque) -> None:
        self._reader = reader
        self._items: collections.deque = collections.deque(stash)
        stash.clear()
        self._cond = threading.Condition()
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        self._stopped = False
        if self._items:
            os.write(self._w, b"m" * len(self._items))
        self._thread = threading.Thread(target=self._run, name="volley-mp-pipe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            with self._cond:  # as a pipe's buffer is bounded: one byte per held message
                self._cond.wait_for(lambda: len(self._items) < _PUMP_AHEAD or self._stopped)
            try:
                message: Any = self._reader.recv(timeout=1.0)
            except TimeoutError:
                continue
            except ChannelClosed:
                message = _EOF
            except Exception:
                if self._stopped:
                    return
                message = _EOF
            with self._cond:  # the fds stay ours while we hold it (close() takes it)
                if self._stopped:
                    return
                self._items.append(message)
                self._cond.notify_all()
                os.write(self._w, b"e" if message is _EOF else b"m")
            if message is _EOF:
                return

    def ready(self, timeout: float | None) -> bool:
        """Whether a message (or EOF) is held, waiting up to ``timeout`` s for one."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._items), timeout)

    def take(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            message = self._items[0]
            if message is _EOF:
                return _EOF  # stays: the fd stays readable
            self._items.popleft()
            self._cond.notify_all()  # room for the thread to receive more
            if not self._stopped:
                try:
                    os.read(self.fd, 1)
                except BlockingIOError:
                    pass
        return message

    def close(self) -> None:
        with self._cond:  # not while the thread writes: a closed fd's number may be reused
            if self._stopped:
                return
            self._stopped = True
            os.close(self.fd)
            os.close(self._w)


def _rebuild(reader: Any, writer: Any) -> Connection:
    return Connection(reader, writer)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802  (stdlib's name)
    """A pair of connected ``Connection`` objects (``multiprocessing.Pipe``): with ``duplex``
    each sends to the other; else the first only receives and the second only sends.

    >>> from volley.multiprocessing import Pipe
    >>> r, w = Pipe(duplex=False)
    >>> w.send([1, 2]); r.recv()
    [1, 2]
    >>> r.send(3)
    Traceback (most recent call last):
    OSError: connection is read-only
    """
    there = Channel(PIPE_CAPACITY)
    if not duplex:
        return Connection(there.reader(), None), Connection(None, there.writer())
    back = Channel(PIPE_CAPACITY)
    return Connection(there.reader(), back.writer()), Connection(back.reader(), there.writer())
