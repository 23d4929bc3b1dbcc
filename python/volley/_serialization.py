"""How values cross process boundaries: cloudpickle with pickle protocol 5 and out-of-band buffers.

Refs pickled inside a value are recorded so the value keeps them alive. Top-level ref arguments of
a task are replaced by placeholders that the worker fills with the refs' values before the call.
"""

from __future__ import annotations

import io
import pickle
import threading
import types

from . import _core
from .exceptions import (
    ACTOR_CREATION,
    KIND_CLASSES,
    SERIALIZATION,
    TASK_EXCEPTION,
    ActorCreationError,
    GetTimeoutError,
    VolleyError,
    task_error,
)

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any

_local = threading.local()


class Dep:
    """Stands in for the i-th top-level ref argument of a task."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i

    def __reduce__(self):
        return (_resolve_dep, (self.i,))


def _resolve_dep(i: int) -> Any:
    return _local.deps[i]


#: The pickled ``(args, kwargs)`` of a call without arguments.
EMPTY_ARGS = pickle.dumps(((), {}), 5)

_SIMPLE = frozenset({int, float, str, bool, type(None)})
_dumps_plain = pickle.dumps


#: A top-level bytes or bytearray value at least this large travels as an out-of-band buffer
#: (straight into the object store when large) instead of inside the pickle stream.
OUT_OF_BAND_MIN = 4096

# Formats a memoryview can be cast back to (native, one item per character).
_CASTABLE = frozenset("bBhHiIlLqQnNfdc?e")


def _rebuild_memoryview(buf: Any, fmt: str, shape: tuple) -> memoryview:
    view = memoryview(buf)
    if fmt == "B" and len(shape) == 1:
        return view
    return view.cast("B").cast(fmt, shape)


class _OutOfBand:
    """Wraps a top-level bytes/bytearray so its payload is pickled out of band (the C pickler
    writes exact bytes and bytearray in-band before any hook runs)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        return type(self.obj), (pickle.PickleBuffer(self.obj),)


_pickler_class = None


def _pickler() -> Any:
    """cloudpickle's pickler, also pickling memoryviews (as out-of-band buffers)."""
    global _pickler_class
    if _pickler_class is None:
        # cloudpickle is imported at the first pickling, not with volley: `import volley`
        # stays fast (every worker imports it).
        import cloudpickle

        PickleBuffer = pickle.PickleBuffer

        class Pickler(cloudpickle.Pickler):
            def reducer_override(self, obj):
                if type(obj) is memoryview and obj.format in _CASTABLE:
                    # Comes back as a read-only view of the stored bytes (C order, same
                    # format and shape), at any size.
                    src = obj if obj.c_contiguous else memoryview(obj.tobytes())
                    return _rebuild_memoryview, (PickleBuffer(src), obj.format, obj.shape)
                return super().reducer_override(obj)

        def dumps(obj, buffer_callback):
            f = io.BytesIO()
            Pickler(f, protocol=5, buffer_callback=buffer_callback).dump(obj)
            return f.getvalue()

        _pickler_class = dumps
    return _pickler_class


def dumps(obj: Any) -> tuple[bytes, list, list]:
    """Pickles ``obj``: (stream, out-of-band buffers, ids of refs inside it)."""
    if type(obj) in _SIMPLE:
        # Nothing cloudpickle adds is needed for a scalar; the C pickler is several times faster.
        return _dumps_plain(obj, 5), [], []
    t = type(obj)
    if (t is bytes or t is bytearray) and len(obj) >= OUT_OF_BAND_MIN:
        buffers: list = []
        data = _dumps_plain(_OutOfBand(obj), 5, buffer_callback=buffers.append)
        return data, [b.raw() for b in buffers], []
    pickle_to_bytes = _pickler()  # cloudpickle is imported on first use: plain data skips it

    buffers: list = []
    _core.begin_capture()
    try:
        data = pickle_to_bytes(obj, buffers.append)
    finally:
        contained = _core.end_capture()
    return data, [b.raw() for b in buffers], contained


# Placeholders are module-level and pickle by reference, so the plain pickler handles them too.
_SIMPLE_ARGS = _SIMPLE | {Dep}


