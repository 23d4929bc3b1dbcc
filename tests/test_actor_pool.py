"""volley.util.ActorPool when actors die: the calls a dead actor did not answer are made again
on the others (in order for ``map``), an error the method raised is its result, and a pool with
no actor left says so. Real actor processes, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import poll

import volley
from volley.util import ActorPool


@volley.remote(num_cpus=0)
class Worker:
    def pid(self):
        return os.getpid()

    def double(self, v, delay=0.05):
        time.sleep(delay)
        return 2 * v

    def fail_on(self, v, bad):
        if v == bad:
            raise ValueError(f"bad value {v}")
        return v

    def ask(self, other):
        return volley.get(other.pid.remote(), timeout=30)


def _pool(n):
    actors = [Worker.remote() for _ in range(n)]
    pids = volley.get([a.pid.remote() for a in actors], timeout=60)
    return ActorPool(actors), actors, pids


@pytest.mark.parametrize("ordered", [True, False], ids=["map", "map_unordered"])
def test_every_result_comes_when_an_actor_is_killed_mid_map(volley_2cpu, ordered):
    pool, _, pids = _pool(3)
    run = pool.map if ordered else pool.map_unordered
    results = run(lambda a, v: a.double.remote(v), range(30))
    got = [next(results)]
    os.kill(pids[1], signal.SIGKILL)
    got += list(results)
    expected = [2 * v for v in range(30)]
    assert (got if ordered else sorted(got)) == expected
    # The dead actor left the pool; the others still take work.
    assert list(pool.map(lambda a, v: a.double.remote(v, 0), range(6))) == [0, 2, 4, 6, 8, 10]


def test_a_pool_whose_actors_all_died_says_so(volley_2cpu):
    pool, _, pids = _pool(2)
    for p in pids:
        os.kill(p, signal.SIGKILL)
    assert poll(lambda: not any(_alive(p) for p in pids), timeout=20)
    for v in range(5):
        pool.submit(lambda a, v: a.double.remote(v), v)
    with pytest.raises(volley.ActorDiedError, match="every actor of the ActorPool died"):
        while pool.has_next():
            pool.get_next(timeout=60)
    assert not pool.has_next()


def test_an_error_the_method_raised_is_its_result_and_is_not_made_again(volley_2cpu):
    pool, _, _ = _pool(2)
    results = pool.map(lambda a, v: a.fail_on.remote(v, 3), range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad value 3"):
        next(results)
    # The error ends the generator (as Ray's does); the later results stay in the pool.
    assert [pool.get_next(timeout=60) for _ in range(2)] == [4, 5]
    assert not pool.has_next()


def test_an_actor_died_error_raised_by_the_method_itself_is_its_result(volley_2cpu):
    # The method's own call to another actor that died raises ActorDiedError inside it: that
    # is the call's result (the pool's actor is alive), not a reason to make it again.
    pool, _, _ = _pool(1)
    gone = Worker.remote()
    gone_pid = volley.get(gone.pid.remote(), timeout=60)
    os.kill(gone_pid, signal.SIGKILL)
    assert poll(lambda: not _alive(gone_pid), timeout=20)
    pool.submit(lambda a, v: a.ask.remote(v), gone)
    with pytest.raises(volley.ActorDiedError) as e:
        pool.get_next(timeout=60)
    assert isinstance(e.value, volley.exceptions.TaskError)
    assert pool.has_free()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ volley.map over a pool


@volley.remote(num_cpus=0)
class Slow:
    def pid(self):
        return os.getpid()

    def work(self, v):
        time.sleep(0.5 if v == 0 else 0.01)
        return (v, os.getpid())

    def add(self, a, b):
        return a + b

    def fail_on(self, v, bad=3):
        if v == bad:
            raise ValueError(f"bad value {v}")
        return v


def _slow_pool(n):
    actors = [Slow.remote() for _ in range(n)]
    pids = volley.get([a.pid.remote() for a in actors], timeout=60)
    return ActorPool(actors), pids


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_volley_map_over_a_pool_by_method_name_and_by_function(volley_2cpu, ordered):
    pool, pids = _slow_pool(3)
    by_name = list(volley.map(pool, range(20), method="work", ordered=ordered))
    by_fn = list(volley.map(pool, range(20), method=lambda a, v: a.work.remote(v), ordered=ordered))
    for got in (by_name, by_fn):
        values = [v for v, _ in got]
        assert values == list(range(20)) if ordered else sorted(values) == list(range(20))
        # Spread over the pool's actors; item 0's slow call does not hold the others up.
        assert len({p for _, p in got}) >= 2
        assert {p for _, p in got} <= set(pids)
    if not ordered:
        assert by_name[-1][0] == 0  # the slow item comes last
    assert list(volley.map(pool, [1, 2], [10, 20], method="add")) == [11, 22]
    assert list(volley.starmap(pool, [(1, 2), (3, 4)], method="add")) == [3, 7]


def test_volley_map_over_a_pool_reads_items_lazily(volley_2cpu):
    pool, _ = _slow_pool(2)
    read = []

    def items():
        for i in range(1, 1000):
            read.append(i)
            yield i

    it = volley.map(pool, items(), method="work")
    assert [next(it)[0] for _ in range(3)] == [1, 2, 3]
    assert len(read) < 20  # a few per actor ahead of the consumer, not all 999
    it.close()


def test_volley_map_over_a_pool_survives_a_killed_actor_in_order(volley_2cpu):
    pool, _, pids = _pool(3)
    results = volley.map(pool, range(30), method=lambda a, v: a.double.remote(v))
    got = [next(results)]
    os.kill(pids[1], signal.SIGKILL)
    got += list(results)
    assert got == [2 * v for v in range(30)]


def test_volley_map_over_a_pool_raises_the_first_error_in_order(volley_2cpu):
    pool, _ = _slow_pool(2)
    results = volley.map(pool, range(8), method="fail_on")
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad value 3"):
        next(results)
    with pytest.raises(StopIteration):
        next(results)
    # The pool is whole: the next map drops what the failed one left and runs.
    assert list(volley.map(pool, range(3), method="fail_on")) == [0, 1, 2]


def test_volley_map_over_a_pool_refuses_bad_input_at_the_call(volley_2cpu):
    pool, _ = _slow_pool(1)
    with pytest.raises(TypeError, match="needs method="):
        volley.map(pool, [1])
    with pytest.raises(ValueError, match="method must be an actor method's name"):
        volley.map(pool, [1], method="not a name")
    with pytest.raises(TypeError, match="method= is for volley.map over a volley.util.ActorPool"):
        volley.map(abs, [1], method="work")
    with pytest.raises(TypeError, match="must return the ObjectRef"):
        volley.map(pool, [1], method=lambda a, v: v)


def test_volley_map_over_a_pool_whose_actors_all_died_says_so(volley_2cpu):
    pool, pids = _slow_pool(2)
    for p in pids:
        os.kill(p, signal.SIGKILL)
    assert poll(lambda: not any(_alive(p) for p in pids), timeout=20)
    with pytest.raises(volley.ActorDiedError, match="every actor of the ActorPool died"):
        list(volley.map(pool, range(5), method="work"))
