"""The interface for libraries built on volley.

``volley.joblib``, ``volley.dask``, ``volley.multiprocessing``, ``volley.futures`` and
``volley.util`` use volley's public names (``volley.remote``, ``volley.get``, ...) and, for what
a user program never needs, only the names here: start volley if it is not running, check task
options where the library takes them, cancel work nobody waits for, ask where this code runs,
size a pool to the cluster, and run a batch of calls in a task the way ``volley.map`` does.
For state a library shares across its tasks, drivers and nodes (a tuner's trial table, a
server's replica list) there is the head's key-value table (``kv_put``, ``kv_get``,
``kv_delete``, ``kv_keys``), and ``directory`` lists the cluster's named actors, placement
groups and jobs. Memory shared by the processes of one node (what ``volley.shared_array`` and
``volley.multiprocessing.Value`` stand on) is ``create_shared_memory(nbytes)`` (a
``SharedMemorySegment`` mapped here), ``shared_memory_handle(segment)`` (what pickles it) and
``attach_shared_memory(*handle)`` (maps it in another process of the node). A library of your
own (and the coming ``volley.tune``, ``volley.serve``) uses the same. Everything else whose name
starts with ``_`` is volley's inside and may change at any release.

>>> import volley
>>> from volley import library
>>> library.mode() in (None, "driver", "worker")
True
"""

from __future__ import annotations

from . import _core
from ._map import cpu_share, lending_cpu, total_cpus
from ._map_items import capture_error, run_items, traceback_text
from ._objects import cancel_soon, may_be_remote
from ._options import check_options
from ._progress import Bar as ProgressBar
from ._queue import JoinableQueue, Queue
from ._remote_function import unwrap
from ._session import ensure_init
from ._shared_memory import _attach as attach_shared_memory
from ._shared_memory import _create as create_shared_memory
from ._shared_memory import _handle as shared_memory_handle
from ._shared_memory import _Segment as SharedMemorySegment

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "JoinableQueue",
    "ProgressBar",
    "Queue",
    "SharedMemorySegment",
    "attach_shared_memory",
    "create_shared_memory",
    "shared_memory_handle",
    "cancel_soon",
    "capture_error",
    "check_options",
    "cpu_share",
    "directory",
    "head_node_id",
    "in_cluster",
    "in_worker",
    "init_if_needed",
    "kv_delete",
    "kv_get",
    "kv_keys",
    "kv_put",
    "lending_cpu",
    "mode",
    "retire_worker",
    "run_items",
    "total_cpus",
    "traceback_text",
    "unwrap_remote",
]


def init_if_needed() -> None:
    """Starts volley with default settings unless it runs (as the first ``.remote()`` call
    would): call it where the library starts, so that what it sizes (a pool's processes) sees
    the running node. Free once volley runs.

    >>> library.init_if_needed()
    >>> volley.is_initialized()
    True
    """
    ensure_init()


def mode() -> str | None:
    """Where this code runs: ``"driver"`` (a process that ran ``init``, a node daemon
    included), ``"worker"`` (inside a task or actor), or None (volley is not running here).

    >>> library.mode()
    'driver'
    """
    return _core.mode()


def in_worker() -> bool:
    """Whether this code runs inside a task or actor (a volley worker process).

    >>> library.in_worker()
    False
    """
    return _core.mode() == "worker"


def in_cluster() -> bool:
    """Whether a finished value may live on another node: in the driver of a cluster, or in a
    worker (whose node may be part of one). Use it to skip cluster-only work on one machine.

    >>> library.in_cluster()
    False
    """
    return may_be_remote()


def retire_worker() -> None:
    """Inside a task: this worker process exits once the task's result is sent, and the node
    starts a fresh one (``multiprocessing``'s ``maxtasksperchild``). Does nothing elsewhere.

    >>> library.retire_worker()  # in the driver: nothing happens
    """
    if _core.mode() == "worker":
        _core.retire_worker()


def unwrap_remote(fn: Any, default_name: str = "task") -> tuple[Callable, dict, str]:
    """``(function, options, name)`` for a library that runs ``fn`` its own way: the Python
    function behind a ``@volley.remote`` function (or its ``.options(...)``), the task options
    it carries, and its name; a plain callable comes back with no options, named by its
    ``__qualname__`` (``default_name`` if it has none). Raises ``TypeError`` for what is not
    callable.

    >>> @volley.remote(num_cpus=2)
    ... def double(x):
    ...     return 2 * x
    >>> f, options, name = library.unwrap_remote(double)
    >>> f(4), options, name
    (8, {'num_cpus': 2}, 'double')
    """
    return unwrap(fn, default_name)


# ---------------------------------------------------------------- the head's key-value table

#: The namespace of the key-value functions when none is given.
DEFAULT_KV_NAMESPACE = "default"


def _kv_bytes(what: str, x: object) -> bytes:
    """``x`` (str, UTF-8 encoded, or bytes) as bytes; ``TypeError`` for anything else."""
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"{what} must be str or bytes, not {type(x).__name__}")


def _kv_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    return namespace


def kv_put(
    key: str | bytes,
    value: str | bytes,
    *,
    namespace: str = DEFAULT_KV_NAMESPACE,
    overwrite: bool = True,
) -> bool:
    """Stores ``value`` under ``key`` in the cluster head's key-value table, where every
    driver, task and node of the cluster sees it (on one machine, the node is its own head).
    Keys and values are ``str`` (stored as UTF-8) or ``bytes``; a key is at most 4 KiB and a
    value 4 MiB (``ValueError`` above; large data belongs in the object store, with its ref or
    path kept here). With ``overwrite=False`` an existing value is kept: the return value says
    whether this call stored its value, so of several processes racing to claim a key exactly
    one gets ``True``. Starts volley if it is not running.

    >>> library.kv_put("trial/1", "running")
    True
    >>> library.kv_put("trial/1", "claimed", overwrite=False)
    False
    >>> library.kv_get("trial/1")
    b'running'
    """
    k, v = _kv_bytes("a key", key), _kv_bytes("a value", value)
    ns = _kv_namespace(namespace)
    ensure_init()
    return _core.kv_put(ns, k, v, bool(overwrite))