def _plain_arg(v: Any, depth: int = 2) -> bool:
    """Whether the C pickler alone pickles ``v`` as well as cloudpickle would: scalars, ref
    placeholders, small bytes, and short tuples of those (two levels: Dask's keys)."""
    t = type(v)
    if t in _SIMPLE_ARGS:
        return True
    if t is bytes:
        return len(v) < OUT_OF_BAND_MIN
    if t is tuple and depth > 0 and len(v) <= 64:
        return all(_plain_arg(x, depth - 1) for x in v)
    return False


def dumps_args(args: tuple, kwargs: dict) -> tuple[bytes, list, list]:
    """Pickles a task's ``(args, kwargs)``; scalars, ref placeholders, small bytes and short
    tuples of them take the fast path."""
    simple = _SIMPLE_ARGS
    for a in args:
        if type(a) not in simple and not _plain_arg(a):
            return dumps(_out_of_band_args(args, kwargs))
    for v in kwargs.values():
        if type(v) not in simple and not _plain_arg(v):
            return dumps(_out_of_band_args(args, kwargs))
    return _dumps_plain((args, kwargs), 5), [], []


def _large_bytes(v: Any) -> bool:
    t = type(v)
    return (t is bytes or t is bytearray) and len(v) >= OUT_OF_BAND_MIN


