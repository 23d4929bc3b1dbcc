"""What recording task events (the state API, issue 18) costs row (b): 10,000 no-op tasks, one
submit each, then gather. Fresh driver processes with recording off (``VOLLEY_TASK_EVENTS=0``)
and on, alternated; each warms up and times the row 7 times. Reports per build the median of
the per-process medians of the wall time, and of the driver process's CPU time (its node's
threads included, where the recording happens; a loaded machine inflates CPU time far less
than wall time).

Usage: python benchmarks/state_cost.py [--rounds 9] [--before DIR]

``--before DIR`` also runs a second build, alternated with this one in the same rounds, for a
before/after comparison: DIR holds a copy of the ``volley`` package with its built ``_core``
(``cp -r python/volley DIR/`` before the change), put first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE = r"""
import json, resource, statistics, time
import volley

volley.init(num_cpus=2)

@volley.remote
def noop():
    return None

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

volley.get([noop.remote() for _ in range(2000)])
wall, used = [], []
for _ in range(7):
    c, t = cpu(), time.perf_counter()
    volley.get([noop.remote() for _ in range(10_000)])
    wall.append(time.perf_counter() - t)
    used.append(cpu() - c)
print(json.dumps({"wall": statistics.median(wall), "cpu": statistics.median(used)}))
volley.shutdown()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--before", help="a copy of the volley package built before a change")
    args = ap.parse_args()
    builds = {"": None} if args.before is None else {"before ": args.before, "": None}
    runs: dict[str, list[dict]] = {}
    for i in range(args.rounds):
        for build, path in builds.items():
            for mode in ("off", "on"):
                env = dict(os.environ, VOLLEY_TASK_EVENTS="0" if mode == "off" else "1")
                if path is not None:
                    env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
                out = subprocess.run(
                    [sys.executable, "-c", ONE],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=600,
                    # Not the checkout's directory, which would shadow a --before copy.
                    cwd=os.path.dirname(os.path.abspath(__file__)),
                )
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    return 1
                key = build + mode
                runs.setdefault(key, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {i + 1} {key}: {runs[key][-1]}", file=sys.stderr)
    print("| row (b), 10,000 tasks | recording off | recording on | on/off |")
    print("|---|---|---|---|")
    for build in builds:
        for key, what in (("wall", "wall time"), ("cpu", "driver CPU time")):
            off = statistics.median(r[key] for r in runs[build + "off"]) * 1e3
            on = statistics.median(r[key] for r in runs[build + "on"]) * 1e3
            print(f"| {build}{what} | {off:.1f} ms | {on:.1f} ms | {on / off:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