def kv_get(key: str | bytes, *, namespace: str = DEFAULT_KV_NAMESPACE) -> bytes | None:
    """The value under ``key`` (as ``bytes``, whatever type it was put as), or None.

    >>> library.kv_put("config", b"lr=0.1")
    True
    >>> library.kv_get("config"), library.kv_get("missing")
    (b'lr=0.1', None)
    """
    k = _kv_bytes("a key", key)
    ns = _kv_namespace(namespace)
    ensure_init()
    return _core.kv_get(ns, k)


def kv_delete(key: str | bytes, *, namespace: str = DEFAULT_KV_NAMESPACE) -> bool:
    """Deletes ``key``; whether there was a value to delete.

    >>> library.kv_put("tmp", "x")
    True
    >>> library.kv_delete("tmp"), library.kv_delete("tmp")
    (True, False)
    """
    k = _kv_bytes("a key", key)
    ns = _kv_namespace(namespace)
    ensure_init()
    return _core.kv_delete(ns, k)


def kv_keys(
    prefix: str | bytes = "", *, namespace: str = DEFAULT_KV_NAMESPACE
) -> list[str] | list[bytes]:
    """The keys of ``namespace`` that start with ``prefix``, sorted (by their bytes). With a
    ``str`` prefix the keys come back as ``str`` (a key that is not UTF-8 as ``bytes``); with a
    ``bytes`` prefix, as ``bytes``.

    >>> for k in ("b", "a", "c"):
    ...     _ = library.kv_put("run/" + k, "1", namespace="keys-example")
    >>> library.kv_keys("run/", namespace="keys-example")
    ['run/a', 'run/b', 'run/c']
    """
    p = _kv_bytes("a prefix", prefix)
    ns = _kv_namespace(namespace)
    ensure_init()
    keys = _core.kv_keys(ns, p)
    if isinstance(prefix, str):
        return [_text_or_bytes(k) for k in keys]  # type: ignore[return-value]
    return keys


def _text_or_bytes(b: bytes) -> str | bytes:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b


def directory() -> dict[str, list[dict[str, Any]]]:
    """What the cluster's head lists for the whole cluster, whichever node or driver made it:
    ``"actors"`` (named actors, and detached ones with ``name`` ``""``: ``name``,
    ``namespace``, ``class_name``, ``actor_id``, ``node_id`` of the node it runs on),
    ``"placement_groups"`` (``placement_group_id``, ``name``, ``state``,
    ``bundles_to_node_id``, ``owner_node_id``) and ``"jobs"`` (a driver each: ``node_id``,
    ``driver_pid``, ``start_time``, ``end_time`` in seconds since the epoch, ``end_time``
    None while it runs). The head learns of a new entry with its node's
    next heartbeat (half a second by default). On one machine the node is its own head.

    >>> @volley.remote
    ... class Registry:
    ...     def ping(self):
    ...         return "pong"
    >>> r = Registry.options(name="registry").remote()
    >>> volley.get(r.ping.remote())
    'pong'
    >>> [a["name"] for a in library.directory()["actors"]]
    ['registry']
    """
    ensure_init()
    found = _core.directory()
    if _alone():
        # The node is its own head: the head's tables name it by the number a cluster's head
        # has (1); alone it is node 0, as ``volley.nodes()`` and ``get_node_id()`` say.
        for rows in found.values():
            for row in rows:
                for key in ("node_id", "owner_node_id"):
                    if row.get(key) == _CLUSTER_HEAD_ID:
                        row[key] = 0
                if "bundles_to_node_id" in row:
                    row["bundles_to_node_id"] = [
                        0 if n == _CLUSTER_HEAD_ID else n for n in row["bundles_to_node_id"]
                    ]
    return found


# A cluster's head numbers the nodes as they join, itself first: it is node 1. A node alone (no
# cluster) is node 0.
_CLUSTER_HEAD_ID = 1


def _alone() -> bool:
    """Whether this process's node is alone (not part of a cluster)."""
    from ._session import nodes

    return all(n["node_id"] == 0 for n in nodes())


def head_node_id() -> int:
    """The node id of the cluster's head (the node that keeps the key-value table and the
    directory, and runs ``volley.serve``'s HTTP ingress), as ``volley.nodes()``,
    ``directory()`` and ``volley.state`` name it: 1 in a cluster, 0 on one machine (the
    node alone is its own head). Use it to place an actor on the head with
    ``NodeAffinitySchedulingStrategy(library.head_node_id())``, or to tell the head's rows
    from the others.

    >>> hid = library.head_node_id()
    >>> hid == (0 if len(volley.nodes()) == 1 else 1)
    True
    >>> @volley.remote
    ... class OnHead:
    ...     def node(self):
    ...         return volley.get_runtime_context().get_node_id()
    >>> pin = volley.NodeAffinitySchedulingStrategy(hid)
    >>> h = OnHead.options(name="on_head", scheduling_strategy=pin).remote()
    >>> volley.get(h.node.remote()) == hid
    True
    >>> [a["node_id"] == hid for a in library.directory()["actors"] if a["name"] == "on_head"]
    [True]
    """
    ensure_init()
    return 0 if _alone() else _CLUSTER_HEAD_ID
