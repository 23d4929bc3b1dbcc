"""Per-core scaling: volley against multiprocessing.Pool and ProcessPoolExecutor at N workers.

Usage: python benchmarks/scale.py [--workers 1,2,4,8,16] [--runs 3] [--quick] [--background N]

Each (benchmark, system, worker count) cell runs in a fresh interpreter
(`python -m benchmarks.scale --cell ...`), `--runs` times, the runs alternating between the
systems; the table shows medians. A worker count above `os.cpu_count()` still runs but is marked
oversubscribed. Prints a markdown table and replaces the `## Per-core scaling` section of
benchmarks/RESULTS-scale.md (other sections of that file are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the `benchmarks` package importable

from benchmarks import common  # noqa: E402

SYSTEMS = ("volley", "mp", "cf")
HEADING = "## Per-core scaling"


def sizes(quick: bool, tiny: bool = False) -> dict:
    """Problem sizes; every worker count gets the same work (so times compare across N).
    `tiny` (the test's) only checks that every cell runs."""
    if tiny:
        return {"tiny": 200, "cpu_tasks": 4, "cpu_total_s": 0.02, "leaves": 16,
                "map_items": 200, "queued": 500}  # fmt: skip
    return {
        "tiny": 2_000 if quick else 20_000,  # tiny tasks, one submit each
        "cpu_tasks": 64,  # CPU-bound: 64 tasks (divisible by 1..16 workers)
        "cpu_total_s": 0.4 if quick else 4.0,  # their serial time, all together
        "leaves": 256 if quick else 4_096,  # tree reduction
        "map_items": 10_000 if quick else 100_000,  # map over no-op items
        "queued": 20_000 if quick else 1_000_000,  # queued tasks: submit all, then gather
    }


# (key, title, unit): unit "rate" = items/s (higher is better), "s" = seconds (lower is
# better), "speedup" = derived from "cpu" times.
BENCHES = (
    ("tiny", "tiny tasks submitted one per call from one driver, then gathered", "rate"),
    ("cpu", "CPU-bound speedup: fixed work in {cpu_tasks} tasks, vs 1 worker", "speedup"),
    ("tree", "tree reduction of {leaves:,} leaves (pairwise sums as tasks)", "s"),
    ("map", "map over {map_items:,} no-op items (volley.map / Pool.map / Executor.map)", "s"),
    ("queued", "{queued:,} queued no-op tasks: submit all, then gather", "s"),
    ("actors", "N actors created and called once (peers: N processes started)", "s"),
)


# --- the cells: each runs in a fresh interpreter -------------------------------------------


def _noop(*_args):
    return None


def _add(a, b):
    return a + b


class _Pinger:
    def ping(self) -> int:
        return 1


def cell(system: str, bench: str, n: int, sz: dict) -> dict:
    """One measurement of `bench` for `system` at `n` workers; {"value": ...} plus details."""
    return {"volley": _volley_cell, "mp": _mp_cell, "cf": _cf_cell}[system](bench, n, sz)


def _spin_n(sz: dict) -> int:
    return int(os.environ["VOLLEY_SCALE_SPIN_N"])


def _check(results: list, n: int) -> None:
    if len(results) != n:
        raise RuntimeError(f"got {len(results)} results, expected {n}")


def _volley_cell(bench: str, n: int, sz: dict) -> dict:
    import volley

    volley.init(num_cpus=n, log_to_driver=False)
    try:
        noop = volley.remote(_noop)
        if bench == "actors":
            cls = volley.remote(_Pinger).options(num_cpus=0)
            warm = cls.remote()  # the class shipped, one actor process started
            volley.get(warm.ping.remote())
            volley.kill(warm)
            t0 = time.perf_counter()
            actors = [cls.remote() for _ in range(n)]
            if sum(volley.get([a.ping.remote() for a in actors])) != n:
                raise RuntimeError("an actor answered wrongly")
            return {"value": time.perf_counter() - t0}
        volley.get([noop.remote() for _ in range(4 * n)])  # every worker started
        if bench == "tiny":
            t0 = time.perf_counter()
            refs = [noop.remote() for _ in range(sz["tiny"])]
            _check(volley.get(refs), sz["tiny"])
            return {"value": sz["tiny"] / (time.perf_counter() - t0)}
        if bench == "queued":
            t0 = time.perf_counter()
            refs = [noop.remote() for _ in range(sz["queued"])]
            submitted = time.perf_counter() - t0
            _check(volley.get(refs), sz["queued"])
            return {"value": time.perf_counter() - t0, "submit_s": submitted}
        if bench == "cpu":
            spin = volley.remote(common.spin)
            volley.get([spin.remote(1) for _ in range(n)])
            k = _spin_n(sz)
            t0 = time.perf_counter()
            volley.get([spin.remote(k) for _ in range(sz["cpu_tasks"])])
            return {"value": time.perf_counter() - t0}
        if bench == "tree":
            leaf, add = volley.remote(common.leaf), volley.remote(_add)
            volley.get(add.remote(leaf.remote(0), leaf.remote(1)))
            t0 = time.perf_counter()
            level = [leaf.remote(i) for i in range(sz["leaves"])]
            while len(level) > 1:
                level = [add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            total = volley.get(level[0])
            elapsed = time.perf_counter() - t0
            _check_tree(total, sz["leaves"])
            return {"value": elapsed}
        if bench == "map":
            t0 = time.perf_counter()
            _check(list(volley.map(_noop, range(sz["map_items"]))), sz["map_items"])
            return {"value": time.perf_counter() - t0}
        raise ValueError(f"unknown benchmark {bench!r}")
    finally:
        volley.shutdown()


def _check_tree(total: int, leaves: int) -> None:
    expected = leaves * (leaves - 1) // 2
    if total != expected:
        raise RuntimeError(f"tree reduction returned {total}, expected {expected}")


def _pool_tree(submit, get, leaves: int) -> int:
    """A tree for pools whose tasks cannot take pending results: level by level."""
    level = [get(r) for r in [submit(common.leaf, i) for i in range(leaves)]]
    while len(level) > 1:
        pending = [submit(_add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        level = [get(p) for p in pending]
    return level[0]


def _mp_cell(bench: str, n: int, sz: dict) -> dict:
    import multiprocessing

    if bench == "actors":
        t0 = time.perf_counter()
        pool = multiprocessing.Pool(n)
        try:
            _check(pool.map(_noop, range(n), chunksize=1), n)
            return {"value": time.perf_counter() - t0}
        finally:
            pool.terminate()
            pool.join()
    pool = multiprocessing.Pool(n)
    try:
        pool.map(_noop, range(4 * n), chunksize=1)
        if bench in ("tiny", "queued"):
            count = sz[bench]
            t0 = time.perf_counter()
            pending = [pool.apply_async(_noop) for _ in range(count)]
            submitted = time.perf_counter() - t0
            _check([p.get() for p in pending], count)
            elapsed = time.perf_counter() - t0
            if bench == "tiny":
                return {"value": count / elapsed}
            return {"value": elapsed, "submit_s": submitted}
        if bench == "cpu":
            k = _spin_n(sz)
            t0 = time.perf_counter()
            pool.map(common.spin, [k] * sz["cpu_tasks"], chunksize=1)
            return {"value": time.perf_counter() - t0}
        if bench == "tree":
            t0 = time.perf_counter()
            submit = lambda fn, *a: pool.apply_async(fn, a)  # noqa: E731
            total = _pool_tree(submit, lambda p: p.get(), sz["leaves"])
            elapsed = time.perf_counter() - t0
            _check_tree(total, sz["leaves"])
            return {"value": elapsed}
        if bench == "map":
            t0 = time.perf_counter()
            _check(pool.map(_noop, range(sz["map_items"])), sz["map_items"])
            return {"value": time.perf_counter() - t0}
        raise ValueError(f"unknown benchmark {bench!r}")
    finally:
        pool.terminate()
        pool.join()


def _cf_cell(bench: str, n: int, sz: dict) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    if bench == "actors":
        t0 = time.perf_counter()
        with ProcessPoolExecutor(n) as ex:
            # the executor starts its processes as work arrives: one call per process
            _check(list(ex.map(_noop, range(n))), n)
            elapsed = time.perf_counter() - t0
        return {"value": elapsed}
    with ProcessPoolExecutor(n) as ex:
        list(ex.map(_noop, range(4 * n)))
        if bench in ("tiny", "queued"):
            count = sz[bench]
            t0 = time.perf_counter()
            futures = [ex.submit(_noop) for _ in range(count)]
            submitted = time.perf_counter() - t0
            _check([f.result() for f in futures], count)
            elapsed = time.perf_counter() - t0
            if bench == "tiny":
                return {"value": count / elapsed}
            return {"value": elapsed, "submit_s": submitted}
        if bench == "cpu":
            k = _spin_n(sz)
            t0 = time.perf_counter()
            list(ex.map(common.spin, [k] * sz["cpu_tasks"]))
            return {"value": time.perf_counter() - t0}
        if bench == "tree":
            t0 = time.perf_counter()
            total = _pool_tree(ex.submit, lambda f: f.result(), sz["leaves"])
            elapsed = time.perf_counter() - t0
            _check_tree(total, sz["leaves"])
            return {"value": elapsed}
        if bench == "map":
            items = sz["map_items"]
            chunk = max(1, -(-items // (4 * n)))  # Pool.map's default chunksize
            t0 = time.perf_counter()
            _check(list(ex.map(_noop, range(items), chunksize=chunk)), items)
            return {"value": time.perf_counter() - t0}
        raise ValueError(f"unknown benchmark {bench!r}")


def cell_main(argv: list[str]) -> None:
    system, bench, n, size, out = argv
    try:
        result = cell(system, bench, int(n), sizes(size != "full", size == "tiny"))
    except Exception as e:  # noqa: BLE001 -- reported in the table, never fatal to the run
        import traceback

        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    Path(out).write_text(json.dumps(result))


# --- the harness ----------------------------------------------------------------------------


def call_cell(system: str, bench: str, n: int, args, env: dict) -> dict:
    """Runs one cell in a fresh interpreter and its own session; kills what it leaves behind."""
    from benchmarks.run import run_in_session

    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    cmd = [sys.executable, "-m", "benchmarks.scale", "--cell", system, bench, str(n), size]
    return run_in_session(cmd, env, args.timeout)


def fmt(value, unit: str) -> str:
    if value is None:
        return ""
    if unit == "rate":
        return f"{value:,.0f}/s"
    if unit == "speedup":
        return f"{value:.2f}x"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


def measure(args, env) -> dict:
    """{(bench, n, system): [values]} (or an error string), runs alternating between systems."""
    results: dict = {}
    for bench, _, _ in BENCHES:
        if bench not in args.only:
            continue
        for n in args.workers:
            for i in range(args.runs):
                for system in args.systems:
                    key = (bench, n, system)
                    if isinstance(results.get(key), str):
                        continue  # failed before: do not repeat it
                    result = call_cell(system, bench, n, args, env)
                    tag = f"[{bench} x{n}] {system} run {i + 1}/{args.runs}"
                    if "value" not in result:
                        results[key] = result.get("error", "no result")
                        print(f"{tag}: {results[key]}", file=sys.stderr)
                        print(result.get("traceback", ""), file=sys.stderr, end="")
                        continue
                    results.setdefault(key, []).append(result["value"])
                    unit = "rate" if bench == "tiny" else "s"
                    print(f"{tag}: {fmt(result['value'], unit)}", file=sys.stderr)
    return results


# The targets (on 16 cores): (benchmark, bound, higher is better), judged on volley's
# median at 16 workers (and, for "queued", only with the full 1,000,000 tasks).
TARGETS = {"cpu": (15.0, True), "tiny": (200_000.0, True), "queued": (10.0, False)}


def _target(bench: str, n: int, sz: dict, volley) -> tuple[str, str]:
    """(target text, "met"/"NOT met"/"") for one row."""
    if bench not in TARGETS or (bench == "queued" and sz["queued"] != 1_000_000):
        return "", ""
    bound, higher = TARGETS[bench]
    unit = {"cpu": "speedup", "tiny": "rate"}.get(bench, "s")
    text = f"{'>=' if higher else '<='} {fmt(bound, unit)} at 16"
    if n != 16 or volley is None:
        return text, ""
    if n > (os.cpu_count() or 1):
        # 16 workers on fewer cores say nothing of the target: judged on a 16-core machine.
        return text, f"n/a ({os.cpu_count()} cores)"
    return text, "met" if (volley >= bound if higher else volley <= bound) else "NOT met"


def table(args, sz: dict, results: dict, serial_s: float) -> str:
    cores = os.cpu_count() or 1
    head = ["benchmark", "workers", *args.systems]
    peers = [s for s in args.systems if s != "volley"]
    if "volley" in args.systems:
        head += [f"volley vs {p}" for p in peers]
    head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, title, unit in BENCHES:
        if bench not in args.only:
            continue
        for n in args.workers:
            workers = f"{n}" + (" (oversubscribed)" if n > cores else "")
            medians, times = {}, {}
            for system in args.systems:
                got = results.get((bench, n, system))
                if isinstance(got, list) and got:
                    medians[system] = statistics.median(got)
                    if unit == "speedup":
                        times[system] = medians[system]
                        base = results.get((bench, 1, system)) if 1 in args.workers else None
                        base_s = statistics.median(base) if isinstance(base, list) else serial_s
                        medians[system] = base_s / medians[system]
            cells = []
            for system in args.systems:
                got = results.get((bench, n, system))
                text = (
                    "error: " + got[:80] if isinstance(got, str) else fmt(medians.get(system), unit)
                )
                if system in times:
                    text += f" ({fmt(times[system], 's')})"
                cells.append(text)
            ratios = []
            for p in peers if "volley" in args.systems else []:
                v, o = medians.get("volley"), medians.get(p)
                if not v or not o:
                    ratios.append("")
                else:
                    ratios.append(f"{(v / o if unit in ('rate', 'speedup') else o / v):.2f}x")
            name = title.format(**sz)
            target = _target(bench, n, sz, medians.get("volley"))
            lines.append("| " + " | ".join([name, workers, *cells, *ratios, *target]) + " |")
    return "\n".join(lines)


def replace_section(path: Path, heading: str, body: str) -> None:
    """Writes `body` (which starts with `heading`) in place of that section of `path`, keeping
    every other `## ` section; appends it when absent."""
    text = path.read_text() if path.exists() else "# Scale benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))  # fmt: skip
    new = "".join(lines[:start]) + body.rstrip("\n") + "\n"
    if end < len(lines):
        new += "\n" + "".join(lines[end:])
    path.write_text(new)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2,4,8,16", help="worker counts, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="runs per cell; the median is shown")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="systems, comma-separated")
    p.add_argument("--only", default=",".join(b for b, _, _ in BENCHES),
                   help="benchmarks, comma-separated (default: all)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--tiny", action="store_true", help="sizes that only check every cell runs")
    p.add_argument("--timeout", type=float, default=300, help="seconds per cell run")
    p.add_argument("--background", type=int, default=0, metavar="N",
                   help="busy processes (CPU loops) kept running during the cells")  # fmt: skip
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS-scale.md")
    args = p.parse_args(argv)
    try:
        args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        p.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers needs counts of at least 1")
    args.systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - {b for b, _, _ in BENCHES}
    if unknown or not args.only:
        p.error(f"unknown benchmarks {sorted(unknown)}; choose from "
                f"{', '.join(b for b, _, _ in BENCHES)}")  # fmt: skip
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:
        cell_main(argv[1:])
        return
    from benchmarks.run import _loadavg, background_load, machine

    args = parse_args(argv)
    sz = sizes(args.quick, args.tiny)
    spin_n = common.calibrate_spin(sz["cpu_total_s"] / sz["cpu_tasks"])
    serial_s = common.best_of(lambda: [common.spin(spin_n) for _ in range(sz["cpu_tasks"])])
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        VOLLEY_SCALE_SPIN_N=str(spin_n),
    )
    load_before = _loadavg()
    with background_load(args.background):
        results = measure(args, env)
    body = table(args, sz, results, serial_s)
    print(body)
    command = shlex.join(["python", "benchmarks/scale.py", *argv])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # A run of some benchmarks only gets a section of its own: the full table stays.
    every = [b for b, _, _ in BENCHES]
    heading = HEADING if args.only == every else f"{HEADING}: {', '.join(args.only)}"
    section = SECTION.format(
        heading=heading, date=date, machine=machine(), command=command,
        load=f"{load_before} before, {_loadavg()} after", runs=args.runs,
        background=args.background, spin_n=spin_n, serial_s=serial_s, table=body, **sz,
    )  # fmt: skip
    replace_section(args.output, heading, section)
    print(f"\nwritten to {args.output} ({heading})", file=sys.stderr)


SECTION = """{heading}

- Date: {date}
- Machine: {machine}
- Command: `{command}`
- Load average (1/5/15 min): {load}; background busy processes: {background}
- Each cell: a fresh interpreter, {runs} run(s), median shown; the runs alternate between the
  systems. "volley vs X" > 1 means volley is better. "mp" is `multiprocessing.Pool(N)` (fork),
  "cf" `concurrent.futures.ProcessPoolExecutor(N)`; volley is `volley.init(num_cpus=N)`.
- Every worker count gets the same work. Tiny tasks: {tiny:,} no-ops, one submit per call
  (`f.remote()`, `apply_async`, `submit`), then gathered. CPU-bound: {cpu_tasks} tasks of
  `spin({spin_n:,})` ({serial_s:.2f} s serially in the driver); speedup = the system's time at
  1 worker / its time at N (vs the serial time when 1 is not among the counts). Tree: leaves,
  then `add(left, right)` per inner node; volley passes refs, the pools (whose tasks cannot take
  pending results) go level by level. Map: `list(volley.map(f, items))`, `Pool.map` (default
  chunksize), `Executor.map` with Pool's default chunksize. Queued: every task submitted, refs
  or futures kept, then all gathered. Actors: after one warm-up actor (the class shipped),
  N `num_cpus=0` actors created and each called once; mp/cf: pool creation and one call per
  process (their process start, the nearest equivalent).
- After init (or pool creation) and 4 x N warm-up no-ops, so worker start is not timed, except
  in the actor row.

{table}
"""


if __name__ == "__main__":
    main()
