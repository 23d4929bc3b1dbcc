"""Workloads, problem sizes and measurement helpers shared by every system module."""

from __future__ import annotations

import os
import time

WORKERS = 2  # every system gets two worker processes (num_cpus=2)


class NotApplicable(Exception):
    """Raised by a benchmark that a system cannot express (shown as "n/a")."""


def sizes(quick: bool) -> dict:
    """Problem sizes; --quick shrinks them for a smoke test."""
    return {
        "tasks": 1_000 if quick else 10_000,  # (b)
        "round_trips": 100 if quick else 1_000,  # (c)
        "cpu_tasks": 8,  # (f)
        "cpu_task_s": 0.05 if quick else 0.25,  # (f)
        "leaves": 512 if quick else 4_096,  # (g)
        "settle_s": 0.5 if quick else 2.0,  # (h)
    }


SIZES = sizes(os.environ.get("VOLLEY_BENCH_QUICK") == "1")


# --- workloads: module-level so every system can pickle them by reference ---


def noop(*_args):
    return None


def spin(n: int) -> int:
    """Pure-Python CPU-bound loop (holds the GIL, so only processes can parallelise it)."""
    x = 0
    for i in range(n):
        x += i
    return x


def leaf(i: int) -> int:
    return i


def add(a: int, b: int) -> int:
    return a + b


# --- helpers ---


def calibrate_spin(seconds: float) -> int:
    """Iteration count that makes spin() take about `seconds` on this machine."""
    n = 1_000_000
    best = min(_timed(spin, n) for _ in range(5))
    return max(1, int(n * seconds / best))


def spin_n() -> int:
    """The spin() size for (f): set by run.py so that all systems use the same work."""
    env = os.environ.get("VOLLEY_BENCH_SPIN_N")
    return int(env) if env else calibrate_spin(SIZES["cpu_task_s"])


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def best_of(fn, repeat: int = 2) -> float:
    """Shortest of `repeat` timed calls of fn(): (f) uses it on both sides to damp noise."""
    return min(_timed(fn) for _ in range(repeat))


def serial_cpu_time(n: int) -> float:
    """Driver-only time of the (f) workload, the baseline of the speedup."""
    return best_of(lambda: [spin(n) for _ in range(SIZES["cpu_tasks"])])


def parallel_ceiling(n: int) -> float:
    """Speedup of two bare forked processes over serial on the (f) work: the machine's limit."""
    return serial_cpu_time(n) / best_of(lambda: _forked_spins(n))


def _forked_spins(n: int) -> None:
    pids = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            for _ in range(SIZES["cpu_tasks"] // WORKERS):
                spin(n)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def speedup(serial_s: float, parallel_s: float) -> dict:
    return {"value": serial_s / parallel_s, "serial_s": serial_s, "parallel_s": parallel_s}


def tree_reduce(submit_leaf, submit_add):
    """Builds the (g) binary tree: leaves first, then one add(left, right) per inner node."""
    level = [submit_leaf(i) for i in range(SIZES["leaves"])]
    while len(level) > 1:
        level = [submit_add(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def check_tree(total: int) -> None:
    n = SIZES["leaves"]
    if total != n * (n - 1) // 2:
        raise RuntimeError(f"tree reduction returned {total}, expected {n * (n - 1) // 2}")


def check_count(results, n: int) -> None:
    if len(results) != n:
        raise RuntimeError(f"got {len(results)} results, expected {n}")


def idle_memory(settle_s: float | None = None) -> dict:
    """(h): after `settle_s`, the memory of this process and all its descendants, in MiB.

    Uses PSS from /proc/<pid>/smaps_rollup (shared pages split between sharers, so forked
    workers are not double-counted); falls back to VmRSS where smaps_rollup is unreadable.
    """
    time.sleep(SIZES["settle_s"] if settle_s is None else settle_s)
    pids = process_tree(os.getpid())
    total_kb, metrics = 0, set()
    for pid in pids:
        kb, metric = _pss_or_rss_kb(pid)
        total_kb += kb
        if metric:
            metrics.add(metric)
    metric = "PSS" if metrics == {"PSS"} else "+".join(sorted(metrics))
    return {"value": total_kb / 1024, "metric": metric, "processes": len(pids)}


def process_tree(root: int) -> list[int]:
    """`root` and every descendant, found by scanning the parent pid of every /proc entry."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _pss_or_rss_kb(pid: int) -> tuple[int, str | None]:
    for path, key, metric in (
        (f"/proc/{pid}/smaps_rollup", "Pss:", "PSS"),
        (f"/proc/{pid}/status", "VmRSS:", "RSS"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]), metric
        except OSError:
            continue
    return 0, None  # exited meanwhile, or a kernel thread