def _out_of_band_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with each large bytes/bytearray argument wrapped to travel out of
    band: pickled in-band, a 1 GiB argument was copied into the pickle stream (which grows by
    reallocation) and then into the store, three times its size in memory; out of band it is
    copied once, straight into the store."""
    if any(_large_bytes(a) for a in args):
        args = tuple(_OutOfBand(a) if _large_bytes(a) else a for a in args)
    if any(_large_bytes(v) for v in kwargs.values()):
        kwargs = {k: _OutOfBand(v) if _large_bytes(v) else v for k, v in kwargs.items()}
    return args, kwargs


def loads(data: bytes, buffers: list, deps: list | None = None) -> Any:
    """Unpickles a value; ``deps`` fill the placeholders of top-level ref arguments."""
    if deps is None:
        return pickle.loads(data, buffers=buffers)
    _local.deps = deps
    try:
        return pickle.loads(data, buffers=buffers)
    finally:
        _local.deps = None


def describe_unpicklable(args: tuple, kwargs: dict, what: str, error: BaseException) -> str:
    """Names the argument that could not be pickled (and, for a function or class, what in it
    could not be)."""
    import cloudpickle  # an error's path: loaded already by the pickling that failed

    culprit = None
    for i, a in enumerate(args):
        try:
            cloudpickle.dumps(a, protocol=5)
        except Exception:
            culprit = f"argument {i} ({_what(a)}{_inside(a)})"
            break
    else:
        for k, v in kwargs.items():
            try:
                cloudpickle.dumps(v, protocol=5)
            except Exception:
                culprit = f"keyword argument '{k}' ({_what(v)}{_inside(v)})"
                break
    culprit = culprit or "the arguments"
    return f"could not serialize {culprit} of {what}: {type(error).__name__}: {error}"


def describe_unpicklable_code(obj: Any, error: BaseException) -> str:
    """Why a function or class could not be pickled, naming what it captures that cannot be:
    "function 'f' captures 'lock' (a _thread.lock): TypeError: ..."."""
    chain = _culprit(obj, set())
    cause = f"{type(error).__name__}: {error}"
    if chain is None:
        return f"could not serialize {_what(obj)}: {cause}"
    return f"{_what(obj)} {chain}: {cause}"


def _type_name(v: Any) -> str:
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _what(v: Any) -> str:
    """A value as error messages name it: "function 'f'", "class 'C'", "a _thread.lock"."""
    if isinstance(v, types.FunctionType):
        return f"function '{v.__qualname__}'"
    if isinstance(v, type):
        return f"class '{v.__qualname__}'"
    return f"a {_type_name(v)}"


def _inside(v: Any) -> str:
    """ ", which captures 'x' (a T)" for a function or class whose capture cannot be pickled."""
    chain = _culprit(v, set())
    return f", which {chain}" if chain else ""


def _references(obj: Any) -> list[tuple[str, Any]]:
    """What pickling a function or class by value takes along, each with how it is held:
    closure variables, the globals its code names (nested functions' too), defaults; for a
    class its attributes, its methods' references, and its bases."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                out.append((f"captures '{name}'", cell.cell_contents))
            except ValueError:  # an empty cell
                pass
        g = obj.__globals__
        seen: set[str] = set()
        stack = [code]
        while stack:
            c = stack.pop()
            for n in c.co_names:
                if n in g and n not in seen:
                    seen.add(n)
                    out.append((f"captures '{n}'", g[n]))
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        defaults = obj.__defaults__ or ()
        names = code.co_varnames[code.co_argcount - len(defaults) : code.co_argcount]
        for name, d in zip(names, defaults):
            out.append((f"has a default for '{name}'", d))
        for name, d in (obj.__kwdefaults__ or {}).items():
            out.append((f"has a default for '{name}'", d))
    elif isinstance(obj, type):
        for k, v in vars(obj).items():
            if k in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
                continue
            if isinstance(v, (staticmethod, classmethod)):
                v = v.__func__
            if isinstance(v, property):
                v = v.fget
            if isinstance(v, types.FunctionType):
                out.extend((f"has method '{k}', which {how}", x) for how, x in _references(v))
            else:
                out.append((f"has attribute '{k}'", v))
        out.extend(("has base class", b) for b in obj.__bases__ if b is not object)
    return out


def _culprit(obj: Any, seen: set) -> str | None:
    """How ``obj`` (a function or class) holds the first value in it that cannot be pickled:
    "captures 'lock' (a _thread.lock)", through nested functions; None if none is found."""
    import cloudpickle  # an error's path: loaded already by the pickling that failed

    if id(obj) in seen:
        return None
    seen.add(id(obj))
    for how, v in _references(obj):
        try:
            cloudpickle.dumps(v, protocol=5)
        except Exception:
            deeper = _culprit(v, seen)
            if how == "has base class":
                return f"has base {_what(v)}" + (f", which {deeper}" if deeper else "")
            return f"{how} ({_what(v)})" + (f", which {deeper}" if deeper else "")
    return None


def _load_cause(exc_bytes: bytes | None) -> BaseException | None:
    """The task's own exception, or None where it was not pickled or cannot be loaded here
    (its class may not exist in this process): the caller then says what it was in words."""
    if exc_bytes is None:
        return None
    try:
        return pickle.loads(exc_bytes)
    except Exception:
        return None


def to_exception(failure: _core.Failure) -> BaseException:
    """Turns an error result from the engine into the exception ``get`` raises."""
    kind, task_name, message = failure.kind, failure.task_name, failure.message
    tb, exc_bytes, pid = failure.traceback, failure.exception, failure.pid
    if kind == TASK_EXCEPTION:
        cause = _load_cause(exc_bytes)
        if cause is None:
            text = f"task '{task_name}' (pid {pid}) raised {message}\n\nRemote traceback:\n{tb}"
            return task_error(None, task_name, tb, pid, text)
        return task_error(cause, task_name, tb, pid)
    if kind == ACTOR_CREATION:
        cause = _load_cause(exc_bytes)
        what = f"{type(cause).__name__}: {cause}" if cause is not None else message
        text = f"actor creation '{task_name}' (pid {pid}) raised {what}"
        if tb:
            text += f"\n\nRemote traceback:\n{tb}"
        return ActorCreationError(
            text, cause=cause, task_name=task_name, remote_traceback=tb, pid=pid
        )
    cls = KIND_CLASSES.get(kind, VolleyError)
    text = message
    if tb and kind == SERIALIZATION:
        text += f"\n\nRemote traceback:\n{tb}"
    return cls(text)


def unpack(result: tuple[Any, list] | _core.Failure) -> Any:
    """The value of one result of ``_core.get`` (``(data, buffers)``), or raise its error (a
    ``_core.Failure``)."""
    if type(result) is tuple:
        return loads(result[0], result[1])
    raise to_exception(result)


__all__ = ["Dep", "dumps", "loads", "unpack", "to_exception", "GetTimeoutError"]
