"""Do volley.tune's schedulers find as good a config as Ray Tune's, in as many iterations?

A seeded "noisy quadratic" with learning curves stands in for training: trial ``k`` of seed
``s`` has ``x`` and ``lr`` drawn from ``(s, k)`` alone; its loss starts at ``10 + floor(x)``
and each iteration closes ``rate(lr)`` of the gap to ``floor(x) = (x - 1.3)**2``; each
report adds Gaussian noise (sd 0.1) drawn from ``(s, k, iteration)``. The model's state (the
loss so far) is the checkpoint, so PBT can copy it. Every scheduler gets the same budget of
trial iterations (FIFO: ``budget / max_t`` whole trials; the early stoppers start new trials
while budget is left) and 4 trials run at a time. The best trial is the one with the best
last reported loss (Ray's ``get_best_result(scope="last")``); the figure of merit is that
trial's true, noise-free loss at its end (lower is better; 0 is perfect).

volley's side drives ``volley.tune.schedulers`` with a small simulated tuner (no volley
processes: the algorithms are what is measured). As both real tuners do, a trial's result at
``max_t`` (the run's stop criterion) ends it with ``on_trial_complete`` and is not shown to
the scheduler's ``on_trial_result`` (until 2026-12-06 it was, and PBT exploited trials on their
last result, which neither tuner lets it do). Ray's side runs ``ray.tune.Tuner`` with the
same curves as a ``Trainable`` and a stopper that ends the run at the same budget, in the
Python given by ``--ray-python`` (skipped when that Python has no Ray).

PBT counts its ``perturbation_interval`` (3) in ``training_iteration`` on both sides (Ray's
default unit is ``time_total_s``: seconds, which these trials never reach). Each row counts
the exploits that happened (volley: the scheduler's ``reset_trial`` calls; Ray: a callback
that sees a trial's config change between two of its results) and the trials whose config is
no longer their own draw. ``--ray-max-pending N`` sets Ray's ``TUNE_MAX_PENDING_TRIALS_PG``
(how many trials Ray makes ahead; 200 by default, where volley's side keeps ``--slots``): with
``N = 4`` Ray's HyperBand has as few trials made ahead as volley's side.
``--ray-reuse-actors`` (Ray's ``reuse_actors=True``) changes no rule of the scheduler, only Ray's
time (and so the order in which results come in).

    PYTHONPATH=python python benchmarks/tune_schedulers.py --seeds 10 \\
        --ray-python /tmp/ray-bench/bin/python --ray-schedulers PBT --ray-reuse-actors
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

X_BEST = 1.3
NOISE = 0.1


def draw(seed: int, k: int) -> dict:
    """Trial ``k``'s config for ``seed``: the same for every scheduler and both systems."""
    rng = random.Random(f"config-{seed}-{k}")
    return {"k": k, "x": rng.uniform(-5.0, 5.0), "lr": math.exp(rng.uniform(math.log(1e-3), 0))}


def floor_of(config: dict) -> float:
    return (config["x"] - X_BEST) ** 2


def rate_of(config: dict) -> float:
    """Best near lr = 0.03: 0.3 of the gap closed per iteration; far off, almost nothing."""
    return 0.3 * math.exp(-((math.log10(config["lr"]) + 1.5) ** 2))


def step(loss: float, config: dict) -> float:
    """One iteration of "training": the true (noise-free) loss after it."""
    floor = floor_of(config)
    return loss - rate_of(config) * (loss - floor)


def start_loss(config: dict) -> float:
    return 10.0 + floor_of(config)


def noisy(loss: float, seed: int, k: int, it: int) -> float:
    return loss + random.Random(f"noise-{seed}-{k}-{it}").gauss(0.0, NOISE)


# --- volley: the schedulers driven by a simulated tuner ----------------------------------


