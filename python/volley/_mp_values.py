"""``volley.multiprocessing``'s ``Value``, ``Array``, ``RawValue`` and ``RawArray``: ctypes
objects in shared memory, with the signatures of ``multiprocessing.sharedctypes``.

They live in the shared memory of :func:`volley.shared_array` (``_shared_memory``; small ones
share 1 MiB arenas, so a program may make many without a file each; numpy is not needed), and
pickle as that memory's handle: pass them to
tasks, actors, pool functions or processes as arguments, not only by inheritance as the
standard library demands. A synchronized ``Value`` or ``Array`` carries a lock (by default a
``NodeRLock``: a robust, recursive mutex in the node's shared memory, as fast as
multiprocessing's and released when its holder dies), which guards each ``.value`` and item
access, and every process that receives it takes the same lock; ``lock=`` takes any lock with
``acquire``/``release`` instead (a ``volley.sync.RLock`` too). Like a shared array they are
per node (see docs/shared-array.md).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from typing import Any

from .library import SharedMemorySegment as _Segment
from .library import attach_shared_memory as _attach
from .library import create_shared_memory as _create
from .library import shared_memory_handle as _handle

__all__ = ["Array", "RawArray", "RawValue", "Value"]

_TYPECODES: dict[str, type] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}


def _ctype(typecode_or_type: Any) -> type:
    """The ctypes type a typecode (``"i"``, ``"d"``, ...) names, or the ctypes type given."""
    if isinstance(typecode_or_type, str):
        t = _TYPECODES.get(typecode_or_type)
        if t is None:
            raise TypeError(
                f"unknown typecode {typecode_or_type!r}: use one of "
                f"{''.join(sorted(_TYPECODES))} or a ctypes type"
            )
        return t
    if isinstance(typecode_or_type, type):
        try:
            ctypes.sizeof(typecode_or_type)
            return typecode_or_type
        except TypeError:
            pass
    raise TypeError(f"{typecode_or_type!r} is neither a typecode nor a ctypes type")


# --------------------------------------------------------------------------- shared memory

_ARENA = 1 << 20  # objects up to a quarter of this share arenas; larger ones get their own file
_arena_lock = threading.Lock()
_arena: list[Any] = [None, 0]  # [current arena (a _Segment), next free offset]


class _Region:
    """``size`` bytes at ``offset`` of a shared memory segment; pickled as the segment's handle
    and the offset."""

    __slots__ = ("offset", "seg", "size")

    def __init__(self, seg: _Segment, offset: int, size: int) -> None:
        self.seg, self.offset, self.size = seg, offset, size

    def __reduce__(self) -> tuple:
        return (_region, (_handle(self.seg), self.offset, self.size))

    @property
    def address(self) -> int:
        return ctypes.addressof(self.seg.mm) + self.offset


def _region(handle: tuple, offset: int, size: int) -> _Region:
    return _Region(_attach(*handle), offset, size)


def _memory(size: int, align: int) -> _Region:
    """``size`` fresh zeroed shared bytes aligned to ``align``."""
    size = max(size, 1)
    if size > _ARENA // 4:
        return _Region(_create(size), 0, size)
    with _arena_lock:
        arena, offset = _arena
        offset = -(-offset // align) * align
        # a new arena when full, or when the last one's session ended (its file is closed)
        if arena is None or offset + size > _ARENA or arena.freed:
            arena, offset = _create(_ARENA), 0
        _arena[0], _arena[1] = arena, offset + size
        return _Region(arena, offset, size)


def _spec(t: type) -> Any:
    """A picklable description of ctypes type ``t``: the type (pickled by reference) or, for an
    array type (made on the fly, so not importable), its element's and its length."""
    if issubclass(t, ctypes.Array):
        return ("array", _spec(t._type_), t._length_)
    return t


def _from_spec(spec: Any) -> type:
    if isinstance(spec, tuple):
        return _from_spec(spec[1]) * spec[2]
    return spec


_shared_types: dict[type, type] = {}


