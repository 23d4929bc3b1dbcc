"""A disk cache of function results (joblib ``Memory``'s job), for plain and remote functions:
``volley.cache(location)`` (docs/cache.md).

A result is stored under a key made of the function (its module, name and source code) and a
hash of its arguments (numpy arrays hashed by their content), in one file that appears whole or
not at all: it is written under a temporary name and renamed into place, so a reader never sees
half of it. Arrays (any object pickled with out-of-band buffers) are written raw, aligned, after
the pickle, and come back memory-mapped, read-only. Every process that can read the directory
shares the results: a node's workers, and the nodes of a cluster when the directory is on a
shared file system. Two processes that miss the same key at once do not both compute it: the
first takes the key's lock (``flock``, released by the kernel if its process dies), the others
wait for its result. A cache may be bounded (``size_limit``): the least recently used results
are evicted.

Cached results are pickles, and loading a pickle runs code: only this user may write the cache
directory. It is created with mode 0700, and an existing one owned by someone else, or that
others may write, is refused.

>>> import tempfile
>>> memory = volley.cache(tempfile.mkdtemp())
>>> @memory
... def square(x):
...     print("computing")
...     return x * x
>>> square(4)
computing
16
>>> square(4)
16
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import logging
import marshal
import mmap
import os
import pickle
import re
import shutil
import stat
import sys
import time
from typing import Any, Callable, Iterator

import cloudpickle

from .exceptions import CacheDirError

__all__ = ["Cache", "CacheDirError", "cache"]

_log = logging.getLogger("volley.cache")

#: The folder under ``location`` that holds the cache (as joblib's ``location/joblib``).
_ROOT = "volley-cache"
#: Buffers smaller than this are read into memory rather than mapped (a map costs more).
_MAP_MIN = 64 * 1024
#: A waiter for a key another process computes says so after this many seconds, and again
#: each time as long again has passed.
_SAY_AFTER = 10.0


def _parse_size(size: int | str | None) -> int | None:
    """``size_limit`` in bytes: an int, or a str like ``"500M"``, ``"2G"``, ``"64K"``."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise TypeError("size_limit must be a number of bytes or a str like '1G', not a bool")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"size_limit must be >= 0, not {size}")
        return size
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", size)
        if m:
            scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
            return int(float(m.group(1)) * scale)
        raise ValueError(f"size_limit {size!r} is not a size like '500M' or '2G'")
    raise TypeError(f"size_limit must be an int or a str like '1G', not {type(size).__name__}")


def _check_dir(path: str) -> None:
    """Refuses ``path`` unless it is a real directory of this user that nobody else may
    write."""
    st = os.lstat(path)
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.getuid():
        why = f"is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    elif st.st_mode & 0o022:
        why = f"has mode {stat.S_IMODE(st.st_mode):o} (group or others may write it)"
    if why:
        raise CacheDirError(
            f"refusing to use the cache directory {path}: it {why}. Cached results are "
            "pickles, and loading one runs code: only you may be able to write the cache"
        )


