"""Programs written from Ray's documentation, run unchanged with ``import volley as ray``: tasks,
actors, ``wait(fetch_local=...)``, errors caught by Ray's exception names, generator tasks that
stream by default, ``ray.util.ActorPool``, resources and the runtime context; and every example
of docs/from-ray.md, each run as a script of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import driver_env, poll

import volley as ray
import volley.exceptions

DOC = Path(__file__).resolve().parent.parent / "docs" / "from-ray.md"


@pytest.fixture
def ray_2cpu(no_volley):
    """A fresh ``ray.init`` with 2 CPUs, a custom resource and a fake GPU, shut down after."""
    ray.init(num_cpus=2, num_gpus=1, resources={"disk": 2})
    yield
    ray.shutdown()


# ------------------------------------------------------------------------- tasks and actors


@ray.remote
def slow_square(x, delay=0.0):
    time.sleep(delay)
    return x * x


@ray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

    def get_counter(self):
        return self.value


def test_the_ray_quickstart_runs_unchanged(ray_2cpu):
    # Ray's "Getting started": tasks, then an actor.
    futures = [slow_square.remote(i) for i in range(4)]
    assert ray.get(futures) == [0, 1, 4, 9]

    counters = [Counter.remote() for _ in range(2)]
    [c.increment.remote() for c in counters]
    assert ray.get([c.get_counter.remote() for c in counters]) == [1, 1]

    # Passing an object ref to a task; put; options.
    obj_ref = ray.put(np.zeros(10))
    assert ray.get(slow_square.options(num_cpus=1).remote(obj_ref)).sum() == 0


# ------------------------------------------------------------------------------------ wait


def test_wait_takes_ray_s_fetch_local(ray_2cpu):
    refs = [slow_square.remote(i, 0.3 * i) for i in range(3)]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=30, fetch_local=True)
    assert ready == refs[:2] and not_ready == refs[2:]
    # A ready ref's value is here: get returns at once.
    assert ray.get(ready, timeout=0) == [0, 1]
    ready, not_ready = ray.wait(not_ready, num_returns=1, timeout=30, fetch_local=False)
    assert ray.get(ready) == [4] and not_ready == []
    # The documented processing loop.
    refs, done = [slow_square.remote(i) for i in range(5)], []
    while refs:
        ready, refs = ray.wait(refs, num_returns=1, fetch_local=True)
        done.extend(ray.get(ready))
    assert sorted(done) == [0, 1, 4, 9, 16]
    with pytest.raises(TypeError, match="fetch_local"):
        ray.wait([ray.put(1)], fetch_local="yes")


def test_wait_with_fetch_local_counts_a_failed_task_as_ready(ray_2cpu):
    @ray.remote
    def fails():
        raise ValueError("no")

    ref = fails.remote()
    ready, _ = ray.wait([ref], timeout=30, fetch_local=True)
    assert ready == [ref]
    with pytest.raises(ValueError):
        ray.get(ref)


def test_wait_inside_a_task_fetches_too(ray_2cpu):
    @ray.remote
    def waiter():
        refs = [slow_square.remote(i) for i in range(3)]
        ready, rest = ray.wait(refs, num_returns=3, timeout=30, fetch_local=True)
        return ray.get(ready, timeout=0), rest

    assert ray.get(waiter.remote()) == ([0, 1, 4], [])


# ------------------------------------------------------------------------------ exceptions


def test_ray_s_exception_names_catch_what_volley_raises(ray_2cpu):
    @ray.remote
    def f():
        raise Exception("the real error")

    @ray.remote
    def g(x):
        return x

    # Ray's "Task fault tolerance" page.
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(f.remote())
    assert "the real error" in str(info.value)
    e = info.value
    assert e.function_name.endswith("f") and "in f" in e.traceback_str
    assert e.as_instanceof_cause() is e and isinstance(e.cause, Exception)
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(g.remote(f.remote()))

    @ray.remote
    def value_error():
        raise ValueError("bad value")

    try:
        ray.get(value_error.remote())
    except ValueError as err:  # also an instance of the task's own class, as in Ray
        assert isinstance(err, ray.exceptions.RayTaskError)
        assert isinstance(err, ray.exceptions.RayError)

    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(slow_square.remote(1, 30), timeout=0.2)
    assert issubclass(ray.exceptions.GetTimeoutError, TimeoutError)

    ref = slow_square.remote(1, 30)
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref)

    @ray.remote(max_retries=0)
    def crash():
        os._exit(1)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(crash.remote())

    @ray.remote(num_cpus=100)
    def too_big():
        return 1

    with pytest.raises(ray.exceptions.TaskUnschedulableError):
        ray.get(too_big.remote(), timeout=30)

    # Every one of them is a RayError.
    for name in volley.exceptions.__all__:
        cls = getattr(volley.exceptions, name)
        assert issubclass(cls, ray.exceptions.RayError), name


def test_ray_actor_error_catches_a_dead_actor_and_a_failed_creation(ray_2cpu):
    c = Counter.remote()
    assert ray.get(c.increment.remote()) == 1
    ray.kill(c)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(c.increment.remote())
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(c.increment.remote())

    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("no config")

        def ping(self):
            return 1

    b = Broken.remote()
    # As in Ray, an actor whose __init__ raised is a dead actor: RayActorError, ActorDiedError.
    with pytest.raises(ray.exceptions.RayActorError) as info:
        ray.get(b.ping.remote())
    assert isinstance(info.value, ray.exceptions.ActorDiedError)
    assert isinstance(info.value.cause, ValueError) and "no config" in str(info.value)


def test_exceptions_is_a_module_of_its_own():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import volley.exceptions as e, volley as ray;"
            "assert ray.exceptions is e;"
            "from volley.exceptions import RayError, RayTaskError, RayActorError;"
            "print(RayTaskError.__name__, RayActorError.__name__)",
        ],
        capture_output=True,
        text=True,
        env=driver_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TaskError", "ActorError"]


# ----------------------------------------------------------------------- generator tasks


def test_a_generator_task_streams_by_default(ray_2cpu, tmp_path):
    go = tmp_path / "go"

    @ray.remote
    def produce(n, go):
        for i in range(n):
            yield i
            if i == 0:  # the caller gets the first item while this waits for it to say go
                deadline = time.monotonic() + 30
                while not os.path.exists(go) and time.monotonic() < deadline:
                    time.sleep(0.01)

    gen = produce.remote(3, str(go))
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert ray.get(next(gen)) == 0  # before the task finished
    go.touch()
    assert [ray.get(r) for r in gen] == [1, 2]


@ray.remote
def produce_after(n, go):
    """Yields 0, then waits for the file ``go`` before the rest."""
    for i in range(n):
        yield i
        if i == 0:
            deadline = time.monotonic() + 30
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)


def test_wait_takes_a_streaming_generator(ray_2cpu, tmp_path):
    # Ray's generator page: ray.wait([gen]) is ready once the next item is.
    go = tmp_path / "go"
    gen = produce_after.remote(3, str(go))
    ready, rest = ray.wait([gen], timeout=30)
    assert ready == [gen] and rest == []
    assert ray.get(next(gen)) == 0
    ready, rest = ray.wait([gen], timeout=0.2)  # item 1 waits for go
    assert ready == [] and rest == [gen]
    ref = ray.put("x")
    ready, rest = ray.wait([gen, ref], num_returns=1, timeout=30)
    assert ready == [ref] and rest == [gen]
    go.touch()
    ready, rest = ray.wait([gen, ref], num_returns=2, timeout=30)
    assert ready == [gen, ref]
    assert [ray.get(r) for r in gen] == [1, 2]
    ready, _ = ray.wait([gen], timeout=30)  # ended: ready, and next() stops at once
    assert ready == [gen]
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        ray.wait([gen, 1])


def test_async_for_over_a_streaming_generator_ends(ray_2cpu, tmp_path):
    import asyncio

    go = tmp_path / "go"
    go.touch()

    async def consume():
        return [await ref async for ref in produce_after.remote(3, str(go))]

    # It used to hang: StopIteration cannot cross an executor's future.
    assert asyncio.run(asyncio.wait_for(consume(), 30)) == [0, 1, 2]


def test_a_generator_with_num_returns_keeps_ray_s_meaning(ray_2cpu):
    @ray.remote
    def gen(n):
        yield from range(n)

    a, b = gen.options(num_returns=2).remote(2)
    assert ray.get([a, b]) == [0, 1]
    assert ray.get(gen.options(num_returns=1).remote(1)) == 0

    @ray.remote(num_returns=3)
    def three():
        for i in range(3):
            yield i * 10

    assert ray.get(three.remote()) == [0, 10, 20]
    with pytest.raises(ValueError, match="yielded 3 values"):
        ray.get(gen.options(num_returns=2).remote(3))

    @ray.remote(num_returns=2)
    def raises():
        yield 1
        raise KeyError("midway")

    with pytest.raises(KeyError):
        ray.get(raises.remote())


def test_a_generator_actor_method_streams(ray_2cpu):
    @ray.remote
    class Source:
        def items(self, n):
            yield from range(n)

    s = Source.remote()
    gen = s.items.remote(3)
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert [ray.get(r) for r in gen] == [0, 1, 2]


# ------------------------------------------------------------------------------ ActorPool


@ray.remote
class Doubler:
    def double(self, v, delay=0.0):
        time.sleep(delay)
        return 2 * v


def test_actor_pool_as_ray_documents_it(ray_2cpu):
    from volley.util import ActorPool

    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1, a2])
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]
    out = pool.map_unordered(lambda a, v: a.double.remote(v, 0.5 if v == 1 else 0), [1, 2, 3])
    assert sorted(out) == [2, 4, 6]

    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert not pool.has_free()
    pool.submit(lambda a, v: a.double.remote(v), 3)  # queued: both actors are busy
    assert pool.has_next()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()

    assert pool.has_free()
    idle = pool.pop_idle()
    assert idle in (a1, a2)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(next(a for a in (a1, a2) if a != idle))
    pool.push(idle)

    pool.submit(lambda a, v: a.double.remote(v, 30), 1)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        pool.get_next_unordered(timeout=0.1)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)  # dropped: the actor is back
    assert not pool.has_next() and pool.has_free()


def test_actor_pool_errors(ray_2cpu):
    from volley.util import ActorPool

    @ray.remote
    class Picky:
        def check(self, v):
            if v < 0:
                raise ValueError(f"negative: {v}")
            return v

    pool = ActorPool([Picky.remote()])
    results = pool.map(lambda a, v: a.check.remote(v), [1, -1, 2])
    assert next(results) == 1
    with pytest.raises(ValueError, match="negative"):
        next(results)
    # As with Ray's, the error ends the map's iterator; the other result stays in the pool.
    with pytest.raises(StopIteration):
        next(results)
    assert pool.get_next() == 2
    with pytest.raises(TypeError, match="must return the ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free()  # the actor is not lost to a bad function
    with pytest.raises(TypeError, match="actor handles"):
        ActorPool([1, 2])


# ------------------------------------------------------------------------------ resources


@pytest.mark.one_node("the resources of the test's own one-node init")
def test_cluster_and_available_resources(ray_2cpu):
    total = ray.cluster_resources()
    assert total["CPU"] == 2.0 and total["GPU"] == 1.0 and total["disk"] == 2.0
    assert total["object_store_memory"] > 0

    @ray.remote(resources={"disk": 1}, num_cpus=1)
    class Holder:
        def ping(self):
            return True

    h = Holder.remote()
    assert ray.get(h.ping.remote())
    free = ray.available_resources()
    assert free["disk"] == 1.0 and free["CPU"] == 1.0 and free["GPU"] == 1.0
    ray.kill(h)
    assert poll(lambda: ray.available_resources()["disk"] == 2.0, timeout=10)


@pytest.mark.one_node("the GPU ids and node id of the test's own one-node init")
def test_gpu_ids_and_runtime_context(ray_2cpu):
    @ray.remote(num_gpus=1)
    def on_gpu():
        ctx = ray.get_runtime_context()
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"], ctx.get_node_id()

    @ray.remote
    def no_gpu():
        return ray.get_gpu_ids(), ray.get_runtime_context().get_accelerator_ids()

    assert ray.get(on_gpu.remote()) == ([0], "0", 0)
    assert ray.get(no_gpu.remote()) == ([], {"GPU": []})
    assert ray.get_gpu_ids() == []  # the driver, as in Ray
    ctx = ray.get_runtime_context()
    assert ctx.get_node_id() == 0
    job = ctx.get_job_id()
    assert ctx.get() == {"node_id": 0, "job_id": job, "task_id": None, "actor_id": None}
    inside = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
    assert inside == ctx.get_node_id()


@pytest.mark.one_node("pins work to the node id of the test's own one-node init")
def test_node_affinity_to_the_lone_nodes_own_id_runs_there(ray_2cpu):
    """Ray's idiom, pinning to the node the driver reports, works on one machine too."""
    from volley.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    me = ray.get_runtime_context().get_node_id()
    pin = NodeAffinitySchedulingStrategy(me, soft=False)

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    assert ray.get(where.options(scheduling_strategy=pin).remote(), timeout=60) == me
    actor = Where.options(scheduling_strategy=pin).remote()
    assert ray.get(actor.node.remote(), timeout=60) == me
    other = NodeAffinitySchedulingStrategy(me + 1, soft=False)
    with pytest.raises(ray.exceptions.UnschedulableError, match="not in the cluster"):
        ray.get(where.options(scheduling_strategy=other).remote(), timeout=60)


