"""``Manager().dict()`` operations per second: volley's manager (an actor) against
``multiprocessing``'s (a server process on a Unix socket), from the driver and from a worker
process, in the same run.

Usage: python benchmarks/mp_manager.py [--ops 4000] [--runs 5] [--no-write]

Each run does ``--ops`` operations on one key, alternating ``d[k] = i`` and ``d[k]``; a row is
the median of ``--runs`` runs of operations per second, and the runs alternate the rows.
volley's worker row runs in an actor's process (a worker of the driver's node); the standard
library's in a forked ``multiprocessing.Process``. Writes ``benchmarks/RESULTS-mp-manager.md``.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import volley  # noqa: E402
import volley.multiprocessing as vmp  # noqa: E402


def ops_per_s(d, n: int) -> float:
    d["k"] = 0
    d["k"]  # warm
    t0 = time.perf_counter()
    for i in range(n // 2):
        d["k"] = i
        d["k"]
    return n / (time.perf_counter() - t0)


@volley.remote(num_cpus=0)
class Worker:
    def run(self, d, n: int) -> float:
        return ops_per_s(d, n)


def _mp_child(d, n: int, conn) -> None:
    conn.send(ops_per_s(d, n))


def mp_worker(d, n: int) -> float:
    recv, send = mp.Pipe(duplex=False)
    p = mp.get_context("fork").Process(target=_mp_child, args=(d, n, send))
    p.start()
    rate = recv.recv()
    p.join()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    n = args.ops
    load_before = os.getloadavg()[0]
    # The standard library's server is forked before volley starts (a fork of a volley
    # driver forgets volley; the server does not need it either way).
    std = mp.get_context("fork").Manager()
    std_d = std.dict()
    volley.init(num_cpus=2)
    vm = vmp.Manager()
    v_d = vm.dict()
    worker = Worker.remote()
    volley.get(worker.run.remote(v_d, 10))
    rows: dict[str, list[float]] = {
        "volley `Manager().dict()`, driver": [],
        "`multiprocessing.Manager().dict()`, driver": [],
        "volley `Manager().dict()`, worker process (actor)": [],
        "`multiprocessing.Manager().dict()`, forked process": [],
    }
    names = list(rows)
    for _ in range(args.runs):
        rows[names[0]].append(ops_per_s(v_d, n))
        rows[names[1]].append(ops_per_s(std_d, n))
        rows[names[2]].append(volley.get(worker.run.remote(v_d, n)))
        rows[names[3]].append(mp_worker(std_d, n))
    vm.shutdown()
    volley.shutdown()
    std.shutdown()
    load_after = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in rows.items()}
    lines = [
        "# Manager().dict() operations (issue 21)",
        "",
        f"`python benchmarks/mp_manager.py --ops {n} --runs {args.runs}`, "
        f"{datetime.date.today()}, {os.cpu_count()} cores. Operations per second on one key "
        "(`d[k] = i` and `d[k]` alternating; median of the runs; the runs alternate the rows). "
        f"Load average (1 min) {load_before:.1f} before, {load_after:.1f} after.",
        "",
        "| manager | ops/s (median) | runs |",
        "|---|---:|---|",
    ]
    for k, v in rows.items():
        lines.append(f"| {k} | {med[k]:,.0f} | {', '.join(f'{x:,.0f}' for x in v)} |")
    lines += [
        "",
        f"volley / multiprocessing, driver: **{med[names[0]] / med[names[1]]:.2f}x** the "
        f"operations per second; worker: **{med[names[2]] / med[names[3]]:.2f}x**.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "RESULTS-mp-manager.md").write_text(text)


if __name__ == "__main__":
    main()
