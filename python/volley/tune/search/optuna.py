"""``OptunaSearch``: Optuna's samplers (TPE, CMA-ES, GP, NSGA-II, ...) choosing the configs of
``volley.tune`` trials, through Optuna's ask/tell interface.

Optuna is an optional dependency (``pip install "volley[tune]"`` or ``pip install optuna``);
this module imports it only when a searcher is made, so importing it always works.

>>> from volley import tune
>>> from volley.tune.search.optuna import OptunaSearch
>>> search = OptunaSearch({"x": tune.uniform(-2, 2), "n": tune.randint(1, 4)},
...                       metric="loss", mode="min", seed=0)
>>> config = search.suggest("t0")
>>> -2 <= config["x"] <= 2 and config["n"] in (1, 2, 3)
True
>>> search.on_trial_complete("t0", {"loss": config["x"] ** 2})
>>> len(search.study.trials), search.study.trials[0].state.name
(1, 'COMPLETE')
"""

from __future__ import annotations

import copy
import copyreg
import io
import math
import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._space import Categorical, Domain, Float, Function, GridSearch, Integer
from ..schedulers import TrialScheduler
from . import Searcher

__all__ = ["OptunaPruningScheduler", "OptunaSearch"]

_INSTALL = (
    "volley.tune.search.optuna needs Optuna: pip install optuna "
    "(or pip install 'volley[tune]'; CMA-ES also needs cmaes, the GP sampler torch)"
)

#: The samplers ``sampler=`` names, as Optuna's classes.
SAMPLERS = {
    "tpe": "TPESampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "nsga2": "NSGAIISampler",
    "nsga3": "NSGAIIISampler",
    "qmc": "QMCSampler",
    "random": "RandomSampler",
}

# Values Optuna stores as categories as they are; anything else is chosen by its index.
_PLAIN = (type(None), bool, int, float, str)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return optuna


