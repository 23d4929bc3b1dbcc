"""Numpy arrays in shared memory that every process of a node may write (POSH's and PyMP's job).

``volley.shared_array(shape, dtype)`` allocates an anonymous memory file (``memfd_create``,
mode 0600: it has no name anywhere, so nothing can be left behind in ``/dev/shm``) and maps it.
The array pickles as a *handle* (the creator's pid, the descriptor's number and the file's
identity), never as its bytes: a task or actor on the same node that receives it opens the
creator's descriptor through ``/proc/<pid>/fd`` (which the kernel grants to the same user only)
and maps the same pages, so its writes are the creator's. The file's device and inode number
travel with the handle and are checked on opening, so a recycled pid or descriptor is never
mistaken for the array.

The memory is per node. A handle unpickled on another node of a cluster raises
:class:`SharedArrayError` naming both nodes, unless :meth:`SharedArray.scatter` has put a copy
on that node (each copy is held by a small actor there). :meth:`SharedArray.gather` copies an
array (or one node's copy) into a new array on the caller's node.

Lifetime: the creator holds the file until :meth:`SharedArray.free` (or the end of a ``with``
block), until its volley session shuts down, or, for an array that was never pickled, until the
array is garbage collected. A process that mapped it keeps its pages until it drops its arrays;
the kernel frees the memory when the last mapping is gone.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import threading
import weakref
from typing import Any

import numpy as np

import volley
from volley import library

from .exceptions import VolleyError

__all__ = ["SharedArray", "SharedArrayError", "shared_array"]


class SharedArrayError(VolleyError):
    """A shared array's handle cannot be mapped here: it lives in another node's memory, or its
    creator freed it (or ended its session), or it was used after :meth:`SharedArray.free`."""


# ------------------------------------------------------------------------ where this process runs

_node_lock = threading.Lock()
_worker_node: tuple[int, int, str] | None = None  # (pid, node id, address) in a worker


def _this_node() -> tuple[int, str] | None:
    """``(node id, address)`` of the node this process belongs to, or None where volley does not
    run. A worker's node never changes, so it asks its node once."""
    global _worker_node
    mode = library.mode()
    if mode is None:
        return None
    if mode == "worker":
        with _node_lock:
            if _worker_node is None or _worker_node[0] != os.getpid():
                info = volley.nodes()
                ctx = volley.get_runtime_context()
                node = ctx.get_node_id()
                addr = next((n["address"] for n in info if n["node_id"] == node), "")
                _worker_node = (os.getpid(), node, addr)
            return _worker_node[1], _worker_node[2]
    node = volley.get_runtime_context().get_node_id()
    addr = next((n["address"] for n in volley.nodes() if n["node_id"] == node), "")
    return node, addr


def _node_name(node: int, addr: str) -> str:
    return f"node {node} ({addr})" if addr else f"node {node}"


# ----------------------------------------------------------------------------------- the memory


