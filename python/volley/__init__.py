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

from . import actor, exceptions, job, state
from ._actor import ActorClass, ActorHandle, actor_state, get_actor, kill, method
from ._core import VERSION as _core_version
from ._core import ObjectRef
from ._dashboard import dashboard_url
from ._generator import ObjectRefGenerator
from ._map import map, starmap
from ._objects import cancel, get, object_store_stats, put, wait
from ._options import NodeAffinitySchedulingStrategy
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
from ._timeline import timeline
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

# isort: split
# volley.util hands the names above on under Ray's import paths: it is imported after them.
from . import util

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
    "actor",
    "exceptions",
    "job",
    "state",
    "util",
]


#: Ray's top-level names that come with a later issue.
_LATER: dict[str, str] = {}


def __getattr__(name: str):
    """Ray's names volley does not have yet fail with a message that says when they come."""
    when = _LATER.get(name)
    if when is None:
        raise AttributeError(f"module 'volley' has no attribute {name!r}")
    raise AttributeError(f"Ray's ray.{name} is not in volley yet: it comes with {when}")
