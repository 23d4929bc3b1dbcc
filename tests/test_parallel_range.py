"""volley.parallel_range and volley.parallel: every schedule covers each index exactly once, in
real worker processes; errors come back with their index (or member); a parallel block's
barrier, share of a range and all-reduce."""

from __future__ import annotations

import os
import threading

import pytest

import volley
from volley._parallel import _chunks

pytestmark = pytest.mark.timeout(120)

one_node = pytest.mark.one_node("the members write the driver's shared array")


def _check_cover(chunks: list[tuple[int, int]], n: int) -> None:
    covered = [i for a, b in chunks for i in range(a, b)]
    assert covered == list(range(n)), chunks


@pytest.mark.parametrize("n", [0, 1, 13, 1000])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize(("schedule", "chunk"), [
    ("static", None), ("static", 1), ("static", 7), ("dynamic", None), ("dynamic", 1),
    ("dynamic", 7), ("guided", None), ("guided", 5),
])  # fmt: skip
def test_every_schedule_splits_the_range_into_chunks_that_cover_it_once(
    n, workers, schedule, chunk
):
    chunks = _chunks(n, schedule, chunk, workers)
    _check_cover([c for c in chunks if c[0] < c[1]], n)
    if schedule == "guided" and n:
        sizes = [b - a for a, b in chunks]
        assert sizes == sorted(sizes, reverse=True) or sizes[-1] < (chunk or 1)
        assert sizes[0] == min(n, max(chunk or 1, -(-n // workers)))


@volley.remote
def _noop() -> None:
    return None


@one_node
@pytest.mark.parametrize(("schedule", "chunk"), [
    ("static", None), ("static", 3), ("dynamic", None), ("dynamic", 1), ("guided", None),
    ("guided", 4),
])  # fmt: skip
def test_each_index_runs_exactly_once_in_worker_processes(volley_shared, schedule, chunk):
    n = 200
    hits = volley.shared_array(n, dtype="int64")
    pids = volley.shared_array(n, dtype="int64")

    def visit(i: int) -> int:
        with hits.lock:  # a second visit of an index would show as 2
            hits[i] += 1
        pids[i] = os.getpid()
        return i * 3

    out = volley.parallel_range(n, visit, schedule=schedule, chunk=chunk, num_workers=2)
    assert out == [3 * i for i in range(n)]
    assert hits.tolist() == [1] * n
    assert os.getpid() not in set(pids.tolist()), "fn ran in worker processes"
    hits.free()
    pids.free()


@pytest.mark.parametrize("schedule", ["static", "dynamic", "guided"])
def test_ranges_are_disjoint_and_cover_the_indices(volley_shared, schedule):
    got = volley.parallel_range(
        101, lambda r: (r.start, r.stop), schedule=schedule, chunk=9, ranges=True, num_workers=3
    )
    _check_cover(got, 101)


def test_results_false_returns_none_and_n_zero_runs_nothing(volley_shared):
    assert volley.parallel_range(10, lambda i: i, results=False) is None
    assert volley.parallel_range(0, lambda i: 1 / 0) == []


def test_a_remote_function_runs_with_its_options(volley_shared):
    @volley.remote(num_cpus=0.5)
    def double(i):
        return 2 * i

    assert volley.parallel_range(5, double, schedule="dynamic", chunk=2) == [0, 2, 4, 6, 8]


class Boom(Exception):
    pass


def _fail_at(bad: set[int]):
    def fn(i: int) -> int:
        if i in bad:
            raise Boom(f"bad index {i}")
        return i

    return fn


@pytest.mark.parametrize("schedule", ["static", "dynamic", "guided"])
def test_an_exception_in_fn_is_raised_with_the_lowest_failing_index(volley_shared, schedule):
    with pytest.raises(Boom, match="bad index 30") as info:
        volley.parallel_range(100, _fail_at({30, 80}), schedule=schedule, chunk=5, num_workers=2)
    assert info.value.index == 30
    assert isinstance(info.value, volley.TaskError)
    assert "parallel_range: fn raised at index 30" in "".join(info.value.__notes__)


def test_an_exception_in_a_range_fn_names_the_range_start(volley_shared):
    def fn(r: range) -> None:
        if 40 in r:
            raise Boom("in range")

    with pytest.raises(Boom) as info:
        volley.parallel_range(100, fn, schedule="static", chunk=10, ranges=True)
    assert info.value.index == 40


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": -1}, ValueError, "n must be >= 0"),
        ({"n": 2.0}, TypeError, "n must be an int"),
        ({"schedule": "auto"}, ValueError, "schedule must be one of static, dynamic, guided"),
        ({"chunk": 0}, ValueError, "chunk must be >= 1"),
        ({"num_workers": 0}, ValueError, "num_workers must be >= 1"),
    ],
)
def test_bad_arguments_raise_at_the_call(kwargs, error, match):
    args = {"n": 10, "fn": abs, **kwargs}
    with pytest.raises(error, match=match):
        volley.parallel_range(**args)


# ------------------------------------------------------------------------------- parallel blocks


def test_every_member_runs_with_its_number_and_share(volley_shared):
    def block(p, n):
        return p.thread_num, p.num_threads, list(p.range(n))

    out = volley.parallel(3).run(block, 10)
    assert [(k, t) for k, t, _ in out] == [(0, 3), (1, 3), (2, 3)]
    assert [i for _, _, share in out for i in share] == list(range(10))
    assert [len(share) for _, _, share in out] == [4, 3, 3]


def test_the_barrier_orders_writes_before_reads_and_reduce_combines_in_member_order(volley_shared):
    @volley.parallel(3)
    def block(p):
        board = volley.SharedDict(f"test-parallel-{p.num_threads}")
        board[str(p.thread_num)] = p.thread_num * 10
        p.barrier(timeout=60)
        seen = sorted(board.values())
        total = p.reduce(p.thread_num + 1)
        biggest = p.reduce(p.thread_num, "max")
        order = p.reduce([p.thread_num], lambda a, b: a + b)
        with p.lock:
            board.incr("in-lock")
        return seen, total, biggest, order

    out = block()
    assert out == [([0, 10, 20], 6, 2, [0, 1, 2])] * 3
    volley.SharedDict("test-parallel-3").clear()


def test_a_member_that_raises_is_reported_and_the_others_do_not_wait(volley_shared):
    def block(p):
        if p.thread_num == 1:
            raise Boom("member 1 failed")
        p.barrier(timeout=60)  # the failure aborts the barrier: no 60 s wait
        return "unreachable"

    with pytest.raises(Boom, match="member 1 failed") as info:
        volley.parallel(2).run(block)
    assert info.value.thread_num == 1
    assert "thread_num=1" in "".join(info.value.__notes__)


def test_a_bad_reduce_op_raises_in_the_member(volley_shared):
    with pytest.raises(ValueError, match="op must be one of"):
        volley.parallel(1).run(lambda p: p.reduce(1, "median"))


def test_bad_team_size_raises_at_the_call():
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        volley.parallel(0)
    with pytest.raises(TypeError, match="num_workers must be an int"):
        volley.parallel("2")


@one_node
def test_a_stencil_over_a_shared_array_matches_the_serial_result(volley_shared):
    import numpy as np

    n = 10_000
    src = volley.shared_array(n)
    src[:] = np.sin(np.arange(n))
    dst = volley.shared_array(n)

    def smooth(r: range) -> None:
        lo, hi = max(r.start, 1), min(r.stop, n - 1)
        dst[lo:hi] = (src[lo - 1 : hi - 1] + src[lo:hi] + src[lo + 1 : hi + 1]) / 3

    volley.parallel_range(n, smooth, ranges=True, results=False, schedule="dynamic", chunk=999)
    expected = np.zeros(n)
    expected[1:-1] = (src[:-2] + src[1:-1] + src[2:]) / 3
    np.testing.assert_allclose(dst, expected)
    src.free()
    dst.free()


def test_a_member_that_skips_a_barrier_breaks_it_instead_of_a_hang(volley_shared):
    def block(p):
        if p.thread_num == 0:
            return "done early"
        p.barrier()  # no timeout: only the abort can end this wait
        return "unreachable"

    with pytest.raises(threading.BrokenBarrierError) as info:
        volley.parallel(2).run(block)
    notes = "".join(info.value.__notes__)
    assert "thread_num=1" in notes and "member thread_num=0 returned" in notes


def test_a_member_killed_by_sigkill_is_reported_and_the_others_stop_waiting(volley_shared):
    def block(p):
        if p.thread_num == 1:
            os.kill(os.getpid(), 9)
        p.barrier()
        return "unreachable"

    with pytest.raises(volley.WorkerCrashedError):
        volley.parallel(2).run(block)


def test_after_an_error_a_dynamic_member_takes_no_further_chunk(volley_shared):
    from volley._parallel import _member

    chunks = _chunks(100, "dynamic", 10, 2)
    board = volley.SharedDict("test-parallel-stop")
    counter = (board, "next")
    done, err = _member(_fail_at({25}), 0, chunks, counter, 2, False, True, "fn")
    assert err is not None and err[0] == 25
    assert [k for k, _ in done] == [0, 1, 2]  # chunk 2 (20..29) failed at 25
    later, err2 = _member(_fail_at(set()), 1, chunks, counter, 2, False, True, "fn")
    assert later == [] and err2 is None, "the other member stops at once"
    board.clear()


@one_node
def test_xrange_shares_indices_dynamically_and_covers_each_once(volley_shared):
    hits = volley.shared_array(50, dtype="int64")

    def work(p):
        mine = []
        for i in p.xrange(50, chunk=3):
            with hits.lock:
                hits[i] += 1
            mine.append(i)
        again = list(p.xrange(10, 20))  # a second loop: its own counter
        return mine, again

    out = volley.parallel(2).run(work)
    assert hits.tolist() == [1] * 50
    assert sorted(i for mine, _ in out for i in mine) == list(range(50))
    assert sorted(i for _, again in out for i in again) == list(range(10, 20))
    hits.free()
