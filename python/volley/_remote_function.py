"""Remote functions: ``@volley.remote`` on a function, its options and its ``.remote()`` calls."""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from typing import Generic, TypeVar

from . import _core, _session
from ._core import ObjectRef
from ._generator import ObjectRefGenerator
from ._options import check_options, requests, strategy
from ._serialization import (
    EMPTY_ARGS,
    Dep,
    _references,
    _what,
    describe_unpicklable,
    describe_unpicklable_code,
    dumps_args,
)
from ._session import ensure_init
from ._signature import checker
from .exceptions import SerializationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    # Only a type checker reads this import (its stubs come with it): no runtime dependency.
    from typing_extensions import ParamSpec, TypeAlias

    #: A remote function's options as ``_core.submit`` takes them, and its ``num_returns`` as
    #: given (an int, or "streaming").
    Typed: TypeAlias = "tuple[_core.TaskOptions, int | str]"
elif sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # Python 3.9 has no ParamSpec; at run time Generic only needs a type variable.
    ParamSpec = TypeVar

#: The parameters and the return type of the function ``@volley.remote`` made remote: a type
#: checker sees ``f.remote(...)`` take the function's arguments and give ``ObjectRef[R]``.
P = ParamSpec("P")
R = TypeVar("R")

#: No arguments, packed as ``_core.submit`` takes them (data, buffers, contained refs).
EMPTY_PACKED = (EMPTY_ARGS, [], [])


class _Unset:
    """A cached value not computed yet; pickles as a reference, so it is the same object in
    every process."""

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

#: A function (or actor class) this large when pickled gets a warning: it is sent to every
#: worker that runs it, and it usually closes over data that should be passed with put.
LARGE_FUNCTION_WARNING = 10 << 20


def _warn_large(fn: Any, size: int) -> None:
    """Warns (once per function: it is pickled once) that ``fn`` is large when pickled, naming
    the biggest value it captures when one can be found cheaply."""
    biggest, biggest_size = None, 0
    for how, v in _references(fn):
        n = getattr(v, "nbytes", None)
        if not isinstance(n, int):
            n = len(v) if isinstance(v, (bytes, bytearray, str)) else 0
        if n > biggest_size:
            biggest, biggest_size = how, n
    captured = f" (it {biggest}, {biggest_size / 1e6:.0f} MB)" if biggest_size > size // 2 else ""
    warnings.warn(
        f"{_what(fn)} is {size / 1e6:.0f} MB when pickled{captured}: put large data with "
        "volley.put and pass the ref",
        stacklevel=5,  # the caller's .remote() (-> _submit -> _function_id -> here)
    )


class Shipped:
    """Something pickled once and registered with the node under a hash of its bytes (a
    function, or an actor class); ``_fn`` is the object."""

    _fn: Any
    _pickled: tuple[bytes, bytes] | None
    _registered_generation: int

    def _function_id(self, name: str) -> bytes:
        if self._pickled is None:
            # Imported at the first call, not with volley: `import volley` stays fast (every
            # worker process imports it), and a worker that only runs tasks never needs them.
            import cloudpickle

            try:  # blake2b without hashlib, which loads OpenSSL's libcrypto (~2 ms)
                from _blake2 import blake2b
            except ImportError:
                from hashlib import blake2b

            try:
                data = cloudpickle.dumps(self._fn, protocol=5)
            except Exception as e:
                raise SerializationError(describe_unpicklable_code(self._fn, e)) from e
            if len(data) >= LARGE_FUNCTION_WARNING:
                _warn_large(self._fn, len(data))
            self._pickled = (blake2b(data, digest_size=16).digest(), data)
        fid, data = self._pickled
        if self._registered_generation != _session.generation:
            _core.register_function(fid, data)
            self._registered_generation = _session.generation
        return fid


class NotCallable:
    """What ``@volley.remote`` makes (a remote function, an actor class): calling it directly is
    a mistake that names ``.remote(...)``; its repr names its kind and what it wraps."""

    #: How the error names it ("remote function") and what calling it would do ("called").
    _what = ""
    _verb = "called"

    def _names(self) -> tuple[str, str]:
        """(the name the error shows, the name the repr shows)."""
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._names()[0]
        raise TypeError(
            f"{self._what} '{name}' cannot be {self._verb} directly; use {name}.remote(...)"
        )

    def __repr__(self) -> str:
        return f"<volley.{type(self).__name__} {self._names()[1]}>"


