"""Placement groups: resources reserved together, as bundles on one node or across several.

A group's bundles are reserved all at once (gang scheduling): ``pg.ready()`` becomes ready when
every bundle is held. Tasks and actors then run inside a bundle with
``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, bundle_index)``, using what the bundle
reserved rather than the node's free resources.

>>> pg = volley.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
>>> volley.get(pg.ready())  # doctest: +ELLIPSIS
PlacementGroup(...)
>>> @volley.remote
... def f():
...     return "in bundle 0"
>>> volley.get(f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote())
'in bundle 0'
>>> volley.remove_placement_group(pg)
"""

from __future__ import annotations

import uuid

from . import _core
from ._objects import get
from ._serialization import dumps
from ._session import ensure_init
from .exceptions import GetTimeoutError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

#: Every task or actor placed in a bundle takes this much of the bundle's marker resource, so
#: that one asking for no resources at all still lands on the bundle's node (1000 per bundle).
_MARKER_TAKE = 0.001


class PlacementGroup:
    """A placement group made by :func:`placement_group`. Picklable: pass it to tasks, which can
    schedule into it too.

    >>> pg = volley.placement_group([{"CPU": 2}])
    >>> pg.wait(10)
    True
    >>> pg.bundle_count
    1
    >>> volley.remove_placement_group(pg)
    """

    def __init__(
        self,
        id: str,
        bundles: list[dict[str, float]],
        strategy: str,
        name: str = "",
        ready_ref: _core.ObjectRef | None = None,
    ):
        self.id = id
        self.bundle_specs = bundles
        self.strategy = strategy
        self.name = name
        self._ready = ready_ref

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> _core.ObjectRef:
        """A ref that becomes this group once every bundle is reserved. ``get`` on it raises
        ``UnschedulableError`` if the cluster can never hold the group, or it was removed first.
        """
        if self._ready is None:
            raise ValueError(f"{self!r} is a copy without its ready() ref (the value of one)")
        return self._ready

    def wait(self, timeout_seconds: float | None = 30) -> bool:
        """Waits up to ``timeout_seconds`` for every bundle to be reserved; False on timeout.

        Raises ``UnschedulableError`` if the group can never be placed or was removed.
        """
        try:
            get(self.ready(), timeout=timeout_seconds)
        except GetTimeoutError:
            return False
        return True

    def __reduce__(self):
        return (PlacementGroup, (self.id, self.bundle_specs, self.strategy, self.name, self._ready))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"PlacementGroup({self.id}, {self.bundle_specs}, {self.strategy}{name})"


