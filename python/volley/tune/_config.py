"""The tuner's settings (Ray Tune's names): what to search (``TuneConfig``), where results go and
when trials stop (``RunConfig``), how checkpoints are kept (``CheckpointConfig``), how failures
are met (``FailureConfig``), plus ``Stopper`` and ``Callback``.

>>> from volley import tune
>>> tune.TuneConfig(metric="loss", mode="min", num_samples=10).num_samples
10
>>> tune.TuneConfig(mode="lowest")
Traceback (most recent call last):
ValueError: TuneConfig: mode must be 'min' or 'max', got 'lowest'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Callback",
    "CheckpointConfig",
    "FailureConfig",
    "RunConfig",
    "Stopper",
    "TuneConfig",
]


@dataclass
class TuneConfig:
    """What to search and how: ``metric``/``mode`` ("min" or "max") that ``get_best_result``,
    searchers and schedulers use; ``num_samples`` draws of the ``param_space`` (times each
    grid combination); at most ``max_concurrent_trials`` at once (default: as many as the
    cluster's CPUs and GPUs hold); ``search_alg`` (default ``BasicVariantGenerator``),
    ``scheduler`` (default ``FIFOScheduler``); ``time_budget_s`` for the whole run (running
    trials are stopped when it is spent); ``trial_name_creator``/``trial_dirname_creator``
    (``Trial -> str``)."""

    metric: str | None = None
    mode: str | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    search_alg: Any = None
    scheduler: Any = None
    time_budget_s: float | None = None
    reuse_actors: bool = False
    trial_name_creator: Callable[[Any], str] | None = None
    trial_dirname_creator: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in ("min", "max"):
            raise ValueError(f"TuneConfig: mode must be 'min' or 'max', got {self.mode!r}")
        if self.metric is not None and not isinstance(self.metric, str):
            raise TypeError(f"TuneConfig: metric must be a str, got {type(self.metric).__name__}")
        if (self.metric is None) != (self.mode is None):
            raise ValueError(
                "TuneConfig: give metric and mode together "
                f"(metric={self.metric!r}, mode={self.mode!r})"
            )
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(
                f"TuneConfig: num_samples must be an int >= 1, got {self.num_samples!r}"
            )
        if self.max_concurrent_trials is not None and (
            not isinstance(self.max_concurrent_trials, int) or self.max_concurrent_trials < 1
        ):
            raise ValueError(
                "TuneConfig: max_concurrent_trials must be an int >= 1 or None, "
                f"got {self.max_concurrent_trials!r}"
            )
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"TuneConfig: time_budget_s must be > 0, got {self.time_budget_s!r}")


@dataclass
class CheckpointConfig:
    """Which checkpoints a trial keeps: the best ``num_to_keep`` (None: all) by
    ``checkpoint_score_attribute`` (a reported metric; default: the most recent) in
    ``checkpoint_score_order`` ("max" or "min"). ``checkpoint_frequency`` and
    ``checkpoint_at_end`` are for ``Trainable`` classes (every N steps, and when it ends)."""

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None

    def __post_init__(self) -> None:
        if self.num_to_keep is not None and (
            not isinstance(self.num_to_keep, int) or self.num_to_keep < 1
        ):
            raise ValueError(
                "CheckpointConfig: num_to_keep must be an int >= 1 or None, "
                f"got {self.num_to_keep!r}"
            )
        if self.checkpoint_score_order not in ("min", "max"):
            raise ValueError(
                "CheckpointConfig: checkpoint_score_order must be 'min' or 'max', "
                f"got {self.checkpoint_score_order!r}"
            )
        if not isinstance(self.checkpoint_frequency, int) or self.checkpoint_frequency < 0:
            raise ValueError(
                "CheckpointConfig: checkpoint_frequency must be an int >= 0, "
                f"got {self.checkpoint_frequency!r}"
            )


@dataclass
class FailureConfig:
    """A failed trial (its trainable raised, or its process or node died) is restarted from
    its latest checkpoint up to ``max_failures`` times (-1: without end), then marked ERROR.
    ``fail_fast=True`` stops the whole run at the first trial error; ``"raise"`` also raises
    it from ``fit()``."""

    max_failures: int = 0
    fail_fast: bool | str = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(
                f"FailureConfig: max_failures must be an int >= -1, got {self.max_failures!r}"
            )
        if self.fail_fast not in (True, False, "raise"):
            raise ValueError(
                f"FailureConfig: fail_fast must be True, False or 'raise', got {self.fail_fast!r}"
            )


class Stopper:
    """Decides when a trial (``__call__``) or the whole run (``stop_all``) stops.

    >>> class AtLoss(Stopper):
    ...     def __call__(self, trial_id, result):
    ...         return result["loss"] < 0.1
    >>> AtLoss()("t0", {"loss": 0.05})
    True
    """

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return False


class Callback:
    """Hooks called on the driver as the run goes (override those you need): ``setup`` once,
    ``on_trial_start``, ``on_trial_result``, ``on_trial_complete``, ``on_trial_error``, then
    ``on_experiment_end``. They run on the tuner's loop: keep them quick.

    >>> class Count(Callback):
    ...     n = 0
    ...     def on_trial_result(self, iteration, trials, trial, result, **info):
    ...         self.n += 1
    """

    def setup(self, **info: Any) -> None:
        pass

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pass

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        pass

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pass

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pass

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        pass


def _check_stop(stop: Any) -> None:
    if stop is None or callable(stop):
        return
    if isinstance(stop, dict):
        for k, v in stop.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)):
                raise TypeError(
                    f"RunConfig: stop must map metric names to numbers, got {k!r}: {v!r}"
                )
        return
    raise TypeError(
        "RunConfig: stop must be a dict, a callable (trial_id, result) -> bool or a Stopper, "
        f"not {type(stop).__name__}"
    )


@dataclass
class RunConfig:
    """Where and how the run goes: results under ``storage_path/name`` (default
    ``~/volley_results``, name made from the trainable and the time); ``stop`` a dict (a
    trial stops once any of its metrics reaches the value), a callable ``(trial_id, result)
    -> bool`` or a ``Stopper``; ``checkpoint_config``, ``failure_config``; ``callbacks``;
    ``verbose`` 0 (silent), 1 (a status table that refreshes in place), 2 (and a line per
    trial's end)."""

    name: str | None = None
    storage_path: str | None = None
    stop: Any = None
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    failure_config: FailureConfig = field(default_factory=FailureConfig)
    callbacks: list = field(default_factory=list)
    verbose: int = 1

    def __post_init__(self) -> None:
        _check_stop(self.stop)
        if self.name is not None and (
            not isinstance(self.name, str) or not self.name or os.sep in self.name
        ):
            raise ValueError(f"RunConfig: name must be a non-empty folder name, got {self.name!r}")
        if self.verbose not in (0, 1, 2, 3):
            raise ValueError(f"RunConfig: verbose must be 0, 1 or 2, got {self.verbose!r}")
        for cb in self.callbacks or []:
            if not isinstance(cb, Callback):
                raise TypeError(f"RunConfig: callbacks must be tune.Callback objects, got {cb!r}")
