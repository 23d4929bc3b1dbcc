"""Runs the volley benchmark suite against its peers, prints a markdown table, writes RESULTS.md.

Usage: python benchmarks/run.py [--runs 3] [--only a,b,...] [--systems volley,ray,...] [--quick]

Every (benchmark, system) cell runs in its own fresh interpreter (python -m benchmarks.cell),
repeated --runs times; the table shows the median. A system's interpreter is sys.executable
unless VOLLEY_BENCH_PYTHON_<SYSTEM> (e.g. VOLLEY_BENCH_PYTHON_VOLLEY) names another one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the `benchmarks` package importable
common = importlib.import_module("benchmarks.common")

SYSTEMS = ("volley", "ray", "dask", "joblib", "mp", "cf")
# (column label, system, function suffix): "mp.map" is multiprocessing's Pool.map(chunksize=1).
COLUMNS = (
    ("volley", "volley", ""),
    ("ray", "ray", ""),
    ("dask", "dask", ""),
    ("joblib", "joblib", ""),
    ("mp", "mp", ""),
    ("mp.map", "mp", "map"),
    ("cf", "cf", ""),
    ("dask.thr", "dask", "threaded"),
)


@dataclass
class Row:
    letter: str
    title: str
    unit: str  # "s", "speedup", "MiB" or "MiB/s"
    higher_is_better: bool
    target: str = ""  # "" for rows without a target
    met: object = None  # (volley_value, {column: ratio}) -> bool | None
    # A derived row is not run: its value is derive(value, details) of each run of `source`.
    source: str = ""
    derive: object = None


def _at_least(ratios: dict, column: str, bound: float) -> bool | None:
    return None if ratios.get(column) is None else ratios[column] >= bound


def _all(*checks) -> bool | None:
    return None if None in checks else all(checks)


def _size(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def rows(sizes: dict) -> list[Row]:
    s = sizes
    obj, spill = _size(s["object_mib"]), s["spill_objects"] * s["object_mib"]
    return [
        Row("a", "init + first result, fresh interpreter", "s", False, "<= 1/30 of ray",
            lambda v, r: _at_least(r, "ray", 30)),
        Row("b", f"{s['tasks']:,} no-op tasks, one submit per call, then gather", "s", False,
            ">= 40x ray throughput and >= mp.map",
            lambda v, r: _all(_at_least(r, "ray", 40), _at_least(r, "mp.map", 1))),
        Row("c", f"{s['round_trips']:,} sequential submit-then-get round trips", "s", False,
            "<= 1/30 of ray and below cf",
            lambda v, r: _all(_at_least(r, "ray", 30), None if r.get("cf") is None
                              else r["cf"] > 1)),
        Row("f", f"speedup, {s['cpu_tasks']} CPU tasks of ~{s['cpu_task_s']} s on 2 workers "
            "vs serial", "speedup", True, ">= 1.95x", lambda v, r: v >= 1.95),
        Row("fb", f"{s['blas_tasks']} tasks of {s['blas_products']} products of "
            f"{s['blas_n']}x{s['blas_n']} float64 matrices (numpy's BLAS) on 2 workers",
            "s", False),
        Row("g", f"{s['leaves']:,}-leaf tree reduction ({2 * s['leaves'] - 1:,} tasks, "
            "refs as arguments)", "s", False, ">= 20x faster than ray",
            lambda v, r: _at_least(r, "ray", 20)),
        Row("h", "idle memory of the process tree after init, 2 workers", "MiB", False,
            "<= 1/8 of ray", lambda v, r: _at_least(r, "ray", 8)),
        Row("i", f"put {obj} (float64 array) where other processes can read it", "s", False),
        Row("j", f"get {obj} back in the driver as a readable array (median of "
            f"{s['gets']} gets)", "s", False),
        Row("k", f"sum of the stored {obj} in one task (given its ref/handle)", "s", False),
        Row("k0", f"baseline for (k): arr.sum() of {obj} in the driver", "s", False),
        Row("l", f"sum of {obj} in one task, the array passed directly as the argument",
            "s", False),
        Row("m", f"{s['readers']} tasks each sampling one stored {_size(s['readers_mib'])} "
            "array, all gathered", "s", False),
        Row("m-rss", "(m): largest worker VmRSS at the end of a reader task", "MiB", False,
            source="m", derive=lambda v, e: e.get("rss_mib")),
        Row("n", f"spill: put {s['spill_objects']} x {obj} into a "
            f"{_size(s['spill_store_mib'])} store, then get each back", "s", False),
        Row("n-rate", f"(n) as a rate: 2 x {_size(spill)} written and read / time", "MiB/s",
            True, source="n", derive=lambda v, e: 2 * spill / v),
        Row("o", f"{s['actor_calls']:,} calls on one actor, submitted without waiting, then "
            "gathered", "s", False, "<= 1/20 of ray", lambda v, r: _at_least(r, "ray", 20)),
        Row("p", f"{s['actor_round_trips']:,} sequential actor call round trips", "s", False,
            "<= 1/15 of ray", lambda v, r: _at_least(r, "ray", 15)),
        Row("q", f"{s['actor_arg_calls']} actor calls, each passed a "
            f"{_size(s['actor_arg_mib'])} float64 array, then gathered", "s", False),
        Row("r", f"{s['callers']} tasks x {s['caller_actors']} actors: each task makes "
            f"{s['caller_calls']} calls round-robin over all the actors, then gets them", "s",
            False),
        Row("s", f"create {s['actors_created']:,} actors in waves of {s['actor_wave']} "
            "(create, call once, kill; not 1,000: Ray takes > 5 min)", "s", False),
        Row("s-rate", "(s) as a rate: actors created, started and killed / time", "actors/s",
            True, ">= 5x ray's rate", lambda v, r: _at_least(r, "ray", 5), source="s",
            derive=lambda v, e: e.get("actors", s["actors_created"]) / v),
        Row("t", f"{s['tasks']:,} no-op tasks run on another node (cluster: the driver's head "
            f"has 0 CPUs, one {common.WORKERS}-CPU node), then gathered", "s", False,
            "within 2x of (b)"),
        Row("u", f"transfer: a task on another node reads a {_size(s['transfer_mib'])} array "
            "put by the driver", "s", False),
        Row("u-rate", "(u) as a rate", "MiB/s", True, ">= 1 GB/s and >= 2x ray",
            lambda v, r: _all(v * 2**20 >= 1e9, _at_least(r, "ray", 2)), source="u",
            derive=lambda v, e: s["transfer_mib"] / v),
        Row("u1", f"(u) with {_size(s['transfer_big_mib'])}", "s", False),
        Row("u1-rate", "(u1) as a rate", "MiB/s", True, ">= 1 GB/s and >= 2x ray",
            lambda v, r: _all(v * 2**20 >= 1e9, _at_least(r, "ray", 2)), source="u1",
            derive=lambda v, e: s["transfer_big_mib"] / v),
        Row("uw", "(u) warm: after one untimed transfer of the same size", "s", False),
        Row("uw-rate", "(uw) as a rate", "MiB/s", True, ">= 1 GB/s and >= 2x ray",
            lambda v, r: _all(v * 2**20 >= 1e9, _at_least(r, "ray", 2)), source="uw",
            derive=lambda v, e: s["transfer_mib"] / v),
        Row("u1w", "(u1) warm: after one untimed transfer of the same size", "s", False),
        Row("u1w-rate", "(u1w) as a rate", "MiB/s", True, ">= 1 GB/s and >= 2x ray",
            lambda v, r: _all(v * 2**20 >= 1e9, _at_least(r, "ray", 2)), source="u1w",
            derive=lambda v, e: s["transfer_big_mib"] / v),
        Row("v", f"broadcast: one {_size(s['broadcast_mib'])} array read by a task on each of "
            f"{s['broadcast_nodes']} nodes", "s", False),
        Row("w", f"joblib Parallel(n_jobs=2), {s['jl_tasks']:,} tiny calls (auto-batching; "
            "volley: the volley backend, joblib: loky)", "s", False),
        Row("x", f"joblib Parallel(n_jobs=2), {s['jl_arrays']} calls each given the same "
            f"{_size(s['jl_array_mib'])} array, summing it", "s", False, ">= 3x faster than loky",
            lambda v, r: _at_least(r, "joblib", 3)),
        Row("xw", "(x) warm: after one untimed call with another array of that size", "s",
            False, ">= 3x faster than loky", lambda v, r: _at_least(r, "joblib", 3)),
        Row("y", f"map over {s['map_items']:,} no-op items (volley.map vs Pool.map)", "s",
            False, "within 1.2x of Pool.map", lambda v, r: _at_least(r, "mp", 1 / 1.2)),
        Row("ya", f"map over {s['map_cpu_items']} CPU-bound items (spin({s['map_cpu_n']:,}))",
            "s", False),
        Row("z", f"Executor: {s['ex_tasks']:,} submits, then every result (volley.futures vs "
            "ProcessPoolExecutor)", "s", False),
        Row("za", f"Executor: {s['ex_round_trips']:,} sequential submit().result()", "s", False),
        Row("dg", f"Dask: the (g) {s['leaves']:,}-leaf tree as dask.delayed, .compute() "
            "(volley.dask.get vs distributed, and Dask threaded)", "s", False,
            ">= 10x distributed and faster than threaded",
            lambda v, r: _all(_at_least(r, "dask", 10), None if r.get("dask.thr") is None
                              else r["dask.thr"] > 1)),
    ]  # fmt: skip


@dataclass
class Cell:
    status: str = "ok"  # ok | na | error | none (not part of this column)
    values: list = field(default_factory=list)
    extras: list = field(default_factory=list)
    note: str = ""
    system_wide: bool = False  # the note is about the system, not this row

    @property
    def median(self):
        return statistics.median(self.values) if self.values else None


def python_for(system: str) -> str:
    return os.environ.get(f"VOLLEY_BENCH_PYTHON_{system.upper()}", sys.executable)


def call_cell(system: str, args: list[str], env: dict, timeout: float) -> dict:
    """Runs `python -m benchmarks.cell ...` in its own session; kills whatever it leaves behind."""
    return run_in_session([python_for(system), "-m", "benchmarks.cell", *args], env, timeout)


def run_in_session(cmd: list[str], env: dict, timeout: float) -> dict:
    """Runs ``cmd`` plus the path of a result file it writes (JSON), in a session of its own,
    with a timeout; kills whatever it leaves behind. Its result, or ``{"error": ...}`` with
    the last line it printed."""
    with tempfile.TemporaryDirectory(prefix="volley-bench-") as tmp:
        out, log = Path(tmp, "result.json"), Path(tmp, "log.txt")
        cmd = [*cmd, str(out)]
        try:
            with log.open("wb") as log_file:
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        except OSError as e:
            return {"error": f"cannot start {cmd[0]}: {e}"}
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            proc.wait()
            return {"error": f"timed out after {timeout:.0f} s"}
        finally:
            _kill_session(proc.pid)
        if out.exists():
            return json.loads(out.read_text())
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return {"error": f"exit status {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def _kill_session(sid: int) -> None:
    """SIGKILLs every process left in the cell's session (some libraries regroup workers)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


