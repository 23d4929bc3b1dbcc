"""volley: @volley.remote tasks and volley.get, after volley.init(num_cpus=2)."""

import time
from contextlib import contextmanager

from benchmarks import common
from benchmarks.systems import _actor_api, _cluster_api, _ref_api

LIBRARIES = ("volley",)
DISTRIBUTIONS = ("volley-compute",)


@contextmanager
def session(**options):
    """options go to volley.init (object_store_memory=, object_spill_dir=, inline_threshold=)."""
    import volley

    volley.init(num_cpus=common.WORKERS, log_to_driver=False, **options)
    try:
        yield volley
    finally:
        volley.shutdown()


def warm(volley, *calls):
    """Starts both workers and ships each function once, outside the timed region."""
    noop = volley.remote(common.noop)
    volley.get([noop.remote() for _ in range(4 * common.WORKERS)])
    for fn, args in calls:
        volley.get(fn.remote(*args))


def a():
    t0 = time.perf_counter()
    with session() as volley:
        volley.get(volley.remote(common.noop).remote())
        return time.perf_counter() - t0


def b():
    n = common.SIZES["tasks"]
    with session() as volley:
        noop = volley.remote(common.noop)
        warm(volley)
        t0 = time.perf_counter()
        refs = [noop.remote() for _ in range(n)]
        common.check_count(volley.get(refs), n)
        return time.perf_counter() - t0


def c():
    with session() as volley:
        noop = volley.remote(common.noop)
        warm(volley)
        t0 = time.perf_counter()
        for _ in range(common.SIZES["round_trips"]):
            volley.get(noop.remote())
        return time.perf_counter() - t0


def f():
    n = common.spin_n()
    serial = common.serial_cpu_time(n)
    with session() as volley:
        spin = volley.remote(common.spin)
        warm(volley, (spin, (1,)))
        parallel = common.best_of(
            lambda: volley.get([spin.remote(n) for _ in range(common.SIZES["cpu_tasks"])])
        )
        return common.speedup(serial, parallel)


def fb():
    return _ref_api.fb(session)


def g():
    with session() as volley:
        leaf, add = volley.remote(common.leaf), volley.remote(common.add)
        warm(volley, (leaf, (0,)), (add, (1, 2)))
        t0 = time.perf_counter()
        total = volley.get(common.tree_reduce(leaf.remote, add.remote))
        elapsed = time.perf_counter() - t0
        common.check_tree(total)
        return elapsed


def h():
    with session() as volley:
        warm(volley)
        return common.idle_memory()


# --- object store, (i)-(n): volley.put / volley.get; large values go to shared memory ---


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
    the store spills its least recently used objects to a fresh directory and restores them."""
    import shutil
    import tempfile

    arrays = common.spill_arrays()
    spill_dir = tempfile.mkdtemp(prefix="volley-bench-spill-")
    try:
        store = common.SIZES["spill_store_mib"] * 2**20
        with session(object_store_memory=store, object_spill_dir=spill_dir) as volley:
            warm(volley)
            t0 = time.perf_counter()
            refs = [volley.put(a) for a in arrays]
            for index, ref in enumerate(refs):
                x = volley.get(ref)
                common.check_spilled(index, x)
                del x
            elapsed = time.perf_counter() - t0
            stats = volley.object_store_stats()
            return {
                "value": elapsed,
                "spill_count": stats["spill_count"],
                "restore_count": stats["restore_count"],
            }
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
    """A head with 0 CPUs and one node per entry of node_cpus, each a `volley start --block`
    daemon on its own 127.0.0.x address; the driver joins with init(address=...)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    import volley

    def free_port(host):
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]

    session_dir = tempfile.mkdtemp(prefix="volley-bench-")
    env = dict(os.environ, VOLLEY_SESSION_DIR=session_dir)
    token = "bench-token"
    head = f"127.0.0.1:{free_port('127.0.0.1')}"
    store = str(common.SIZES["node_store_mib"] << 20)
    procs = []
    try:
        for i, cpus in enumerate([0, *node_cpus]):
            host = f"127.0.0.{i + 1}"
            port = head.split(":")[1] if i == 0 else str(free_port(host))
            role = ["--head"] if i == 0 else ["--address", head]
            argv = [sys.executable, "-m", "volley._cli", "start", *role, "--host", host,
                    "--port", port, "--num-cpus", str(cpus), "--token", token, "--block",
                    "--object-store-memory", store]  # fmt: skip
            p = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
            procs.append(p)
            # The daemon may first say where the cluster's token is; then "listening on".
            said = [p.stdout.readline().decode() for _ in range(1)]
            while "listening on" not in said[-1] and said[-1] and len(said) < 5:
                said.append(p.stdout.readline().decode())
            if "listening on" not in said[-1]:
                raise RuntimeError(f"volley node did not start: {''.join(said)}")
        volley.init(address=head, token=token, log_to_driver=False)
        deadline = time.monotonic() + 30
        while len([n for n in volley.nodes() if n["num_cpus"] > 0]) < len(node_cpus):
            if time.monotonic() > deadline:
                raise RuntimeError("nodes did not join")
            time.sleep(0.05)
        yield volley
    finally:
        volley.shutdown()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _spread(lib, fn):
    return fn  # volley places each task on the least loaded node


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


