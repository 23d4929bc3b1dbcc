"""What a driver's history (``volley.init(history=True)`` / ``VOLLEY_HISTORY=1``) costs row
(b): 10,000 no-op tasks, one submit each, then gather. Fresh driver processes with the history
off and on, alternated (recording task events on in both, as by default), each in a session
directory of its own; each warms up and times the row 7 times. Reports the median of the
per-process medians of the wall time and of the driver process's CPU time (its node's threads
included, the history writer's among them), as ``benchmarks/state_cost.py`` does.

Usage: python benchmarks/history_cost.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from state_cost import ONE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {}
    for i in range(args.rounds):
        for mode in ("off", "on"):
            with tempfile.TemporaryDirectory() as session:
                env = dict(
                    os.environ,
                    VOLLEY_SESSION_DIR=session,
                    VOLLEY_HISTORY="1" if mode == "on" else "0",
                )
                out = subprocess.run(
                    [sys.executable, "-c", ONE],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=600,
                )
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return 1
            runs.setdefault(mode, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {i + 1} {mode}: {runs[mode][-1]}", file=sys.stderr)
    print("| row (b), 10,000 tasks | history off | history on | on/off |")
    print("|---|---|---|---|")
    for key, what in (("wall", "wall time"), ("cpu", "driver CPU time")):
        off = statistics.median(r[key] for r in runs["off"]) * 1e3
        on = statistics.median(r[key] for r in runs["on"]) * 1e3
        print(f"| {what} | {off:.1f} ms | {on:.1f} ms | {on / off:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