def test_ray_util_import_paths():
    from volley.util import ActorPool, placement_group  # noqa: F401
    from volley.util.placement_group import placement_group as pg_fn
    from volley.util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    assert ray.util.placement_group is pg_fn is ray.placement_group
    assert NodeAffinitySchedulingStrategy is ray.NodeAffinitySchedulingStrategy
    assert PlacementGroupSchedulingStrategy is ray.PlacementGroupSchedulingStrategy
    assert ray.util.ActorPool is ActorPool
    from volley.actor import ActorHandle
    from volley.util.actor_pool import ActorPool as FromModule

    assert ActorHandle is ray.ActorHandle and FromModule is ActorPool
    with pytest.raises(AttributeError, match="exit_actor.*not in volley yet"):
        ray.actor.exit_actor()


def test_ray_util_as_completed_and_map_unordered(ray_2cpu):
    refs = [slow_square.remote(x, 0.1 * x) for x in [3, 1, 2]]
    assert sorted(ray.util.as_completed(refs, chunk_size=2)) == [1, 4, 9]
    assert list(ray.util.as_completed(refs, yield_obj_refs=True)) == refs  # all ready: in order
    assert sorted(ray.util.map_unordered(slow_square, range(5), chunk_size=1)) == [0, 1, 4, 9, 16]

    taken = []

    def items():
        for i in range(10):
            taken.append(i)
            yield i

    results = ray.util.map_unordered(slow_square, items(), backpressure_size=2, chunk_size=1)
    first = next(results)
    assert first in (0, 1) and len(taken) == 3  # two in flight, then the third read
    assert sorted([first, *results]) == [i * i for i in range(10)]

    @ray.remote
    def fails(x):
        raise ValueError(f"item {x}")

    with pytest.raises(ValueError, match="item 0"):
        list(ray.util.as_completed([fails.remote(0)]))
    with pytest.raises(ValueError, match="chunk_size"):
        list(ray.util.as_completed(refs, chunk_size=0))
    with pytest.raises(TypeError, match="remote function"):
        list(ray.util.map_unordered(abs, [1]))


