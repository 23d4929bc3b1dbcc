"""volley.tune's schedulers driving real trials on volley (the Tuner, tasks, checkpoints): ASHA
stops the worse trials early, HyperBand pauses and drops trials through the tuner, population
based training clones a better trial's checkpoint and config."""

from __future__ import annotations

import json
import pickle
import tempfile
import time
from pathlib import Path

from volley import sync, tune
from volley.tune.schedulers import ASHAScheduler, HyperBandScheduler, PopulationBasedTraining
from volley.tune.search import BasicVariantGenerator


def run_config(tmp_path: Path, name: str) -> tune.RunConfig:
    return tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0)


def curve(config):
    """A learning curve: the loss falls towards (x - 3)^2 as iterations go. A paused trial
    goes on from its checkpoint (were it to start over, its curve would too, and the best
    trial's last loss would depend on when it was paused)."""
    x = config["x"]
    ckpt = tune.get_checkpoint()
    for i in range(ckpt.to_dict()["i"] + 1 if ckpt else 1, 17):
        tune.report(
            {"loss": (x - 3) ** 2 + 10.0 / i}, checkpoint=tune.Checkpoint.from_dict({"i": i})
        )


def test_asha_stops_the_worse_trials_early_and_keeps_the_best_to_the_end(volley_shared, tmp_path):
    asha = ASHAScheduler(max_t=16, grace_period=2, reduction_factor=2)
    grid = tune.Tuner(
        curve,
        param_space={"x": tune.grid_search([0, 1, 2, 3, 4, 5, 6, 7])},
        tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=asha),
        run_config=run_config(tmp_path, "asha"),
    ).fit()
    iters = {r.config["x"]: r.metrics["training_iteration"] for r in grid}
    assert grid.num_errors == 0
    assert iters[3] == 16, iters
    # Asynchronous: the first trials meet few results at their rungs and may go on; the later
    # ones meet the earlier results there, and the worse are stopped.
    stopped = [x for x, n in iters.items() if n < 16]
    assert len(stopped) >= 2, f"ASHA stopped too few: {iters}"
    assert all(abs(x - 3) >= 2 for x in stopped), f"ASHA stopped a good trial: {iters}"
    assert grid.get_best_result().config["x"] == 3


def test_hyperband_pauses_and_drops_trials_through_the_tuner(volley_shared, tmp_path):
    hb = HyperBandScheduler(max_t=8, reduction_factor=2)
    grid = tune.Tuner(
        curve,
        param_space={"x": tune.grid_search(list(range(8)))},
        tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=hb),
        run_config=run_config(tmp_path, "hb"),
    ).fit()
    assert grid.num_errors == 0
    assert all(r.metrics["done"] for r in grid), "a trial was left paused"
    iters = {r.config["x"]: r.metrics["training_iteration"] for r in grid}
    assert min(iters.values()) < 8 <= max(iters.values()), iters
    assert grid.get_best_result().config["x"] == 3


def saving(config, barrier=None):
    """Reports with a checkpoint each step; a restored trial goes on from its checkpoint's
    step and remembers whose checkpoint it was."""
    start, lineage = 0, []
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            state = json.loads(Path(d, "state.json").read_text())
        start, lineage = state["step"], state["lineage"]
    me = tune.get_context().get_trial_id()
    if ck is None:
        barrier.wait(timeout=60)  # the population starts together, as PBT needs
    for step in range(start + 1, 13):
        with tempfile.TemporaryDirectory() as d:
            state = {"step": step, "lineage": lineage + [me]}
            Path(d, "state.json").write_text(json.dumps(state))
            score = config["lr"] * step
            # A step takes a moment, as training does: the tuner decides on each result
            # (PBT's exploit) while the trial is still running.
            time.sleep(0.05)
            tune.report(
                {"score": score, "lineage": ",".join(lineage + [me])},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def test_pbt_clones_a_better_trials_checkpoint_and_config(volley_shared, tmp_path):
    pbt = PopulationBasedTraining(
        perturbation_interval=3,
        hyperparam_mutations={"lr": tune.uniform(0.001, 1.0)},
        quantile_fraction=0.5,
        seed=1,
        log_config=False,
    )
    # A population: the four trials run at once (half a CPU each) and meet at a barrier.
    barrier = sync.Barrier(4)
    grid = tune.Tuner(
        tune.with_resources(tune.with_parameters(saving, barrier=barrier), {"cpu": 0.5}),
        param_space={"lr": tune.grid_search([0.001, 0.002, 0.5, 0.9])},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
        run_config=run_config(tmp_path, "pbt"),
    ).fit()
    assert grid.num_errors == 0
    # A cloned trial's results carry the trials whose checkpoints it grew from: the donor's
    # checkpoint was the one loaded.
    cloned = [r for r in grid if len(set(r.metrics["lineage"].split(","))) > 1]
    assert cloned, [r.metrics["lineage"] for r in grid]
    # The tuner used the PBT object given: its log shows the exploits made.
    assert {e["trial_id"] for e in pbt.policy_log} >= {r.trial_id for r in cloned}
    for r in cloned:
        assert r.config["lr"] > 0.1, ("an exploited trial kept its bad lr", r.config, r.metrics)
    best = grid.get_best_result()
    assert best.metrics["score"] >= 0.9 * 12 * 0.8 - 1e-9


def grow(config):
    ck = tune.get_checkpoint()
    start = ck.to_dict()["step"] + 1 if ck else 1
    for step in range(start, 5):
        tune.report(
            {"score": config["lr"] * step}, checkpoint=tune.Checkpoint.from_dict({"step": step})
        )


def test_the_user_s_scheduler_and_searcher_are_the_ones_used(volley_shared, tmp_path):
    # synch: both trials meet at step 2, and the worse one (lr 0.1) takes the better's.
    pbt = PopulationBasedTraining(
        perturbation_interval=2,
        synch=True,
        quantile_fraction=0.5,
        hyperparam_mutations={"lr": [0.1, 0.2, 0.3]},
        seed=0,
        log_config=False,
    )
    searcher = BasicVariantGenerator()
    grid = tune.Tuner(
        grow,
        param_space={"lr": tune.grid_search([0.1, 0.3])},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt, search_alg=searcher),
        run_config=run_config(tmp_path, "given"),
    ).fit()
    assert grid.num_terminated == 2
    exploits = [(e["trial_id"], e["from_trial_id"]) for e in pbt.policy_log]
    assert exploits and set(exploits) == {("00000", "00001")}, pbt.policy_log
    assert pbt.get_state()["num_perturbations"] == len(exploits)
    assert searcher.get_state() != BasicVariantGenerator().get_state(), "searcher not used"

    # tuner.pkl keeps them as they were given, and a restore goes on from the saved state.
    with open(Path(grid.experiment_path) / "tuner.pkl", "rb") as fh:
        kept = pickle.load(fh)["tune_config"].scheduler
    assert kept.policy_log == [] and kept is not pbt
    restored = tune.Tuner.restore(grid.experiment_path, grow)
    again = restored.fit()
    assert [r.metrics["training_iteration"] for r in again] == [4, 4], "none ran again"
    used = restored._tune_config.scheduler
    assert len(used.policy_log) == len(exploits), "the restored scheduler took the saved state"