class RemoteFunction(Shipped, NotCallable, Generic[P, R]):
    """A function that runs as a task in a worker process; made by ``@volley.remote``.

    ``f.remote(*args, **kwargs)`` submits a call and returns an ``ObjectRef`` at once (a list of
    refs when ``num_returns > 1``). Top-level ``ObjectRef`` arguments are replaced by their values
    before the call; the task waits for them in the scheduler, not in a worker.

    >>> @volley.remote
    ... def add(a, b):
    ...     return a + b
    >>> volley.get(add.remote(1, add.remote(2, 3)))
    6
    """

    def __init__(self, fn: Callable[P, R], options: dict):
        self._fn = fn
        self._options = check_options(dict(options))
        self._name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "task")
        self._pickled: tuple[bytes, bytes] | None = None
        self._registered_generation = -1
        self._check: Any = UNSET  # the signature stub, made at the first call
        self._typed: Typed | None = None  # the options as _core takes them, made at the first call
        # A generator function streams its items unless num_returns says otherwise (as Ray's
        # tasks do since Ray 2.8).
        self._default_returns: int | str = "streaming" if _is_generator(fn) else 1
        functools.update_wrapper(self, fn)

    def __getstate__(self) -> dict:
        # Registration is per process: a copy pickled into a task registers itself again there.
        state = self.__dict__.copy()
        state["_registered_generation"] = -1
        state["_check"] = UNSET  # a stub is made where it is used
        state["_typed"] = None  # (a _core object) made again where it is used
        return state

    _what = "remote function"

    def _names(self) -> tuple[str, str]:
        return self._name, self._name

    def options(self, **options: Any) -> BoundRemoteFunction[P, R]:
        """The same function with some options overridden for the calls made through it.

        >>> @volley.remote
        ... def divide(a, b):
        ...     return divmod(a, b)
        >>> q, r = divide.options(num_returns=2).remote(7, 2)
        >>> volley.get([q, r])
        [3, 1]
        """
        merged = dict(self._options)
        merged.update(options)
        return BoundRemoteFunction(self, check_options(merged))

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]:
        """Submits a call; returns an ``ObjectRef`` (or a list of them for ``num_returns > 1``,
        an ``ObjectRefGenerator`` for a streaming generator: a type checker sees the common
        case).

        Arguments that do not fit the function's signature raise ``TypeError`` here, before
        anything is submitted; unpicklable ones raise ``SerializationError``.
        """
        return self._submit(args, kwargs, self._options, self)

    def _typed_options(self, opts: dict, name: str) -> Typed:
        """``opts`` checked and converted for ``_core.submit`` (once per options, not per
        call), with the ``num_returns`` the caller's result depends on."""
        n = opts.get("num_returns", self._default_returns)
        streaming = n == "streaming"
        cpus, resources = requests(opts, 1, f"task '{name}'")
        typed = _core.TaskOptions(
            name,
            1 if streaming else n,
            cpus,
            opts.get("max_retries", 3),
            bool(opts.get("retry_exceptions", False)),
            streaming,
            resources,
            strategy(opts),
        )
        return typed, n

    def _submit(self, args: tuple, kwargs: dict, opts: dict, owner: Any = None) -> Any:
        """Submits a call with options ``opts``; ``owner`` (this function, or its
        ``.options(...)`` copy, whose options ``opts`` are) keeps their converted form for the
        next call. Options built for one call (``owner`` None) are converted each time."""
        check = self._check
        if check is not None:
            if check is UNSET:
                check = self._check = checker(self._fn, self._name)
            if check is not None:
                # A wrong call fails here, before anything is submitted or stored.
                try:
                    check(*args, **kwargs)
                except TypeError as e:
                    raise TypeError(str(e)) from None
        ensure_init()
        if owner is None and opts is self._options:
            owner = self
        name = opts.get("name") or self._name
        fid = self._function_id(name)
        deps: list[ObjectRef] = []
        if args or kwargs:
            if any(type(a) is ObjectRef for a in args):
                args = tuple(as_dep(a, deps) for a in args)
            if any(type(v) is ObjectRef for v in kwargs.values()):
                kwargs = {k: as_dep(v, deps) for k, v in kwargs.items()}
            try:
                data, buffers, contained = dumps_args(args, kwargs)
            except Exception as e:
                msg = describe_unpicklable(args, kwargs, f"task '{name}'", e)
                raise SerializationError(msg) from e
        else:
            data, buffers, contained = EMPTY_PACKED
        typed = owner._typed if owner is not None else None
        if typed is None:
            typed = self._typed_options(opts, name)
            if owner is not None:
                owner._typed = typed
        options, n = typed
        refs = _core.submit(fid, data, buffers, contained, deps, options)
        if n == "streaming":
            return ObjectRefGenerator(refs[0])
        return refs[0] if n == 1 else refs


def _is_generator(fn: Any) -> bool:
    """Whether ``fn`` is a generator function (``def f(): yield``)."""
    return inspect.isgeneratorfunction(fn)


def as_dep(value: Any, deps: list) -> Any:
    """``value``, or a placeholder for it (appended to ``deps``) if it is an ``ObjectRef``:
    the scheduler waits for that value and the worker puts it in."""
    if type(value) is ObjectRef:
        deps.append(value)
        return Dep(len(deps) - 1)
    return value


class BoundRemoteFunction(Generic[P, R]):
    """A remote function with options fixed by ``.options(...)``."""

    def __init__(self, rf: RemoteFunction[P, R], options: dict):
        self._rf = rf
        self._options = options
        self._typed: Typed | None = None  # made at the first call (see RemoteFunction._submit)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_typed": None}  # a _core object, made again where it is used

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> ObjectRef[R]:
        return self._rf._submit(args, kwargs, self._options, self)

    def options(self, **options: Any) -> BoundRemoteFunction[P, R]:
        merged = dict(self._options)
        merged.update(options)
        return BoundRemoteFunction(self._rf, check_options(merged))


def unwrap(fn: Any, default_name: str) -> tuple[Callable, dict, str]:
    """``(function, options, name)`` of a remote function (or its ``.options(...)``), or of a
    plain callable (no options; ``default_name`` if it has no name): see
    ``volley.library.unwrap_remote``."""
    if isinstance(fn, RemoteFunction):
        return fn._fn, dict(fn._options), fn._name
    if isinstance(fn, BoundRemoteFunction):
        return fn._rf._fn, dict(fn._options), fn._rf._name
    if not callable(fn):
        raise TypeError(f"a callable is needed, not {type(fn).__name__}")
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or default_name
    return fn, {}, name
