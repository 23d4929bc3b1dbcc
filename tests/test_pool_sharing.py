"""volley.multiprocessing.Pool: bugs of issue 16 (1, 3, 9, 10, 13), each against real workers.

1. an open pool shares the CPUs (idle, it holds none; two pools map at the same time);
3. ``maxtasksperchild`` then ``close()``: ``join()`` returns with every result;
9. empty inputs give empty results;
10. ``imap`` reads its input lazily and reports the input's errors at ``next()``;
13. errors keep their class (remote traceback as ``__cause__``), ``SystemExit`` in a task comes
    back, an argument that cannot be pickled is a ``pickle.PicklingError``.

Issue 21: a result the standard pickler refuses is a ``MaybeEncodingError`` (as in
``multiprocessing``); the initializer runs when the pool opens.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import multiprocessing.pool as mp_pool
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import poll, proc_state

import volley
from volley.futures import Executor
from volley.multiprocessing import Pool

pytestmark = pytest.mark.usefixtures("volley_shared")


def square(x):
    return x * x


def pid_after(s):
    time.sleep(s)
    return os.getpid()


def sleepy_square(x):
    time.sleep(0.3)
    return x * x


@volley.remote
def remote_square(x):
    return x * x


# --------------------------------------------------------------------------- bug 1


def test_an_idle_open_pool_lets_tasks_another_pool_and_an_executor_run():
    # The node has 2 CPUs; a pool of 2 (or 4) used to hold both for its whole life.
    with Pool(2) as idle, Pool(4) as idle_too:
        assert idle.map(square, range(4)) == [0, 1, 4, 9]  # used once, then idle
        assert idle_too.apply(square, (3,)) == 9
        assert volley.get([remote_square.remote(i) for i in range(6)], timeout=60) == [
            i * i for i in range(6)
        ]
        with Pool(2) as second:
            assert second.map_async(square, range(10)).get(timeout=60) == [i * i for i in range(10)]
        with Executor(max_workers=2) as ex:
            assert list(ex.map(square, range(5), timeout=60)) == [0, 1, 4, 9, 16]


def test_two_pools_mapping_at_the_same_time_both_finish():
    with Pool(2) as a, Pool(2) as b:
        ra = a.map_async(sleepy_square, range(6), chunksize=1)
        rb = b.map_async(sleepy_square, range(6), chunksize=1)
        assert ra.get(timeout=60) == [i * i for i in range(6)]
        assert rb.get(timeout=60) == [i * i for i in range(6)]


def interval(s):
    t0 = time.time()
    time.sleep(s)
    return t0, time.time()


def test_a_pool_keeps_at_most_processes_chunks_in_flight():
    with Pool(2) as p:
        spans = sorted(p.map(interval, [0.1] * 8, chunksize=1))
    # At every chunk's start, at most 2 chunks (it and one other) were running.
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


_INITS: dict = {}


def count_init(token):
    _INITS[token] = _INITS.get(token, 0) + 1


def inits_seen(token):
    return os.getpid(), _INITS.get(token)


def test_the_initializer_runs_once_per_process_and_pool():
    with Pool(2, initializer=count_init, initargs=("a",)) as a:
        seen = a.map(inits_seen, ["a"] * 20, chunksize=1)
    assert {n for _, n in seen} == {1}  # each process ran it once, before its first chunk
    with Pool(2, initializer=count_init, initargs=("b",)) as b:
        assert {n for _, n in b.map(inits_seen, ["b"] * 6, chunksize=1)} == {1}


@volley.remote
def uses_a_pool(n):
    with Pool(2) as p:
        return sum(p.map(square, range(n), chunksize=1)), sorted(p.imap_unordered(square, [1, 2]))


def test_tasks_filling_every_cpu_can_each_use_a_pool():
    # Each task waits for its pool's chunks: waiting lends its CPU to them, as get() does.
    refs = [uses_a_pool.remote(n) for n in (5, 6, 7)]
    assert volley.get(refs, timeout=60) == [(30, [1, 4]), (55, [1, 4]), (91, [1, 4])]


# --------------------------------------------------------------------------- bug 3


def test_maxtasksperchild_then_close_join_returns_every_result():
    p = Pool(3, maxtasksperchild=1)
    results = [p.apply_async(sleepy_square, (i,)) for i in range(6)]
    p.close()
    done = threading.Event()
    threading.Thread(target=lambda: (p.join(), done.set()), daemon=True).start()
    assert done.wait(60), "join() hung: work queued behind retiring processes was lost"
    assert [r.get(timeout=0) for r in results] == [i * i for i in range(6)]


def test_maxtasksperchild_retires_the_process_after_n_chunks_of_the_pool():
    with Pool(1, maxtasksperchild=1) as p:
        pids = [p.apply(pid_after, (0,)) for _ in range(4)]
    assert len(set(pids)) == 4  # each process ran one chunk of this pool, then left


def deaf_sleep(path, s):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # terminate()'s interrupt is not heard
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(s)
    return s


def marked_sleep(path, s):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(s)
    return s


def pid_in(path):
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


def test_terminate_then_join_ends_even_a_chunk_that_ignores_the_interrupt(tmp_path):
    p = Pool(2)
    deaf_at, heard_at = str(tmp_path / "deaf"), str(tmp_path / "heard")
    deaf = p.apply_async(deaf_sleep, (deaf_at, 600))
    running = p.apply_async(marked_sleep, (heard_at, 600))
    r = p.map_async(sleepy_square, range(100), chunksize=1)
    assert poll(lambda: pid_in(deaf_at) and pid_in(heard_at), timeout=60), "chunks did not start"
    deaf_pid, heard_pid = pid_in(deaf_at), pid_in(heard_at)
    p.terminate()
    done = threading.Event()
    threading.Thread(target=lambda: (p.join(), done.set()), daemon=True).start()
    assert done.wait(45), "join() after terminate() hung"
    # Every call fails as terminated (not with the KeyboardInterrupt that stopped its chunk).
    for res in (r, deaf, running):
        with pytest.raises(volley.VolleyError, match="terminated"):
            res.get(timeout=10)
    # The process of the chunk that ignored the interrupt was killed, as multiprocessing's
    # terminate() kills its processes; the one that heard it stopped its chunk and lives on
    # (a shared volley worker, ready for other work).
    gone = poll(lambda: proc_state(deaf_pid) in (None, "Z"), timeout=30)
    assert gone, f"the process {deaf_pid} of the deaf chunk still runs after join()"
    assert proc_state(heard_pid) not in (None, "Z")


# --------------------------------------------------------------------------- bug 9


def test_empty_inputs_give_empty_results():
    with Pool(2) as p:
        assert p.map(square, []) == []
        assert p.map_async(square, []).get(timeout=10) == []
        assert p.starmap(pow, []) == []
        assert p.starmap_async(pow, []).get(timeout=10) == []
        assert list(p.imap(square, [])) == []
        assert list(p.imap_unordered(square, [])) == []
        with pytest.raises(ValueError, match="Chunksize"):
            p.map(square, [1], chunksize=0)


# --------------------------------------------------------------------------- bug 10


def _slow_numbers(n, every, read):
    for i in range(n):
        time.sleep(every)
        read.append(i)
        yield i


def test_imap_yields_before_its_input_is_exhausted():
    read: list[int] = []
    with Pool(2) as p:
        it = p.imap(square, _slow_numbers(20, 0.05, read))
        assert next(it) == 0
        # The first result came while most of the input was still unread.
        assert len(read) < 20
        assert list(it) == [i * i for i in range(1, 20)]


def test_imap_over_an_endless_input_and_read_ahead_is_bounded():
    with Pool(2) as p:
        counter = itertools.count()
        it = p.imap(square, counter)
        assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
        time.sleep(0.3)
        # Bounded read-ahead: the pool stopped reading a few chunks ahead of the consumer.
        assert next(counter) < 100
        uit = p.imap_unordered(square, itertools.count(), chunksize=3)
        assert len({next(uit) for _ in range(10)}) == 10


class InputBroke(ValueError):
    pass


def _breaks_at(n):
    yield from range(n)
    raise InputBroke("the input broke")


def test_an_input_error_surfaces_at_next_not_at_the_imap_call():
    with Pool(2) as p:
        it = p.imap(square, _breaks_at(3))  # no error here
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(InputBroke):
            next(it)
        assert list(it) == []  # the input's error ends the results, as in multiprocessing
        it = p.imap_unordered(square, _breaks_at(0))
        with pytest.raises(InputBroke):
            next(it)
        # In chunks of 2: the items read into the chunk the error broke are lost with it (as
        # in multiprocessing, whose task generator raises at the same place).
        it = p.imap(square, _breaks_at(5), chunksize=2)
        assert [next(it) for _ in range(4)] == [0, 1, 4, 9]
        with pytest.raises(InputBroke):
            next(it)
        assert list(it) == []
        it = p.imap_unordered(square, _breaks_at(5), chunksize=2)
        got, errors = [], 0
        while True:
            try:
                got.append(next(it))
            except InputBroke:
                errors += 1
            except StopIteration:
                break
        assert sorted(got) == [0, 1, 4, 9] and errors == 1


def test_an_imap_dropped_unread_does_not_hold_up_join():
    p = Pool(2)
    it = p.imap(square, itertools.count())
    assert next(it) == 0
    del it
    p.close()
    done = threading.Event()
    threading.Thread(target=lambda: (p.join(), done.set()), daemon=True).start()
    assert done.wait(60)


# --------------------------------------------------------------------------- bug 13


def raises_value_error(x):
    raise ValueError(f"bad {x}")


def exits(code):
    raise SystemExit(code)


def interrupted(_):
    raise KeyboardInterrupt


def test_errors_keep_their_own_class_with_the_remote_traceback_as_cause():
    with Pool(2) as p:
        with pytest.raises(ValueError) as info:
            p.apply(raises_value_error, (1,))
        assert type(info.value) is ValueError and info.value.args == ("bad 1",)
        cause = info.value.__cause__
        assert type(cause) is mp_pool.RemoteTraceback
        assert "raises_value_error" in cause.tb
        with pytest.raises(ValueError) as info:
            p.map(raises_value_error, range(3))
        assert type(info.value) is ValueError
        got = []
        r = p.apply_async(raises_value_error, (2,), error_callback=got.append)
        with pytest.raises(ValueError):
            r.get(timeout=30)
        assert type(got[0]) is ValueError


def test_system_exit_and_keyboard_interrupt_in_a_task_come_back_not_hang():
    # multiprocessing's Pool loses the task (its get() hangs); volley re-raises them as
    # concurrent.futures.ProcessPoolExecutor does, with the remote traceback as the cause.
    with Pool(1) as p:
        with pytest.raises(SystemExit) as info:
            p.apply_async(exits, (3,)).get(timeout=30)
        assert type(info.value) is SystemExit and info.value.code == 3
        assert isinstance(info.value.__cause__, mp_pool.RemoteTraceback)
        with pytest.raises(KeyboardInterrupt):
            p.map_async(interrupted, [1]).get(timeout=30)
        assert p.map(square, range(3)) == [0, 1, 4]  # the pool goes on


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_an_argument_that_cannot_be_pickled_is_a_pickling_error():
    with Pool(2) as p:
        with pytest.raises(pickle.PicklingError) as info:
            p.map(square, [Unpicklable()] * 3)
        assert isinstance(info.value, RuntimeError)  # the stdlib raises the pickler's error
        with pytest.raises(pickle.PicklingError):
            p.apply(square, (threading.Lock(),))
        assert p.map(square, [2]) == [4]


def test_a_pool_left_open_in_a_global_at_exit_does_not_hang(tmp_path):
    # CPython's test_worker_finalization_via_atexit_handler_of_multiprocessing, with volley's
    # Pool (the peer suite skips the original: it runs the stdlib's Pool).
    script = tmp_path / "script.py"
    script.write_text(
        "from volley.multiprocessing import Pool\n"
        "problem = None\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self.pool = Pool(processes=1)\n"
        "def test():\n"
        "    global problem\n"
        "    problem = A()\n"
        "    problem.pool.map(float, tuple(range(10)))\n"
        "if __name__ == '__main__':\n"
        "    test()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VOLLEY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def returns_a_lock():
    return threading.Lock()


def test_a_result_that_cannot_be_sent_back_is_a_maybe_encoding_error():
    with Pool(2) as p:
        got = []
        r = p.apply_async(returns_a_lock, error_callback=got.append)
        with pytest.raises(mp_pool.MaybeEncodingError):
            r.get(timeout=30)
        assert isinstance(got[0], mp_pool.MaybeEncodingError)
        assert p.apply(square, (3,)) == 9


# --------------------------------------------------------------------------- issue 21: results and
# the initializer as multiprocessing has them


def returns_a_lambda(x):
    return lambda: x


def returns_a_local_class_instance(x):
    class Local:
        pass

    return [x, Local()]


def a_lambda_at_3(x):
    return (lambda: x) if x == 3 else x


def test_a_result_the_standard_pickler_refuses_is_a_maybe_encoding_error_as_in_multiprocessing():
    # volley's cloudpickle would send these; multiprocessing cannot, and its pool says so.
    with Pool(2) as p:
        for fn in (returns_a_lambda, returns_a_local_class_instance):
            got = []
            r = p.apply_async(fn, (1,), error_callback=got.append)
            with pytest.raises(mp_pool.MaybeEncodingError) as info:
                r.get(timeout=30)
            assert got == [info.value]
            assert "Can't pickle local object" in info.value.exc, info.value.exc
            assert info.value.value.startswith("["), info.value.value  # the chunk's results
        # A map fails as a whole (the chunk with the lambda could not be sent); imap fails at
        # that chunk and goes on.
        with pytest.raises(mp_pool.MaybeEncodingError):
            p.map(a_lambda_at_3, range(6), chunksize=2)
        it = p.imap(a_lambda_at_3, range(6))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(mp_pool.MaybeEncodingError):
            next(it)
        assert list(it) == [4, 5]
        assert p.map(square, range(4)) == [0, 1, 4, 9]  # the pool lost nothing


def puts_a_value(x):
    return [volley.put(x * 10)]


def an_array(n):
    import numpy as np

    return np.arange(n, dtype=np.int64)


def test_results_holding_refs_and_large_arrays_come_back_whole():
    # Results travel in the standard pickler's stream inside volley's: a ref in them is still
    # kept alive by the value, and an array's buffer still travels out of band.
    with Pool(2) as p:
        refs = p.map(puts_a_value, range(4), chunksize=1)
        import gc

        gc.collect()
        assert volley.get([r[0] for r in refs], timeout=30) == [0, 10, 20, 30]
        arrays = p.map(an_array, [10, 1_000_000])
        assert [int(a.sum()) for a in arrays] == [45, 999_999 * 1_000_000 // 2]
        big = p.map(str, range(20_000))  # a stream larger than the out-of-band threshold
        assert big == [str(i) for i in range(20_000)]


def append_pid(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_the_initializer_runs_when_the_pool_opens_even_with_no_work(tmp_path):
    # As multiprocessing starts its processes (each runs the initializer): a pool closed with
    # no work has run it (CPython's TestInitializers.test_pool_initializer).
    one = tmp_path / "one"
    p = Pool(1, initializer=append_pid, initargs=(str(one),))
    p.close()
    p.join()
    assert len(read_lines(one)) == 1
    # In `processes` processes at most once each; the chunks after it find it done.
    two = tmp_path / "two"
    with Pool(2, initializer=append_pid, initargs=(str(two),)) as q:
        assert poll(lambda: read_lines(two), timeout=30), "the initializer did not run at start"
        pids = set(q.map(pid_after, [0.05] * 8, chunksize=1))
        lines = read_lines(two)
        assert len(lines) == len(set(lines)), f"it ran twice in a process: {lines}"
        assert pids <= {int(x) for x in lines}, (pids, lines)


def init_fails():
    raise ValueError("the initializer failed")


def test_an_initializer_that_raises_is_reported_and_fails_the_calls(capfd):
    p = Pool(1, initializer=init_fails)
    with pytest.raises(ValueError, match="the initializer failed"):
        p.apply(square, (2,))
    p.close()
    p.join()
    err = capfd.readouterr().err
    assert "initializer of <volley.multiprocessing.Pool" in err and "ValueError" in err, err


def init_sleeps():
    time.sleep(600)


def test_terminate_while_the_initializer_runs_ends_join_silently(capfd):
    p = Pool(2, initializer=init_sleeps)
    p.terminate()
    done = threading.Event()
    threading.Thread(target=lambda: (p.join(), done.set()), daemon=True).start()
    assert done.wait(45), "join() after terminate() hung on the initializer's chunks"
    assert "initializer" not in capfd.readouterr().err


def bad_pow(a, b):
    if a == 3:
        raise ValueError("three")
    return a**b


def test_starmap_async_callbacks_and_a_callback_that_raises(capfd):
    with Pool(2) as p:
        values, errors = [], []
        r = p.starmap_async(
            bad_pow, [(1, 2), (3, 2), (2, 2)], callback=values.append, error_callback=errors.append
        )
        with pytest.raises(ValueError, match="three") as info:
            r.get(timeout=30)
        # The error callback got the call's error, of its own class, before get() returned.
        assert values == [] and errors == [info.value]
        assert isinstance(info.value.__cause__, mp_pool.RemoteTraceback)
        assert not r.successful()
        r = p.starmap_async(pow, [(2, 3)], callback=values.append, error_callback=errors.append)
        assert r.get(timeout=30) == [8] and values == [[8]] and len(errors) == 1

        # A callback that raises is reported; the call still has its value and the pool goes
        # on (multiprocessing's result thread dies of it, and every later call hangs).
        def bad_callback(v):
            raise ZeroDivisionError("in the callback")

        r = p.starmap_async(pow, [(1, 2), (3, 2)], callback=bad_callback)
        assert r.get(timeout=30) == [1, 9]
        assert p.starmap(pow, [(2, 2)]) == [4]

        # Even SystemExit: the pool's callback thread goes on with the next callbacks.
        def exits(v):
            raise SystemExit(3)

        r = p.starmap_async(pow, [(1, 2)], callback=exits)
        assert r.get(timeout=30) == [1]
        r = p.starmap_async(pow, [(2, 5)], callback=values.append)
        assert r.get(timeout=30) == [32] and values[-1] == [32]
    err = capfd.readouterr().err
    assert "callback raised ZeroDivisionError: in the callback" in err, err
    assert "callback raised SystemExit: 3" in err, err


def runs_script(tmp_path, body):
    script = tmp_path / "script.py"
    script.write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "VOLLEY_ADDRESS"}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("left", ["with", "open"])
def test_a_script_ending_while_its_pool_runs_work_exits_and_its_chunks_stop(tmp_path, left):
    # `with Pool() as p` terminates at the block's end, as multiprocessing's does; a pool left
    # open goes with volley at exit. Neither waits for the 600-s chunk.
    marker = tmp_path / "pid"
    out = runs_script(
        tmp_path,
        "import os, time\n"
        "from volley.multiprocessing import Pool\n"
        "def work(path):\n"
        "    with open(path, 'w') as f:\n"
        "        f.write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "def wait_for(path):\n"
        "    deadline = time.monotonic() + 60\n"
        "    while not os.path.exists(path) or not open(path).read():\n"
        "        assert time.monotonic() < deadline, 'the chunk did not start'\n"
        "        time.sleep(0.02)\n"
        "if __name__ == '__main__':\n"
        + (
            "    with Pool(2) as p:\n"
            f"        r = p.apply_async(work, ({str(marker)!r},))\n"
            f"        wait_for({str(marker)!r})\n"
            "    try:\n"
            "        r.get(timeout=30)\n"
            "    except Exception as e:\n"
            "        print('terminated' in str(e))\n"
            if left == "with"
            else "    p = Pool(2)\n"
            f"    r = p.apply_async(work, ({str(marker)!r},))\n"
            f"    wait_for({str(marker)!r})\n"
            "    print(True)\n"
        ),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True", out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    pid = pid_in(marker)
    gone = poll(lambda: proc_state(pid) in (None, "Z"), timeout=30)
    assert gone, f"the chunk's process {pid} outlived the script"


def test_ctrl_c_while_a_script_waits_on_its_pool_ends_the_script_and_its_chunks(tmp_path):
    # Ctrl-C in `pool.map` inside `with Pool() as p`: the KeyboardInterrupt comes out of map(),
    # the block's exit terminates the pool, and the script ends (multiprocessing's does too).
    script = tmp_path / "script.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from volley.multiprocessing import Pool\n"
        "def work(folder):\n"
        "    with open(os.path.join(folder, str(os.getpid())), 'w') as f:\n"
        "        f.write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored\n"
        "    with Pool(2) as p:\n"
        "        p.map(work, [sys.argv[1]] * 4, chunksize=1)\n"
    )
    folder = tmp_path / "pids"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "VOLLEY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = poll(lambda: len(list(folder.iterdir())) >= 2, timeout=60)
        assert started, "the pool's chunks did not start"
        pids = [int(p.name) for p in folder.iterdir()]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, (proc.returncode, err)
    for pid in pids:
        gone = poll(lambda pid=pid: proc_state(pid) in (None, "Z"), timeout=30)
        assert gone, f"the chunk's process {pid} outlived the interrupted script"


def test_a_blocked_callback_holds_up_neither_another_pool_nor_plain_futures():
    # Callbacks run in their pool's own thread (multiprocessing's result thread), not in the
    # thread that completes every volley future of the process.
    release = threading.Event()
    with Pool(2) as a, Pool(2) as b:
        blocked = a.apply_async(square, (2,), callback=lambda v: release.wait(60))
        try:
            assert b.map_async(square, range(4)).get(timeout=30) == [0, 1, 4, 9]
            assert remote_square.remote(5).future().result(timeout=30) == 25
            # The same pool's calls without callbacks are delivered too.
            assert a.apply_async(square, (3,)).get(timeout=30) == 9
            assert not blocked.ready()  # its callback has not returned yet
        finally:
            release.set()
        assert blocked.get(timeout=30) == 4


def test_a_callback_waiting_on_its_own_pool(capfd):
    with Pool(2) as p:
        got, later = [], []
        # On a call without callbacks: delivered at once, so this works (multiprocessing hangs).
        r = p.apply_async(square, (2,), callback=lambda v: got.append(p.apply(square, (v,))))
        assert r.get(timeout=30) == 4 and got == [16]

        # On a call that has a callback: it could never run (callbacks run one at a time), so
        # the wait raises instead of hanging, and the error is reported.
        def waits_on_a_call_with_a_callback(v):
            inner = p.apply_async(square, (v,), callback=later.append)
            with pytest.raises(mp.TimeoutError):
                inner.get(timeout=0)  # a poll with a timeout times out
            got.append(inner.get())

        r = p.apply_async(square, (3,), callback=waits_on_a_call_with_a_callback)
        assert r.get(timeout=30) == 9
        assert got == [16]
        assert poll(lambda: later == [81], timeout=30), "the inner call's callback did not run"
    err = capfd.readouterr().err
    assert "callback raised RuntimeError: a callback of the pool waits" in err, err
