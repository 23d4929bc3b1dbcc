"""volley.tune's tuner end to end: real trials as volley tasks, real checkpoints on disk, a trial's
process SIGKILLed and restarted from its checkpoint, a driver SIGKILLed and its run restored.
With VOLLEY_TEST_CLUSTER=1 the trials run on the other nodes and their checkpoints come back to
the driver's storage through volley."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLUSTER_MODE, finish_driver, kill_driver, start_driver, wait_for

import volley
from volley import tune
from volley.tune._tuner import _read_journal
from volley.tune.schedulers import FIFOScheduler, TrialScheduler

WAIT_S = 30.0


def run_config(tmp_path: Path, **kw) -> tune.RunConfig:
    kw.setdefault("verbose", 0)
    return tune.RunConfig(storage_path=str(tmp_path), name=kw.pop("name", "exp"), **kw)


def quadratic(config):
    for step in range(3):
        tune.report({"loss": (config["x"] - 2) ** 2 + 1 / (step + 1)})


# ----------------------------------------------------------------------------- the loop


def test_a_grid_runs_every_trial_and_the_best_is_found(volley_shared, tmp_path):
    grid = tune.Tuner(
        quadratic,
        param_space={"x": tune.grid_search([0, 1, 2, 3])},
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=run_config(tmp_path),
    ).fit()
    assert len(grid) == 4 and grid.num_terminated == 4 and grid.num_errors == 0
    assert sorted(r.config["x"] for r in grid) == [0, 1, 2, 3]
    best = grid.get_best_result()
    assert best.config == {"x": 2}
    assert best.metrics["training_iteration"] == 3 and best.metrics["done"] is True
    assert [h["training_iteration"] for h in best._history] == [1, 2, 3]
    # scope="all" judges each trial on its best result ever, "avg" on the mean
    assert grid.get_best_result(scope="all").config == {"x": 2}
    assert grid.get_best_result("loss", "max", scope="avg").config["x"] == 0
    df = grid.get_dataframe()
    assert len(df) == 4 and set(df["config/x"]) == {0, 1, 2, 3}
    assert best.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3]
    first = grid.get_dataframe(filter_metric="loss", filter_mode="max")
    assert (first["training_iteration"] == 1).all(), "the worst loss is each trial's first"
    assert grid.experiment_path == str(tmp_path / "exp")


def test_each_trial_leaves_its_params_results_and_progress(volley_shared, tmp_path):
    grid = tune.Tuner(quadratic, param_space={"x": 1.5}, run_config=run_config(tmp_path)).fit()
    path = Path(grid[0].path)
    assert json.loads((path / "params.json").read_text()) == {"x": 1.5}
    lines = [json.loads(x) for x in (path / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in lines] == [1, 2, 3]
    assert all(r["trial_id"] == grid[0].trial_id and r["config"] == {"x": 1.5} for r in lines)
    assert all(r["time_total_s"] >= r["time_this_iter_s"] >= 0 for r in lines)
    csv = (path / "progress.csv").read_text().splitlines()
    assert csv[0].startswith("loss,training_iteration") and len(csv) == 4
    assert tune.Tuner.can_restore(grid.experiment_path)


def test_a_returned_dict_is_the_last_report(volley_shared, tmp_path):
    def f(config):
        tune.report({"score": 1})
        return {"score": 2}

    r = tune.Tuner(f, run_config=run_config(tmp_path)).fit()[0]
    assert r.metrics["score"] == 2 and r.metrics["training_iteration"] == 2 and r.metrics["done"]


def test_stop_conditions_dict_callable_and_stopper(volley_shared, tmp_path):
    def forever(config):
        i = 0
        while True:
            i += 1
            tune.report({"i": i, "loss": 1 / i})

    by_dict = tune.Tuner(
        forever, run_config=run_config(tmp_path, name="d", stop={"training_iteration": 5})
    ).fit()
    assert by_dict[0].metrics["training_iteration"] == 5 and by_dict[0].metrics["done"]

    by_fn = tune.Tuner(
        forever,
        run_config=run_config(tmp_path, name="f", stop=lambda tid, r: r["loss"] < 0.3),
    ).fit()
    assert by_fn[0].metrics["i"] == 4

    class AtSeven(tune.Stopper):
        def __call__(self, trial_id, result):
            return result["i"] >= 7

    by_stopper = tune.Tuner(
        forever, run_config=run_config(tmp_path, name="s", stop=AtSeven())
    ).fit()
    assert by_stopper[0].metrics["i"] == 7 and by_stopper[0].status == "TERMINATED"


def test_a_time_budget_stops_running_trials_and_starts_no_more(volley_shared, tmp_path):
    def forever(config):
        while True:
            tune.report({"x": 1})
            time.sleep(0.01)

    t0, wall0 = time.monotonic(), time.time()
    grid = tune.Tuner(
        forever,
        tune_config=tune.TuneConfig(num_samples=6, time_budget_s=1.0),
        run_config=run_config(tmp_path),
    ).fit()
    took = time.monotonic() - t0
    assert took < 15, f"a 1 s budget took {took:.1f} s"
    # trials are made as they can start: the two that ran, stopped by the budget
    assert [r.status for r in grid] == ["TERMINATED", "TERMINATED"], [r.error for r in grid]
    # Each reported until the budget was spent (a trial whose worker started late under load
    # ran for less than the budget itself, so its own time_total_s says less).
    assert all(r.metrics["timestamp"] >= wall0 + 0.9 for r in grid), [
        r.metrics["timestamp"] - wall0 for r in grid
    ]


def test_bad_settings_are_refused_where_they_are_given(volley_shared, tmp_path):
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        tune.TuneConfig(metric="loss", mode="minimum")
    with pytest.raises(ValueError, match="metric and mode together"):
        tune.TuneConfig(metric="loss")
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        tune.TuneConfig(num_samples=0)
    with pytest.raises(TypeError, match="must be a function or a tune.Trainable"):
        tune.Tuner(42)
    with pytest.raises(TypeError, match="stop must be a dict"):
        tune.RunConfig(stop=5)
    with pytest.raises(ValueError, match="max_failures"):
        tune.FailureConfig(max_failures=-2)
    with pytest.raises(ValueError, match="must be a number >= 0"):
        tune.with_resources(quadratic, {"cpu": -1})
    with pytest.raises(ValueError, match="no trial could ever start"):
        tune.Tuner(
            tune.with_resources(quadratic, {"cpu": 1, "no_such_resource": 1}),
            run_config=run_config(tmp_path, name="r"),
        ).fit()
    with pytest.raises(RuntimeError, match="outside a trial"):
        tune.report({"loss": 1})
    with pytest.raises(RuntimeError, match="outside a trial"):
        tune.get_checkpoint()
    with pytest.raises(ValueError, match="needs a metric and a mode"):
        tune.Tuner(quadratic, run_config=run_config(tmp_path, name="m")).fit().get_best_result()
    with pytest.raises(ValueError, match="already holds an experiment"):
        tune.Tuner(quadratic, run_config=run_config(tmp_path, name="m")).fit()
    with pytest.raises(ValueError, match="holds no experiment"):
        tune.Tuner.restore(str(tmp_path / "nothing"), quadratic)
    with pytest.raises(RuntimeError, match="fit\\(\\) has not run"):
        tune.Tuner(quadratic).get_results()
    with pytest.raises(TypeError, match="must pickle, for Tuner.restore"):
        tune.Tuner(
            quadratic,
            param_space={"lock": threading.Lock()},
            run_config=run_config(tmp_path, name="unpicklable"),
        )
    assert not (tmp_path / "unpicklable").exists(), "a refused run made its folder"


def test_a_report_of_the_wrong_type_fails_the_trial_with_its_message(volley_shared, tmp_path):
    def f(config):
        tune.report([1, 2])

    grid = tune.Tuner(f, run_config=run_config(tmp_path)).fit()
    assert grid.num_errors == 1
    assert "report() takes a dict" in str(grid.errors[0])
    assert "report() takes a dict" in (Path(grid[0].path) / "error.txt").read_text()


def test_a_result_without_the_run_s_metric_fails_its_trial_saying_so(volley_shared, tmp_path):
    def f(config):
        tune.report({"accuracy": 0.5})

    grid = tune.Tuner(
        f,
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=run_config(tmp_path),
    ).fit()
    assert grid.num_errors == 1
    assert "without the metric 'loss'" in str(grid.errors[0])
    assert "'accuracy'" in str(grid.errors[0])


# ------------------------------------------------------------------- schedulers' decisions


class StopBigPauseOne(FIFOScheduler):
    """Stops trials with x >= 10 at their first result; pauses trial x == 1 once, at its 2nd."""

    def __init__(self):
        super().__init__()
        self.paused = False

    def on_trial_result(self, controller, trial, result):
        if trial.config["x"] >= 10:
            return TrialScheduler.STOP
        if trial.config["x"] == 1 and result["training_iteration"] == 2 and not self.paused:
            self.paused = True
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE


def counting(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["n"] if ckpt else 0
    for n in range(start + 1, 5):
        tune.report({"n": n, "resumed_from": start}, checkpoint=tune.Checkpoint.from_dict({"n": n}))


def test_a_scheduler_stops_and_pauses_trials_at_once(volley_shared, tmp_path):
    grid = tune.Tuner(
        counting,
        param_space={"x": tune.grid_search([1, 10, 20])},
        tune_config=tune.TuneConfig(scheduler=StopBigPauseOne(), max_concurrent_trials=1),
        run_config=run_config(tmp_path),
    ).fit()
    by_x = {r.config["x"]: r for r in grid}
    for x in (10, 20):
        assert by_x[x].metrics["training_iteration"] == 1, "a STOP ends the trial at that result"
        assert by_x[x].status == "TERMINATED"
    one = by_x[1]
    assert one.status == "TERMINATED" and one.metrics["n"] == 4
    # paused after its 2nd result, resumed from its latest checkpoint (n == 2)
    assert one.metrics["resumed_from"] == 2
    assert [h["training_iteration"] for h in one._history] == [1, 2, 3, 4]


class CopyBestAtTwo(FIFOScheduler):
    """At trial 1's 2nd result, resets it to trial 0's config and latest checkpoint."""

    def __init__(self):
        super().__init__()
        self.done = False

    def on_trial_result(self, controller, trial, result):
        trials = controller.get_trials()
        if (
            len(trials) > 1
            and trial is trials[1]
            and result["training_iteration"] == 2
            and not self.done
        ):
            self.done = True
            donor = trials[0]
            assert donor.checkpoint is not None
            controller.reset_trial(trial, dict(donor.config), donor.checkpoint)
            return TrialScheduler.NOOP
        return TrialScheduler.CONTINUE


def test_reset_trial_restarts_a_trial_from_another_trials_checkpoint(volley_shared, tmp_path):
    def f(config):
        ckpt = tune.get_checkpoint()
        state = ckpt.to_dict() if ckpt else {"owner": config["name"], "n": 0}
        for n in range(state["n"] + 1, state["n"] + 4):  # 3 steps a run
            tune.report(
                {"owner": state["owner"], "name": config["name"], "n": n},
                checkpoint=tune.Checkpoint.from_dict({"owner": state["owner"], "n": n}),
            )

    grid = tune.Tuner(
        f,
        param_space={"name": tune.grid_search(["a", "b"])},
        tune_config=tune.TuneConfig(scheduler=CopyBestAtTwo(), max_concurrent_trials=1),
        run_config=run_config(tmp_path),
    ).fit()
    b = grid[1]
    assert b.config == {"name": "a"}
    assert b.metrics["owner"] == "a", "the donor's checkpoint was the one loaded"
    assert b.metrics["n"] == 6, "a's last checkpoint (n == 3), then 3 steps"
    # its iterations go on: 2 of its own, then 3 from the donor's checkpoint
    assert [h["training_iteration"] for h in b._history] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------ resources


class ResetWhilePaused(FIFOScheduler):
    """Pauses trial 00000 at its first result; at trial 00001's first result, resets the
    paused 00000 to 00001's config and checkpoint. 00000 starts again only once 00001 ends
    (one trial at a time), long after 00001's checkpoint was pruned (num_to_keep=1); it then
    fails once before a checkpoint of its own (the file ``fail_once``)."""

    def __init__(self):
        super().__init__()
        self.reset = False

    def on_trial_result(self, controller, trial, result):
        trials = controller.get_trials()
        if trial.trial_id == "00000" and result["training_iteration"] == 1 and not self.reset:
            return TrialScheduler.PAUSE
        if trial.trial_id == "00001" and not self.reset:
            self.reset = True
            controller.reset_trial(trials[0], dict(trial.config, reset=True), trial.checkpoint)
        return TrialScheduler.CONTINUE


def test_a_reset_s_checkpoint_outlives_the_donor_s_pruning_and_a_failure(volley_shared, tmp_path):
    fail_once = tmp_path / "fail_once"
    fail_once.touch()

    def f(config):
        ckpt = tune.get_checkpoint()
        state = ckpt.to_dict() if ckpt else {"owner": config["name"], "n": 0}
        if config.get("reset") and fail_once.exists():
            fail_once.unlink()
            raise RuntimeError("fails once after its reset, before a checkpoint of its own")
        for n in range(state["n"] + 1, state["n"] + 4):  # 3 steps a run
            tune.report(
                {"owner": state["owner"], "from": state["n"], "n": n},
                checkpoint=tune.Checkpoint.from_dict({"owner": state["owner"], "n": n}),
            )

    grid = tune.Tuner(
        f,
        param_space={"name": tune.grid_search(["a", "b"])},
        tune_config=tune.TuneConfig(scheduler=ResetWhilePaused(), max_concurrent_trials=1),
        run_config=run_config(
            tmp_path,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    a = grid[0]
    assert a.status == "TERMINATED", a.error
    assert a.metrics["owner"] == "b", "the donor's checkpoint was the one loaded"
    assert a.metrics["from"] == 1, "from b's checkpoint at its first result (n == 1)"
    assert not fail_once.exists(), "the failure after the reset did not happen"
    left = [n for n in os.listdir(a.path) if n.startswith(".")]
    assert left == [], f"the reset's copy was left in the trial's folder: {left}"


class ResetToNothing(FIFOScheduler):
    def on_trial_result(self, controller, trial, result):
        controller.reset_trial(trial, dict(trial.config), "/no/such/checkpoint_000001")
        return TrialScheduler.NOOP


def test_a_reset_to_a_checkpoint_that_is_not_there_is_refused_saying_so(volley_shared, tmp_path):
    with pytest.raises(ValueError, match="checkpoint /no/such/checkpoint_000001 of trial 00000"):
        tune.Tuner(
            counting,
            tune_config=tune.TuneConfig(scheduler=ResetToNothing()),
            run_config=run_config(tmp_path),
        ).fit()


def test_trials_hold_their_resources_two_at_once_on_two_cpus(volley_shared, tmp_path):
    barrier = volley.sync.Barrier(2)

    def f(config):
        start = time.time()
        barrier.wait(timeout=WAIT_S)  # two must run together, or this times out
        tune.report({"start": start, "end": time.time()})

    grid = tune.Tuner(
        tune.with_resources(f, {"cpu": 1}),
        tune_config=tune.TuneConfig(num_samples=4),
        run_config=run_config(tmp_path, name="one"),
    ).fit()
    assert grid.num_errors == 0, grid.errors
    spans = [(r.metrics["start"], r.metrics["end"]) for r in grid]
    most = max(sum(1 for s, e in spans if s <= t <= e) for t, _ in spans)
    assert most == 2, spans

    def g(config):
        tune.report({"start": time.time(), "end": time.time()})

    two = tune.with_resources(g, {"cpu": 2})
    if CLUSTER_MODE:  # two 1-CPU nodes: no node holds a 2-CPU trial
        with pytest.raises(ValueError, match="no trial could ever start"):
            tune.Tuner(two, run_config=run_config(tmp_path, name="two")).fit()
        return
    grid = tune.Tuner(
        two, tune_config=tune.TuneConfig(num_samples=3), run_config=run_config(tmp_path, name="two")
    ).fit()
    spans = sorted((r.metrics["start"], r.metrics["end"]) for r in grid)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "2-CPU trials overlapped"


def test_with_parameters_puts_large_data_once(volley_shared, tmp_path):
    data = np.arange(1_000_000, dtype=np.float64)

    def f(config, data):
        tune.report({"total": float(data.sum()) * config["k"]})

    wrapped = tune.with_parameters(f, data=data)
    grid = tune.Tuner(
        wrapped,
        param_space={"k": tune.grid_search([1, 2])},
        run_config=run_config(tmp_path),
    ).fit()
    assert grid.num_errors == 0, (grid.errors, wrapped.refs)
    assert sorted(r.metrics["total"] for r in grid) == [data.sum(), 2 * data.sum()]


def test_a_trial_of_bundles_runs_in_its_placement_group(volley_shared, tmp_path):
    def f(config):
        pg = tune.get_context().get_trial_resources()["placement_group"]

        @volley.remote(num_cpus=1)
        def part():
            return 1

        s = volley.PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
        tune.report({"parts": volley.get(part.options(scheduling_strategy=s).remote())})

    grid = tune.Tuner(
        tune.with_resources(f, tune.PlacementGroupFactory([{"CPU": 1}, {"CPU": 1}])),
        run_config=run_config(tmp_path),
    ).fit()
    assert grid.num_errors == 0, grid.errors
    assert grid[0].metrics["parts"] == 1


# ----------------------------------------------------------------- checkpoints, failures


def test_checkpoints_are_kept_under_the_trial_and_pruned(volley_shared, tmp_path):
    def f(config):
        for i in range(5):
            d = tmp_path / f"scratch-{config['x']}-{i}"
            d.mkdir()
            (d / "w.txt").write_text(str(i))
            tune.report({"score": [3, 9, 1, 4, 2][i]}, checkpoint=tune.Checkpoint.from_directory(d))

    grid = tune.Tuner(
        f,
        param_space={"x": 0},
        run_config=run_config(
            tmp_path,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="score"
            ),
        ),
    ).fit()
    r = grid[0]
    kept = sorted(p.name for p in Path(r.path).glob("checkpoint_*"))
    # the best by score (9, at the 2nd) and the latest are kept
    assert kept == ["checkpoint_000002", "checkpoint_000005"], (
        kept,
        r.status,
        r.error,
        os.listdir(r.path),
    )
    assert Path(r.checkpoint.path).name == "checkpoint_000005"
    with r.checkpoint.as_directory() as d:
        assert (Path(d) / "w.txt").read_text() == "4"
    assert [c[1]["score"] for c in r.best_checkpoints] == [9, 2]


def test_a_failing_trial_restarts_from_its_checkpoint_up_to_max_failures(volley_shared, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def f(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["i"] + 1 if ckpt else 0
        for i in range(start, 4):
            tune.report({"i": i}, checkpoint=tune.Checkpoint.from_dict({"i": i}))
            mark = marks / f"{config['x']}-{i}"
            if i == 1 and not mark.exists():
                mark.touch()
                raise ValueError("flaky")

    grid = tune.Tuner(
        f,
        param_space={"x": tune.grid_search([0, 1])},
        run_config=run_config(tmp_path, failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    for r in grid:
        assert r.status == "TERMINATED" and r.metrics["i"] == 3
        assert [h["training_iteration"] for h in r._history] == [1, 2, 3, 4]

    def always(config):
        tune.report({"i": 0})
        raise ValueError("broken for good")

    grid = tune.Tuner(
        always,
        run_config=run_config(
            tmp_path, name="e", failure_config=tune.FailureConfig(max_failures=2)
        ),
    ).fit()
    assert grid.num_errors == 1 and "broken for good" in str(grid.errors[0])
    assert grid[0].metrics["training_iteration"] == 3, "three runs, their iterations go on"

    with pytest.raises(Exception, match="broken for good"):
        tune.Tuner(
            always,
            tune_config=tune.TuneConfig(num_samples=3),
            run_config=run_config(
                tmp_path, name="ff", failure_config=tune.FailureConfig(fail_fast="raise")
            ),
        ).fit()


def test_a_trial_whose_process_is_sigkilled_goes_on_from_its_checkpoint(volley_2cpu, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()

    def f(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["i"] + 1 if ckpt else 0
        for i in range(start, 6):
            tune.report(
                {"i": i, "pid": os.getpid()}, checkpoint=tune.Checkpoint.from_dict({"i": i})
            )
            if i == 2 and ckpt is None:
                (pids / str(os.getpid())).touch()
                while True:  # until the test kills this process
                    time.sleep(0.05)

    def killer():
        pid = int(wait_for(lambda: list(pids.iterdir()), "the trial to reach i == 2")[0].name)
        os.kill(pid, signal.SIGKILL)

    th = threading.Thread(target=killer)
    th.start()
    grid = tune.Tuner(
        f,
        run_config=run_config(tmp_path, failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    th.join()
    r = grid[0]
    assert r.status == "TERMINATED", r.error
    assert r.metrics["i"] == 5
    hist = r._history
    assert [h["training_iteration"] for h in hist] == [1, 2, 3, 4, 5, 6]
    assert hist[0]["pid"] == hist[2]["pid"] != hist[3]["pid"], "restarted in a new process"


def test_what_a_trial_reported_before_its_process_died_counts(volley_shared, tmp_path):
    n = 2_000  # a burst of reports just before the process dies

    def f(config):
        for i in range(n):
            tune.report({"i": i})
        tune.report({"i": n}, checkpoint=tune.Checkpoint.from_dict({"i": n}))
        os.kill(os.getpid(), signal.SIGKILL)  # dies before its end reaches the tuner

    grid = tune.Tuner(f, run_config=run_config(tmp_path)).fit()
    r = grid[0]
    assert r.status == "ERROR", r.status
    assert r.metrics["training_iteration"] == n + 1, "results sent before the death were lost"
    assert r.checkpoint.to_dict() == {"i": n}, "its last checkpoint was lost"


class Counter(tune.Trainable):
    def setup(self, config):
        self.n = 0
        self.loaded = None

    def step(self):
        self.n += 1
        if self.n == 3 and self.config.get("fail_at_3") and self.loaded is None:
            raise RuntimeError("fails once at 3")
        return {"n": self.n, "loaded": self.loaded}

    def save_checkpoint(self, checkpoint_dir):
        Path(checkpoint_dir, "n").write_text(str(self.n))

    def load_checkpoint(self, checkpoint_dir):
        self.n = self.loaded = int(Path(checkpoint_dir, "n").read_text())


def test_the_class_api_checkpoints_every_n_steps_and_recovers(volley_shared, tmp_path):
    grid = tune.Tuner(
        Counter,
        param_space={"fail_at_3": True},
        run_config=run_config(
            tmp_path,
            stop={"training_iteration": 5},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    r = grid[0]
    assert r.status == "TERMINATED" and r.metrics["n"] == 5
    assert r.metrics["loaded"] == 2, "recovered from the checkpoint of step 2"
    assert r.metrics["training_iteration"] == 5
    names = sorted(p.name for p in Path(r.path).glob("checkpoint_*"))
    assert len(names) == 3, names  # steps 2, 4 and the end (5)
    assert Path(r.checkpoint.path, "n").read_text() == "5"


def test_callbacks_see_every_result_and_the_end(volley_shared, tmp_path):
    seen = {"result": 0, "complete": 0, "error": 0, "end": 0, "start": 0}

    class Count(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            seen["start"] += 1

        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen["result"] += 1

        def on_trial_complete(self, iteration, trials, trial, **info):
            seen["complete"] += 1

        def on_trial_error(self, iteration, trials, trial, **info):
            seen["error"] += 1

        def on_experiment_end(self, trials, **info):
            seen["end"] += 1

    def f(config):
        tune.report({"x": config["x"]})
        if config["x"] == 2:
            raise ValueError("two")
        tune.report({"x": config["x"]})

    tune.Tuner(
        f,
        param_space={"x": tune.grid_search([0, 1, 2])},
        run_config=run_config(tmp_path, callbacks=[Count()]),
    ).fit()
    assert seen == {"result": 5, "complete": 2, "error": 1, "end": 1, "start": 3}


def test_the_status_table_is_printed_once_at_the_end_off_a_terminal(
    volley_shared, tmp_path, capsys
):
    tune.Tuner(
        quadratic,
        param_space={"x": tune.grid_search([1, 2])},
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=run_config(tmp_path, verbose=2),
    ).fit()
    out = capsys.readouterr().out
    assert "volley.tune done: 2 trials (2 TERMINATED) | best loss=0.333333 (00001)" in out
    assert out.count("Trial ") == 2, out  # verbose=2: a line per trial's end


QUIET_DRIVER = """
import logging, sys
import volley
from volley import tune
from volley.tune.schedulers import PopulationBasedTraining
from volley.tune.search.optuna import OptunaSearch