def run_volley(name: str, seed: int, budget: int, max_t: int, slots: int, pop: int) -> dict:
    from volley import tune
    from volley.tune._trial import Trial
    from volley.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    if name == "FIFO":
        sched: Any = FIFOScheduler()
    elif name == "ASHA":
        sched = ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=3)
    elif name == "HyperBand":
        sched = HyperBandScheduler(max_t=max_t, reduction_factor=3)
    elif name == "MedianStopping":
        sched = MedianStoppingRule(time_attr="training_iteration", grace_period=3)
    elif name == "PBT":
        sched = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=3,
            hyperparam_mutations={"x": tune.uniform(-5.0, 5.0), "lr": tune.loguniform(1e-3, 1)},
            seed=seed,
        )
    else:
        raise ValueError(name)
    sched.set_search_properties("loss", "min")

    class Sim:
        """The tuner's view for the scheduler, and the trials' simulated state."""

        def __init__(self) -> None:
            self.trials: list[Trial] = []
            self.loss: dict[str, float] = {}  # true loss of the running model
            self.saved: dict[str, float] = {}  # the checkpoints: true loss at the save
            self.exploits = 0

        def get_trials(self) -> list[Trial]:
            return self.trials

        def reset_trial(self, trial: Trial, new_config: dict, checkpoint: Any) -> None:
            trial.config = {**new_config, "k": trial.config["k"]}
            self.loss[trial.trial_id] = self.saved[checkpoint]
            self.exploits += 1

        def stop_trial(self, trial: Trial) -> None:
            trial.status = Trial.TERMINATED
            sched.on_trial_remove(self, trial)

    sim = Sim()
    n_made = 0
    fixed_population = name in ("PBT", "FIFO")
    max_trials = pop if fixed_population else 10**6

    def add() -> None:
        nonlocal n_made
        t = Trial(f"t{n_made}", draw(seed, n_made))
        n_made += 1
        sim.trials.append(t)
        sim.loss[t.trial_id] = start_loss(t.config)
        sched.on_trial_add(sim, t)

    used = 0
    running: list[Trial] = []
    while used < budget:
        # Keep a few trials made ahead (as Ray does), so brackets fill before they halve.
        pending = sum(1 for t in sim.trials if t.status == Trial.PENDING)
        while pending < slots and n_made < max_trials:
            add()
            pending += 1
        while len(running) < slots:
            t = sched.choose_trial_to_run(sim)
            if t is None:
                break
            t.status = Trial.RUNNING
            running.append(t)
        if not running:
            break
        t = running.pop(0)
        tid = t.trial_id
        sim.loss[tid] = step(sim.loss[tid], t.config)
        used += 1
        it = t.training_iteration + 1
        result = {"loss": noisy(sim.loss[tid], seed, t.config["k"], it), "training_iteration": it}
        ckpt = f"{tid}@{it}"
        sim.saved[ckpt] = sim.loss[tid]
        t.checkpoint = ckpt
        t.last_result = result
        t.history.append(result)
        if it >= max_t:
            # The run's stop criterion: as in both tuners (volley's and Ray's), the trial
            # ends on this result and the scheduler is told so (on_trial_complete) without
            # deciding on it (no on_trial_result: PBT must not exploit a trial that ends).
            t.status = Trial.TERMINATED
            sched.on_trial_complete(sim, t, result)
            continue
        decision = sched.on_trial_result(sim, t, result)
        if decision == "STOP":
            t.status = Trial.TERMINATED
            sched.on_trial_remove(sim, t)
        elif decision == "PAUSE":
            t.status = Trial.PAUSED
        else:
            running.append(t)
    reported = [t for t in sim.trials if t.last_result]
    best = min(reported, key=lambda t: t.last_result["loss"])
    return {
        "system": "volley",
        "scheduler": name,
        "seed": seed,
        "iterations": used,
        "trials": len(reported),
        "best_config": {"x": best.config["x"], "lr": best.config["lr"]},
        "best_iteration": best.training_iteration,
        "true_loss": sim.loss[best.trial_id],
        "changed_configs": sum(
            1 for t in sim.trials if t.config["x"] != draw(seed, t.config["k"])["x"]
        ),
        "exploits": sim.exploits,
    }