class PlacementGroupSchedulingStrategy:
    """Run a task or actor in a placement group's bundle: ``placement_group_bundle_index`` picks
    one (``-1``, the default: any bundle with room). What it asks for (``num_cpus``,
    ``num_gpus``, ``resources``) comes out of the bundle's reservation, and must fit in it.

    >>> @volley.remote
    ... class Trainer:
    ...     def fit(self):
    ...         return "fitted"
    >>> pg = volley.placement_group([{"CPU": 1}, {"CPU": 1}])
    >>> s = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
    >>> trainer = Trainer.options(scheduling_strategy=s, num_cpus=1).remote()
    >>> volley.get(trainer.fit.remote())
    'fitted'
    >>> volley.kill(trainer)
    >>> volley.remove_placement_group(pg)
    """

    def __init__(self, placement_group: PlacementGroup, placement_group_bundle_index: int = -1):
        if not isinstance(placement_group, PlacementGroup):
            raise TypeError(f"placement_group must be a PlacementGroup, not {placement_group!r}")
        i = placement_group_bundle_index
        if not isinstance(i, int) or not -1 <= i < placement_group.bundle_count:
            raise ValueError(
                f"placement_group_bundle_index must be -1 or in [0, "
                f"{placement_group.bundle_count}), not {i!r}"
            )
        self.placement_group = placement_group
        self.placement_group_bundle_index = i

    def __repr__(self) -> str:
        return (
            f"PlacementGroupSchedulingStrategy({self.placement_group.id}, "
            f"bundle={self.placement_group_bundle_index})"
        )


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("bundles must be a non-empty list of dicts such as {'CPU': 1}")
    out = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(
                f"bundle {i} must be a non-empty dict of resource -> amount, not {b!r}"
            )
        clean = {}
        for k, v in b.items():
            if not isinstance(k, str) or not k or ":" in k:
                raise ValueError(f"bundle {i}: resource names are strings without ':', not {k!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"bundle {i}: resource '{k}' must be a number >= 0, not {v!r}")
            clean[k] = float(v)
        if not any(clean.values()):
            raise ValueError(f"bundle {i} asks for nothing: {b!r}")
        out.append(clean)
    return out


def placement_group(
    bundles: list[dict[str, float]], strategy: str = "PACK", name: str = ""
) -> PlacementGroup:
    """Reserves ``bundles`` (dicts of resource -> amount; ``"CPU"``, ``"GPU"`` or custom names)
    together, placed by ``strategy``:

    - ``"PACK"`` (default): as few nodes as possible;
    - ``"SPREAD"``: as many different nodes as possible;
    - ``"STRICT_PACK"``: all bundles on one node;
    - ``"STRICT_SPREAD"``: each bundle on a different node.

    Returns at once; ``pg.ready()`` / ``pg.wait()`` tell when the bundles are held (they wait
    while the resources are busy). A group that the cluster's nodes can never hold fails
    ``ready()`` with ``UnschedulableError``. Remove it with :func:`remove_placement_group`; it is
    removed when its creator's driver exits.

    In a cluster with two GPU nodes:

    >>> pg = volley.placement_group([{"CPU": 1, "GPU": 1}] * 2, strategy="STRICT_SPREAD")
    ... # doctest: +SKIP
    >>> volley.get(pg.ready(), timeout=60)  # doctest: +SKIP
    PlacementGroup(...)
    """
    ensure_init()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if not isinstance(name, str):
        raise TypeError("name must be a string")
    clean = _check_bundles(bundles)
    pg_id = uuid.uuid4().hex[:20]
    data, buffers, contained = dumps(PlacementGroup(pg_id, clean, strategy, name))
    if buffers or contained:
        raise RuntimeError("a placement group pickled with out-of-band parts")
    ref = _core.pg_create(pg_id, name, [sorted(b.items()) for b in clean], strategy, bytes(data))
    return PlacementGroup(pg_id, clean, strategy, name, ref)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Releases the group's bundles on every node. Tasks and actors running in it are stopped,
    those waiting for it fail with ``UnschedulableError`` (actors: ``ActorCreationError``).

    >>> pg = volley.placement_group([{"CPU": 1}])
    >>> volley.remove_placement_group(pg)
    >>> volley.placement_group_table(pg)["state"]
    'REMOVED'
    """
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"expected a PlacementGroup, not {placement_group!r}")
    ensure_init()
    _core.pg_remove(placement_group.id)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """The groups this process's node created: ``{id: {"state", "strategy", "bundles",
    "bundles_to_node_id", "name", "reason"}}``, or one group's dict. ``state`` is ``PENDING``,
    ``CREATED``, ``RESCHEDULING`` (a node holding bundles died), ``REMOVED`` or ``FAILED``.

    >>> pg = volley.placement_group([{"CPU": 1}])
    >>> pg.wait(10)
    True
    >>> volley.placement_group_table(pg)["state"]
    'CREATED'
    >>> volley.remove_placement_group(pg)
    """
    ensure_init()
    table = {d["placement_group_id"]: d for d in _core.pg_table()}
    if placement_group is None:
        return table
    return table.get(placement_group.id, {})


def bundle_request(
    strategy: PlacementGroupSchedulingStrategy, num_cpus: float, resources: list, where: str
) -> list:
    """The resources a task or actor in a bundle asks for instead of ``num_cpus`` and
    ``resources`` (``[(name, amount)]``): the bundle's own names (see the scheduler's
    ``placement`` module). Raises ``ValueError`` if the request cannot fit in the bundle."""
    pg = strategy.placement_group
    index = strategy.placement_group_bundle_index
    demand = {"CPU": float(num_cpus), **dict(resources)}
    demand = {k: v for k, v in demand.items() if v > 0}

    def fits(b: dict) -> bool:
        return all(b.get(k, 0) >= v for k, v in demand.items())

    if index >= 0 and not fits(pg.bundle_specs[index]):
        raise ValueError(
            f"{where} asks for {demand}, more than bundle {index} of {pg!r} reserved "
            f"({pg.bundle_specs[index]})"
        )
    if index < 0 and not any(fits(b) for b in pg.bundle_specs):
        raise ValueError(f"{where} asks for {demand}, more than any bundle of {pg!r} reserved")
    out: dict[str, float] = {}
    for k, v in [*demand.items(), ("bundle", _MARKER_TAKE)]:
        if index >= 0:
            out[f"pg:{pg.id}:{index}:{k}"] = v
        out[f"pg:{pg.id}:{k}"] = v
    return sorted(out.items())
