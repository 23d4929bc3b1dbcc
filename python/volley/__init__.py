"""volley: parallel and distributed computing for Python, with its engine in Rust.

>>> import volley
>>> @volley.remote
... def square(x):
...     return x * x
>>> volley.get([square.remote(i) for i in range(4)])
[0, 1, 4, 9]
"""

from ._api import (
    Context,
    RemoteFunction,
    cancel,
    get,
    init,
    is_initialized,
    object_store_stats,
    put,
    remote,
    shutdown,
    wait,
)
from ._core import ObjectRef
from .exceptions import (
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

__version__ = "0.1.0"

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "get",
    "put",
    "wait",
    "cancel",
    "object_store_stats",
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
]
