"""Ray's ``ray.util.placement_group`` module: volley's placement groups under Ray's import
path (``from volley.util.placement_group import placement_group``)."""

from __future__ import annotations

from .. import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = ["PlacementGroup", "placement_group", "placement_group_table", "remove_placement_group"]
