"""joblib Parallel(n_jobs=2) with the default loky backend (reusable worker processes)."""

import os
import shutil
import tempfile
import time
from contextlib import contextmanager

from benchmarks import common

LIBRARIES = ("joblib",)
DISTRIBUTIONS = ("joblib",)
NOT_APPLICABLE = {
    "g": "Parallel calls cannot take pending results as arguments",
    "n": "no object store of a set capacity to spill from: memmapped files live in a folder "
    "(/dev/shm or the temporary directory) until deleted",
}


def describe() -> str:
    return "backend loky"


def warm(parallel, delayed):
    parallel(delayed(common.noop)(i) for i in range(4 * common.WORKERS))


def a():
    t0 = time.perf_counter()
    from joblib import Parallel, delayed

    Parallel(n_jobs=common.WORKERS)([delayed(common.noop)()])
    return time.perf_counter() - t0


def b():
    from joblib import Parallel, delayed

    n = common.SIZES["tasks"]
    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        t0 = time.perf_counter()
        common.check_count(parallel(delayed(common.noop)(i) for i in range(n)), n)
        return time.perf_counter() - t0


def c():
    """One single-task Parallel call per round trip, on a kept-open Parallel (pool reused)."""
    from joblib import Parallel, delayed

    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            parallel([delayed(common.noop)()])
        return time.perf_counter() - t0


def f():
    from joblib import Parallel, delayed

    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        elapsed = common.best_of(
            lambda: parallel(delayed(common.spin)(n) for _ in range(common.SIZES["cpu_tasks"]))
        )
        return common.speedup(serial, elapsed)


def fb():
    from joblib import Parallel, delayed

    n = common.SIZES["blas_tasks"]
    with Parallel(n_jobs=common.WORKERS) as parallel:
        parallel(delayed(common.matmul_chain)(i) for i in range(common.WORKERS))
        t0 = time.perf_counter()
        out = parallel(delayed(common.matmul_chain)(i) for i in range(n))
        elapsed = time.perf_counter() - t0
        common.check_matmuls(list(out))
        return elapsed


def h():
    from joblib import Parallel, delayed

    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        return common.idle_memory()


# --- object store, (i)-(m): joblib's memmapping. Its "put" is joblib.dump to a file in the
# folder its auto-memmapping uses (/dev/shm when it has room), its "get" joblib.load(path,
# mmap_mode="r"), a read-only np.memmap that Parallel passes to workers by file name. ---


@contextmanager
def store_folder():
    folder = tempfile.mkdtemp(prefix="volley-bench-", dir=common.shm_dir())
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dump_and_map(arr, path):
    import joblib

    joblib.dump(arr, path)
    return joblib.load(path, mmap_mode="r")


def i():
    """One joblib.dump to a new file plus joblib.load(mmap_mode="r") of it, after two untimed
    dump+load+delete rounds (the same as the other systems' warm-up puts)."""
    arr = common.big_array()
    with store_folder() as folder:
        for round_ in range(2):
            path = os.path.join(folder, f"warm{round_}.pkl")
            mapped = dump_and_map(arr, path)
            del mapped
            os.unlink(path)
        path = os.path.join(folder, "arr.pkl")
        t0 = time.perf_counter()
        mapped = dump_and_map(arr, path)
        elapsed = time.perf_counter() - t0
        del mapped
        return elapsed


def j():
    """joblib.load(path, mmap_mode="r") of the dumped array: opens and maps the file."""
    import joblib

    arr = common.big_array()
    with store_folder() as folder:
        path = os.path.join(folder, "arr.pkl")
        joblib.dump(arr, path)
        facts = common.array_facts(arr)
        del arr
        return common.median_get(lambda: joblib.load(path, mmap_mode="r"), facts)


def k():
    """One task on a kept-open Parallel given the memmap (sent by file name); two untimed
    tasks first (workers have imported numpy and mapped the file), then one timed."""
    from joblib import Parallel, delayed

    arr = common.big_array()
    expected = float(arr.sum())
    with store_folder() as folder:
        mapped = dump_and_map(arr, os.path.join(folder, "arr.pkl"))
        del arr
        with Parallel(n_jobs=common.WORKERS) as parallel:
            warm(parallel, delayed)
            parallel(delayed(common.array_sum)(mapped) for _ in range(common.WORKERS))
            t0 = time.perf_counter()
            [value] = parallel([delayed(common.array_sum)(mapped)])
            elapsed = time.perf_counter() - t0
        common.check_close(value, expected)
        return elapsed


k0 = common.local_sum


def l():  # noqa: E743 -- the benchmark's letter
    """Parallel(n_jobs=2)([delayed(f)(arr)]): a fresh Parallel call (the loky workers are
    reused) auto-memmaps the array (hash, dump to a new temporary folder, load) and deletes
    the folder at the end, all timed. One identical untimed call first. A kept-open Parallel
    would find the same array already dumped and skip the dump."""
    from joblib import Parallel, delayed

    arr = common.big_array()
    expected = float(arr.sum())
    warm(Parallel(n_jobs=common.WORKERS), delayed)
    Parallel(n_jobs=common.WORKERS)([delayed(common.array_sum)(arr)])
    t0 = time.perf_counter()
    [value] = Parallel(n_jobs=common.WORKERS)([delayed(common.array_sum)(arr)])
    elapsed = time.perf_counter() - t0
    common.check_close(value, expected)
    return elapsed


def m():
    """The readers take the memmap of one dump (untimed), on a kept-open Parallel."""
    import numpy as np
    from joblib import Parallel, delayed

    with store_folder() as folder, Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
        parallel(delayed(common.sample_sum)(np.ones(8192)) for _ in range(common.WORKERS))
        arr = common.big_array(common.SIZES["readers_mib"])
        expected = float(arr[::4096].sum())
        mapped = dump_and_map(arr, os.path.join(folder, "arr.pkl"))
        del arr
        t0 = time.perf_counter()
        results = parallel(
            delayed(common.sample_sum)(mapped) for _ in range(common.SIZES["readers"])
        )
        elapsed = time.perf_counter() - t0
        del mapped
        return common.readers_result(elapsed, results, expected)


def w():
    """(w): tiny calls with joblib's auto-batching on loky."""
    from joblib import Parallel, delayed

    n = common.SIZES["jl_tasks"]
    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
    t0 = time.perf_counter()
    out = Parallel(n_jobs=common.WORKERS)(delayed(common.noop)(i) for i in range(n))
    elapsed = time.perf_counter() - t0
    common.check_count(out, n)
    return elapsed


def x(warm_same: bool = False):
    """(x): the same large array to every call (loky memmaps it into a temporary folder)."""
    import numpy as np
    from joblib import Parallel, delayed

    arr = np.ones(common.SIZES["jl_array_mib"] * 2**20 // 8)
    k = common.SIZES["jl_arrays"]
    with Parallel(n_jobs=common.WORKERS) as parallel:
        warm(parallel, delayed)
    if warm_same:
        Parallel(n_jobs=common.WORKERS)(delayed(common.array_sum)(arr + 1) for _ in range(k))
        time.sleep(0.5)
    t0 = time.perf_counter()
    out = Parallel(n_jobs=common.WORKERS)(delayed(common.array_sum)(arr) for _ in range(k))
    elapsed = time.perf_counter() - t0
    if out != [float(arr.size)] * k:
        raise RuntimeError("wrong sums")
    return elapsed


def xw():
    """(xw): (x) after one untimed call with another array of the same size."""
    return x(warm_same=True)
