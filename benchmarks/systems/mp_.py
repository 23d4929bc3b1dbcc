"""multiprocessing.Pool(2) with the platform's default start method (fork on Linux, 3.11)."""

import multiprocessing
import time
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ()
DISTRIBUTIONS = ()
NOT_APPLICABLE = {
    "g": "Pool tasks cannot take pending results as arguments",
    "n": "multiprocessing.shared_memory has no capacity and no spilling",
}


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


def fb():
    n = common.SIZES["blas_tasks"]
    with session() as pool:
        pool.map(common.matmul_chain, range(common.WORKERS), chunksize=1)
        t0 = time.perf_counter()
        out = [r.get() for r in [pool.apply_async(common.matmul_chain, (i,)) for i in range(n)]]
        elapsed = time.perf_counter() - t0
        common.check_matmuls(out)
        return elapsed


def h():
    with session() as pool:
        warm(pool)
        return common.idle_memory()


# --- object store, (i)-(m): multiprocessing.shared_memory is the honest equivalent. Its
# "put" creates a SharedMemory segment of the array's size and copies the array in; readers
# attach by name and wrap the buffer in an np.ndarray (zero-copy). The segment is created
# before the Pool forks, so the workers share the driver's resource tracker. ---


def i():
    """One SharedMemory(create=True) + copy-in, after two untimed create+copy+unlink rounds;
    each put is a new segment, so its pages are always fresh."""
    arr = common.big_array()
    for _ in range(2):
        common.shm_free(common.shm_put(arr))
    t0 = time.perf_counter()
    shm = common.shm_put(arr)
    elapsed = time.perf_counter() - t0
    common.shm_free(shm)
    return elapsed


def j():
    """Attach to the segment by name, as a reader that has only the name, and wrap it in an
    np.ndarray (zero-copy); the attachments are closed after the timing."""
    from multiprocessing import resource_tracker, shared_memory

    import numpy as np

    arr = common.big_array()
    facts = common.array_facts(arr)
    shape, dtype = arr.shape, arr.dtype
    attached = []

    def get():
        shm = shared_memory.SharedMemory(name=name)
        attached.append(shm)
        return np.ndarray(shape, dtype, buffer=shm.buf)

    with common.shared_copy(arr) as (name, _, _):
        del arr
        try:
            return common.median_get(get, facts)
        finally:
            for shm in attached:
                shm.close()
                resource_tracker.unregister(shm._name, "shared_memory")  # the creator unlinks


def k():
    """pool.apply(f, (name,)): the task attaches by name; two untimed tasks first."""
    arr = common.big_array()
    expected = float(arr.sum())
    segment = common.shared_copy(arr)
    del arr  # before the workers fork: they would count the driver's pages in their RSS
    with segment as spec, session() as pool:
        warm(pool)
        pool.map(common.shm_sum, [spec] * common.WORKERS, chunksize=1)
        t0 = time.perf_counter()
        value = pool.apply(common.shm_sum, (spec,))
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


k0 = common.local_sum


def l():  # noqa: E743 -- the benchmark's letter
    """pool.apply(f, (arr,)): the array is pickled through the pool's pipe; one identical
    untimed call first."""
    arr = common.big_array()
    expected = float(arr.sum())
    with session() as pool:
        warm(pool)
        pool.apply(common.array_sum, (arr,))
        t0 = time.perf_counter()
        value = pool.apply(common.array_sum, (arr,))
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


def m():
    """apply_async per reader with the segment's name; one shm_put (untimed) of the array."""
    import numpy as np

    arr = common.big_array(common.SIZES["readers_mib"])
    expected = float(arr[::4096].sum())
    segment = common.shared_copy(arr)
    del arr  # before the workers fork: they would count the driver's pages in their RSS
    with segment as spec, session() as pool:
        warm(pool)
        pool.map(common.sample_sum, [np.ones(8192)] * common.WORKERS, chunksize=1)
        t0 = time.perf_counter()
        pending = [
            pool.apply_async(common.shm_sample_sum, (spec,)) for _ in range(common.SIZES["readers"])
        ]
        results = [p.get() for p in pending]
        elapsed = time.perf_counter() - t0
        return common.readers_result(elapsed, results, expected)


def y():
    """(y): Pool.map with its default chunksize."""
    n = common.SIZES["map_items"]
    with session() as pool:
        warm(pool)
        t0 = time.perf_counter()
        out = pool.map(common.noop, range(n))
        elapsed = time.perf_counter() - t0
    common.check_count(out, n)
    return elapsed


def ya():
    items = [common.SIZES["map_cpu_n"]] * common.SIZES["map_cpu_items"]
    with session() as pool:
        warm(pool)
        t0 = time.perf_counter()
        out = pool.map(common.spin, items)
        elapsed = time.perf_counter() - t0
    common.check_count(out, len(items))
    return elapsed
