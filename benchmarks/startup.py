"""Start-up: import + init + first result, volley's phases against Pool (fork) and the executor.

Usage: python benchmarks/startup.py [--runs 7] [--baseline DIR] [--background N] [--no-write]

Every measurement runs in a fresh interpreter (interpreter start-up itself is not timed, as in
row (a) of run.py). volley's time is split into its phases: `import volley`; `init` and inside
it the runtime environment's check, the node's start, the event log's thread and the import of
cloudpickle; then the first result (decorate, submit, wait for a worker to start and answer).
"worker interpreter" is the wall time of `python -S -c "import volley._worker"`, what every
exec-started worker pays before it can connect. `--baseline DIR` also measures the volley
package found in DIR (a copy of python/ from another commit, with its built _core) in the same
run, alternating with this one. Replaces the `## Start-up` section of RESULTS-scale.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADING = "## Start-up"

VOLLEY_CELL = r"""
import json, sys, time
t0 = time.perf_counter()
import volley
t_import = time.perf_counter()
from volley import _core, _runtime_env  # what init imports: counted in "init"
marks = {}
def mark(owner, name):
    fn = getattr(owner, name)
    def wrapper(*a, **k):
        marks.setdefault(name + ">", time.perf_counter())
        try:
            return fn(*a, **k)
        finally:
            marks.setdefault(name + "<", time.perf_counter())
    setattr(owner, name, wrapper)
for owner, name in ((_runtime_env, "build"), (_core, "start_node"), (_core, "set_runtime_env")):
    mark(owner, name)
t1 = t_import
volley.init(num_cpus=2, log_to_driver=False)
t_init = time.perf_counter()
phases = {
    "init: imports (session, cluster, runtime_env, multiprocessing), defaults":
        marks["build>"] - t1,
    "init: checks, runtime_env": marks["start_node>"] - marks["build>"],
    "init: node start (start_node; workers start in its threads)":
        marks["start_node<"] - marks["start_node>"],
    "init: event log thread (imports logging)": marks["set_runtime_env>"] - marks["start_node<"],
    "init: the rest (imports cloudpickle)": t_init - marks["set_runtime_env>"],
}
f = volley.remote(lambda: 1)
t_decorate = time.perf_counter()
ref = f.remote()
t_submit = time.perf_counter()
assert volley.get(ref) == 1
t_first = time.perf_counter()
out = {"import volley": t_import - t0, "init": t_init - t1, **phases,
       "remote() decorate": t_decorate - t_init, "first submit": t_submit - t_decorate,
       "wait for the first result": t_first - t_submit, "total": t_first - t0}
volley.shutdown()
print(json.dumps(out))
"""

POOL_CELL = r"""
import json, time
t0 = time.perf_counter()
import multiprocessing
pool = multiprocessing.get_context("fork").Pool(2)
assert pool.apply(abs, (-1,)) == 1
t = time.perf_counter() - t0
pool.terminate(); pool.join()
print(json.dumps({"total": t}))
"""

CF_CELL = r"""
import json, time
t0 = time.perf_counter()
from concurrent.futures import ProcessPoolExecutor
with ProcessPoolExecutor(2) as ex:
    assert ex.submit(abs, -1).result() == 1
    t = time.perf_counter() - t0
print(json.dumps({"total": t}))
"""

# The worker's interpreter: `python -S` then volley._worker's imports (timed from outside).
WORKER_CMD = ["-S", "-c", "import volley._worker"]
BARE_CMD = ["-S", "-c", "pass"]


def run_cell(code: str, pythonpath: str) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"cell failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(cmd: list[str], pythonpath: str) -> float:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], env=env, check=True, timeout=120)
    return time.perf_counter() - t0


def measure(args) -> dict:
    """{variant: {phase: [seconds per run]}}, the variants alternating run by run."""
    here = str(ROOT / "python")
    variants = {"volley": here}
    if args.baseline:
        variants["volley (baseline)"] = str(Path(args.baseline).resolve())
    results: dict = {}
    for i in range(args.runs):
        for label, path in variants.items():
            for key, value in run_cell(VOLLEY_CELL, path).items():
                results.setdefault(label, {}).setdefault(key, []).append(value)
            worker = wall(WORKER_CMD, path)
            results[label].setdefault("worker interpreter (python -S, import)", []).append(worker)
        results.setdefault("python -S (bare)", {}).setdefault("total", []).append(
            wall(BARE_CMD, here)
        )
        for label, code in (("multiprocessing.Pool(2), fork", POOL_CELL),
                            ("ProcessPoolExecutor(2)", CF_CELL)):  # fmt: skip
            for key, value in run_cell(code, here).items():
                results.setdefault(label, {}).setdefault(key, []).append(value)
        print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
    return results


def table(results: dict) -> str:
    labels = list(results)
    keys: list[str] = []
    for label in labels:
        keys += [k for k in results[label] if k not in keys]
    keys.remove("total")
    keys.append("total")
    lines = ["| phase | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key in keys:
        cells = []
        for label in labels:
            values = results[label].get(key)
            cells.append(f"{statistics.median(values) * 1000:.1f} ms" if values else "")
        name = f"**{key}**" if key == "total" else key
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from benchmarks.run import _loadavg, background_load, machine
    from benchmarks.scale import replace_section

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--baseline", help="another copy of python/ (with its _core) to compare")
    p.add_argument("--background", type=int, default=0, metavar="N",
                   help="busy processes (CPU loops) kept running during the runs")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS-scale.md")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.baseline and not (Path(args.baseline) / "volley" / "__init__.py").is_file():
        p.error(f"--baseline {args.baseline!r} has no volley/__init__.py")
    load_before = _loadavg()
    with background_load(args.background):
        results = measure(args)
    body = table(results)
    print(body)
    if args.no_write:
        return
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/startup.py", *argv])
    section = SECTION.format(
        heading=HEADING, date=date, machine=machine(), command=command, runs=args.runs,
        load=f"{load_before} before, {_loadavg()} after", background=args.background,
        table=body,
    )  # fmt: skip
    replace_section(args.output, HEADING, section)
    print(f"\nwritten to {args.output} ({HEADING})", file=sys.stderr)


SECTION = """{heading}

- Date: {date}
- Machine: {machine}
- Command: `{command}`
- Load average (1/5/15 min): {load}; background busy processes: {background}
- Medians of {runs} runs, each in a fresh interpreter (its own start not timed); the variants
  alternate run by run. "init: ..." rows are parts of "init"; "total" is import + init + first
  result (volley), import + `Pool(2)` + first `apply` (mp), import + executor + first
  `submit().result()` (cf). "worker interpreter" is the wall time of
  `python -S -c "import volley._worker"` (interpreter start included): what each worker started
  by exec pays before it connects, most of "wait for the first result".

{table}
"""

if __name__ == "__main__":
    main()
