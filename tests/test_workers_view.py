"""volley.workers(): a view of one engine per CPU (or per node), with calls on each, a
namespace per worker, scatter/gather, and errors that name the worker they came from.

Run against the 3-node test cluster too (VOLLEY_TEST_CLUSTER=1): the engines then sit on the
two 1-CPU nodes, one each."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import is_running, poll

import volley
from volley.exceptions import ActorDiedError, GetTimeoutError, TaskError

np = pytest.importorskip("numpy")


def cpu_nodes() -> dict[int, int]:
    return {n["node_id"]: int(n["num_cpus"]) for n in volley.nodes() if n["num_cpus"] > 0}


def wait_for_file(path: str, timeout: float = 30.0) -> str:
    """In an engine: says it is in the call (``<path>.in-<pid>``), then blocks until ``path``
    exists (the test's go-ahead), at most ``timeout``."""
    Path(f"{path}.in-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never created {path}")
        time.sleep(0.01)
    return "went on"


def test_a_view_has_one_worker_per_cpu_each_its_own_process_on_its_node(volley_shared):
    view = volley.workers()
    want = cpu_nodes()
    assert len(view) == sum(want.values())
    pids = view.run(os.getpid)
    assert len(set(pids)) == len(view), "a worker was hit twice, or two share a process"
    assert pids == [w.pid for w in pids.workers]
    assert [w.index for w in view] == list(range(len(view)))
    # Each ran on the node its WorkerInfo says, and every node with CPUs has its share.
    where = view.run(lambda: volley.get_runtime_context().get_node_id())
    assert where == [w.node_id for w in view.workers]
    assert {n: where.count(n) for n in set(where)} == want
    assert all(is_running(p) for p in pids)


def test_per_node_is_each_nodes_first_worker_and_shares_its_namespace(volley_shared):
    every = volley.workers()
    one_each = volley.workers(per_node=True)
    assert [w.node_id for w in one_each] == sorted(cpu_nodes())
    firsts = {}
    for w in every:
        firsts.setdefault(w.node_id, w.pid)
    assert [w.pid for w in one_each] == [firsts[n] for n in sorted(firsts)]
    one_each.push({"per_node_mark": "set through the per-node view"})
    marks = every.evaluate("globals().get('per_node_mark')")
    assert [m is not None for m in marks] == [w.pid in firsts.values() for w in every]


def test_apply_passes_arguments_and_keeps_the_views_order(volley_shared):
    view = volley.workers()
    r = view.apply(lambda a, b=0: (a, b, os.getpid()), 3, b=4)
    assert [x[:2] for x in r] == [(3, 4)] * len(view)
    assert [x[2] for x in r] == [w.pid for w in view]
    assert r.by_worker() == dict(zip(view.workers, r))

    @volley.remote
    def remote_double(x):
        return 2 * x

    assert view.apply(remote_double, 21) == [42] * len(view), "runs the function it wraps"


def test_large_arguments_reach_every_worker_whole(volley_shared):
    view = volley.workers()
    arr = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: stored once for all the workers
    assert view.apply(lambda a, scale=1: float(a.sum()) * scale, arr, scale=2) == [
        float(arr.sum()) * 2
    ] * len(view)
    view.push({"big": arr, "blob": bytes(200_000)})
    assert view.evaluate("(big.nbytes, len(blob))") == [(arr.nbytes, 200_000)] * len(view)


def test_push_pull_execute_and_evaluate_share_each_workers_namespace(volley_shared):
    view = volley.workers()
    view.push({"base": 10, "items": [1, 2]})
    view.execute("import os\nmine = base + len(items)\npid_seen = os.getpid()")
    assert view.pull("mine") == [12] * len(view)
    assert view.pull(["base", "pid_seen"]) == [[10, w.pid] for w in view]
    assert view.evaluate("mine * 2") == [24] * len(view)
    # Each worker has its own copy: changing it in one leaves the others alone.
    view[0].execute("items.append(3)")
    assert [len(x) for x in view.pull("items")] == [3] + [2] * (len(view) - 1)
    # A later view of the same session finds the namespace there.
    assert volley.workers().pull("base") == [10] * len(view)


def test_scatter_splits_evenly_and_gather_joins_in_order(volley_shared):
    view = volley.workers()
    k = len(view)
    view.scatter("chunk", list(range(2 * k + 1)))
    sizes = [len(c) for c in view.pull("chunk")]
    assert sizes == [3] + [2] * (k - 1)
    view.execute("chunk = [x * 10 for x in chunk]")
    assert view.gather("chunk") == [x * 10 for x in range(2 * k + 1)]
    view.scatter("arr", np.arange(12.0))
    view.execute("arr = arr + 1")
    out = view.gather("arr")
    assert isinstance(out, np.ndarray) and out.tolist() == (np.arange(12.0) + 1).tolist()
    view.scatter("text", "abcdefg")
    assert view.gather("text") == "abcdefg"
    view.scatter("few", [1])  # fewer items than workers: the others get an empty part
    assert view.gather("few") == [1]


def test_indexing_and_slicing_make_views_of_those_workers(volley_shared):
    view = volley.workers()
    last = view[-1]
    assert len(last) == 1 and last.workers == [view.workers[-1]]
    assert last.run(os.getpid) == [view.workers[-1].pid]
    assert view[1:].workers == view.workers[1:]
    assert view[5:5].run(os.getpid) == []
    with pytest.raises(IndexError, match="out of range for a view of"):
        view[len(view)]
    with pytest.raises(TypeError, match="indexed by an int or a slice"):
        view["0"]


def test_bad_arguments_fail_at_the_call_with_what_was_wrong(volley_shared):
    view = volley.workers()
    with pytest.raises(TypeError, match="a callable is needed, not int"):
        view.apply(42)
    with pytest.raises(TypeError, match="dict of name: value"):
        view.push([("a", 1)])
    with pytest.raises(ValueError, match="not a name"):
        view.push({"not a name": 1})
    with pytest.raises(TypeError, match="pull\\(\\) takes names"):
        view.pull([1])
    with pytest.raises(SyntaxError):
        view.execute("def broken(:")
    with pytest.raises(TypeError, match="has a length and slices"):
        view.scatter("x", iter([1, 2]))
    with pytest.raises(ValueError, match="needs a name"):
        view.scatter("1x", [1])
    with pytest.raises(ValueError, match="timeout must be"):
        volley.workers(timeout=0)
    view.push({"not_a_seq": 5})
    with pytest.raises(TypeError, match="not a sequence"):
        view.gather("not_a_seq")


def test_an_error_on_some_workers_names_them_and_keeps_the_others_results(volley_shared):
    view = volley.workers()
    first = view.workers[0].pid

    def fails_on_the_first():
        if os.getpid() == first:
            raise ValueError("only here")
        return "fine"

    with pytest.raises(volley.WorkersError) as info:
        view.run(fails_on_the_first)
    e = info.value
    assert list(e.errors) == [view.workers[0]]
    assert isinstance(e.errors[view.workers[0]], TaskError)
    assert f"worker 0 (node {view.workers[0].node_id}, pid {first})" in str(e)
    assert f"pid {first}): ValueError: only here" in str(e)
    assert e.results == [None] + ["fine"] * (len(view) - 1)
    with pytest.raises(volley.WorkersError, match="NameError"):
        view.pull("never_pushed_anywhere")


def test_a_worker_killed_mid_call_is_named_and_replaced_by_the_next_view(volley_shared, tmp_path):
    view = volley.workers()
    victim = view.workers[0]
    go = str(tmp_path / "go")
    view.push({"survivor_mark": 1})

    # The call runs on every worker; the victim is killed while in it, then the rest may go on.
    import threading

    def kill_then_release():
        inside = Path(f"{go}.in-{victim.pid}")
        assert poll(inside.exists, timeout=30), "the victim never started the call"
        os.kill(victim.pid, signal.SIGKILL)
        assert poll(lambda: not is_running(victim.pid), timeout=10), "the victim did not die"
        Path(go).touch()

    t = threading.Thread(target=kill_then_release)
    t.start()
    try:
        with pytest.raises(volley.WorkersError) as info:
            view.apply(wait_for_file, go)
    finally:
        t.join(timeout=30)
        Path(go).touch()
    e = info.value
    assert list(e.errors) == [victim]
    assert isinstance(e.errors[victim], ActorDiedError)
    assert f"pid {victim.pid}" in str(e) and "died" in str(e)
    assert e.results[1:] == ["went on"] * (len(view) - 1)
    # The same view keeps failing on it, saying so; a new view has a fresh worker there.
    with pytest.raises(volley.WorkersError, match=f"pid {victim.pid}"):
        view.run(os.getpid)
    fresh = volley.workers()
    assert len(fresh) == len(view)
    assert fresh.workers[0].pid != victim.pid and fresh.workers[0].node_id == victim.node_id
    assert fresh.workers[1:] == view.workers[1:]
    marks = fresh.evaluate("globals().get('survivor_mark')")
    assert marks == [None] + [1] * (len(view) - 1), "the new worker starts with a new namespace"


def test_a_call_past_the_views_timeout_names_the_workers_that_did_not_answer(
    volley_shared, tmp_path
):
    go = str(tmp_path / "go")
    view = volley.workers(timeout=0.5)
    try:
        with pytest.raises(volley.WorkersError, match="did not answer") as info:
            view.apply(wait_for_file, go)
        assert set(info.value.errors) == set(view.workers)
        assert all(isinstance(x, GetTimeoutError) for x in info.value.errors.values())
    finally:
        Path(go).touch()
    # The workers finish the late call, then answer again.
    assert volley.workers(timeout=30).run(lambda: "back") == ["back"] * len(view)


def test_shutdown_stops_the_views_workers_and_the_next_view_starts_new_ones(volley_shared):
    view = volley.workers()
    old = view.workers[-1]
    view[-1:].shutdown()
    assert poll(lambda: not is_running(old.pid), timeout=10), "the worker did not stop"
    with pytest.raises(volley.WorkersError, match="died"):
        view[-1].run(os.getpid)
    again = volley.workers()
    assert len(again) == len(view) and again.workers[-1].pid != old.pid
    assert again.workers[:-1] == view.workers[:-1]


def test_a_view_after_volley_restarts_has_fresh_workers(volley_shared):
    from conftest import _init_2cpu

    old = volley.workers()
    old_pids = [w.pid for w in old]
    volley.shutdown()
    _init_2cpu()
    new = volley.workers()
    assert len(new) == len(old)
    assert not set(w.pid for w in new) & set(old_pids), "a worker of the old session came back"
    assert new.run(lambda: "alive") == ["alive"] * len(new)
    assert poll(lambda: not any(is_running(p) for p in old_pids), timeout=10)


def test_workers_that_do_not_start_in_time_are_named(volley_shared, monkeypatch):
    from volley import _views

    view = volley.workers()
    view.shutdown()  # the next view starts every worker afresh
    monkeypatch.setattr(_views, "START_TIMEOUT_S", 1e-6)
    with pytest.raises(GetTimeoutError, match=r"worker\(s\) \(node, slot\) .* did not start"):
        volley.workers()
    monkeypatch.setattr(_views, "START_TIMEOUT_S", 60.0)
    assert len(volley.workers()) == len(view), "a later call starts them"


def test_a_cluster_without_cpus_has_no_view_and_says_why(no_volley, tmp_path):
    from test_cluster import Cluster

    c = Cluster(tmp_path)
    c.start(True, "127.0.0.1", cpus=0)  # a bare head, no node with a CPU
    try:
        volley.init(address=c.head, token=c.token)
        with pytest.raises(RuntimeError, match="no node of the cluster has a CPU"):
            volley.workers()
    finally:
        volley.shutdown()
        c.stop()
