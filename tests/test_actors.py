"""Actors end to end: real actor processes, ordering, concurrency, handles, names, resources,
streaming, errors, and SIGKILLed actor processes with and without restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import (
    DRIVER_PRELUDE,
    is_running,
    kill_driver,
    poll,
    read_line_with_prefix,
    start_driver,
    wait_all_gone,
    write_script,
)

import volley

pytestmark = pytest.mark.usefixtures("volley_2cpu")


@volley.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.log = []

    def incr(self, by=1):
        self.n += by
        self.log.append(self.n)
        return self.n

    def get(self):
        return self.n

    def history(self):
        return list(self.log)

    def pid(self):
        return os.getpid()

    def sleep(self, seconds, value=None):
        time.sleep(seconds)
        return value

    def fail(self, msg):
        raise ValueError(msg)

    def total(self, arr):
        return float(arr.sum())

    def echo(self, x):
        return x


@volley.remote
def getpid():
    return os.getpid()


def wait_file(path, timeout=30.0):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return path


# ----------------------------------------------------------------------------------------- basics


def test_calls_run_in_order_and_keep_state():
    c = Counter.remote(10)
    refs = [c.incr.remote() for _ in range(200)]
    assert volley.get(refs) == list(range(11, 211))
    assert volley.get(c.history.remote()) == list(range(11, 211))


def test_actor_has_a_dedicated_process():
    a, b = Counter.remote(), Counter.remote()
    pa, pb = volley.get([a.pid.remote(), b.pid.remote()])
    assert len({pa, pb, os.getpid()}) == 3
    task_pids = set(volley.get([getpid.remote() for _ in range(40)]))
    assert pa not in task_pids and pb not in task_pids
    assert volley.actor_state(a)["pid"] == pa


def test_constructor_and_method_refs_are_resolved():
    start = volley.put(5)

    @volley.remote
    def seven():
        return 7

    c = Counter.remote(start)
    assert volley.get(c.incr.remote(seven.remote())) == 12
    nested = volley.get(c.echo.remote([start]))
    assert isinstance(nested[0], volley.ObjectRef) and volley.get(nested[0]) == 5


def test_missing_method_is_an_attribute_error_in_the_caller():
    c = Counter.remote()
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        c.nope.remote()
    assert volley.actor_state(c)["pending_calls"] == 0
    with pytest.raises(TypeError, match="use Counter.remote"):
        Counter()
    with pytest.raises(TypeError, match=r"\.incr\.remote"):
        c.incr()


def test_method_exception_is_a_task_error_and_the_actor_keeps_serving():
    c = Counter.remote()
    volley.get(c.incr.remote(3))
    with pytest.raises(ValueError, match="boom") as info:
        volley.get(c.fail.remote("boom"))
    assert isinstance(info.value, volley.TaskError)
    assert "in fail" in str(info.value)
    assert volley.get(c.incr.remote()) == 4


def test_init_exception_fails_every_call_with_actor_creation_error():
    @volley.remote
    class Broken:
        def __init__(self, what):
            raise KeyError(what)

        def ping(self):
            return 1

    b = Broken.remote("missing-config")
    for _ in range(3):
        with pytest.raises(volley.ActorCreationError) as info:
            volley.get(b.ping.remote(), timeout=30)
        err = info.value
        assert isinstance(err.cause, KeyError) and err.cause.args == ("missing-config",)
        assert "in __init__" in err.remote_traceback
        assert "missing-config" in str(err)
    assert volley.actor_state(b)["state"] == "DEAD"


def test_unpicklable_constructor_argument_is_refused_at_once():
    with pytest.raises(volley.SerializationError, match="argument 0"):
        Counter.remote(threading.Lock())


def test_num_returns_per_method_and_per_call():
    @volley.remote
    class Split:
        @volley.method(num_returns=2)
        def halves(self, xs):
            return xs[: len(xs) // 2], xs[len(xs) // 2 :]

        def triple(self):
            return 1, 2, 3

    s = Split.remote()
    a, b = s.halves.remote([1, 2, 3, 4])
    assert volley.get([a, b]) == [[1, 2], [3, 4]]
    refs = s.triple.options(num_returns=3).remote()
    assert volley.get(refs) == [1, 2, 3]


def test_large_numpy_arguments_and_results():
    c = Counter.remote()
    arr = np.arange(1 << 17, dtype=np.float64)  # 1 MiB
    assert volley.get(c.total.remote(arr)) == float(arr.sum())
    ref = volley.put(arr)
    assert volley.get([c.total.remote(ref) for _ in range(5)]) == [float(arr.sum())] * 5
    back = volley.get(c.echo.remote(arr))
    assert np.array_equal(back, arr) and not back.flags.writeable


# ---------------------------------------------------------------------------- ordering and callers


def test_one_callers_calls_wait_for_an_earlier_calls_dependency(tmp_path):
    gate = str(tmp_path / "gate")

    @volley.remote
    def slow(path):
        wait_file(path)
        return 100

    c = Counter.remote()
    first = c.incr.remote(slow.remote(gate))  # waits for its argument
    second = c.incr.remote(1)
    ready, _ = volley.wait([second], timeout=0.5)
    assert ready == []  # same caller: must not overtake `first`
    open(gate, "w").close()
    assert volley.get([first, second]) == [100, 101]


def test_other_callers_interleave_while_one_caller_waits(tmp_path):
    gate = str(tmp_path / "gate")

    @volley.remote
    def slow(path):
        wait_file(path)
        return 100

    @volley.remote
    def other_caller(h):
        return volley.get(h.incr.remote(1))

    c = Counter.remote()
    blocked = c.incr.remote(slow.remote(gate))
    # A task is another caller: its call runs while the driver's call waits for its argument.
    assert volley.get(other_caller.remote(c), timeout=30) == 1
    open(gate, "w").close()
    assert volley.get(blocked) == 101


def test_handles_pass_to_tasks_and_other_actors():
    @volley.remote
    def bump(h, k):
        return volley.get([h.incr.remote() for _ in range(k)])

    @volley.remote
    class Relay:
        def __init__(self, target):
            self.target = target

        def forward(self, k):
            return volley.get([self.target.incr.remote() for _ in range(k)])

    c = Counter.remote()
    from_task = volley.get(bump.remote(c, 10))
    assert from_task == list(range(1, 11))  # one caller's calls, in order
    r = Relay.remote(c)
    assert volley.get(r.forward.remote(5)) == list(range(11, 16))
    assert volley.get(c.get.remote()) == 15


# ------------------------------------------------------------------------------------ concurrency


def test_threaded_actor_runs_max_concurrency_calls_at_once():
    @volley.remote(max_concurrency=4)
    class Pool:
        def __init__(self):
            self.barrier = threading.Barrier(4)
            self.lock = threading.Lock()
            self.now = self.peak = 0

        def meet(self):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            self.barrier.wait(timeout=30)  # only passes if 4 calls run together
            with self.lock:
                self.now -= 1
            return threading.get_ident()

        def peak_seen(self):
            return self.peak

    p = Pool.remote()
    idents = volley.get([p.meet.remote() for _ in range(8)], timeout=60)
    assert len(set(idents)) >= 4
    assert volley.get(p.peak_seen.remote()) == 4


def test_sync_actor_runs_one_call_at_a_time():
    @volley.remote
    class One:
        def __init__(self):
            self.now = self.peak = 0

        def work(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            time.sleep(0.01)
            self.now -= 1

        def peak_seen(self):
            return self.peak

    o = One.remote()
    volley.get([o.work.remote() for _ in range(10)])
    assert volley.get(o.peak_seen.remote()) == 1


def test_async_actor_runs_calls_concurrently_and_awaits_refs():
    @volley.remote
    def double(x):
        return 2 * x

    @volley.remote
    class Service:
        def __init__(self, n):
            self.barrier = None
            self.n = n

        async def meet(self, i):
            if self.barrier is None:
                self.barrier = asyncio.Barrier(self.n)
            await asyncio.wait_for(self.barrier.wait(), 30)
            return i

        async def via_task(self, x):
            return await double.remote(x)

        async def via_actor(self, other):
            return await other.incr.remote(5)

    s = Service.remote(20)
    assert volley.get([s.meet.remote(i) for i in range(20)], timeout=60) == list(range(20))
    assert volley.get(s.via_task.remote(21), timeout=30) == 42
    c = Counter.remote()
    assert volley.get(s.via_actor.remote(c), timeout=30) == 5


def test_async_actor_respects_max_concurrency():
    @volley.remote(max_concurrency=2)
    class Limited:
        def __init__(self):
            self.now = self.peak = 0

        async def work(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.02)
            self.now -= 1

        async def peak_seen(self):
            return self.peak

    lim = Limited.remote()
    volley.get([lim.work.remote() for _ in range(10)])
    assert volley.get(lim.peak_seen.remote()) == 2


# ------------------------------------------------------------------------------ names, lifetimes


def test_named_actors_namespaces_and_get_if_exists():
    c = Counter.options(name="hits").remote()
    volley.get(c.incr.remote(7))
    assert volley.get(volley.get_actor("hits").get.remote()) == 7
    with pytest.raises(ValueError, match="no actor named 'hits' in namespace 'other'"):
        volley.get_actor("hits", namespace="other")
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="hits").remote()
    same = Counter.options(name="hits", get_if_exists=True).remote(1000)
    assert volley.get(same.get.remote()) == 7  # the existing actor, not a new one
    other = Counter.options(name="hits", namespace="other").remote(1)
    assert volley.get(other.get.remote()) == 1
    with pytest.raises(ValueError, match="no actor named 'nobody'"):
        volley.get_actor("nobody")


@volley.remote
def incr_by_name(name: str) -> int:
    return volley.get(volley.get_actor(name).incr.remote())


def test_a_named_actor_is_found_from_a_task_as_soon_as_it_is_made():
    # On a cluster the driver's node hosts nothing: each actor runs on another node, and the
    # task that looks it up may run on a third. The creator tells the head where it went, so
    # the name is found at once, not at the host's next heartbeat.
    made = [Counter.options(name=f"fresh-{i}").remote() for i in range(4)]
    assert volley.get([incr_by_name.remote(f"fresh-{i}") for i in range(4)]) == [1] * 4
    assert volley.get([c.get.remote() for c in made]) == [1] * 4


def test_unnamed_actor_stops_when_its_last_handle_is_gone():
    c = Counter.remote()
    pid = volley.get(c.pid.remote())
    # A call submitted just before the handle goes still runs.
    ref = c.incr.remote()
    del c
    assert volley.get(ref) == 1
    assert poll(lambda: not is_running(pid), timeout=10)


def test_handle_inside_a_pending_task_keeps_the_actor(tmp_path):
    gate = str(tmp_path / "gate")

    @volley.remote
    def later(h, path):
        wait_file(path)
        return volley.get(h.incr.remote())

    c = Counter.remote()
    pid = volley.get(c.pid.remote())
    ref = later.remote(c, gate)
    del c
    time.sleep(0.3)
    assert is_running(pid)
    open(gate, "w").close()
    assert volley.get(ref) == 1


def test_named_and_detached_actors_outlive_their_handles():
    c = Counter.options(name="keeper").remote()
    d = Counter.options(lifetime="detached", name="det").remote()
    pids = volley.get([c.pid.remote(), d.pid.remote()])
    del c, d
    time.sleep(0.3)
    assert all(is_running(p) for p in pids)
    assert volley.get(volley.get_actor("keeper").incr.remote()) == 1
    assert volley.get(volley.get_actor("det").incr.remote()) == 1


def test_actor_processes_end_with_shutdown():
    handles = [Counter.remote() for _ in range(3)]
    pids = volley.get([h.pid.remote() for h in handles])
    volley.shutdown()
    assert wait_all_gone(pids) == set()


# -------------------------------------------------------------------------------------- resources


@pytest.mark.one_node(
    "a 2-CPU actor needs a node with 2 CPUs; the test cluster has two 1-CPU nodes"
)
def test_actor_holds_its_cpus_for_its_lifetime():
    big = Counter.options(num_cpus=2).remote()
    volley.get(big.incr.remote())
    pending = getpid.remote()
    ready, _ = volley.wait([pending], timeout=0.5)
    assert ready == []  # both CPUs belong to the actor
    second = Counter.options(num_cpus=1).remote()
    assert volley.actor_state(second)["state"] == "PENDING"
    volley.kill(big)
    assert isinstance(volley.get(pending, timeout=30), int)
    assert volley.get(second.incr.remote(), timeout=30) == 1


def test_custom_resources_and_unschedulable_actors():
    volley.shutdown()
    volley.init(num_cpus=2, resources={"slot": 1})
    a = Counter.options(resources={"slot": 1}).remote()
    volley.get(a.incr.remote())
    b = Counter.options(resources={"slot": 1}).remote()
    assert volley.actor_state(b)["state"] == "PENDING"
    volley.kill(a)
    assert volley.get(b.incr.remote(), timeout=30) == 1
    with pytest.raises(ValueError, match="needs 2 slot but this node has 1"):
        Counter.options(resources={"slot": 2}).remote()
    with pytest.raises(ValueError, match="needs 1 GPU but this node has 0"):
        Counter.options(num_gpus=1).remote()
    with pytest.raises(ValueError, match="num_cpus"):
        Counter.options(num_cpus=-1)
    with pytest.raises(TypeError, match="unknown actor option"):
        Counter.options(colour="red")


# -------------------------------------------------------------------------------------- streaming


def test_streaming_method_yields_refs_as_items_are_made(tmp_path):
    gate = str(tmp_path / "gate")

    @volley.remote
    class Source:
        def items(self, n, path):
            yield "first"
            wait_file(path)
            yield from range(n)

    s = Source.remote()
    gen = s.items.remote(3, gate)
    assert isinstance(gen, volley.ObjectRefGenerator)
    first = next(gen)
    assert volley.get(first, timeout=30) == "first"  # before the generator goes on
    open(gate, "w").close()
    assert [volley.get(r) for r in gen] == [0, 1, 2]
    assert volley.get(gen.completed()) == 4


def test_streaming_error_after_items_and_streaming_tasks():
    @volley.remote(num_returns="streaming")
    def countdown(n):
        for i in range(n, 0, -1):
            yield np.full(50_000, i)  # large items go through the store
        raise RuntimeError("liftoff failed")

    refs = list(countdown.remote(3))
    assert len(refs) == 4
    assert [int(volley.get(r)[0]) for r in refs[:3]] == [3, 2, 1]
    with pytest.raises(RuntimeError, match="liftoff failed"):
        volley.get(refs[3])


def test_async_generator_method_and_abandoned_streams():
    @volley.remote
    class Ticker:
        async def ticks(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i

    t = Ticker.remote()
    assert [volley.get(r) for r in t.ticks.remote(5)] == list(range(5))
    before = volley._core.stats()["objects"]
    gen = t.ticks.remote(50)
    next(gen)
    volley.get(gen.completed())
    del gen  # the 49 items not taken are freed
    assert poll(lambda: volley._core.stats()["objects"] <= before + 1, timeout=10)


# ------------------------------------------------------------------------------ faults (SIGKILL)


def test_sigkill_restarts_the_actor_with_its_original_arguments(capfd):
    start = volley.put(100)
    c = Counter.options(max_restarts=2).remote(start)
    volley.get([c.incr.remote() for _ in range(5)])
    pid = volley.get(c.pid.remote())
    os.kill(pid, signal.SIGKILL)
    # (A call sent before the node sees the death would be in flight, and fail: no retries.)
    assert poll(lambda: volley.actor_state(c)["restarts"] == 1, timeout=10)
    assert volley.get(c.incr.remote(), timeout=30) == 101  # __init__ ran again: state reset
    state = volley.actor_state(c)
    assert state["state"] == "ALIVE" and state["restarts"] == 1 and state["pid"] != pid
    err = capfd.readouterr().err
    assert "actor 'Counter' died" in err and "restarting it (restart 1 of 2)" in err


def test_calls_in_flight_are_retried_up_to_max_task_retries():
    c = Counter.options(max_restarts=1, max_task_retries=1).remote()
    pid = volley.get(c.pid.remote())
    running = c.sleep.remote(1.0, "done")
    queued = [c.incr.remote() for _ in range(5)]
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    assert volley.get(running, timeout=30) == "done"
    assert volley.get(queued, timeout=30) == [1, 2, 3, 4, 5]


def test_calls_in_flight_fail_without_task_retries_and_the_restarted_actor_serves():
    c = Counter.options(max_restarts=1).remote()
    pid = volley.get(c.pid.remote())
    running = c.sleep.remote(5.0)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(volley.ActorDiedError, match="max_task_retries=0"):
        volley.get(running, timeout=30)
    assert volley.get(c.incr.remote(), timeout=30) == 1


def test_no_restarts_left_fails_every_call_promptly():
    c = Counter.remote()  # max_restarts=0
    pid = volley.get(c.pid.remote())
    running = c.sleep.remote(30.0)
    queued = [c.incr.remote() for _ in range(3)]
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    for ref in [running, *queued]:
        with pytest.raises(volley.ActorDiedError, match="SIGKILL"):
            volley.get(ref, timeout=10)
    with pytest.raises(volley.ActorDiedError, match="max_restarts=0"):
        volley.get(c.incr.remote(), timeout=10)
    assert volley.actor_state(c)["state"] == "DEAD"


def test_restarts_run_out():
    c = Counter.options(max_restarts=2).remote()
    for _ in range(3):
        pid = volley.get(c.pid.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        assert poll(lambda p=pid: volley.actor_state(c)["pid"] != p, timeout=10)
    with pytest.raises(volley.ActorDiedError, match="restarted 2 time"):
        volley.get(c.incr.remote(), timeout=10)


def test_kill_with_and_without_restart():
    c = Counter.options(max_restarts=1, name="victim").remote()
    volley.get(c.incr.remote(5))
    volley.kill(c, no_restart=False)
    assert poll(lambda: volley.actor_state(c)["restarts"] == 1, timeout=10)
    assert volley.get(c.incr.remote(), timeout=30) == 1
    pid = volley.get(c.pid.remote())
    volley.kill(c)
    with pytest.raises(volley.ActorDiedError, match="killed with volley.kill"):
        volley.get(c.incr.remote(), timeout=10)
    assert poll(lambda: not is_running(pid), timeout=10)
    with pytest.raises(ValueError):
        volley.get_actor("victim")
    with pytest.raises(TypeError, match="ActorHandle"):
        volley.kill("victim")


def test_actor_processes_die_with_a_sigkilled_driver(tmp_path):
    script = write_script(
        tmp_path,
        DRIVER_PRELUDE
        + """
