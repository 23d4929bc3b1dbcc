"""``volley.SharedDict``: a dictionary that every driver, task and actor of the cluster sees by
name (remoteD's shared dictionary server, without a server to start).

It keeps nothing itself: each operation is one request to the cluster head's key-value table
(a call on one machine, where the node is its own head; a round trip to the head in a cluster),
under the namespace ``shareddict:<name>``. The head does ``incr``, ``compare_and_set``,
``setdefault`` and ``pop`` atomically, so processes racing on one key never lose an update.

Values are pickled (cloudpickle), except ``int`` values, which are kept as their decimal text
so that the head can count on them (``incr``) and ``d[k] = 0`` followed by ``d.incr(k)`` works.
A value that pickles to more than :data:`MAX_VALUE_BYTES` goes through the object store of the
head's node: the table keeps a small marker (``_BIG_MAGIC``, the object's id, its pickled ref),
the head's node holds the object, and the head lets go of it as soon as no key holds the
marker (``volley_runtime::head::big_values``). A process of the head's node writes and reads
such a value in place (numpy arrays without a copy); one of another node does it through a
task on the head's node, whose result travels back as any task's does.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from . import _core
from ._session import ensure_init
from .exceptions import ObjectLostError

#: The most bytes a value kept in the head's table may pickle to; larger ones go through the
#: object store of the head's node.
MAX_VALUE_BYTES = 1 << 20
# The most bytes of keys and values one `update` carries (volley_proto::MAX_KV_MANY).
MAX_UPDATE_BYTES = 16 << 20

#: How a big value's marker starts (``volley_runtime::head::big_values::BIG_VALUE_MAGIC``); the
#: object's 20-byte id follows, then its pickled ref.
_BIG_MAGIC = b"\x00volley-big\x00"
_ID_BYTES = 20
#: The head's node's number in a cluster (``volley_runtime::head::HEAD_ID``); 0 is a node alone.
_HEAD_ID = 1

_NAMESPACE_PREFIX = "shareddict:"
#: How long one wait of ``watch`` at the head lasts (Ctrl-C is seen between two).
_WATCH_SLICE_MS = 500
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


class _Missing:
    """The marker for "no value" in :meth:`SharedDict.compare_and_set` (``None`` is a value)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SharedDict.MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


#: Passed as ``expected`` to :meth:`SharedDict.compare_and_set`: "the key is absent"; as
#: ``new``: "delete the key".
MISSING: Any = _Missing()


class _Elsewhere(Exception):
    """A big value written by a process that is not on the head's node: the operation runs
    on the head's node instead (:meth:`SharedDict._on_head`)."""


def _on_head_node() -> bool:
    """Whether this process's node is the head's (alone, a node is its own head)."""
    from ._runtime_context import _own_node

    return int(_own_node()["node_id"]) in (0, _HEAD_ID)


def _buffer_size(value: object) -> int | None:
    """The bytes of a value that is one buffer (bytes, numpy array): known without pickling."""
    t = type(value)
    if t is bytes or t is bytearray:
        return len(value)  # type: ignore[arg-type]
    if t is memoryview:
        return value.nbytes  # type: ignore[attr-defined]
    if t.__module__ == "numpy" and t.__name__ == "ndarray":
        return int(value.nbytes)  # type: ignore[attr-defined]
    return None


def _pickled(name: str, key: str, value: object) -> bytes | None:
    """The value's bytes (its pickle, or an int's text); None for a buffer too big for the
    table (it is stored as it is, without a pickle of it to measure)."""
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return str(value).encode()
    size = _buffer_size(value)
    if size is not None and size > MAX_VALUE_BYTES:
        return None
    import cloudpickle

    try:
        return cloudpickle.dumps(value, protocol=5)
    except Exception as e:
        raise TypeError(
            f"SharedDict {name!r}: the value for key {key!r} ({type(value).__name__}) cannot "
            f"be pickled: {e}"
        ) from e


def _encode(name: str, key: str, value: object) -> bytes | None:
    """The value's bytes for the table; None if it is too big for it (it goes through the
    object store, see :func:`_big_marker`)."""
    data = _pickled(name, key, value)
    return None if data is None or len(data) > MAX_VALUE_BYTES else data


def _big_marker(value: object, data: bytes | None) -> tuple[bytes, bytes]:
    """Puts a big value in this node's store (the head's), held by the node: the value itself
    (a buffer: read back in place) or, when it was pickled already (``data``), its pickle.
    Its marker (the magic, the object's id, ``v`` or ``p``, the pickled ref) and the object's
    id (let go of with ``_release`` if the marker is not stored)."""
    from ._objects import put

    ref = put(value if data is None else data)
    oid = ref.binary()
    _core.chan_hold([oid], True)
    kind = b"v" if data is None else b"p"
    return _BIG_MAGIC + oid + kind + pickle.dumps(ref, protocol=5), oid


def _release(oid: bytes | None) -> None:
    if oid is not None:
        _core.chan_hold([oid], False)


def _load_big(data: bytes) -> Any:
    """The value a big value's marker names: read in place on the head's node, else fetched
    by a task there. ``ObjectLostError`` if its key let go of it meanwhile."""
    from ._objects import get

    if not _on_head_node():
        return get(_head_task().remote("", "", (data,)))
    at = len(_BIG_MAGIC) + _ID_BYTES
    value = get(pickle.loads(data[at + 1 :]))
    return pickle.loads(value) if data[at : at + 1] == b"p" else value


def _head_call(name: str, method: str, args: tuple) -> Any:
    """Runs on the head's node: ``SharedDict(name).method(*args)``, or with no name the value
    of a big value's marker."""
    if not name:
        return _load_big(args[0])
    return getattr(SharedDict(name), method)(*args)


_HEAD_TASK: list = []


def _head_task() -> Any:
    """``_head_call`` as a task pinned to the head's node (made once per process)."""
    if not _HEAD_TASK:
        from ._options import NodeAffinitySchedulingStrategy
        from ._remote import remote

        on_head = NodeAffinitySchedulingStrategy(_HEAD_ID, soft=False)
        _HEAD_TASK.append(
            remote(num_cpus=0, max_retries=0, scheduling_strategy=on_head)(_head_call)
        )
    return _HEAD_TASK[0]


def _decode(name: str, key: str, data: bytes) -> Any:
    if data[:1] == b"\x80":
        return pickle.loads(data)
    if data.startswith(_BIG_MAGIC):
        return _load_big(data)
    try:
        return int(data)
    except ValueError:
        raise ValueError(
            f"SharedDict {name!r}: the value under key {key!r} was not written by a SharedDict "
            f"(neither a pickle nor an integer: {data[:40]!r})"
        ) from None


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


