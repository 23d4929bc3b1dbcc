"""concurrent.futures.ProcessPoolExecutor(max_workers=2), default start method."""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ()
DISTRIBUTIONS = ()
_NO_STORE = (
    "concurrent.futures has no object store; multiprocessing.shared_memory, which cf tasks "
    "use in (k) and (m), is measured in the mp column"
)
NOT_APPLICABLE = {
    "g": "executor tasks cannot take futures as arguments",
    "i": _NO_STORE,
    "j": _NO_STORE,
    "n": "no object store to spill from",
}


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


def fb():
    n = common.SIZES["blas_tasks"]
    with session() as executor:
        list(executor.map(common.matmul_chain, range(common.WORKERS)))
        t0 = time.perf_counter()
        out = [f.result() for f in [executor.submit(common.matmul_chain, i) for i in range(n)]]
        elapsed = time.perf_counter() - t0
        common.check_matmuls(out)
        return elapsed


def h():
    with session() as executor:
        warm(executor)
        return common.idle_memory()


# --- object store, (k)-(m): tasks get a multiprocessing.shared_memory segment's name (the
# executor's processes fork after the segment exists, so they share the resource tracker). ---


def k():
    """executor.submit(f, name): the task attaches by name; two untimed tasks first."""
    arr = common.big_array()
    expected = float(arr.sum())
    segment = common.shared_copy(arr)
    del arr  # before the workers fork: they would count the driver's pages in their RSS
    with segment as spec, session() as executor:
        warm(executor)
        list(executor.map(common.shm_sum, [spec] * common.WORKERS))
        t0 = time.perf_counter()
        value = executor.submit(common.shm_sum, spec).result()
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


k0 = common.local_sum


def l():  # noqa: E743 -- the benchmark's letter
    """executor.submit(f, arr): the array is pickled through the executor's pipe; one
    identical untimed call first."""
    arr = common.big_array()
    expected = float(arr.sum())
    with session() as executor:
        warm(executor)
        executor.submit(common.array_sum, arr).result()
        t0 = time.perf_counter()
        value = executor.submit(common.array_sum, arr).result()
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


def m():
    """One submit per reader with the segment's name; one shm_put (untimed) of the array."""
    import numpy as np

    arr = common.big_array(common.SIZES["readers_mib"])
    expected = float(arr[::4096].sum())
    segment = common.shared_copy(arr)
    del arr  # before the workers fork: they would count the driver's pages in their RSS
    with segment as spec, session() as executor:
        warm(executor)
        list(executor.map(common.sample_sum, [np.ones(8192)] * common.WORKERS))
        t0 = time.perf_counter()
        futures = [
            executor.submit(common.shm_sample_sum, spec) for _ in range(common.SIZES["readers"])
        ]
        results = [fut.result() for fut in futures]
        elapsed = time.perf_counter() - t0
        return common.readers_result(elapsed, results, expected)


def z():
    n = common.SIZES["ex_tasks"]
    with session() as executor:
        warm(executor)
        t0 = time.perf_counter()
        futures = [executor.submit(common.noop) for _ in range(n)]
        out = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
    common.check_count(out, n)
    return elapsed


def za():
    with session() as executor:
        warm(executor)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["ex_round_trips"]):
            executor.submit(common.noop).result()
        return time.perf_counter() - t0
