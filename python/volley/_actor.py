"""Actors: a class instance in a process of its own, called through picklable handles.

``@volley.remote`` on a class gives an ``ActorClass``; ``Cls.remote(*args)`` starts the actor
and returns an ``ActorHandle`` at once; ``handle.method.remote(*args)`` returns an ``ObjectRef``.
The engine keeps each caller's calls in order, restarts dead actors (``max_restarts``), and
stops an actor once no handle to it is left anywhere (unless it is named or detached).
"""

from __future__ import annotations

import inspect
import pickle
from typing import Generic, TypeVar

from . import _core
from ._core import ObjectRef
from ._generator import ObjectRefGenerator
from ._options import requests, strategy
from ._remote_function import EMPTY_PACKED, UNSET, NotCallable, Shipped, as_dep
from ._resources import resource_list
from ._serialization import describe_unpicklable, dumps_args
from ._session import ensure_init
from ._signature import Shape, shape_of, stub
from .exceptions import SerializationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

#: The class ``@volley.remote`` made an actor class of (for a type checker: ``A.remote()`` is an
#: ``ActorHandle[A]``).
T = TypeVar("T")

_ACTOR_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "max_concurrency",
    "max_restarts",
    "max_task_retries",
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "scheduling_strategy",
}

#: Named actors live in this namespace unless told otherwise.
DEFAULT_NAMESPACE = "default"

_EMPTY = EMPTY_PACKED


def method(*, num_returns: int | str = 1) -> Callable:
    """Declares how many values an actor method returns (``"streaming"`` for a generator whose
    items come back one by one).

    >>> @volley.remote
    ... class Splitter:
    ...     @volley.method(num_returns=2)
    ...     def halves(self, xs):
    ...         return xs[: len(xs) // 2], xs[len(xs) // 2 :]
    >>> a, b = Splitter.remote().halves.remote([1, 2, 3, 4])
    >>> volley.get(b)
    [3, 4]
    """
    _check_num_returns(num_returns)

    def mark(fn):
        fn.__volley_num_returns__ = num_returns
        return fn

    return mark


def _check_num_returns(n: Any) -> None:
    if n != "streaming" and (not isinstance(n, int) or n < 1):
        raise ValueError(f"num_returns must be an int >= 1 or 'streaming', not {n!r}")


def _check_actor_options(options: dict) -> dict:
    unknown = set(options) - _ACTOR_OPTIONS
    if unknown:
        raise TypeError(
            f"unknown actor option(s) {sorted(unknown)}; known: {sorted(_ACTOR_OPTIONS)}"
        )
    c = options.get("num_cpus", 0)
    if not isinstance(c, (int, float)) or c < 0:
        raise ValueError(f"num_cpus must be a number >= 0, not {c!r}")
    for key in ("max_restarts", "max_task_retries"):
        v = options.get(key, 0)
        if not isinstance(v, int) or v < -1:
            raise ValueError(f"{key} must be an int >= -1 (-1: unlimited), not {v!r}")
    mc = options.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or mc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, not {mc!r}")
    for key in ("name", "namespace"):
        v = options.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise TypeError(f"{key} must be a non-empty string")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be None or 'detached', not {lifetime!r}")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("get_if_exists=True needs a name")
    resource_list(options, "actor")
    strategy(options)
    return options


# Dunder methods a handle never calls even where the class defines them: the instance's
# construction and teardown, and the attribute machinery the actor's process relies on.
_NOT_CALLABLE_DUNDERS = frozenset(
    {
        "__init__", "__new__", "__del__", "__init_subclass__", "__class_getitem__",
        "__subclasshook__", "__getattribute__", "__getattr__", "__setattr__", "__delattr__",
    }
)  # fmt: skip


def _own_dunder(cls: type, name: str) -> bool:
    """Whether dunder ``name`` is one ``cls`` (or a base other than ``object``) defines, and a
    handle may call it (``__call__``, ``__len__``, ``__getitem__``...: as in Ray)."""
    if name in _NOT_CALLABLE_DUNDERS:
        return False
    return any(name in vars(k) for k in cls.__mro__ if k is not object)


