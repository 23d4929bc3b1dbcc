"""Trainables: the class API (``Trainable``), and the wrappers that give a trainable its
resources (``with_resources``) and its large inputs (``with_parameters``).

>>> import tempfile
>>> from volley import tune
>>> store = tempfile.mkdtemp()  # where the examples' runs go (default: ~/volley_results)
>>> class Quadratic(tune.Trainable):
...     def setup(self, config):
...         self.x = config["x"]
...     def step(self):
...         self.x *= 0.5
...         return {"loss": self.x ** 2}
>>> grid = tune.Tuner(Quadratic, param_space={"x": 2.0},
...                   run_config=tune.RunConfig(stop={"training_iteration": 3},
...                                             storage_path=store, verbose=0)).fit()
>>> grid[0].metrics["loss"], grid[0].metrics["training_iteration"]
(0.0625, 3)
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import volley

from ._checkpoint import Checkpoint, scratch_dir

__all__ = ["PlacementGroupFactory", "Trainable", "with_parameters", "with_resources"]


class _StopTrial(BaseException):
    """Ends a trial's trainable from inside ``report`` once a ``stop`` condition is met."""


def _reached(value: Any, limit: float) -> bool:
    try:
        return value >= limit
    except TypeError:
        return False


class Trainable:
    """A trainable as a class: ``setup(config)`` once, then ``step()`` returns each
    iteration's metrics (a dict; ``"done": True`` ends the trial); ``save_checkpoint(dir)``
    writes its state into ``dir`` (or returns a dict of it) and ``load_checkpoint(dir or
    dict)`` reads it back; ``cleanup()`` at the end. Checkpoints are taken every
    ``CheckpointConfig.checkpoint_frequency`` steps and at the end when
    ``checkpoint_at_end``. ``self.config``, ``self.iteration``, ``self.trial_id`` and
    ``self.logdir`` are set."""

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        self.config = config or {}
        self.iteration = 0
        self.trial_id = ""
        self.logdir = ""
        self.setup(self.config, **kwargs)

    def setup(self, config: dict, **kwargs: Any) -> None:
        pass

    def step(self) -> dict:
        raise NotImplementedError("a Trainable subclass must define step() -> dict")

    def save_checkpoint(self, checkpoint_dir: str) -> dict | None:
        return None

    def load_checkpoint(self, checkpoint: str | dict) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def reset_config(self, new_config: dict) -> bool:
        return False


def _save(inst: Trainable, trial_dir: str) -> Checkpoint:
    # In the trial's folder (removed by the caller once reported; a kill leaves it to the
    # trial's next start), not in the system's temp dir where it would stay forever.
    d = scratch_dir(trial_dir, "save")
    out = inst.save_checkpoint(d)
    if isinstance(out, dict):
        shutil.rmtree(d, ignore_errors=True)
        return Checkpoint.from_dict(out)
    return Checkpoint(d)


def run_class(cls: type, spec: dict, session: Any, kwargs: dict) -> None:
    """Runs a ``Trainable`` subclass in this process until it is done or stopped."""
    import shutil

    global _kept
    inst = None
    if _kept is not None:
        run, old = _kept
        _kept = None
        if spec.get("reuse") and run == spec["run_id"] and type(old) is cls:
            if old.reset_config(spec["config"]):
                inst = old
                inst.config = spec["config"]
        if inst is None:
            old.cleanup()
    if inst is None:
        inst = cls(spec["config"], **kwargs)
    inst.trial_id, inst.logdir, inst.iteration = (
        spec["trial_id"],
        spec["trial_dir"],
        spec["iteration"],
    )
    freq = spec.get("checkpoint_frequency", 0)
    at_end = spec.get("checkpoint_at_end")
    ckpt = session.checkpoint()
    if ckpt is not None:
        if ckpt.path is not None and os.path.exists(
            os.path.join(ckpt.path, "_dict_checkpoint.pkl")
        ):
            inst.load_checkpoint(ckpt.to_dict())
        else:
            with ckpt.as_directory() as d:
                inst.load_checkpoint(d)
    ended = False
    try:
        while True:
            result = inst.step()
            if not isinstance(result, dict):
                raise TypeError(
                    f"{cls.__name__}.step() must return a dict, not {type(result).__name__}"
                )
            inst.iteration += 1
            done = bool(result.get("done"))
            probe = dict(result, training_iteration=session.iteration + 1)
            stop = done or any(_reached(probe.get(k), v) for k, v in session.stop.items())
            save = (freq and inst.iteration % freq == 0) or (stop and at_end)
            c = _save(inst, spec["trial_dir"]) if save else None
            try:
                session.report(result, c, final=done)
            except _StopTrial:
                stop = True
            finally:
                if c is not None and c.path is not None:
                    shutil.rmtree(c.path, ignore_errors=True)
            if stop:
                ended = True
                return
    finally:
        if ended and spec.get("reuse"):
            # reuse_actors: kept in this worker for the run's next trial here, which calls
            # reset_config (setup is skipped if it returns True; else cleanup, then a new one).
            _kept = (spec["run_id"], inst)
        else:
            inst.cleanup()


#: reuse_actors: (run id, the Trainable) this worker process keeps for its next trial.
_kept: tuple[str, Any] | None = None


