"""volley.tune against Optuna (``n_jobs=2``) and Ray Tune on the same work, in one run.

Usage: python benchmarks/tune.py [--runs 3] [--sleep-trials 20] [--ray-python PATH] [--no-write]
       python benchmarks/tune.py --asha [--asha-trials 200] [--runs 3] [--ray-python PATH]

Rows (each the median of ``--runs`` runs, the systems alternated within each run):

- ``100 trivial trials``: a trainable that reports once; seconds from ``fit()`` (Optuna:
  ``study.optimize``) to its return, after ``init``.
- ``1000 trials x 10 reports``: results handled per second, and the CPU seconds the driver
  process used (volley's driver holds its embedded node's threads too; Optuna runs its trials
  in the driver's threads, so its CPU is all the work). Ray runs ``--ray-trials`` (100) trials
  of 10 reports, not 1000: at its rate 1000 take minutes here.
- ``N trials x 10 x 0.1 s sleep``: ``--sleep-trials`` trials that sleep 0.1 s per iteration
  for 10 iterations, 2 at once (2 CPUs); the time against the ideal (iterations run x 0.1 s
  / 2). FIFO (every trial runs its 10 iterations) so the three do the same work.
- ``--asha``: only the issue's ASHA row, printed (not written: paste it into the results with
  its notes). ``--asha-trials`` (200) trials that sleep 0.1 s per iteration for 10 iterations
  and report ``score = x * (i + 1)`` (``x`` uniform in [0, 1], maximised), under ASHA with the
  same settings on each side (``max_t=10, grace_period=1, reduction_factor=3``: rungs at 1, 3
  and 9 iterations), 2 trials at once. The ideal is the work ASHA let run (the iterations the
  trials reported, summed) x 0.1 s / 2 CPUs; the overhead is the wall time over it. Optuna
  runs the same trials with its ``SuccessiveHalvingPruner`` (Optuna's asynchronous
  successive halving; ``min_resource=1, reduction_factor=3``) and ``n_jobs=2``.

Ray Tune runs in a subprocess with ``--ray-python`` (an interpreter with ``ray[tune]``; by
default ``VOLLEY_BENCH_RAY_PYTHON``, else this interpreter if it has Ray, as ``make bench``'s
venv does, else the bench venv's), skipped where there is none. Writes
``benchmarks/RESULTS-tune.md`` unless ``--no-write`` (or ``--asha``), keeping the sections of
the file from its first ``## `` heading on (the ASHA row, notes written by hand).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))  # run as a script: make the `benchmarks` package importable

from benchmarks import common  # noqa: E402

#: Where Ray Tune is looked for after --ray-python and $VOLLEY_BENCH_RAY_PYTHON: this
#: interpreter (`make bench`'s venv installs ray[tune]), then the bench venv's.
RAY_FALLBACK = (sys.executable, str(ROOT / ".venv-bench" / "bin" / "python"))

import volley  # noqa: E402
from volley import tune  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- volley


def v_trivial(config):
    return {"score": config["x"]}


def v_reports(config):
    for i in range(10):
        tune.report({"score": config["x"] * i})


def v_sleep(config):
    for i in range(10):
        time.sleep(0.1)
        tune.report({"score": config["x"] * i})


ASHA_MAX_T, ASHA_GRACE, ASHA_RF = 10, 1, 3


def v_asha(config):
    for i in range(ASHA_MAX_T):
        time.sleep(0.1)
        tune.report({"score": config["x"] * (i + 1)})


def volley_run(fn, n: int, store: str, asha: bool = False) -> tuple[float, float, int]:
    extra: dict = {}
    if asha:
        extra = dict(
            metric="score",
            mode="max",
            scheduler=tune.schedulers.ASHAScheduler(
                max_t=ASHA_MAX_T, grace_period=ASHA_GRACE, reduction_factor=ASHA_RF
            ),
        )
    c0, t0 = cpu_s(), time.perf_counter()
    grid = tune.Tuner(
        fn,
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(num_samples=n, **extra),
        run_config=tune.RunConfig(storage_path=store, verbose=0),
    ).fit()
    dt, dc = time.perf_counter() - t0, cpu_s() - c0
    assert grid.num_terminated == n, grid.errors[:3]
    return dt, dc, sum(r.metrics["training_iteration"] for r in grid)


# ---------------------------------------------------------------------------------- optuna


def optuna_run(kind: str, n: int) -> tuple[float, float, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    iters = {"n": 0}

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        if kind == "trivial":
            iters["n"] += 1
            return x
        for i in range(10):
            if kind == "sleep":
                time.sleep(0.1)
            trial.report(x * i, i)
            iters["n"] += 1
        return x

    def asha_objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for i in range(ASHA_MAX_T):
            time.sleep(0.1)
            trial.report(x * (i + 1), i + 1)
            iters["n"] += 1
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x * ASHA_MAX_T

    if kind == "asha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=ASHA_GRACE, reduction_factor=ASHA_RF
        )
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner
        )
        objective = asha_objective
    else:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    c0, t0 = cpu_s(), time.perf_counter()
    study.optimize(objective, n_trials=n, n_jobs=2)
    return time.perf_counter() - t0, cpu_s() - c0, iters["n"]


# ------------------------------------------------------------------------------------- ray

RAY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tempfile, time
    import ray
    from ray import tune
    args = json.loads(sys.argv[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def trivial(config):
        return {"score": config["x"]}

    def reports(config):
        for i in range(10):
            tune.report({"score": config["x"] * i})

    def sleep(config):
        for i in range(10):
            time.sleep(0.1)
            tune.report({"score": config["x"] * i})

    def asha(config):
        for i in range(10):
            time.sleep(0.1)
            tune.report({"score": config["x"] * (i + 1)})

    out = {}
    for name, fn in (("trivial", trivial), ("reports", reports), ("sleep", sleep),
                     ("asha", asha)):
        n = args.get(name, 0)
        if not n:
            continue
        extra = {}
        if name == "asha":
            from ray.tune.schedulers import ASHAScheduler
            extra = dict(metric="score", mode="max", scheduler=ASHAScheduler(
                max_t=10, grace_period=1, reduction_factor=3))
        c0, t0 = cpu(), time.perf_counter()
        rc = tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0)
        grid = tune.Tuner(fn, param_space={"x": tune.uniform(0, 1)},
                          tune_config=tune.TuneConfig(num_samples=n, **extra),
                          run_config=rc).fit()
        dt, dc = time.perf_counter() - t0, cpu() - c0
        its = sum(r.metrics.get("training_iteration", 0) for r in grid)
        out[name] = [dt, dc, its]
    print("RAY " + json.dumps(out))
    """
)