def _private_dir(path: str) -> None:
    """Creates ``path`` with mode 0700, or checks the one there."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    _check_dir(path)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", closefd=True) as f:
        return f.read()


class _Corrupt(Exception):
    """An entry that cannot be read back whole."""


# ---------------------------------------------------------------------------- hashing


def _array_key(dtype: str, shape: tuple, digest: bytes) -> None:
    """Stands for a numpy array in the argument hash (never called)."""


class _Hasher(cloudpickle.Pickler):
    """Pickles arguments into a hash: numpy arrays by their dtype, shape and content (not their
    memory layout or object identity), sets in a stable order."""

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t.__name__ in ("ndarray", "memmap") and t.__module__.startswith("numpy"):
            np = sys.modules["numpy"]
            if obj.dtype.hasobject:
                return obj.__reduce_ex__(5)
            a = np.ascontiguousarray(obj)
            # sha256: the fastest strong hash here (CPUs' SHA instructions), 4x blake2b.
            h = hashlib.sha256(a.view(np.uint8).reshape(-1).data).digest()
            return _array_key, (a.dtype.str, obj.shape, h)
        if t is set or t is frozenset:
            items = sorted(obj, key=_stable_bytes)
            return t, (items,)
        return super().reducer_override(obj)


def _stable_bytes(x: Any) -> bytes:
    buf = io.BytesIO()
    _Hasher(buf, protocol=5).dump(x)
    return buf.getvalue()


class _HashWriter:
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def write(self, b: Any) -> int:
        self.h.update(b)
        return len(b)


def _hash_args(arguments: list) -> str:
    w = _HashWriter()
    _Hasher(w, protocol=5).dump(arguments)
    return w.h.hexdigest()[:32]


def _hashable(value: Any) -> bool:
    try:
        _hash_args([value])
        return True
    except Exception:  # noqa: BLE001
        return False


def _code_hash(fn: Callable) -> str:
    """A hash of the function's code: its source text where there is one, else its compiled
    code (a function typed at a prompt), and the values it closes over as they are now (two
    functions made by one factory with different values are different functions)."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = marshal.dumps(code) if code is not None else repr(fn).encode()
    h = hashlib.sha256(text)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            h.update(_stable_bytes(cell.cell_contents))
        except Exception:  # noqa: BLE001 (an empty cell, or a value that cannot be pickled)
            h.update(b"?")
    return h.hexdigest()[:16]


def _func_dir_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or "unknown"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    ident = f"{module}.{name}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ident)[:120]
    return f"{safe}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------- the cache


class Cache:
    """A directory of cached results: decorate a function with it (``@memory`` or
    ``memory.cache(fn, ignore=[...])``); ``clear()`` empties it; with ``size_limit`` (bytes,
    or a str like ``"1G"``) the least recently used results are evicted after each store
    (``reduce_size()`` does it on demand).

    >>> import tempfile
    >>> memory = volley.cache(tempfile.mkdtemp(), size_limit="10M")
    >>> memory
    Cache(location=..., size_limit=10485760)
    """

    def __init__(self, location: str | os.PathLike, *, size_limit: int | str | None = None):
        if callable(location) and not isinstance(location, (str, os.PathLike)):
            raise TypeError(
                "volley.cache takes the cache's directory: write @volley.cache('/path/to/dir')"
            )
        if not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"location must be a path, not {type(location).__name__}")
        self.location = os.path.abspath(os.fspath(location))
        self.size_limit = _parse_size(size_limit)
        self._root = os.path.join(self.location, _ROOT)
        self._ready = False

    def __repr__(self) -> str:
        return f"Cache(location={self.location!r}, size_limit={self.size_limit!r})"

    def __reduce__(self) -> tuple:
        return _rebuild_cache, (self.location, self.size_limit)

    def _dir(self) -> str:
        """The cache's root, created (mode 0700) or checked, once per process."""
        if not self._ready:
            os.makedirs(self.location, mode=0o700, exist_ok=True)
            _private_dir(self._root)
            self._ready = True
        return self._root

    def __call__(self, fn: Callable | None = None, *, ignore: list[str] | None = None) -> Any:
        """Decorates ``fn`` (a plain function, or a ``@volley.remote`` one) so that its results
        are cached here; without ``fn``, a decorator (``@memory.cache(ignore=["verbose"])``).
        ``ignore`` names arguments left out of the key.

        >>> import tempfile
        >>> memory = volley.cache(tempfile.mkdtemp())
        >>> @memory.cache(ignore=["verbose"])
        ... def add(a, b, verbose=False):
        ...     return a + b
        >>> add(1, 2), add(1, 2, verbose=True), add.check_call_in_cache(1, 2)
        (3, 3, True)
        """
        if fn is None:
            return lambda f: self(f, ignore=ignore)
        if isinstance(fn, type):
            raise TypeError(f"volley.cache caches functions, not classes ({fn.__name__})")
        if inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"volley.cache cannot cache {fn.__qualname__}: a generator or coroutine "
                "function returns an object that runs later, not a result"
            )
        if not callable(fn):
            raise TypeError(f"volley.cache caches functions, not {type(fn).__name__}")
        if hasattr(fn, "remote") and hasattr(fn, "options"):
            from . import library, remote

            pyfn, options, _ = library.unwrap_remote(fn)
            wrapped = _wrap(self, pyfn, ignore)
            rf = remote(**options)(wrapped) if options else remote(wrapped)
            rf.clear = wrapped.clear  # type: ignore[attr-defined]
            rf.check_call_in_cache = wrapped.check_call_in_cache  # type: ignore[attr-defined]
            return rf
        return _wrap(self, fn, ignore)

    cache = __call__

    def _entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """(entry file, its stat) for every stored result."""
        root = self._dir()
        for fname in _listdir(root):
            fdir = os.path.join(root, fname)
            for cname in _listdir(fdir):
                cdir = os.path.join(fdir, cname)
                for ename in _listdir(cdir):
                    if ename.startswith(".") or ename.endswith(".lock"):
                        continue
                    path = os.path.join(cdir, ename)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield path, st

    def size(self) -> int:
        """The bytes the stored results take.

        >>> import tempfile
        >>> volley.cache(tempfile.mkdtemp()).size()
        0
        """
        return sum(st.st_size for _, st in self._entries())

    def reduce_size(self, size_limit: int | str | None = None) -> int:
        """Evicts the least recently used results (by their last store or hit) until the
        cache takes at most ``size_limit`` bytes (the cache's own by default); returns the
        bytes freed. A process reading an evicted result keeps its memory-mapped arrays.

        >>> import tempfile
        >>> volley.cache(tempfile.mkdtemp()).reduce_size(0)
        0
        """
        limit = _parse_size(size_limit) if size_limit is not None else self.size_limit
        if limit is None:
            return 0
        entries = sorted(self._entries(), key=lambda e: e[1].st_mtime_ns)
        total = sum(st.st_size for _, st in entries)
        freed = 0
        for path, st in entries:
            if total <= limit:
                break
            if _remove(path):
                total -= st.st_size
                freed += st.st_size
        return freed

    def clear(self) -> None:
        """Removes every stored result of this cache (all functions).

        >>> import tempfile
        >>> memory = volley.cache(tempfile.mkdtemp())
        >>> memory.clear()
        >>> memory.size()
        0
        """
        root = self._dir()
        for fname in _listdir(root):
            _discard(os.path.join(root, fname))