def _shared_type(t: type) -> type:
    """A subclass of ``t`` whose instances pickle as the handle of their shared memory."""
    st = _shared_types.get(t)
    if st is None:
        st = type(t.__name__, (t,), {"__reduce__": _reduce, "__repr__": _repr, "_base": t})
        _shared_types[t] = st
    return st


def _reduce(self: Any) -> tuple:
    return (_rebuild, (_spec(type(self)._base), self._memory))


def _repr(self: Any) -> str:
    name = type(self).__name__
    if isinstance(self, ctypes._SimpleCData):
        return f"{name}({self.value!r})"
    return f"<{name} object in shared memory at {ctypes.addressof(self):#x}>"


def _rebuild(spec: Any, memory: _Region) -> Any:
    obj = _shared_type(_from_spec(spec)).from_buffer(memory.seg.mm, memory.offset)
    obj._memory = memory
    return obj


def _new(t: type) -> Any:
    return _rebuild(t, _memory(ctypes.sizeof(t), min(ctypes.alignment(t), 64) or 1))


# --------------------------------------------------------------------------- the raw objects


def RawValue(typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802 (multiprocessing's name)
    """A ctypes object in shared memory (``multiprocessing.RawValue``), without a lock:
    ``typecode_or_type`` is an ``array`` module typecode (``"i"``, ``"d"``, ``"c"``, ...) or a
    ctypes type, ``args`` its constructor's arguments.

    >>> from volley.multiprocessing import RawValue
    >>> v = RawValue("d", 1.5)
    >>> v.value += 1
    >>> v
    c_double(2.5)
    """
    t = _ctype(typecode_or_type)
    obj = _new(t)
    if args:
        obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
    """A ctypes array in shared memory (``multiprocessing.RawArray``), without a lock: of
    ``size_or_initializer`` zeros (an int) or holding the given sequence's items.

    >>> from volley.multiprocessing import RawArray
    >>> a = RawArray("i", [1, 2, 3])
    >>> a[0] = 10
    >>> list(a), len(a)
    ([10, 2, 3], 3)
    """
    t = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, bool) or not isinstance(size_or_initializer, int):
        try:
            items = list(size_or_initializer)
        except TypeError:
            raise TypeError(
                f"size_or_initializer must be an int or a sequence, not "
                f"{type(size_or_initializer).__name__}"
            ) from None
        obj = _new(t * len(items))
        obj.__init__(*items)
        return obj
    if size_or_initializer < 0:
        raise ValueError(f"an array's size must be >= 0, not {size_or_initializer}")
    return _new(t * size_or_initializer)


# --------------------------------------------------------------------------- a node's lock


class _Pthread:
    """The process-shared, robust, recursive pthread mutex functions (glibc), loaded once."""

    def __init__(self) -> None:
        import errno

        libc = ctypes.CDLL(None, use_errno=True)
        p = ctypes.c_void_p
        for name, args in [
            ("pthread_mutexattr_init", [p]),
            ("pthread_mutexattr_setpshared", [p, ctypes.c_int]),
            ("pthread_mutexattr_setrobust", [p, ctypes.c_int]),
            ("pthread_mutexattr_settype", [p, ctypes.c_int]),
            ("pthread_mutexattr_destroy", [p]),
            ("pthread_mutex_init", [p, p]),
            ("pthread_mutex_trylock", [p]),
            ("pthread_mutex_timedlock", [p, p]),
            ("pthread_mutex_unlock", [p]),
            ("pthread_mutex_consistent", [p]),
        ]:
            fn = getattr(libc, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
            setattr(self, name.removeprefix("pthread_"), fn)
        self.EBUSY, self.ETIMEDOUT = errno.EBUSY, errno.ETIMEDOUT
        self.EOWNERDEAD, self.EPERM = errno.EOWNERDEAD, errno.EPERM


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_pthread: _Pthread | None = None
_MUTEX_BYTES = 64  # pthread_mutex_t is 40 bytes on x86-64 and 48 on arm64 (glibc)


class NodeRLock:
    """A recursive lock in the node's shared memory (a process-shared, robust pthread mutex),
    for a ``Value``'s or ``Array``'s ``lock=``: about a microsecond a pair in any process of the
    node, where a ``volley.sync`` lock is a message to the node. Per node, like the values it
    guards; picklable as a handle. A holder that dies (SIGKILL included) releases it: the next
    acquirer gets it, with ``previous_holder_died`` True. Waits in slices of 0.1 s, so Ctrl-C
    interrupts them.

    >>> from volley.multiprocessing import Value
    >>> from volley._mp_values import NodeRLock
    >>> v = Value("i", 0, lock=NodeRLock())
    >>> with v.get_lock():
    ...     v.value += 1
    >>> v.value
    1
    """

    def __init__(self, _memory: _Region | None = None) -> None:
        global _pthread
        if _pthread is None:
            _pthread = _Pthread()
        self._pt = _pthread
        self.previous_holder_died = False
        if _memory is None:
            _memory = _memory_for_lock()
            attr = ctypes.create_string_buffer(64)
            pt = self._pt
            for rc in (
                pt.mutexattr_init(attr),
                pt.mutexattr_setpshared(attr, 1),  # PTHREAD_PROCESS_SHARED
                pt.mutexattr_setrobust(attr, 1),  # PTHREAD_MUTEX_ROBUST
                pt.mutexattr_settype(attr, 1),  # PTHREAD_MUTEX_RECURSIVE
                pt.mutex_init(_memory.address, attr),
                pt.mutexattr_destroy(attr),
            ):
                if rc:
                    raise OSError(rc, f"pthread mutex set-up failed: {os.strerror(rc)}")
        self._memory = _memory
        self._ptr = ctypes.c_void_p(_memory.address)
        # The uncontended path is two foreign calls: bound here, not looked up on each use.
        self._trylock = functools.partial(self._pt.mutex_trylock, self._ptr)
        self._unlock = functools.partial(self._pt.mutex_unlock, self._ptr)

    def __reduce__(self) -> tuple:
        return (NodeRLock, (self._memory,))

    def __repr__(self) -> str:
        return f"<NodeRLock at {self._ptr.value:#x}>"

    def _got(self, rc: int) -> bool:
        if rc == 0:
            return True
        if rc == self._pt.EOWNERDEAD:  # its holder died holding it: ours now
            self._pt.mutex_consistent(self._ptr)
            self.previous_holder_died = True
            return True
        if rc in (self._pt.EBUSY, self._pt.ETIMEDOUT):
            return False
        raise OSError(rc, f"lock failed: {os.strerror(rc)}")

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``threading.RLock.acquire``'s signature: True once held, False on timeout."""
        rc = self._trylock()
        if rc == 0 or self._got(rc):
            return True
        if not blocking:
            return False
        import time

        end = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        ts = _Timespec()
        while True:
            step = 0.1 if end is None else max(0.0, min(0.1, end - time.monotonic()))
            when = time.time() + step
            ts.tv_sec, ts.tv_nsec = int(when), int((when % 1) * 1e9)
            if self._got(self._pt.mutex_timedlock(self._ptr, ctypes.byref(ts))):
                return True
            if end is not None and time.monotonic() >= end:
                return False

    def release(self) -> None:
        rc = self._unlock()
        if rc == 0:
            return
        if rc == self._pt.EPERM:
            raise RuntimeError("cannot release un-acquired lock")
        if rc:
            raise OSError(rc, f"unlock failed: {os.strerror(rc)}")

    def __enter__(self) -> bool:
        rc = self._trylock()
        return True if rc == 0 else self._got(rc) or self.acquire()

    def __exit__(self, *exc: object) -> None:
        if self._unlock():
            self.release()  # raises the unlock's error


def _memory_for_lock() -> _Region:
    return _memory(_MUTEX_BYTES, 64)


# --------------------------------------------------------------------------- synchronized


def _lock_for(lock: Any) -> Any:
    # The default lock lives in the value's node's shared memory, as the value does: about a
    # microsecond a pair (multiprocessing's speed), where a volley.sync lock is a message to
    # the node; a holder SIGKILLed still releases it (a robust mutex).
    if lock is True or lock is None:
        return NodeRLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


class Synchronized:
    """A shared ctypes object with a lock (what ``Value`` returns): ``.value`` reads and writes
    it under the lock; ``get_lock()``, ``get_obj()``, ``acquire()``, ``release()`` and ``with``
    (hold the lock over several steps, e.g. ``v.value += 1``).

    >>> from volley.multiprocessing import Value
    >>> v = Value("d", 0.5)
    >>> with v:
    ...     v.value *= 4
    >>> v.value, v.get_obj(), type(v.get_lock()).__name__
    (2.0, c_double(2.0), 'NodeRLock')
    """

    def __init__(self, obj: Any, lock: Any = None) -> None:
        self._obj = obj
        self._lock = _lock_for(lock)
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self._lock.__exit__(*exc)

    def __reduce__(self) -> tuple:
        return (type(self), (self._obj, self._lock))

    def get_obj(self) -> Any:
        """The shared ctypes object (unlocked access)."""
        return self._obj

    def get_lock(self) -> Any:
        """The lock that guards it."""
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj!r}>"

    @property
    def value(self) -> Any:
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, value: Any) -> None:
        with self._lock:
            self._obj.value = value


