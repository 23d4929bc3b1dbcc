"""multiprocessing.Pool(2) with the platform's default start method (fork on Linux, 3.11)."""

import multiprocessing
import time
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ()
DISTRIBUTIONS = ()
NOT_APPLICABLE = {"g": "Pool tasks cannot take pending results as arguments"}


def describe() -> str:
    return f"start method {multiprocessing.get_start_method()}"


@contextmanager
def session():
    pool = multiprocessing.Pool(common.WORKERS)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def warm(pool):
    pool.map(common.noop, range(4 * common.WORKERS), chunksize=1)


def a():
    t0 = time.perf_counter()
    with session() as pool:
        pool.apply(common.noop)
        return time.perf_counter() - t0


def b():
    """apply_async one task per call, then get each result."""
    n = common.SIZES["tasks"]
    with session() as pool:
        warm(pool)
        t0 = time.perf_counter()
        pending = [pool.apply_async(common.noop) for _ in range(n)]
        common.check_count([p.get() for p in pending], n)
        return time.perf_counter() - t0


def b_map():
    """Pool.map(chunksize=1): one task per item, but submitted in a single call."""
    n = common.SIZES["tasks"]
    with session() as pool:
        warm(pool)
        t0 = time.perf_counter()
        common.check_count(pool.map(common.noop, range(n), chunksize=1), n)
        return time.perf_counter() - t0


def c():
    with session() as pool:
        warm(pool)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            pool.apply(common.noop)
        return time.perf_counter() - t0


def f():
    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with session() as pool:
        warm(pool)
        parallel = common.best_of(
            lambda: pool.map(common.spin, [n] * common.SIZES["cpu_tasks"], chunksize=1)
        )
        return common.speedup(serial, parallel)


def h():
    with session() as pool:
        warm(pool)
        return common.idle_memory()