@contextlib.contextmanager
def background_load(n: int):
    """Keeps `n` busy processes (plain CPU loops at normal priority) running for the length of
    the block: the fixed contention under which the fairness figures are measured. Says on
    stderr that it started and stopped them, since every figure in the run is affected."""
    procs = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            )
        if n:
            pids = ", ".join(str(p.pid) for p in procs)
            print(f"background load: {n} busy process(es) started (pids {pids})", file=sys.stderr)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        if procs:
            print(f"background load: {len(procs)} busy process(es) stopped", file=sys.stderr)


def not_runnable(row: Row, func: str, info: dict) -> Cell | None:
    """The cell to show when `func` cannot run for this system at all, else None."""
    if "error" in info:
        return Cell("error", note=info["error"], system_wide=True)
    if not info["installed"]:
        return Cell("na", note=f"not installed in {info['executable']}", system_wide=True)
    if func not in info["functions"]:
        reason = info["na"].get(row.letter) if func == row.letter else None
        return Cell("na", note=reason) if reason else Cell("none")
    return None


def measure(row: Row, cells: dict, jobs: dict, args, env) -> None:
    """Runs each system's cell of `row` `args.runs` times, alternating between the systems (run
    1 of each, then run 2 of each, ...): a drift in the machine's state over the minutes a row
    takes (load, memory the host has at hand) then touches every column alike. `jobs` maps a
    column's label to (system, function); `cells` gets each column's Cell."""
    for label in jobs:
        cells[label] = Cell()
    for i in range(args.runs):
        for label, (system, func) in list(jobs.items()):
            cell = cells[label]
            result = call_cell(system, ["run", system, func], env, args.timeout)
            tag = f"[{row.letter}] {system}:{func} run {i + 1}/{args.runs}"
            if "value" not in result:
                reason = result.get("na") or result.get("error", "no result")
                print(f"{tag}: {reason}", file=sys.stderr)
                if "traceback" in result:
                    print(result["traceback"], file=sys.stderr)
                if cell.values:  # keep the runs that worked, say what happened to the rest
                    cell.note = f"{len(cell.values)} of {args.runs} runs; then: {reason}"
                else:
                    cells[label] = Cell("na" if "na" in result else "error", note=reason)
                del jobs[label]
                continue
            cell.values.append(result.pop("value"))
            cell.extras.append(result)
            print(f"{tag}: {fmt(cell.values[-1], row.unit)}", file=sys.stderr)
            time.sleep(0.5)  # let the previous cell's processes finish dying on a 2-core machine


