"""``volley.cache`` against ``joblib.Memory`` on the same work, in the same run: the latency of
a hit and the overhead of a miss (a call that computes and stores), for a small call and for a
call with an 8 MB numpy array argument and result.

Usage: python benchmarks/cache.py [--calls 200] [--runs 5] [--no-write]

Each row is the median of ``--runs`` runs of microseconds per call; the runs alternate volley
and joblib. joblib's cache uses ``mmap_mode="r"`` so that both return arrays memory-mapped
read-only. A miss's overhead is its time minus the function's own (which does nothing but
return). Writes ``benchmarks/RESULTS-cache.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import joblib  # noqa: E402

import volley  # noqa: E402


def small(x):
    return x + 1


def big(a, k):
    return a  # an 8 MB result: what a hit loads and a miss stores


def _per_call(fn, args_list) -> float:
    t0 = time.perf_counter()
    for args in args_list:
        fn(*args)
    return (time.perf_counter() - t0) / len(args_list) * 1e6


def measure(kind: str, location: str, n: int, arr: np.ndarray) -> dict[str, float]:
    if kind == "volley":
        memory = volley.cache(location)
        c_small, c_big = memory(small), memory(big)
    else:
        memory = joblib.Memory(location, mmap_mode="r", verbose=0)
        c_small, c_big = memory.cache(small), memory.cache(big)
    out = {}
    hits = [(1,)] * n
    c_small(1)
    out["hit, small call"] = _per_call(c_small, hits)
    misses = [(i,) for i in range(10, 10 + n)]
    out["miss overhead, small call"] = _per_call(c_small, misses) - _per_call(small, misses)
    nb = max(n // 10, 10)
    c_big(arr, 0)
    out["hit, 8 MB array in and out"] = _per_call(c_big, [(arr, 0)] * nb)
    big_misses = [(arr, k) for k in range(1, nb + 1)]
    out["miss overhead, 8 MB array in and out"] = _per_call(c_big, big_misses) - _per_call(
        big, big_misses
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    arr = np.random.default_rng(0).random(1_000_000)  # 8 MB
    rows: dict[str, dict[str, list[float]]] = {"volley": {}, "joblib": {}}
    base = tempfile.mkdtemp(prefix="cache-bench-")
    try:
        for r in range(args.runs):
            for kind in ("volley", "joblib") if r % 2 == 0 else ("joblib", "volley"):
                loc = os.path.join(base, f"{kind}-{r}")
                for k, v in measure(kind, loc, args.calls, arr).items():
                    rows[kind].setdefault(k, []).append(v)
                shutil.rmtree(loc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()[0]
    lines = [
        "# volley.cache against joblib.Memory (issue 21)",
        "",
        f"`python benchmarks/cache.py --calls {args.calls} --runs {args.runs}`, "
        f"{datetime.date.today()}, {os.cpu_count()} cores, joblib {joblib.__version__}, "
        f"cache on {tempfile.gettempdir()}. Microseconds per call (median of the runs; the "
        f"runs alternate the systems). Load average (1 min) {load_before:.1f} before, "
        f"{load_after:.1f} after.",
        "",
        "| measure | volley µs | joblib µs | joblib / volley | volley runs | joblib runs |",
        "|---|---:|---:|---:|---|---|",
    ]
    for k in rows["volley"]:
        v, j = statistics.median(rows["volley"][k]), statistics.median(rows["joblib"][k])
        lines.append(
            f"| {k} | {v:.0f} | {j:.0f} | {j / v:.1f}x | "
            f"{', '.join(f'{x:.0f}' for x in rows['volley'][k])} | "
            f"{', '.join(f'{x:.0f}' for x in rows['joblib'][k])} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "RESULTS-cache.md").write_text(text)


if __name__ == "__main__":
    main()
