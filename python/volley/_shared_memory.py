"""Shared memory files that the processes of one node map together: the layer under
:func:`volley.shared_array` and ``volley.multiprocessing``'s ``Value``/``Array``, without numpy.

A segment is an anonymous memory file (``memfd_create``, mode 0600: no name anywhere, so nothing
is ever left in ``/dev/shm``), mapped shared. Its handle (:func:`_handle`) is the creator's pid,
the descriptor's number and the file's device and inode; a process of the same node attaches
(:func:`_attach`) by opening ``/proc/<pid>/fd/<n>`` (granted by the kernel to the same user
only), checks the file's identity (a recycled pid or descriptor is refused) and maps it once,
however many handles arrive. A process of another node is refused with an error naming both
nodes, unless a copy was scattered there. The creator keeps the file open once a handle went
out, until ``free()`` or the end of its volley session; a segment never passed on is closed
when garbage collected. See docs/shared-array.md.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import threading
import weakref
from typing import Any

from volley import _core

from .exceptions import SharedArrayError

# ------------------------------------------------------------------------ where this process runs

_node_lock = threading.Lock()
_worker_node: tuple[int, int, str] | None = None  # (pid, node id, address) in a worker


def _this_node() -> tuple[int, str] | None:
    """``(node id, address)`` of the node this process belongs to, or None where volley does not
    run. A worker's node never changes, so it asks its node once."""
    import volley

    global _worker_node
    mode = _core.mode()
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
    descriptor open so that other processes can open it; an opener closes its own at once.
    ``mm`` is the memory (a ctypes byte array), ``nbytes`` its size
    (``volley.library.SharedMemorySegment``).

    >>> seg = library.create_shared_memory(16)
    >>> isinstance(seg, library.SharedMemorySegment), seg.nbytes, seg.owner
    (True, 16, True)
    """

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
        self.start = ctypes.addressof(mm)

    @property
    def owner(self) -> bool:
        return self.fd is not None

    def contains(self, a: Any) -> bool:
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


_MEMFD_NAME = "volley-shared-array"  # /proc/<pid>/fd/<n> reads "/memfd:<name> (deleted)"


def _available_bytes() -> int | None:
    """Memory this machine can still give (available memory plus free swap), or None."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        kib = int(fields["MemAvailable"].split()[0]) + int(fields["SwapFree"].split()[0])
    except (OSError, KeyError, ValueError):
        return None
    return kib * 1024


def _create(nbytes: int) -> _Segment:
    """A new shared memory file of ``nbytes``, zeroed, mapped in this process
    (``volley.library.create_shared_memory``): anonymous (a memfd, mode 0600), so nothing is
    left behind when its processes end.

    >>> seg = library.create_shared_memory(8)
    >>> seg.mm[0] = 42
    >>> bytes(seg.mm[:2])
    b'*\\x00'
    """
    size = max(nbytes, 1)
    # The file's pages come when first written: one larger than the memory left would be
    # made, then kill its writer with SIGBUS. Refuse it here instead.
    available = _available_bytes() if size > 1 << 26 else None
    if available is not None and size > available:
        raise MemoryError(
            f"a shared memory file of {size:,} bytes: this machine has {available:,} bytes of "
            f"memory and swap available"
        )
    try:
        fd = os.memfd_create(_MEMFD_NAME, os.MFD_CLOEXEC)
    except OSError as e:
        raise OSError(
            e.errno,
            f"cannot create a shared memory file: {e.strerror} (each shared array holds a file "
            f"descriptor in its creator until free() or the end of its session)",
        ) from None
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
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{_MEMFD_NAME} "):
            raise SharedArrayError(
                f"{what}: {path} is not a volley shared memory file (a forged or stale handle)"
            )
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


def _attach(
    ident: str,
    nbytes: int,
    place: _Place,
    home: tuple[int, str] | None,
    copies: dict[int, _Place],
    lock: Any,
) -> _Segment:
    """Unpickles a handle: its segment mapped in this process (see the module's doc;
    ``volley.library.attach_shared_memory``). In the creating process it is the same mapping.

    >>> seg = library.create_shared_memory(8)
    >>> seg.mm[1] = 9
    >>> library.attach_shared_memory(*library.shared_memory_handle(seg)).mm[1]
    9
    """
    with _state_lock:  # mapped here already: this process is on its node (or made it)
        seg = _mapped.get((place.dev, place.ino))
    if seg is None:
        here = _this_node()
        if here is not None and home is not None and here[0] != home[0]:
            if here[0] not in copies:
                raise SharedArrayError(
                    f"shared array {ident} lives in the memory of {_node_name(*home)}, where "
                    f"pid {place.pid} created it; this process runs on {_node_name(*here)}. A "
                    f"shared array is per node: call arr.scatter() (a copy on every node) or "
                    f"arr.scatter(node={here[0]}) before passing it here, or arr.gather() on "
                    f"this node for a copy"
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
    if seg.lock is None:
        seg.lock = lock
    return seg


def _handle(seg: _Segment) -> tuple:
    """The arguments of :func:`_attach` that pickle ``seg`` (see the module's doc); the creator
    keeps its file open from now on, until ``free()`` or the end of its session
    (``volley.library.shared_memory_handle``).

    >>> handle = library.shared_memory_handle(library.create_shared_memory(8))
    >>> isinstance(handle, tuple)
    True
    """
    import volley

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
    return (seg.ident, seg.nbytes, seg.place, seg.home, dict(seg.copies), seg.lock)
