"""Run-on-every-worker and shell commands: volley beside IPython parallel and subprocess.

    .venv-bench/bin/python benchmarks/every.py [--calls 200] [--runs 5] [--cmds 100]

(PYTHONPATH=python for a volley not installed in that venv; ipyparallel installed there with
pip; without it the ipyparallel rows say n/a.)

Rows, each the median of ``--runs`` runs, the systems alternated within a run (which goes
first flips every run):

- ``apply`` of a small function on every worker (2 workers: volley's ``workers()`` view on a
  2-CPU volley, ipyparallel's direct view of a 2-engine cluster), per call on all;
- the same with a 1 MiB numpy array as the argument;
- ``push`` of a small dict then ``pull`` of it;
- ``shell_many`` of ``--cmds`` ``true`` commands, 2 and 4 at a time, against
  ``subprocess.run`` in a ``ThreadPoolExecutor`` of as many threads (in this process: no
  task, no worker, nothing crosses a process but the command itself).

Start-up (``volley.workers()`` the first time; ipyparallel's ``Cluster.start_and_connect``)
is measured once each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import volley

WORKERS = 2


def small(x):
    return x + 1


def nbytes(a):
    return a.nbytes


def per_call_us(fn, calls: int) -> float:
    t = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t) / calls * 1e6


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def threadpool_shell(cmds: list[str], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        rs = list(pool.map(lambda c: subprocess.run(c, shell=True, capture_output=True), cmds))
    assert all(r.returncode == 0 for r in rs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="apply calls per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cmds", type=int, default=100, help="commands per shell_many run")
    args = ap.parse_args()
    import numpy as np

    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    volley.init(num_cpus=WORKERS)
    t0 = time.perf_counter()
    view = volley.workers()
    volley_start = time.perf_counter() - t0
    assert len(view) == WORKERS

    try:
        import ipyparallel as ipp
    except ImportError:
        ipp = None
    dview = cluster = None
    ipp_start = None
    if ipp is not None:
        t0 = time.perf_counter()
        cluster = ipp.Cluster(n=WORKERS, log_level=40)
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(WORKERS, timeout=120)
        dview = rc[:]
        ipp_start = time.perf_counter() - t0
        dview.apply_sync(small, 0)

    arr = np.ones(1 << 17)  # 1 MiB of float64
    view.apply(small, 0)
    rows: dict[str, dict[str, list[float]]] = {}

    def row(name: str, **systems) -> None:
        rows.setdefault(name, {k: [] for k in systems})
        for k, fn in systems.items():
            rows[name][k].append(fn())

    cmds = ["true"] * args.cmds
    for run in range(args.runs):
        flip = run % 2 == 1
        for name, v_fn, b_name, b_fn in [
            (
                "apply(small) on every worker, us/call",
                lambda: per_call_us(lambda i: view.apply(small, i), args.calls),
                "ipyparallel",
                None
                if dview is None
                else lambda: per_call_us(lambda i: dview.apply_sync(small, i), args.calls),
            ),
            (
                "apply(f, 1 MiB array) on every worker, us/call",
                lambda: per_call_us(lambda i: view.apply(nbytes, arr), args.calls // 4),
                "ipyparallel",
                None
                if dview is None
                else lambda: per_call_us(lambda i: dview.apply_sync(nbytes, arr), args.calls // 4),
            ),
            (
                "push({x}) + pull(x), us/pair",
                lambda: per_call_us(lambda i: (view.push({"x": i}), view.pull("x")), args.calls),
                "ipyparallel",
                None
                if dview is None
                else lambda: per_call_us(
                    lambda i: (dview.push({"x": i}, block=True), dview.pull("x", block=True)),
                    args.calls,
                ),
            ),
            (
                f"shell_many({args.cmds} x true), 2 at a time, ms",
                lambda: seconds(lambda: volley.shell_many(cmds, concurrency=2)) * 1e3,
                "subprocess + ThreadPoolExecutor(2)",
                lambda: seconds(lambda: threadpool_shell(cmds, 2)) * 1e3,
            ),
            (
                f"shell_many({args.cmds} x true), 2 at a time, stream=False, ms",
                lambda: seconds(lambda: volley.shell_many(cmds, concurrency=2, stream=False)) * 1e3,
                "subprocess + ThreadPoolExecutor(2)",
                lambda: seconds(lambda: threadpool_shell(cmds, 2)) * 1e3,
            ),
            (
                f"shell_many({args.cmds} x true), 4 at a time (num_cpus=0), ms",
                lambda: seconds(lambda: volley.shell_many(cmds, concurrency=4, num_cpus=0)) * 1e3,
                "subprocess + ThreadPoolExecutor(4)",
                lambda: seconds(lambda: threadpool_shell(cmds, 4)) * 1e3,
            ),
        ]:
            order = [("volley", v_fn), (b_name, b_fn)]
            if flip:
                order.reverse()
            row(name, **{k: (f if f is not None else (lambda: float("nan"))) for k, f in order})
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    print(f"start-up: volley.workers() {volley_start * 1e3:.0f} ms", end="")
    if ipp_start is not None:
        print(f"; ipyparallel Cluster(n={WORKERS}).start_and_connect {ipp_start * 1e3:.0f} ms")
    else:
        print("; ipyparallel not installed: n/a")
    print()
    print("| row | volley (median) | peer | peer (median) | peer / volley | volley runs |")
    print("|---|---:|---|---:|---:|---|")
    for name, systems in rows.items():
        vs = systems["volley"]
        pname, ps = next((k, v) for k, v in systems.items() if k != "volley")
        vm, pm = statistics.median(vs), statistics.median(ps)
        ratio = "n/a" if pm != pm else f"{pm / vm:.1f}x"
        peer = "n/a" if pm != pm else f"{pm:.0f}"
        runs = ", ".join(f"{v:.0f}" for v in vs)
        print(f"| {name} | {vm:.0f} | {pname} | {peer} | {ratio} | {runs} |")
    if cluster is not None:
        cluster.stop_cluster_sync()
    volley.shutdown()


if __name__ == "__main__":
    main()
