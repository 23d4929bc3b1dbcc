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

from typing import Any

import numpy as np

import volley
from volley import library

from ._shared_memory import (
    SharedArrayError,
    _attach,
    _create,
    _handle,
    _held,
    _node_name,
    _Place,
    _Segment,
    _state_lock,
    _this_node,
)

__all__ = ["SharedArray", "SharedArrayError", "shared_array"]


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
    seg = _attach(ident, nbytes, place, home, copies, lock)
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
        if return_scalar:  # numpy 2's third argument (numpy 1 passes two)
            out = super().__array_wrap__(arr, context, return_scalar)
        else:
            out = super().__array_wrap__(arr, context)
        if isinstance(out, SharedArray) and out._seg is None:
            return out.view(np.ndarray)
        return out

    def __reduce_ex__(self, protocol: int) -> Any:
        seg = self._seg
        if seg is None:  # not (or no longer) shared memory: an ordinary array's pickle
            return self.view(np.ndarray).__reduce_ex__(protocol)
        args = _handle(seg)
        offset = self.__array_interface__["data"][0] - seg.start
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
            if not seg.owner:  # a lock made here would not be the other processes' one
                raise SharedArrayError(
                    f"shared array {seg.ident} was passed on while volley was not running in "
                    f"its creator (pid {seg.place.pid}), so it has no lock yet: use arr.lock "
                    f"in the creator before passing the array on"
                )
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