verbose = int(sys.argv[1])
levels = set()  # the levels PBT's lines were logged at (DEBUG too: not printed)


class Levels(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("PBT: trial"):
            levels.add(record.levelname)


volley.init(num_cpus=2)
# The "volley" logger prints INFO on stderr (its own handler). A quiet run must not print
# there; to see what it logs at DEBUG, this handler takes all, the printing ones INFO up.
for h in logging.getLogger("volley").handlers:
    h.setLevel(logging.INFO)
logging.getLogger("volley.tune").addHandler(Levels(logging.DEBUG))
logging.getLogger("volley.tune").setLevel(logging.DEBUG)


def grow(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["step"] + 1 if ckpt else 1
    for step in range(start, 5):
        tune.report({{"score": config["lr"] * step}},
                    checkpoint=tune.Checkpoint.from_dict({{"step": step}}))


pbt = PopulationBasedTraining(perturbation_interval=2, synch=True, quantile_fraction=0.5,
                              hyperparam_mutations={{"lr": [0.1, 0.2, 0.3]}}, seed=0)
tune.Tuner(
    grow,
    param_space={{"lr": tune.grid_search([0.1, 0.3])}},
    tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
    run_config=tune.RunConfig(storage_path={root!r}, name=f"pbt{{verbose}}", verbose=verbose),
).fit()
searcher = OptunaSearch(seed=0)
import optuna
optuna_level = optuna.logging.get_verbosity()
tune.Tuner(
    lambda config: {{"score": config["x"]}},
    param_space={{"x": tune.uniform(0, 1)}},
    tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=3, search_alg=searcher),
    run_config=tune.RunConfig(storage_path={root!r}, name=f"optuna{{verbose}}", verbose=verbose),
).fit()
print("PBT LOGGED AT", sorted(levels))
print("OPTUNA LEVEL KEPT", optuna.logging.get_verbosity() == optuna_level == logging.INFO)
"""


def test_a_quiet_run_prints_and_logs_nothing_of_its_own(tmp_path):
    pytest.importorskip("optuna")

    def run(verbose: int) -> tuple[str, str]:
        script = tmp_path / f"driver{verbose}.py"
        text = QUIET_DRIVER.format(root=str(tmp_path)).replace("int(sys.argv[1])", str(verbose))
        script.write_text(textwrap.dedent(text))
        proc = start_driver(script)
        try:
            out, err = finish_driver(proc, timeout=WAIT_S * 2)
        finally:
            kill_driver(proc)
        assert proc.returncode == 0, (out, err)
        return out, err

    out, err = run(0)
    # PBT exploited (logged at DEBUG, which the user's INFO logging does not show), Optuna's
    # verbosity is back to its INFO after the run, and nothing was printed or logged.
    assert out.splitlines() == ["PBT LOGGED AT ['DEBUG']", "OPTUNA LEVEL KEPT True"], out
    assert "PBT" not in err and "study created" not in err and "Trial 0" not in err, err
    # The same runs at verbose=2 say it all: the quiet above is the tuner's doing.
    out, err = run(2)
    assert "PBT LOGGED AT ['INFO']" in out and "volley.tune done" in out, out
    assert "PBT: trial 00000 takes the checkpoint of 00001" in err, err
    assert "A new study created" in err, err  # Optuna's INFO (tell() logs no trial line)


# -------------------------------------------------------------------------- restore


DRIVER = """
import os, sys, time
from pathlib import Path
import volley
from volley import tune

root = Path({root!r})

def f(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["i"] + 1 if ckpt else 0
    with open(root / "runs.log", "a") as fh:
        fh.write(f"{{config['x']}} {{start}}\\n")
    for i in range(start, 4):
        if config["x"] >= 2 and i == 2:
            while not (root / "go").exists():  # held until the driver is killed and restored
                time.sleep(0.02)
        tune.report({{"i": i}}, checkpoint=tune.Checkpoint.from_dict({{"i": i}}))

volley.init(num_cpus=2)
tune.Tuner(
    f,
    param_space={{"x": tune.grid_search([0, 1, 2, 3, 4, 5])}},
    tune_config=tune.TuneConfig(metric="i", mode="max"),
    run_config=tune.RunConfig(storage_path=str(root), name="exp", verbose=0),
).fit()
print("FINISHED")
"""


def held_trainable(root: Path):
    def f(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["i"] + 1 if ckpt else 0
        with open(root / "runs.log", "a") as fh:
            fh.write(f"{config['x']} {start}\n")
        for i in range(start, 4):
            tune.report({"i": i}, checkpoint=tune.Checkpoint.from_dict({"i": i}))

    return f


def test_a_killed_driver_s_run_is_restored_without_rerunning_finished_trials(
    volley_shared, tmp_path
):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(root=str(tmp_path))))
    proc = start_driver(script)
    exp = tmp_path / "exp"

    def journal():
        if not (exp / "trials.journal").exists():
            return None
        recs = _read_journal(str(exp / "trials.journal"))
        ended = {r[1]["trial_id"] for r in recs if r[0] == "end"}
        ckpts = {r[1] for r in recs if r[0] == "ckpt"}
        # trials 0 and 1 finished, two held ones running with a checkpoint of i == 1
        return len(ended) >= 2 and {"00002", "00003"} <= ckpts and (ended, ckpts)

    try:
        wait_for(journal, "the driver to finish two trials and checkpoint two held ones", 60)
        os.kill(proc.pid, signal.SIGKILL)
        finish_driver(proc)
    finally:
        kill_driver(proc)
    assert tune.Tuner.can_restore(exp)
    (tmp_path / "go").touch()
    grid = tune.Tuner.restore(str(exp), held_trainable(tmp_path)).fit()
    assert len(grid) == 6 and grid.num_terminated == 6, [(r.trial_id, r.status) for r in grid]
    assert sorted(r.config["x"] for r in grid) == [0, 1, 2, 3, 4, 5], "none lost, none doubled"
    runs = [
        tuple(map(int, line.split()))
        for line in (tmp_path / "runs.log").read_text().split("\n")
        if line
    ]
    starts: dict[int, list[int]] = {}
    for x, start in runs:
        starts.setdefault(x, []).append(start)
    assert starts[0] == [0] and starts[1] == [0], f"a finished trial ran again: {starts}"
    assert starts[2] == [0, 2] and starts[3] == [0, 2], f"not resumed from i == 1: {starts}"
    for r in grid:
        assert r.metrics["i"] == 3
        assert r.metrics["training_iteration"] == 4
    assert grid.get_best_result().metrics["i"] == 3


# ---------------------------------------------------------------------------- the cluster


def test_checkpoints_made_on_any_node_reach_the_driver_s_storage(volley_shared, tmp_path):
    driver_node = volley.get_runtime_context().get_node_id()

    def f(config):
        import tempfile

        d = tempfile.mkdtemp()
        Path(d, "state.txt").write_text(f"trial {config['x']}")
        node = volley.get_runtime_context().get_node_id()
        tune.report({"node": node}, checkpoint=tune.Checkpoint.from_directory(d))

    grid = tune.Tuner(
        f, param_space={"x": tune.grid_search([0, 1, 2, 3])}, run_config=run_config(tmp_path)
    ).fit()
    for r in grid:
        assert Path(r.checkpoint.path).parent == Path(r.path)
        assert Path(r.checkpoint.path, "state.txt").read_text() == f"trial {r.config['x']}"
    if CLUSTER_MODE:
        assert all(r.metrics["node"] != driver_node for r in grid), "the head has no CPUs"


def test_a_checkpoint_with_a_link_to_outside_is_kept_with_the_file_itself(volley_shared, tmp_path):
    outside = tmp_path / "dataset.txt"
    outside.write_text("data")

    def f(config):
        import tempfile

        d = tempfile.mkdtemp()
        Path(d, "weights").write_text("w")
        os.symlink(outside, Path(d, "dataset.txt"))  # absolute, out of the checkpoint
        tune.report({"x": 1}, checkpoint=tune.Checkpoint.from_directory(d))

    grid = tune.Tuner(f, run_config=run_config(tmp_path)).fit()
    r = grid[0]
    assert r.status == "TERMINATED", r.error
    kept = Path(r.checkpoint.path, "dataset.txt")
    assert not kept.is_symlink() and kept.read_text() == "data"


def test_a_checkpoint_that_cannot_be_kept_fails_its_trial_only(volley_shared, tmp_path):
    def f(config):
        import tempfile

        d = tempfile.mkdtemp()
        if config["x"] == 1:
            os.mkfifo(Path(d, "pipe"))  # a special file: no checkpoint copy takes it
        tune.report({"x": config["x"]}, checkpoint=tune.Checkpoint.from_directory(d))

    grid = tune.Tuner(
        f, param_space={"x": tune.grid_search([0, 1])}, run_config=run_config(tmp_path)
    ).fit()
    ok, bad = grid[0], grid[1]
    assert ok.status == "TERMINATED" and ok.checkpoint is not None
    assert bad.status == "ERROR"
    assert "pipe" in str(bad.error), bad.error


def test_trials_are_listed_by_name_in_the_state_api(volley_shared, tmp_path):
    import volley.state

    def f(config):
        tune.report({"x": config["x"]})

    tune.Tuner(
        f,
        param_space={"x": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(trial_name_creator=lambda t: f"quad_{t.config['x']}"),
        run_config=run_config(tmp_path),
    ).fit()
    wait_for(
        lambda: (
            {"tune:quad_0", "tune:quad_1"}
            <= {t.get("name") for t in volley.state.list_tasks(limit=10_000)}
        ),
        "the trials' tasks in volley.state.list_tasks()",
    )
    assert (tmp_path / "exp" / "quad_0" / "params.json").exists()


def test_running_trials_are_seen_by_name_in_the_dashboard_and_the_state_api(no_volley, tmp_path):
    import urllib.request

    import volley.state

    volley.init(num_cpus=2, dashboard=True, dashboard_port=0)
    base, token = volley.dashboard_url().split("?token=")
    go = tmp_path / "go"

    def held(config):
        while not go.exists():  # running until the test has seen both trials
            time.sleep(0.02)
        tune.report({"x": config["x"]})

    out: dict = {}

    def fit():
        out["grid"] = tune.Tuner(
            held,
            param_space={"x": tune.grid_search([0, 1])},
            tune_config=tune.TuneConfig(trial_name_creator=lambda t: f"quad_{t.config['x']}"),
            run_config=run_config(tmp_path),
        ).fit()

    def dashboard_rows() -> list[dict]:
        req = urllib.request.Request(
            base.rstrip("/") + "/api/v0/tasks?limit=1000&filter=state=RUNNING",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            return json.loads(r.read())["rows"]

    th = threading.Thread(target=fit)
    th.start()
    try:
        rows = wait_for(
            lambda: (
                {"tune:quad_0", "tune:quad_1"} <= {r["name"] for r in dashboard_rows()}
                and dashboard_rows()
            ),
            "the two running trials by name in the dashboard's /api/v0/tasks",
        )
        assert all(r["state"] == "RUNNING" and r["worker_pid"] for r in rows), rows
        listed = {t.get("name"): t.get("state") for t in volley.state.list_tasks(limit=10_000)}
        assert listed.get("tune:quad_0") == listed.get("tune:quad_1") == "RUNNING", listed
    finally:
        go.touch()
        th.join(timeout=WAIT_S)
    assert not th.is_alive(), "fit() did not end once the trials were let go"
    assert out["grid"].num_terminated == 2
    wait_for(
        lambda: (
            {t.get("name"): t.get("state") for t in volley.state.list_tasks(limit=10_000)}.get(
                "tune:quad_0"
            )
            == "FINISHED"
        ),
        "trial quad_0's task FINISHED in volley.state.list_tasks()",
    )


def test_restore_reruns_errored_trials_only_when_asked(volley_shared, tmp_path):
    def flaky(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["i"] + 1 if ckpt else 0
        for i in range(start, 3):
            tune.report({"i": i, "from": start}, checkpoint=tune.Checkpoint.from_dict({"i": i}))
            if config["x"] == 1 and i == 1 and not (tmp_path / "fixed").exists():
                raise ValueError("x == 1 fails at i == 1")

    space = {"x": tune.grid_search([0, 1])}
    grid = tune.Tuner(flaky, param_space=space, run_config=run_config(tmp_path)).fit()
    assert [r.status for r in grid] == ["TERMINATED", "ERROR"]
    exp = grid.experiment_path

    kept = tune.Tuner.restore(exp, flaky).fit()
    assert [r.status for r in kept] == ["TERMINATED", "ERROR"], "errored trials stay errored"
    assert "fails at i == 1" in kept[1].error.args[0]

    (tmp_path / "fixed").touch()
    resumed = tune.Tuner.restore(exp, flaky, resume_errored=True).fit()
    assert [r.status for r in resumed] == ["TERMINATED", "TERMINATED"]
    assert resumed[1].metrics["from"] == 2, "resumed from its checkpoint of i == 1"
    assert resumed[0].metrics["training_iteration"] == 3, "the finished trial did not run again"

    (tmp_path / "fixed").unlink()
    grid = tune.Tuner(flaky, param_space=space, run_config=run_config(tmp_path, name="b")).fit()
    assert grid[1].status == "ERROR"
    (tmp_path / "fixed").touch()
    restarted = tune.Tuner.restore(grid.experiment_path, flaky, restart_errored=True).fit()
    assert [r.status for r in restarted] == ["TERMINATED", "TERMINATED"]
    assert restarted[1].metrics["from"] == 0, "restarted from the start"
    assert restarted[1].metrics["training_iteration"] == 3


class Setups(tune.Trainable):
    def setup(self, config):
        self.pid = os.getpid()
        self.setups = getattr(self, "setups", 0) + 1
        self.reset = 0

    def reset_config(self, new_config):
        self.reset += 1
        return True

    def step(self):
        return {"pid": self.pid, "reset": self.reset, "x": self.config["x"]}


def test_reuse_actors_keeps_a_trainable_per_worker_and_resets_its_config(volley_shared, tmp_path):
    def run(reuse: bool, name: str):
        return tune.Tuner(
            Setups,
            param_space={"x": tune.grid_search(list(range(6)))},
            tune_config=tune.TuneConfig(reuse_actors=reuse),
            run_config=run_config(tmp_path, name=name, stop={"training_iteration": 1}),
        ).fit()

    grid = run(True, "reuse")
    assert sorted(r.metrics["x"] for r in grid) == list(range(6)), "each trial saw its config"
    pids = {r.metrics["pid"] for r in grid}
    # one setup per worker process; every later trial there was a reset_config
    assert sum(1 for r in grid if r.metrics["reset"] == 0) == len(pids) < 6
    for pid in pids:
        resets = sorted(r.metrics["reset"] for r in grid if r.metrics["pid"] == pid)
        assert resets == list(range(len(resets))), resets
    fresh = run(False, "fresh")
    assert all(r.metrics["reset"] == 0 for r in fresh)
