"""What tasks, actors and nodes ask for besides CPUs: custom resources and GPUs, checked."""

from __future__ import annotations

TYPE_CHECKING = False  # without importing typing, a slow import
if TYPE_CHECKING:
    from typing import Any


def check_resources(resources: Any, where: str) -> dict:
    if not isinstance(resources, dict):
        raise TypeError(f"{where}: resources must be a dict of name -> amount")
    out = {}
    for k, v in resources.items():
        if not isinstance(k, str) or k in ("CPU", "GPU"):
            raise ValueError(
                f"{where}: resource names are strings other than 'CPU' and 'GPU' "
                f"(use num_cpus/num_gpus), not {k!r}"
            )
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{where}: resource '{k}' must be a number >= 0, not {v!r}")
        out[k] = float(v)
    return out


def resource_list(opts: dict, where: str) -> list:
    """``[(name, amount)]`` of the non-CPU resources in task or actor options."""
    res = check_resources(opts.get("resources") or {}, where)
    g = opts.get("num_gpus") or 0
    if not isinstance(g, (int, float)) or g < 0:
        raise ValueError(f"num_gpus must be a number >= 0, not {g!r}")
    if g:
        res["GPU"] = float(g)
    return sorted(res.items())
