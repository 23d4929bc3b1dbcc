"""volley: parallel and distributed computing for Python, with its engine in Rust.

>>> import volley
>>> @volley.remote
... def square(x):
...     return x * x
>>> volley.get([square.remote(i) for i in range(4)])
[0, 1, 4, 9]

Programs written for Ray run with ``import volley as ray`` where volley has the same feature
(``ray.exceptions``, ``ray.util.ActorPool``, ``ray.wait(fetch_local=...)``, generator tasks
streaming by default, ...): docs/from-ray.md lists Ray's names, volley's, and what differs.
"""

from ._core import VERSION as _core_version
from ._core import ObjectRef

# The public names are imported at their first use (PEP 562's module __getattr__ below), so
# that `import volley` costs little: every worker process imports this package, and a driver
# that never touches the job, state or dashboard modules never pays for them. Type checkers and
# readers see the real imports here.
TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from . import actor, exceptions, job, state, util
    from ._actor import ActorClass, ActorHandle, actor_state, get_actor, kill, method
    from ._cache import cache
    from ._dashboard import dashboard_url
    from ._generator import ObjectRefGenerator
    from ._map import map, starmap
    from ._objects import cancel, get, object_store_stats, put, wait
    from ._options import NodeAffinitySchedulingStrategy
    from ._parallel import parallel, parallel_range
    from ._placement import (
        PlacementGroup,
        PlacementGroupSchedulingStrategy,
        placement_group,
        placement_group_table,
        remove_placement_group,
    )
    from ._progress import progress
    from ._remote import remote
    from ._remote_function import RemoteFunction
    from ._runtime_context import (
        RuntimeContext,
        available_resources,
        cluster_resources,
        get_gpu_ids,
        get_runtime_context,
    )
    from ._session import Context, init, is_initialized, nodes, shutdown
    from ._shared_array import shared_array
    from ._shared_dict import SharedDict
    from ._shell import ShellError, ShellResult, shell, shell_many
    from ._timeline import timeline
    from ._views import WorkersError, WorkerView, workers
    from .exceptions import (
        ActorCreationError,
        ActorDiedError,
        GetTimeoutError,
        ObjectLostError,
        ObjectStoreFullError,
        SerializationError,
        TaskCancelledError,
        TaskError,
        UnschedulableError,
        VolleyError,
        WorkerCrashedError,
        WorkerStartError,
    )

# Each lazily imported name and the module (relative to this package) that defines it; "" for a
# submodule imported under its own name. tests/test_imports.py reads this table too.
_LAZY: dict[str, str] = {
    "actor": "",
    "channel": "",
    "exceptions": "",
    "job": "",
    "state": "",
    "sync": "",
    "serve": "",
    "tune": "",
    "ActorClass": "._actor",
    "ActorHandle": "._actor",
    "actor_state": "._actor",
    "get_actor": "._actor",
    "kill": "._actor",
    "method": "._actor",
    "cache": "._cache",
    "dashboard_url": "._dashboard",
    "ObjectRefGenerator": "._generator",
    "map": "._map",
    "starmap": "._map",
    "cancel": "._objects",
    "get": "._objects",
    "object_store_stats": "._objects",
    "put": "._objects",
    "wait": "._objects",
    "NodeAffinitySchedulingStrategy": "._options",
    "PlacementGroup": "._placement",
    "PlacementGroupSchedulingStrategy": "._placement",
    "placement_group": "._placement",
    "placement_group_table": "._placement",
    "remove_placement_group": "._placement",
    "progress": "._progress",
    "remote": "._remote",
    "RemoteFunction": "._remote_function",
    "RuntimeContext": "._runtime_context",
    "available_resources": "._runtime_context",
    "cluster_resources": "._runtime_context",
    "get_gpu_ids": "._runtime_context",
    "get_runtime_context": "._runtime_context",
    "Context": "._session",
    "init": "._session",
    "is_initialized": "._session",
    "nodes": "._session",
    "shutdown": "._session",
    "SharedDict": "._shared_dict",
    "shared_array": "._shared_array",
    "parallel_range": "._parallel",
    "parallel": "._parallel",
    "timeline": "._timeline",
    "WorkersError": "._views",
    "WorkerView": "._views",
    "workers": "._views",
    "ShellError": "._shell",
    "ShellResult": "._shell",
    "shell": "._shell",
    "shell_many": "._shell",
    "ActorCreationError": ".exceptions",
    "ActorDiedError": ".exceptions",
    "GetTimeoutError": ".exceptions",
    "ObjectLostError": ".exceptions",
    "ObjectStoreFullError": ".exceptions",
    "SerializationError": ".exceptions",
    "TaskCancelledError": ".exceptions",
    "TaskError": ".exceptions",
    "UnschedulableError": ".exceptions",
    "VolleyError": ".exceptions",
    "WorkerCrashedError": ".exceptions",
    "WorkerStartError": ".exceptions",
    "util": "",
}

#: The version of this volley (of its engine, which the package's metadata matches).
__version__: str = _core_version

__all__ = [
    "dashboard_url",
    "init",
    "shutdown",
    "is_initialized",
    "nodes",
    "timeline",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroup",
    "PlacementGroupSchedulingStrategy",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "remote",
    "get",
    "put",
    "wait",
    "cancel",
    "map",
    "starmap",
    "progress",
    "object_store_stats",
    "get_actor",
    "kill",
    "method",
    "actor_state",
    "ActorClass",
    "ActorHandle",
    "ObjectRefGenerator",
    "ActorCreationError",
    "ActorDiedError",
    "ObjectRef",
    "RemoteFunction",
    "Context",
    "VolleyError",
    "TaskError",
    "WorkerCrashedError",
    "SerializationError",
    "GetTimeoutError",
    "TaskCancelledError",
    "ObjectLostError",
    "UnschedulableError",
    "WorkerStartError",
    "ObjectStoreFullError",
    "cluster_resources",
    "available_resources",
    "get_gpu_ids",
    "get_runtime_context",
    "RuntimeContext",
    "SharedDict",
    "WorkersError",
    "WorkerView",
    "workers",
    "cache",
    "shared_array",
    "parallel",
    "parallel_range",
    "ShellError",
    "ShellResult",
    "shell",
    "shell_many",
    "actor",
    "exceptions",
    "job",
    "state",
    "serve",
    "tune",
    "util",
]


#: Ray's top-level names that come with a later issue.
_LATER: dict[str, str] = {}


def __getattr__(name: str):
    """Imports a public name at its first use (see _LAZY); Ray's names volley does not have yet
    fail with a message that says when they come."""
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        if module:
            value = getattr(importlib.import_module(module, __name__), name)
        else:
            value = importlib.import_module(f".{name}", __name__)
        globals()[name] = value  # later lookups find it without this function
        return value
    when = _LATER.get(name)
    if when is None:
        raise AttributeError(f"module 'volley' has no attribute {name!r}")
    raise AttributeError(f"Ray's ray.{name} is not in volley yet: it comes with {when}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