class SharedDict(MutableMapping):
    """A dictionary kept by the cluster's head, the same for every process that opens it by
    ``name``: the driver, tasks and actors, on any node. Keys are ``str``; values anything
    picklable (over 1 MiB pickled, through the object store of the head's node). The handle
    holds only the name, so it pickles into tasks and actors; creating one costs nothing
    (volley starts, if it is not running, at the first operation).

    Each operation is one request to the head, and ``incr``, ``compare_and_set``,
    ``setdefault`` and ``pop`` are atomic there. ``keys()``, ``values()`` and ``items()`` are
    snapshots (lists), taken key by key; ``update`` stores key by key.

    >>> d = volley.SharedDict("example-config")
    >>> d["lr"] = 0.1
    >>> d["layers"] = [64, 32]
    >>> @volley.remote
    ... def read(d):
    ...     return d["lr"], d.get("missing", "default")
    >>> volley.get(read.remote(d))
    (0.1, 'default')
    >>> sorted(d.keys())
    ['layers', 'lr']
    >>> d.clear()
    """

    #: See :data:`MISSING`.
    MISSING: Any = MISSING

    __slots__ = ("_name", "_ns")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"a SharedDict's name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("a SharedDict's name must not be empty")
        self._name = name
        self._ns = _NAMESPACE_PREFIX + name

    @property
    def name(self) -> str:
        """The name every process opens this dictionary by."""
        return self._name

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (SharedDict, (self._name,))

    def __repr__(self) -> str:
        return f"SharedDict({self._name!r})"

    def _key(self, key: object) -> bytes:
        if not isinstance(key, str):
            raise TypeError(
                f"SharedDict {self._name!r}: keys are str, not {type(key).__name__} ({key!r})"
            )
        ensure_init()
        return key.encode()

    def _enc(self, key: str, value: object) -> bytes | None:
        return _encode(self._name, key, value)

    def _stored(self, key: str, value: object) -> tuple[bytes, bytes | None]:
        """The bytes to store for ``value``, and the object held for a big one (let go of it
        with ``_release`` if they are not stored). ``_Elsewhere`` for a big value off the head's
        node."""
        data = _pickled(self._name, key, value)
        if data is not None and len(data) <= MAX_VALUE_BYTES:
            return data, None
        if not _on_head_node():
            raise _Elsewhere
        return _big_marker(value, data)

    def _on_head(self, method: str, *args: Any) -> Any:
        """Runs ``self.method(*args)`` in a task on the head's node (a big value written from
        another node: its object must live in the head's node)."""
        from ._objects import get

        return get(_head_task().remote(self._name, method, args))

    def _read(self, key: str, k: bytes) -> tuple[bool, Any]:
        """(whether ``key`` has a value, the value). A big value whose key changed while it
        was read is read again."""
        while True:
            data = _core.kv_get(self._ns, k)
            if data is None:
                return False, None
            try:
                return True, _decode(self._name, key, data)
            except ObjectLostError:
                if _core.kv_get(self._ns, k) == data:
                    raise

    def __getitem__(self, key: str) -> Any:
        found, value = self._read(key, self._key(key))
        if not found:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        k = self._key(key)
        try:
            data, oid = self._stored(key, value)
        except _Elsewhere:
            return self._on_head("__setitem__", key, value)
        try:
            _core.kv_put(self._ns, k, data, True)
        except BaseException:
            _release(oid)
            raise
        return None

    def __delitem__(self, key: str) -> None:
        if not _core.kv_delete(self._ns, self._key(key)):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return _core.kv_get(self._ns, self._key(key)) is not None

    def __len__(self) -> int:
        ensure_init()
        return len(_core.kv_keys(self._ns, b""))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        found, value = self._read(key, self._key(key))
        return value if found else default

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value under ``key``; if there is none, stores ``default`` and returns it, in
        one atomic step (of racing processes, all get the value the first one stored)."""
        k = self._key(key)
        try:
            data, oid = self._stored(key, default)
        except _Elsewhere:
            found, value = self._read(key, k)
            return value if found else self._on_head("setdefault", key, default)
        try:
            now = _core.kv_setdefault(self._ns, k, data)
        except BaseException:
            _release(oid)
            raise
        if now != data:
            _release(oid)  # another value was there: the default is not kept
        try:
            return _decode(self._name, key, now)
        except ObjectLostError:
            return self.setdefault(key, default)  # replaced since: look again

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Stores every pair of ``other`` (a mapping or pairs) and of ``kwargs`` at once: a
        reader sees all of them or none (one request to the head, applied under one lock).
        Every value is pickled before anything is stored, so an unpicklable one stores nothing.
        At most 16 MiB of keys and values go in one update (``ValueError`` beyond).

        >>> cfg = volley.SharedDict("example-update")
        >>> cfg.update({"lr": 0.1, "epochs": 3}, batch=32)
        >>> sorted(cfg.items())
        [('batch', 32), ('epochs', 3), ('lr', 0.1)]
        >>> cfg.clear()
        """
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(other, Mapping):
            pairs = other.items()
        elif hasattr(other, "keys"):
            pairs = ((k, other[k]) for k in other.keys())
        else:
            pairs = other
        items = list(pairs) + list(kwargs.items())
        keyed = [(key, self._key(key), value) for key, value in items]
        stored: list[tuple[bytes, bytes, bytes | None]] = []
        try:
            for key, k, value in keyed:
                data, oid = self._stored(key, value)
                stored.append((k, data, oid))
        except _Elsewhere:
            # A big value written off the head's node: the whole update runs there.
            for _, _, oid in stored:
                _release(oid)
            return self._on_head("update", items)
        except BaseException:
            for _, _, oid in stored:
                _release(oid)
            raise
        total = sum(len(k) + len(d) for k, d, _ in stored)
        try:
            if total > MAX_UPDATE_BYTES:
                raise ValueError(
                    f"SharedDict {self._name!r}: one update carries at most {MAX_UPDATE_BYTES} "
                    f"bytes of keys and values, this one {total}: split it"
                )
            _core.kv_put_many(self._ns, [(k, d) for k, d, _ in stored])
        except BaseException:
            for _, _, oid in stored:
                _release(oid)
            raise
        return None

    def pop(self, key: str, default: Any = MISSING) -> Any:
        """Removes ``key`` and returns its value, atomically (of racing processes, one gets
        it); ``default`` if there is none, or ``KeyError`` without a default."""
        k = self._key(key)
        while True:
            data = _core.kv_get(self._ns, k)
            if data is None:
                if default is MISSING:
                    raise KeyError(key)
                return default
            try:
                # Read before the delete: the head lets go of a big value's object with it.
                value = _decode(self._name, key, data)
            except ObjectLostError:
                continue  # replaced since: look again
            if _core.kv_compare_and_set(self._ns, k, data, None):
                return value

    def popitem(self) -> tuple[str, Any]:
        """Removes some key and returns it with its value; ``KeyError`` when empty."""
        for key in self.keys():
            value = self.pop(key, MISSING)
            if value is not MISSING:
                return key, value
        raise KeyError(f"SharedDict {self._name!r} is empty")

    def clear(self) -> None:
        """Deletes every key."""
        ensure_init()
        for k in _core.kv_keys(self._ns, b""):
            _core.kv_delete(self._ns, k)

    def keys(self) -> list[str]:  # type: ignore[override]
        """The keys now, sorted (a list: later changes do not show in it)."""
        ensure_init()
        return [k.decode() for k in _core.kv_keys(self._ns, b"")]

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        """The pairs now, by key, as one snapshot taken at the head (a list: later changes do
        not show in it)."""
        ensure_init()
        out = []
        for k, data in _core.kv_items(self._ns, b""):
            key = k.decode()
            try:
                out.append((key, _decode(self._name, key, data)))
            except ObjectLostError:
                # A big value replaced since the snapshot: its value now.
                found, value = self._read(key, k)
                if found:
                    out.append((key, value))
        return out

    def values(self) -> list[Any]:  # type: ignore[override]
        """The values now, in the order of their keys (a list)."""
        return [v for _, v in self.items()]

    def incr(self, key: str, delta: int = 1) -> int:
        """Adds ``delta`` to the integer under ``key`` (a missing key counts as 0) atomically
        at the head and returns the new value: from any number of processes at once, no
        increment is lost. A value there that is not an ``int`` is a ``ValueError`` (nothing
        changes), as is a sum beyond 64 bits.

        >>> hits = volley.SharedDict("example-hits")
        >>> @volley.remote
        ... def visit(d):
        ...     for _ in range(10):
        ...         d.incr("n")
        >>> volley.get([visit.remote(hits) for _ in range(4)]) and None
        >>> hits["n"]
        40
        >>> hits.incr("n", -40)
        0
        >>> hits.clear()
        """
        if type(delta) is not int:
            raise TypeError(f"incr's delta must be an int, not {type(delta).__name__}")
        if not _INT_MIN <= delta <= _INT_MAX:
            raise ValueError(f"incr's delta must fit in 64 bits, not {delta}")
        k = self._key(key)
        try:
            return _core.kv_incr(self._ns, k, delta)
        except ValueError as e:
            why = str(e)
            data = _core.kv_get(self._ns, k)
            if data is not None and data[:1] == b"\x80":
                value = _decode(self._name, key, data)
                why = f"the value there is a {type(value).__name__}, not an int"
            raise ValueError(f"SharedDict {self._name!r}: cannot incr key {key!r}: {why}") from None

    def watch(self, key: str, timeout: float | None = None) -> Any:
        """Blocks until ``key`` is written after the call starts (a set, even to the same
        value, an ``incr``, a delete...) and returns its value then (``SharedDict.MISSING``
        when deleted). ``TimeoutError`` after ``timeout`` seconds (``None``: no limit); Ctrl-C
        interrupts it. The head counts writes (a version per key), so a value changed and
        changed back is still seen as a change; several writes may wake the watcher once: a
        watch is for "something changed", not a log.

        >>> d = volley.SharedDict("example-watch")
        >>> d["step"] = 0
        >>> @volley.remote
        ... def work(d):
        ...     import time
        ...     while "stop" not in d:  # a worker reporting its progress
        ...         d.incr("step")
        ...         time.sleep(0.05)
        >>> ref = work.remote(d)
        >>> d.watch("step", timeout=30) > 0  # wakes at its next step
        True
        >>> d["stop"] = True
        >>> volley.get(ref)
        >>> d.watch("step", timeout=0.05)
        Traceback (most recent call last):
        ...
        TimeoutError: SharedDict 'example-watch': key 'step' did not change within 0.05 s
        >>> d.clear()
        """
        import time

        k = self._key(key)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
            if not timeout >= 0:
                raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            # Short waits at the head: Ctrl-C is seen between them.
            left_ms = _WATCH_SLICE_MS
            if deadline is not None:
                left_ms = max(0, min(left_ms, int((deadline - time.monotonic()) * 1000)))
            seen, changed, data = _core.kv_watch(self._ns, k, seen, left_ms)
            if changed:
                if data is None:
                    return MISSING
                try:
                    return _decode(self._name, key, data)
                except ObjectLostError:
                    return self.get(key, MISSING)  # changed again since
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"SharedDict {self._name!r}: key {key!r} did not change within {timeout} s"
                )

    def compare_and_set(self, key: str, expected: Any, new: Any) -> bool:
        """Stores ``new`` under ``key`` only if its value is now equal to ``expected``, in one
        atomic step; True if it did. ``SharedDict.MISSING`` as ``expected`` means "the key is
        absent", and as ``new`` "delete the key". Of processes racing to change one value,
        exactly one succeeds.

        >>> d = volley.SharedDict("example-leader")
        >>> d.compare_and_set("leader", SharedDict.MISSING, "worker-1")
        True
        >>> d.compare_and_set("leader", SharedDict.MISSING, "worker-2")
        False
        >>> d.compare_and_set("leader", "worker-1", SharedDict.MISSING), "leader" in d
        (True, False)
        """
        k = self._key(key)
        new_data, oid = None, None
        if new is not MISSING:
            try:
                new_data, oid = self._stored(key, new)
            except _Elsewhere:
                return self._on_head("compare_and_set", key, expected, new)
        try:
            swapped = self._swap(key, k, expected, new_data)
        except BaseException:
            _release(oid)
            raise
        if not swapped:
            _release(oid)
        return swapped

    def _swap(self, key: str, k: bytes, expected: Any, new_data: bytes | None) -> bool:
        if expected is MISSING:
            return _core.kv_compare_and_set(self._ns, k, None, new_data)
        attempt = self._enc(key, expected)  # None: a big value, compared by value below
        while True:
            if attempt is not None and _core.kv_compare_and_set(self._ns, k, attempt, new_data):
                return True
            # Equal values can pickle to different bytes (a dict's insertion order): compare
            # what is there by value, and swap on its exact bytes.
            data = _core.kv_get(self._ns, k)
            if data is None:
                return False
            try:
                current = _decode(self._name, key, data)
            except ObjectLostError:
                attempt = None
                continue  # replaced since: look again
            if not _equal(current, expected):
                return False
            attempt = data
