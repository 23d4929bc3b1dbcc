"""volley.futures.Executor as a drop-in for ProcessPoolExecutor: what it keeps alive, its
arguments, and the errors it reports (issue 16, bugs 7, 12 and 13)."""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cfp
import gc
import multiprocessing
import os
import signal
import sys
import time
import weakref

import pytest
from conftest import CLUSTER_MODE, poll, proc_state

import volley
from volley.futures import Executor

pytestmark = pytest.mark.usefixtures("volley_shared")

MB = 1 << 20


class Big:
    """10 MB, with a method to submit (a bound method pickles its instance along)."""

    def __init__(self) -> None:
        self.data = bytearray(10 * MB)

    def size(self) -> int:
        return len(self.data)


class Payload:
    def __init__(self, i: int) -> None:
        self.i = i


def capture(*args, **kwargs):
    return args, kwargs


# ------------------------------------------------------------------ bug 7: nothing kept alive


def closure_over(n: int):
    data = bytearray(n)
    return lambda: len(data)


def collected(refs: list) -> bool:
    gc.collect()
    return all(r() is None for r in refs)


def test_bound_methods_and_closures_are_freed_once_their_calls_are_done():
    refs = []
    with Executor(max_workers=2) as ex:
        for _ in range(20):
            big = Big()
            refs.append(weakref.ref(big))
            assert ex.submit(big.size).result(timeout=60) == 10 * MB
            closure = closure_over(MB)
            refs.append(weakref.ref(closure))
            assert ex.submit(closure).result(timeout=60) == MB
        del big, closure
        # The executor is still open: it must not be what keeps them.
        assert collected(refs)


def test_two_thousand_lambdas_leave_nothing_behind():
    refs = []
    with Executor() as ex:
        futures = []
        for i in range(2000):
            fn = lambda x, i=i: x + i  # noqa: E731
            refs.append(weakref.ref(fn))
            futures.append(ex.submit(fn, 1))
        del fn
        assert [f.result(timeout=60) for f in futures] == [1 + i for i in range(2000)]
        del futures
        assert collected(refs)
        # Its bookkeeping empties as the completions come in.
        assert poll(lambda: not ex._running and not ex._queue, timeout=30)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_the_map_iterator_keeps_no_result_it_returned(chunksize):
    with Executor(max_workers=2) as ex:
        it = ex.map(Payload, range(4), chunksize=chunksize)
        first = next(it)
        assert first.i == 0
        ref = weakref.ref(first)
        # Until the executor has seen every call finish, its bookkeeping holds them.
        assert poll(lambda: not ex._running, timeout=30)
        del first
        assert collected([ref])
        last = [p.i for p in it]
        assert last == [1, 2, 3]


def test_a_result_the_caller_waited_for_is_not_kept_before_the_completing_thread_sees_it():
    """``result()`` waits in volley itself; volley's thread that completes futures may see the
    call end much later (on a loaded machine). The executor must not keep the result until
    then (CPython's test_free_reference failed in CI on it). That thread is held off here
    (it takes ``_futures._lock`` for every completion), so only the caller's path runs."""
    from volley import _futures

    with Executor(max_workers=8) as ex:
        it = ex.map(Payload, range(6))  # all six running: nothing left to start meanwhile
        with _futures._lock:
            for i in range(6):
                first = next(it)
                assert first.i == i
                ref = weakref.ref(first)
                del first
                assert collected([ref]), "the executor kept a result the iterator returned"
            assert not ex._running


def test_shutdown_with_wait_returns_once_every_future_is_done():
    # The completing thread frees a call's slot, starts the next call, then settles the
    # future: shutdown(wait=True) must not return in between.
    for _ in range(20):
        with Executor(max_workers=2) as ex:
            futures = [ex.submit(abs, -i) for i in range(6)]
        assert all(f.done() for f in futures)
        assert [f.result() for f in futures] == list(range(6))


# ------------------------------------------------------------------ bug 12: the arguments


def test_submit_passes_any_keyword_through():
    with Executor() as ex:
        f = ex.submit(capture, 1, self=2, fn=3, args=4, kwargs=5)
        assert f.result(timeout=60) == ((1,), {"self": 2, "fn": 3, "args": 4, "kwargs": 5})
        assert list(ex.map(capture, [1])) == [((1,), {})]