def _leaves(space: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every leaf of a nested dict/list space, in order."""
    if isinstance(space, dict):
        return [leaf for k, v in space.items() for leaf in _leaves(v, (*prefix, k))]
    if isinstance(space, list):
        return [leaf for i, v in enumerate(space) for leaf in _leaves(v, (*prefix, i))]
    return [(prefix, space)]


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


class _Param:
    """One searched leaf: its path in the config, its Optuna distribution, and how an Optuna
    value becomes the config's value (an index for categories Optuna cannot store)."""

    def __init__(self, path: tuple, dist: Any, choices: list | None = None) -> None:
        self.path, self.dist, self.choices = path, dist, choices

    def value(self, v: Any) -> Any:
        return copy.deepcopy(self.choices[v]) if self.choices is not None else v

    def optuna_value(self, v: Any) -> Any:
        """The Optuna value of a config value (``points_to_evaluate``)."""
        if self.choices is None:
            return v
        for i, c in enumerate(self.choices):
            if c == v:
                return i
        raise ValueError(f"{v!r} is not one of the choices of {_name(self.path)!r}")


def _convert(path: tuple, domain: Domain) -> _Param:
    """The Optuna distribution of one volley.tune domain; a ValueError names what Optuna
    cannot model."""
    dists = _optuna().distributions
    where = _name(path) or "the value"
    if isinstance(domain, Function):
        raise ValueError(
            f"OptunaSearch cannot model sample_from() ({where!r}): Optuna needs each "
            "parameter's distribution up front; write a define-by-run space instead "
            "(OptunaSearch(space=fn) where fn(trial) calls trial.suggest_*)"
        )
    if isinstance(domain, Float):
        if domain.normal is not None:
            raise ValueError(
                f"OptunaSearch cannot model randn()/qrandn() ({where!r}): Optuna has no "
                "normal distribution; use uniform() over the range you mean"
            )
        lo, hi = float(domain.lower), float(domain.upper)  # type: ignore[arg-type]
        if domain.q is None:
            return _Param(path, dists.FloatDistribution(lo, hi, log=domain.log))
        if domain.log:
            raise ValueError(
                f"OptunaSearch cannot model qloguniform() ({where!r}): Optuna has no "
                "quantized log-uniform distribution; use loguniform() and round in the trainable"
            )
        q = float(domain.q)
        # The multiples of q in [lower, upper], as volley's own sampling gives them.
        k_lo, k_hi = math.ceil(lo / q - 1e-9), math.floor(hi / q + 1e-9)
        if k_lo > k_hi:
            raise ValueError(f"no multiple of q={q} lies in [{lo}, {hi}] ({where!r})")
        return _Param(path, dists.FloatDistribution(k_lo * q, k_hi * q, step=q))
    if isinstance(domain, Integer):
        if domain.q is None:
            # volley's randint excludes its upper bound (as Ray's); Optuna's includes it.
            return _Param(
                path, dists.IntDistribution(domain.lower, domain.upper - 1, log=domain.log)
            )
        if domain.log:
            raise ValueError(
                f"OptunaSearch cannot model qlograndint() ({where!r}): Optuna has no "
                "quantized log-uniform int distribution; use lograndint()"
            )
        q = int(domain.q)
        k_lo, k_hi = -(-domain.lower // q), domain.upper // q
        if k_lo > k_hi:
            raise ValueError(f"no multiple of q={q} lies in [{domain.lower}, {domain.upper}]")
        return _Param(path, dists.IntDistribution(k_lo * q, k_hi * q, step=q))
    if isinstance(domain, Categorical):
        cats = domain.categories
        if all(isinstance(c, _PLAIN) for c in cats):
            return _Param(path, dists.CategoricalDistribution(cats))
        return _Param(path, dists.CategoricalDistribution(list(range(len(cats)))), list(cats))
    raise ValueError(f"OptunaSearch cannot model {type(domain).__name__} ({where!r})")


def _to_params(space: dict) -> list[_Param]:
    """The searched parameters of a volley.tune space (nested dicts and lists), or of a flat
    dict of Optuna distributions."""
    dists = _optuna().distributions
    params = []
    for path, leaf in _leaves(space):
        if isinstance(leaf, GridSearch):
            raise ValueError(
                f"OptunaSearch cannot take grid_search() ({_name(path)!r}): a grid is not "
                "searched, it is crossed; use choice() for Optuna to pick among the values, or "
                "the default searcher (BasicVariantGenerator) for a grid"
            )
        if isinstance(leaf, Domain):
            params.append(_convert(path, leaf))
        elif isinstance(leaf, dists.BaseDistribution):
            params.append(_Param(path, leaf))
    return params


def _directions(metric: Any, mode: Any) -> tuple[list[str], list[str]]:
    metrics = [metric] if isinstance(metric, str) else list(metric)
    modes = [mode] if isinstance(mode, str) else list(mode)
    if not metrics or not all(isinstance(m, str) for m in metrics):
        raise ValueError(f"metric must be a str or a list of str, got {metric!r}")
    if len(modes) != len(metrics):
        raise ValueError(f"{len(metrics)} metric(s) {metrics} need as many modes, got {mode!r}")
    for m in modes:
        if m not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max' (or a list of them), got {mode!r}")
    return metrics, modes


class OptunaSearch(Searcher):
    """A searcher that asks an Optuna study for each trial's config and tells it each result.

    ``space``: a ``volley.tune`` search space (``uniform``, ``loguniform``, ``quniform``,
    ``randint``, ``qrandint``, ``lograndint``, ``choice``; nested dicts and lists; constants
    kept as they are), a flat dict of Optuna distributions, or a define-by-run function
    ``fn(trial)`` that calls ``trial.suggest_*`` (conditional spaces) and may return a dict of
    constants to add. Without it, the ``Tuner``'s ``param_space`` is used. ``grid_search``,
    ``sample_from``, ``randn`` and quantized log ranges are refused (``ValueError`` naming the
    parameter): Optuna cannot model them.

    ``metric``/``mode``: one name and ``"min"``/``"max"``, or lists of them for a
    multi-objective study (the default sampler is then NSGA-II). ``sampler``: an Optuna sampler,
    or one of ``"tpe"`` (the default), ``"cmaes"``, ``"gp"``, ``"nsga2"``, ``"nsga3"``,
    ``"qmc"``, ``"random"`` made with ``seed``. ``points_to_evaluate``: configs tried first
    (enqueued in the study); with ``evaluated_rewards`` (their metric values, already known)
    they are added as finished trials instead. ``pruner``: an Optuna pruner for
    ``pruning_scheduler()``; each result's metric is reported to the trial
    (``trial.report(value, training_iteration)``).

    ``study`` is the ``optuna.Study``; ``get_state``/``set_state`` carry all of it (trials,
    sampler state) so that a restored tuner goes on where it stopped.

    >>> OptunaSearch({"x": tune.grid_search([1, 2])}, metric="loss", mode="min")
    Traceback (most recent call last):
    ...
    ValueError: OptunaSearch cannot take grid_search() ('x'): a grid is not searched, ...
    """

    def __init__(
        self,
        space: dict | Callable[[Any], dict | None] | None = None,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
        points_to_evaluate: Sequence[dict] | None = None,
        sampler: Any = None,
        seed: int | None = None,
        evaluated_rewards: Sequence[Any] | None = None,
        *,
        pruner: Any = None,
    ) -> None:
        optuna = _optuna()
        Searcher.__init__(self)
        self.metric: Any = metric
        self.mode: Any = mode
        if mode is not None:
            _directions(metric if metric is not None else ["?"] * _count(mode), mode)
        if space is not None and not (isinstance(space, dict) or callable(space)):
            raise TypeError(
                f"space must be a dict or a define-by-run function, got {type(space).__name__}"
            )
        if isinstance(sampler, str):
            if sampler not in SAMPLERS:
                raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        elif sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise TypeError(f"sampler must be an Optuna sampler, got {type(sampler).__name__}")
        if evaluated_rewards is not None:
            if points_to_evaluate is None or len(evaluated_rewards) != len(points_to_evaluate):
                raise ValueError(
                    "evaluated_rewards needs points_to_evaluate of the same length "
                    f"(got {len(evaluated_rewards)} reward(s) and "
                    f"{0 if points_to_evaluate is None else len(points_to_evaluate)} point(s))"
                )
            if callable(space) and not isinstance(space, dict):
                raise ValueError("evaluated_rewards needs a dict space, not a define-by-run one")
        self._sampler_arg, self._seed, self._pruner = sampler, seed, pruner
        self._points = [dict(p) for p in points_to_evaluate or []]
        self._rewards = list(evaluated_rewards) if evaluated_rewards is not None else None
        self._space: Any = None
        self._params: list[_Param] = []
        self.study: Any = None
        self._live: dict[str, Any] = {}  # volley trial id -> optuna.Trial
        self._pruned: set[str] = set()
        self._steps: dict[str, int] = {}  # the last step reported of each live trial
        if space is not None:
            self._set_space(space)
            if metric is not None and mode is not None:
                self._make_study()

    # -------------------------------------------------------------- setup

    def _set_space(self, space: Any) -> None:
        self._space = space
        self._params = [] if callable(space) and not isinstance(space, dict) else _to_params(space)

    def _define_by_run(self) -> bool:
        return callable(self._space) and not isinstance(self._space, dict)

    def _make_sampler(self, multi: bool) -> Any:
        optuna = _optuna()
        s = self._sampler_arg
        if s is None:
            s = "nsga2" if multi else "tpe"
        if not isinstance(s, str):
            return s
        try:
            return getattr(optuna.samplers, SAMPLERS[s])(seed=self._seed)
        except ImportError as e:
            raise ImportError(f"Optuna's {SAMPLERS[s]} needs a package: {e}") from e

    def _make_study(self) -> None:
        optuna = _optuna()
        metrics, modes = _directions(self.metric, self.mode)
        directions = ["minimize" if m == "min" else "maximize" for m in modes]
        self.study = optuna.create_study(
            directions=directions,
            sampler=self._make_sampler(len(metrics) > 1),
            pruner=self._pruner,
        )
        dists = {_name(p.path): p.dist for p in self._params}
        for i, point in enumerate(self._points):
            flat = self._flat_point(point)
            if self._rewards is None:
                self.study.enqueue_trial(flat)
                continue
            reward = self._rewards[i]
            values = list(reward) if len(metrics) > 1 else [reward]
            missing = sorted(set(dists) - set(flat))
            if missing:
                raise ValueError(f"points_to_evaluate[{i}] lacks {missing}")
            self.study.add_trial(
                optuna.trial.create_trial(params=flat, distributions=dists, values=values)
            )

    def _flat_point(self, point: dict) -> dict:
        """A config (nested like the space) as Optuna's flat parameter names."""
        if self._define_by_run():
            return dict(point)
        flat = {}
        for p in self._params:
            found, value = _lookup(point, p.path)
            if found:
                flat[_name(p.path)] = p.optuna_value(value)
        return flat

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        if self.study is not None and config:
            raise ValueError(
                "OptunaSearch got a space twice: in its constructor and as the Tuner's "
                "param_space; give it in one place"
            )
        if self.study is not None:
            return True
        self.metric = self.metric if self.metric is not None else metric
        self.mode = self.mode if self.mode is not None else mode
        if self._space is None:
            if not config:
                return False
            self._set_space(config)
        elif config:
            raise ValueError(
                "OptunaSearch got a space twice: in its constructor and as the Tuner's "
                "param_space; give it in one place"
            )
        if self.metric is None or self.mode is None:
            raise ValueError(
                "OptunaSearch needs metric and mode (in its constructor or the TuneConfig)"
            )
        self._make_study()
        return True

    # -------------------------------------------------------------- ask and tell

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.study is None:
            raise RuntimeError(
                "OptunaSearch has no study yet: give it space, metric and mode, or run it "
                "in a Tuner (which calls set_search_properties)"
            )
        if self._define_by_run():
            ot = self.study.ask()
            extra = self._space(ot)
            if extra is not None and not isinstance(extra, dict):
                raise TypeError(
                    "a define-by-run space returns None or a dict of constants, "
                    f"got {type(extra).__name__}"
                )
            config = _unflatten(ot.params)
            config.update(extra or {})
        else:
            ot = self.study.ask(fixed_distributions={_name(p.path): p.dist for p in self._params})
            config = copy.deepcopy(self._space)
            for p in self._params:
                _put(config, p.path, p.value(ot.params[_name(p.path)]))
        self._live[trial_id] = ot
        return config

    def _objectives(self, result: dict) -> list[float] | None:
        metrics, _ = _directions(self.metric, self.mode)
        if not all(m in result for m in metrics):
            return None
        return [float(result[m]) for m in metrics]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot = self._live.get(trial_id)
        if ot is None or not isinstance(self.metric, str) or self.metric not in result:
            return  # Optuna takes intermediate values of single-objective studies only
        # The tuner numbers results (training_iteration); without it, count them here.
        step = result.get("training_iteration")
        if step is None:
            step = self._steps.get(trial_id, 0) + 1
        self._steps[trial_id] = int(step)
        ot.report(float(result[self.metric]), int(step))

    def should_prune(self, trial_id: str) -> bool:
        """Whether the study's pruner would stop this trial now (after its latest result);
        a trial pruned so is told to Optuna as PRUNED when it completes."""
        ot = self._live.get(trial_id)
        if ot is None or self.study is None or len(self.study.directions) > 1:
            return False
        if ot.should_prune():
            self._pruned.add(trial_id)
            return True
        return False

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        ot = self._live.pop(trial_id, None)
        self._steps.pop(trial_id, None)
        if ot is None:
            return
        state = _optuna().trial.TrialState
        if trial_id in self._pruned:
            self._pruned.discard(trial_id)
            self.study.tell(ot, state=state.PRUNED)
            return
        values = None if error or result is None else self._objectives(result)
        if values is None:
            self.study.tell(ot, state=state.FAIL)
        else:
            self.study.tell(ot, values if len(values) > 1 else values[0])

    def pruning_scheduler(self) -> OptunaPruningScheduler:
        """A ``TrialScheduler`` that stops a trial when this study's ``pruner`` says so (pass
        it as ``TuneConfig(scheduler=...)``).

        >>> import optuna
        >>> s = OptunaSearch({"x": tune.uniform(0, 1)}, metric="loss", mode="min", seed=0,
        ...                  pruner=optuna.pruners.ThresholdPruner(upper=0.5))
        >>> sched = s.pruning_scheduler()
        >>> _ = s.suggest("t1")
        >>> s.on_trial_result("t1", {"loss": 0.9, "training_iteration": 1})
        >>> sched.on_trial_result(None, "t1", {"loss": 0.9})  # the pruner's threshold: 0.5
        'STOP'
        >>> s.on_trial_complete("t1", {"loss": 0.9})
        >>> s.study.trials[-1].state.name
        'PRUNED'
        """
        return OptunaPruningScheduler(self)

    # -------------------------------------------------------------- restore

    def __getstate__(self) -> dict:
        # Optuna's NSGA-II/III samplers hold a thread lock, which pickle refuses: the searcher
        # travels (tuner.pkl, a copy) with fresh locks in their place.
        return {"pickled": _dumps(self.__dict__)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(pickle.loads(state["pickled"]))

    def get_state(self) -> dict:
        return {
            "study": _dumps(self.study) if self.study is not None else None,
            "live": {tid: ot._trial_id for tid, ot in self._live.items()},
            "pruned": sorted(self._pruned),
            "steps": dict(self._steps),
            "metric": self.metric,
            "mode": self.mode,
        }

    def set_state(self, state: dict) -> None:
        """Goes on from ``get_state``: the study with all its trials and its sampler's state;
        trials that were running are running again (the tuner restarts them)."""
        optuna = _optuna()
        self.metric, self.mode = state["metric"], state["mode"]
        self.study = pickle.loads(state["study"]) if state["study"] is not None else None
        self._live = {
            tid: optuna.trial.Trial(self.study, otid) for tid, otid in state["live"].items()
        }
        self._pruned = set(state["pruned"])
        self._steps = dict(state.get("steps", {}))


def _fresh_lock(_: Any) -> tuple:
    return threading.Lock, ()


def _fresh_rlock(_: Any) -> tuple:
    return threading.RLock, ()


class _LockSafePickler(pickle.Pickler):
    """Pickles thread locks as new ones (what a sampler's lock guards does not travel)."""

    dispatch_table = {
        **copyreg.dispatch_table,
        type(threading.Lock()): _fresh_lock,
        type(threading.RLock()): _fresh_rlock,
    }


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _LockSafePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _count(mode: Any) -> int:
    return 1 if isinstance(mode, str) else len(list(mode))


def _lookup(config: Any, path: tuple) -> tuple[bool, Any]:
    """(whether ``config`` has a value at ``path``, that value)."""
    for k in path:
        try:
            config = config[k]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, config


def _put(config: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        config = config[k]
    config[path[-1]] = value


def _unflatten(params: dict) -> dict:
    """Optuna's flat ``a/b`` names of a define-by-run space as nested dicts."""
    out: dict = {}
    for name, v in params.items():
        *head, last = name.split("/")
        d = out
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    return out


class OptunaPruningScheduler(TrialScheduler):
    """Stops a trial when its ``OptunaSearch``'s pruner (``OptunaSearch(pruner=...)``) says
    so, after each result; Optuna's pruners (median, successive halving, hyperband, ...) as a
    ``volley.tune`` scheduler. The pruned trial is told to the study as PRUNED."""

    def __init__(self, searcher: OptunaSearch) -> None:
        if not isinstance(searcher, OptunaSearch):
            raise TypeError(f"needs an OptunaSearch, got {type(searcher).__name__}")
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, controller: Any, trial: Any, result: dict) -> str:
        tid = getattr(trial, "trial_id", trial)
        if self.searcher.should_prune(tid):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE
