"""The cluster rows (t)-(v) for volley and Ray, each system started as a cluster on loopback:
a head that runs no tasks (0 CPUs; the driver attaches to it) and worker nodes, each with its
own object store. Each function takes the system's `cluster(node_cpus)` context manager (yielding
the library) and a `spread` helper (how the system asks to place tasks on different nodes), so
both run exactly the same code."""

import time

import numpy as np

from benchmarks import common


def _nbytes(a):
    return a.nbytes


def t(cluster, spread):
    """No-op tasks submitted from the driver, all run on the other node, then gathered."""
    n = common.SIZES["tasks"]
    with cluster([common.WORKERS]) as lib:
        noop = lib.remote(common.noop)
        lib.get([noop.remote() for _ in range(8 * common.WORKERS)])
        t0 = time.perf_counter()
        common.check_count(lib.get([noop.remote() for _ in range(n)]), n)
        return time.perf_counter() - t0


def _transfer(cluster, mib, warm=False):
    arr = np.ones((mib << 20) // 8)
    with cluster([1]) as lib:
        nbytes = lib.remote(_nbytes)
        lib.get(nbytes.remote(np.ones(4)))  # the worker started, the function shipped
        if warm:
            # One untimed transfer of the same size first: both stores' memory is in use once
            # (the first touch of fresh pages, zeroed by the kernel, costs more than the copy).
            first = lib.put(arr)
            lib.get(nbytes.remote(first))
            del first
            time.sleep(0.5)
        ref = lib.put(arr)
        t0 = time.perf_counter()
        got = lib.get(nbytes.remote(ref))
        elapsed = time.perf_counter() - t0
        if got != arr.nbytes:
            raise AssertionError(f"read {got} bytes, expected {arr.nbytes}")
        return elapsed


def u(cluster, spread):
    """put a 100 MiB array on the driver's node; a task on the other node reads it."""
    return _transfer(cluster, common.SIZES["transfer_mib"])


def u1(cluster, spread):
    """(u) with 1 GiB."""
    return _transfer(cluster, common.SIZES["transfer_big_mib"])


def uw(cluster, spread):
    """(u) after one untimed transfer of the same size."""
    return _transfer(cluster, common.SIZES["transfer_mib"], warm=True)


def u1w(cluster, spread):
    """(u1) after one untimed transfer of the same size."""
    return _transfer(cluster, common.SIZES["transfer_big_mib"], warm=True)


def v(cluster, spread):
    """One 200 MiB array, read by one task on each of 3 nodes."""
    nodes = common.SIZES["broadcast_nodes"]
    arr = np.ones((common.SIZES["broadcast_mib"] << 20) // 8)
    with cluster([1] * nodes) as lib:
        nbytes = spread(lib, lib.remote(_nbytes))
        lib.get([nbytes.remote(np.ones(4)) for _ in range(nodes)])
        ref = lib.put(arr)
        t0 = time.perf_counter()
        got = lib.get([nbytes.remote(ref) for _ in range(nodes)])
        elapsed = time.perf_counter() - t0
        if got != [arr.nbytes] * nodes:
            raise AssertionError(f"read {got}")
        return elapsed