_runs: list[str] = []


def record_init(tag: str) -> None:
    _runs.append(tag)


def init_state() -> tuple[int, list]:
    return os.getpid(), list(_runs)


def test_initializer_runs_once_per_process_before_the_executors_first_call_there():
    tag = f"init-{os.getpid()}-{id(object())}"
    with Executor(max_workers=2, initializer=record_init, initargs=(tag,)) as ex:
        states = [f.result(timeout=60) for f in [ex.submit(init_state) for _ in range(12)]]
    for pid, runs in states:
        assert runs.count(tag) == 1, (pid, runs)
    # Another executor's calls in the same processes do not run this one's initializer.
    with Executor(max_workers=2) as ex:
        for _pid, runs in ex.map(lambda _: init_state(), range(6)):
            assert runs.count(tag) <= 1


def fail_init() -> None:
    raise ValueError("error in initializer")


def test_an_initializer_that_raises_breaks_the_executor():
    ex = Executor(max_workers=2, initializer=fail_init)
    f = ex.submit(os.getpid)
    with pytest.raises(cf.BrokenExecutor) as info:
        f.result(timeout=60)
    assert isinstance(info.value, cfp.BrokenProcessPool)
    assert "ValueError: error in initializer" in str(info.value)
    assert ex._broken
    with pytest.raises(cfp.BrokenProcessPool):
        ex.submit(os.getpid)
    ex.shutdown()


def test_initializer_arguments_are_checked_at_once():
    with pytest.raises(TypeError, match="initializer must be a callable"):
        Executor(initializer=3)
    with pytest.raises(volley.SerializationError):
        Executor(initializer=record_init, initargs=(multiprocessing.Lock(),))


def test_mp_context_is_accepted_and_checked():
    for method in ("fork", "spawn", "forkserver"):
        with Executor(max_workers=2, mp_context=multiprocessing.get_context(method)) as ex:
            assert ex.submit(pow, 2, 5).result(timeout=60) == 32
    with pytest.raises(TypeError, match="multiprocessing context"):
        Executor(mp_context="spawn")


@volley.remote
def nap(s: float) -> None:
    time.sleep(s)


def counted_call() -> tuple[int, int]:
    """This process's pid and how many times it has run this function (the count lives on the
    ``sys`` module, so it survives between calls whether or not this test module was imported
    there by name)."""
    n = getattr(sys, "_volley_counted_calls", 0) + 1
    sys._volley_counted_calls = n  # type: ignore[attr-defined]
    return os.getpid(), n


def all_workers_started() -> None:
    """Returns once a worker per CPU runs: the calls of an executor with max_tasks_per_child go
    to the node's lowest idle worker, and one that registers late would take the next call."""
    volley.get([nap.remote(0.5) for _ in range(int(volley.cluster_resources()["CPU"]))])


def test_max_tasks_per_child_replaces_the_process_after_that_many_calls():
    """Which worker takes each call is the scheduler's choice (on a cluster, either node's), so
    the test follows every process it sees: none runs a fourth call, and one that ran its third
    exits and never answers again."""
    with pytest.raises(TypeError):
        Executor(max_tasks_per_child=1.5)
    with pytest.raises(ValueError):
        Executor(max_tasks_per_child=0)
    seen: dict[int, list[int]] = {}
    retired: list[int] = []
    with Executor(1, max_tasks_per_child=3) as ex:
        for _ in range(40):
            pid, n = ex.submit(counted_call).result(timeout=60)
            assert pid not in retired, f"process {pid} answered after its third call"
            seen.setdefault(pid, []).append(n)
            if n == 3:
                retired.append(pid)
            if len(retired) >= 2:
                break
    assert len(retired) >= 2, f"no process ran three calls in 40: {seen}"
    for pid, counts in seen.items():
        assert counts == list(range(1, len(counts) + 1)) and len(counts) <= 3, (pid, counts)
    for pid in retired:
        assert poll(lambda pid=pid: proc_state(pid) in (None, "Z"), timeout=30), (
            f"worker {pid} still runs after its third call"
        )
    assert os.getpid() not in seen


