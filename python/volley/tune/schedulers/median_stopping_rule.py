"""The median stopping rule (Google Vizier): stop a trial whose best score so far is worse
than the median of the other trials' running averages at the same time.

After ``grace_period`` (in ``time_attr``), each result of a trial is compared with the trials
that have run at least as long: if at least ``min_samples_required`` of them have, and the
trial's best score is worse than the median of their mean scores up to that time, the trial is
stopped (``hard_stop``) or paused to run last. Too few others to compare with: the trial goes
on, or, with ``min_time_slice``, pauses after that much time so that waiting trials get a turn
(time sharing, when trials outnumber the slots).

>>> from volley.tune._trial import Trial
>>> from volley.tune.schedulers import MedianStoppingRule
>>> rule = MedianStoppingRule(time_attr="training_iteration", metric="loss", mode="min",
...                           grace_period=1, min_samples_required=2)
>>> trials = [Trial(f"t{i}", {}) for i in range(3)]
>>> for t, loss in zip(trials, [1.0, 2.0]):
...     rule.on_trial_result(None, t, {"training_iteration": 2, "loss": loss})
'CONTINUE'
'CONTINUE'
>>> rule.on_trial_result(None, trials[2], {"training_iteration": 2, "loss": 5.0})
'STOP'
"""

from __future__ import annotations

import statistics
from typing import Any

from . import TrialScheduler
from ._common import MetricScheduler, check_positive

__all__ = ["MedianStoppingRule"]


class MedianStoppingRule(MetricScheduler):
    """Stops trials that do worse than the median (see the module). Arguments as Ray Tune's
    ``MedianStoppingRule``: ``time_attr``, ``metric``, ``mode``, ``grace_period`` (no stop
    before this much time), ``min_samples_required`` (how many other trials must have run as
    long before one is judged), ``min_time_slice`` (if > 0, a trial with too few to compare
    with pauses after this much time while others wait), ``hard_stop`` (stop, or pause and
    run the trial again once the others are done).

    >>> MedianStoppingRule(min_samples_required=0)
    Traceback (most recent call last):
    ...
    ValueError: min_samples_required must be an int >= 1, got 0
    """

    def __init__(
        self,
        time_attr: str = "time_total_s",
        metric: str | None = None,
        mode: str | None = None,
        grace_period: float = 60.0,
        min_samples_required: int = 3,
        min_time_slice: float = 0,
        hard_stop: bool = True,
    ) -> None:
        super().__init__(time_attr, metric, mode)
        check_positive("grace_period", grace_period, allow_zero=True)
        check_positive("min_time_slice", min_time_slice, allow_zero=True)
        if (
            isinstance(min_samples_required, bool)
            or not isinstance(min_samples_required, int)
            or min_samples_required < 1
        ):
            raise ValueError(
                f"min_samples_required must be an int >= 1, got {min_samples_required!r}"
            )
        self.grace_period = grace_period
        self.min_samples_required = min_samples_required
        self.min_time_slice = min_time_slice
        self.hard_stop = bool(hard_stop)
        # trial_id -> [(time, score)] in order; the scores are "higher is better".
        self._results: dict[str, list[tuple[float, float]]] = {}
        self._stopped: set[str] = set()  # soft-stopped (paused to run last)
        self._last_pause: dict[str, float] = {}

    def on_trial_add(self, controller: Any, trial: Any) -> None:
        self._results.setdefault(trial.trial_id, [])

    def on_trial_result(self, controller: Any, trial: Any, result: dict) -> str:
        time = self._time(trial, result)
        score = self._score(trial, result)
        tid = trial.trial_id
        if tid in self._stopped:
            return TrialScheduler.CONTINUE  # soft-stopped and resumed: it runs to its end
        history = self._results.setdefault(tid, [])
        history.append((time, score))
        if time < self.grace_period:
            return TrialScheduler.CONTINUE
        others = [
            h for other, h in self._results.items() if other != tid and h and h[-1][0] >= time
        ]
        if len(others) < self.min_samples_required:
            return self._on_too_few(controller, tid, time)
        median = statistics.median(_running_mean(h, time) for h in others)
        best = max(s for _, s in history)
        if best < median:
            if self.hard_stop:
                return TrialScheduler.STOP
            self._stopped.add(tid)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def _on_too_few(self, controller: Any, tid: str, time: float) -> str:
        if not self.min_time_slice or controller is None:
            return TrialScheduler.CONTINUE
        if time - self._last_pause.get(tid, 0) < self.min_time_slice:
            return TrialScheduler.CONTINUE
        if not any(
            t.trial_id != tid
            and (
                t.status == "PENDING" or (t.status == "PAUSED" and t.trial_id not in self._stopped)
            )
            for t in controller.get_trials()
        ):
            return TrialScheduler.CONTINUE  # nobody waits for a turn
        self._last_pause[tid] = time
        return TrialScheduler.PAUSE

    def on_trial_complete(self, controller: Any, trial: Any, result: dict) -> None:
        """A trial that ends stays a sample, its last result included (the tuner may end a
        trial on a result it does not pass to ``on_trial_result``)."""
        self._stopped.discard(trial.trial_id)
        if not result or self.time_attr not in result or self.metric not in result:
            return
        history = self._results.setdefault(trial.trial_id, [])
        time = self._time(trial, result)
        if not history or history[-1][0] < time:
            history.append((time, self._score(trial, result)))

    def choose_trial_to_run(self, controller: Any) -> Any:
        """PENDING trials first, then PAUSED ones (time-sliced before soft-stopped)."""
        trials = controller.get_trials()
        for wanted in (
            lambda t: t.status == "PENDING",
            lambda t: t.status == "PAUSED" and t.trial_id not in self._stopped,
            lambda t: t.status == "PAUSED",
        ):
            for t in trials:
                if wanted(t):
                    return t
        return None

    def get_state(self) -> dict:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "results": {k: list(v) for k, v in self._results.items()},
            "stopped": set(self._stopped),
            "last_pause": dict(self._last_pause),
        }

    def set_state(self, state: dict) -> None:
        self.metric = self.metric or state["metric"]
        self.mode = self.mode or state["mode"]
        self._results = {k: list(v) for k, v in state["results"].items()}
        self._stopped = set(state["stopped"])
        self._last_pause = dict(state["last_pause"])


def _running_mean(history: list[tuple[float, float]], time: float) -> float:
    scores = [s for t, s in history if t <= time] or [history[0][1]]
    return sum(scores) / len(scores)
