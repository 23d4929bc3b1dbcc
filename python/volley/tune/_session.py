"""What a trial sees from inside: ``report``, ``get_checkpoint``, ``get_context``, and the
runner that the tuner starts as one volley task per trial.

A report is one unbounded ``put`` on the run's result queue (it does not wait for the driver);
the driver takes what has come in batches. A checkpoint is copied into the trial's folder by the
trial itself when it runs on the driver's node, and travels packed in the report otherwise.

>>> import tempfile
>>> from volley import tune
>>> store = tempfile.mkdtemp()  # where the examples' runs go (default: ~/volley_results)
>>> tune.report({"loss": 1.0})
Traceback (most recent call last):
RuntimeError: volley.tune.report() was called outside a trial: ...
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from ._checkpoint import Checkpoint, clear_scratch, portable, scratch_dir, unpack, write_into
from ._trainable import _reached, _StopTrial, run_class, unwrap_parameters

__all__ = ["TuneContext", "get_checkpoint", "get_context", "report"]


class TuneContext:
    """Where a trial runs: ``get_trial_id()``, ``get_trial_name()``, ``get_trial_dir()``,
    ``get_experiment_name()``, ``get_trial_resources()``."""

    def __init__(self, spec: dict) -> None:
        self._spec = spec

    def get_trial_id(self) -> str:
        return self._spec["trial_id"]

    def get_trial_name(self) -> str:
        return self._spec["trial_name"]

    def get_trial_dir(self) -> str:
        return self._spec["trial_dir"]

    def get_experiment_name(self) -> str:
        return self._spec["experiment"]

    def get_trial_resources(self) -> dict:
        return dict(self._spec.get("resources") or {})


class _TrialSession:
    def __init__(self, spec: dict, queue: Any, node_id: int) -> None:
        self.spec = spec
        self.queue = queue
        self.iteration = spec["iteration"]
        self.time_offset = spec["time_total"]
        self.ckpt_index = spec["ckpt_index"]
        self.same_node = node_id == spec["driver_node"]
        self.start = self.last = time.time()
        self.sent = 0
        self.stop = spec.get("stop") or {}
        self._checkpoint: Checkpoint | None = None
        self._restore = spec.get("restore")
        self._tmp: str | None = None

    def checkpoint(self) -> Checkpoint | None:
        if self._checkpoint is None and self._restore is not None:
            path, data = self._restore
            if self.same_node and os.path.isdir(path):
                self._checkpoint = Checkpoint(path)
            elif data is not None:
                self._tmp = scratch_dir(self.spec["trial_dir"], "restore")
                dest = os.path.join(self._tmp, os.path.basename(path))
                os.mkdir(dest)
                unpack(data, dest)
                self._checkpoint = Checkpoint(dest)
            else:
                raise RuntimeError(f"the checkpoint {path} of this trial cannot be read here")
        return self._checkpoint

    def report(self, metrics: dict, checkpoint: Checkpoint | None, final: bool = False) -> None:
        if not isinstance(metrics, dict):
            raise TypeError(f"report() takes a dict of metrics, not {type(metrics).__name__}")
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(
                "report(checkpoint=...) takes a volley.tune.Checkpoint, "
                f"not {type(checkpoint).__name__}"
            )
        now = time.time()
        self.iteration += 1
        result = dict(metrics)
        result["training_iteration"] = self.iteration
        result["time_this_iter_s"] = now - self.last
        result["time_total_s"] = self.time_offset + now - self.start
        result["timestamp"] = now
        self.last = now
        ck = None
        if checkpoint is not None:
            self.ckpt_index += 1
            name = f"checkpoint_{self.ckpt_index:06d}"
            if self.same_node:
                dest = os.path.join(self.spec["trial_dir"], name)
                write_into(checkpoint, dest)
                ck = (name, None)
                self._checkpoint = Checkpoint(dest)
            else:
                ck = (name, portable(checkpoint))
                self._checkpoint = checkpoint
        self.queue.put(("r", self.spec["trial_id"], self.spec["gen"], result, ck, final))
        self.sent += 1
        if not final and any(k in result and _reached(result[k], v) for k, v in self.stop.items()):
            raise _StopTrial

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


_current: _TrialSession | None = None


def _session(what: str) -> _TrialSession:
    if _current is None:
        raise RuntimeError(
            f"volley.tune.{what}() was called outside a trial: call it from a trainable "
            "that a tune.Tuner runs"
        )
    return _current


def report(metrics: dict, *, checkpoint: Checkpoint | None = None) -> None:
    """Reports a trial's ``metrics`` (a dict) for this iteration, with an optional
    ``checkpoint`` of its state (kept by the tuner; the trial may delete its own copy once
    ``report`` returns). The tuner adds ``training_iteration`` (1, 2, ... going on after a
    restart), ``time_this_iter_s``, ``time_total_s``, ``timestamp``. Returns at once (the
    result travels to the driver without a wait); a trial stopped by its scheduler or its
    stop condition ends inside ``report``.

    >>> def trainable(config):
    ...     for step in range(3):
    ...         tune.report({"loss": config["x"] / (step + 1)})
    >>> rc = tune.RunConfig(storage_path=store, verbose=0)
    >>> tune.Tuner(trainable, param_space={"x": 1.0}, run_config=rc).fit()[0].metrics["loss"]
    0.3333333333333333
    """
    _session("report").report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The trial's latest checkpoint: the one it last reported, or the one it was (re)started
    from (after a failure, a pause, a restore, or a population based training exploit); None
    on a fresh start.

    >>> def trainable(config):
    ...     ckpt = tune.get_checkpoint()
    ...     start = ckpt.to_dict()["step"] + 1 if ckpt else 0
    ...     for step in range(start, 3):
    ...         tune.report({"step": step}, checkpoint=tune.Checkpoint.from_dict({"step": step}))
    """
    return _session("get_checkpoint").checkpoint()


def get_context() -> TuneContext:
    """The running trial's ``TuneContext`` (its id, name, folder, resources)."""
    return TuneContext(_session("get_context").spec)


def run_trial(trainable: Any, spec: dict, queue: Any, params: dict | None = None) -> int:
    """The body of a trial's task: runs ``trainable`` (a function or a ``Trainable`` class)
    with the trial's config and returns how many results it reported."""
    global _current
    from volley import get_runtime_context, library

    # What an earlier run of this trial left when its process was killed mid-checkpoint.
    clear_scratch(spec["trial_dir"])
    s = _TrialSession(spec, queue, get_runtime_context().get_node_id())
    _current = s
    error: BaseException | None = None
    try:
        fn, kwargs = unwrap_parameters(trainable, params)
        if isinstance(fn, type):
            run_class(fn, spec, s, kwargs)
        else:
            out = fn(spec["config"], **kwargs)
            if isinstance(out, dict):
                s.report(out, None, final=True)
    except _StopTrial:
        pass
    except KeyboardInterrupt:
        raise  # cancelled by the tuner (stopped or paused): it expects no end of its own
    except Exception as e:  # noqa: BLE001 the trial's failure, reported to the tuner
        error = library.capture_error(e, spec["trial_name"])
    finally:
        _current = None
        s.close()
    # The end travels behind the trial's reports, on the same queue (a process that dies
    # sends none: the tuner sees its task fail).
    queue.put(("e", spec["trial_id"], spec["gen"], s.sent, error))
    return s.sent
