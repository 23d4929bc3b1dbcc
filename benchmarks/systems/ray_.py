"""Ray: @ray.remote tasks and ray.get, after ray.init(num_cpus=2) without dashboard."""

import time
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ("ray",)
DISTRIBUTIONS = ("ray",)


@contextmanager
def session():
    import ray

    ray.init(num_cpus=common.WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def warm(ray, *calls):
    """Starts both workers and exports each function once, outside the timed region."""
    noop = ray.remote(common.noop)
    ray.get([noop.remote() for _ in range(4 * common.WORKERS)])
    for fn, args in calls:
        ray.get(fn.remote(*args))


def a():
    t0 = time.perf_counter()
    with session() as ray:
        ray.get(ray.remote(common.noop).remote())
        return time.perf_counter() - t0


def b():
    n = common.SIZES["tasks"]
    with session() as ray:
        noop = ray.remote(common.noop)
        warm(ray)
        t0 = time.perf_counter()
        refs = [noop.remote() for _ in range(n)]
        common.check_count(ray.get(refs), n)
        return time.perf_counter() - t0


def c():
    with session() as ray:
        noop = ray.remote(common.noop)
        warm(ray)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            ray.get(noop.remote())
        return time.perf_counter() - t0


def f():
    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with session() as ray:
        spin = ray.remote(common.spin)
        warm(ray, (spin, (1,)))
        parallel = common.best_of(
            lambda: ray.get([spin.remote(n) for _ in range(common.SIZES["cpu_tasks"])])
        )
        return common.speedup(serial, parallel)


def g():
    with session() as ray:
        leaf, add = ray.remote(common.leaf), ray.remote(common.add)
        warm(ray, (leaf, (0,)), (add, (1, 2)))
        t0 = time.perf_counter()
        total = ray.get(common.tree_reduce(leaf.remote, add.remote))
        elapsed = time.perf_counter() - t0
        common.check_tree(total)
        return elapsed


def h():
    with session() as ray:
        warm(ray)
        return common.idle_memory()
