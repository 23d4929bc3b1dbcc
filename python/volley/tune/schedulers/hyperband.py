"""HyperBand: synchronous successive halving in brackets that trade many short trials
against few long ones.

With ``s_max = round(log(max_t) / log(reduction_factor))``, bracket ``s`` (``s_max`` down to 0)
holds up to ``ceil((s_max + 1) / (s + 1) * reduction_factor**s)`` trials and starts them with
``max_t / reduction_factor**s`` of ``time_attr``. New trials fill the brackets in that order
(then a new round of brackets begins). A trial that reaches its bracket's current milestone is
PAUSED until every live trial of the bracket has reached it; then the bracket keeps the best
``ceil(n / reduction_factor)`` of its ``n`` live trials, multiplies the milestone by
``reduction_factor`` and resumes them (``choose_trial_to_run`` picks them, never a trial that
waits for its bracket), and stops the others. A bracket takes new trials only until its first
halving, so none is compared against trials that ran longer, and halves only once it is full,
or when the tuner has no new trial to give it (``choose_trial_to_run`` finds none PENDING), so a
tuner that makes trials one at a time still fills its brackets.

Stopping a trial that is PAUSED needs the tuner: the scheduler calls ``controller.stop_trial``
when the controller has it; otherwise the trial is resumed and stopped at its next result.

>>> from volley.tune._trial import Trial
>>> from volley.tune.schedulers import HyperBandScheduler
>>> hb = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
>>> [(b["size"], b["milestones"]) for b in hb.bracket_shapes()]
[(9, [1, 3, 9]), (5, [3, 9]), (3, [9])]
"""

from __future__ import annotations

import math
from typing import Any

from . import TrialScheduler
from ._common import MetricScheduler, check_positive

__all__ = ["HyperBandScheduler"]


class _Bracket:
    def __init__(self, size: int, milestones: list[float]) -> None:
        self.size = size
        self.milestones = milestones
        self.rung = 0  # index of the current milestone
        self.live: dict[str, tuple[float, float]] = {}  # trial_id -> (time, score)
        self.members: list[str] = []  # every trial ever in it, in order
        self.stopped: set[str] = set()  # judged bad, still to be stopped

    @property
    def milestone(self) -> float:
        return self.milestones[self.rung]

    def open(self) -> bool:
        return self.rung == 0 and len(self.members) < self.size

    def waiting(self, trial_id: str) -> bool:
        """Whether the trial has reached the current milestone (and waits for the rest)."""
        time, _ = self.live[trial_id]
        return time >= self.milestone

    def all_reached(self) -> bool:
        return all(time >= self.milestone for time, _ in self.live.values())


class HyperBandScheduler(MetricScheduler):
    """Synchronous HyperBand (see the module). Arguments as Ray Tune's
    ``HyperBandScheduler``: ``time_attr``, ``metric``, ``mode``, ``max_t`` (a trial's most
    time; brackets are cut from it), ``reduction_factor``, ``stop_last_trials`` (stop trials
    that reach ``max_t``; if False they run on to their own end).

    >>> HyperBandScheduler(max_t=0)
    Traceback (most recent call last):
    ...
    ValueError: max_t must be > 0, got 0
    """

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 81,
        reduction_factor: float = 3,
        stop_last_trials: bool = True,
    ) -> None:
        super().__init__(time_attr, metric, mode)
        check_positive("max_t", max_t)
        check_positive("reduction_factor", reduction_factor)
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor!r}")
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        self.stop_last_trials = bool(stop_last_trials)
        self._s_max = max(0, round(math.log(max_t) / math.log(reduction_factor)))
        self._brackets: list[_Bracket] = []
        self._bracket_of: dict[str, int] = {}

    def bracket_shapes(self) -> list[dict]:
        """One round of brackets: each one's ``size`` and ``milestones``."""
        return [self._shape(s) for s in range(self._s_max, -1, -1)]

    def _shape(self, s: int) -> dict:
        rf, max_t = self.reduction_factor, self.max_t
        size = math.ceil((self._s_max + 1) / (s + 1) * rf**s)
        milestones = []
        for i in range(s + 1):
            t = max_t / rf ** (s - i)
            if isinstance(max_t, int):
                t = max(1, round(t))
            milestones.append(t)
        return {"size": size, "milestones": milestones}

    def _new_bracket(self) -> _Bracket:
        s = self._s_max - len(self._brackets) % (self._s_max + 1)
        shape = self._shape(s)
        bracket = _Bracket(shape["size"], shape["milestones"])
        self._brackets.append(bracket)
        return bracket

    def on_trial_add(self, controller: Any, trial: Any) -> None:
        if trial.trial_id in self._bracket_of:
            return
        bracket = next((b for b in self._brackets if b.open()), None) or self._new_bracket()
        bracket.members.append(trial.trial_id)
        bracket.live[trial.trial_id] = (0, -math.inf)
        self._bracket_of[trial.trial_id] = self._brackets.index(bracket)

    def on_trial_result(self, controller: Any, trial: Any, result: dict) -> str:
        time = self._time(trial, result)
        score = self._score(trial, result)
        if trial.trial_id not in self._bracket_of:
            self.on_trial_add(controller, trial)
        bracket = self._brackets[self._bracket_of[trial.trial_id]]
        if trial.trial_id in bracket.stopped or trial.trial_id not in bracket.live:
            bracket.stopped.discard(trial.trial_id)
            return TrialScheduler.STOP
        bracket.live[trial.trial_id] = (time, score)
        if time >= self.max_t:
            if self.stop_last_trials:
                del bracket.live[trial.trial_id]
                self._advance(controller, bracket)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        if time < bracket.milestone:
            return TrialScheduler.CONTINUE
        if not bracket.all_reached():
            return TrialScheduler.PAUSE
        self._advance(controller, bracket)
        if trial.trial_id not in bracket.live:
            bracket.stopped.discard(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE if time < bracket.milestone else TrialScheduler.PAUSE

    def _advance(self, controller: Any, bracket: _Bracket, force: bool = False) -> None:
        """Halves the bracket while all its live trials have reached its milestone, once it
        is full (or ``force``: no more trials are coming now)."""
        while (
            bracket.live
            and bracket.all_reached()
            and bracket.rung + 1 < len(bracket.milestones)
            and (force or not bracket.open())
        ):
            ranked = sorted(bracket.live, key=lambda t: bracket.live[t][1], reverse=True)
            keep = math.ceil(len(ranked) / self.reduction_factor)
            for trial_id in ranked[keep:]:
                del bracket.live[trial_id]
                bracket.stopped.add(trial_id)
                self._stop_paused(controller, trial_id, bracket)
            bracket.rung += 1

    def _stop_paused(self, controller: Any, trial_id: str, bracket: _Bracket) -> None:
        stop = getattr(controller, "stop_trial", None)
        if stop is None:
            return  # resumed by choose_trial_to_run and stopped at its next result
        for t in controller.get_trials():
            if t.trial_id == trial_id and t.status == "PAUSED":
                bracket.stopped.discard(trial_id)
                stop(t)

    def _forget(self, controller: Any, trial: Any) -> None:
        i = self._bracket_of.get(trial.trial_id)
        if i is None:
            return
        bracket = self._brackets[i]
        bracket.stopped.discard(trial.trial_id)
        if bracket.live.pop(trial.trial_id, None) is not None:
            self._advance(controller, bracket)

    def on_trial_complete(self, controller: Any, trial: Any, result: dict) -> None:
        self._forget(controller, trial)

    def on_trial_error(self, controller: Any, trial: Any) -> None:
        self._forget(controller, trial)

    def on_trial_remove(self, controller: Any, trial: Any) -> None:
        self._forget(controller, trial)

    def choose_trial_to_run(self, controller: Any) -> Any:
        """The first trial, bracket by bracket (oldest first), that is PENDING or PAUSED and
        free to go on (its bracket has moved past its rung, or it is to be stopped); never
        one that waits at its rung. Earlier brackets first, so that a bracket's survivors run
        before new trials of later brackets take the slots (as Ray orders them)."""
        trials = controller.get_trials()
        chosen = self._choose(trials)
        if chosen is None and not any(t.status == "PENDING" for t in trials):
            # The tuner has no new trial to give now (it asks its searcher first): a bracket
            # that is not full but whose trials all wait at its first rung halves as it is.
            for bracket in self._brackets:
                if bracket.open() and bracket.live and bracket.all_reached():
                    self._advance(controller, bracket, force=True)
            chosen = self._choose(trials)
        return chosen

    def _choose(self, trials: list[Any]) -> Any:
        by_id = {t.trial_id: t for t in trials}
        for bracket in self._brackets:
            for tid in bracket.members:
                t = by_id.get(tid)
                if t is None:
                    continue
                if t.status == "PENDING":
                    return t
                if t.status == "PAUSED" and (
                    tid in bracket.stopped or (tid in bracket.live and not bracket.waiting(tid))
                ):
                    return t
        for t in by_id.values():  # not one of ours (made before a restore): let it run
            if t.trial_id not in self._bracket_of and t.status in ("PENDING", "PAUSED"):
                return t
        return None

    def debug_string(self) -> str:
        """One line per bracket: its milestone, live trials and size."""
        return "\n".join(
            f"bracket {i}: milestone {b.milestone}, {len(b.live)} live of {len(b.members)}"
            f" (size {b.size})"
            for i, b in enumerate(self._brackets)
        )

    def get_state(self) -> dict:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "brackets": [
                {
                    "size": b.size,
                    "milestones": b.milestones,
                    "rung": b.rung,
                    "live": dict(b.live),
                    "members": list(b.members),
                    "stopped": set(b.stopped),
                }
                for b in self._brackets
            ],
            "bracket_of": dict(self._bracket_of),
        }

    def set_state(self, state: dict) -> None:
        self.metric = self.metric or state["metric"]
        self.mode = self.mode or state["mode"]
        self._brackets = []
        for saved in state["brackets"]:
            b = _Bracket(saved["size"], list(saved["milestones"]))
            b.rung, b.live = saved["rung"], dict(saved["live"])
            b.members, b.stopped = list(saved["members"]), set(saved["stopped"])
            self._brackets.append(b)
        self._bracket_of = dict(state["bracket_of"])
