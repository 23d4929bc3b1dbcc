"""Workloads, problem sizes and measurement helpers shared by every system module."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

WORKERS = 2  # every system gets two worker processes (num_cpus=2)


class NotApplicable(Exception):
    """Raised by a benchmark that a system cannot express (shown as "n/a")."""


def ray_python(asked: str | None, module: str, *more: str) -> str | None:
    """The first interpreter that can ``import module`` (``ray.tune``, ``ray.serve``): the one
    asked for (``--ray-python``), ``$VOLLEY_BENCH_RAY_PYTHON``, then ``more``; None if none
    can (the Ray side is skipped)."""
    for cand in (asked, os.environ.get("VOLLEY_BENCH_RAY_PYTHON"), *more):
        if cand and os.path.exists(cand):
            run = subprocess.run([cand, "-c", f"import {module}"], capture_output=True)
            if run.returncode == 0:
                return cand
    return None


def sizes(quick: bool) -> dict:
    """Problem sizes; --quick shrinks them for a smoke test."""
    return {
        "tasks": 1_000 if quick else 10_000,  # (b)
        "round_trips": 100 if quick else 1_000,  # (c)
        "cpu_tasks": 8,  # (f)
        "cpu_task_s": 0.05 if quick else 0.25,  # (f)
        "blas_tasks": 8,  # (fb)
        "blas_n": 200 if quick else 600,  # (fb): matrix side
        "blas_products": 30,  # (fb): products per task
        "leaves": 512 if quick else 4_096,  # (g)
        "settle_s": 0.5 if quick else 2.0,  # (h)
        "object_mib": 100,  # (i), (j), (k), (k0), (l), and each object of (n)
        "gets": 20,  # (j): gets per run, the median is reported
        "readers": 10,  # (m)
        "readers_mib": 128 if quick else 1024,  # (m)
        "spill_objects": 9,  # (n)
        "spill_store_mib": 300,  # (n): object store capacity, a third of what (n) puts
        "actor_calls": 1_000 if quick else 10_000,  # (o)
        "actor_round_trips": 100 if quick else 1_000,  # (p)
        "actor_arg_calls": 20 if quick else 200,  # (q)
        "actor_arg_mib": 1,  # (q): the array passed to each call
        "callers": 8,  # (r): caller tasks
        "caller_actors": 8,  # (r): actors every caller calls
        "caller_calls": 20 if quick else 200,  # (r): calls per caller
        # (s): not 1,000: Ray starts ~3 actors/s on 2 cores (1,000 took it 324 s, past the
        # cell timeout; 5 runs would take half an hour)
        "actors_created": 100 if quick else 300,
        "actor_wave": 100,  # (s): actors alive at once
        "transfer_mib": 100,  # (u)
        "transfer_big_mib": 256 if quick else 1024,  # (u1)
        "broadcast_mib": 200,  # (v)
        "broadcast_nodes": 3,  # (v)
        "node_store_mib": 2048 if not quick else 1024,  # (t)-(v): each node's object store
        "jl_tasks": 1_000 if quick else 10_000,  # (w): joblib tiny calls
        "jl_arrays": 8,  # (x): joblib calls, each given the same array
        "jl_array_mib": 100,  # (x)
        "map_items": 100_000 if quick else 1_000_000,  # (y): no-op items
        "map_cpu_items": 32,  # (ya): CPU-bound items
        "map_cpu_n": 200_000 if quick else 1_000_000,  # (ya): spin(n) per item
        "ex_tasks": 1_000 if quick else 10_000,  # (z): executor submits
        "ex_round_trips": 100 if quick else 1_000,  # (za)
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


def matmul_chain(seed: int) -> float:
    """(fb): SIZES["blas_products"] products of a random square float64 matrix with itself
    (numpy's BLAS, which is multi-threaded unless told otherwise), normalised after each."""
    import numpy as np

    a = np.random.default_rng(seed).random((SIZES["blas_n"], SIZES["blas_n"]))
    for _ in range(SIZES["blas_products"]):
        a = a @ a
        a /= np.abs(a).max()
    return float(a[0, 0])


def check_matmuls(results: list) -> None:
    """(fb): one finite float per task."""
    n = SIZES["blas_tasks"]
    if len(results) != n or not all(isinstance(x, float) and x == x for x in results):
        raise AssertionError(f"expected {n} floats, got {results!r}")


def leaf(i: int) -> int:
    return i


def add(a: int, b: int) -> int:
    return a + b


def array_sum(x) -> float:
    """(k), (l): reads every element of the array it is given."""
    return float(x.sum())


def sample_sum(x) -> tuple:
    """(m): sums one element in 4096 (every 8th page of float64s, not CPU bound) and reports
    this process's (VmRSS, RssAnon) in MiB at the end of the task, while it holds the array."""
    return float(x[::4096].sum()), *rss_mib()


def shm_sum(spec) -> float:
    """(k) for multiprocessing.shared_memory: attach by name, sum, detach."""
    return _with_shm(spec, array_sum)


def shm_sample_sum(spec) -> tuple:
    """(m) for multiprocessing.shared_memory."""
    return _with_shm(spec, sample_sum)


def _with_shm(spec, fn):
    import numpy as np

    name, shape, dtype = spec
    shm = attach_shm(name)
    try:
        x = np.ndarray(shape, dtype, buffer=shm.buf)
        try:
            return fn(x)
        finally:
            del x  # the view must go before close()
    finally:
        shm.close()


class Pinger:
    """(o)-(s): the actor class (made remote by each system: `lib.remote(Pinger)`)."""

    def ping(self) -> int:
        """The trivial method."""
        return 1

    def total(self, x) -> float:
        """(q): reads every element of the array it is given."""
        return float(x.sum())


def actor_caller(lib_name: str, actors: list, calls: int) -> int:
    """(r): a task that makes `calls` ping() calls round-robin over the actor handles it is
    given, all submitted before one get; returns the sum of the replies (= calls)."""
    import importlib

    lib = importlib.import_module(lib_name)
    refs = [actors[i % len(actors)].ping.remote() for i in range(calls)]
    return sum(lib.get(refs))


def check_replies(replies: list, n: int) -> None:
    """(o)-(s): n replies of ping(), each 1."""
    check_count(replies, n)
    if sum(replies) != n:
        raise RuntimeError(f"replies sum to {sum(replies)}, expected {n}")


# --- object-store helpers, (i)-(n) ---


def big_array(mib: int | None = None):
    """The stored object of (i)-(m): `mib` MiB of float64 (default SIZES["object_mib"])."""
    import numpy as np

    mib = SIZES["object_mib"] if mib is None else mib
    return np.random.default_rng(0).random(mib * 2**20 // 8)


def check_close(value: float, expected: float) -> None:
    if abs(value - expected) > 1e-9 * max(1.0, abs(expected)):
        raise RuntimeError(f"task returned {value}, expected {expected}")


def median_get(get, expected) -> dict:
    """(j): times SIZES["gets"] calls of get() and reports their median (min and max as
    details): one get is a few microseconds for a zero-copy store, so a single timing would be
    mostly timer and scheduling noise. Each result is checked, then dropped, outside the timed
    region. `expected` is array_facts() of the stored array."""
    import statistics

    shape, last = expected
    times = []
    for _ in range(SIZES["gets"]):
        t0 = time.perf_counter()
        x = get()
        times.append(time.perf_counter() - t0)
        if x.shape != shape or x[-1] != last:
            raise RuntimeError(f"get returned shape {x.shape}, last {x[-1]}")
        del x
    return {"value": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def array_facts(arr) -> tuple:
    """What (j) checks each get against."""
    return arr.shape, float(arr[-1])


def local_sum() -> dict:
    """(k0): arr.sum() in the driver on the (k) array, after one untimed sum (the baseline
    for (k); the same code for every system)."""
    arr = big_array()
    arr.sum()
    t0 = time.perf_counter()
    arr.sum()
    return {"value": time.perf_counter() - t0}


def rss_mib() -> tuple:
    """This process's (VmRSS, RssAnon) in MiB from /proc/self/status. VmRSS counts the mapped
    pages of a shared mapping too (for a zero-copy reader, those it touched and their resident
    neighbours); RssAnon only the process's private memory, such as a copy of the array."""
    kb = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                kb[key] = int(rest.split()[0])
    return kb.get("VmRSS", 0) / 1024, kb.get("RssAnon", 0) / 1024


def readers_result(elapsed: float, results: list, expected: float) -> dict:
    """(m): checks the readers' sums; the value is the time, rss_mib the largest VmRSS of a
    reader, anon_mib the largest RssAnon."""
    check_count(results, SIZES["readers"])
    for value, _, _ in results:
        check_close(value, expected)
    return {
        "value": elapsed,
        "rss_mib": max(rss for _, rss, _ in results),
        "anon_mib": max(anon for _, _, anon in results),
    }


def spill_arrays() -> list:
    """(n): distinct SIZES["object_mib"] arrays, the i-th full of the value i."""
    import numpy as np

    n = SIZES["object_mib"] * 2**20 // 8
    return [np.full(n, i, dtype=np.float64) for i in range(SIZES["spill_objects"])]


def check_spilled(i: int, x) -> None:
    if x[0] != i or x[-1] != i:
        raise RuntimeError(f"object {i} came back as {x[0]}..{x[-1]}")


def shm_dir() -> str:
    """Where joblib's auto-memmapping puts large arrays (joblib._memmapping_reducer
    ._get_temp_dir): $JOBLIB_TEMP_FOLDER, else /dev/shm if it has more than 2 GB free, else
    the temporary directory."""
    folder = os.environ.get("JOBLIB_TEMP_FOLDER")
    if folder:
        return folder
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bsize * st.f_bavail > int(2e9) and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def attach_shm(name: str):
    """Opens an existing SharedMemory without handing it to this process's resource tracker:
    the creator owns (and unlinks) it. Before 3.13 attaching registers it, and a tracker of a
    process that exits would unlink it under everyone else (CPython gh-82300)."""
    from multiprocessing import resource_tracker, shared_memory

    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    shm = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def shm_put(arr):
    """multiprocessing.shared_memory's "put": a new segment of arr.nbytes, arr copied in."""
    from multiprocessing import shared_memory

    import numpy as np

    shm = shared_memory.SharedMemory(create=True, size=arr.nbytes)
    view = np.ndarray(arr.shape, arr.dtype, buffer=shm.buf)
    view[:] = arr
    del view  # the view must go before close()
    return shm


def shm_free(shm) -> None:
    shm.close()
    shm.unlink()


@contextmanager
def shared_copy(arr):
    """A shm_put() of arr for the length of the block; yields the (name, shape, dtype) that
    shm_sum() and shm_sample_sum() take."""
    shm = shm_put(arr)
    spec = shm.name, arr.shape, arr.dtype.str
    del arr  # the caller may drop its array now
    try:
        yield spec
    finally:
        shm_free(shm)


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


def dask_tree():
    """(dg): the (g) tree as a Dask graph of delayed leaf/add calls (built, not computed)."""
    import dask

    return tree_reduce(dask.delayed(leaf), dask.delayed(add))


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
