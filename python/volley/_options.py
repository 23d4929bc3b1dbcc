"""Options of tasks: which exist, their checks, and the scheduling strategies they name."""

from __future__ import annotations

from ._placement import PlacementGroupSchedulingStrategy, bundle_request
from ._resources import resource_list

#: The options a task takes (``@volley.remote(...)``, ``f.options(...)``).
TASK_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "name",
    "scheduling_strategy",
}


class NodeAffinitySchedulingStrategy:
    """Run a task, or start an actor, on one node of the cluster (``node_id`` as
    ``volley.nodes()`` lists it).

    With ``soft=False`` a task waits for that node (and fails with ``UnschedulableError`` if it
    is not in the cluster; an actor's creation raises ``ValueError``, and an actor whose node
    died is not restarted elsewhere); with ``soft=True`` it runs there if it can, else
    anywhere.

    >>> @volley.remote
    ... def where():
    ...     return volley.get_runtime_context().get_node_id()
    >>> box = 0  # a node_id from volley.nodes() (e.g. the one with a GPU)
    >>> s = NodeAffinitySchedulingStrategy(box, soft=True)  # there if it can, else anywhere
    >>> volley.get(where.options(scheduling_strategy=s).remote())
    0
    """

    def __init__(self, node_id: int, soft: bool = False):
        if not isinstance(node_id, int) or node_id < 0:
            raise ValueError(f"node_id must be a node's id from volley.nodes(), not {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy({self.node_id}, soft={self.soft})"


def strategy(options: dict):
    """``scheduling_strategy`` as ``_core.TaskOptions`` takes it: (kind, node, soft) or None."""
    s = options.get("scheduling_strategy")
    if s is None or s == "DEFAULT":
        return None
    if s == "SPREAD":
        return ("SPREAD", 0, False)
    if isinstance(s, NodeAffinitySchedulingStrategy):
        return ("NODE", s.node_id, s.soft)
    if isinstance(s, PlacementGroupSchedulingStrategy):
        return None  # Expressed through the bundle's resources (see _placement.bundle_request).
    raise ValueError(
        "scheduling_strategy must be 'DEFAULT', 'SPREAD', a NodeAffinitySchedulingStrategy or a "
        f"PlacementGroupSchedulingStrategy, not {s!r}"
    )


def requests(opts: dict, default_cpus: float, where: str) -> tuple[float, list]:
    """(num_cpus, [(resource, amount)]) a task or actor asks for, in its placement group's
    bundle if its scheduling strategy names one."""
    cpus = float(opts.get("num_cpus", default_cpus))
    res = resource_list(opts, where) if "resources" in opts or "num_gpus" in opts else []
    s = opts.get("scheduling_strategy")
    if s is not None and not isinstance(s, (str, NodeAffinitySchedulingStrategy)):
        return 0.0, bundle_request(s, cpus, res, where)
    return cpus, res


def check_options(options: dict) -> dict:
    """``options`` (of ``@volley.remote(...)`` or ``.options(...)``) if they are valid task
    options; raises ``TypeError``/``ValueError`` naming the first that is not.

    >>> library.check_options({"num_cpus": 2, "max_retries": 0})
    {'num_cpus': 2, 'max_retries': 0}
    >>> library.check_options({"num_cpu": 2})
    Traceback (most recent call last):
    TypeError: unknown option(s) ['num_cpu']; known: [...]
    """
    unknown = set(options) - TASK_OPTIONS
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(TASK_OPTIONS)}")
    n = options.get("num_returns", 1)
    if n != "streaming" and (not isinstance(n, int) or n < 1):
        raise ValueError(f"num_returns must be an int >= 1 or 'streaming', not {n!r}")
    resource_list(options, "remote")
    c = options.get("num_cpus", 1)
    if not isinstance(c, (int, float)) or c < 0:
        raise ValueError(f"num_cpus must be a number >= 0, not {c!r}")
    r = options.get("max_retries", 3)
    if not isinstance(r, int) or r < -1:
        raise ValueError(f"max_retries must be an int >= -1 (-1: unlimited), not {r!r}")
    name = options.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError("name must be a string")
    strategy(options)
    return options
