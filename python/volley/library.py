"""The interface for libraries built on volley.

``volley.joblib``, ``volley.dask``, ``volley.multiprocessing``, ``volley.futures`` and
``volley.util`` use volley's public names (``volley.remote``, ``volley.get``, ...) and, for what
a user program never needs, only the names here: start volley if it is not running, check task
options where the library takes them, cancel work nobody waits for, ask where this code runs,
size a pool to the cluster, and run a batch of calls in a task the way ``volley.map`` does.
A library of your own (and the coming ``volley.tune``, ``volley.serve``) uses the same.
Everything else whose name starts with ``_`` is volley's inside and may change at any release.

>>> import volley
>>> from volley import library
>>> library.mode() in (None, "driver", "worker")
True
"""

from __future__ import annotations

from . import _core
from ._map import capture_error, cpu_share, lending_cpu, run_items, total_cpus, traceback_text
from ._objects import cancel_soon, may_be_remote
from ._options import check_options
from ._progress import Bar as ProgressBar
from ._remote_function import unwrap
from ._session import ensure_init

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "ProgressBar",
    "cancel_soon",
    "capture_error",
    "check_options",
    "cpu_share",
    "in_cluster",
    "in_worker",
    "init_if_needed",
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
