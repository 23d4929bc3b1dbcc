"""volley.multiprocessing.Pool against the multiprocessing.Pool contract."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import poll

import volley
from volley.multiprocessing import Pool

pytestmark = pytest.mark.usefixtures("volley_shared")


def square(x):
    return x * x


def slow_pid(x):
    time.sleep(0.02)
    return os.getpid()


def fails_at_3(x):
    if x == 3:
        raise ValueError("three")
    return x


def sleepy(s):
    time.sleep(s)
    return s


_OFFSET = None


def set_offset(v):
    global _OFFSET
    _OFFSET = v


def add_offset(x):
    return x + _OFFSET


def test_the_whole_api_surface():
    with Pool(2) as p:
        assert p.map(square, range(10)) == [x * x for x in range(10)]
        assert p.map(square, range(10), chunksize=3) == [x * x for x in range(10)]
        assert p.starmap(pow, [(2, 5), (3, 2)]) == [32, 9]
        assert p.apply(pow, (2, 5)) == 32
        assert p.apply(int, ("11",), {"base": 2}) == 3
        assert list(p.imap(square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(p.imap_unordered(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        r = p.map_async(square, range(4))
        assert r.get(timeout=30) == [0, 1, 4, 9] and r.ready() and r.successful()
        r = p.starmap_async(pow, [(2, 2)])
        r.wait(30)
        assert r.get() == [4]
        a = p.apply_async(square, (5,))
        assert a.get(timeout=30) == 25


def test_callbacks_run_before_get_returns():
    got, errors = [], []
    with Pool(2) as p:
        r = p.map_async(square, range(3), callback=got.append)
        assert r.get(30) == [0, 1, 4] and got == [[0, 1, 4]]
        e = p.apply_async(fails_at_3, (3,), error_callback=errors.append)
        with pytest.raises(ValueError, match="three"):
            e.get(30)
        assert len(errors) == 1 and isinstance(errors[0], ValueError)
        assert not e.successful()


def test_errors_are_raised_like_multiprocessing():
    with Pool(2) as p:
        with pytest.raises(ValueError, match="three") as info:
            p.map(fails_at_3, range(6))
        # The task's own exception class, the remote traceback as its cause (as the stdlib).
        assert type(info.value) is ValueError
        assert isinstance(info.value.__cause__, mp.pool.RemoteTraceback)
        assert "fails_at_3" in str(info.value.__cause__)
        # imap raises at the item and goes on.
        it = p.imap(fails_at_3, range(6))
        out = []
        for _ in range(6):
            try:
                out.append(next(it))
            except ValueError:
                out.append("E")
        assert out == [0, 1, 2, "E", 4, 5]
        r = p.apply_async(sleepy, (1.0,))
        with pytest.raises(mp.TimeoutError):
            r.get(timeout=0.05)
        with pytest.raises(ValueError, match="not ready"):
            r.successful()


def test_initializer_state_is_seen_by_the_tasks():
    with Pool(3, initializer=set_offset, initargs=(100,)) as p:
        assert p.map(add_offset, range(5)) == [100, 101, 102, 103, 104]
        assert p.map(add_offset, range(30), chunksize=1) == [100 + x for x in range(30)]


def test_maxtasksperchild_replaces_processes():
    with Pool(2, maxtasksperchild=2) as p:
        pids = p.map(slow_pid, range(10), chunksize=1)
    # No process ran more than 2 of the pool's chunks: each retired after its second.
    assert max(collections.Counter(pids).values()) <= 2 and len(set(pids)) >= 5


def test_close_join_terminate_and_misuse():
    p = Pool(2)
    assert p.map(square, [3]) == [9]
    with pytest.raises(ValueError, match="still running"):
        p.join()
    r = p.map_async(sleepy, [0.2, 0.2])
    p.close()
    with pytest.raises(ValueError, match="not running"):
        p.map(square, [1])
    p.join()
    assert r.get(0) == [0.2, 0.2]
    q = Pool(2)
    r = q.apply_async(sleepy, (30,))
    q.terminate()
    with pytest.raises(volley.VolleyError):
        r.get(timeout=30)
    with pytest.raises(ValueError):
        Pool(0)


def mark_then_sleep(path):
    open(path, "w").close()
    time.sleep(120)  # longer than the test waits for the chunks to start: only an interrupt ends it


@pytest.mark.timeout(120)
def test_terminate_fails_running_calls_with_volley_error_not_their_interrupt(tmp_path):
    # terminate() interrupts the running chunks; each reports a KeyboardInterrupt as it stops.
    # That report must not become the call's outcome: the calls fail with VolleyError, every
    # time (it raced: under load the interrupt's report came first).
    for i in range(5):
        p = Pool(2)
        a, b = tmp_path / f"a{i}", tmp_path / f"b{i}"
        r = p.apply_async(mark_then_sleep, (str(a),))
        it = (p.imap if i % 2 else p.imap_unordered)(mark_then_sleep, [str(b)])
        started = poll(lambda a=a, b=b: a.exists() and b.exists(), timeout=60)
        assert started, "the chunks did not start"
        p.terminate()
        with pytest.raises(volley.VolleyError, match="terminated") as e:
            r.get(timeout=30)
        assert not isinstance(e.value, KeyboardInterrupt)
        with pytest.raises(volley.VolleyError, match="terminated") as e:
            it.next(timeout=30)
        assert not isinstance(e.value, KeyboardInterrupt)
        with pytest.raises(StopIteration):
            it.next(timeout=30)
        p.join()


def kill_self(_):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_process_is_reported_not_a_hang():
    with Pool(1) as p:
        with pytest.raises(volley.WorkerCrashedError):
            p.apply(kill_self, (0,))
        # The pool replaced it: work goes on.
        assert p.map(square, range(3)) == [0, 1, 4]


def test_a_script_written_for_multiprocessing_runs_after_the_import_swap(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from volley.multiprocessing import Pool
            from multiprocessing.pool import MaybeEncodingError
            import dataclasses
            import os

            COUNTER = None

            @dataclasses.dataclass
            class Point:  # the script's own class: a forked worker finds it by name
                x: int

            def point(x):
                return Point(x)

            def a_lambda(x):
                return lambda: x

            def init(start):
                global COUNTER
                COUNTER = start

            def work(x):
                return x * 2 + COUNTER

            if __name__ == "__main__":
                with Pool(2, initializer=init, initargs=(1000,)) as pool:
                    print(sum(pool.map(work, range(100))))
                    print(sorted(pool.imap_unordered(work, range(3))))
                    print(pool.map(point, range(2)), type(pool.apply(point, (5,))) is Point)
                    try:
                        pool.apply(a_lambda, (1,))
                    except MaybeEncodingError:
                        print("MaybeEncodingError")
            """
        )
    )
    env = dict(os.environ)
    env.pop("VOLLEY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == [str(sum(x * 2 + 1000 for x in range(100))),
                                          "[1000, 1002, 1004]",
                                          "[Point(x=0), Point(x=1)] True",
                                          "MaybeEncodingError"]  # fmt: skip
