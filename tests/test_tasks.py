"""Basic tasks: remote functions, options, num_returns, args/kwargs, refs as arguments,
nested tasks, put/get/wait, object refs, scheduling fairness and tree reductions."""

from __future__ import annotations

import os
import pickle
import time

import pytest
from conftest import proc_cmdline, worker_node_pid, worker_pids

import volley

pytestmark = pytest.mark.usefixtures("volley_shared")


# --------------------------------------------------------------------------- module-level tasks


@volley.remote
def add(x, y=0):
    return x + y


@volley.remote(num_cpus=1, max_retries=3)
def mul(x, y):
    return x * y


@volley.remote
def echo(x):
    return x


@volley.remote
def getpid():
    return os.getpid()


@volley.remote
def describe(*args, **kwargs):
    return {
        "args": [type(a).__name__ for a in args],
        "kwargs": {k: type(v).__name__ for k, v in kwargs.items()},
        "values": (args, kwargs),
    }


@volley.remote
def type_of_items(items):
    return [type(i).__name__ for i in items]


@volley.remote
def get_items(items):
    # Refs nested inside a container arrive as refs; the task resolves them itself.
    return [volley.get(i) if isinstance(i, volley.ObjectRef) else i for i in items]


@volley.remote(num_returns=2)
def divmod_task(a, b):
    return a // b, a % b


@volley.remote
def three_things():
    return "a", "b", "c"


@volley.remote
def sum_of_subtasks(n):
    refs = [add.remote(i, i) for i in range(n)]
    return sum(volley.get(refs))


@volley.remote
def depth(n):
    """Recursive task: each level submits the next one and blocks in get()."""
    if n == 0:
        return 0
    return 1 + volley.get(depth.remote(n - 1))


@volley.remote
def fan_out_depth(n):
    """Each level blocks on two children: exercises CPU lending under a wide nested graph."""
    if n == 0:
        return 1
    a, b = fan_out_depth.remote(n - 1), fan_out_depth.remote(n - 1)
    return volley.get(a) + volley.get(b)


@volley.remote
def wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "released"


@volley.remote
def tiny(i):
    return i * 2


@volley.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@volley.remote
def concurrency_probe(directory, token, hold):
    """Marks itself running in ``directory`` and records how many were running at once."""
    mine = os.path.join(directory, f"running-{token}")
    with open(mine, "w"):
        pass
    try:
        time.sleep(hold)
        return len([n for n in os.listdir(directory) if n.startswith("running-")])
    finally:
        os.unlink(mine)


@volley.remote(num_cpus=2)
def concurrency_probe_2cpu(directory, token, hold):
    mine = os.path.join(directory, f"running-{token}")
    with open(mine, "w"):
        pass
    try:
        time.sleep(hold)
        return len([n for n in os.listdir(directory) if n.startswith("running-")])
    finally:
        os.unlink(mine)


