"""volley.map / volley.starmap / volley.progress: real workers, real processes."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from conftest import CLUSTER_MODE

import volley

pytestmark = pytest.mark.usefixtures("volley_shared")


def square(x):
    return x * x


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def fails_at(x, bad=57):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def test_map_is_ordered_and_lazy_like_imap():
    assert list(volley.map(square, range(10))) == [x * x for x in range(10)]
    assert list(volley.map(pow, [2, 3, 4], [5, 2])) == [32, 9]  # stops at the shortest
    assert list(volley.starmap(pow, [(2, 5), (3, 2)])) == [32, 9]
    # An endless iterable is read only as far as it is consumed.
    it = volley.map(square, itertools.count())
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    it.close()


def test_unordered_yields_every_result_as_it_finishes():
    delays = [0.3, 0.0, 0.0, 0.0]
    got = list(volley.map(pid_after, delays, ordered=False, chunksize=1))
    assert len(got) == 4
    results = list(volley.map(square, range(50), ordered=False))
    assert sorted(results) == [x * x for x in range(50)]


def test_auto_chunks_batch_tiny_items_and_keep_slow_ones_apart():
    it = volley.map(square, range(200_000))
    assert sum(1 for _ in it) == 200_000
    assert it.tasks < 400, f"{it.tasks} tasks for 200,000 tiny items"
    slow = volley.map(pid_after, [0.1] * 6)
    pids = list(slow)
    assert slow.tasks == 6  # one by one
    assert len(set(pids)) == 2  # both workers took some


def test_the_tail_of_fast_items_is_not_split_finer_than_it_pays():
    # The chunk sizes `auto` picks once the time per item is known: the rest of 10,000 fast
    # items (2 us each) in a few chunks, not a long tail of ever smaller ones; slow items stay
    # one by one, and a large rest is still shared among the CPUs.
    from volley._map import _Sizer

    def chunks(total: int, per_item: float, cpus: int = 2) -> list[int]:
        s = _Sizer("auto", total, cpus)
        s.measured(1, per_item)
        sizes, left = [], total
        while left:
            n = min(s.size(left), left)
            sizes.append(n)
            left -= n
        return sizes

    fast = chunks(10_000, 2e-6)
    assert len(fast) <= 6, fast
    assert max(fast) <= 10_000 // 4, fast  # each CPU still gets a share
    assert chunks(100, 0.5) == [1] * 100
    assert len(chunks(1_000_000, 2e-6)) < 200


def test_fixed_chunksize():
    it = volley.map(square, range(100), chunksize=25)
    assert list(it) == [x * x for x in range(100)]
    assert it.tasks == 4
    with pytest.raises(ValueError, match="chunksize"):
        volley.map(square, range(3), chunksize=0)


def test_an_item_that_raises_surfaces_there_with_the_remote_traceback():
    it = volley.map(fails_at, range(200))
    got = []
    with pytest.raises(ValueError, match="item 57 is bad") as info:
        for v in it:
            got.append(v)
    assert got == list(range(57))
    assert isinstance(info.value, volley.TaskError)
    assert "in fails_at" in info.value.remote_traceback
    with pytest.raises(StopIteration):
        next(it)


def test_remote_functions_keep_their_options():
    @volley.remote(num_cpus=2)
    def alone(x):
        return x + 1

    if CLUSTER_MODE:  # nodes of 1 CPU: no chunk can ever run, and map says so
        with pytest.raises(volley.UnschedulableError, match="no node in the cluster has more"):
            list(volley.map(alone, range(4)))
        return
    assert list(volley.map(alone, range(4))) == [1, 2, 3, 4]


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="callable"):
        volley.map(42, range(3))
    with pytest.raises(TypeError, match="at least one iterable"):
        volley.map(square)
    lock = __import__("threading").Lock()
    with pytest.raises(volley.SerializationError):
        volley.map(lambda x: lock, range(3))


@volley.remote
class Accumulator:
    """Keeps a running total: map's calls must reach this one actor, in order."""

    def __init__(self):
        self.total = 0

    def add(self, x, times=1):
        if x == "bad":
            raise ValueError("a bad item")
        self.total += x * times
        return self.total

    @volley.method(num_returns=2)
    def pair(self, x):
        return x, x


def test_map_over_an_actor_method_calls_that_actor():
    acc = Accumulator.remote()
    assert list(volley.map(acc.add, [1, 2, 3, 4])) == [1, 3, 6, 10]
    assert list(volley.map(acc.add, [1, 1], [10, 100])) == [20, 120]  # add(x, times)
    assert list(volley.starmap(acc.add, [(1, 5)])) == [125]
    assert sorted(volley.map(acc.add, [0, 0], ordered=False)) == [125, 125]
    # An item that raises surfaces as the task's error, after the results before it.
    got = []
    with pytest.raises(ValueError, match="a bad item") as info:
        for v in volley.map(acc.add, [1, "bad", 1]):
            got.append(v)
    assert got == [126] and isinstance(info.value, volley.TaskError)
    # Arguments that do not fit fail at once, at the call, not in the actor.
    with pytest.raises(TypeError, match=r"Accumulator.add\(\) takes from 1 to 2 positional"):
        volley.map(acc.add, [1], [2], [3])
    # A method returning two values per call cannot be mapped: said at once.
    with pytest.raises(TypeError, match="'Accumulator.pair' has num_returns=2"):
        volley.map(acc.pair, [1, 2])


def die_once(x, marker):
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_a_worker_killed_mid_map_is_retried(tmp_path):
    marker = str(tmp_path / "died")
    assert list(volley.map(die_once, range(8), [marker] * 8, chunksize=1)) == list(range(8))
    assert os.path.exists(marker)


def test_progress_bars(capsys):
    assert list(volley.map(square, range(30), progress="squares")) == [x * x for x in range(30)]
    err = capsys.readouterr().err
    assert "squares" in err and "30/30" in err
    refs = [volley.remote(square).remote(i) for i in range(20)]
    assert volley.progress(refs, desc="refs") == refs
    assert "20/20" in capsys.readouterr().err
    assert volley.get(refs) == [x * x for x in range(20)]


def test_the_plain_bar_without_tqdm(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    assert sum(volley.map(square, range(40), progress=True)) == sum(x * x for x in range(40))
    err = capsys.readouterr().err
    assert "40/40" in err and "100%" in err