def _method_table(cls: type) -> tuple[dict, bool]:
    """``{name: num_returns}`` of the methods of ``cls`` a handle calls (the public ones and
    the dunder methods the class defines itself), and whether any is async."""
    methods: dict[str, int | str] = {}
    is_async = False
    for name in dir(cls):
        if name.startswith("__") and name.endswith("__") and not _own_dunder(cls, name):
            continue
        attr = inspect.getattr_static(cls, name, None)
        fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if not callable(fn):
            continue
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
        n = getattr(fn, "__volley_num_returns__", None)
        if n is None:
            generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
            n = "streaming" if generator else 1
        methods[name] = n
    return methods, is_async


def _method_shapes(cls: type, methods: dict) -> dict[str, Shape | None]:
    """The parameters callers pass to each method (without ``self``/``cls``), to check calls
    at ``.remote()``; None where they cannot be read."""
    out: dict[str, Shape | None] = {}
    for name in methods:
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, staticmethod):
            out[name] = shape_of(attr.__func__)
        elif isinstance(attr, classmethod):
            out[name] = shape_of(attr.__func__, drop_first=True)
        elif inspect.isfunction(attr):
            out[name] = shape_of(attr, drop_first=True)
        else:
            out[name] = None
    return out


class ActorClass(NotCallable, Generic[T]):
    """A class made remote with ``@volley.remote``: ``Cls.remote(*args)`` starts an actor.

    Options (on the decorator or ``Cls.options(...)``): ``num_cpus`` (held for the actor's
    lifetime, default 0), ``num_gpus``, ``resources``, ``max_concurrency`` (calls at once: a
    thread pool, or coroutines for a class with ``async def`` methods, default 1000 there and 1
    otherwise), ``max_restarts`` (recreate the actor after its process dies, default 0, -1:
    always), ``max_task_retries`` (resend calls in flight at that moment, default 0),
    ``name``/``namespace`` (find it with ``volley.get_actor``), ``lifetime="detached"``,
    ``get_if_exists``.

    >>> @volley.remote
    ... class Counter:
    ...     def __init__(self, start=0):
    ...         self.n = start
    ...     def incr(self, by=1):
    ...         self.n += by
    ...         return self.n
    >>> c = Counter.remote(10)
    >>> volley.get([c.incr.remote() for _ in range(3)])
    [11, 12, 13]
    """

    def __init__(self, cls: type[T], options: dict):
        self._cls = cls
        self._options = _check_actor_options(dict(options))
        self._shipped = Shipped()
        self._shipped._fn = cls
        self._shipped._pickled = None
        self._shipped._registered_generation = -1
        self._meta: tuple[bytes, dict] | None = None
        self._check: Any = UNSET  # the stub checking __init__'s arguments
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__

    _what = "actor class"
    _verb = "instantiated"

    def _names(self) -> tuple[str, str]:
        return self._cls.__name__, self._cls.__qualname__

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        shipped = Shipped()
        shipped._fn = self._cls
        shipped._pickled = self._shipped._pickled
        shipped._registered_generation = -1
        state["_shipped"] = shipped
        state["_check"] = UNSET
        return state

    def options(self, **options: Any) -> _BoundActorClass[T]:
        """The same class with some options overridden for the actors made through it.

        >>> c = Counter.options(name="global", max_restarts=2).remote()
        >>> volley.get(c.incr.remote())
        1
        """
        merged = dict(self._options)
        merged.update(options)
        return _BoundActorClass(self, _check_actor_options(merged))

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        """Starts an actor (in a new process) and returns its handle at once.

        ``__init__`` runs in the actor's process; if it raises, every call on the handle raises
        ``ActorCreationError``. Arguments may be ``ObjectRef``s, resolved before ``__init__``;
        arguments that do not fit ``__init__`` raise ``TypeError`` here, at once.
        """
        return self._create(args, kwargs, self._options)

    def _handle_meta(self) -> tuple[bytes, dict]:
        if self._meta is None:
            methods, is_async = _method_table(self._cls)
            meta = {
                "class_name": self._cls.__qualname__,
                "methods": methods,
                "async": is_async,
                "shapes": _method_shapes(self._cls, methods),
            }
            self._meta = (pickle.dumps(meta, 5), meta)
        return self._meta

    def _create(self, args: tuple, kwargs: dict, opts: dict) -> ActorHandle[T]:
        name = self._cls.__qualname__
        check = self._check
        if check is UNSET:
            check = self._check = stub(name, shape_of(self._cls))
        if check is not None:
            _check_call(check, args, kwargs)
        ensure_init()
        fid = self._shipped._function_id(name)
        meta_bytes, meta = self._handle_meta()
        deps: list[ObjectRef] = []
        data, buffers, contained = _pack_args(args, kwargs, deps, f"actor '{name}'")
        mc = opts.get("max_concurrency") or (1000 if meta["async"] else 1)
        namespace = opts.get("namespace") or DEFAULT_NAMESPACE
        cpus, resources = requests(opts, 0, f"actor '{name}'")
        options = _core.ActorCreateOptions(
            name,
            num_cpus=cpus,
            resources=resources,
            max_restarts=opts.get("max_restarts", 0),
            max_task_retries=opts.get("max_task_retries", 0),
            max_concurrency=mc,
            is_async=bool(meta["async"]),
            name=opts.get("name"),
            namespace=namespace,
            detached=opts.get("lifetime") == "detached",
            get_if_exists=bool(opts.get("get_if_exists", False)),
            strategy=strategy(opts),
            meta=meta_bytes,
        )
        ref, meta_bytes, _created = _core.create_actor(fid, data, buffers, contained, deps, options)
        return ActorHandle(ref, meta_bytes)