def ray_run(py: str, sizes: dict) -> dict | None:
    p = subprocess.run(
        [py, "-c", RAY_SCRIPT, json.dumps(sizes)], capture_output=True, text=True, timeout=1800
    )
    for line in p.stdout.splitlines():
        if line.startswith("RAY "):
            return json.loads(line[4:])
    print("ray run failed:", p.stderr[-2000:], file=sys.stderr)
    return None


# ------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sleep-trials", type=int, default=20)
    ap.add_argument("--ray-trials", type=int, default=100)
    ap.add_argument("--ray-python")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--asha", action="store_true", help="only the ASHA row (printed)")
    ap.add_argument("--asha-trials", type=int, default=200)
    ap.add_argument("--systems", default="volley,optuna,ray", help="for --asha")
    args = ap.parse_args()
    if args.asha:
        asha_main(args)
        return

    rpy = common.ray_python(args.ray_python, "ray.tune", *RAY_FALLBACK)
    volley.init(num_cpus=2)
    store = tempfile.mkdtemp(prefix="tune_bench_")
    rows: dict[str, dict[str, list]] = {}

    def add(row: str, system: str, value: list) -> None:
        rows.setdefault(row, {}).setdefault(system, []).append(value)

    v_sleep_n = args.sleep_trials
    volley_run(v_trivial, 10, store)  # warm the workers
    for run in range(args.runs):
        order = ["volley", "optuna", "ray"]
        order = order[run % 3 :] + order[: run % 3]
        for system in order:
            if system == "volley":
                add("trivial", "volley", list(volley_run(v_trivial, 100, store)))
                add("reports", "volley", list(volley_run(v_reports, 1000, store)) + [1000])
                add("sleep", "volley", list(volley_run(v_sleep, v_sleep_n, store)))
            elif system == "optuna":
                add("trivial", "optuna", list(optuna_run("trivial", 100)))
                add("reports", "optuna", list(optuna_run("reports", 1000)) + [1000])
                add("sleep", "optuna", list(optuna_run("sleep", v_sleep_n)))
            elif rpy:
                sizes = {"trivial": 100, "reports": args.ray_trials, "sleep": v_sleep_n}
                got = ray_run(rpy, sizes)
                if got:
                    add("trivial", "ray", got["trivial"])
                    add("reports", "ray", got["reports"] + [args.ray_trials])
                    add("sleep", "ray", got["sleep"])
            print(f"run {run + 1}/{args.runs} {system} done", file=sys.stderr)
    shutil.rmtree(store, ignore_errors=True)

    def med(xs: list, i: int) -> float:
        return statistics.median(x[i] for x in xs)

    lines = []
    lines.append("| row | system | value | ratio (system / volley) |")
    lines.append("|---|---|---|---|")
    base = med(rows["trivial"]["volley"], 0)
    for s, xs in rows["trivial"].items():
        v = med(xs, 0)
        lines.append(f"| 100 trivial trials, s after init | {s} | {v:.3f} s | {v / base:.1f}x |")
    vrate = 10 * 1000 / med(rows["reports"]["volley"], 0)
    for s, xs in rows["reports"].items():
        n = xs[0][3]
        rate = 10 * n / med(xs, 0)
        cpu_per = med(xs, 1) / (10 * n) * 1e6
        lines.append(
            f"| {n} trials x 10 reports: results/s, driver CPU per result | {s} | "
            f"{rate:,.0f}/s, {cpu_per:.0f} µs | {rate / vrate:.2f}x the rate |"
        )
    vover = None
    for s, xs in rows["sleep"].items():
        dt, its = med(xs, 0), med(xs, 2)
        ideal = its * 0.1 / 2
        over = dt / ideal - 1
        vover = over if s == "volley" else vover
        lines.append(
            f"| {v_sleep_n} trials x 10 x 0.1 s on 2 CPUs: time vs ideal | {s} | "
            f"{dt:.2f} s vs {ideal:.2f} s: {100 * over:+.1f}% | |"
        )
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    load = os.getloadavg()
    text = f"""# volley.tune against Optuna and Ray Tune

`{" ".join(["python", "benchmarks/tune.py", *sys.argv[1:]])}`, {datetime.date.today()},
{args.runs} runs (medians), systems alternated within each run. Load average at the end:
{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 cores shared with other sessions: the
machine is noisy, read ratios, not absolute figures.
Ray: {"ray " + rpy if rpy else "not installed"}.

{table}

How to read it: see the docstring of `benchmarks/tune.py` (what each row times, what "driver
CPU" holds for each system).
"""
    out = ROOT / "benchmarks" / "RESULTS-tune.md"
    # Sections written by hand after the generated part (from the first "## " heading: the
    # ASHA row of --asha, notes) are kept.
    old = out.read_text() if out.exists() else ""
    kept = old[old.index("\n## ") :] if "\n## " in old else ""
    out.write_text(text + kept)