def derived(row: Row, source: Cell) -> Cell:
    """The cell of a derived row: row.derive applied to each run of the source row's cell."""
    if source.status != "ok":
        return Cell(source.status, note=source.note, system_wide=source.system_wide)
    values = [row.derive(v, e) for v, e in zip(source.values, source.extras)]
    return Cell(values=[v for v in values if v is not None], note=source.note)


def fmt(value, unit: str) -> str:
    if value is None:
        return ""
    if unit == "s" and value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if unit == "s" and value < 1:
        return f"{value * 1000:.3g} ms"
    if unit == "speedup":
        return f"{value:.2f}x"
    number = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{number}x" if unit == "x" else f"{number} {unit}"


def ratio(row: Row, volley, peer):
    if volley is None or peer is None or volley <= 0 or peer <= 0:
        return None
    return volley / peer if row.higher_is_better else peer / volley


class Notes:
    """Numbered footnotes, one per distinct text."""

    def __init__(self):
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        text = " ".join(text.split())[:400]
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def cell_text(cell: Cell, row: Row, label: str, notes: Notes) -> str:
    if cell.status == "none":
        return "-"
    if cell.status in ("na", "error"):
        word = "n/a" if cell.status == "na" else "error"
        where = label if cell.system_wide else f"{label}, {row.source or row.letter}"
        return f"{word} {notes.mark(f'{where}: {cell.note}')}"
    text = fmt(cell.median, row.unit)
    return f"{text} {notes.mark(f'{label}, {row.letter}: {cell.note}')}" if cell.note else text