@volley.remote
def barrier(directory, token, parties, timeout=30.0):
    """Returns once ``parties`` tasks have reached the barrier (proves they run concurrently)."""
    with open(os.path.join(directory, f"arrived-{token}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len([n for n in os.listdir(directory) if n.startswith("arrived-")]) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("barrier not reached")
        time.sleep(0.01)
    return os.getpid()


def tree_sum(leaves):
    """Pairwise reduction where every add takes refs to previous adds as arguments."""
    level = leaves
    while len(level) > 1:
        nxt = [add.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return volley.get(level[0])


# --------------------------------------------------------------------------- basics


def test_remote_returns_object_ref_and_get_returns_value():
    ref = add.remote(1, y=2)
    assert isinstance(ref, volley.ObjectRef)
    assert volley.get(ref) == 3


def test_decorator_with_options_and_defaults():
    assert volley.get(mul.remote(6, 7)) == 42
    assert volley.get(add.remote(5)) == 5


def test_positional_and_keyword_arguments_arrive_intact():
    out = volley.get(describe.remote(1, "two", 3.0, a=[4], b={"five": 5}))
    assert out["args"] == ["int", "str", "float"]
    assert out["kwargs"] == {"a": "list", "b": "dict"}
    assert out["values"] == ((1, "two", 3.0), {"a": [4], "b": {"five": 5}})


def test_get_list_returns_list_in_order():
    refs = [add.remote(i, 1) for i in range(50)]
    out = volley.get(refs)
    assert isinstance(out, list)
    assert out == [i + 1 for i in range(50)]


def test_get_empty_list():
    assert volley.get([]) == []


def test_many_tasks():
    refs = [mul.remote(i, i) for i in range(500)]
    assert sum(volley.get(refs)) == sum(i * i for i in range(500))


def test_closure_defined_in_test_function():
    offset = 1000
    table = {"k": 7}

    @volley.remote
    def closure(x):
        return x + offset + table["k"]

    assert volley.get([closure.remote(i) for i in range(5)]) == [1007, 1008, 1009, 1010, 1011]


def test_lambda_as_remote_function():
    square = volley.remote(lambda x: x * x)
    assert volley.get(square.remote(12)) == 144


def test_module_level_function_of_test_module():
    # ``add`` and ``depth`` are module-level functions of this (test) module; ``depth``
    # refers to itself through the module's globals.
    assert volley.get(add.remote(40, 2)) == 42
    assert volley.get(depth.remote(3)) == 3


def test_local_class_instances_round_trip_through_tasks():
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    @volley.remote
    def shift(p):
        return Point(p.x + 1, p.y + 1)

    p = volley.get(shift.remote(Point(1, 2)))
    assert (type(p).__name__, p.x, p.y) == ("Point", 2, 3)


# --------------------------------------------------------------------------- options / num_returns


def test_num_returns_two_from_decorator():
    refs = divmod_task.remote(17, 5)
    assert len(refs) == 2
    assert all(isinstance(r, volley.ObjectRef) for r in refs)
    q, r = refs
    assert volley.get(q) == 3
    assert volley.get(r) == 2
    assert volley.get(list(refs)) == [3, 2]


def test_num_returns_via_options_overrides_decorator():
    refs = three_things.options(num_returns=3).remote()
    assert len(refs) == 3
    assert volley.get(list(refs)) == ["a", "b", "c"]
    # The decorated default (1) is untouched by the per-call override.
    single = three_things.remote()
    assert isinstance(single, volley.ObjectRef)
    assert volley.get(single) == ("a", "b", "c")


def test_options_does_not_change_the_original_function():
    two = add.options(num_returns=1, name="renamed_add")
    assert volley.get(two.remote(1, 1)) == 2
    assert volley.get(add.remote(2, 2)) == 4


def test_num_returns_refs_can_feed_other_tasks():
    q, r = divmod_task.remote(100, 7)
    assert volley.get(add.remote(q, r)) == 14 + 2


@pytest.mark.one_node("a 2-CPU task needs a node with 2 CPUs; the test cluster has two 1-CPU nodes")
def test_task_with_num_cpus_equal_to_cluster_never_overlaps(tmp_path):
    refs = [concurrency_probe_2cpu.remote(str(tmp_path), i, 0.05) for i in range(6)]
    assert volley.get(refs) == [1] * 6


def test_concurrency_never_exceeds_num_cpus(tmp_path):
    refs = [concurrency_probe.remote(str(tmp_path), i, 0.05) for i in range(20)]
    seen = volley.get(refs)
    assert max(seen) <= 2
    assert min(seen) >= 1


def test_two_cpus_run_two_tasks_at_once(tmp_path):
    pids = volley.get([barrier.remote(str(tmp_path), i, 2) for i in range(2)], timeout=60)
    assert len(set(pids)) == 2


# --------------------------------------------------------------------------- refs as arguments


def test_ref_argument_is_resolved_to_value():
    assert volley.get(add.remote(add.remote(1, 2), 10)) == 13


def test_ref_keyword_argument_is_resolved_to_value():
    assert volley.get(add.remote(1, y=add.remote(2, 3))) == 6
    out = volley.get(describe.remote(x=volley.put([1, 2])))
    assert out["kwargs"] == {"x": "list"}


def test_put_ref_argument_is_resolved():
    big = volley.put(list(range(1000)))
    assert volley.get(echo.remote(big)) == list(range(1000))


def test_ref_nested_in_list_stays_a_ref():
    inner = add.remote(1, 1)
    put_ref = volley.put("x")
    assert volley.get(type_of_items.remote([inner, put_ref, 3])) == ["ObjectRef"] * 2 + ["int"]
    assert volley.get(get_items.remote([inner, put_ref, 3])) == [2, "x", 3]


def test_tuples_and_small_bytes_arguments_round_trip():
    # Short tuples of scalars and small bytes take the C pickler's path; a tuple holding a ref
    # does not (the ref still travels as a ref, kept alive for the task).
    @volley.remote
    def describe(key, blob, pair=(None,), big=b""):
        ref = isinstance(pair[0], volley.ObjectRef)
        return key, blob, ref, volley.get(pair[0]) if ref else pair[0], len(big)

    key, blob = ("k", 1, (2.5, None)), b"\x00\x01" * 50
    assert volley.get(describe.remote(key, blob)) == (key, blob, False, None, 0)
    inner = add.remote(2, 3)
    got = volley.get(describe.remote(key, blob, (inner, "x"), b"y" * 10_000))
    assert got == (key, blob, True, 5, 10_000)


def test_ref_nested_in_dict_stays_a_ref():
    ref = volley.put(41)

    @volley.remote
    def inspect(d):
        return isinstance(d["r"], volley.ObjectRef), volley.get(d["r"]) + 1

    assert volley.get(inspect.remote({"r": ref})) == (True, 42)


def test_task_waits_for_slow_argument():
    slow = sleep_then.remote(0.5, 5)
    assert volley.get(add.remote(slow, 1)) == 6


def test_same_ref_used_many_times():
    ref = add.remote(3, 4)
    assert volley.get([add.remote(ref, ref) for _ in range(20)]) == [14] * 20


# --------------------------------------------------------------------------- nested tasks


def test_task_submits_tasks_and_gets_results():
    assert volley.get(sum_of_subtasks.remote(10)) == sum(2 * i for i in range(10))


def test_many_concurrent_nested_submitters():
    refs = [sum_of_subtasks.remote(5) for _ in range(8)]
    assert volley.get(refs) == [20] * 8


def test_concurrent_nested_submitters_of_a_new_function():
    # Neither function has been submitted before: the first submissions of ``leaf`` come from
    # several workers at once, none from the driver.
    @volley.remote
    def leaf(x):
        return x + 1

    @volley.remote
    def submitter(n):
        return sum(volley.get([leaf.remote(i) for i in range(n)]))

    assert volley.get([submitter.remote(5) for _ in range(8)], timeout=60) == [15] * 8


def test_recursion_depth_50_on_two_cpus_does_not_deadlock():
    assert volley.get(depth.remote(50), timeout=120) == 50


def test_wide_nested_graph_does_not_deadlock():
    # 2**5 leaves, 63 tasks, most of them blocked in get() at some point.
    assert volley.get(fan_out_depth.remote(5), timeout=120) == 32


@pytest.mark.slow
def test_recursion_depth_200():
    assert volley.get(depth.remote(200), timeout=300) == 200


# --------------------------------------------------------------------------- tree reduction


def test_tree_reduction_256_leaves():
    leaves = [tiny.remote(i) for i in range(256)]
    assert tree_sum(leaves) == 2 * sum(range(256))


def test_tree_reduction_over_put_refs():
    leaves = [volley.put(i) for i in range(100)]
    assert tree_sum(leaves) == sum(range(100))


@pytest.mark.slow
def test_tree_reduction_4096_leaves():
    leaves = [tiny.remote(i) for i in range(4096)]
    assert tree_sum(leaves) == 2 * sum(range(4096))


# --------------------------------------------------------------------------- put / get


ROUND_TRIP_VALUES = [
    0,
    -17,
    2**100,
    3.25,
    True,
    None,
    "",
    "héllo wörld ✓",
    b"",
    b"\x00\x01binary\xff",
    [1, "a", None, [2.5]],
    (1, (2, 3)),
    {"a": [1, 2], "b": {"c": None}, 3: "int key"},
    {1, 2, 3},
    frozenset({"x"}),
    bytearray(b"abc"),
    complex(1, -2),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=lambda v: type(v).__name__)
def test_put_get_round_trip(value):
    ref = volley.put(value)
    assert isinstance(ref, volley.ObjectRef)
    out = volley.get(ref)
    assert out == value
    assert type(out) is type(value)


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=lambda v: type(v).__name__)
def test_value_round_trip_through_task(value):
    out = volley.get(echo.remote(value))
    assert out == value
    assert type(out) is type(value)


def test_large_bytes_round_trip():
    payload = os.urandom(1024 * 1024)
    assert volley.get(volley.put(payload)) == payload
    assert volley.get(echo.remote(payload)) == payload
    assert volley.get(echo.remote(volley.put(payload))) == payload


def test_large_bytes_returned_from_task():
    @volley.remote
    def make(n):
        return bytes(range(256)) * (n // 256)

    out = volley.get(make.remote(4 * 1024 * 1024))
    assert len(out) == 4 * 1024 * 1024
    assert out[:512] == bytes(range(256)) * 2


@pytest.mark.slow
def test_100_mb_bytes_round_trip():
    payload = os.urandom(1024 * 1024) * 100
    ref = volley.put(payload)
    assert volley.get(echo.remote(ref), timeout=120) == payload


@pytest.mark.slow
def test_ten_thousand_tiny_tasks():
    refs = [tiny.remote(i) for i in range(10_000)]
    assert volley.get(refs, timeout=240) == [2 * i for i in range(10_000)]


def test_numpy_array_round_trip():
    np = pytest.importorskip("numpy")
    arr = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    out = volley.get(volley.put(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)

    @volley.remote
    def total(a):
        return float(a.sum()), a.shape

    assert volley.get(total.remote(arr)) == (float(arr.sum()), (400, 500))


def test_put_same_value_twice_gives_distinct_refs():
    a, b = volley.put(1), volley.put(1)
    assert a != b
    assert volley.get([a, b]) == [1, 1]


def test_get_same_ref_twice():
    ref = add.remote(1, 2)
    assert volley.get(ref) == 3
    assert volley.get(ref) == 3
    assert volley.get([ref, ref]) == [3, 3]


def test_put_snapshots_the_value():
    value = [1, 2, 3]
    ref = volley.put(value)
    value.append(4)
    assert volley.get(ref) == [1, 2, 3]


def test_mutating_a_got_value_does_not_change_the_stored_object():
    ref = volley.put([1, 2, 3])
    first = volley.get(ref)
    first.append(4)
    assert volley.get(ref) == [1, 2, 3]


# --------------------------------------------------------------------------- ObjectRef


def test_object_ref_hash_and_equality():
    ref = add.remote(1, 1)
    same = ref
    other = add.remote(1, 1)
    assert ref == same
    assert ref != other
    assert hash(ref) == hash(same)
    d = {ref: "first", other: "second"}
    assert d[same] == "first"
    assert len({ref, same, other}) == 2


def test_object_ref_pickle_round_trip():
    ref = add.remote(20, 22)
    clone = pickle.loads(pickle.dumps(ref))
    assert isinstance(clone, volley.ObjectRef)
    assert clone == ref
    assert hash(clone) == hash(ref)
    assert volley.get(clone) == 42


def test_object_ref_returned_from_task_is_a_ref():
    @volley.remote
    def make_ref():
        return volley.put("inner value")

    outer = volley.get(make_ref.remote())
    assert isinstance(outer, volley.ObjectRef)
    assert volley.get(outer) == "inner value"


def test_ref_created_in_task_passed_back_into_task():
    @volley.remote
    def produce():
        return [add.remote(1, 2)]

    (inner,) = volley.get(produce.remote())
    assert volley.get(add.remote(inner, 10)) == 13


# --------------------------------------------------------------------------- wait


def test_wait_returns_ready_subset_in_input_order(tmp_path):
    release = str(tmp_path / "release")
    slow = wait_for_file.remote(release)
    a, b = volley.put("a"), volley.put("b")
    refs = [slow, a, b]
    try:
        ready, not_ready = volley.wait(refs, num_returns=2, timeout=30)
        assert ready == [a, b]
        assert not_ready == [slow]
    finally:
        open(release, "w").close()
    assert volley.get(slow) == "released"


def test_wait_timeout_returns_what_is_ready(tmp_path):
    release = str(tmp_path / "release")
    slow = wait_for_file.remote(release)
    done = volley.put(1)
    try:
        ready, not_ready = volley.wait([slow, done], num_returns=2, timeout=0.3)
        assert ready == [done]
        assert not_ready == [slow]
        ready, not_ready = volley.wait([slow], num_returns=1, timeout=0.1)
        assert ready == []
        assert not_ready == [slow]
    finally:
        open(release, "w").close()
    ready, not_ready = volley.wait([slow, done], num_returns=2, timeout=30)
    assert ready == [slow, done]
    assert not_ready == []


def test_wait_default_num_returns_is_one():
    refs = [add.remote(i, 0) for i in range(5)]
    ready, not_ready = volley.wait(refs)
    assert len(ready) == 1
    assert len(ready) + len(not_ready) == 5
    assert set(ready) | set(not_ready) == set(refs)
    # Relative input order is preserved inside not_ready.
    assert not_ready == [r for r in refs if r not in ready]
    assert volley.get(ready[0]) in range(5)


def test_wait_all_without_timeout():
    refs = [sleep_then.remote(0.01 * (i % 3), i) for i in range(10)]
    ready, not_ready = volley.wait(refs, num_returns=10)
    assert ready == refs
    assert not_ready == []
    assert volley.get(ready) == list(range(10))


def test_wait_on_failed_task_counts_as_ready():
    @volley.remote
    def boom():
        raise ValueError("boom")

    ref = boom.remote()
    ready, not_ready = volley.wait([ref], num_returns=1, timeout=30)
    assert ready == [ref]
    assert not_ready == []
    with pytest.raises(ValueError):
        volley.get(ref)


# --------------------------------------------------------------------------- scheduling


def test_long_task_does_not_hold_tiny_tasks_hostage(tmp_path):
    """A blocked task on one of two CPUs must not keep queued/pipelined tiny tasks waiting."""
    release = str(tmp_path / "release")
    long_ref = wait_for_file.remote(release)
    tiny_refs = [tiny.remote(i) for i in range(200)]
    try:
        ready, not_ready = volley.wait(tiny_refs, num_returns=200, timeout=30)
        assert not_ready == [], f"{len(not_ready)} tiny tasks stuck behind the long task"
        assert volley.get(ready) == [2 * i for i in range(200)]
        # The long task is still running: every tiny task finished before it.
        assert volley.wait([long_ref], num_returns=1, timeout=0) == ([], [long_ref])
    finally:
        open(release, "w").close()
    assert volley.get(long_ref, timeout=60) == "released"


def test_long_sleep_does_not_hold_tiny_tasks_hostage():
    long_ref = sleep_then.remote(5, "long")
    tiny_refs = [tiny.remote(i) for i in range(200)]
    # Generous: 200 trivial tasks on the free CPU take a small fraction of this.
    ready, not_ready = volley.wait(tiny_refs, num_returns=200, timeout=4)
    assert not_ready == [], f"{len(not_ready)} tiny tasks stuck behind a sleeping task"
    assert volley.get(ready) == [2 * i for i in range(200)]
    assert volley.get(long_ref, timeout=30) == "long"


# --------------------------------------------------------------------------- worker pool


@pytest.mark.one_node("in a cluster, workers are the node daemons' children")
def test_workers_are_reused_children_of_the_driver():
    # Enough tasks to see reuse even if extra workers (started for tasks blocked in get by an
    # earlier test) have not been retired yet.
    pids = volley.get([getpid.remote() for _ in range(300)])
    assert len(set(pids)) < len(pids), "workers were not reused"
    for pid in set(pids):
        assert pid != os.getpid()
        assert worker_node_pid(pid) == os.getpid()
        cmd = proc_cmdline(pid)
        assert b"-m" in cmd and b"volley._worker" in cmd, cmd
    assert set(pids) <= worker_pids()


def test_runtime_env_on_one_machine(no_volley, tmp_path):
    (tmp_path / "local_helper_mod.py").write_text("VALUE = 41\n")
    (tmp_path / "note.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown key"):
        volley.init(num_cpus=2, runtime_env={"pip": ["numpy"]})
    with pytest.raises(ValueError, match="not a directory"):
        volley.init(num_cpus=2, runtime_env={"working_dir": str(tmp_path / "missing")})
    volley.init(
        num_cpus=2, runtime_env={"working_dir": str(tmp_path), "env_vars": {"RT_FLAG": "1"}}
    )

    @volley.remote
    def probe():
        import local_helper_mod

        return local_helper_mod.VALUE + 1, open("note.txt").read(), os.environ.get("RT_FLAG")

    assert volley.get([probe.remote() for _ in range(4)]) == [(42, "hi", "1")] * 4