# --------------------------------------------------------------------------- adapters


def w():
    import joblib

    import volley.joblib  # noqa: F401  (registers the backend)

    n = common.SIZES["jl_tasks"]
    with session():
        with joblib.parallel_config(backend="volley"):
            joblib.Parallel(n_jobs=common.WORKERS)(joblib.delayed(common.noop)() for _ in range(8))
            t0 = time.perf_counter()
            out = joblib.Parallel(n_jobs=common.WORKERS)(
                joblib.delayed(common.noop)(i) for i in range(n)
            )
            elapsed = time.perf_counter() - t0
    common.check_count(out, n)
    return elapsed


def x(warm_same: bool = False):
    import joblib
    import numpy as np

    import volley.joblib  # noqa: F401

    arr = np.ones(common.SIZES["jl_array_mib"] * 2**20 // 8)
    k = common.SIZES["jl_arrays"]
    with session():
        with joblib.parallel_config(backend="volley"):
            joblib.Parallel(n_jobs=common.WORKERS)(joblib.delayed(common.noop)() for _ in range(8))
            if warm_same:
                joblib.Parallel(n_jobs=common.WORKERS)(
                    joblib.delayed(common.array_sum)(arr + 1) for _ in range(k)
                )
                time.sleep(0.5)
            t0 = time.perf_counter()
            out = joblib.Parallel(n_jobs=common.WORKERS)(
                joblib.delayed(common.array_sum)(arr) for _ in range(k)
            )
            elapsed = time.perf_counter() - t0
    if out != [float(arr.size)] * k:
        raise RuntimeError("wrong sums")
    return elapsed


def xw():
    return x(warm_same=True)


def y():
    n = common.SIZES["map_items"]
    with session() as volley:
        warm(volley)
        t0 = time.perf_counter()
        out = list(volley.map(common.noop, range(n)))
        elapsed = time.perf_counter() - t0
    common.check_count(out, n)
    return elapsed


def ya():
    items = [common.SIZES["map_cpu_n"]] * common.SIZES["map_cpu_items"]
    with session() as volley:
        warm(volley)
        t0 = time.perf_counter()
        out = list(volley.map(common.spin, items))
        elapsed = time.perf_counter() - t0
    common.check_count(out, len(items))
    return elapsed


def z():
    from volley.futures import Executor

    n = common.SIZES["ex_tasks"]
    with session() as volley:
        warm(volley)
        with Executor() as ex:
            ex.submit(common.noop).result()
            t0 = time.perf_counter()
            futures = [ex.submit(common.noop) for _ in range(n)]
            out = [f.result() for f in futures]
            elapsed = time.perf_counter() - t0
    common.check_count(out, n)
    return elapsed


def za():
    from volley.futures import Executor

    with session() as volley:
        warm(volley)
        with Executor() as ex:
            ex.submit(common.noop).result()
            t0 = time.perf_counter()
            for _ in range(common.SIZES["ex_round_trips"]):
                ex.submit(common.noop).result()
            return time.perf_counter() - t0


def dg():
    import volley.dask

    with session() as volley:
        warm(volley)
        common.dask_tree().compute(scheduler=volley.dask.get)  # ships the functions
        root = common.dask_tree()
        t0 = time.perf_counter()
        total = root.compute(scheduler=volley.dask.get)
        elapsed = time.perf_counter() - t0
    common.check_tree(total)
    return elapsed
