"""Optuna's `study.optimize` on a trivial objective: trials per second with volley's in-cluster
storage (`volley.tune.optuna_storage()`, trials run by `optuna_optimize` as volley tasks)
against Optuna's own `n_jobs=2` threads with its in-memory storage and with SQLite, and
against two processes sharing one SQLite file (Optuna's documented way to use several
processes), in the same run.

Usage: python benchmarks/tune_optuna.py [--trials 300] [--runs 3] [--no-write] [--heartbeats]

Each row is the median of `--runs` runs (the contenders alternate within each run) of
trials/s, timed around the optimize call only: the study is created before the clock starts
(volley's storage actor and `volley.init` too). Rows for the random sampler (what the storage
costs) and TPE (Optuna's default; the sampler's own work grows with the trials). Replaces
`benchmarks/RESULTS-tune-optuna.md`.

With ``--heartbeats``: what Optuna's heartbeats cost (a heartbeat thread beside each trial, a
stale-trial check before each), volley's storage with and without them against two processes
on one SQLite file (``RDBStorage``) with and without them, random sampler, trivial objective;
writes `benchmarks/RESULTS-tune-optuna-heartbeats.md`.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import optuna  # noqa: E402

import volley  # noqa: E402
from volley.tune._optuna_storage import optuna_optimize, optuna_storage  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    y = trial.suggest_float("y", -1, 1)
    return x * x + y * y


def busy_objective(trial: optuna.Trial) -> float:
    """About 5 ms of pure-Python work: what threads (n_jobs) cannot run in parallel."""
    x = trial.suggest_float("x", -1, 1)
    acc = 0.0
    for i in range(60_000):
        acc += (x * i) % 7
    return x * x + acc * 0.0


OBJECTIVES = {"trivial": objective, "5 ms of Python": busy_objective}


def sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def run_volley(kind: str, n: int, seed: int, fn=objective, heartbeat: int | None = None) -> float:
    storage = optuna_storage(f"bench-{uuid.uuid4().hex[:8]}", heartbeat_interval=heartbeat)
    study = optuna.create_study(storage=storage, sampler=sampler(kind, seed))
    t0 = time.perf_counter()
    optuna_optimize(study, fn, n_trials=n, n_workers=2)
    dt = time.perf_counter() - t0
    assert len(study.trials) == n
    return n / dt


def run_threads(kind: str, n: int, seed: int, storage: str | None, fn=objective) -> float:
    study = optuna.create_study(storage=storage, sampler=sampler(kind, seed))
    t0 = time.perf_counter()
    study.optimize(fn, n_trials=n, n_jobs=2)
    dt = time.perf_counter() - t0
    assert len(study.trials) == n
    return n / dt


def _proc(url: str, name: str, kind: str, n: int, seed: int, fn, heartbeat) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = url if heartbeat is None else rdb_with_heartbeats(url, heartbeat)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler(kind, seed))
    study.optimize(fn, n_trials=n)


def rdb_with_heartbeats(url: str, interval: int):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        return optuna.storages.RDBStorage(url, heartbeat_interval=interval)


def run_sqlite_procs(
    kind: str, n: int, seed: int, tmp: str, fn=objective, heartbeat: int | None = None
) -> float:
    url = f"sqlite:///{tmp}/p-{uuid.uuid4().hex[:8]}.db"
    name = "bench"
    optuna.create_study(storage=url, study_name=name)
    ctx = mp.get_context("fork")
    half = [n // 2, n - n // 2]
    procs = [
        ctx.Process(target=_proc, args=(url, name, kind, half[i], seed + i, fn, heartbeat))
        for i in (0, 1)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    dt = time.perf_counter() - t0
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(optuna.load_study(study_name=name, storage=url).trials) == n
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--heartbeats", action="store_true")
    args = ap.parse_args()
    n = args.trials
    volley.init(num_cpus=2)
    if args.heartbeats:
        heartbeats(args)
        return
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {
            "volley storage, 2 volley tasks": lambda k, s, n, f: run_volley(k, n, s, f),
            "Optuna in-memory, n_jobs=2": lambda k, s, n, f: run_threads(k, n, s, None, f),
            "Optuna SQLite, n_jobs=2": lambda k, s, n, f: run_threads(
                k, n, s, f"sqlite:///{tmp}/t-{uuid.uuid4().hex[:8]}.db", f
            ),
            "Optuna SQLite, 2 processes": lambda k, s, n, f: run_sqlite_procs(k, n, s, tmp, f),
        }
        run_volley("random", 20, 0)  # warm: worker processes started, optuna imported
        cases = [
            ("random", "trivial", n),
            ("tpe", "trivial", n),
            ("random", "5 ms of Python", n // 3),
        ]
        for kind, what, trials in cases:
            rates: dict[str, list[float]] = {c: [] for c in contenders}
            for r in range(args.runs):
                order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
                for c in order:
                    rates[c].append(contenders[c](kind, r, trials, OBJECTIVES[what]))
            rows.append(
                (
                    f"{kind}, {what}, {trials} trials",
                    {c: statistics.median(v) for c, v in rates.items()},
                )
            )
    volley.shutdown()

    lines = [
        "| sampler, objective | contender | trials/s (median) | volley's ratio |",
        "|---|---|---:|---:|",
    ]
    for kind, med in rows:
        ours = med["volley storage, 2 volley tasks"]
        for c, v in med.items():
            ratio = "" if c.startswith("volley") else f"{ours / v:.2f}x"
            lines.append(f"| {kind} | {c} | {v:,.0f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    load = os.getloadavg()
    out = ROOT / "benchmarks" / "RESULTS-tune-optuna.md"
    out.write_text(
        "# volley.tune.optuna_storage against Optuna's storages\n\n"
        f"`python benchmarks/tune_optuna.py --trials {n} --runs {args.runs}` on "
        f"{datetime.date.today()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (a shared, noisy machine: "
        "other work ran beside it; compare ratios, not absolute rates).\n\n"
        "Objectives: a two-parameter quadratic (trivial: what the storage costs), and one "
        "of about 5 ms of pure Python (what threads cannot run at once). Median of "
        f"{args.runs} runs, contenders alternated within each run; ratio = volley's "
        "trials/s over the contender's.\n\n" + table + "\n"
    )
    print(f"wrote {out}")


def heartbeats(args: argparse.Namespace) -> None:
    """The ``--heartbeats`` table: each storage with heartbeats (every second) against itself
    without, random sampler, trivial objective."""
    n = args.trials
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {
            "volley storage, 2 volley tasks": lambda s: run_volley("random", n, s),
            "volley storage + heartbeats": lambda s: run_volley("random", n, s, heartbeat=1),
            "Optuna SQLite, 2 processes": lambda s: run_sqlite_procs("random", n, s, tmp),
            "Optuna SQLite + heartbeats, 2 processes": lambda s: run_sqlite_procs(
                "random", n, s, tmp, heartbeat=1
            ),
        }
        run_volley("random", 20, 0)  # warm
        rates: dict[str, list[float]] = {c: [] for c in contenders}
        for r in range(args.runs):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for c in order:
                rates[c].append(contenders[c](r))
    volley.shutdown()
    med = {c: statistics.median(v) for c, v in rates.items()}
    ours = med["volley storage + heartbeats"]
    lines = [
        f"| contender ({n} trials, random sampler, trivial objective) | trials/s (median) "
        "| volley + heartbeats' ratio |",
        "|---|---:|---:|",
    ]
    for c, v in med.items():
        ratio = "" if c == "volley storage + heartbeats" else f"{ours / v:.2f}x"
        lines.append(f"| {c} | {v:,.0f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    load = os.getloadavg()
    out = ROOT / "benchmarks" / "RESULTS-tune-optuna-heartbeats.md"
    out.write_text(
        "# Optuna heartbeats: volley.tune.optuna_storage against RDBStorage on SQLite\n\n"
        f"`python benchmarks/tune_optuna.py --heartbeats --trials {n} --runs {args.runs}` on "
        f"{datetime.date.today()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (a shared, noisy machine: "
        "other work ran beside it; compare ratios, not absolute rates).\n\n"
        "`heartbeat_interval=1` where heartbeats are on: a thread beside each trial sends one "
        "at its start and each second, and a stale-trial check runs before each trial. Median "
        f"of {args.runs} runs, contenders alternated within each run.\n\n" + table + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