# --- Ray Tune: the same curves as a Trainable ---------------------------------------------


def run_ray(
    name: str, seed: int, budget: int, max_t: int, slots: int, pop: int, reuse: bool = False
) -> dict:
    from ray import tune as rt
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )
    from ray.tune.stopper import Stopper

    class Curve(rt.Trainable):
        """The curve of trial ``k``. After an exploit Ray gives the trial a copy of the cloned
        trial's config (``k`` included) and checkpoint; the trial keeps drawing its noise from
        its own ``k`` (Ray's trial ids end in the trial's number, which is ``k``: the grid's
        order), as volley's side does."""

        def setup(self, config: dict) -> None:
            self.own_k = int(self.trial_id.rsplit("_", 1)[-1])
            self.loss = start_loss(config)

        def step(self) -> dict:
            self.loss = step(self.loss, self.config)
            it = self.iteration + 1
            return {
                "loss": noisy(self.loss, seed, self.own_k, it),
                "true_loss": self.loss,
                "own_k": self.own_k,
            }

        def save_checkpoint(self, checkpoint_dir: str) -> dict:
            return {"loss": self.loss}

        def load_checkpoint(self, checkpoint: dict) -> None:
            self.loss = checkpoint["loss"]

        def reset_config(self, new_config: dict) -> bool:
            # A reused actor: a fresh trial starts its curve, an exploited one then loads
            # the cloned checkpoint.
            self.own_k = int(self.trial_id.rsplit("_", 1)[-1])
            self.config = new_config
            self.loss = start_loss(new_config)
            return True

    class Exploits(rt.Callback):
        """Counts the exploits that happened: a trial whose config changed between two of its
        results (Ray's PBT copies the cloned trial's config, perturbed, into the trial)."""

        def __init__(self) -> None:
            self.seen: dict[str, tuple] = {}
            self.count = 0

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
            now = (trial.config["x"], trial.config["lr"])
            if trial.trial_id in self.seen and self.seen[trial.trial_id] != now:
                self.count += 1
            self.seen[trial.trial_id] = now

    class Budget(Stopper):
        def __init__(self) -> None:
            self.used = 0

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.used += 1
            return result["training_iteration"] >= max_t

        def stop_all(self) -> bool:
            return self.used >= budget

    fixed_population = name in ("PBT", "FIFO")
    n = pop if fixed_population else budget  # each trial runs at least one iteration
    space = {
        "k": rt.grid_search(list(range(n))),
        "x": rt.sample_from(lambda config: draw(seed, config["k"])["x"]),
        "lr": rt.sample_from(lambda config: draw(seed, config["k"])["lr"]),
    }
    if name == "FIFO":
        sched: Any = FIFOScheduler()
    elif name == "ASHA":
        sched = ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=3)
    elif name == "HyperBand":
        sched = HyperBandScheduler(max_t=max_t, reduction_factor=3)
    elif name == "MedianStopping":
        sched = MedianStoppingRule(time_attr="training_iteration", grace_period=3)
    elif name == "PBT":
        # Ray's PBT counts its interval in `time_total_s` unless told otherwise: with the
        # default, an interval of 3 is 3 seconds of a trial's time, which these trials (a few
        # ms per step) never reach, and Ray's PBT never exploits.
        sched = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=3,
            hyperparam_mutations={"x": rt.uniform(-5.0, 5.0), "lr": rt.loguniform(1e-3, 1)},
            synch=False,
        )
    else:
        raise ValueError(name)
    stopper = Budget()
    exploits = Exploits()
    with tempfile.TemporaryDirectory() as tmp:
        tuner = rt.Tuner(
            Curve,
            param_space=space,
            # No max_concurrent_trials: ray.init(num_cpus=slots) runs `slots` trials at once,
            # and Ray makes trials ahead, as its HyperBand and PBT expect (with the limit,
            # Ray's HyperBand never fills a bracket and its PBT never exploits here).
            tune_config=rt.TuneConfig(
                metric="loss", mode="min", scheduler=sched, reuse_actors=reuse
            ),
            run_config=rt.RunConfig(
                storage_path=tmp,
                stop=stopper,
                verbose=0,
                name=f"{name}-{seed}",
                callbacks=[exploits],
            ),
        )
        grid = tuner.fit()
        best = grid.get_best_result(metric="loss", mode="min", scope="last")
        trials = sum(1 for r in grid if r.metrics and "loss" in r.metrics)  # that reported
        # Trials whose config is no longer their own draw: PBT exploited them.
        changed = sum(
            1
            for r in grid
            # (a trial Ray's HyperBand ended while paused may have metrics without own_k:
            # it was never exploited, its k is its own)
            if r.config
            and r.config["x"] != draw(seed, (r.metrics or {}).get("own_k", r.config["k"]))["x"]
        )
    return {
        "system": "ray",
        "scheduler": name,
        "seed": seed,
        "iterations": stopper.used,
        "trials": trials,
        "best_config": {"x": best.config["x"], "lr": best.config["lr"]},
        "best_iteration": best.metrics["training_iteration"],
        "true_loss": best.metrics["true_loss"],
        "changed_configs": changed,
        "exploits": exploits.count,
    }


