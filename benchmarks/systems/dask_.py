"""Dask distributed: client.submit(pure=False) on a 2-process LocalCluster, one thread each."""

import time
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ("dask", "distributed")
DISTRIBUTIONS = ("dask", "distributed")


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
