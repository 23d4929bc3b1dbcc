"""``multiprocessing.Manager`` on volley: shared dicts, lists, namespaces and a user's own
classes, held by one volley actor and reached through picklable proxies from the driver, tasks,
actors and processes on any node of the cluster (docs/multiprocessing.md, "Manager").

Why an actor. The standard library's manager is a server process with its own socket and
authkey, reachable from one machine (a Unix socket by default). A volley actor is the same
thing, a process that holds the objects and serves calls on them, but volley already routes
calls to it from every node over its authenticated links, restarts nothing behind the user's
back, and reports its death to every caller. So a proxy is the actor's handle and an object
id; a method call is one actor call (``call(id, name, args, kwargs)``), and an exception raised
by the object comes back as the same exception class. The synchronisation objects and queues
(``m.Lock()``, ``m.Queue()``, ...) are issue 20's node primitives (``volley.sync``,
``volley.util.queue``): they already work on every node, a blocked ``get`` or ``acquire``
waits in the engine rather than holding a thread of the manager, and a lock held by a process
that dies is released. The manager shuts them down with itself.

>>> from volley.multiprocessing import Manager
>>> with Manager() as m:
...     d = m.dict(a=1)
...     d["b"] = 2
...     sorted(d.items())
[('a', 1), ('b', 2)]
"""

from __future__ import annotations

import array
import itertools
import os
import threading
import uuid
from multiprocessing import ProcessError
from multiprocessing.managers import RemoteError
from typing import Any, Callable

import volley
import volley.library
import volley.sync
import volley.util.queue
from volley.exceptions import (
    ActorCreationError,
    ActorDiedError,
    RemoteTraceback,
    SerializationError,
    TaskError,
    original_error,
)

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "BarrierProxy",
    "BaseManager",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "MakeProxyType",
    "Manager",
    "ManagerDiedError",
    "Namespace",
    "NamespaceProxy",
    "RemoteError",
    "SyncManager",
    "Value",
    "ValueProxy",
]


class ManagerDiedError(ConnectionError, ActorDiedError):
    """A proxy's manager is gone: it was shut down, or its process died (a ``ConnectionError``,
    as the standard library's proxies raise, and a ``volley.ActorDiedError``). The message
    names the manager. Its objects are lost with it.

    >>> issubclass(ManagerDiedError, ConnectionError)
    True
    """


# ------------------------------------------------------------------------------ the server


class Namespace:
    """A plain object whose attributes are its content (what ``m.Namespace()`` holds).

    >>> Namespace(a=1, _b=2)
    Namespace(a=1)
    """

    def __init__(self, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = sorted((k, v) for k, v in self.__dict__.items() if not k.startswith("_"))
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in items) + ")"


class Value:
    """A typed value (what ``m.Value(typecode, value)`` holds): ``get``, ``set`` and
    ``.value``. The type code is kept for the ``repr``; the value is any picklable object.

    >>> v = Value("i", 3)
    >>> v.value += 1
    >>> v
    Value('i', 4)
    """

    def __init__(self, typecode: str, value: Any, lock: Any = True) -> None:
        self._typecode, self._value = typecode, value

    def get(self) -> Any:
        return self._value

    def set(self, value: Any) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self._value!r})"

    value = property(get, set)


def _array(typecode: str, sequence: Any, lock: Any = True) -> array.array:
    return array.array(typecode, sequence)


def _public_methods(obj: Any) -> tuple[str, ...]:
    """The names a proxy of ``obj`` exposes when its type did not say: callable attributes
    whose names do not start with ``_``."""
    names = []
    for n in dir(obj):
        if n.startswith("_"):
            continue
        try:
            if callable(getattr(obj, n)):
                names.append(n)
        except Exception:  # noqa: BLE001 (a property that raises is not a method)
            pass
    return tuple(names)


