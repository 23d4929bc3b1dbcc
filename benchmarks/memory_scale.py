"""What a queued task costs the driver in memory, and whether that memory goes back (issue 19).

Each system runs in a fresh driver process: it warms up, then reads its own RSS and USS (private
pages, from ``/proc/self/smaps_rollup``) at start, after submitting N no-op tasks with every
handle kept, after gathering their results, after dropping every handle and result, and then
once more after a second round of the same (does the memory of the first round get reused, or
does the process grow again?). Bytes per task is the growth over the start divided by N.
While the N tasks are submitted, two tasks hold both workers until a gate file appears, so
"submitted" is the cost of N *queued* tasks (none has run yet); the gate opens for the gather.

Systems: volley (``volley.remote``), ``concurrent.futures.ProcessPoolExecutor`` (``submit``)
and ``multiprocessing.Pool`` (``apply_async``), two workers each, side by side in one run.

Usage: python benchmarks/memory_scale.py [--n 1000000] [--systems volley,cf,mp]
       [--rounds 2] [--json FILE]

``VOLLEY_TASK_EVENTS=0`` in the environment turns the state API's recording off for the
volley driver (to see what the recording ring costs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# The measurement helpers, shared by every system's child program.
COMMON = r"""
import gc, json, sys, time

def mem():
    rss = uss = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "Rss":
                rss = int(v.split()[0]) * 1024
            elif k in ("Private_Clean", "Private_Dirty"):
                uss += int(v.split()[0]) * 1024
    return rss, uss

N = int(sys.argv[1])
ROUNDS = int(sys.argv[2])
points = []

def mark(label, t0=None):
    gc.collect()
    rss, uss = mem()
    points.append({"label": label, "rss": rss, "uss": uss,
                   "s": None if t0 is None else time.perf_counter() - t0})

GATE = sys.argv[3]

def block(gate):
    # Holds a worker until the driver opens the gate, so that the N tasks stay queued.
    import os, time
    t0 = time.time()
    while not os.path.exists(gate):
        if time.time() - t0 > 600:
            raise TimeoutError(f"the gate {gate} never opened")
        time.sleep(0.01)

def open_gate():
    open(GATE, "w").close()

def close_gate():
    import os
    os.unlink(GATE)

def settle():
    # what runs off the hot path (the node's periodic tick) gets a chance to run
    time.sleep(1.5)
"""

VOLLEY = r"""
import volley
volley.init(num_cpus=2)

@volley.remote
def noop():
    return None

rblock = volley.remote(block)
volley.get([noop.remote() for _ in range(1000)])
open_gate()
volley.get([rblock.remote(GATE) for _ in range(2)])
close_gate()
settle()
mark("start")
for r in range(ROUNDS):
    blockers = [rblock.remote(GATE) for _ in range(2)]
    t0 = time.perf_counter()
    refs = [noop.remote() for _ in range(N)]
    mark(f"round {r + 1}: submitted", t0)
    t0 = time.perf_counter()
    open_gate()
    values = volley.get(refs)
    volley.get(blockers)
    close_gate()
    del blockers
    mark(f"round {r + 1}: gathered", t0)
    del refs, values
    settle()
    mark(f"round {r + 1}: dropped")
print(json.dumps(points))
volley.shutdown()
"""

CF = r"""
from concurrent.futures import ProcessPoolExecutor

def noop():
    return None

if __name__ == "__main__":
    with ProcessPoolExecutor(2) as ex:
        [f.result() for f in [ex.submit(noop) for _ in range(1000)]]
        settle()
        mark("start")
        for r in range(ROUNDS):
            blockers = [ex.submit(block, GATE) for _ in range(2)]
            t0 = time.perf_counter()
            futs = [ex.submit(noop) for _ in range(N)]
            mark(f"round {r + 1}: submitted", t0)
            t0 = time.perf_counter()
            open_gate()
            values = [f.result() for f in futs]
            [f.result() for f in blockers]
            close_gate()
            del blockers
            mark(f"round {r + 1}: gathered", t0)
            del futs, values
            settle()
            mark(f"round {r + 1}: dropped")
    print(json.dumps(points))
"""

MP = r"""
import multiprocessing

def noop():
    return None

if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        [a.get() for a in [pool.apply_async(noop) for _ in range(1000)]]
        settle()
        mark("start")
        for r in range(ROUNDS):
            blockers = [pool.apply_async(block, (GATE,)) for _ in range(2)]
            t0 = time.perf_counter()
            handles = [pool.apply_async(noop) for _ in range(N)]
            mark(f"round {r + 1}: submitted", t0)
            t0 = time.perf_counter()
            open_gate()
            values = [a.get() for a in handles]
            [a.get() for a in blockers]
            close_gate()
            del blockers
            mark(f"round {r + 1}: gathered", t0)
            del handles, values
            settle()
            mark(f"round {r + 1}: dropped")
    print(json.dumps(points))
"""

PROGRAMS = {
    "volley": VOLLEY,
    "cf": CF,
    "mp": MP,
}
NAMES = {
    "volley": "volley",
    "cf": "ProcessPoolExecutor",
    "mp": "multiprocessing.Pool",
}


def run_one(system: str, n: int, rounds: int, timeout: float) -> list[dict]:
    """Runs one system's driver in a fresh process; returns its measurement points."""
    code = COMMON + PROGRAMS[system]
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", code, str(n), str(rounds), os.path.join(d, "gate")],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if out.returncode != 0:
        raise RuntimeError(f"{system} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(system: str, n: int, points: list[dict]) -> str:
    """A markdown table of one system's points: MB and bytes per task over the start."""
    start = points[0]
    lines = [
        f"**{NAMES[system]}** (N = {n:,})",
        "",
        "| step | RSS MB | USS MB | RSS B/task over start | USS B/task over start | s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        drss = (p["rss"] - start["rss"]) / n
        duss = (p["uss"] - start["uss"]) / n
        secs = "" if p["s"] is None else f"{p['s']:.1f}"
        lines.append(
            f"| {p['label']} | {p['rss'] / 1e6:.0f} | {p['uss'] / 1e6:.0f} | {drss:.0f} "
            f"| {duss:.0f} | {secs} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="tasks per round")
    ap.add_argument("--systems", default="volley,cf,mp", help="comma-separated: volley,cf,mp")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of submit/gather/drop")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per system")
    ap.add_argument("--json", help="also write the raw points to this file")
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in PROGRAMS:
            ap.error(f"unknown system {s!r}; choose from {', '.join(PROGRAMS)}")
    if args.n <= 0:
        ap.error("--n must be positive")
    results = {}
    for s in systems:
        results[s] = run_one(s, args.n, args.rounds, args.timeout)
        print(table(s, args.n, results[s]), flush=True)
        print(flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