class _BoundActorClass(Generic[T]):
    """An actor class with options fixed by ``.options(...)``."""

    def __init__(self, ac: ActorClass[T], options: dict):
        self._ac = ac
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        return self._ac._create(args, kwargs, self._options)

    def options(self, **options: Any) -> _BoundActorClass[T]:
        merged = dict(self._options)
        merged.update(options)
        return _BoundActorClass(self._ac, _check_actor_options(merged))


def _check_call(check: Callable, args: tuple, kwargs: dict) -> None:
    """A wrong call raises Python's ``TypeError`` here, before anything is submitted."""
    try:
        check(*args, **kwargs)
    except TypeError as e:
        raise TypeError(str(e)) from None


def _pack_args(args: tuple, kwargs: dict, deps: list, what: str) -> tuple:
    if not args and not kwargs:
        return _EMPTY
    if any(type(a) is ObjectRef for a in args):
        args = tuple(as_dep(a, deps) for a in args)
    if any(type(v) is ObjectRef for v in kwargs.values()):
        kwargs = {k: as_dep(v, deps) for k, v in kwargs.items()}
    try:
        return dumps_args(args, kwargs)
    except Exception as e:
        raise SerializationError(describe_unpicklable(args, kwargs, what, e)) from e


class ActorHandle(Generic[T]):
    """A handle on an actor: ``handle.method.remote(...)`` calls a method and returns an
    ``ObjectRef``. Handles pickle: pass them to tasks and other actors, which can call them.

    Calling a method the class does not have raises ``AttributeError`` at once, here. The
    dunder methods the class defines itself (not ``object``'s, nor ``__init__``) are methods
    too, as in Ray: ``handle.__call__.remote(x)``, ``handle.__len__.remote()``.

    >>> c = Counter.remote()
    >>> ref = c.incr.remote(5)
    >>> volley.get(ref)
    5
    >>> @volley.remote
    ... class Doubler:
    ...     def __call__(self, x):
    ...         return 2 * x
    >>> volley.get(Doubler.remote().__call__.remote(21))
    42
    """

    def __init__(self, ref: ObjectRef, meta_bytes: bytes):
        self._actor_ref = ref
        self._meta_bytes = meta_bytes
        self._meta = pickle.loads(meta_bytes)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            if name not in self.__dict__.get("_meta", {}).get("methods", ()):
                raise AttributeError(name)
        meta = self.__dict__.get("_meta")
        if meta is None:
            raise AttributeError(name)
        n = meta["methods"].get(name)
        if n is None:
            raise AttributeError(f"actor class '{meta['class_name']}' has no method '{name}'")
        display = f"{meta['class_name']}.{name}"
        m = ActorMethod(self._actor_ref, display, name, n, meta.get("shapes", {}).get(name))
        self.__dict__[name] = m  # the next lookup finds it without coming here
        return m

    def __reduce__(self):
        return (ActorHandle, (self._actor_ref, self._meta_bytes))

    def __repr__(self) -> str:
        return f"ActorHandle({self._meta['class_name']}, {self._actor_ref.hex()[:32]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_ref == self._actor_ref

    def __hash__(self) -> int:
        return hash(self._actor_ref)