def asha_main(args: argparse.Namespace) -> None:
    """The ASHA row: the systems alternated within each run, medians of ``--runs``."""
    systems = [x for x in args.systems.split(",") if x]
    rpy = None
    if "ray" in systems:
        rpy = common.ray_python(args.ray_python, "ray.tune", *RAY_FALLBACK)
    if "ray" in systems and not rpy:
        print("no Python with ray.tune: Ray skipped", file=sys.stderr)
        systems.remove("ray")
    n = args.asha_trials
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    volley.init(num_cpus=2)
    store = tempfile.mkdtemp(prefix="tune_bench_")
    volley_run(v_trivial, 10, store)  # warm the workers
    runs: dict[str, list] = {s: [] for s in systems}
    for run in range(args.runs):
        order = systems[run % len(systems) :] + systems[: run % len(systems)]
        for system in order:
            if system == "volley":
                got = list(volley_run(v_asha, n, store, asha=True))
            elif system == "optuna":
                got = list(optuna_run("asha", n))
            else:
                r = ray_run(rpy, {"asha": n})
                if r is None:
                    continue
                got = r["asha"]
            runs[system].append(got)
            dt, _, its = got
            print(
                f"run {run + 1}/{args.runs} {system}: {dt:.2f} s, {its} iterations "
                f"(ideal {its * 0.1 / 2:.2f} s, {100 * (dt / (its * 0.1 / 2) - 1):+.1f}%)",
                file=sys.stderr,
                flush=True,
            )
    shutil.rmtree(store, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print("| system | wall s | iterations run | ideal s | overhead | per run |")
    print("|---|---|---|---|---|---|")
    for system, xs in runs.items():
        if not xs:
            continue
        overs = [x[0] / (x[2] * 0.1 / 2) - 1 for x in xs]
        per = ", ".join(f"{100 * o:+.1f}%" for o in overs)
        dt, its = statistics.median(x[0] for x in xs), statistics.median(x[2] for x in xs)
        print(
            f"| {system} | {dt:.2f} | {its:.0f} | {its * 0.1 / 2:.2f} | "
            f"{100 * statistics.median(overs):+.1f}% | {per} |"
        )


if __name__ == "__main__":
    main()
