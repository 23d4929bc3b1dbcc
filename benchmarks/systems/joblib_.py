"""joblib Parallel(n_jobs=2) with the default loky backend (reusable worker processes)."""

import time

from benchmarks import common

LIBRARIES = ("joblib",)
DISTRIBUTIONS = ("joblib",)
NOT_APPLICABLE = {"g": "Parallel calls cannot take pending results as arguments"}


def describe() -> str:
    return "backend loky"


def warm(parallel, delayed):
    parallel(delayed(common.noop)(i) for i in range(4 * common.WORKERS))


def a():
    t0 = time.perf_counter()
    from joblib import Parallel, delayed

    Parallel(n_jobs=common.WORKERS)([delayed(common.noop)()])
    return time.perf_counter() - t0


def b():
    from joblib import Parallel, delayed

    n = common.SIZES["tasks"]
    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        t0 = time.perf_counter()
        common.check_count(parallel(delayed(common.noop)(i) for i in range(n)), n)
        return time.perf_counter() - t0


def c():
    """One single-task Parallel call per round trip, on a kept-open Parallel (pool reused)."""
    from joblib import Parallel, delayed

    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            parallel([delayed(common.noop)()])
        return time.perf_counter() - t0


def f():
    from joblib import Parallel, delayed

    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        elapsed = common.best_of(
            lambda: parallel(delayed(common.spin)(n) for _ in range(common.SIZES["cpu_tasks"]))
        )
        return common.speedup(serial, elapsed)


def h():
    from joblib import Parallel, delayed

    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        return common.idle_memory()