class ActorMethod:
    """``handle.method``: ``.remote(*args)`` calls it; ``.options(num_returns=...)`` overrides
    how many values it returns for the calls made through it."""

    # It holds the actor's ref, not the handle: the handle caches its methods, and a cycle
    # would keep the actor alive until the garbage collector ran.
    __slots__ = ("_actor_ref", "_method", "_num_returns", "_display", "_shape", "_check", "_typed")

    def __init__(
        self,
        actor_ref: ObjectRef,
        display: str,
        method: str,
        num_returns: int | str,
        shape: Shape | None = None,
    ):
        self._actor_ref = actor_ref
        self._method = method
        self._num_returns = num_returns
        self._display = display
        self._shape = shape  # the method's parameters (None: calls are not checked)
        self._check = stub(display, shape)  # cached per (name, shape)
        streaming = num_returns == "streaming"
        # Checked and converted once here: each call passes it as it is.
        self._typed = _core.ActorCallOptions(
            method, display, 1 if streaming else num_returns, streaming
        )

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"actor method '{self._display}' cannot be called directly; "
            f"use .{self._method}.remote(...)"
        )

    def __reduce__(self):
        # The shape travels; the checking stub is made again from it where it lands.
        args = (self._actor_ref, self._display, self._method, self._num_returns, self._shape)
        return (ActorMethod, args)

    def options(self, *, num_returns: int | str | None = None) -> ActorMethod:
        n = self._num_returns if num_returns is None else num_returns
        _check_num_returns(n)
        return ActorMethod(self._actor_ref, self._display, self._method, n, self._shape)

    def remote(self, *args: Any, **kwargs: Any):
        """Submits the call; returns an ``ObjectRef`` (a list for ``num_returns > 1``, an
        ``ObjectRefGenerator`` for a streaming method). Arguments that do not fit the method's
        signature raise ``TypeError`` here, at once."""
        if self._check is not None:
            _check_call(self._check, args, kwargs)
        deps: list[ObjectRef] = []
        if args or kwargs:
            data, buffers, contained = _pack_args(args, kwargs, deps, f"call '{self._display}'")
        else:
            data, buffers, contained = _EMPTY
        n = self._num_returns
        refs = _core.submit_actor_call(self._actor_ref, data, buffers, contained, deps, self._typed)
        if n == "streaming":
            return ObjectRefGenerator(refs[0])
        return refs[0] if n == 1 else refs


def _handle_of(actor: Any, what: str) -> ActorHandle:
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"{what} takes an ActorHandle, not {type(actor).__name__}")
    return actor


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor called ``name``; ``ValueError`` if there is none. In a
    cluster the name is the cluster's: a name this node does not host is resolved through the
    head, so an actor another driver named on another node is found as soon as the head lists
    it (``volley.library.directory()`` lists them all).

    >>> hits = Counter.options(name="hits").remote()
    >>> volley.get(volley.get_actor("hits").incr.remote())
    1
    """
    if not isinstance(name, str) or not name:
        raise TypeError("get_actor takes a non-empty actor name")
    ensure_init()
    ns = namespace or DEFAULT_NAMESPACE
    found = _core.get_actor(name, ns)
    if found is None:
        raise ValueError(f"no actor named {name!r} in namespace {ns!r}")
    ref, meta = found
    return ActorHandle(ref, meta)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kills the actor's process at once (SIGKILL). Calls in flight and later calls raise
    ``ActorDiedError``. With ``no_restart=False`` the actor is restarted if its
    ``max_restarts`` allows.

    >>> c = Counter.remote()
    >>> volley.kill(c)
    >>> volley.get(c.incr.remote())
    Traceback (most recent call last):
    volley.exceptions.ActorDiedError: ...
    """
    _core.kill_actor(_handle_of(actor, "kill")._actor_ref, bool(no_restart))


def actor_state(actor: ActorHandle) -> dict | None:
    """The actor's state: ``state`` (``PENDING``, ``STARTING``, ``ALIVE``, ``RESTARTING`` or
    ``DEAD``), ``restarts``, ``pid``, ``class_name``, ``name``, ``namespace``,
    ``death_cause`` and ``pending_calls``; None once it is forgotten.

    >>> c = Counter.remote()
    >>> volley.get(c.incr.remote())
    1
    >>> volley.actor_state(c)["state"]
    'ALIVE'
    """
    return _core.actor_state(_handle_of(actor, "actor_state")._actor_ref)