def test_ray_util_joblib_and_multiprocessing(ray_2cpu):
    import joblib

    from volley.util.joblib import register_ray
    from volley.util.multiprocessing import Pool

    register_ray()
    with joblib.parallel_backend("ray"):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
    with Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_ray_names_volley_lacks_fail_saying_so():
    with pytest.raises(AttributeError, match="no volley counterpart.*memory monitor"):
        ray.exceptions.OutOfMemoryError  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'Nonsense'"):
        ray.exceptions.Nonsense  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        ray.nonsense  # noqa: B018
    assert callable(ray.timeline)  # issue 18 brought it
    with pytest.raises(AttributeError, match="not in volley yet"):
        ray.get_runtime_context().get_assigned_resources()
    from volley.util.queue import Queue  # issue 20 brought it

    assert Queue.__module__ == "volley._queue"


# -------------------------------------------------------------------------- in a cluster


def test_resources_node_ids_and_fetch_local_in_a_cluster(no_volley, tmp_path):
    from test_cluster import Cluster, _wait_nodes

    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1")
        c.start(False, "127.0.0.2", extra=("--num-gpus", "1"))
        ray.init(address=c.head, token=c.token)
        nodes = _wait_nodes(2)
        assert len(nodes) == 2
        total = ray.cluster_resources()
        assert total["CPU"] == 2.0 and total["GPU"] == 1.0
        assert ray.available_resources()["CPU"] == 2.0

        @ray.remote(num_gpus=1)
        def on_gpu_node():
            return ray.get_gpu_ids(), ray.get_runtime_context().get_node_id()

        gpus, node = ray.get(on_gpu_node.remote(), timeout=60)
        gpu_node = next(n["node_id"] for n in nodes if "GPU" in n["resources"])
        assert gpus == [0] and node == gpu_node

        @ray.remote
        def inside():
            return ray.cluster_resources()

        # The same answer in a task on a cluster's node (it raised RuntimeError before).
        assert ray.get(inside.remote(), timeout=60) == total

        @ray.remote
        def make(i):
            return [ray.put(np.full(1 << 18, i))]  # a value that stays on its node

        inner = [ray.get(make.remote(i), timeout=60)[0] for i in range(3)]
        ready, rest = ray.wait(inner, num_returns=3, timeout=60, fetch_local=True)
        assert ready == inner and rest == []
        assert [int(v[0]) for v in ray.get(ready, timeout=0)] == [0, 1, 2]
    finally:
        ray.shutdown()
        c.stop()


# ------------------------------------------------------------------- docs/from-ray.md


def _doc_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_examples():
    assert len(_doc_examples()) >= 4


@pytest.mark.parametrize("index", range(len(_doc_examples())))
def test_every_example_of_from_ray_runs(index, tmp_path):
    code = _doc_examples()[index]
    script = tmp_path / f"example_{index}.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=driver_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, f"example {index} failed:\n{code}\n{out.stdout}\n{out.stderr}"