_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
#: Methods every object answers, exposed or not (a proxy's ``str``/``repr``, ``_getvalue``).
_ALWAYS = frozenset(("__repr__", "__str__", "#GETVALUE"))


#: The servers this process runs, by their actor handle: a proxy used inside its own server (a
#: dict updated from another of the manager's dicts, a registered object calling a proxy) calls
#: it directly; through the actor it would wait for itself.
_LOCAL_SERVERS: dict[Any, _Server] = {}


class _Server:
    """A manager's process (an actor): holds objects by id and runs the methods proxies call.
    The containers' actor serves one call at a time (each operation atomic, the quickest round
    trip); the registered types' actor is threaded (``max_concurrency``), so that a method
    that waits does not stop the others."""

    def __init__(self, registry: dict, name: str, initializer: Any, initargs: tuple) -> None:
        self._registry = registry
        self._name = name
        self._objects: dict[int, tuple[Any, str, tuple]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        if initializer is not None:
            initializer(*initargs)

    def _add(self, obj: Any, typeid: str, exposed: tuple | None) -> tuple[int, tuple]:
        if exposed is None:
            exposed = _public_methods(obj)
        ident = next(self._ids)
        with self._lock:
            self._objects[ident] = (obj, typeid, tuple(exposed))
        return ident, tuple(exposed)

    def create(self, typeid: str, args: tuple, kwds: dict) -> tuple[int, tuple]:
        entry = self._registry.get(typeid)
        if entry is None:
            raise RemoteError(f"{self._name}: no type {typeid!r} registered")
        factory, exposed = entry[0], entry[1]
        if factory is None:
            raise RemoteError(f"{self._name}: {typeid!r} was registered without a callable")
        return self._add(factory(*args, **kwds), typeid, exposed)

    def call(self, ident: int, name: str, args: tuple, kwds: dict | None = None) -> tuple[int, Any]:
        """``(0, value)``, ``(1, (proxytype, typeid, id, exposed))`` for a result that is a
        new object proxied in turn (``method_to_typeid``), or ``(2, None)`` when the method
        returned the object itself (``+=``: the caller keeps its proxy)."""
        try:
            obj, typeid, exposed = self._objects[ident]
        except KeyError:
            raise RemoteError(
                f"{self._name}: no object with id {ident} (its iterator was exhausted, or "
                "it belongs to another manager)"
            ) from None
        if name not in exposed and name not in _ALWAYS:
            raise RemoteError(
                f"method {name!r} of {typeid!r} object is not in the list of allowed methods "
                f"{exposed!r}"
            )
        if name == "#GETVALUE":
            return 0, obj
        try:
            result = getattr(obj, name)(*args, **kwds) if kwds else getattr(obj, name)(*args)
        except StopIteration:
            with self._lock:  # an exhausted iterator is done with: keep an empty one
                self._objects[ident] = (iter(()), typeid, exposed)
            raise
        if result is obj and name.startswith("__i"):
            return 2, None
        to_typeid = self._registry[typeid][2]
        if to_typeid and name in to_typeid:
            new_typeid = to_typeid[name]
            new_id, new_exposed = self._add(result, new_typeid, self._registry[new_typeid][1])
            return 1, (self._registry[new_typeid][3], new_typeid, new_id, new_exposed)
        if isinstance(result, _VIEWS):
            result = list(result)
        return 0, result

    def hello(self, handle: Any) -> dict:
        """Learns its own handle (sent by the manager that started it); its ``info``."""
        _LOCAL_SERVERS[handle] = self
        return self.info()

    def info(self) -> dict:
        with self._lock:
            kinds = [t for _, t, _ in self._objects.values()]
        return {"pid": os.getpid(), "objects": len(kinds), "typeids": sorted(kinds)}


# ------------------------------------------------------------------------------ the proxies


def _remote(e: TaskError) -> BaseException:
    """The exception the manager's object raised, of its own class, with the manager's
    traceback as its ``__cause__``."""
    err = original_error(e, RemoteTraceback)
    err.__suppress_context__ = True
    return err


def _unpicklable(e: SerializationError) -> BaseException:
    """An argument that could not be pickled: a ``SerializationError`` (a
    ``pickle.PicklingError``) that is also of the class of what its pickling raised, as the
    standard library's proxy raises that error itself."""
    cause = e.__cause__
    if not isinstance(cause, Exception) or isinstance(cause, SerializationError):
        return e
    try:
        cls = type(
            f"SerializationError[{type(cause).__name__}]", (SerializationError, type(cause)), {}
        )
        err = cls.__new__(cls)
        err.args = (str(e),)
    except TypeError:  # a class that cannot be mixed in (a layout conflict)
        return e
    return err


def _gone(name: str, e: BaseException) -> ManagerDiedError:
    return ManagerDiedError(
        f"the volley Manager {name!r} is gone (shut down, or its process died); its "
        f"objects are lost: {e}"
    )


class BaseProxy:
    """A reference to an object held by a manager: ``_callmethod(name, args, kwds)`` runs the
    method there and returns its result (an exception it raises is raised here, of the same
    class, with the manager's traceback as its ``__cause__``). Picklable: a copy in a task,
    actor or process on any node reaches the same object. Subclass it for a registered type
    of your own, as with the standard library's ``BaseProxy``.

    >>> class CounterProxy(BaseProxy):
    ...     _exposed_ = ("add",)
    ...     def add(self, n):
    ...         return self._callmethod("add", (n,))
    """

    _exposed_: tuple[str, ...] | None = None

    def __init__(
        self, server: Any, ident: int, typeid: str, exposed: tuple, manager_name: str
    ) -> None:
        self._server, self._id, self._typeid = server, ident, typeid
        self._exposed, self._manager_name = exposed, manager_name

    def _callmethod(self, methodname: str, args: tuple = (), kwds: dict | None = None) -> Any:
        """Runs ``methodname(*args, **kwds)`` on the referent, in the manager."""
        local = _LOCAL_SERVERS.get(self._server) if _LOCAL_SERVERS else None
        if local is not None:
            kind, value = local.call(self._id, methodname, tuple(args), dict(kwds or {}))
            return self._result(kind, value)
        try:
            if kwds:
                ref = self._server.call.remote(self._id, methodname, tuple(args), dict(kwds))
            else:
                ref = self._server.call.remote(self._id, methodname, tuple(args))
            kind, value = volley.get(ref)
        except ActorDiedError as e:
            if isinstance(e, TaskError):
                raise e from None
            raise _gone(self._manager_name, e) from None
        except TaskError as e:
            raise _remote(e)  # noqa: B904 (its __cause__ is the remote traceback)
        except SerializationError as e:
            raise _unpicklable(e) from e.__cause__
        return self._result(kind, value)

    def _result(self, kind: int, value: Any) -> Any:
        if kind == 0:
            return value
        if kind == 2:
            return self
        proxytype, typeid, ident, exposed = value
        return _make_proxy(proxytype, self._server, ident, typeid, exposed, self._manager_name)

    def _getvalue(self) -> Any:
        """A copy of the referent."""
        return self._callmethod("#GETVALUE")

    def __reduce__(self) -> tuple:
        cls = type(self)
        proxytype = None if getattr(cls, "_auto", False) else cls
        return (
            _make_proxy,
            (proxytype, self._server, self._id, self._typeid, self._exposed, self._manager_name),
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} object, typeid {self._typeid!r} at {id(self):#x}, "
            f"manager {self._manager_name!r}>"
        )

    def __str__(self) -> str:
        """The referent's ``repr``."""
        try:
            return self._callmethod("__repr__")
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


_auto_types: dict[tuple, type] = {}


def MakeProxyType(name: str, exposed: tuple[str, ...]) -> type:
    """A ``BaseProxy`` subclass with one method per name in ``exposed``, each calling the
    referent's method of that name in the manager.

    >>> P = MakeProxyType("P", ("get", "set"))
    >>> P.__name__, hasattr(P, "get"), P._exposed_
    ('P', True, ('get', 'set'))
    """
    exposed = tuple(exposed)
    known = _auto_types.get((name, exposed))
    if known is not None:
        return known
    namespace: dict[str, Any] = {"_exposed_": exposed}
    for meth in exposed:
        namespace[meth] = _forward(meth)
    cls = type(name, (BaseProxy,), namespace)
    _auto_types[(name, exposed)] = cls
    return cls


def _forward(meth: str) -> Callable:
    def method(self: BaseProxy, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(meth, args, kwds)

    method.__name__ = meth
    return method


def _make_proxy(
    proxytype: type | None, server: Any, ident: int, typeid: str, exposed: tuple, name: str
) -> BaseProxy:
    if proxytype is None:  # AutoProxy: a class made from what the referent exposes
        proxytype = MakeProxyType(f"AutoProxy[{typeid}]", exposed)
        proxytype._auto = True  # type: ignore[attr-defined]
    return proxytype(server, ident, typeid, exposed, name)


class IteratorProxy(BaseProxy):
    """A proxy of an iterator held by the manager (``iter()`` of a ``DictProxy``)."""

    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    def send(self, *args: Any) -> Any:
        return self._callmethod("send", args)

    def throw(self, *args: Any) -> Any:
        return self._callmethod("throw", args)

    def close(self, *args: Any) -> Any:
        return self._callmethod("close", args)


_LIST_METHODS = (
    "__add__", "__contains__", "__delitem__", "__getitem__", "__len__", "__mul__",
    "__reversed__", "__rmul__", "__setitem__", "append", "count", "extend", "index",
    "insert", "pop", "remove", "reverse", "sort", "__imul__", "__iadd__",
)  # fmt: skip
_DICT_METHODS = (
    "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__", "__setitem__",
    "clear", "copy", "get", "items", "keys", "pop", "popitem", "setdefault", "update",
    "values",
)  # fmt: skip

ListProxy = MakeProxyType("ListProxy", _LIST_METHODS)
ListProxy.__doc__ = "A proxy of a list held by a manager (``m.list()``)."
DictProxy = MakeProxyType("DictProxy", _DICT_METHODS)
DictProxy.__doc__ = "A proxy of a dict held by a manager (``m.dict()``)."
ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))
ArrayProxy.__doc__ = "A proxy of an ``array.array`` held by a manager (``m.Array()``)."