volley.init(num_cpus=2)

@volley.remote
class A:
    def pid(self):
        return os.getpid()

actors = [A.remote() for _ in range(3)]
print("PIDS", json.dumps(volley.get([a.pid.remote() for a in actors])), flush=True)
time.sleep(60)
""",
    )
    proc = start_driver(script)
    try:
        import json

        pids = json.loads(read_line_with_prefix(proc, "PIDS "))
        assert all(is_running(p) for p in pids)
    finally:
        kill_driver(proc)
    assert wait_all_gone(pids, timeout=10) == set()


# ------------------------------------------------------------------------------------------- GPUs


def test_tasks_and_actors_see_only_the_gpus_they_hold(no_volley, monkeypatch):
    # Two fake GPUs: the node hands out their indices in CUDA_VISIBLE_DEVICES.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    volley.init(num_cpus=4, num_gpus=2)

    def visible():
        time.sleep(0.3)  # overlap: GPUs are held at the same time
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    whole = volley.remote(num_gpus=1)(visible)
    half = volley.remote(num_gpus=0.5)(visible)
    plain = volley.remote(visible)
    assert sorted(volley.get([whole.remote() for _ in range(2)])) == ["0", "1"]
    assert sorted(volley.get([half.remote() for _ in range(4)])) == ["0", "0", "1", "1"]
    assert set(volley.get([plain.remote() for _ in range(4)])) == {None}  # no GPU, none shown

    @volley.remote(num_gpus=2)
    class Trainer:
        def devices(self):
            return os.environ.get("CUDA_VISIBLE_DEVICES")

    t = Trainer.remote()
    assert volley.get(t.devices.remote()) == "0,1"
    blocked = whole.remote()  # both GPUs are the actor's for its life
    assert volley.wait([blocked], timeout=0.5)[0] == []
    volley.kill(t)
    assert volley.get(blocked, timeout=30) in ("0", "1")
