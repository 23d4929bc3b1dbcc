"""Ray's ``ray.util`` names, for programs written with ``import volley as ray``.

- ``ActorPool`` (``volley.util.ActorPool``): a fixed set of actors that take work as they
  become free.
- ``as_completed(refs)`` and ``map_unordered(fn, items)``: results as they finish.
- ``placement_group``, ``remove_placement_group``, ``placement_group_table``,
  ``PlacementGroup``, as ``volley.placement_group`` and friends (also importable from
  ``volley.util.placement_group``).
- ``volley.util.scheduling_strategies``: ``PlacementGroupSchedulingStrategy`` and
  ``NodeAffinitySchedulingStrategy``.
- ``SharedDict`` (``volley.SharedDict``): a dictionary every process of the cluster sees
  by name, with atomic ``incr`` and ``compare_and_set``.
- ``volley.util.multiprocessing.Pool`` (``volley.multiprocessing.Pool``) and
  ``volley.util.joblib.register_ray`` (joblib's ``"ray"`` backend runs on volley).

- ``volley.util.queue``: ``Queue`` and ``JoinableQueue`` that cross processes (one node for
  now: docs/queue.md), with ``Empty`` and ``Full``.
- ``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Barrier``,
  ``Condition``, ``LockLost`` (``volley.sync``): across processes and nodes, with leases
  (a dead holder's lock is released and the next acquirer told: docs/sync.md).

``ray.util.timeline`` is ``volley.timeline``: see docs/from-ray.md.

>>> from volley.util import ActorPool
"""

from __future__ import annotations

from .. import SharedDict
from ..sync import (
    Barrier,
    BoundedSemaphore,
    BrokenBarrierError,
    Condition,
    Event,
    Lock,
    LockLost,
    RLock,
    Semaphore,
)
from .actor_pool import ActorPool
from .helpers import as_completed, map_unordered
from .placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "as_completed",
    "map_unordered",
    "PlacementGroup",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "SharedDict",
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "LockLost",
    "RLock",
    "Semaphore",
]
