"""What every metric-driven scheduler shares: argument checks, ``metric``/``mode`` from the
tuner, and reading a result's time and score with an error that names what is missing."""

from __future__ import annotations

import math
from typing import Any

from . import TrialScheduler


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is a real number > 0 (>= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")


class MetricScheduler(TrialScheduler):
    """A scheduler that ranks trials by ``metric`` (to ``mode``) along ``time_attr``."""

    def __init__(self, time_attr: str, metric: str | None, mode: str | None) -> None:
        check_name("time_attr", time_attr)
        if metric is not None:
            check_name("metric", metric)
        super().__init__(metric, mode)
        self.time_attr = time_attr

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Takes the tuner's ``metric``/``mode`` where this scheduler was given none; returns
        False (the tuner then raises) if they differ from the scheduler's own, or if neither
        says what to rank by."""
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if (metric and self.metric and metric != self.metric) or (
            mode and self.mode and mode != self.mode
        ):
            return False
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return self.metric is not None and self.mode is not None

    def _need_properties(self) -> None:
        if self.metric is None or self.mode is None:
            raise ValueError(
                f"{type(self).__name__} needs a metric and a mode ('min' or 'max'): pass them "
                "to it or to TuneConfig(metric=..., mode=...)"
            )

    def _time(self, trial: Any, result: dict) -> float:
        value = result.get(self.time_attr)
        if value is None:
            raise ValueError(
                f"{type(self).__name__}: the result of trial {_tid(trial)} has no "
                f"{self.time_attr!r} (its time_attr); it has {sorted(result)}"
            )
        return value

    def _score(self, trial: Any, result: dict) -> float:
        """The result's metric, made "higher is better"; NaN counts as the worst score."""
        self._need_properties()
        assert self.metric is not None
        if self.metric not in result:
            raise ValueError(
                f"{type(self).__name__}: the result of trial {_tid(trial)} has no metric "
                f"{self.metric!r}; it has {sorted(result)}"
            )
        value = float(result[self.metric])
        if math.isnan(value):
            return -math.inf
        return value if self.mode == "max" else -value


def _tid(trial: Any) -> str:
    return repr(getattr(trial, "trial_id", trial))
