"""The object-store rows (i)-(m), and (fb), for systems with the `put` / `get` / `remote` API
(volley and Ray): each function takes the system's `session` context manager (yielding the
library) and, where it needs one, its `warm` helper, so both run exactly the same code."""

import time

from benchmarks import common


def i(session, warm):
    """One put, after two untimed put+del pairs so that the timed one sees a store in steady
    state (its pages already touched once and freed, as in a running program)."""
    arr = common.big_array()
    with session() as lib:
        warm(lib)
        for _ in range(2):
            ref = lib.put(arr)
            del ref
        t0 = time.perf_counter()
        ref = lib.put(arr)
        elapsed = time.perf_counter() - t0
        del ref
        return elapsed


def j(session, warm):
    """lib.get of a stored array: a read-only zero-copy view of the shared memory."""
    arr = common.big_array()
    with session() as lib:
        warm(lib)
        ref = lib.put(arr)
        facts = common.array_facts(arr)
        del arr
        return common.median_get(lambda: lib.get(ref), facts)


def k(session, warm):
    """sum(x) in a task given the ref; two untimed calls first (numpy imported and the data
    mapped in the workers), then one timed call."""
    arr = common.big_array()
    expected = float(arr.sum())
    with session() as lib:
        task = lib.remote(common.array_sum)
        warm(lib)
        ref = lib.put(arr)
        del arr
        lib.get([task.remote(ref) for _ in range(common.WORKERS)])
        t0 = time.perf_counter()
        value = lib.get(task.remote(ref))
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


def l(session, warm):  # noqa: E743 -- the benchmark's letter
    """task.remote(arr): the implicit put of the argument is timed; one identical untimed call
    first."""
    arr = common.big_array()
    expected = float(arr.sum())
    with session() as lib:
        task = lib.remote(common.array_sum)
        warm(lib)
        lib.get(task.remote(arr))
        t0 = time.perf_counter()
        value = lib.get(task.remote(arr))
        elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


def m(session, warm):
    """The readers take the ref of one put (untimed) of the large array."""
    import numpy as np

    with session() as lib:
        task = lib.remote(common.sample_sum)
        warm(lib)
        lib.get([task.remote(np.ones(8192)) for _ in range(common.WORKERS)])
        arr = common.big_array(common.SIZES["readers_mib"])
        expected = float(arr[::4096].sum())
        ref = lib.put(arr)
        del arr
        t0 = time.perf_counter()
        results = lib.get([task.remote(ref) for _ in range(common.SIZES["readers"])])
        elapsed = time.perf_counter() - t0
        return common.readers_result(elapsed, results, expected)


def fb(session):
    """Matrix-product tasks (numpy's BLAS), all submitted, then gathered; one per worker first,
    so that the library is loaded there."""
    n = common.SIZES["blas_tasks"]
    with session() as lib:
        mm = lib.remote(common.matmul_chain)
        lib.get([mm.remote(i) for i in range(common.WORKERS)])
        t0 = time.perf_counter()
        out = lib.get([mm.remote(i) for i in range(n)])
        elapsed = time.perf_counter() - t0
        common.check_matmuls(out)
        return elapsed