def summary_table(table_rows, columns, results, notes: Notes) -> str:
    labels = [label for label, _, _ in columns]
    peers = [label for label in labels if label != "volley"]
    with_volley = "volley" in labels
    head = ["benchmark", *labels]
    if with_volley:
        head += [f"volley vs {p}" for p in peers]
    head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table_rows:
        line = [f"({row.letter}) {row.title}{_unit_note(row, results, labels)}"]
        line += [cell_text(results[row.letter, label], row, label, notes) for label in labels]
        volley = results[row.letter, "volley"].median if with_volley else None
        ratios = {p: ratio(row, volley, results[row.letter, p].median) for p in peers}
        if with_volley:
            line += [f"{fmt(ratios[p], 'x')}" if ratios[p] is not None else "" for p in peers]
        if row.met is None:
            line += ["-", "-"]
        else:
            met = row.met(volley, ratios) if volley is not None else None
            line += [row.target, {True: "met", False: "NOT met", None: "?"}[met]]
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _unit_note(row: Row, results, labels) -> str:
    if row.letter != "h":
        return ""
    metrics = {e.get("metric", "?") for label in labels for e in results[row.letter, label].extras}
    return f" ({'/'.join(sorted(metrics)) or 'PSS'})"


def detail_table(table_rows, columns, results) -> str:
    lines = [
        "| benchmark | system | median | min | max | runs | details (per run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table_rows:
        for label, _, _ in columns:
            cell = results[row.letter, label]
            if not cell.values:
                continue
            per_run = [", ".join(f"{k}={_short(v)}" for k, v in e.items()) for e in cell.extras]
            details = "; ".join(per_run) if any(per_run) else ""
            lines.append(
                f"| {row.letter} | {label} | {fmt(cell.median, row.unit)} | "
                f"{fmt(min(cell.values), row.unit)} | {fmt(max(cell.values), row.unit)} | "
                f"{len(cell.values)} | {details} |"
            )
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024**2:.1f} GiB RAM"
    except OSError:
        mem = "RAM unknown"
    return f"nproc {os.cpu_count()}, CPU {model}, {mem}, {platform.platform()}"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def versions_table(infos: dict) -> str:
    lines = ["| system | Python | packages | notes | interpreter |", "|---|---|---|---|---|"]
    for system, info in infos.items():
        if "error" in info:
            lines.append(f"| {system} | | | error: {info['error']} | {python_for(system)} |")
            continue
        pkgs = ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items())
        lines.append(
            f"| {system} | {info['python']} | {pkgs or 'stdlib'} | {info['describe']} | "
            f"{info['executable']} |"
        )
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="runs per cell (default 3, 1 if --quick)")
    p.add_argument(
        "--only",
        default=",".join(row.letter for row in rows(common.sizes(False))),
        help="benchmark letters, comma-separated (default: all)",
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help="systems, comma-separated")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--timeout", type=float, default=300, help="seconds per cell run")
    p.add_argument("--background", type=int, default=0, metavar="N",
                   help="busy processes (CPU loops) kept running during the cells")  # fmt: skip
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    args.systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    return args