class SynchronizedArray(Synchronized):
    """A shared ctypes array with a lock (what ``Array`` returns): items and slices are read
    and written under the lock.

    >>> from volley.multiprocessing import Array
    >>> a = Array("i", range(5))
    >>> a[1:3] = [10, 20]
    >>> a[:], len(a)
    ([0, 10, 20, 3, 4], 5)
    """

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        with self._lock:
            return self._obj[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        with self._lock:
            self._obj[i] = value

    def __getslice__(self, start: int, stop: int) -> Any:
        with self._lock:
            return self._obj[start:stop]

    def __setslice__(self, start: int, stop: int, values: Any) -> None:
        with self._lock:
            self._obj[start:stop] = values


class SynchronizedString(SynchronizedArray):
    """A shared ``c_char`` array with a lock: ``.value`` (up to the first NUL) and ``.raw``.

    >>> from volley.multiprocessing import Array
    >>> s = Array("c", 4)
    >>> s.value = b"ab"
    >>> s.value, s.raw
    (b'ab', b'ab\\x00\\x00')
    """

    @property
    def raw(self) -> bytes:
        with self._lock:
            return self._obj.raw

    @raw.setter
    def raw(self, value: bytes) -> None:
        with self._lock:
            self._obj.raw = value


def _synchronized(obj: Any, lock: Any) -> Synchronized:
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    return Synchronized(obj, lock)


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:  # noqa: N802
    """A ctypes object in shared memory guarded by a lock (``multiprocessing.Value``):
    ``lock=True`` (or None) makes a ``NodeRLock``, a lock object of your own is used as
    given, ``lock=False`` returns the raw object (as :func:`RawValue`). ``ctx`` is accepted for
    the standard library's signature and ignored.

    >>> from volley.multiprocessing import Value
    >>> counter = Value("i", 0)
    >>> @volley.remote
    ... def bump(counter, n):
    ...     for _ in range(n):
    ...         with counter.get_lock():
    ...             counter.value += 1
    >>> volley.get([bump.remote(counter, 50) for _ in range(4)])
    [None, None, None, None]
    >>> counter.value
    200
    """
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return _synchronized(obj, lock)


def Array(  # noqa: N802
    typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None
) -> Any:
    """A ctypes array in shared memory guarded by a lock (``multiprocessing.Array``), with
    ``lock`` as for :func:`Value`; an array of ``"c"`` has ``.value`` and ``.raw`` too.

    >>> from volley.multiprocessing import Array
    >>> squares = Array("d", 4)
    >>> @volley.remote
    ... def square(a, i):
    ...     a[i] = i * i
    >>> volley.get([square.remote(squares, i) for i in range(4)])
    [None, None, None, None]
    >>> squares[:]
    [0.0, 1.0, 4.0, 9.0]
    >>> name = Array("c", b"volley")
    >>> name.value
    b'volley'
    """
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return _synchronized(obj, lock)
