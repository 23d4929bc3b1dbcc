"""Asynchronous successive halving (ASHA): stop a trial at a rung unless it is among the best
of those that reached the rung before it, without ever waiting for the others.

Rungs sit at ``grace_period * reduction_factor**k`` (in ``time_attr`` units) below ``max_t``.
When a trial reaches a rung, its score is ranked among the scores recorded at that rung so far
(its own included): it goes on if it is in the top ``1/reduction_factor`` of them (rounded up,
so the first trial at a rung always goes on), else it stops. A trial that reaches ``max_t``
stops (``stop_last_trials``). With ``brackets > 1``, bracket ``s`` starts its rungs at
``grace_period * reduction_factor**s``; trials are dealt to the brackets in proportion to
their weights, in a fixed order (Ray draws them at random), so a rerun makes the same choices.

>>> from volley.tune._trial import Trial
>>> from volley.tune.schedulers import ASHAScheduler
>>> asha = ASHAScheduler(metric="loss", mode="min", max_t=8, grace_period=1, reduction_factor=2)
>>> asha.rungs()
[1, 2, 4]
>>> a, b = Trial("a", {}), Trial("b", {})
>>> asha.on_trial_add(None, a); asha.on_trial_add(None, b)
>>> asha.on_trial_result(None, a, {"training_iteration": 1, "loss": 0.5})
'CONTINUE'
>>> asha.on_trial_result(None, b, {"training_iteration": 1, "loss": 0.9})
'STOP'
"""

from __future__ import annotations

import math
from typing import Any

from . import TrialScheduler
from ._common import MetricScheduler, check_positive

__all__ = ["ASHAScheduler", "AsyncHyperBandScheduler"]


class _Bracket:
    """One bracket: its rungs' milestones (highest first) and the scores recorded at each."""

    def __init__(self, grace_period: float, max_t: float, rf: float, s: int) -> None:
        milestones = []
        t = grace_period * rf**s
        while t < max_t:
            milestones.append(t)
            t *= rf
        self.milestones = milestones[::-1]
        self.recorded: list[dict[str, float]] = [{} for _ in self.milestones]

    def on_result(self, trial_id: str, time: float, score: float, rf: float) -> bool:
        """Records ``score`` at the highest rung ``time`` reached that has no score of this
        trial yet; False if the trial is not in that rung's top 1/rf."""
        for milestone, recorded in zip(self.milestones, self.recorded):
            if time < milestone:
                continue
            if trial_id in recorded:
                return True  # judged at this rung already; the next rung is still ahead
            recorded[trial_id] = score
            keep = math.ceil(len(recorded) / rf)
            better = sum(1 for v in recorded.values() if v > score)
            return better < keep
        return True


class ASHAScheduler(MetricScheduler):
    """Asynchronous HyperBand (ASHA): early-stops trials that fall behind at each rung
    (see the module). Arguments as Ray Tune's ``ASHAScheduler``.

    ``time_attr``: the result's clock (``training_iteration``, or ``time_total_s``, ...);
    ``metric``/``mode``: what to rank by (else the tuner's); ``max_t``: a trial's most time;
    ``grace_period``: the least time before a trial can be stopped; ``reduction_factor``: the
    fraction ``1/reduction_factor`` of trials goes on at each rung; ``brackets``: how many
    brackets; ``stop_last_trials``: stop trials that reach ``max_t``.

    >>> ASHAScheduler(reduction_factor=1)
    Traceback (most recent call last):
    ...
    ValueError: reduction_factor must be > 1, got 1
    """

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
    ) -> None:
        super().__init__(time_attr, metric, mode)
        check_positive("max_t", max_t)
        check_positive("grace_period", grace_period)
        check_positive("reduction_factor", reduction_factor)
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor!r}")
        if grace_period > max_t:
            raise ValueError(f"grace_period ({grace_period!r}) must be <= max_t ({max_t!r})")
        if isinstance(brackets, bool) or not isinstance(brackets, int) or brackets < 1:
            raise ValueError(f"brackets must be an int >= 1, got {brackets!r}")
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.stop_last_trials = bool(stop_last_trials)
        self._brackets = [
            _Bracket(grace_period, max_t, reduction_factor, s) for s in range(brackets)
        ]
        # Bracket s gets trials in proportion to e**(rungs of s - most rungs), as Ray weighs it.
        most = max(len(b.milestones) for b in self._brackets)
        self._weights = [math.exp(len(b.milestones) - most) for b in self._brackets]
        self._bracket_of: dict[str, int] = {}
        self._counts = [0] * brackets

    def rungs(self, bracket: int = 0) -> list[float]:
        """The milestones of ``bracket``'s rungs, lowest first."""
        return self._brackets[bracket].milestones[::-1]

    def on_trial_add(self, controller: Any, trial: Any) -> None:
        if trial.trial_id in self._bracket_of:
            return
        i = min(range(len(self._brackets)), key=lambda b: self._counts[b] / self._weights[b])
        self._bracket_of[trial.trial_id] = i
        self._counts[i] += 1

    def on_trial_result(self, controller: Any, trial: Any, result: dict) -> str:
        time = self._time(trial, result)
        score = self._score(trial, result)
        if trial.trial_id not in self._bracket_of:
            self.on_trial_add(controller, trial)
        if self.stop_last_trials and time >= self.max_t:
            return TrialScheduler.STOP
        bracket = self._brackets[self._bracket_of[trial.trial_id]]
        if bracket.on_result(trial.trial_id, time, score, self.reduction_factor):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP

    def on_trial_complete(self, controller: Any, trial: Any, result: dict) -> None:
        # A trial that ended on its own at a rung still counts there, for those after it.
        if result and self.time_attr in result and self.metric in result:
            if trial.trial_id not in self._bracket_of:
                self.on_trial_add(controller, trial)
            bracket = self._brackets[self._bracket_of[trial.trial_id]]
            bracket.on_result(
                trial.trial_id,
                self._time(trial, result),
                self._score(trial, result),
                self.reduction_factor,
            )

    def get_state(self) -> dict:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "recorded": [b.recorded for b in self._brackets],
            "bracket_of": dict(self._bracket_of),
            "counts": list(self._counts),
        }

    def set_state(self, state: dict) -> None:
        if len(state["recorded"]) != len(self._brackets):
            raise ValueError(
                f"this ASHAScheduler has {len(self._brackets)} brackets, the saved state "
                f"{len(state['recorded'])}: restore with the same arguments"
            )
        self.metric = self.metric or state["metric"]
        self.mode = self.mode or state["mode"]
        for b, recorded in zip(self._brackets, state["recorded"]):
            b.recorded = [dict(r) for r in recorded]
        self._bracket_of = dict(state["bracket_of"])
        self._counts = list(state["counts"])


AsyncHyperBandScheduler = ASHAScheduler