def measure_rows(all_rows, needed, columns, infos, results, args, env) -> None:
    """Measures every needed row in order (a derived row reads its source's cells)."""
    for row in all_rows:
        if row.letter not in needed:
            continue
        cells, jobs = {}, {}
        for label, system, suffix in columns:
            if row.source:
                cells[label] = derived(row, results[row.source, label])
                continue
            func = f"{row.letter}_{suffix}" if suffix else row.letter
            cell = not_runnable(row, func, infos[system])
            if cell is not None:
                cells[label] = cell
            else:
                jobs[label] = (system, func)
        measure(row, cells, jobs, args, env)
        for label, *_ in columns:
            results[row.letter, label] = cells[label]


def main(argv=None) -> None:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    sizes = common.sizes(args.quick)
    all_rows = rows(sizes)
    table_rows = [row for row in all_rows if row.letter in args.only]
    # a derived row needs its source measured, shown or not
    needed = {row.letter for row in table_rows} | {row.source for row in table_rows if row.source}
    columns = [col for col in COLUMNS if col[1] in args.systems]
    spin_n = common.calibrate_spin(sizes["cpu_task_s"]) if "f" in args.only else 0
    ceiling = common.parallel_ceiling(spin_n) if spin_n else None
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        VOLLEY_BENCH_QUICK="1" if args.quick else "0",
        VOLLEY_BENCH_SPIN_N=str(spin_n),
        RAY_USAGE_STATS_ENABLED="0",
    )
    load_before = _loadavg()
    infos = {system: call_cell(system, ["info", system], env, 120) for system in args.systems}
    results = {}
    with background_load(args.background):
        measure_rows(all_rows, needed, columns, infos, results, args, env)
    notes = Notes()
    table = summary_table(table_rows, columns, results, notes)
    footnotes = "\n".join(f"[{i}] {text}  " for i, text in enumerate(notes.texts, 1))
    print(table)
    if footnotes:
        print("\n" + footnotes)
    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    args.output.write_text(
        REPORT.format(
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine(),
            load=f"{load_before} before, {_loadavg()} after; background busy processes: "
            f"{args.background}",
            command=command,
            runs=args.runs,
            timeout=args.timeout,
            settle=sizes["settle_s"],
            gets=sizes["gets"],
            readers=sizes["readers"],
            spill_store=sizes["spill_store_mib"],
            spill_objects=sizes["spill_objects"],
            object_mib=sizes["object_mib"],
            spill_total=sizes["spill_objects"] * sizes["object_mib"],
            **{k: sizes[k] for k in ACTOR_SIZES},
            spin_note=SPIN_NOTE.format(spin_n=spin_n, ceiling=ceiling) if spin_n else "",
            versions=versions_table(infos),
            table=table,
            footnotes=footnotes or "(none)",
            detail=detail_table(table_rows, columns, results),
        )
    )
    print(f"\nwritten to {args.output}", file=sys.stderr)


