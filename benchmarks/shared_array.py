"""Shared values, arrays and parallel ranges: volley against multiprocessing, numpy and a
PyMP-style fork, side by side in one run (the runs alternate the systems; medians of --runs).

1. ``Value``/``Array`` operations per second in one process (the driver), volley's
   ``volley.multiprocessing`` against the standard library's, and a counter incremented under
   its lock by two processes at once (volley: two tasks; multiprocessing: two forked
   processes). volley's rows twice: with the default ``volley.sync`` lock and with a
   ``NodeRLock`` (a robust pthread mutex in the value's shared memory; not public yet).
2. ``parallel_range`` over 10 M elements (a 3-point stencil, ``y[i] = sqrt(x[i-1]) *
   sin(x[i]) + log1p(x[i+1])``, vectorised over each member's range of a shared array)
   against numpy in one process and a PyMP-style fork
   (anonymous shared memory made before ``os.fork``, each child computing its half, as
   ``pymp.Parallel`` does); and over 1 M elements with a Python function per index.
   numba's ``prange`` is measured too where numba is installed (it is not in the project's
   environment).

    python benchmarks/shared_array.py --runs 5
"""

from __future__ import annotations

import argparse
import math
import mmap
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import volley  # noqa: E402
import volley.multiprocessing as vmp  # noqa: E402
from volley._mp_values import NodeRLock  # noqa: E402

WORKERS = 2


def rate(fn: Callable[[], Any], ops: int) -> float:
    """Operations per second of ``fn`` (which does ``ops`` operations)."""
    t = time.perf_counter()
    fn()
    return ops / (time.perf_counter() - t)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- values and arrays


