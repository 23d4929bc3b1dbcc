"""Dask distributed: client.submit(pure=False) on a 2-process LocalCluster, one thread each."""

import time
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ("dask", "distributed")
DISTRIBUTIONS = ("dask", "distributed")
NOT_APPLICABLE = {
    "n": "no object store of a set capacity: workers spill by the memory of the whole worker "
    "process (memory_limit fractions), which is not the same measurement",
}


@contextmanager
def session():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=common.WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def warm(client, *calls):
    """Waits for both workers and ships each function once, outside the timed region."""
    client.wait_for_workers(common.WORKERS)
    client.gather([client.submit(common.noop, pure=False) for _ in range(4 * common.WORKERS)])
    for fn, args in calls:
        client.submit(fn, *args, pure=False).result()


def a():
    t0 = time.perf_counter()
    with session() as client:
        client.submit(common.noop, pure=False).result()
        return time.perf_counter() - t0


def b():
    n = common.SIZES["tasks"]
    with session() as client:
        warm(client)
        t0 = time.perf_counter()
        futures = [client.submit(common.noop, pure=False) for _ in range(n)]
        common.check_count(client.gather(futures), n)
        return time.perf_counter() - t0


def c():
    with session() as client:
        warm(client)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            client.submit(common.noop, pure=False).result()
        return time.perf_counter() - t0


def f():
    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with session() as client:
        warm(client, (common.spin, (1,)))
        parallel = common.best_of(
            lambda: client.gather(
                [
                    client.submit(common.spin, n, pure=False)
                    for _ in range(common.SIZES["cpu_tasks"])
                ]
            )
        )
        return common.speedup(serial, parallel)


def fb():
    n = common.SIZES["blas_tasks"]
    with session() as client:

        def run(k):
            futures = [client.submit(common.matmul_chain, i, pure=False) for i in range(k)]
            return client.gather(futures)

        run(common.WORKERS)  # BLAS loaded in each worker
        t0 = time.perf_counter()
        out = run(n)
        elapsed = time.perf_counter() - t0
        common.check_matmuls(out)
        return elapsed


def g():
    with session() as client:
        warm(client, (common.leaf, (0,)), (common.add, (1, 2)))
        t0 = time.perf_counter()
        root = common.tree_reduce(
            lambda i: client.submit(common.leaf, i, pure=False),
            lambda x, y: client.submit(common.add, x, y, pure=False),
        )
        total = root.result()
        elapsed = time.perf_counter() - t0
        common.check_tree(total)
        return elapsed


def h():
    with session() as client:
        warm(client)
        return common.idle_memory()


# --- object store, (i)-(m): client.scatter puts the array in one worker's memory ---


def i():
    """One client.scatter(arr) (default hash=True: the array is tokenized for its key, as a
    user would see), after two untimed scatter+del pairs with hash=False (fresh keys, so the
    timed one cannot find its key already there)."""
    arr = common.big_array()
    with session() as client:
        warm(client)
        for _ in range(2):
            future = client.scatter(arr, hash=False)
            del future
        t0 = time.perf_counter()
        future = client.scatter(arr)
        elapsed = time.perf_counter() - t0
        del future
        return elapsed


def j():
    """client.gather(future): the array comes back from the worker over TCP (a copy)."""
    arr = common.big_array()
    with session() as client:
        warm(client)
        future = client.scatter(arr)
        facts = common.array_facts(arr)
        del arr
        return common.median_get(lambda: client.gather(future), facts)


def k():
    """client.submit(f, future): runs where the data is (locality); two untimed calls first,
    then one timed call."""
    arr = common.big_array()
    expected = float(arr.sum())
    with session() as client:
        warm(client)
        future = client.scatter(arr)
        del arr
        client.gather(
            [client.submit(common.array_sum, future, pure=False) for _ in range(common.WORKERS)]
        )
        t0 = time.perf_counter()
        value = client.submit(common.array_sum, future, pure=False).result()
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


k0 = common.local_sum


def l():  # noqa: E743 -- the benchmark's letter
    """client.submit(f, arr): the array travels inside the task, through the scheduler (dask
    warns and suggests scatter); one identical untimed call first."""
    arr = common.big_array()
    expected = float(arr.sum())
    with session() as client:
        warm(client)
        client.submit(common.array_sum, arr, pure=False).result()
        t0 = time.perf_counter()
        value = client.submit(common.array_sum, arr, pure=False).result()
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


def m():
    """The readers take the future of one scatter (untimed): the worker that does not hold
    the array fetches a copy from the one that does, inside the timed region."""
    import numpy as np

    with session() as client:
        warm(client)
        small = np.ones(8192)
        client.gather(
            [client.submit(common.sample_sum, small, pure=False) for _ in range(common.WORKERS)]
        )
        arr = common.big_array(common.SIZES["readers_mib"])
        expected = float(arr[::4096].sum())
        future = client.scatter(arr)
        del arr
        t0 = time.perf_counter()
        results = client.gather(
            [
                client.submit(common.sample_sum, future, pure=False)
                for _ in range(common.SIZES["readers"])
            ]
        )
        elapsed = time.perf_counter() - t0
        return common.readers_result(elapsed, results, expected)


def dg():
    """(dg): the (g) tree as dask.delayed, computed on the distributed client."""
    with session() as client:
        warm(client)
        common.dask_tree().compute()  # the client is the default scheduler now
        root = common.dask_tree()
        t0 = time.perf_counter()
        total = root.compute()
        elapsed = time.perf_counter() - t0
    common.check_tree(total)
    return elapsed


def dg_threaded():
    """(dg) with Dask's threaded scheduler, two threads."""
    common.dask_tree().compute(scheduler="threads", num_workers=common.WORKERS)
    root = common.dask_tree()
    t0 = time.perf_counter()
    total = root.compute(scheduler="threads", num_workers=common.WORKERS)
    elapsed = time.perf_counter() - t0
    common.check_tree(total)
    return elapsed