class PlacementGroupFactory:
    """Resources for a trial that is itself distributed: a list of bundles (``{"CPU": 1,
    "GPU": 1}``, ...) reserved together by ``strategy`` (PACK, SPREAD, STRICT_PACK,
    STRICT_SPREAD). The trial's own process runs in the first bundle; the tasks it starts with
    ``tune.get_context().get_trial_resources()["placement_group"]`` use the others.

    >>> PlacementGroupFactory([{"CPU": 1}, {"CPU": 1}]).required_resources
    {'CPU': 2.0}
    """

    def __init__(self, bundles: list[dict[str, float]], strategy: str = "PACK") -> None:
        if not bundles or not all(isinstance(b, dict) and b for b in bundles):
            raise ValueError(
                f"PlacementGroupFactory needs a list of non-empty bundles, got {bundles!r}"
            )
        self.bundles = [dict(b) for b in bundles]
        self.strategy = strategy

    @property
    def required_resources(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def __repr__(self) -> str:
        return f"PlacementGroupFactory({self.bundles!r}, strategy={self.strategy!r})"


_NAMES = {"cpu": "CPU", "gpu": "GPU", "CPU": "CPU", "GPU": "GPU"}


def normalize_resources(resources: Any) -> dict[str, float] | PlacementGroupFactory:
    """``{"cpu": 2, "gpu": 0.5, "custom": 1}`` as ``{"CPU": 2.0, "GPU": 0.5, "custom": 1.0}``
    (or a ``PlacementGroupFactory`` as it is); ``ValueError``/``TypeError`` naming what is
    wrong."""
    if isinstance(resources, PlacementGroupFactory):
        return resources
    if isinstance(resources, list):
        return PlacementGroupFactory(resources)
    if not isinstance(resources, dict):
        raise TypeError(
            "with_resources takes a dict such as {'cpu': 1, 'gpu': 0.5}, a list of bundles or a "
            f"PlacementGroupFactory, not {type(resources).__name__}"
        )
    out: dict[str, float] = {}
    for k, v in resources.items():
        if not isinstance(k, str):
            raise TypeError(f"with_resources: resource names are str, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"with_resources: {k!r} must be a number >= 0, got {v!r}")
        out[_NAMES.get(k, k)] = float(v)
    return out


class _WithResources:
    def __init__(self, trainable: Any, resources: Any) -> None:
        self.trainable = trainable
        self.resources = resources
        self.__name__ = getattr(trainable, "__name__", "trainable")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn, extra = unwrap_parameters(self)
        return fn(*args, **extra, **kwargs)


def with_resources(trainable: Any, resources: Any) -> Any:
    """``trainable`` whose every trial holds ``resources``: a dict (``{"cpu": 2, "gpu":
    0.5, "my_resource": 1}``), a list of bundles, or a ``PlacementGroupFactory``. Default: one
    CPU per trial.

    >>> t = with_resources(lambda config: None, {"cpu": 2, "gpu": 0.5})
    >>> t.resources
    {'CPU': 2.0, 'GPU': 0.5}
    """
    if not callable(trainable):
        raise TypeError(f"with_resources: the trainable must be callable, got {trainable!r}")
    return _WithResources(trainable, normalize_resources(resources))


class _WithParameters:
    def __init__(self, trainable: Any, refs: dict[str, Any]) -> None:
        self.trainable = trainable
        self.refs = refs
        self.__name__ = getattr(trainable, "__name__", "trainable")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn, extra = unwrap_parameters(self)
        return fn(*args, **extra, **kwargs)


def with_parameters(trainable: Any, **kwargs: Any) -> Any:
    """``trainable`` called with ``kwargs`` besides its config; each value is put once in
    volley's object store (a large dataset is not pickled per trial; numpy arrays are read
    from shared memory without a copy).

    >>> import numpy as np
    >>> def train(config, data):
    ...     tune.report({"mean": float(data.mean()) * config["k"]})
    >>> t = with_parameters(train, data=np.ones(1000))
    >>> rc = tune.RunConfig(storage_path=store, verbose=0)
    >>> grid = tune.Tuner(t, param_space={"k": 2}, run_config=rc).fit()
    >>> grid[0].metrics["mean"]
    2.0
    """
    if not callable(trainable):
        raise TypeError(f"with_parameters: the trainable must be callable, got {trainable!r}")
    if isinstance(trainable, _WithResources):
        return _WithResources(with_parameters(trainable.trainable, **kwargs), trainable.resources)
    return _WithParameters(trainable, {k: volley.put(v) for k, v in kwargs.items()})


def unwrap_parameters(trainable: Any, values: dict | None = None) -> tuple[Any, dict]:
    """The function or class behind ``trainable``, and its ``with_parameters`` values (taken
    from ``values`` where given, else fetched)."""
    kwargs: dict = {}
    while True:
        if isinstance(trainable, _WithResources):
            trainable = trainable.trainable
        elif isinstance(trainable, _WithParameters):
            for k, r in trainable.refs.items():
                kwargs[k] = values[k] if values and k in values else volley.get(r)
            trainable = trainable.trainable
        else:
            return trainable, kwargs


def without_refs(trainable: Any) -> Any:
    """``trainable`` with its ``with_parameters`` refs left out (the tuner passes the values
    as the trial task's own arguments; no ref travels inside another object)."""
    if isinstance(trainable, _WithResources):
        return _WithResources(without_refs(trainable.trainable), trainable.resources)
    if isinstance(trainable, _WithParameters):
        return _WithParameters(without_refs(trainable.trainable), dict.fromkeys(trainable.refs))
    return trainable


def parameter_refs(trainable: Any) -> dict[str, Any]:
    """The ``with_parameters`` refs of ``trainable``, by name."""
    out: dict[str, Any] = {}
    while isinstance(trainable, (_WithResources, _WithParameters)):
        if isinstance(trainable, _WithParameters):
            out.update(trainable.refs)
        trainable = trainable.trainable
    return out


def resources_of(trainable: Any) -> dict[str, float] | PlacementGroupFactory:
    while True:
        if isinstance(trainable, _WithResources):
            return trainable.resources
        if isinstance(trainable, _WithParameters):
            trainable = trainable.trainable
        else:
            return {"CPU": 1.0}
