"""Population based training (PBT): every ``perturbation_interval``, a trial in the bottom
quantile of the population takes the checkpoint and config of a trial in the top quantile
(exploit), and the config is perturbed (explore).

Exploit goes through the tuner: ``controller.reset_trial(trial, new_config, checkpoint)``
restarts the trial from the better trial's checkpoint (the tuner moves it through volley's
object store), keeping its id and history. Which checkpoint, as Ray Tune's PBT:

- a trial gives its checkpoint only if it was in the top quantile when it was last ranked
  (at its own last perturbation point): the checkpoint of that moment, so the score and the
  weights match; a trial ranked below the top, or just reset to another's checkpoint, has
  none to give until it is ranked in the top again;
- the trial to clone is drawn from the whole top quantile; if the one drawn has no
  checkpoint to give, the bottom trial does not exploit this time (no other is drawn).

(On ``benchmarks/tune_schedulers.py``'s noisy quadratic these rules exploit less often than
cloning any top trial that has a checkpoint, with no measurable change in the best config
found: ``benchmarks/RESULTS-tune-schedulers.md``.) Explore, for each key of
``hyperparam_mutations``:

- a list (or ``tune.choice``): with ``resample_probability``, a new draw; else the value next
  to the current one in the list (one step up or down);
- a ``volley.tune`` distribution (``uniform``, ``loguniform``, ``randint``, ...) or a
  callable: with ``resample_probability``, a new draw; else the value times 0.8 or 1.2, kept
  inside the distribution's bounds (Ray may step out of them), ints rounded;
- a dict: the same, one level down.

``custom_explore_fn(config)`` then sees (and may change) the new config.

>>> from volley import tune
>>> from volley.tune.schedulers import PopulationBasedTraining
>>> pbt = PopulationBasedTraining(metric="acc", mode="max", perturbation_interval=2, seed=0,
...     hyperparam_mutations={"lr": tune.uniform(0.01, 0.1), "bs": [16, 32, 64]})
>>> new = pbt.explore({"lr": 0.05, "bs": 32})
>>> 0.01 <= new["lr"] <= 0.1 and new["bs"] in (16, 32, 64)
True
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from .._space import Categorical, Domain, Float, Function, Integer
from . import TrialScheduler
from ._common import MetricScheduler, check_positive

__all__ = ["PopulationBasedTraining"]

logger = logging.getLogger("volley.tune")


class _State:
    """What PBT remembers of a trial: its score at its last perturbation point, when that
    was, and the checkpoint (and config) of then if the trial was in the top quantile (None
    if not: it has nothing to give)."""

    def __init__(self) -> None:
        self.last_score: float | None = None
        self.last_checkpoint: Any = None
        self.last_config: dict | None = None
        self.last_perturbation_time: float = 0
        self.waiting = False  # synch: paused at the perturbation point for the others

    def as_dict(self) -> dict:
        return dict(vars(self))


def _check_mutations(mutations: Any, path: str = "") -> None:
    if not isinstance(mutations, dict):
        raise TypeError(f"hyperparam_mutations{path} must be a dict, got {mutations!r}")
    for key, spec in mutations.items():
        where = f"{path}[{key!r}]"
        if isinstance(spec, dict):
            _check_mutations(spec, where)
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"hyperparam_mutations{where} is an empty list")
        elif not isinstance(spec, Domain) and not callable(spec):
            raise TypeError(
                f"hyperparam_mutations{where} must be a list, a volley.tune distribution, "
                f"a callable or a dict, got {spec!r}"
            )


class PopulationBasedTraining(MetricScheduler):
    """Population based training (see the module). Arguments as Ray Tune's
    ``PopulationBasedTraining``:

    ``time_attr`` and ``perturbation_interval`` (how often, in ``time_attr``, a trial is
    ranked and maybe exploits), ``burn_in_period`` (no perturbation before this much time),
    ``hyperparam_mutations`` (key -> list / distribution / callable / dict; a key missing from
    a trial's config is drawn from it when the trial is added), ``quantile_fraction`` (the top
    and bottom fraction, at most 0.5), ``resample_probability``, ``custom_explore_fn``,
    ``log_config`` (log each exploit to the ``volley.tune`` logger, at INFO in a run with
    ``RunConfig(verbose=2)`` and at DEBUG below; ``policy_log`` keeps them
    all), ``synch`` (pause each trial at its perturbation point until every live trial has
    reached it, then exploit all at once), ``seed`` (makes the choices repeatable).

    >>> PopulationBasedTraining(hyperparam_mutations={"lr": []})
    Traceback (most recent call last):
    ...
    ValueError: hyperparam_mutations['lr'] is an empty list
    """

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        perturbation_interval: float = 60.0,
        hyperparam_mutations: dict | None = None,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        custom_explore_fn: Callable[[dict], dict | None] | None = None,
        log_config: bool = True,
        synch: bool = False,
        burn_in_period: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(time_attr, metric, mode)
        check_positive("perturbation_interval", perturbation_interval)
        check_positive("burn_in_period", burn_in_period, allow_zero=True)
        check_positive("quantile_fraction", quantile_fraction, allow_zero=True)
        check_positive("resample_probability", resample_probability, allow_zero=True)
        if quantile_fraction > 0.5:
            raise ValueError(
                f"quantile_fraction must be in [0, 0.5] (top and bottom cannot overlap), "
                f"got {quantile_fraction!r}"
            )
        if resample_probability > 1:
            raise ValueError(
                f"resample_probability must be in [0, 1], got {resample_probability!r}"
            )
        if custom_explore_fn is not None and not callable(custom_explore_fn):
            raise TypeError(f"custom_explore_fn must be callable, got {custom_explore_fn!r}")
        mutations = {} if hyperparam_mutations is None else hyperparam_mutations
        _check_mutations(mutations)
        if not mutations and custom_explore_fn is None:
            raise ValueError(
                "PopulationBasedTraining needs hyperparam_mutations or custom_explore_fn "
                "(what to change when a trial exploits another)"
            )
        self.perturbation_interval = perturbation_interval
        self.hyperparam_mutations = mutations
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.custom_explore_fn = custom_explore_fn
        self.log_config = bool(log_config)
        self.synch = bool(synch)
        self.burn_in_period = burn_in_period
        self._rng = random.Random(seed)
        self._state: dict[str, _State] = {}
        self.policy_log: list[dict] = []
        self._num_perturbations = 0

    # --- explore -------------------------------------------------------------------------

    def explore(self, config: dict) -> dict:
        """A perturbed copy of ``config`` (see the module)."""
        new = copy.deepcopy(config)
        self._explore(new, self.hyperparam_mutations)
        if self.custom_explore_fn is not None:
            out = self.custom_explore_fn(new)
            if out is not None:
                new = out
            if not isinstance(new, dict):
                raise TypeError(f"custom_explore_fn must return a dict, got {new!r}")
        return new

    def _explore(self, config: dict, mutations: dict) -> None:
        for key, spec in mutations.items():
            if isinstance(spec, dict):
                sub = config.setdefault(key, {})
                if not isinstance(sub, dict):
                    raise TypeError(f"config[{key!r}] is {sub!r}, its mutations are a dict")
                self._explore(sub, spec)
                continue
            resample = self._rng.random() < self.resample_probability
            if isinstance(spec, (list, tuple, Categorical)):
                values = list(spec.categories if isinstance(spec, Categorical) else spec)
                if resample or config.get(key) not in values:
                    config[key] = copy.deepcopy(self._rng.choice(values))
                else:
                    i = values.index(config[key]) + self._rng.choice((-1, 1))
                    config[key] = copy.deepcopy(values[min(max(i, 0), len(values) - 1)])
            elif resample or not isinstance(config.get(key), (int, float)):
                config[key] = self._draw(spec, config)
            else:
                config[key] = self._perturb(config[key], spec)

    def _draw(self, spec: Any, config: dict) -> Any:
        if isinstance(spec, Function):
            return spec.fn(SimpleNamespace(config=config))
        if isinstance(spec, Domain):
            return spec.sample(self._rng)
        return spec()

    def _perturb(self, value: float, spec: Any) -> float:
        factor = self._rng.choice((0.8, 1.2))
        new = value * factor
        if isinstance(value, int) and not isinstance(value, bool):
            new = int(round(new))
            if new == value:  # 0.8 or 1.2 of a small int rounds back to it: step by one
                new = value + (1 if factor > 1 else -1)
        if isinstance(spec, Float) and spec.normal is None:
            assert spec.lower is not None and spec.upper is not None
            new = min(max(new, spec.lower), spec.upper)
        elif isinstance(spec, Integer):
            top = spec.upper if spec.q is not None else spec.upper - 1
            new = int(min(max(new, spec.lower), top))
        return new

    # --- the hooks -----------------------------------------------------------------------

    def on_trial_add(self, controller: Any, trial: Any) -> None:
        if trial.trial_id in self._state:
            return
        self._state[trial.trial_id] = _State()
        self._fill(trial.config, self.hyperparam_mutations)

    def _fill(self, config: dict, mutations: dict) -> None:
        for key, spec in mutations.items():
            if isinstance(spec, dict):
                self._fill(config.setdefault(key, {}), spec)
            elif key not in config:
                if isinstance(spec, (list, tuple)):
                    config[key] = copy.deepcopy(self._rng.choice(list(spec)))
                else:
                    config[key] = self._draw(spec, config)

    def on_trial_result(self, controller: Any, trial: Any, result: dict) -> str:
        time = self._time(trial, result)
        score = self._score(trial, result)
        if trial.trial_id not in self._state:
            self.on_trial_add(controller, trial)
        state = self._state[trial.trial_id]
        if time < self.burn_in_period:
            return TrialScheduler.CONTINUE
        if time - state.last_perturbation_time < self.perturbation_interval:
            return TrialScheduler.CONTINUE
        state.last_score = score
        state.last_perturbation_time = time
        state.last_checkpoint = trial.checkpoint
        state.last_config = copy.deepcopy(trial.config)
        if self.synch:
            return self._synch_point(controller, trial)
        lower, upper = self._quantiles(controller)
        self._keep_top_checkpoints([trial], upper)
        if trial.trial_id in lower and self._exploit(controller, trial, upper):
            return TrialScheduler.NOOP
        # Give waiting trials a turn (as Ray): pause at the perturbation point if any waits.
        if any(t.status in ("PENDING", "PAUSED") for t in _trials(controller)):
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def _synch_point(self, controller: Any, trial: Any) -> str:
        state = self._state[trial.trial_id]
        state.waiting = True
        live = [t for t in _trials(controller) if not t.is_finished()]
        if not all(self._state.get(t.trial_id, _State()).waiting for t in live):
            return TrialScheduler.PAUSE
        lower, upper = self._quantiles(controller)
        self._keep_top_checkpoints(live, upper)
        decision = TrialScheduler.CONTINUE
        for t in live:
            self._state[t.trial_id].waiting = False
            if t.trial_id in lower and self._exploit(controller, t, upper):
                if t is trial:
                    decision = TrialScheduler.NOOP
        return decision

    def _quantiles(self, controller: Any) -> tuple[list[str], list[str]]:
        """The bottom and top trial ids by their scores at their last perturbation point
        (finished trials included, as donors and as the bar to clear)."""
        scored = [tid for tid, s in self._state.items() if s.last_score is not None]
        if len(scored) <= 1:
            return [], []
        scored.sort(key=lambda tid: self._state[tid].last_score)  # type: ignore[arg-type, return-value]
        n = min(math.ceil(len(scored) * self.quantile_fraction), len(scored) // 2)
        if n == 0:
            return [], []
        return scored[:n], scored[-n:]

    def _keep_top_checkpoints(self, ranked: list[Any], upper: list[str]) -> None:
        """Of the trials just ranked, those outside the top quantile give no checkpoint."""
        for t in ranked:
            if t.trial_id not in upper:
                self._state[t.trial_id].last_checkpoint = None

    def _exploit(self, controller: Any, trial: Any, upper: list[str]) -> bool:
        """Resets ``trial`` to the checkpoint of a top trial drawn at random and a perturbed
        copy of its config; False (no exploit this time) if the one drawn has no checkpoint
        to give (see the module)."""
        if not upper:
            return False
        donor_id = self._rng.choice(upper)
        donor_state = self._state[donor_id]
        if donor_state.last_checkpoint is None:
            logger.debug(
                "PBT: top trial %s has no checkpoint to give; %s does not exploit this time",
                donor_id,
                trial.trial_id,
            )
            return False
        assert donor_state.last_config is not None
        new_config = self.explore(donor_state.last_config)
        entry = {
            "time": self._state[trial.trial_id].last_perturbation_time,
            "trial_id": trial.trial_id,
            "from_trial_id": donor_id,
            "old_config": copy.deepcopy(trial.config),
            "new_config": copy.deepcopy(new_config),
        }
        self.policy_log.append(entry)
        self._num_perturbations += 1
        if self.log_config:
            # INFO in a verbose=2 run, else DEBUG: a quiet run prints nothing of tune's own.
            logger.log(
                logging.INFO if getattr(controller, "verbose", 2) >= 2 else logging.DEBUG,
                "PBT: trial %s takes the checkpoint of %s, config %s -> %s",
                trial.trial_id,
                donor_id,
                entry["old_config"],
                new_config,
            )
        checkpoint = donor_state.last_checkpoint
        path = getattr(checkpoint, "path", None)
        if path is not None and not os.path.isdir(path):
            # Pruned since (CheckpointConfig.num_to_keep): the donor's latest instead.
            donor = next((t for t in controller.get_trials() if t.trial_id == donor_id), None)
            checkpoint = getattr(donor, "checkpoint", None) or checkpoint
        controller.reset_trial(trial, new_config, checkpoint)
        # The trial keeps its own (bad) score until its next perturbation point, so the
        # bottom of the population stays put within a round, and it gives no checkpoint
        # until it is ranked in the top.
        self._state[trial.trial_id].last_checkpoint = None
        return True

    def on_trial_complete(self, controller: Any, trial: Any, result: dict) -> None:
        self._release(controller, trial)

    def on_trial_error(self, controller: Any, trial: Any) -> None:
        self._release(controller, trial)

    def on_trial_remove(self, controller: Any, trial: Any) -> None:
        self._release(controller, trial)

    def _release(self, controller: Any, trial: Any) -> None:
        """A trial that ends no longer holds back a synchronous round."""
        state = self._state.get(trial.trial_id)
        if state is not None:
            state.waiting = False
        if not self.synch or controller is None:
            return
        live = [
            t for t in _trials(controller) if not t.is_finished() and t.trial_id != trial.trial_id
        ]
        if live and all(self._state.get(t.trial_id, _State()).waiting for t in live):
            lower, upper = self._quantiles(controller)
            self._keep_top_checkpoints(live, upper)
            for t in live:
                self._state[t.trial_id].waiting = False
                if t.trial_id in lower:
                    self._exploit(controller, t, upper)

    def choose_trial_to_run(self, controller: Any) -> Any:
        """PENDING first, then the PAUSED trial that has run least (so the population keeps
        together); with ``synch``, never one that waits for the others."""
        trials = controller.get_trials()
        for t in trials:
            if t.status == "PENDING":
                return t
        paused = [
            t
            for t in trials
            if t.status == "PAUSED"
            and not (self.synch and self._state.get(t.trial_id, _State()).waiting)
        ]
        if not paused:
            return None
        ran = {tid: s.last_perturbation_time for tid, s in self._state.items()}
        return min(paused, key=lambda t: ran.get(t.trial_id, 0))

    def get_state(self) -> dict:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "rng": self._rng.getstate(),
            "trials": {tid: s.as_dict() for tid, s in self._state.items()},
            "policy_log": list(self.policy_log),
            "num_perturbations": self._num_perturbations,
        }

    def set_state(self, state: dict) -> None:
        self.metric = self.metric or state["metric"]
        self.mode = self.mode or state["mode"]
        self._rng.setstate(state["rng"])
        self._state = {}
        for tid, saved in state["trials"].items():
            s = _State()
            vars(s).update(saved)
            self._state[tid] = s
        self.policy_log = list(state["policy_log"])
        self._num_perturbations = state["num_perturbations"]


def _trials(controller: Any) -> list[Any]:
    return [] if controller is None else list(controller.get_trials())