def _rebuild_cache(location: str, size_limit: int | None) -> Cache:
    return Cache(location, size_limit=size_limit)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _remove(path: str) -> bool:
    """Removes an entry file and its lock file; False if it was gone already. A process
    that has it memory-mapped keeps its pages."""
    try:
        os.unlink(path + ".lock")
    except FileNotFoundError:
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except IsADirectoryError:  # not an entry of this cache's format
        return _discard(path)
    return True


def _discard(path: str) -> bool:
    """Removes a directory: renamed aside first (atomically: nobody loads it after this), then
    deleted. False if it was gone already."""
    aside = os.path.join(
        os.path.dirname(path), f".trash-{os.path.basename(path)}-{os.urandom(6).hex()}"
    )
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


class _CachedFunction:
    """The cache of one function: its key, lookup, store and the lock of a key."""

    def __init__(
        self, store: Cache, fn: Callable, ignore: list[str] | None, code: str | None = None
    ) -> None:
        self.store, self.func = store, fn
        self.signature = inspect.signature(fn)
        params = self.signature.parameters
        ignore = list(ignore or ())
        for name in ignore:
            if not isinstance(name, str):
                raise TypeError(f"ignore lists argument names (str), not {name!r}")
            if name not in params:
                raise ValueError(
                    f"ignore names {name!r}, which is not an argument of "
                    f"{getattr(fn, '__qualname__', fn)}{self.signature}"
                )
        self.ignore = frozenset(ignore)
        self.func_dir = _func_dir_name(fn)
        self.code = code or _code_hash(fn)
        self._made: set[str] = set()  # the directories this process knows exist

    def __reduce__(self) -> tuple:
        # The code's hash travels with the function: a process that unpickles it may not see
        # its source (a function of the driver's __main__), and must use the same key.
        return _CachedFunction, (self.store, self.func, sorted(self.ignore), self.code)

    def key(self, args: tuple, kwargs: dict) -> str:
        bound = self.signature.bind(*args, **kwargs)  # a TypeError for a bad call, as fn's
        bound.apply_defaults()
        arguments = []
        for name, value in bound.arguments.items():
            if name in self.ignore:
                continue
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                value = sorted(value.items())
            arguments.append((name, value))
        try:
            return _hash_args(arguments)
        except Exception as e:
            names = [n for n, v in arguments if not _hashable(v)] or ["?"]
            raise TypeError(
                f"volley.cache cannot hash the argument {names[0]!r} of "
                f"{getattr(self.func, '__qualname__', self.func)} ({type(e).__name__}: {e}): "
                f"leave it out of the key with ignore=[{names[0]!r}]"
            ) from e

    def _paths(self, key: str) -> tuple[str, str]:
        cdir = os.path.join(self.store._dir(), self.func_dir, self.code)
        return cdir, os.path.join(cdir, key)

    def _make_dirs(self, cdir: str) -> None:
        if cdir in self._made:
            return
        fdir = os.path.dirname(cdir)
        for d in (fdir, cdir):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        self._made.add(cdir)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self.key(args, kwargs)
        cdir, edir = self._paths(key)
        found, value = _load(edir)
        if found:
            return value
        return self._compute(key, cdir, edir, args, kwargs)

    def _compute(self, key: str, cdir: str, edir: str, args: tuple, kwargs: dict) -> Any:
        self._make_dirs(cdir)
        lock_path = edir + ".lock"
        started = time.monotonic()
        said = _SAY_AFTER
        pause = 0.001
        while True:
            try:
                fd = os.open(
                    lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
            except FileNotFoundError:  # the function's directory was cleared meanwhile
                self._made.discard(cdir)
                self._make_dirs(cdir)
                continue
            try:
                import fcntl

                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    waited = time.monotonic() - started
                    if waited >= said:
                        _log.warning(
                            "volley.cache: %s has waited %.0f s for another process computing "
                            "%s (key %s; lock %s held by %s)",
                            os.getpid(), waited, self.func_dir, key, lock_path,
                            _holder(lock_path),
                        )  # fmt: skip
                        said += _SAY_AFTER
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
                    found, value = _load(edir)
                    if found:
                        return value
                    continue
                # The lock is ours if the name still leads to this file (eviction unlinks it,
                # and a waiter may have locked the unlinked one).
                try:
                    same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    continue
                try:
                    found, value = _load(edir)
                    if found:
                        return value
                    os.ftruncate(fd, 0)
                    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
                    value = self.func(*args, **kwargs)
                    self._keep(cdir, edir, value)
                    return value
                finally:
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # the lock file stays, for the next miss of this key

    def _keep(self, cdir: str, edir: str, value: Any) -> None:
        """Stores a computed value. A value that cannot be stored (it cannot be pickled, the
        disk is full) is not lost: the call returns it, with a warning that it was not
        cached."""
        try:
            try:
                _store(cdir, edir, value)
            except FileNotFoundError:  # the directory was cleared while it computed
                self._made.discard(cdir)
                self._make_dirs(cdir)
                _store(cdir, edir, value)
        except Exception as e:  # noqa: BLE001
            import warnings

            warnings.warn(
                f"volley.cache: the result of {self.func_dir} was not stored "
                f"({type(e).__name__}: {e}); it is returned, not cached",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        if self.store.size_limit is not None:
            self.store.reduce_size()

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Whether the result of this call is stored (without loading it)."""
        _, path = self._paths(self.key(args, kwargs))
        return os.path.isfile(path)

    def clear(self) -> None:
        """Removes this function's stored results (of every version of its code)."""
        _discard(os.path.join(self.store._dir(), self.func_dir))


def _holder(lock_path: str) -> str:
    try:
        return _read(lock_path).decode(errors="replace") or "a process"
    except OSError:
        return "a process"


def _wrap(store: Cache, fn: Callable, ignore: list[str] | None) -> Callable:
    cf = _CachedFunction(store, fn, ignore)

    @functools.wraps(fn)
    def cached(*args: Any, **kwargs: Any) -> Any:
        return cf(*args, **kwargs)

    cached.clear = cf.clear  # type: ignore[attr-defined]
    cached.check_call_in_cache = cf.check_call_in_cache  # type: ignore[attr-defined]
    cached.cache = store  # type: ignore[attr-defined]
    return cached


#: An entry file: this magic, the header's length (8 bytes, little endian), the header (JSON:
#: the pickle's offset and length, each buffer's offset and length, the file's size), the
#: pickle, then the buffers, each at an offset that is a multiple of _ALIGN.
_MAGIC = b"volley-cache-1\n"
_ALIGN = 64


def _load(path: str) -> tuple[bool, Any]:
    """``(True, value)`` for a whole stored entry, ``(False, None)`` if there is none; an
    entry that cannot be read back whole (truncated, damaged) is removed and reported as
    missing, so it is computed again."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False, None
    try:
        size = os.fstat(fd).st_size
        if size < _MAP_MIN:
            data: Any = os.read(fd, size + 1)
        else:
            data = memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
        n = len(_MAGIC)
        if len(data) != size or bytes(data[:n]) != _MAGIC:
            raise _Corrupt("not an entry, or not whole")
        hlen = int.from_bytes(data[n : n + 8], "little")
        header = json.loads(bytes(data[n + 8 : n + 8 + hlen]))
        if header["size"] != size:
            raise _Corrupt(f"{size} bytes, not {header['size']}")
        view = memoryview(data)
        off, length = header["pickle"]
        buffers = [view[o : o + k] for o, k in header["buffers"]]
        value = pickle.loads(view[off : off + length], buffers=buffers)
    except (ImportError, AttributeError) as e:
        # Whole, but this process cannot import what the result is made of (a class another
        # node's code defines): compute it here, and leave the entry to those that can.
        _log.warning("volley.cache: cannot load %s here (%s); computing it", path, e)
        return False, None
    # Any other failure to read it back (a damaged file) means: compute it again.
    except Exception as e:  # noqa: BLE001
        _log.warning("volley.cache: removing the damaged entry %s (%s)", path, e)
        _remove(path)
        return False, None
    finally:
        os.close(fd)
    try:
        os.utime(path)  # its last use, for eviction
    except OSError:
        pass
    return True, value


def _store(cdir: str, path: str, value: Any) -> None:
    """Writes ``value`` as a new entry file, whole or not at all: under a temporary name that
    is then renamed to ``path``."""
    buffers: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]

    def layout(hlen: int) -> tuple[dict, int]:
        pos = len(_MAGIC) + 8 + hlen
        header: dict = {"pickle": [pos, len(data)], "buffers": []}
        pos += len(data)
        for r in raws:
            pos = -(-pos // _ALIGN) * _ALIGN
            header["buffers"].append([pos, r.nbytes])
            pos += r.nbytes
        header["size"] = pos
        return header, pos

    # The header holds offsets that depend on its own length: pad it to a fixed point.
    hlen = 64
    while True:
        header, total = layout(hlen)
        text = json.dumps(header).encode()
        if len(text) <= hlen:
            text = text.ljust(hlen)
            break
        hlen = len(text) + 16
    tmp = os.path.join(cdir, f".tmp-{os.path.basename(path)}-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(_MAGIC + hlen.to_bytes(8, "little") + text)
            f.write(data)
            for (off, _), r in zip(header["buffers"], raws):
                f.write(b"\0" * (off - f.tell()))
                f.write(r)
            assert f.tell() == total
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def cache(location: str | os.PathLike, *, size_limit: int | str | None = None) -> Cache:
    """A disk cache of function results in ``location`` (joblib's ``Memory``): use it as a
    decorator, above or below ``@volley.remote``. A result is keyed by the function's module,
    name and source code and by a hash of its arguments (numpy arrays by content); arrays in a
    result come back memory-mapped, read-only. ``size_limit`` (bytes, or ``"500M"``,
    ``"2G"``) bounds the cache: the least recently used results are evicted.

    >>> import tempfile
    >>> location = tempfile.mkdtemp()
    >>> @volley.cache(location)
    ... @volley.remote
    ... def slow_square(x):
    ...     return x * x
    >>> volley.get(slow_square.remote(3))
    9
    >>> slow_square.check_call_in_cache(3)
    True
    """
    return Cache(location, size_limit=size_limit)