class _Place:
    """Where a segment's file can be opened: its holder's pid and descriptor, and the file's
    identity (device, inode) to check it against."""

    __slots__ = ("dev", "fd", "ino", "pid")

    def __init__(self, pid: int, fd: int, dev: int, ino: int) -> None:
        self.pid, self.fd, self.dev, self.ino = pid, fd, dev, ino

    def __reduce__(self) -> tuple:
        return (_Place, (self.pid, self.fd, self.dev, self.ino))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapping:
    """A shared mapping of a file, unmapped when the last array over it is gone. (The standard
    library's ``mmap`` keeps a duplicate of the file's descriptor for each mapping: a process
    could then hold no more arrays than descriptors, and a freed file would stay open.)"""

    def __init__(self, fd: int, size: int) -> None:
        prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED
        addr = _libc.mmap(None, size, prot, flags, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {size} bytes failed: {os.strerror(err)}")
        self.addr, self.size = addr, size

    def buffer(self) -> ctypes.Array:
        """The mapping's bytes as a buffer that keeps the mapping alive."""

        class _Bytes(ctypes.c_ubyte * self.size):  # type: ignore[misc]
            pass

        buf = _Bytes.from_address(self.addr)
        buf.mapping = self  # type: ignore[attr-defined]
        return buf

    def __del__(self) -> None:
        _libc.munmap(self.addr, self.size)


class _Segment:
    """One shared memory file mapped in this process. The creator (``owner``) keeps the file's
    descriptor open so that other processes can open it; an opener closes its own at once."""

    def __init__(
        self, ident: str, nbytes: int, mm: ctypes.Array, fd: int | None, place: _Place
    ) -> None:
        self.ident = ident
        self.nbytes = nbytes
        self.mm = mm
        self.fd = fd  # open in the creator only
        self.place = place  # where this node's processes open it
        self.home: tuple[int, str] | None = None  # (node, address) of the creator's node
        self.copies: dict[int, _Place] = {}  # scatter's copies: node id -> place
        self.keepers: list[Any] = []  # the actors that hold them (in the scattering process)
        self.lock: Any = None
        self.freed = False
        base = np.frombuffer(mm, dtype=np.uint8, count=max(nbytes, 1))
        self.base_array = base
        self.start = base.ctypes.data

    @property
    def owner(self) -> bool:
        return self.fd is not None

    def contains(self, a: np.ndarray) -> bool:
        """Whether ``a``'s memory lies in this segment (a view of it, not a new array)."""
        ptr = a.__array_interface__["data"][0]
        return self.start <= ptr <= self.start + self.nbytes

    def close_fd(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # an owner whose arrays are all gone (never pickled)
        try:
            self.close_fd()
        except Exception:
            pass


_state_lock = threading.Lock()
# Mapped segments by file identity, so that handles of one array map it once per process.
_mapped: weakref.WeakValueDictionary[tuple[int, int], _Segment] = weakref.WeakValueDictionary()
# Owner segments whose handle went out (pickled): kept open until free() or shutdown.
_held: dict[tuple[int, int], _Segment] = {}
_owned: weakref.WeakSet[_Segment] = weakref.WeakSet()
_hook_registered = False


def _at_shutdown() -> None:
    """The creator's session ends: every file it created is closed (pages stay while mapped)."""
    with _state_lock:
        segs = list(_owned)
        _held.clear()
    for seg in segs:
        seg.close_fd()
        seg.freed = True


def _register_shutdown() -> None:
    global _hook_registered
    if not _hook_registered:
        from ._session import at_shutdown

        at_shutdown(_at_shutdown)
        _hook_registered = True


def _create(nbytes: int) -> _Segment:
    size = max(nbytes, 1)
    fd = os.memfd_create("volley-shared-array", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        mm = _Mapping(fd, size).buffer()
    except BaseException:
        os.close(fd)
        raise
    st = os.fstat(fd)
    seg = _Segment(
        secrets.token_hex(6), nbytes, mm, fd, _Place(os.getpid(), fd, st.st_dev, st.st_ino)
    )
    with _state_lock:
        _mapped[(st.st_dev, st.st_ino)] = seg
        _owned.add(seg)
        _register_shutdown()  # a driver's session may start after the array is made
    return seg


def _open(ident: str, nbytes: int, place: _Place, home: str) -> _Segment:
    """Maps the file at ``place`` (another process's descriptor on this node)."""
    what = f"shared array {ident} (created by pid {place.pid} on {home})"
    path = f"/proc/{place.pid}/fd/{place.fd}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SharedArrayError(
            f"{what} is gone: its creator freed it, ended its volley session or exited"
        ) from None
    except PermissionError as e:
        raise SharedArrayError(f"cannot open {what} through {path}: {e}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (place.dev, place.ino):
            raise SharedArrayError(
                f"{what} is gone: its creator freed it, ended its volley session or exited "
                f"(its descriptor now names another file)"
            )
        size = max(nbytes, 1)
        if st.st_size < size:
            raise SharedArrayError(f"{what} has {st.st_size} bytes, its handle says {size}")
        mm = _Mapping(fd, size).buffer()
    finally:
        os.close(fd)
    return _Segment(ident, nbytes, mm, None, place)


def _rebuild(
    ident: str,
    nbytes: int,
    place: _Place,
    home: tuple[int, str] | None,
    copies: dict[int, _Place],
    lock: Any,
    dtype: np.dtype,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    offset: int,
) -> SharedArray:
    """Unpickles a handle: the array mapped in this process (see the module's doc)."""
    with _state_lock:  # mapped here already: this process is on its node (or made it)
        seg = _mapped.get((place.dev, place.ino))
    if seg is not None:
        return _view(seg, lock, dtype, shape, strides, offset)
    here = _this_node()
    if here is not None and home is not None and here[0] != home[0]:
        if here[0] not in copies:
            raise SharedArrayError(
                f"shared array {ident} lives in the memory of {_node_name(*home)}, where pid "
                f"{place.pid} created it; this process runs on {_node_name(*here)}. A shared "
                f"array is per node: call arr.scatter() (a copy on every node) or "
                f"arr.scatter(node={here[0]}) before passing it here, or arr.gather() on this "
                f"node for a copy"
            )
        place = copies[here[0]]
    key = (place.dev, place.ino)
    with _state_lock:
        seg = _mapped.get(key)
    if seg is None:
        where = "this machine" if home is None else _node_name(*home)
        if here is not None and here[0] in copies:
            where = _node_name(*here)
        seg = _open(ident, nbytes, place, where)
        with _state_lock:
            seg = _mapped.setdefault(key, seg)
    if seg.home is None:
        seg.home = home
    seg.copies.update(copies)
    return _view(seg, lock, dtype, shape, strides, offset)


def _view(
    seg: _Segment,
    lock: Any,
    dtype: np.dtype,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    offset: int,
) -> SharedArray:
    if seg.lock is None:
        seg.lock = lock
    arr = np.ndarray(shape, dtype, buffer=seg.mm, offset=offset, strides=strides)
    out = arr.view(SharedArray)
    out._seg = seg
    return out


# ----------------------------------------------------------------------------------- the array


class SharedArray(np.ndarray):
    """A numpy array in shared memory: every process of its node that receives it (as an
    argument or result of a task or actor, pickled as a handle) writes the same memory. Its
    views (slices, reshapes) are shared too; results of arithmetic are ordinary arrays.

    >>> a = volley.shared_array(4, dtype="int64", fill=0)
    >>> @volley.remote
    ... def put(a, i):
    ...     a[i] = i * 10
    >>> volley.get([put.remote(a, i) for i in range(4)])
    [None, None, None, None]
    >>> a
    SharedArray([ 0, 10, 20, 30])
    >>> a.free()
    """

    _seg: _Segment | None = None

    def __array_finalize__(self, obj: Any) -> None:
        seg = getattr(obj, "_seg", None)
        self._seg = seg if seg is not None and seg.contains(self) else None

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        out = super().__array_wrap__(arr, context, return_scalar)
        if isinstance(out, SharedArray) and out._seg is None:
            return out.view(np.ndarray)
        return out

    def __reduce_ex__(self, protocol: int) -> Any:
        seg = self._seg
        if seg is None:  # not (or no longer) shared memory: an ordinary array's pickle
            return self.view(np.ndarray).__reduce_ex__(protocol)
        if seg.freed:
            raise SharedArrayError(
                f"shared array {seg.ident} was freed (free() or the end of its session): "
                f"it cannot be passed to another process"
            )
        if seg.owner:
            with _state_lock:
                _held[(seg.place.dev, seg.place.ino)] = seg
        if seg.home is None:  # stays None where volley does not run: no node to check
            seg.home = _this_node()
        if seg.lock is None and volley.is_initialized():
            seg.lock = volley.sync.Lock()
        offset = self.__array_interface__["data"][0] - seg.start
        args = (seg.ident, seg.nbytes, seg.place, seg.home, dict(seg.copies), seg.lock)
        return (_rebuild, (*args, self.dtype, self.shape, self.strides, offset))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)

    def _segment(self) -> _Segment:
        if self._seg is None:
            raise SharedArrayError("this array is not in shared memory (a copy or a result)")
        return self._seg

    @property
    def lock(self) -> Any:
        """A ``volley.sync.Lock`` for this array, the same one in every process it reaches
        (made at first use or when the array is first passed on). Guard read-modify-write
        sequences that several processes do on the same elements with it.

        >>> total = volley.shared_array(1, dtype="int64", fill=0)
        >>> with total.lock:
        ...     total[0] += 5
        >>> int(total[0])
        5
        """
        seg = self._segment()
        if seg.lock is None:
            with _state_lock:
                if seg.lock is None:
                    seg.lock = volley.sync.Lock()
        return seg.lock

    @property
    def node_id(self) -> int | None:
        """The id of the node whose memory holds this array (its creator's node); None for an
        array made where volley did not run.

        >>> volley.shared_array(3).node_id
        0
        """
        seg = self._segment()
        if seg.home is None:
            seg.home = _this_node()
        return None if seg.home is None else seg.home[0]

    def free(self) -> None:
        """Closes the creator's file now: the array can no longer be passed to a process that
        has not mapped it (that raises :class:`SharedArrayError`), its lock and scattered copies
        are dropped, and the memory goes when the last process that mapped it drops its arrays.
        Arrays already mapped (this one included) stay valid. Only the creator may free an
        array; calling it twice does nothing.

        >>> a = volley.shared_array(2, fill=1.0)
        >>> a.free()
        >>> @volley.remote
        ... def total(a):
        ...     return a.sum()
        >>> total.remote(a)
        Traceback (most recent call last):
        volley.exceptions.SerializationError: ...was freed...
        """
        seg = self._segment()
        if seg.freed:
            return
        if not seg.owner:
            raise SharedArrayError(
                f"shared array {seg.ident} belongs to pid {seg.place.pid}: only its creator "
                f"frees it (this process only drops its arrays)"
            )
        seg.freed = True
        with _state_lock:
            _held.pop((seg.place.dev, seg.place.ino), None)
        seg.close_fd()
        for keeper in seg.keepers:
            volley.kill(keeper)
        seg.keepers.clear()
        seg.copies.clear()
        if seg.lock is not None:
            try:
                seg.lock.shutdown()
            except Exception:  # already dropped (its node stopped)
                pass

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def gather(self, node: int | None = None) -> SharedArray:
        """A copy of this array in a new shared array on the caller's node: of the memory of its
        home node (where it was created), or of ``node``'s copy (see :meth:`scatter`). On its
        own node that is a local copy; from another node one task reads it there and the bytes
        travel through the object store.

        >>> a = volley.shared_array(3, fill=2.0)
        >>> b = a.gather()
        >>> b[0] = 7.0
        >>> a.tolist(), b.tolist()
        ([2.0, 2.0, 2.0], [7.0, 2.0, 2.0])
        """
        seg = self._segment()
        home = seg.home or _this_node()
        home_id = None if home is None else home[0]
        src = home_id if node is None else node
        if src != home_id and src not in seg.copies:
            raise SharedArrayError(
                f"shared array {seg.ident} has no copy on node {src} (its home is "
                f"{'this machine' if home is None else _node_name(*home)}; copies on "
                f"{sorted(seg.copies) or 'no other node'})"
            )
        here = _this_node()
        if here is None or src is None or here[0] == src:
            data = np.asarray(self)
            if here is not None and src != home_id:  # read this node's copy
                data = _local_view(self, src)
        else:
            strategy = volley.NodeAffinitySchedulingStrategy(src)
            task = volley.remote(num_cpus=0, max_retries=0, scheduling_strategy=strategy)
            ref = task(_read_copy).remote(self)
            try:
                data = volley.get(ref, timeout=_TRANSFER_TIMEOUT_S)
            except volley.GetTimeoutError:
                raise SharedArrayError(
                    f"gather: the task reading shared array {seg.ident} on node {src} did not "
                    f"finish in {_TRANSFER_TIMEOUT_S} s (does that node run workers?)"
                ) from None
        out = shared_array(self.shape, self.dtype)
        out[...] = data
        return out

    def scatter(self, node: int | None = None) -> SharedArray:
        """Puts a copy of this array's current contents on every other node of the cluster (or
        on ``node``), held there by a small actor until :meth:`free`. Afterwards the handle works
        on those nodes too: a task there maps its node's copy. The copies are snapshots: writes
        on one node are not seen on another (:meth:`gather` with ``node=`` reads one back).
        Returns the array itself. On one machine there is no other node and nothing to do.

        >>> a = volley.shared_array(3, fill=1.0)
        >>> a.scatter() is a
        True
        """
        seg = self._segment()
        if not seg.owner:
            raise SharedArrayError(f"only the creator of shared array {seg.ident} scatters it")
        library.init_if_needed()
        home = seg.home or _this_node()
        assert home is not None  # volley runs here now
        seg.home = home
        ids = [n["node_id"] for n in volley.nodes() if not n.get("driver")]
        ids = [i for i in ids if i != home[0]]
        if node is not None:
            if node != home[0] and node not in ids:
                raise ValueError(f"scatter: no node {node} in the cluster (nodes: {ids})")
            ids = [i for i in ids if i == node]
        whole = self if self.flags.c_contiguous else np.ascontiguousarray(self)
        data = np.asarray(whole).view(np.ndarray).copy()
        keeper_cls = volley.remote(num_cpus=0, max_restarts=0)(_Keeper)
        made = []
        for i in ids:
            if i in seg.copies:
                continue
            strategy = volley.NodeAffinitySchedulingStrategy(i)
            keeper = keeper_cls.options(scheduling_strategy=strategy).remote()
            made.append((i, keeper, keeper.hold.remote(data)))
        for i, keeper, ref in made:
            try:
                place = volley.get(ref, timeout=_TRANSFER_TIMEOUT_S)
            except volley.GetTimeoutError:
                raise SharedArrayError(
                    f"scatter: the copy of shared array {seg.ident} on node {i} was not made in "
                    f"{_TRANSFER_TIMEOUT_S} s"
                ) from None
            seg.copies[i] = place
            seg.keepers.append(keeper)
        return self


_TRANSFER_TIMEOUT_S = 120


def _local_view(arr: SharedArray, node: int) -> np.ndarray:
    """This node's copy of ``arr`` (the handle rebuilt here maps it)."""
    import pickle

    return np.asarray(pickle.loads(pickle.dumps(arr))).view(np.ndarray)


def _read_copy(arr: SharedArray) -> np.ndarray:
    """In a task on the node to read: the array (mapped there) as an ordinary array."""
    return np.array(arr).view(np.ndarray)


class _Keeper:
    """An actor on one node that holds a scattered copy of an array."""

    def __init__(self) -> None:
        self.arr: SharedArray | None = None

    def hold(self, data: np.ndarray) -> _Place:
        self.arr = shared_array(data.shape, data.dtype)
        self.arr[...] = data
        seg = self.arr._segment()
        with _state_lock:
            _held[(seg.place.dev, seg.place.ino)] = seg
        return seg.place


def shared_array(shape: int | tuple[int, ...], dtype: Any = float, fill: Any = None) -> SharedArray:
    """A new numpy array of ``shape`` and ``dtype`` in shared memory that every process of this
    node may write: pass it to tasks and actors like any argument and they write the same
    memory (no copy travels). Filled with ``fill`` (zeros when None: fresh memory is zero).
    Per node on a cluster: see :meth:`SharedArray.scatter` and :meth:`SharedArray.gather`.
    Freed by :meth:`SharedArray.free`, a ``with`` block, or the end of the creator's session.

    >>> a = volley.shared_array((2, 3), dtype="int32", fill=1)
    >>> a.shape, a.dtype, int(a.sum())
    ((2, 3), dtype('int32'), 6)
    >>> with volley.shared_array(1000) as b:
    ...     float(b.sum())
    0.0
    """
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    if not isinstance(shape, tuple) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape
    ):
        raise TypeError(f"shape must be an int or a tuple of ints, not {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes: {shape}")
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype {dtype!r} is not a numpy dtype: {e}") from None
    if dt.hasobject:
        raise TypeError(
            f"dtype {dt} holds Python objects (pointers into one process's memory): a shared "
            f"array holds plain values only"
        )
    count = 1
    for s in shape:
        count *= int(s)
    seg = _create(count * dt.itemsize)
    arr = np.ndarray(tuple(int(s) for s in shape), dt, buffer=seg.mm).view(SharedArray)
    arr._seg = seg
    if fill is not None:
        arr.fill(fill)
    return arr