ACTOR_SIZES = (
    "actor_calls",
    "actor_round_trips",
    "actor_arg_calls",
    "actor_arg_mib",
    "callers",
    "caller_actors",
    "caller_calls",
    "actors_created",
    "actor_wave",
    # clusters
    "tasks",
    "node_store_mib",
    "transfer_mib",
    "transfer_big_mib",
    "broadcast_mib",
    # numeric libraries' threads
    "blas_tasks",
)

SPIN_NOTE = """ (f) work per task: spin({spin_n:,}); two bare forked
  processes reach a speedup of {ceiling:.2f}x over serial on the same work on this machine (the
  practical ceiling for every system in row f)."""

REPORT = """# volley benchmark results

- Date: {date}
- Machine: {machine}
- Command: `{command}`
- Load average (1/5/15 min): {load} (other work on the machine skews the figures)
- Each cell: a fresh interpreter per run, {runs} run(s), median shown; timeout {timeout:.0f} s.
  The runs of a row alternate between the systems (run 1 of each, then run 2, ...).
- All systems use 2 worker processes.{spin_note}

{versions}

## Summary

Times are wall-clock; "volley vs X" is oriented so that **> 1 means volley is better**
(X's time or memory / volley's; for (f), volley's speedup / X's). "mp" is
`multiprocessing.Pool.apply_async`/`apply`; "mp.map" is `Pool.map(chunksize=1)`; "cf" is
`concurrent.futures.ProcessPoolExecutor`; "-" means the column does not apply to that row.

{table}

{footnotes}

## How each row is measured

- (a) In a fresh interpreter, from just before the library import to the first result of a
  trivial task: import + init + first task (mp: `Pool` creation + first `apply`; cf: executor
  creation + first `submit().result()`; joblib: import + first `Parallel` call; dask: import +
  `LocalCluster`/`Client` creation + first `submit` result). Interpreter start-up is excluded.
- (b), (c), (f), (g): after init and a warm-up (a few no-op tasks on both workers and one call of
  each function used), so worker start-up and function export are not timed.
- (b) One submit per task (volley/ray `.remote`, dask `client.submit(pure=False)`, mp
  `apply_async`, cf `submit`), then one gather; joblib runs one `Parallel` over the delayed
  no-ops (its own auto-batching); mp.map is `Pool.map(noop, range(n), chunksize=1)`.
- (f) Serial time is the same 8 spins run in the driver before init; speedup = serial / parallel,
  each side the best of 2 timings; 2.0 is the ideal with 2 workers.
- (fb) After init and one task per worker (numpy and its BLAS library loaded there), all
  {blas_tasks} tasks submitted, then gathered. Each system keeps its own policy for the threads
  of numeric libraries in workers: volley gives them as many as the task holds CPUs (one here);
  Ray, Dask and joblib document similar limits; `multiprocessing` and `concurrent.futures`
  leave the libraries' default, one thread per core in every worker.
- (g) All leaves are submitted, then each level of `add(left, right)` with the previous level's
  references as arguments; only the root is fetched (and checked).
- (h) After init and warm-up, a {settle}-s pause, then the sum of PSS
  (`/proc/<pid>/smaps_rollup`) over the driver and all its descendant processes; PSS splits
  shared pages between the processes that share them, so forked workers are not double counted
  (RSS from `/proc/<pid>/status` only where PSS is unreadable; the row label says which).
- (i)-(n) object store. The object is `np.random.default_rng(0).random(...)` (float64), made
  before the timed region. "Put" is `volley.put` / `ray.put` / dask `client.scatter` (one
  worker holds it) / joblib `joblib.dump` to a file in the folder joblib's auto-memmapping uses
  (/dev/shm when it has room) plus `joblib.load(mmap_mode="r")` / mp: a new
  `multiprocessing.shared_memory.SharedMemory` of the array's size with the array copied in;
  cf has no store (its tasks use shared_memory in (k) and (m)). After init, a warm-up.
- (i) One put, after two untimed put-and-drop rounds (a store in steady state); dask's timed
  scatter uses its default `hash=True` (the array is tokenized), the warm-ups `hash=False`.
- (j) Median of {gets} gets in one run (one get is microseconds: a single timing would be noise):
  `volley.get` / `ray.get` (zero-copy read-only views), dask `client.gather` (a copy over TCP),
  `joblib.load(mmap_mode="r")`, mp: attach the segment by name and wrap it in an `np.ndarray`.
- (k) A task returns `float(x.sum())` given the stored object (ref, future, memmap, or
  shared-memory name); two untimed calls first (numpy imported, data mapped), then one timed.
  (k0) is `arr.sum()` in the driver (after one untimed sum), the same code in every column:
  (k) / (k0) is the price of running the sum in a task.
- (l) As (k) with the array itself as the argument: `f.remote(arr)` (an implicit put),
  `client.submit(f, arr)` (through the scheduler), mp `apply` / cf `submit` (pickled through a
  pipe), a fresh `joblib.Parallel(n_jobs=2)([delayed(f)(arr)])` (auto-memmap: hash, dump,
  load, delete); one identical untimed call first.
- (m) The array is put once (untimed); then {readers} tasks each return
  `float(x[::4096].sum())` (one float64 in 4096: every 8th page, not CPU bound) and are
  gathered. (m-rss) is the largest VmRSS (`/proc/self/status`) of a worker at the end of a
  reader task: for the zero-copy systems it counts only the pages of the shared mapping that
  the task touched (the kernel maps resident neighbours of each faulting page too, so a sampled
  read can map most of the array) plus the worker's own memory; for dask, the worker's own
  copy of the array. The details give `anon_mib`, the largest RssAnon (private memory only:
  a copy of the array shows there, a shared mapping does not).
- (n) volley and ray only, each with a {spill_store}-MiB object store and a fresh spill
  directory: put {spill_objects} distinct {object_mib}-MiB arrays (array i full of i), keeping
  every ref, then get each back, check its first and last element, and drop it; (n-rate) is
  the nominal rate 2 x {spill_total} MiB (put, then got) / that time. The details give what
  the store did: volley's spill and restore counts, the number of files in ray's spill folder.
- (o)-(s) actors, volley and ray only (the other systems have no actors). The same code for
  both (`benchmarks/systems/_actor_api.py`): the actor class is `lib.remote(Pinger)` with
  `.options(num_cpus=0)` stated (both systems' lifetime default; Ray's default actor would
  also need a free CPU to be placed); `ping()` returns 1. After init and the usual warm-up,
  each row starts its actors and calls each once before the timed region.
- (o) {actor_calls:,} `ping.remote()` calls on one actor, submitted back to back, then one get
  of the list of refs (the details give the submit time alone).
- (p) {actor_round_trips:,} times `get(actor.ping.remote())`.
- (q) {actor_arg_calls} calls of `actor.total.remote(arr)` (returns `float(arr.sum())`) with
  the same {actor_arg_mib}-MiB float64 array, all submitted, then gathered; one identical
  untimed call first.
- (r) {callers} tasks (default num_cpus=1: a task blocked in get lends its CPU, in both
  systems), each given the handles of the same {caller_actors} actors, each submitting
  {caller_calls} `ping.remote()` calls round-robin over them and then getting them; the time
  from submitting the tasks to getting their results. Two untimed rounds of the callers with
  1 and {caller_actors} calls each run first (the task shipped, handles unpickled in the
  workers, the extra workers started).
- (s) Waves of {actor_wave}: create {actor_wave} actors, one `ping` on each (all gathered:
  every actor started and answered), then `kill` each; repeated to {actors_created:,} actors.
  One actor created, called and killed before the timed region. (s-rate) is actors / time.
  {actors_created:,} actors rather than 1,000: Ray starts about 3 actors/s on 2 cores (its
  worker start-up concurrency is the CPU count), so 1,000 took it 324 s in one run (volley
  30 s), past the {timeout:.0f}-s cell timeout.
- (t)-(v) clusters, volley and ray only, the same code for both
  (`benchmarks/systems/_cluster_api.py`), each system started as a cluster on loopback: a head
  with 0 CPUs that the driver attaches to, and worker nodes with their own object stores
  ({node_store_mib}-MiB each): volley as `volley start --block` daemons on 127.0.0.x joined
  with `init(address=...)`, Ray as `ray.cluster_utils.Cluster` (one raylet per node). Cluster
  start-up is not timed.
- (t) One 2-CPU node: after 16 warm-up tasks, {tasks:,} no-op tasks submitted, then gathered;
  every task runs on the other node. Compare with (b) for the single-node figure.
- (u), (u1) One 1-CPU node: the driver puts a {transfer_mib}-MiB (u1: {transfer_big_mib}-MiB)
  float64 array; the timed region is `get(nbytes.remote(ref))` with `nbytes` returning
  `a.nbytes` on the other node (its worker started and the function shipped beforehand).
  (u-rate), (u1-rate): size / time, including the task's round trip. Both stores start cold:
  the receiver writes into memory it never used. On this VM the host backs such memory page
  by page on first touch, at a cost that changes from minute to minute (volley's 1-GiB pull:
  0.47-0.55 s in one 7-run series, 0.76-1.65 s in the one before it, `perf` showing the copy
  into fresh pages as nearly all of the receiver's time in the slow ones).
- (uw), (u1w): the same after one untimed transfer of the same size and a 0.5-s pause, so both
  stores reuse memory already in use once (the steady state of a long job).
- (v) Three 1-CPU nodes: one {broadcast_mib}-MiB array put by the driver, read by one task on
  each node (Ray: `scheduling_strategy="SPREAD"`; volley places each task on the least loaded
  node), all gathered.
- (w)-(dg) The adapters, on 2 CPUs, each after a warm-up call outside the timed region. (w),
  (x): `Parallel(n_jobs=2)` with joblib's defaults (auto-batching; loky memmaps arrays above
  1 MB into a temporary folder), the volley column under `parallel_config(backend="volley")`.
  (xw): (x) after one untimed call of the same kind with `arr + 1` and a 0.5-s pause (both
  stores, volley's and loky's temporary folder, reuse memory already touched once).
  (y), (ya): `list(volley.map(f, items))` vs `Pool(2).map(f, items)` (default chunksize).
  (z), (za): `volley.futures.Executor()` vs `ProcessPoolExecutor(2)`. (dg): the (g) tree built
  with `dask.delayed` outside the timed region, then `.compute()` with `volley.dask.get`, with a
  2-worker `distributed` client (dask column) and with `scheduler="threads"` (dask.thr column,
  2 threads).

## Detail

{detail}
"""

if __name__ == "__main__":
    main()
