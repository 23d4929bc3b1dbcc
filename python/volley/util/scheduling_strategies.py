"""Ray's ``ray.util.scheduling_strategies`` module: volley's scheduling strategies under Ray's
import path. ``NodeAffinitySchedulingStrategy`` takes a node id as ``volley.nodes()`` and
``get_runtime_context().get_node_id()`` give it (an int). Ray's
``PlacementGroupSchedulingStrategy(placement_group_capture_child_tasks=...)`` is not
supported (see docs/from-ray.md)."""

from __future__ import annotations

from .. import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
