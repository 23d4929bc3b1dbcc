"""Trial schedulers: which trial runs next, and whether a running trial goes on, pauses or
stops after each result.

The tuner calls the hooks below on its own thread, in the order things happen; a decision
(``CONTINUE``, ``PAUSE``, ``STOP``) returned from ``on_trial_result`` is carried out at once: a
paused trial is stopped after saving where it was (its latest checkpoint) and is PAUSED until
``choose_trial_to_run`` picks it again, a stopped one is TERMINATED. ``controller`` is the
tuner's view for schedulers:

- ``controller.get_trials()``: every trial of the run (``volley.tune._trial.Trial``), in the
  order they were made;
- ``controller.reset_trial(trial, new_config, checkpoint)``: restart a trial with another config
  from another trial's checkpoint (population based training's exploit); the trial keeps its
  id and its history, and its next result has the next ``training_iteration``.

The algorithms, under Ray Tune's names and arguments: ``FIFOScheduler`` (the default),
``ASHAScheduler`` (``AsyncHyperBandScheduler``), ``HyperBandScheduler``, ``MedianStoppingRule``
and ``PopulationBasedTraining``; each has a module of its own here.

>>> from volley.tune.schedulers import FIFOScheduler, TrialScheduler
>>> FIFOScheduler().on_trial_result(None, None, {"loss": 1.0}) == TrialScheduler.CONTINUE
True
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ASHAScheduler",
    "AsyncHyperBandScheduler",
    "FIFOScheduler",
    "HyperBandScheduler",
    "MedianStoppingRule",
    "PopulationBasedTraining",
    "TrialScheduler",
]


class TrialScheduler:
    """The interface between the tuner and a scheduling algorithm (see the module)."""

    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"
    STOP = "STOP"
    # Ray's name for "the scheduler acted itself" (e.g. reset a trial): carry on.
    NOOP = "NOOP"

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Called by the tuner before the run: its ``metric`` and ``mode``. Returns False if
        the scheduler cannot take them (the tuner then raises, naming it)."""
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def on_trial_add(self, controller: Any, trial: Any) -> None:
        """A trial was made (PENDING)."""

    def on_trial_result(self, controller: Any, trial: Any, result: dict) -> str:
        """A running trial reported ``result``: CONTINUE, PAUSE or STOP."""
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, controller: Any, trial: Any, result: dict) -> None:
        """A running trial finished (its trainable returned, or a stopper ended it)."""

    def on_trial_error(self, controller: Any, trial: Any) -> None:
        """A trial failed for good (more failures than ``max_failures``)."""

    def on_trial_remove(self, controller: Any, trial: Any) -> None:
        """A trial was stopped by its scheduler (STOP) or by the tuner (a time budget)."""

    def choose_trial_to_run(self, controller: Any) -> Any:
        """The PENDING or PAUSED trial to start (or resume) next, or None to start none now.
        The default: the first PENDING trial, else the first PAUSED one."""
        trials = controller.get_trials()
        for status in ("PENDING", "PAUSED"):
            for t in trials:
                if t.status == status:
                    return t
        return None

    def get_state(self) -> dict:
        """What ``Tuner.restore`` needs to go on (picklable)."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restores what ``get_state`` returned."""


class FIFOScheduler(TrialScheduler):
    """Runs trials in the order they were made, each to its end."""


# The algorithms build on the classes above, so they are imported after them.
from .async_hyperband import ASHAScheduler, AsyncHyperBandScheduler  # noqa: E402
from .hyperband import HyperBandScheduler  # noqa: E402
from .median_stopping_rule import MedianStoppingRule  # noqa: E402
from .pbt import PopulationBasedTraining  # noqa: E402
