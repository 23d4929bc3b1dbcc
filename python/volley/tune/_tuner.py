"""The tuner: ``Tuner(trainable, param_space=..., tune_config=..., run_config=...).fit()``.

Each trial runs as one volley task (named ``tune:<trial name>``, so ``volley.state`` lists it).
Its reports are unbounded ``put``\\ s on one result queue; the driver's loop blocks in that
queue's ``get`` (it never polls), takes everything that came in one batch, hands each result to
the searcher, the scheduler, the stop condition and the callbacks, and carries out their
decisions at once (a stopped or paused trial's task is cancelled). A task's end (its return, or
its error: the trainable raised, or its process or node died) reaches the same queue from the
ref's completion callback, so a dead trial never leaves the loop waiting.

The experiment's folder (``storage_path/name``) holds ``tuner.pkl`` (the settings, for
``Tuner.restore``), ``trials.journal`` (a record per trial added, checkpoint kept and trial
ended, appended as they happen), ``experiment_state.pkl`` (the searcher's and scheduler's
state, rewritten by atomic rename at most once a second) and a folder per trial
(``params.json``, ``result.json``, ``progress.csv``, ``checkpoint_NNNNNN``).

>>> import tempfile
>>> from volley import tune
>>> store = tempfile.mkdtemp()  # where the examples' runs go (default: ~/volley_results)
>>> def objective(config):
...     return {"score": -(config["x"] - 3) ** 2}
>>> tuner = tune.Tuner(objective, param_space={"x": tune.grid_search([1, 3, 5])},
...                    tune_config=tune.TuneConfig(metric="score", mode="max"),
...                    run_config=tune.RunConfig(storage_path=store, verbose=0))
>>> tuner.fit().get_best_result().config
{'x': 3}
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle

import volley
from volley import library
from volley.util.queue import Empty, Queue

from ._checkpoint import (
    RESTORE_COPY,
    SCRATCH,
    Checkpoint,
    clear_scratch,
    hold_copy,
    pack,
    write_into,
)
from ._config import CheckpointConfig, FailureConfig, RunConfig, Stopper, TuneConfig
from ._result_grid import Result, ResultGrid
from ._session import run_trial
from ._trainable import (
    PlacementGroupFactory,
    parameter_refs,
    resources_of,
    unwrap_parameters,
    without_refs,
)
from ._trial import ERROR, PAUSED, PENDING, RUNNING, TERMINATED, Trial
from .schedulers import FIFOScheduler, TrialScheduler
from .search import BasicVariantGenerator, Searcher

__all__ = ["Tuner"]

_SETTINGS = "tuner.pkl"
_JOURNAL = "trials.journal"
_STATE = "experiment_state.pkl"
#: How often buffered result lines reach each trial's result.json / progress.csv (seconds).
FLUSH_S = 2.0
#: How long the end of a run waits for its cancelled trials' tasks to end (seconds).
CANCEL_WAIT_S = 30.0
#: Trials started beyond what the nodes hold at once: queued in volley, each starts the moment
#: a worker is free instead of a driver round trip later.
PIPELINE = 0
#: How often the loop looks for trials whose process died (seconds; a trial that fails in
#: Python says so at once).
CHECK_S = 0.5
#: How often the searcher's and scheduler's state is rewritten (seconds, at most).
STATE_S = 1.0
#: A checkpoint's folder (and, in experiments of earlier versions, one being written).
_CKPT_NAME = re.compile(r"checkpoint_(\d{6,})(\.tmp-\d+)?")


def _default_storage() -> str:
    return os.path.join(os.path.expanduser("~"), "volley_results")


def _name_of(trainable: Any) -> str:
    fn, _ = unwrap_parameters(trainable)
    return getattr(fn, "__name__", type(fn).__name__)


class Tuner:
    """Runs ``trainable`` (a function ``f(config)`` that calls ``tune.report``, or a
    ``tune.Trainable`` class) once per config drawn from ``param_space``, as ``tune_config``
    and ``run_config`` say; ``fit()`` returns a ``ResultGrid``.

    >>> Tuner("not callable")
    Traceback (most recent call last):
    TypeError: Tuner: the trainable must be a function or a tune.Trainable class, got 'not callable'
    """

    def __init__(
        self,
        trainable: Any = None,
        *,
        param_space: dict | None = None,
        tune_config: TuneConfig | None = None,
        run_config: RunConfig | None = None,
        _restore: dict | None = None,
    ) -> None:
        if not callable(trainable):
            raise TypeError(
                "Tuner: the trainable must be a function or a tune.Trainable class, "
                f"got {trainable!r}"
            )
        if param_space is not None and not isinstance(param_space, dict):
            raise TypeError(f"Tuner: param_space must be a dict, got {type(param_space).__name__}")
        if tune_config is not None and not isinstance(tune_config, TuneConfig):
            raise TypeError(f"Tuner: tune_config must be a tune.TuneConfig, got {tune_config!r}")
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise TypeError(f"Tuner: run_config must be a tune.RunConfig, got {run_config!r}")
        self._trainable = trainable
        self._param_space = param_space or {}
        self._tune_config = tune_config or TuneConfig()
        self._run_config = run_config or RunConfig()
        self._restore = _restore
        self._results: ResultGrid | None = None
        tc = self._tune_config
        if tc.search_alg is not None and not isinstance(tc.search_alg, Searcher):
            raise TypeError(
                f"TuneConfig: search_alg must be a tune Searcher, got {tc.search_alg!r}"
            )
        if tc.scheduler is not None and not isinstance(tc.scheduler, TrialScheduler):
            raise TypeError(
                f"TuneConfig: scheduler must be a tune TrialScheduler, got {tc.scheduler!r}"
            )
        name = self._run_config.name or (
            f"{_name_of(trainable)}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        )
        storage = os.path.expanduser(self._run_config.storage_path or _default_storage())
        self._path = os.path.join(os.path.abspath(storage), name)
        # tuner.pkl's content is taken now, as given: fit() works on the searcher and
        # scheduler objects themselves (their state shows the run after it, as in Ray Tune),
        # and a restore starts from the settings the run started from.
        self._settings = None if _restore is not None else self._pickle_settings()
        if self._run_config.name is None and _restore is None:
            n = 1
            while os.path.exists(self._path):  # two runs in one second
                n += 1
                self._path = os.path.join(os.path.abspath(storage), f"{name}_{n}")

    def _pickle_settings(self) -> bytes:
        settings = {
            "param_space": self._param_space,
            "tune_config": self._tune_config,
            "run_config": self._run_config,
            "trainable_name": _name_of(self._trainable),
        }
        try:
            return cloudpickle.dumps(settings)
        except Exception as e:
            raise TypeError(
                "Tuner: the run's settings (param_space, TuneConfig with its searcher and "
                f"scheduler, RunConfig) must pickle, for Tuner.restore: {e}"
            ) from e

    @classmethod
    def can_restore(cls, path: str | os.PathLike) -> bool:
        """Whether ``path`` is an experiment's folder that ``Tuner.restore`` can go on with.

        >>> Tuner.can_restore("/no/such/experiment")
        False
        """
        p = os.fspath(path)
        return os.path.isfile(os.path.join(p, _SETTINGS)) and os.path.isfile(
            os.path.join(p, _JOURNAL)
        )

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike,
        trainable: Any,
        *,
        resume_errored: bool = False,
        restart_errored: bool = False,
        param_space: dict | None = None,
    ) -> Tuner:
        """The tuner of the run kept in ``path`` (after its driver was stopped or killed),
        ready to ``fit()`` again: finished trials are kept as they were (never run again),
        running ones start again from their latest checkpoint, paused ones stay PAUSED (with
        their checkpoint) until the restored scheduler chooses them, pending ones run, and
        the searcher and scheduler go on from where they were. Errored trials stay as they
        were, unless ``resume_errored`` (from their latest checkpoint) or ``restart_errored``
        (from the start). ``trainable`` is the same trainable again (code is not kept on disk).
        """
        p = os.path.abspath(os.fspath(path))
        if not cls.can_restore(p):
            raise ValueError(
                f"Tuner.restore: {p} holds no experiment to restore "
                f"(no {_SETTINGS} and {_JOURNAL}; see Tuner.can_restore)"
            )
        with open(os.path.join(p, _SETTINGS), "rb") as fh:
            settings = pickle.load(fh)
        run_config = settings["run_config"]
        run_config.name = os.path.basename(p)
        run_config.storage_path = os.path.dirname(p)
        return cls(
            trainable,
            param_space=param_space if param_space is not None else settings["param_space"],
            tune_config=settings["tune_config"],
            run_config=run_config,
            _restore={"resume_errored": resume_errored, "restart_errored": restart_errored},
        )

    def fit(self) -> ResultGrid:
        """Runs the experiment to its end (every trial finished, the searcher out of configs,
        the time budget spent, or a stopper's ``stop_all``) and returns its results. Errors of
        trials do not raise (they are in ``ResultGrid.errors``) unless
        ``FailureConfig(fail_fast="raise")``."""
        library.init_if_needed()
        with _quiet(self._run_config.verbose):
            runner = _Runner(self)
            try:
                runner.run()
            finally:
                runner.close()
        self._results = runner.result_grid()
        return self._results

    def get_results(self) -> ResultGrid:
        """The ``ResultGrid`` of the last ``fit()`` (``RuntimeError`` before one)."""
        if self._results is None:
            raise RuntimeError("Tuner.get_results(): fit() has not run yet")
        return self._results


# ------------------------------------------------------------------------------------ runner


@contextlib.contextmanager
def _quiet(verbose: int) -> Iterator[None]:
    """Below ``verbose=2``, Optuna (when imported: an ``OptunaSearch`` runs) says only
    warnings while the run lasts, not a line per study made and per trial told; its
    verbosity is put back after. (Tune's own lines, PBT's exploits, are INFO at
    ``verbose=2`` and DEBUG below: the scheduler asks the controller's ``verbose``.)"""
    optuna = sys.modules.get("optuna") if verbose < 2 else None
    if optuna is None:
        yield
        return
    # Optuna's own API: it sets up its logger (level and handler) on first use, which would
    # undo a level set on the logger before that.
    saved = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(saved, logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(saved)


def _resolves_space(searcher: Any) -> bool:
    """Whether ``searcher`` (or the one it wraps: a limiter, a repeater) is a
    ``BasicVariantGenerator``, which counts ``num_samples`` itself (times the grid)."""
    while searcher is not None:
        if isinstance(searcher, BasicVariantGenerator):
            return True
        searcher = getattr(searcher, "searcher", None)
    return False


def _stop_reached(stop: Any, trial_id: str, result: dict) -> bool:
    if stop is None:
        return False
    if isinstance(stop, dict):
        for k, v in stop.items():
            r = result.get(k)
            if isinstance(r, (int, float)) and r >= v:
                return True
        return False
    return bool(stop(trial_id, result))


class _Writer:
    """Writes the run's files on a thread of their own, in the order asked, so that the loop
    does not wait on the disk; ``close`` waits for all and raises the first failure."""

    def __init__(self) -> None:
        import queue
        import threading

        self.q: Any = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="volley-tune-writer", daemon=True)
        self.thread.start()

    def do(self, fn: Any, *args: Any) -> None:
        self.q.put((fn, args))

    def _run(self) -> None:
        while (job := self.q.get()) is not None:
            try:
                job[0](*job[1])
            except BaseException as e:  # noqa: BLE001 kept for close()
                self.error = self.error or e

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _write_params(path: str, text: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    _write_text(os.path.join(path, "params.json"), text)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _append_results(t: Trial, lines: list[dict]) -> None:
    assert t.path is not None
    with open(os.path.join(t.path, "result.json"), "a") as fh:
        fh.write("".join(json.dumps(r, default=repr) + "\n" for r in lines))
    csv_path = os.path.join(t.path, "progress.csv")
    rows = [{k: v for k, v in r.items() if k != "config"} for r in lines]
    fields = getattr(t, "_csv_fields", None)
    new = fields is None and not os.path.exists(csv_path)
    if fields is None:
        fields = list(rows[0]) if new else _csv_header(csv_path)
        t._csv_fields = fields  # type: ignore[attr-defined]
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


class _Runner:
    """One ``fit()``: the trials, the loop, the files. It is also the ``controller`` that
    schedulers see (``get_trials``, ``reset_trial``)."""

    def __init__(self, tuner: Tuner) -> None:
        tc, rc = tuner._tune_config, tuner._run_config
        self.tuner = tuner
        self.path = tuner._path
        self.metric, self.mode = tc.metric, tc.mode
        self.stop = rc.stop
        self.ckpt_config: CheckpointConfig = rc.checkpoint_config or CheckpointConfig()
        self.failure: FailureConfig = rc.failure_config or FailureConfig()
        self.callbacks = list(rc.callbacks or [])
        self.verbose = rc.verbose
        self.budget = tc.time_budget_s
        self.reuse = bool(tc.reuse_actors)
        self.run_id = f"{os.getpid()}-{time.time_ns()}"
        self.name_creator = tc.trial_name_creator
        self.dirname_creator = tc.trial_dirname_creator
        self.trainable = tuner._trainable
        self.trainable_name = _name_of(self.trainable)
        fn, _ = unwrap_parameters(self.trainable)
        self.is_class = isinstance(fn, type)
        self.resources = resources_of(self.trainable)

        # The objects given, not copies: after fit() they hold the run's state (a PBT's
        # policy_log, a searcher's results), as in Ray Tune. tuner.pkl was taken before.
        self.searcher: Searcher = (
            tc.search_alg if tc.search_alg is not None else BasicVariantGenerator()
        )
        self.scheduler: TrialScheduler = (
            tc.scheduler if tc.scheduler is not None else FIFOScheduler()
        )
        if not self.searcher.set_search_properties(
            self.metric, self.mode, tuner._param_space, num_samples=tc.num_samples
        ):
            raise ValueError(
                f"TuneConfig: the searcher {type(self.searcher).__name__} cannot take "
                f"metric={self.metric!r}, mode={self.mode!r}"
            )
        if not self.scheduler.set_search_properties(self.metric, self.mode):
            raise ValueError(
                f"TuneConfig: the scheduler {type(self.scheduler).__name__} cannot take "
                f"metric={self.metric!r}, mode={self.mode!r}"
            )
        self.limit = self._concurrency(tc.max_concurrent_trials)

        self.trials: list[Trial] = []
        self.by_id: dict[str, Trial] = {}
        self.running: dict[str, Any] = {}  # trial_id -> ObjectRef of its task
        self.pgs: dict[str, Any] = {}
        self.pg_release: list[tuple[Any, Any]] = []  # (group, task) to remove once it ended
        self.pending: set[str] = set()  # ids of the PENDING trials
        # Tasks cancelled, or done but for their end's put: the queue outlives them (close).
        self.cancelled: list[Any] = []
        self.last_check = time.monotonic()
        self.next_id = 0
        self.searcher_done = False
        # A searcher that does not resolve the param_space itself (Optuna, one of your own)
        # never says FINISHED: num_samples is its number of trials, as in Ray Tune.
        self.max_trials = None if _resolves_space(self.searcher) else tc.num_samples
        self.stopping = False
        self.iteration = 0
        self.raise_error: BaseException | None = None
        self.driver_node = volley.get_runtime_context().get_node_id()
        self.remote = volley.remote(max_retries=0)(_trial_task)
        self.trainable_ref = volley.put(without_refs(self.trainable))
        params = parameter_refs(self.trainable)
        self.param_names, self.param_refs = list(params), list(params.values())
        self.journal_buf: list[bytes] = []
        self.last_state = 0.0
        self.last_flush = time.monotonic()
        self.dirty: set[str] = set()
        self.reporter = _Reporter(self) if self.verbose else None
        self.catch_up: tuple[set[str], set[str]] | None = None  # a restore's (_catch_up)

        os.makedirs(self.path, mode=0o700, exist_ok=True)
        if tuner._restore is not None:
            self._load(tuner._restore)
        else:
            if os.path.exists(os.path.join(self.path, _JOURNAL)):
                raise ValueError(
                    f"Tuner: {self.path} already holds an experiment; use Tuner.restore() to go "
                    "on with it, or another RunConfig(name=...)"
                )
            assert tuner._settings is not None
            _atomic_write(os.path.join(self.path, _SETTINGS), tuner._settings)
        self.journal_fd = os.open(
            os.path.join(self.path, _JOURNAL),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
            0o600,
        )
        # Made last: a run refused above leaves no thread or queue behind.
        self.writer = _Writer()
        self.queue = Queue()
        for cb in self.callbacks:
            cb.setup(stop=self.stop, num_samples=tc.num_samples)

    # -- set-up

    def _concurrency(self, asked: int | None) -> int:
        """How many trials run at once: what the nodes hold of the trial's resources (each
        trial on one node; a placement group's bundles may spread), at most ``asked``."""
        if isinstance(self.resources, PlacementGroupFactory):
            need, boxes = self.resources.required_resources, [volley.cluster_resources()]
        else:
            need = self.resources
            boxes = [
                {"CPU": n.get("num_cpus", 0.0), "GPU": n.get("num_gpus", 0.0), **n["resources"]}
                for n in volley.nodes()
            ]
        limit = 0
        for have in boxes:
            fits = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
            limit += min(fits) if fits else 10**6
        if limit < 1:
            raise ValueError(
                f"Tuner: a trial needs {need} but no node has that much (the nodes have "
                f"{boxes}): no trial could ever start"
            )
        return min(limit, asked) if asked is not None else limit

    # -- the controller's view (schedulers)

    def get_trials(self) -> list[Trial]:
        return self.trials

    def reset_trial(self, trial: Trial, new_config: dict, checkpoint: Any) -> bool:
        """Restarts ``trial`` with ``new_config`` from ``checkpoint`` (another trial's, for
        population based training): it keeps its id, history and iteration count."""
        if isinstance(checkpoint, str):
            checkpoint = Checkpoint(checkpoint)
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(
                f"reset_trial: checkpoint must be a tune.Checkpoint, got {checkpoint!r}"
            )
        if checkpoint is not None and checkpoint.path is not None:
            if not os.path.isdir(checkpoint.path):
                raise ValueError(
                    f"reset_trial: the checkpoint {checkpoint.path} of trial "
                    f"{trial.trial_id}'s reset is not there (pruned? CheckpointConfig.num_to_keep)"
                )
        was_running = trial.trial_id in self.running
        if was_running:
            self._cancel(trial)
        trial.config = new_config
        self._drop_restore(trial)
        # The trial's own copy: it starts from it (again after a failure) until it has a
        # checkpoint of its own, whatever the donor prunes meanwhile.
        assert trial.path is not None
        trial._restore = hold_copy(checkpoint, trial.path) if checkpoint is not None else None  # type: ignore[attr-defined]
        self._write_params(trial)
        self._journal(("add", self._record(trial)))
        if was_running:
            self._status(trial, PENDING)
            self._start(trial)
        else:
            self._status(trial, PENDING if trial.status != TERMINATED else trial.status)
        return True

    def _drop_restore(self, t: Trial) -> None:
        """Forgets (and removes) the copy of a reset's checkpoint that ``t`` started from."""
        held = t._restore  # type: ignore[attr-defined]
        t._restore = None  # type: ignore[attr-defined]
        if held is not None and held.path is not None:
            shutil.rmtree(held.path, ignore_errors=True)

    def stop_trial(self, trial: Trial) -> None:
        """Ends ``trial`` for good (TERMINATED), whether it runs or waits (PAUSED): a
        scheduler's decision made outside a result (HyperBand drops a paused trial)."""
        if trial.is_finished():
            return
        if trial.trial_id in self.running:
            self._cancel(trial)
        self._complete(trial, removed=True)

    # -- trials

    def _new_trial(self, trial_id: str, config: dict) -> Trial:
        t = Trial(
            trial_id, config, dict(self.resources) if isinstance(self.resources, dict) else {}
        )
        self._init_extra(t)
        name = self.name_creator(t) if self.name_creator else f"{self.trainable_name}_{trial_id}"
        t._name = str(name)  # type: ignore[attr-defined]
        dirname = self.dirname_creator(t) if self.dirname_creator else t._name  # type: ignore[attr-defined]
        if os.sep in str(dirname) or str(dirname) in ("", ".", ".."):
            raise ValueError(f"trial_dirname_creator gave {dirname!r}, not a folder name")
        t._dirname = str(dirname)  # type: ignore[attr-defined]
        t.path = os.path.join(self.path, t._dirname)  # type: ignore[attr-defined]
        self._write_params(t)
        self._add(t)
        self._journal(("add", self._record(t)))
        return t

    def _init_extra(self, t: Trial) -> None:
        t._gen = 0  # type: ignore[attr-defined]
        t._received = 0  # type: ignore[attr-defined]
        t._end_at = None  # type: ignore[attr-defined]
        t._ckpt_index = 0  # type: ignore[attr-defined]
        t._ckpts = []  # type: ignore[attr-defined]
        t._restore = None  # type: ignore[attr-defined]
        t._lines = []  # type: ignore[attr-defined]
        t._error_obj = None  # type: ignore[attr-defined]

    def _status(self, t: Trial, status: str, journal: bool = True) -> None:
        if journal and t.status != status and PAUSED in (t.status, status):
            # Into PAUSED and out of it (to PENDING or RUNNING): Tuner.restore brings a paused
            # trial back PAUSED, for the restored scheduler to choose (its end is an "end").
            if status != TERMINATED and status != ERROR:
                self._journal(("status", t.trial_id, status))
        t.status = status
        if status == PENDING:
            self.pending.add(t.trial_id)
        else:
            self.pending.discard(t.trial_id)

    def _add(self, t: Trial, notify: bool = True) -> None:
        if t.status == PENDING:
            self.pending.add(t.trial_id)
        self.trials.append(t)
        self.by_id[t.trial_id] = t
        if notify:
            self.scheduler.on_trial_add(self, t)

    def _write_params(self, t: Trial) -> None:
        assert t.path is not None
        self.writer.do(_write_params, t.path, json.dumps(t.config, indent=2, default=repr))

    def _suggest(self) -> bool:
        """Asks the searcher for one new trial; whether one was made."""
        while not self.searcher_done:
            if self.max_trials is not None and self.next_id >= self.max_trials:
                self.searcher_done = True
                return False
            tid = f"{self.next_id:05d}"
            cfg = self.searcher.suggest(tid)
            if cfg is None:
                return False
            if cfg == Searcher.FINISHED:
                self.searcher_done = True
                return False
            self.next_id += 1
            if tid in self.by_id:
                # Restored: this trial was made after the last saved searcher state.
                old = self.by_id[tid]
                if old.is_finished():
                    self.searcher.on_trial_complete(
                        tid, old.last_result or None, error=old.status == ERROR
                    )
                continue
            self._new_trial(tid, cfg)
            return True
        return False

    def _next_trial(self) -> Trial | None:
        if not self.pending:
            self._suggest()
        t = self.scheduler.choose_trial_to_run(self)
        if t is not None and t.status not in (PENDING, PAUSED):
            raise RuntimeError(
                f"the scheduler {type(self.scheduler).__name__} chose trial {t.trial_id}, "
                f"which is {t.status}, not PENDING or PAUSED"
            )
        return t

    def _start(self, t: Trial) -> None:
        t._gen += 1  # type: ignore[attr-defined]
        t._received = 0  # type: ignore[attr-defined]
        t._end_at = None  # type: ignore[attr-defined]
        # A reset's checkpoint (kept until the trial makes its own), else its own latest.
        restore = t._restore or t.checkpoint  # type: ignore[attr-defined]
        own = t._restore is None  # type: ignore[attr-defined]
        iteration = t.training_iteration
        time_total = float(t.last_result.get("time_total_s", 0.0))
        ckpts = t._ckpts  # type: ignore[attr-defined]
        if own and restore is not None and ckpts and ckpts[-1][0] == restore.path:
            # Goes on from its own checkpoint: its iterations count on from that one's.
            iteration = int(ckpts[-1][1].get("training_iteration", iteration))
            time_total = float(ckpts[-1][1].get("time_total_s", time_total))
        spec = {
            "trial_id": t.trial_id,
            "trial_name": t._name,  # type: ignore[attr-defined]
            "trial_dir": t.path,
            "experiment": os.path.basename(self.path),
            "config": t.config,
            "gen": t._gen,  # type: ignore[attr-defined]
            "iteration": iteration,
            "time_total": time_total,
            "ckpt_index": t._ckpt_index,  # type: ignore[attr-defined]
            "driver_node": self.driver_node,
            "stop": self.stop if isinstance(self.stop, dict) else None,
            "checkpoint_frequency": self.ckpt_config.checkpoint_frequency,
            "reuse": self.reuse,
            "run_id": self.run_id,
            "checkpoint_at_end": self.ckpt_config.checkpoint_at_end,
            "resources": dict(t.resources),
        }
        if restore is not None:
            assert restore.path is not None
            data = pack(restore.path) if library.in_cluster() else None
            spec["restore"] = (restore.path, data)
        opts: dict[str, Any] = {"name": f"tune:{t._name}"}  # type: ignore[attr-defined]
        res = self.resources
        if isinstance(res, PlacementGroupFactory):
            pg = volley.placement_group(res.bundles, strategy=res.strategy)
            self.pgs[t.trial_id] = pg
            spec["resources"] = {"placement_group": pg, "bundles": res.bundles}
            opts["scheduling_strategy"] = volley.PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0
            )
            res = res.bundles[0]
        opts["num_cpus"] = res.get("CPU", 0.0)
        if res.get("GPU"):
            opts["num_gpus"] = res["GPU"]
        custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
        if custom:
            opts["resources"] = custom
        spec["params"] = self.param_names
        ref = self.remote.options(**opts).remote(
            self.trainable_ref, spec, self.queue, *self.param_refs
        )
        self._status(t, RUNNING)
        self.running[t.trial_id] = ref
        t._ref = ref  # type: ignore[attr-defined]
        for cb in self.callbacks:
            cb.on_trial_start(iteration=self.iteration, trials=self.trials, trial=t)

    def _check_tasks(self) -> None:
        """Finds the trials whose task failed without a word (its process or node died)."""
        self.last_check = time.monotonic()
        refs = list(self.running.values())
        if not refs:
            return
        ready, _ = volley.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        failed = []
        for ref in ready:
            try:
                volley.get(ref)
            except BaseException as e:  # noqa: BLE001 how the task ended is the news
                failed.append((ref, e))
        if not failed:
            return
        # What the dead trials put before they died is in the queue by now (their puts went
        # out before the process died): it counts, before the failure does.
        n = self.queue.qsize()
        if n:
            self._dispatch(self.queue.get_nowait_batch(n))
        for ref, e in failed:
            for tid, r in list(self.running.items()):
                if r == ref:
                    t = self.by_id[tid]
                    self._on_end(tid, t._gen, None, e)  # type: ignore[attr-defined]

    def _cancel(self, t: Trial) -> None:
        ref = self.running.pop(t.trial_id, None)
        if ref is not None:
            library.cancel_soon(ref)
            self.cancelled.append(ref)
        self._release_pg(t)

    def _release_pg(self, t: Trial) -> None:
        # Removed once the trial's task has ended: a group removed under a running task takes
        # its worker down with it, and that worker may be running the next trial by then.
        pg = self.pgs.pop(t.trial_id, None)
        if pg is not None:
            self.pg_release.append((pg, t._ref))  # type: ignore[attr-defined]
        self._remove_pgs(wait=False)

    def _remove_pgs(self, wait: bool) -> None:
        if not self.pg_release:
            return
        refs = [r for _, r in self.pg_release]
        ready, _ = volley.wait(
            refs, num_returns=len(refs), timeout=CANCEL_WAIT_S if wait else 0, fetch_local=False
        )
        keep = []
        for pg, ref in self.pg_release:
            if ref in ready or wait:
                try:
                    volley.remove_placement_group(pg)
                except Exception:  # noqa: BLE001 already gone with its node
                    pass
            else:
                keep.append((pg, ref))
        self.pg_release = keep

    # -- the loop

    def _catch_up(self) -> None:
        """After a restore: tells the scheduler, its saved state back, what happened after
        that state was written (it is written at most once a second, the journal at once):
        the trials made since, and the ends it has not seen. Without that a scheduler that
        waits for a trial's end to resume a PAUSED one (HyperBand's rung, PBT's synch) would
        wait for good."""
        known, finished = self.catch_up
        self.catch_up = None
        for t in self.trials:
            if t.trial_id not in known:
                self.scheduler.on_trial_add(self, t)
        for t in list(self.trials):
            if t.trial_id in finished:
                continue
            if t.status == TERMINATED:
                self.scheduler.on_trial_complete(self, t, t.last_result)
            elif t.status == ERROR:
                self.scheduler.on_trial_error(self, t)

    def run(self) -> None:
        if self.catch_up is not None:
            self._catch_up()
        start = time.monotonic()
        deadline = start + self.budget if self.budget else None
        while True:
            if not self.stopping:
                while len(self.running) < self.limit + PIPELINE:
                    t = self._next_trial()
                    if t is None:
                        break
                    self._start(t)
            if not self.running:
                if self.stopping or not self._more_to_start():
                    break
                raise RuntimeError(
                    "the tuner has no trial running and none it can start: the searcher "
                    f"{type(self.searcher).__name__} gave no config and the scheduler "
                    f"{type(self.scheduler).__name__} chose no pending or paused trial"
                )
            timeout = CHECK_S
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            try:
                items = [self.queue.get(timeout=timeout)]
            except Empty:
                items = []
            n = self.queue.qsize()
            if n:
                items.extend(self.queue.get_nowait_batch(n))
            self._dispatch(items)
            if time.monotonic() - self.last_check >= CHECK_S:
                self._check_tasks()
            if self.raise_error is not None:
                break
            if deadline is not None and time.monotonic() >= deadline and not self.stopping:
                self._stop_all("time budget")
            if isinstance(self.stop, Stopper) and not self.stopping and self.stop.stop_all():
                self._stop_all("Stopper.stop_all")
            self._housekeeping()
        self._housekeeping(final=True)

    def _dispatch(self, items: list) -> None:
        for item in items:
            if item[0] == "r":
                self._on_result(*item[1:])
            else:
                self._on_end(*item[1:])

    def _more_to_start(self) -> bool:
        return not self.searcher_done or any(t.status in (PENDING, PAUSED) for t in self.trials)

    def _on_result(self, tid: str, gen: int, result: dict, ck: Any, final: bool) -> None:
        t = self.by_id.get(tid)
        if t is None or t._gen != gen or t.status != RUNNING:  # type: ignore[attr-defined]
            return  # a stopped or restarted trial's late result
        t._received += 1  # type: ignore[attr-defined]
        self.iteration += 1
        if self.metric is not None and self.metric not in result:
            # As Ray: a result without the run's metric is a mistake, said where it happens.
            self._cancel(t)
            err = ValueError(
                f"trial {tid} reported {sorted(result)} without the metric {self.metric!r} "
                "that TuneConfig(metric=...) names"
            )
            self._on_end(tid, gen, None, err)
            return
        result["trial_id"] = tid
        result["config"] = t.config
        stop = final or _stop_reached(self.stop, tid, result)
        result["done"] = stop
        if ck is not None:
            try:
                self._keep_checkpoint(t, ck, result)
            except Exception as e:  # noqa: BLE001 this trial's fault, not the run's
                # What a trial on another node sent cannot be written here (a special file,
                # the disk full): that trial fails, saying so; the others go on.
                self._cancel(t)
                err = RuntimeError(
                    f"trial {tid}'s checkpoint {ck[0]} could not be kept in {t.path}: "
                    f"{type(e).__name__}: {e}"
                )
                self._on_end(tid, gen, None, err)
                return
        t.last_result = result
        t.history.append(result)
        t._lines.append(result)  # type: ignore[attr-defined]
        self.dirty.add(tid)
        for cb in self.callbacks:
            cb.on_trial_result(iteration=self.iteration, trials=self.trials, trial=t, result=result)
        if stop:
            if final or isinstance(self.stop, dict):
                # The trial ends by itself (its trainable returned, or its report saw the
                # same stop dict): no cancel to race with the worker's next task. Its end
                # is still to be put on the queue: close() waits for it (see there).
                ref = self.running.pop(tid, None)
                if ref is not None:
                    self.cancelled.append(ref)
            else:
                self._cancel(t)
            self._complete(t)
            return
        self.searcher.on_trial_result(tid, result)
        decision = self.scheduler.on_trial_result(self, t, result)
        if t.status != RUNNING or t._gen != gen:  # type: ignore[attr-defined]
            return  # the scheduler acted itself (reset_trial)
        if decision == TrialScheduler.STOP:
            self._cancel(t)
            result["done"] = True
            self._complete(t, removed=True)
        elif decision == TrialScheduler.PAUSE:
            self._cancel(t)
            self._status(t, PAUSED)
        if t._end_at is not None and t._received >= t._end_at:  # type: ignore[attr-defined]
            self._complete(t)

    def _keep_checkpoint(self, t: Trial, ck: tuple[str, Any], result: dict) -> None:
        name, data = ck
        assert t.path is not None
        path = os.path.join(t.path, name)
        if data is not None:
            write_into(data, path)
        t._ckpt_index = max(t._ckpt_index, int(name.rsplit("_", 1)[1]))  # type: ignore[attr-defined]
        t.checkpoint = Checkpoint(path)
        self._drop_restore(t)  # its own is newer than a reset's
        t._ckpts.append((path, result))  # type: ignore[attr-defined]
        keep = self.ckpt_config.num_to_keep
        if keep is not None and len(t._ckpts) > keep:  # type: ignore[attr-defined]
            attr = self.ckpt_config.checkpoint_score_attribute
            ckpts = t._ckpts  # type: ignore[attr-defined]
            if attr is None:
                drop = ckpts[0]
            else:
                sign = 1 if self.ckpt_config.checkpoint_score_order == "max" else -1
                # The worst scored (oldest first among equals); never the latest.
                candidates = ckpts[:-1]
                drop = min(
                    candidates,
                    key=lambda c: sign * c[1].get(attr, -math.inf * sign),
                )
            ckpts.remove(drop)
            shutil.rmtree(drop[0], ignore_errors=True)
        self._journal(("ckpt", t.trial_id, path, t._ckpt_index, _brief(result)))  # type: ignore[attr-defined]

    def _complete(self, t: Trial, removed: bool = False) -> None:
        self._status(t, TERMINATED)
        self.running.pop(t.trial_id, None)
        self._release_pg(t)
        if t.last_result:
            t.last_result["done"] = True
        result = t.last_result
        self.searcher.on_trial_complete(t.trial_id, result or None, error=False)
        if removed:
            self.scheduler.on_trial_remove(self, t)
        else:
            self.scheduler.on_trial_complete(self, t, result)
        self._flush_trial(t)
        self._journal(("end", self._record(t)))
        for cb in self.callbacks:
            cb.on_trial_complete(iteration=self.iteration, trials=self.trials, trial=t)
        if self.reporter:
            self.reporter.trial_done(t)

    def _on_end(self, tid: str, gen: int, n: int | None, err: BaseException | None) -> None:
        t = self.by_id.get(tid)
        if t is None or t._gen != gen or t.status != RUNNING:  # type: ignore[attr-defined]
            return
        if err is None:
            if n is not None and t._received < n:  # type: ignore[attr-defined]
                t._end_at = n  # type: ignore[attr-defined]
                return  # its last results are still on their way
            self._complete(t)
            return
        self.running.pop(tid, None)
        self._release_pg(t)
        t.num_failures += 1
        t.error = _describe(err)
        t._error_obj = err  # type: ignore[attr-defined]
        limit = self.failure.max_failures
        if limit == -1 or t.num_failures <= limit:
            self._status(t, PENDING)  # restarted from its latest checkpoint
            return
        self._status(t, ERROR)
        self.searcher.on_trial_complete(tid, t.last_result or None, error=True)
        self.scheduler.on_trial_error(self, t)
        self._flush_trial(t)
        self.writer.do(_write_text, os.path.join(t.path or self.path, "error.txt"), t.error)
        self._journal(("end", self._record(t)))
        for cb in self.callbacks:
            cb.on_trial_error(iteration=self.iteration, trials=self.trials, trial=t)
        if self.reporter:
            self.reporter.trial_done(t)
        if self.failure.fail_fast:
            self._stop_all("fail_fast")
            if self.failure.fail_fast == "raise":
                self.raise_error = err

    def _stop_all(self, why: str) -> None:
        self.stopping = True
        for tid in list(self.running):
            t = self.by_id[tid]
            self._cancel(t)
            self._complete(t, removed=True)

    # -- files and state

    def _record(self, t: Trial) -> dict:
        return {
            "trial_id": t.trial_id,
            "config": t.config,
            "status": t.status,
            "last_result": t.last_result,
            "error": t.error,
            "num_failures": t.num_failures,
            "dirname": t._dirname,  # type: ignore[attr-defined]
            "name": t._name,  # type: ignore[attr-defined]
            "checkpoint": t.checkpoint.path if t.checkpoint else None,
            "ckpt_index": t._ckpt_index,  # type: ignore[attr-defined]
            "ckpts": [(p, _brief(r)) for p, r in t._ckpts],  # type: ignore[attr-defined]
            "resources": t.resources,
            # A reset's checkpoint (its copy of another trial's), until it has its own.
            "restore": getattr(t._restore, "path", None),  # type: ignore[attr-defined]
        }

    def _journal(self, rec: Any) -> None:
        data = cloudpickle.dumps(rec)
        self.journal_buf.append(struct.pack("<I", len(data)) + data)

    def _flush_trial(self, t: Trial) -> None:
        lines = t._lines  # type: ignore[attr-defined]
        if lines:
            t._lines = []  # type: ignore[attr-defined]
            self.writer.do(_append_results, t, lines)

    def _housekeeping(self, final: bool = False) -> None:
        if self.journal_buf:
            self.writer.do(_write_all, self.journal_fd, b"".join(self.journal_buf))
            self.journal_buf.clear()
        now = time.monotonic()
        if final or now - self.last_flush >= FLUSH_S:
            for tid in self.dirty:
                self._flush_trial(self.by_id[tid])
            self.dirty.clear()
            self.last_flush = now
        if self.pg_release:
            self._remove_pgs(wait=False)
        if final or now - self.last_state >= STATE_S:
            self._write_state()
            self.last_state = now
        if self.reporter:
            self.reporter.update(final)

    def _write_state(self) -> None:
        state = {
            "searcher": self.searcher.get_state(),
            "scheduler": self.scheduler.get_state(),
            # What the scheduler's state has seen: a restore tells it the rest (_catch_up).
            "known": [t.trial_id for t in self.trials],
            "finished": [t.trial_id for t in self.trials if t.is_finished()],
            "next_id": self.next_id,
            "searcher_done": self.searcher_done,
            "timestamp": time.time(),
        }
        self.writer.do(_atomic_write, os.path.join(self.path, _STATE), cloudpickle.dumps(state))

    def _load(self, how: dict) -> None:
        """Rebuilds the trials from the journal, and the searcher and scheduler from the
        saved state (``Tuner.restore``)."""
        records: dict[str, dict] = {}
        ckpts: dict[str, list] = {}
        for rec in _read_journal(os.path.join(self.path, _JOURNAL)):
            if rec[0] in ("add", "end"):
                old = records.get(rec[1]["trial_id"])
                r = dict(rec[1])
                if rec[0] == "add" and old is not None:
                    # a reset: new config (and the checkpoint to start from), the rest as it was
                    r = dict(old, config=r["config"], restore=r.get("restore"))
                records[r["trial_id"]] = r
                if rec[0] == "end":
                    ckpts[r["trial_id"]] = list(r["ckpts"])
            elif rec[0] == "ckpt":
                _, tid, path, index, brief = rec
                ckpts.setdefault(tid, []).append((path, brief))
                records[tid]["checkpoint"] = path
                records[tid]["ckpt_index"] = max(records[tid]["ckpt_index"], index)
                records[tid]["restore"] = None  # it went on from its reset: its own is newer
            elif rec[0] == "status":
                records[rec[1]]["status"] = rec[2]
        for tid, r in records.items():
            t = Trial(tid, r["config"], r["resources"])
            self._init_extra(t)
            t._name, t._dirname = r["name"], r["dirname"]  # type: ignore[attr-defined]
            t.path = os.path.join(self.path, r["dirname"])
            t.history = _read_results(os.path.join(t.path, "result.json"))
            t.last_result = r["last_result"] or (t.history[-1] if t.history else {})
            if t.history and t.history[-1].get("training_iteration", 0) > t.training_iteration:
                t.last_result = t.history[-1]
            last_ckpt = (ckpts.get(tid) or r["ckpts"] or [(None, {})])[-1][1]
            if last_ckpt.get("training_iteration", 0) > t.training_iteration:
                t.last_result = dict(last_ckpt, config=t.config)
            t.error, t.num_failures = r["error"], r["num_failures"]
            t._ckpt_index = r["ckpt_index"]  # type: ignore[attr-defined]
            t._ckpts = [  # type: ignore[attr-defined]
                (p, b) for p, b in ckpts.get(tid, r["ckpts"]) if os.path.isdir(p)
            ]
            latest = r["checkpoint"]
            t.checkpoint = Checkpoint(latest) if latest and os.path.isdir(latest) else None
            reset = r.get("restore")
            if reset and os.path.isdir(reset):
                t._restore = Checkpoint(reset)  # type: ignore[attr-defined]
            status = r["status"]
            if status == ERROR and how["restart_errored"]:
                status, t.checkpoint, t.last_result, t.history = PENDING, None, {}, []
                t.num_failures, t.error = 0, None
            elif status == ERROR and how["resume_errored"]:
                status, t.num_failures, t.error = PENDING, 0, None
            elif status == RUNNING:
                status = PENDING  # started again from its latest checkpoint
            # PAUSED stays PAUSED, with its checkpoint: the restored scheduler chooses when
            # it goes on (choose_trial_to_run), as it would have without the restore.
            self._add(t, notify=False)  # told once its saved state is back (_catch_up)
            self._status(t, status, journal=False)
            self._sweep(t)
        state_file = os.path.join(self.path, _STATE)
        known: set[str] = set()
        finished: set[str] = set()
        if os.path.exists(state_file):
            with open(state_file, "rb") as fh:
                state = pickle.load(fh)
            self.searcher.set_state(state["searcher"])
            self.scheduler.set_state(state["scheduler"])
            self.next_id = state["next_id"]
            self.searcher_done = state["searcher_done"]
            known = set(state.get("known", records))
            finished = set(state.get("finished", (t.trial_id for t in self.trials)))
        self.catch_up = (known, finished)
        for t in self.trials:
            if t.is_finished() and int(t.trial_id) < self.next_id:
                self.searcher.on_trial_complete(
                    t.trial_id, t.last_result or None, error=t.status == ERROR
                )

    def _sweep(self, t: Trial) -> None:
        """Removes from ``t``'s folder what no record points to: the scratch directories of
        processes killed while they wrote, saved or unpacked a checkpoint, and checkpoints
        numbered past the last one kept (written by a trial whose report never counted: it
        was killed before the report came, or had been paused or stopped)."""
        if t.path is None:
            return
        # A reset's copy is kept while the trial may still start from it.
        held = None if t.is_finished() else getattr(t._restore, "path", None)  # type: ignore[attr-defined]
        clear_scratch(t.path, SCRATCH, RESTORE_COPY, keep=held)
        try:
            names = os.listdir(t.path)
        except OSError:
            return
        last = t._ckpt_index  # type: ignore[attr-defined]
        for name in names:
            m = _CKPT_NAME.fullmatch(name)
            path = os.path.join(t.path, name)
            if m and (int(m[1]) > last or m[2]) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        for tid in list(self.running):
            self._cancel(self.by_id[tid])
        if self.journal_buf:
            self.writer.do(_write_all, self.journal_fd, b"".join(self.journal_buf))
            self.journal_buf.clear()
        self.writer.close()
        os.close(self.journal_fd)
        self._remove_pgs(wait=True)
        for cb in self.callbacks:
            cb.on_experiment_end(trials=self.trials)
        if self.cancelled:
            # A cancelled trial may still put a report; a put on a queue already shut down
            # would fail the next task of its worker, so the queue goes once they have ended.
            volley.wait(
                self.cancelled,
                num_returns=len(self.cancelled),
                timeout=CANCEL_WAIT_S,
                fetch_local=False,
            )
        try:
            self.queue.shutdown()
        except Exception:  # noqa: BLE001 volley was shut down under us
            pass
        for t in self.trials:
            self._sweep(t)
        if self.raise_error is not None:
            raise self.raise_error

    def result_grid(self) -> ResultGrid:
        results = [
            Result(
                metrics=t.last_result,
                config=t.config,
                checkpoint=t.checkpoint,
                error=(t._error_obj or RuntimeError(t.error)) if t.status == ERROR else None,  # type: ignore[attr-defined]
                path=t.path,
                history=t.history,
                best_checkpoints=[(Checkpoint(p), r) for p, r in t._ckpts],  # type: ignore[attr-defined]
                trial_id=t.trial_id,
                status=t.status,
            )
            for t in self.trials
        ]
        return ResultGrid(results, self.path, self.metric, self.mode)


def _trial_task(trainable: Any, spec: dict, queue: Any, *values: Any) -> int:
    # ``values``: the with_parameters objects, passed as the task's own arguments (volley
    # fetches them to the trial's node before it starts) in the order of spec["params"].
    return run_trial(trainable, spec, queue, dict(zip(spec["params"], values)))


def _brief(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "config"}


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _csv_header(path: str) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh), [])


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a short write would leave a record cut
    in the middle of the journal, and every record after it unreadable)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_journal(path: str) -> list:
    with open(path, "rb") as fh:
        data = fh.read()
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + n > len(data):
            break  # the last record was cut by a kill
        out.append(pickle.loads(data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


def _read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                break
    return out


# ------------------------------------------------------------------------------ the table


class _Reporter:
    """The status table: redrawn in place at most once a second on a terminal; elsewhere a
    short status line every 30 s (logs stay readable); the final table once."""

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.out = sys.stdout
        self.tty = self.out.isatty()
        self.every = 1.0 if self.tty else 30.0
        self.last = 0.0
        self.lines = 0

    def trial_done(self, t: Trial) -> None:
        if self.runner.verbose >= 2:
            self._clear()
            m = self.runner.metric
            shown = f" {m}={t.last_result.get(m)}" if m else ""
            self.out.write(
                f"Trial {t.trial_id} {t.status}{shown} after {t.training_iteration} iterations\n"
            )
            self.out.flush()

    def _clear(self) -> None:
        if self.tty and self.lines:
            self.out.write(f"\x1b[{self.lines}F\x1b[J")
            self.lines = 0

    def update(self, final: bool) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        text = self.table(final)
        if self.tty and not final:
            self._clear()
            self.out.write(text)
            self.lines = text.count("\n")
        elif final:
            self._clear()
            self.out.write(text)
        else:
            self.out.write(text.splitlines()[0] + "\n")
        self.out.flush()

    def table(self, final: bool, rows: int = 20) -> str:
        r = self.runner
        counts: dict[str, int] = {}
        for t in r.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = ""
        if r.metric:
            vals = [
                (t.last_result[r.metric], t)
                for t in r.trials
                if isinstance(t.last_result.get(r.metric), (int, float))
            ]
            if vals:
                pick = min if r.mode == "min" else max
                v, bt = pick(vals, key=lambda x: x[0])
                best = f" | best {r.metric}={v:.6g} ({bt.trial_id})"
        buf = io.StringIO()
        buf.write(
            f"== volley.tune {'done' if final else 'running'}: "
            f"{len(r.trials)} trials ({head}){best}\n"
        )
        keys = sorted({k for t in r.trials for k in t.config})[:4]
        cols = ["trial", "status", *keys, "iter", r.metric or "", "time (s)"]
        shown = [t for t in r.trials if t.status == RUNNING][:rows] or r.trials[-rows:]
        buf.write(" | ".join(f"{c:>10}" for c in cols if c) + "\n")
        for t in shown:
            vals = [
                t.trial_id,
                t.status,
                *(_short(t.config.get(k)) for k in keys),
                str(t.training_iteration),
            ]
            if r.metric:
                vals.append(_short(t.last_result.get(r.metric)))
            vals.append(_short(t.last_result.get("time_total_s")))
            buf.write(" | ".join(f"{v:>10}" for v in vals) + "\n")
        if len(r.trials) > len(shown):
            buf.write(f"... {len(r.trials) - len(shown)} more trials\n")
        return buf.getvalue()


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v) if v is not None else ""
    return s if len(s) <= 10 else s[:9] + "…"