def value_ops(mod: Any, n: int, lock: Callable[[], Any] | None = None) -> dict[str, Callable]:
    v = mod.Value("i", 0, lock=lock() if lock else True)
    raw = mod.RawValue("i", 0)
    arr = mod.Array("i", 1000, lock=lock() if lock else True)
    rawarr = mod.RawArray("i", 1000)

    def read() -> None:
        for _ in range(n):
            v.value  # noqa: B018

    def write() -> None:
        for i in range(n):
            v.value = i

    def incr() -> None:
        for _ in range(n):
            with v.get_lock():
                v.value += 1

    def raw_rw() -> None:
        for i in range(n):
            raw.value = raw.value + i

    def item_set() -> None:
        for i in range(n):
            arr[i % 1000] = i

    def raw_item_set() -> None:
        for i in range(n):
            rawarr[i % 1000] = i

    def slice_read() -> None:
        for _ in range(n // 100):
            arr[:]

    return {
        "Value.value read (lock=True)": read,
        "Value.value write (lock=True)": write,
        "with get_lock(): value += 1": incr,
        "RawValue read + write": raw_rw,
        "Array[i] = x (lock=True)": item_set,
        "RawArray[i] = x": raw_item_set,
        "Array[:] of 1000 ints (lock=True) [ops = n/100]": slice_read,
    }


def _incr_n(counter: Any, n: int) -> None:
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


_incr_task = volley.remote(_incr_n)


def contended_volley(n: int, lock: Callable[[], Any] | None = None) -> float:
    counter = vmp.Value("i", 0, lock=lock() if lock else True)
    t = timed(lambda: volley.get([_incr_task.remote(counter, n) for _ in range(WORKERS)]))
    assert counter.value == WORKERS * n
    return WORKERS * n / t


def contended_mp(n: int) -> float:
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0)

    def run() -> None:
        ps = [ctx.Process(target=_incr_n, args=(counter, n)) for _ in range(WORKERS)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()

    t = timed(run)
    assert counter.value == WORKERS * n
    return WORKERS * n / t


# --------------------------------------------------------------------------- parallel ranges


BLOCK = 1 << 15  # elements per numpy call: temporaries stay in cache, not fresh pages


def kernel(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> None:
    """A 3-point stencil, ``y[i] = sqrt(x[i-1]) * sin(x[i]) + log1p(x[i+1])``, over the inner
    points of ``lo..hi``, in cache-sized blocks (every system runs this same function)."""
    lo, hi = max(lo, 1), min(hi, len(x) - 1)
    for s in range(lo, hi, BLOCK):
        e = min(hi, s + BLOCK)
        y[s:e] = np.sqrt(x[s - 1 : e - 1]) * np.sin(x[s:e]) + np.log1p(x[s + 1 : e + 1])


def per_index(x: Any, y: Any, i: int) -> None:
    v = x[i]
    y[i] = math.sqrt(v) * math.sin(v) + math.log1p(v)


def numpy_serial(x: np.ndarray, y: np.ndarray) -> None:
    kernel(x, y, 0, len(x))


def volley_range(x: Any, y: Any) -> None:
    volley.parallel_range(
        len(x), lambda r: kernel(x, y, r.start, r.stop), ranges=True, results=False,
        num_workers=WORKERS,
    )  # fmt: skip


def fork_split(x: np.ndarray, y: np.ndarray, body: Callable[[int, int], None]) -> None:
    """PyMP's way: fork the team (sharing anonymous memory made before the fork), each child
    does its share, the parent waits."""
    n = len(x)
    pids = []
    for k in range(WORKERS):
        lo, hi = k * n // WORKERS, (k + 1) * n // WORKERS
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                body(lo, hi)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def anon_shared(n: int) -> np.ndarray:
    return np.frombuffer(mmap.mmap(-1, n * 8), dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--contended", type=int, default=2_000)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--n-python", type=int, default=1_000_000)
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    volley.init(num_cpus=WORKERS)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average (1 min) {load0:.2f} before", flush=True)  # fmt: skip

    # 1. values and arrays, one process
    print("\n## Value/Array operations per second in one process (median)\n")
    print(
        "| operation | volley (`volley.sync` lock) | volley (`NodeRLock`) | multiprocessing "
        "| volley / mp | volley NodeRLock / mp |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    vops, nops = value_ops(vmp, args.ops), value_ops(vmp, args.ops, NodeRLock)
    mops = value_ops(multiprocessing, args.ops)
    for name in vops:
        ops = args.ops // 100 if "n/100" in name else args.ops
        vs, ns, ms = [], [], []
        for _ in range(args.runs):
            vs.append(rate(vops[name], ops))
            ns.append(rate(nops[name], ops))
            ms.append(rate(mops[name], ops))
        v, nl, m = statistics.median(vs), statistics.median(ns), statistics.median(ms)
        print(f"| {name} | {v:,.0f} | {nl:,.0f} | {m:,.0f} | {v / m:.2f}x | {nl / m:.2f}x |")

    vs, ns, ms = [], [], []
    for _ in range(args.runs):
        vs.append(contended_volley(args.contended))
        ns.append(contended_volley(args.contended, NodeRLock))
        ms.append(contended_mp(args.contended))
    v, nl, m = statistics.median(vs), statistics.median(ns), statistics.median(ms)
    print(
        f"| 2 processes: `with get_lock(): value += 1` ({args.contended} each; volley: tasks, "
        f"mp: forked) | {v:,.0f} | {nl:,.0f} | {m:,.0f} | {v / m:.3f}x | {nl / m:.2f}x |",
        flush=True,
    )

    # 2. parallel ranges
    n = args.n
    xs = volley.shared_array(n)
    xs[:] = np.linspace(0.0, 100.0, n)
    ys = volley.shared_array(n)
    xa, ya = anon_shared(n), anon_shared(n)
    xa[:] = xs
    xn, yn = np.array(xs).view(np.ndarray), np.empty(n)
    expected = np.zeros(n)
    kernel(xn, expected, 0, n)

    systems: dict[str, Callable[[], None]] = {
        "numpy, one process": lambda: numpy_serial(xn, yn),
        f"volley.parallel_range, {WORKERS} workers (ranges=True)": lambda: volley_range(xs, ys),
        f"PyMP-style fork, {WORKERS} children": lambda: fork_split(
            xa, ya, lambda lo, hi: kernel(xa, ya, lo, hi)
        ),
    }
    try:
        import numba  # type: ignore[import-not-found]

        @numba.njit(parallel=True)
        def nb(x, y):  # pragma: no cover (numba is not installed here)
            for i in numba.prange(1, len(x) - 1):
                y[i] = math.sqrt(x[i - 1]) * math.sin(x[i]) + math.log1p(x[i + 1])

        nb(xn, yn)
        systems["numba prange"] = lambda: nb(xn, yn)
    except ImportError:
        print("\n(numba is not installed: no numba row)")

    print(f"\n## {n:,} elements, a 3-point stencil over shared arrays, seconds (median)\n")
    report(systems, args.runs, checks=[(ys, expected), (ya, expected)])

    m = args.n_python
    xp, yp = volley.shared_array(m), volley.shared_array(m)
    xp[:] = np.linspace(0.0, 100.0, m)
    xl, yl = xp.tolist(), [0.0] * m
    xpa, ypa = anon_shared(m), anon_shared(m)
    xpa[:] = xp

    def serial_python() -> None:
        for i in range(m):
            per_index(xl, yl, i)

    def volley_python() -> None:
        volley.parallel_range(m, lambda i: per_index(xp, yp, i), results=False)

    def volley_python_ranges() -> None:
        def body(r: range) -> None:
            xv, yv = xp[r.start : r.stop].tolist(), [0.0] * len(r)
            for j in range(len(r)):
                per_index(xv, yv, j)
            yp[r.start : r.stop] = yv

        volley.parallel_range(m, body, ranges=True, results=False)

    def fork_python() -> None:
        def body(lo: int, hi: int) -> None:
            xv, yv = xpa[lo:hi].tolist(), [0.0] * (hi - lo)
            for j in range(hi - lo):
                per_index(xv, yv, j)
            ypa[lo:hi] = yv

        fork_split(xpa, ypa, body)

    print(f"\n## {m:,} elements, a Python function per index, seconds (median)\n")
    report(
        {
            "Python loop, one process (over lists)": serial_python,
            f"volley.parallel_range(fn(i)) on numpy items, {WORKERS} workers": volley_python,
            f"volley.parallel_range(ranges=True), lists inside, {WORKERS} workers": (
                volley_python_ranges
            ),
            f"PyMP-style fork, lists inside, {WORKERS} children": fork_python,
        },
        args.runs,
        checks=[],
    )
    print(f"\nload average (1 min) {os.getloadavg()[0]:.2f} after")
    volley.shutdown()


def report(systems: dict[str, Callable[[], None]], runs: int, checks: list) -> None:
    times: dict[str, list[float]] = {k: [] for k in systems}
    for _ in range(runs):
        for name, fn in systems.items():  # alternated: one run of each, then again
            times[name].append(timed(fn))
    for got, want in checks:
        np.testing.assert_allclose(got, want)
    base = statistics.median(times[next(iter(systems))])
    print("| system | seconds | speedup over the first row | runs |")
    print("|---|---:|---:|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        runs_text = ", ".join(f"{t:.3f}" for t in ts)
        print(f"| {name} | {med:.3f} | {base / med:.2f}x | {runs_text} |", flush=True)


if __name__ == "__main__":
    main()
