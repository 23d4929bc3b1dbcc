"""concurrent.futures.ProcessPoolExecutor(max_workers=2), default start method."""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ()
DISTRIBUTIONS = ()
NOT_APPLICABLE = {"g": "executor tasks cannot take futures as arguments"}


def describe() -> str:
    return f"start method {multiprocessing.get_start_method()}"


@contextmanager
def session():
    executor = ProcessPoolExecutor(max_workers=common.WORKERS)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def warm(executor):
    list(executor.map(common.noop, range(4 * common.WORKERS)))


def a():
    t0 = time.perf_counter()
    with session() as executor:
        executor.submit(common.noop).result()
        return time.perf_counter() - t0


def b():
    n = common.SIZES["tasks"]
    with session() as executor:
        warm(executor)
        t0 = time.perf_counter()
        futures = [executor.submit(common.noop) for _ in range(n)]
        common.check_count([fut.result() for fut in futures], n)
        return time.perf_counter() - t0


def c():
    with session() as executor:
        warm(executor)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            executor.submit(common.noop).result()
        return time.perf_counter() - t0


def f():
    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with session() as executor:
        warm(executor)
        parallel = common.best_of(
            lambda: list(executor.map(common.spin, [n] * common.SIZES["cpu_tasks"]))
        )
        return common.speedup(serial, parallel)


def h():
    with session() as executor:
        warm(executor)
        return common.idle_memory()