class NamespaceProxy(BaseProxy):
    """A proxy of a ``Namespace``: attribute reads, writes and deletes go to the manager,
    except for names starting with ``_``, which stay on the proxy."""

    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> Any:
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return self._callmethod("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key[0] == "_":
            object.__setattr__(self, key, value)
        else:
            self._callmethod("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key[0] == "_":
            object.__delattr__(self, key)
        else:
            self._callmethod("__delattr__", (key,))


class ValueProxy(BaseProxy):
    """A proxy of a ``Value``: ``get()``, ``set(v)`` and ``.value``."""

    _exposed_ = ("get", "set")

    def get(self) -> Any:
        return self._callmethod("get")

    def set(self, value: Any) -> None:
        self._callmethod("set", (value,))

    value = property(get, set)


AsyncResultProxy = MakeProxyType("AsyncResultProxy", ("get", "wait", "ready", "successful"))
AsyncResultProxy.__doc__ = "A proxy of a pool's ``AsyncResult`` (``apply_async``, ``map_async``)."


class PoolProxy(BaseProxy):
    """A proxy of a ``volley.multiprocessing.Pool`` made in the manager (``m.Pool()``): its
    calls run there (on volley's workers, as any pool's), so the proxy can be passed to
    other processes; ``with`` terminates the pool at the end of the block."""

    _exposed_ = (
        "apply", "apply_async", "close", "imap", "imap_unordered", "join", "map",
        "map_async", "starmap", "starmap_async", "terminate",
    )  # fmt: skip
    _method_to_typeid_ = {
        "apply_async": "AsyncResult",
        "map_async": "AsyncResult",
        "starmap_async": "AsyncResult",
        "imap": "Iterator",
        "imap_unordered": "Iterator",
    }

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()


for _name in PoolProxy._exposed_:
    setattr(PoolProxy, _name, _forward(_name))


# The standard library's names of its synchronisation proxies; volley's manager hands out
# volley.sync objects instead, which are their own proxies (picklable, any node).
AcquirerProxy = volley.sync.Lock
ConditionProxy = volley.sync.Condition
EventProxy = volley.sync.Event
BarrierProxy = volley.sync.Barrier


# ------------------------------------------------------------------------------ the managers


class _Local:
    """A registered type made in the caller, not in the manager (a volley primitive that is
    its own picklable handle); the manager shuts it down with itself."""

    def __init__(self, factory: Callable) -> None:
        self.factory = factory


class BaseManager:
    """A manager of objects shared by proxies: ``start()`` it (or use ``with``), make objects
    with the methods that ``register`` adds, ``shutdown()`` it. The objects live in one volley
    actor (a process of its own on this node, using no CPU of the pool); proxies of them work
    in the driver, tasks, actors and ``volley.multiprocessing`` processes on any node.

    ``address`` names the manager: another driver of the cluster attaches to a started one
    with ``BaseManager(address=name).connect()`` (the standard library's host and port).
    ``authkey`` and ``serializer`` are accepted for compatibility and not used: volley's links
    are authenticated by the cluster's token, and values travel pickled.

    >>> class Counter:
    ...     def __init__(self):
    ...         self.n = 0
    ...     def add(self, k):
    ...         self.n += k
    ...         return self.n
    >>> class MyManager(BaseManager):
    ...     pass
    >>> MyManager.register("Counter", Counter)
    >>> with MyManager() as m:
    ...     c = m.Counter()
    ...     c.add(2), c.add(3)
    (2, 5)
    """

    _registry: dict[str, tuple] = {}

    def __init__(
        self,
        address: str | None = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: Any = None,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(
                "a volley manager's address is its name (a str), not "
                f"{type(address).__name__}: managers are reached through volley, not a socket"
            )
        self._name = address or f"volley-manager-{uuid.uuid4().hex[:12]}"
        # The actors: "fast" (one call at a time: the quickest round trip) holds the
        # containers, whose methods never wait; "threads" (many calls at once) holds the
        # registered types and pools, whose methods may wait.
        self._servers: dict[str, Any] = {}
        self._owner = False
        self._state = "initial"
        self._locals: list[Any] = []
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """The manager's name (its actor's name in the cluster)."""
        return self._name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._state}>"

    def start(self, initializer: Callable | None = None, initargs: tuple = ()) -> None:
        """Starts the manager's actor; ``initializer(*initargs)`` runs in it first. Returns
        once the actor runs (an exception of the initializer is raised here)."""
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        with self._lock:
            if self._state != "initial":
                raise ProcessError(f"the manager {self._name!r} was already started")
            volley.library.init_if_needed()
            registry = {k: v for k, v in self._registry.items() if not isinstance(v[0], _Local)}
            kinds = sorted({"fast" if v[4] else "threads" for v in registry.values()})
            servers = {
                kind: volley.remote(_Server)
                .options(
                    name=self._actor_name(kind),
                    num_cpus=0,
                    max_concurrency=1 if kind == "fast" else 64,
                )
                .remote(registry, self._name, initializer, tuple(initargs))
                for kind in kinds
            }
            try:
                volley.get([s.hello.remote(s) for s in servers.values()])
            except ActorCreationError as e:  # the initializer raised: that error, here
                for server in servers.values():
                    volley.kill(server)
                if e.cause is None:
                    raise
                err = e.cause
                err.__cause__ = RemoteTraceback(e.remote_traceback)
                raise err from err.__cause__
            self._servers, self._owner, self._state = servers, True, "started"

    def _actor_name(self, kind: str) -> str:
        return self._name if kind == "threads" else f"{self._name}/fast"

    def connect(self) -> None:
        """Attaches to the started manager named by ``address`` (made by another driver or
        process of the cluster; the cluster's head lists a new manager within its node's next
        heartbeat). ``ValueError`` if none runs by that name. ``shutdown()`` of an attached
        manager forgets it and leaves it running."""
        with self._lock:
            if self._state != "initial":
                raise ProcessError(f"the manager {self._name!r} is already {self._state}")
            for kind in ("fast", "threads"):
                try:
                    self._servers[kind] = volley.get_actor(self._actor_name(kind))
                except ValueError:
                    pass
            if not self._servers:
                raise ValueError(f"no volley Manager named {self._name!r} runs")
            self._state = "started"

    def _check(self) -> Any:
        if self._state == "initial":
            raise ProcessError(f"the manager {self._name!r} has not been started")
        if self._state == "shutdown":
            raise ProcessError(f"the manager {self._name!r} was shut down")
        return self._servers

    def _create(self, typeid: str, *args: Any, **kwds: Any) -> Any:
        servers = self._check()
        entry = self._registry[typeid]
        if isinstance(entry[0], _Local):
            obj = entry[0].factory(*args, **kwds)
            with self._lock:
                self._locals.append(obj)
            return obj
        server = servers.get("fast" if entry[4] else "threads")
        if server is None:
            raise RemoteError(f"the manager {self._name!r} does not serve {typeid!r}")
        try:
            ident, exposed = volley.get(server.create.remote(typeid, args, kwds))
        except ActorDiedError as e:
            if isinstance(e, TaskError):
                raise e from None
            raise _gone(self._name, e) from None
        except TaskError as e:
            raise _remote(e)  # noqa: B904 (its __cause__ is the remote traceback)
        return _make_proxy(entry[3], server, ident, typeid, exposed, self._name)

    def _info(self) -> dict:
        servers = self._check()
        try:
            infos = volley.get([s.info.remote() for s in servers.values()])
        except ActorDiedError as e:
            raise _gone(self._name, e) from None
        return {
            "pids": [i["pid"] for i in infos],
            "objects": sum(i["objects"] for i in infos),
            "typeids": sorted(t for i in infos for t in i["typeids"]),
        }

    def _number_of_objects(self) -> int:
        """How many objects the manager holds (its locks and queues are not counted)."""
        return self._info()["objects"]

    def _debug_info(self) -> str:
        return f"{self._name}: {self._info()['typeids']}"

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for once ``shutdown()`` returned (it waits for the actor)."""

    def shutdown(self) -> None:
        """Stops the manager's actor (its objects are lost; their proxies raise
        ``ManagerDiedError``) and shuts down the locks and queues it made. Only the manager
        that started it may shut it down; a second call does nothing."""
        with self._lock:
            if self._state != "started":
                self._state = "shutdown"
                return
            self._state = "shutdown"
            servers, locals_ = self._servers, self._locals
            self._locals = []
        for obj in locals_:
            try:
                obj.shutdown()
            except Exception:  # already shut down, or its node is gone: nothing to release
                pass
        if self._owner:
            for server in servers.values():
                volley.kill(server)

    def __enter__(self) -> BaseManager:
        if self._state == "initial":
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    @classmethod
    def register(
        cls,
        typeid: str,
        callable: Callable | None = None,
        proxytype: type | None = None,
        exposed: tuple[str, ...] | None = None,
        method_to_typeid: dict[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Adds ``typeid`` to the manager class: ``m.<typeid>(*args)`` calls ``callable`` in
        the manager and returns a proxy (``proxytype``, or one made from ``exposed``, else
        from the object's public methods). ``method_to_typeid`` names the methods whose
        results are kept in the manager and proxied in turn.
        """
        if not isinstance(typeid, str) or not typeid.isidentifier():
            raise ValueError(f"typeid must be an identifier, not {typeid!r}")
        if callable is not None and not builtins_callable(callable):
            raise TypeError(f"callable must be callable, not {type(callable).__name__}")
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)
        if exposed is None and proxytype is not None:
            exposed = getattr(proxytype, "_exposed_", None)
        if method_to_typeid is None and proxytype is not None:
            method_to_typeid = getattr(proxytype, "_method_to_typeid_", None)
        cls._registry[typeid] = (
            callable,
            None if exposed is None else tuple(exposed),
            dict(method_to_typeid) if method_to_typeid else None,
            proxytype,
            False,  # served by the "threads" actor: its methods may wait
        )
        if create_method:

            def make(self: BaseManager, *args: Any, **kwds: Any) -> Any:
                return self._create(typeid, *args, **kwds)

            make.__name__ = typeid
            setattr(cls, typeid, make)

    @classmethod
    def _register_local(cls, typeid: str, factory: Callable) -> None:
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)
        cls._registry[typeid] = (_Local(factory), None, None, None, False)

        def make(self: BaseManager, *args: Any, **kwds: Any) -> Any:
            return self._create(typeid, *args, **kwds)

        make.__name__ = typeid
        setattr(cls, typeid, make)


