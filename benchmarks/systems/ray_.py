"""Ray: @ray.remote tasks and ray.get, after ray.init(num_cpus=2) without dashboard."""

import time
from contextlib import contextmanager

from benchmarks import common
from benchmarks.systems import _actor_api, _cluster_api, _ref_api

LIBRARIES = ("ray",)
DISTRIBUTIONS = ("ray",)


@contextmanager
def session(**options):
    """options go to ray.init (object_store_memory=, _system_config=)."""
    import ray

    ray.init(num_cpus=common.WORKERS, include_dashboard=False, log_to_driver=False, **options)
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


def fb():
    return _ref_api.fb(session)


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


# --- object store, (i)-(n): ray.put / ray.get; the plasma store in shared memory ---


def i():
    return _ref_api.i(session, warm)


def j():
    return _ref_api.j(session, warm)


def k():
    return _ref_api.k(session, warm)


k0 = common.local_sum


def l():  # noqa: E743 -- the benchmark's letter
    return _ref_api.l(session, warm)


def m():
    return _ref_api.m(session, warm)


def n():
    """Puts 3x the store's capacity (all refs kept), then gets each object back and checks it;
    Ray spills primary copies to a fresh directory (its documented filesystem spilling config,
    the same as ray.init(object_spilling_directory=...)) and restores them on get."""
    import json
    import os
    import shutil
    import tempfile

    arrays = common.spill_arrays()
    spill_dir = tempfile.mkdtemp(prefix="volley-bench-spill-")
    spilling = {"type": "filesystem", "params": {"directory_path": spill_dir}}
    try:
        with session(
            object_store_memory=common.SIZES["spill_store_mib"] * 2**20,
            _system_config={"object_spilling_config": json.dumps(spilling)},
        ) as ray:
            warm(ray)
            t0 = time.perf_counter()
            refs = [ray.put(a) for a in arrays]
            for index, ref in enumerate(refs):
                x = ray.get(ref)
                common.check_spilled(index, x)
                del x
            elapsed = time.perf_counter() - t0
            files = sum(len(names) for _, _, names in os.walk(spill_dir))
            return {"value": elapsed, "spill_files": files}
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


# --- actors, (o)-(s): lib.remote(cls), .options(num_cpus=0).remote(), handle.method.remote ---


def o():
    return _actor_api.o(session, warm)


def p():
    return _actor_api.p(session, warm)


def q():
    return _actor_api.q(session, warm)


def r():
    return _actor_api.r(session, warm)


def s():
    return _actor_api.s(session, warm)


@contextmanager
def cluster(node_cpus):
    """ray.cluster_utils.Cluster on this machine: a head with 0 CPUs (the driver attaches to it)
    and one raylet per entry of node_cpus, each with its own object store."""
    import ray
    from ray.cluster_utils import Cluster

    store = common.SIZES["node_store_mib"] << 20
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": store, "include_dashboard": False},
    )
    try:
        for cpus in node_cpus:
            c.add_node(num_cpus=cpus, object_store_memory=store)
        ray.init(address=c.address, log_to_driver=False)
        c.wait_for_nodes()
        yield ray
    finally:
        ray.shutdown()
        c.shutdown()


def _spread(lib, fn):
    return fn.options(scheduling_strategy="SPREAD")


def t():
    return _cluster_api.t(cluster, _spread)


def u():
    return _cluster_api.u(cluster, _spread)


def u1():
    return _cluster_api.u1(cluster, _spread)


def uw():
    return _cluster_api.uw(cluster, _spread)


def u1w():
    return _cluster_api.u1w(cluster, _spread)


def v():
    return _cluster_api.v(cluster, _spread)
