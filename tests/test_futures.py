"""volley.futures.Executor against the concurrent.futures contract."""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cfp
import threading
import time

import pytest
from conftest import CLUSTER_MODE

import volley
from volley.futures import Executor

pytestmark = pytest.mark.usefixtures("volley_shared")


def slow_square(x, delay=0.0):
    time.sleep(delay)
    return x * x


def boom(msg):
    raise KeyError(msg)


def test_submit_result_and_map():
    with Executor() as ex:
        f = ex.submit(slow_square, 7)
        assert isinstance(f, cf.Future)
        assert f.result(timeout=30) == 49
        assert ex.submit(slow_square, x=3).result() == 9  # keyword arguments
        assert list(ex.map(slow_square, range(6))) == [x * x for x in range(6)]
        assert list(ex.map(pow, [2, 3], [5, 2], chunksize=2)) == [32, 9]
        assert list(ex.map(slow_square, range(10), chunksize=3)) == [x * x for x in range(10)]


def test_stdlib_as_completed_wait_and_callbacks():
    seen = []
    done_event = threading.Event()
    with Executor() as ex:
        fs = [ex.submit(slow_square, i, 0.05 * (4 - i)) for i in range(4)]
        fs[0].add_done_callback(lambda f: (seen.append(f.result()), done_event.set()))
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=30)) == [0, 1, 4, 9]
        done, not_done = cf.wait(fs, timeout=30)
        assert len(done) == 4 and not not_done
        assert done_event.wait(10) and seen == [0]
        # A callback added after completion runs at once.
        late = []
        fs[1].add_done_callback(lambda f: late.append(f.result()))
        assert late == [1]


def test_exceptions_follow_the_stdlib():
    with Executor() as ex:
        f = ex.submit(boom, "nope")
        e = f.exception(timeout=30)
        # The task's own exception, as ProcessPoolExecutor gives it: its class, its args, and
        # the remote traceback as its __cause__.
        assert type(e) is KeyError and e.args == ("nope",)
        assert type(e.__cause__) is cfp._RemoteTraceback
        assert "raise KeyError(msg)" in e.__cause__.tb
        with pytest.raises(KeyError, match="nope"):
            f.result()
        it = ex.map(boom, ["a"])
        with pytest.raises(KeyError):
            next(it)
        with pytest.raises(volley.SerializationError):
            ex.submit(slow_square, threading.Lock()).result()


def test_map_timeout():
    with Executor() as ex:
        it = ex.map(slow_square, [1, 2], [2.0, 2.0], timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            list(it)
        with pytest.raises(cf.TimeoutError):
            ex.submit(slow_square, 1, 2.0).result(timeout=0.1)


def test_cancel_waiting_calls_but_not_running_ones():
    ex = Executor(max_workers=1)
    running = ex.submit(slow_square, 1, 0.5)
    waiting = ex.submit(slow_square, 2, 0.5)
    assert running.running() and not running.cancel()
    assert waiting.cancel() and waiting.cancelled()
    with pytest.raises(cf.CancelledError):
        waiting.result()
    assert running.result(timeout=30) == 1
    ex.shutdown()


def test_shutdown_waits_cancels_and_refuses_new_work():
    ex = Executor(max_workers=1)
    fs = [ex.submit(slow_square, i, 0.2) for i in range(4)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert fs[0].result() == 0
    assert all(f.cancelled() for f in fs[1:])
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(slow_square, 1)
    ex2 = Executor()
    f = ex2.submit(slow_square, 3, 0.2)
    ex2.shutdown(wait=True)
    assert f.done() and f.result() == 9


def test_max_workers_bounds_concurrency():
    with pytest.raises(ValueError):
        Executor(max_workers=0)
    with Executor(max_workers=2) as ex:
        fs = [ex.submit(slow_square, i, 0.3) for i in range(5)]
        # Two handed to volley; the rest wait here (still cancellable).
        assert [f.running() for f in fs] == [True, True, False, False, False]
        assert [f.result() for f in fs] == [0, 1, 4, 9, 16]


def test_task_options_apply_to_every_call():
    with Executor(num_cpus=2) as ex:
        if CLUSTER_MODE:  # nodes of 1 CPU: no call can ever run, and each says so
            with pytest.raises(volley.UnschedulableError, match="no node in the cluster has"):
                list(ex.map(slow_square, range(3)))
            return
        # Each call holds both CPUs: they run one after the other, all correctly.
        assert sorted(ex.map(slow_square, range(3))) == [0, 1, 4]


def die_once(x, marker):
    import os
    import signal

    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_a_killed_worker_is_retried_then_reported(tmp_path):
    with Executor() as ex:
        assert ex.submit(die_once, 5, str(tmp_path / "m")).result(timeout=60) == 5
    with Executor(max_retries=0) as ex:
        f = ex.submit(die_once, 5, str(tmp_path / "n"))
        with pytest.raises(volley.WorkerCrashedError):
            f.result(timeout=60)