builtins_callable = callable


def _condition(lock: Any = None) -> volley.sync.Condition:
    return volley.sync.Condition(lock)


class SyncManager(BaseManager):
    """The manager ``Manager()`` returns: ``dict``, ``list``, ``Namespace``, ``Value``,
    ``Array`` (held by the manager's actor, used through proxies), ``Queue``,
    ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Event``,
    ``Condition``, ``Barrier`` (volley's node primitives, picklable handles) and ``Pool``
    (a ``volley.multiprocessing.Pool`` in the caller).

    >>> with SyncManager() as m:
    ...     ns = m.Namespace(x=1)
    ...     ns.y = 2
    ...     print(ns)
    Namespace(x=1, y=2)
    """


SyncManager.register("dict", dict, DictProxy, method_to_typeid={"__iter__": "Iterator"})
SyncManager.register("list", list, ListProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", _array, ListProxy)
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager._register_local("Queue", volley.util.queue.Queue)
SyncManager._register_local("JoinableQueue", volley.util.queue.JoinableQueue)
SyncManager._register_local("Lock", volley.sync.Lock)
SyncManager._register_local("RLock", volley.sync.RLock)
SyncManager._register_local("Semaphore", volley.sync.Semaphore)
SyncManager._register_local("BoundedSemaphore", volley.sync.BoundedSemaphore)
SyncManager._register_local("Event", volley.sync.Event)
SyncManager._register_local("Condition", _condition)
SyncManager._register_local("Barrier", volley.sync.Barrier)
SyncManager.register("AsyncResult", proxytype=AsyncResultProxy, create_method=False)
# "Pool" (a volley.multiprocessing.Pool behind a PoolProxy) is registered by
# volley.multiprocessing, which this module does not import.
# The containers' methods never wait: the "fast" actor, one call at a time, serves them.
for _typeid in ("dict", "list", "Namespace", "Value", "Array"):
    SyncManager._registry[_typeid] = SyncManager._registry[_typeid][:4] + (True,)


def Manager() -> SyncManager:
    """A started ``SyncManager`` (``multiprocessing.Manager()``); use it in a ``with`` block
    or call ``shutdown()``.

    >>> m = Manager()
    >>> lst = m.list([1, 2])
    >>> lst.append(3)
    >>> lst[:]
    [1, 2, 3]
    >>> m.shutdown()
    """
    m = SyncManager()
    m.start()
    return m
