"""What a program can ask about where it runs, with Ray's names: ``cluster_resources``,
``available_resources``, ``get_gpu_ids`` and ``get_runtime_context``."""

from __future__ import annotations

import os

from . import _core
from ._session import ensure_init

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _own_node() -> dict[str, Any]:
    """The info dict of the node this process belongs to: its own (a driver), or its node's
    (a worker, which asks it over the node's socket)."""
    if _core.mode() == "worker":
        return _core.node_info(os.environ["VOLLEY_NODE_SOCKET"])
    return _core.node_info()


def _nodes(what: str) -> list[dict[str, Any]]:
    """The nodes whose resources ``what`` sums: the cluster's (as this process's node last heard
    from the head), or this node alone outside a cluster."""
    from ._session import nodes

    return nodes()


def _resources(free: bool) -> dict[str, float]:
    out: dict[str, float] = {}

    def add(key: str, amount: float) -> None:
        out[key] = out.get(key, 0.0) + float(amount)

    for n in _nodes("available_resources" if free else "cluster_resources"):
        add("CPU", n["cpus_free"] if free else n["num_cpus"])
        for name, (total, available) in sorted(n.get("resources", {}).items()):
            add(name, available if free else total)
        capacity = n.get("store_capacity", 0)
        add("object_store_memory", capacity - n.get("store_used", 0) if free else capacity)
    return out


def cluster_resources() -> dict[str, float]:
    """The resources of the whole cluster (of this node outside a cluster), as Ray's
    ``ray.cluster_resources()``: ``{"CPU": 8.0, "GPU": 1.0, "object_store_memory": bytes,
    "<custom>": amount}``. Ray's ``memory`` and ``node:<ip>`` keys are not reported.

    In a cluster this is what this process's node last heard from the head (every second or
    so), in the driver as in a task or actor.

    >>> volley.init(num_cpus=2, resources={"disk": 1})
    volley.Context(num_cpus=2)
    >>> volley.cluster_resources()["CPU"], volley.cluster_resources()["disk"]
    (2.0, 1.0)
    >>> volley.shutdown()
    """
    return _resources(free=False)


def available_resources() -> dict[str, float]:
    """The resources free now, with the keys of ``cluster_resources()`` (Ray's
    ``ray.available_resources()``). CPUs lent by a task blocked in ``get`` count as free.

    >>> volley.init(num_cpus=2)
    volley.Context(num_cpus=2)
    >>> volley.available_resources()["CPU"]
    2.0
    >>> volley.shutdown()
    """
    return _resources(free=True)


def get_gpu_ids() -> list[int | str]:
    """The GPUs the node gave the task (or actor) running here, as Ray's
    ``ray.get_gpu_ids()``: a list of device numbers (UUID strings where the node's own
    ``CUDA_VISIBLE_DEVICES`` names its GPUs by UUID), the ones ``CUDA_VISIBLE_DEVICES`` names
    while it runs. Empty in the driver (as in Ray) and in a task that asked for no GPU; the
    same on one machine and on a cluster's nodes.

    >>> @volley.remote(num_gpus=1)
    ... def which():
    ...     return volley.get_gpu_ids()
    >>> volley.get(which.remote())  # doctest: +SKIP
    [0]
    """
    if _core.mode() != "worker":
        return []
    # The worker's own module (its __main__, registered under this name): only a worker has
    # one worth reading, and importing it in a driver would be a waste.
    from . import _worker

    return list(_worker._gpu_ids)


class RuntimeContext:
    """What ``get_runtime_context()`` returns (Ray's ``ray.runtime_context.RuntimeContext``):
    where this code runs. Ids are hex strings as volley prints them (a task's is the hex of its
    first ``ObjectRef`` without the return index; an actor's the one ``ActorHandle`` shows), the
    node id an int as ``volley.nodes()`` lists it.

    >>> ctx = volley.get_runtime_context()
    >>> ctx.get_task_id() is None, ctx.get_actor_id() is None  # in the driver
    (True, True)
    """

    def get_node_id(self) -> int:
        """The id of this process's node, as ``volley.nodes()`` lists it and
        ``NodeAffinitySchedulingStrategy`` takes it (an int; Ray's is a hex string).

        >>> volley.get_runtime_context().get_node_id()
        0
        """
        ensure_init()
        return int(_own_node()["node_id"])

    def get_job_id(self) -> str | None:
        """The job (driver) this code runs for: in a driver its own, in a task or actor the
        driver's that submitted it. It is the driver's node number in the cluster (``"0"`` on
        one machine), the ``job_id`` that ``volley.state`` shows for the job's tasks and
        actors, or the id ``volley job submit`` gave a submitted job's driver.

        >>> volley.get_runtime_context().get_job_id()
        '0'
        """
        ensure_init()
        if _core.mode() == "worker":
            from . import _runtime_env

            return _runtime_env.job_id
        from . import _session

        return _session.job_id

    def get_task_id(self) -> str | None:
        """The id of the task (or actor method call) running in this thread; None in a driver,
        or in an actor's process outside a call."""
        if _core.mode() != "worker":
            return None
        from . import _worker

        t = _worker.current_task.get()
        return None if t is None else f"{t:032x}"

    def get_actor_id(self) -> str | None:
        """The id of the actor this process runs (as its handle shows it), None elsewhere."""
        if _core.mode() != "worker":
            return None
        from . import _worker

        a = _worker.actor_id
        return None if a is None else f"{a:032x}"

    def get_worker_id(self) -> str:
        """This process's id as the state API lists workers: its pid, as a string."""
        return str(os.getpid())

    def get_worker_pid(self) -> int:
        """The pid of this process (the driver's, or the worker's running this task)."""
        return os.getpid()

    @property
    def job_id(self) -> str | None:
        """``get_job_id()`` (Ray's deprecated property)."""
        return self.get_job_id()

    @property
    def node_id(self) -> int:
        """``get_node_id()`` (Ray's deprecated property)."""
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        """``get_task_id()`` (Ray's deprecated property)."""
        return self.get_task_id()

    @property
    def actor_id(self) -> str | None:
        """``get_actor_id()`` (Ray's deprecated property)."""
        return self.get_actor_id()

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """``{"GPU": [ids as strings]}``: the GPUs given to the task running here (Ray's
        shape; empty in the driver)."""
        return {"GPU": [str(g) for g in get_gpu_ids()]}

    def get(self) -> dict[str, Any]:
        """The context as a dict (Ray's deprecated ``RuntimeContext.get()``): ``job_id``,
        ``node_id``, ``task_id``, ``actor_id``."""
        return {
            "job_id": self.get_job_id(),
            "node_id": self.get_node_id(),
            "task_id": self.get_task_id(),
            "actor_id": self.get_actor_id(),
        }

    def __getattr__(self, name: str) -> Any:
        if name in _LATER:
            raise AttributeError(
                f"Ray's RuntimeContext.{name} is not in volley yet; see docs/from-ray.md"
            )
        raise AttributeError(f"'RuntimeContext' object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"volley.RuntimeContext(mode={_core.mode()!r})"


#: Ray's RuntimeContext members that come later.
_LATER = {
    "get_assigned_resources",
    "get_namespace",
    "get_actor_name",
    "get_task_name",
    "get_task_function_name",
    "get_placement_group_id",
    "get_runtime_env_string",
    "current_actor",
    "was_current_actor_reconstructed",
    "namespace",
}


def get_runtime_context() -> RuntimeContext:
    """The runtime context of this process (Ray's ``ray.get_runtime_context()``).

    >>> volley.get_runtime_context().get_node_id()
    0
    """
    return RuntimeContext()