@volley.remote
def task_pid() -> int:
    return os.getpid()


@pytest.mark.skipif(CLUSTER_MODE, reason="the test needs the calls on one node's workers")
def test_max_tasks_per_child_retires_a_shared_worker_as_a_pools_maxtasksperchild_does():
    # One retire mechanism (volley.library.retire_worker): the executor has no processes of its
    # own; its calls run in the node's shared workers (a plain task gets the same one, the
    # lowest idle), and the worker that ran its N-th call of this executor exits cleanly.
    all_workers_started()
    with Executor(1, max_tasks_per_child=2) as ex:
        first = ex.submit(os.getpid).result(timeout=60)
        plain = volley.get(task_pid.remote(), timeout=60)  # does not count for the executor
        second = ex.submit(os.getpid).result(timeout=60)
        assert first == plain == second
        assert poll(lambda: proc_state(first) in (None, "Z"), timeout=30), "it did not retire"
        third = ex.submit(os.getpid).result(timeout=60)
    assert third != first


def square(x: int) -> int:
    return x * x


def test_max_tasks_per_child_with_an_early_shutdown_runs_every_call():
    ex = Executor(3, max_tasks_per_child=1)
    futures = [ex.submit(square, i) for i in range(6)]
    ex.shutdown()
    assert [f.result() for f in futures] == [i * i for i in range(6)]


# ------------------------------------------------------------------ bug 13: the errors


def raise_value_error(msg: str) -> None:
    raise ValueError(msg)  # the remote traceback shows this line


def raise_base(cls: type) -> None:
    raise cls()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_calls_exception_comes_back_with_its_own_class_and_the_remote_traceback():
    with Executor() as ex:
        with pytest.raises(ValueError) as info:
            ex.submit(raise_value_error, "no").result(timeout=60)
        e = info.value
        assert type(e) is ValueError and e.args == ("no",)
        assert type(e.__cause__) is cfp._RemoteTraceback
        assert "raise ValueError(msg)  # the remote traceback shows this line" in e.__cause__.tb
        # The same through the completion thread (exception() after done) and through map.
        f = ex.submit(raise_value_error, "again")
        cf.wait([f], timeout=60)
        assert type(f.exception()) is ValueError
        with pytest.raises(ValueError, match="mapped"):
            list(ex.map(raise_value_error, ["mapped"], chunksize=2))


@pytest.mark.parametrize("cls", [SystemExit, KeyboardInterrupt])
def test_system_exit_and_keyboard_interrupt_in_a_call_come_back_as_themselves(cls):
    # ProcessPoolExecutor's worker catches BaseException and sends it back.
    with Executor() as ex:
        f = ex.submit(raise_base, cls)
        with pytest.raises(cls):
            f.result(timeout=60)
        assert type(f.exception()) is cls
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8  # and the executor goes on


def test_a_worker_crash_raises_broken_process_pool_which_is_also_worker_crashed_error():
    with Executor(max_retries=0) as ex:
        f = ex.submit(die)
        with pytest.raises(cfp.BrokenProcessPool) as info:
            f.result(timeout=60)
        e = info.value
        assert isinstance(e, cfp.BrokenProcessPool) and isinstance(e, cf.BrokenExecutor)
        assert isinstance(e, volley.WorkerCrashedError)
        assert isinstance(e.__cause__, volley.WorkerCrashedError)
        # Only that call: the executor stays usable (volley's workers are independent).
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8
    with Executor(1, max_tasks_per_child=5) as ex:  # the executor's own processes too
        with pytest.raises(cfp.BrokenProcessPool):
            ex.submit(die).result(timeout=60)
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8


class WithClassMethod:
    @classmethod
    def fail(cls) -> None:
        raise RuntimeError(cls.__name__)  # a classmethod's line


def test_a_classmethod_travels_by_reference_with_its_source_lines():
    # As the standard library's pickle sends it (cloudpickle would send its code by value,
    # without a file name: no source lines in the remote traceback).
    with Executor() as ex:
        e = ex.submit(WithClassMethod.fail).exception(timeout=60)
    assert type(e) is RuntimeError and e.args == ("WithClassMethod",)
    assert "raise RuntimeError(cls.__name__)  # a classmethod's line" in e.__cause__.tb
