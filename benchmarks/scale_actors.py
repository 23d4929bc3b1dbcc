"""Actors and nested workers at scale (issue 19): workers forked from the node's template
against ``VOLLEY_WORKER_START=exec``, alternated in one run, each measurement in a fresh driver.

- ``actors``: N actors (``num_cpus=0``) created, each called once; actors/s from the first
  ``.remote()`` to the last answer.
- ``uss``: the private memory (USS: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of
  each idle actor's process, the median and the mean, and the template's own.
- ``first``: ``init`` and the first task's result (the template is started with the node, so
  the first worker waits for it).
- ``mem_per_actor_mb``: the machine's MemAvailable drop over N, all in (USS, the kernel's
  per-process structures, the node's side); ``driver_threads``/``driver_fds`` with N actors up;
  ``second_call_s``: every actor called again; ``shutdown_s``: ``volley.shutdown()`` with them.
- ``depth``: a task that calls itself D deep and ``get``s its child (each level blocks a
  worker, so each needs a new one): seconds for the whole recursion.

Usage: python benchmarks/scale_actors.py [--actors 1000] [--depth 500] [--rounds 1]
       [--modes template,exec]
       (``--actors 5000 --depth 0 --modes template``: thousands of idle actors, with shutdown)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE = r"""
import json, os, statistics, sys, time
import volley

N, DEPTH = int(sys.argv[1]), int(sys.argv[2])

def available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024

avail0 = available()
t_init = time.perf_counter()
volley.init(num_cpus=2, max_workers=max(1024, N + 64))

def uss(pid):
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return None
    return total

@volley.remote(num_cpus=0)
class Actor:
    def pid(self):
        return os.getpid(), os.getppid()

@volley.remote
def noop():
    return None

@volley.remote
def nest(d):
    if d == 0:
        return 0
    return volley.get(nest.remote(d - 1)) + 1

out = {}
volley.get(noop.remote())
out["first_result_ms"] = (time.perf_counter() - t_init) * 1000
volley.get([noop.remote() for _ in range(4)])  # the node's first workers are up
if N:
    t = time.perf_counter()
    actors = [Actor.remote() for _ in range(N)]
    pids = volley.get([a.pid.remote() for a in actors], timeout=600)
    dt = time.perf_counter() - t
    out["actors_per_s"] = N / dt
    out["actors_s"] = dt
    time.sleep(1.0)  # idle
    out["mem_per_actor_mb"] = (avail0 - available()) / N / 2**20
    out["driver_threads"] = len(os.listdir("/proc/self/task"))
    out["driver_fds"] = len(os.listdir("/proc/self/fd"))
    t = time.perf_counter()
    assert volley.get([a.pid.remote() for a in actors], timeout=600) == pids
    out["second_call_s"] = time.perf_counter() - t
    sizes = [s for s in (uss(p) for p, _ in pids) if s is not None]
    out["uss_median_mb"] = statistics.median(sizes) / 2**20
    out["uss_mean_mb"] = statistics.mean(sizes) / 2**20
    parents = {pp for _, pp in pids}
    if len(parents) == 1 and parents != {os.getpid()}:
        out["template_uss_mb"] = uss(parents.pop()) / 2**20
    if not DEPTH:
        t = time.perf_counter()
        volley.shutdown()  # with every actor still up
        out["shutdown_s"] = time.perf_counter() - t
    del actors
if DEPTH:
    t = time.perf_counter()
    assert volley.get(nest.remote(DEPTH), timeout=600) == DEPTH
    out["depth_s"] = time.perf_counter() - t
print("RESULT " + json.dumps(out), flush=True)
volley.shutdown()
"""


def run_one(mode: str, actors: int, depth: int) -> dict:
    env = dict(os.environ)
    env.pop("VOLLEY_WORKER_START", None)
    if mode == "exec":
        env["VOLLEY_WORKER_START"] = "exec"
    proc = subprocess.run(
        [sys.executable, "-c", ONE, str(actors), str(depth)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{mode}: no result\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actors", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--modes", default="template,exec")
    args = ap.parse_args()
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes if r % 2 == 0 else reversed(modes):
            res = run_one(m, args.actors, args.depth)
            print(f"round {r + 1} {m}: {json.dumps(res)}", flush=True)
            results[m].append(res)
    print()
    keys = [
        "first_result_ms",
        "actors_per_s",
        "actors_s",
        "uss_median_mb",
        "uss_mean_mb",
        "template_uss_mb",
        "mem_per_actor_mb",
        "driver_threads",
        "driver_fds",
        "second_call_s",
        "shutdown_s",
    ]
    keys.append("depth_s")
    print(f"| measure ({args.actors} actors, depth {args.depth}) | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for k in keys:
        cells = []
        for m in modes:
            vals = [r[k] for r in results[m] if k in r]
            cells.append(f"{statistics.median(vals):.2f}" if vals else "-")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