# --- the run --------------------------------------------------------------------------------

SCHEDULERS = ["FIFO", "ASHA", "HyperBand", "MedianStopping", "PBT"]


def ray_side(args: argparse.Namespace) -> None:
    import ray

    ray.init(num_cpus=args.slots, include_dashboard=False, log_to_driver=False)
    for seed in range(args.seeds):
        for name in args.ray_schedulers.split(","):
            t0 = time.perf_counter()
            row = run_ray(
                name, seed, args.budget, args.max_t, args.slots, args.pop, args.ray_reuse_actors
            )
            row["wall_s"] = time.perf_counter() - t0
            print("ROW " + json.dumps(row), flush=True)
    ray.shutdown()


def summarize(rows: list[dict]) -> None:
    print()
    print(
        "| system | scheduler | median true loss of the best trial | worst of seeds |"
        " mean iterations | mean trials | mean exploits | median best x | median best lr |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for system in ("volley", "ray"):
        for name in SCHEDULERS:
            mine = [r for r in rows if r["system"] == system and r["scheduler"] == name]
            if not mine:
                continue
            losses = [r["true_loss"] for r in mine]
            print(
                f"| {system} | {name} | {statistics.median(losses):.4f} | {max(losses):.4f} | "
                f"{statistics.mean(r['iterations'] for r in mine):.0f} | "
                f"{statistics.mean(r['trials'] for r in mine):.0f} | "
                f"{statistics.mean(r.get('exploits', 0) for r in mine):.1f} | "
                f"{statistics.median(r['best_config']['x'] for r in mine):.3f} | "
                f"{statistics.median(r['best_config']['lr'] for r in mine):.4f} |"
            )
    print()
    print("Ratio (ray's median true loss / volley's; > 1: volley's scheduler found better):")
    for name in SCHEDULERS:
        v = [r["true_loss"] for r in rows if r["system"] == "volley" and r["scheduler"] == name]
        r_ = [r["true_loss"] for r in rows if r["system"] == "ray" and r["scheduler"] == name]
        if v and r_:
            ratio = statistics.median(r_) / max(statistics.median(v), 1e-12)
            print(f"  {name}: {ratio:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=540, help="trial iterations per run")
    p.add_argument("--max-t", type=int, default=27)
    p.add_argument("--slots", type=int, default=4, help="trials running at once")
    p.add_argument("--pop", type=int, default=20, help="FIFO's and PBT's number of trials")
    p.add_argument(
        "--ray-python",
        default=os.environ.get("VOLLEY_BENCH_RAY_PYTHON")
        or (sys.executable if importlib.util.find_spec("ray") else None)
        or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ".venv-bench",
            "bin",
            "python",
        ),  # fmt: skip
        help="a Python with ray[tune] (default: $VOLLEY_BENCH_RAY_PYTHON, this one if it has "
        "Ray, as under `make bench`, else the repository's .venv-bench)",
    )
    p.add_argument("--ray-schedulers", default="FIFO,ASHA,HyperBand,MedianStopping,PBT")
    p.add_argument(
        "--ray-max-pending",
        type=int,
        help="Ray's TUNE_MAX_PENDING_TRIALS_PG: how many trials Ray makes ahead (Ray's default "
        "is 200 for this searcher; volley's side keeps --slots made ahead)",
    )
    p.add_argument(
        "--ray-reuse-actors",
        action="store_true",
        help="Ray's TuneConfig(reuse_actors=True), which Ray advises for PBT: an exploit "
        "resets the trial's actor instead of starting a new one (same rules, less time)",
    )
    p.add_argument("--ray-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ray_only:
        ray_side(args)
        return
    if args.pop * args.max_t != args.budget:
        print(
            f"note: FIFO/PBT use pop * max_t = {args.pop * args.max_t} iterations, "
            f"the others a budget of {args.budget}"
        )
    print(f"load average before: {os.getloadavg()}")
    rows: list[dict] = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for name in SCHEDULERS:
            row = run_volley(name, seed, args.budget, args.max_t, args.slots, args.pop)
            rows.append(row)
            print(
                f"volley {name:>14} seed {seed}: true loss {row['true_loss']:.4f} "
                f"({row['trials']} trials, {row['iterations']} iterations, "
                f"{row['changed_configs']} configs changed, {row['exploits']} exploits)",
                flush=True,
            )
    print(f"volley side: {time.perf_counter() - t0:.2f} s")
    has_ray = (
        os.path.exists(args.ray_python)
        and subprocess.run(
            [args.ray_python, "-c", "import ray.tune"], capture_output=True
        ).returncode
        == 0
    )
    if has_ray:
        t0 = time.perf_counter()
        cmd = [
            args.ray_python,
            __file__,
            "--ray-only",
            "--seeds",
            str(args.seeds),
            "--budget",
            str(args.budget),
            "--max-t",
            str(args.max_t),
            "--slots",
            str(args.slots),
            "--pop",
            str(args.pop),
            "--ray-schedulers",
            args.ray_schedulers,
            *(["--ray-reuse-actors"] if args.ray_reuse_actors else []),
        ]
        # Ray's own logging goes to a private file (mode 0600, made exclusively).
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w", prefix="tune_schedulers-ray-", suffix=".log", delete=False
        )
        env = {**os.environ, "PYTHONPATH": ""}
        if args.ray_max_pending:
            env["TUNE_MAX_PENDING_TRIALS_PG"] = str(args.ray_max_pending)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                rows.append(row)
                print(
                    f"ray    {row['scheduler']:>14} seed {row['seed']}: true loss "
                    f"{row['true_loss']:.4f} ({row['trials']} trials, {row['iterations']} "
                    f"iterations, {row['changed_configs']} configs changed, "
                    f"{row['exploits']} exploits, {row['wall_s']:.1f} s)",
                    flush=True,
                )
        if proc.wait() != 0:
            print(f"ray side exited with {proc.returncode}; its log: {log.name}")
        log.close()
        print(f"ray side: {time.perf_counter() - t0:.1f} s")
    else:
        print(f"no Ray in {args.ray_python}: volley only")
    print(f"load average after: {os.getloadavg()}")
    summarize(rows)


if __name__ == "__main__":
    main()
