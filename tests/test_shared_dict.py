"""``volley.SharedDict``: a dictionary kept by the cluster's head, seen by name from the driver,
tasks and actors (on one machine, and on every node of a real 3-node cluster); its atomic
operations (``incr``, ``compare_and_set``, ``setdefault``, ``pop``) under real concurrency;
and each error a caller can provoke."""

from __future__ import annotations

import pickle
import signal
import threading
import time

import pytest
from conftest import finish_driver, read_line_with_prefix, start_driver, write_script

import volley
from volley import SharedDict, library


def _barrier(d: SharedDict, key: str, n: int, timeout: float = 60.0) -> None:
    """Waits (in a task) until ``n`` tasks have arrived, so that they really run at once."""
    d.incr(key)
    deadline = time.monotonic() + timeout
    while d[key] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {d[key]} of {n} tasks arrived at {key!r}")
        time.sleep(0.005)


@volley.remote(num_cpus=0.25)
def count(d: SharedDict, times: int, n: int) -> int:
    _barrier(d, "arrived", n)
    for _ in range(times):
        d.incr("hits")
    return d["hits"]


@volley.remote(num_cpus=0.25)
def claim(d: SharedDict, i: int, n: int) -> tuple[bool, object]:
    _barrier(d, "arrived", n)
    won = d.compare_and_set("leader", SharedDict.MISSING, {"worker": i})
    return won, d["leader"]


@volley.remote(num_cpus=0.25)
def add_by_cas(d: SharedDict, times: int, n: int) -> int:
    """Increments a count inside a dict value with a compare-and-set loop; its retries."""
    _barrier(d, "arrived", n)
    retries = 0
    for _ in range(times):
        while True:
            old = d["state"]
            if d.compare_and_set("state", old, {**old, "n": old["n"] + 1}):
                break
            retries += 1
    return retries


@volley.remote
class Reader:
    def __init__(self, d: SharedDict):
        self.d = d

    def read(self, key: str) -> object:
        return self.d[key]

    def write(self, key: str, value: object) -> None:
        self.d[key] = value


def test_set_in_the_driver_read_in_a_task_and_an_actor(volley_shared):
    d = SharedDict("basics")
    d.clear()
    d["cfg"] = {"lr": 0.1, "layers": [64, 32]}
    d["n"] = 7

    @volley.remote
    def read(d: SharedDict, key: str) -> object:
        return d[key]

    assert volley.get(read.remote(d, "cfg")) == {"lr": 0.1, "layers": [64, 32]}
    assert volley.get(read.remote(SharedDict("basics"), "n")) == 7  # by name, a new handle
    r = Reader.remote(d)
    assert volley.get(r.read.remote("cfg")) == {"lr": 0.1, "layers": [64, 32]}
    volley.get(r.write.remote("from-actor", b"\x00bytes"))
    assert d["from-actor"] == b"\x00bytes"
    volley.kill(r)


def test_the_dictionary_api(volley_shared):
    d = SharedDict("api")
    d.clear()
    assert len(d) == 0 and d.keys() == [] and "x" not in d
    d.update({"a": 1, "b": "two"}, c=None)
    d.update([("d", 4.5)])
    assert sorted(d) == ["a", "b", "c", "d"] and len(d) == 4
    assert d.items() == [("a", 1), ("b", "two"), ("c", None), ("d", 4.5)]
    assert d.values() == [1, "two", None, 4.5]
    assert d.get("c", "dflt") is None and d.get("zz", "dflt") == "dflt" and "c" in d
    assert d.setdefault("a", 100) == 1 and d.setdefault("e", [5]) == [5] and d["e"] == [5]
    assert d.pop("e") == [5] and d.pop("e", "gone") == "gone" and "e" not in d
    key, value = d.popitem()
    assert key not in d and value in (1, "two", None, 4.5)
    del d[sorted(d)[0]]
    assert len(d) == 2
    assert dict(d.items()) == {k: d[k] for k in d}

    # Two names are two dictionaries; the handle pickles as its name.
    other = SharedDict("api-other")
    other.clear()
    other["a"] = "other"
    assert d.get("a") != "other"
    again = pickle.loads(pickle.dumps(other))
    assert again == other and again.name == "api-other" and repr(again) == "SharedDict('api-other')"
    assert pickle.loads(pickle.dumps(SharedDict.MISSING)) is SharedDict.MISSING

    # Integers are kept as decimal text: incr counts on a value set as an int, and the head's
    # table (library.kv_get) reads them as such.
    d["count"] = 41
    assert d.incr("count") == 42 and d["count"] == 42 and isinstance(d["count"], int)
    assert library.kv_get("count", namespace="shareddict:api") == b"42"
    assert d.incr("fresh", -3) == -3
    d["big"] = 1 << 70  # beyond 64 bits: pickled, and so no counter
    assert d["big"] == 1 << 70
    d["flag"] = True
    assert d["flag"] is True

    # compare_and_set: by value (equal dicts in another order), absence, and deletion.
    d["cfg"] = {"a": 1, "b": 2}
    assert d.compare_and_set("cfg", {"b": 2, "a": 1}, {"a": 3})
    assert not d.compare_and_set("cfg", {"a": 1}, {"a": 4}) and d["cfg"] == {"a": 3}
    assert not d.compare_and_set("cfg", SharedDict.MISSING, 0)
    assert d.compare_and_set("cfg", {"a": 3}, SharedDict.MISSING) and "cfg" not in d
    assert d.compare_and_set("cfg", SharedDict.MISSING, None) and d["cfg"] is None
    d.clear()
    assert len(d) == 0


def test_incr_from_8_concurrent_tasks_sums_to_800(volley_shared):
    """The issue's test: 8 tasks, running at once (a barrier in the dictionary proves it),
    each increment one key 100 times; no increment is lost."""
    d = SharedDict("incr-8")
    d.clear()
    finals = volley.get([count.remote(d, 100, 8) for _ in range(8)], timeout=120)
    assert d["hits"] == 800
    assert max(finals) == 800 and all(100 <= f <= 800 for f in finals), finals


def test_compare_and_set_from_many_tasks(volley_shared):
    """8 tasks racing to claim a key from absent: exactly one wins, and all see its value; 4
    tasks adding 25 each to a count inside a dict with compare-and-set loops: 100 (no update
    lost, though the values are pickles compared by value)."""
    d = SharedDict("cas-race")
    d.clear()
    results = volley.get([claim.remote(d, i, 8) for i in range(8)], timeout=120)
    winners = [i for i, (won, _) in enumerate(results) if won]
    assert len(winners) == 1, results
    assert all(seen == {"worker": winners[0]} for _, seen in results), results

    d.clear()
    d["state"] = {"n": 0, "name": "loop"}
    volley.get([add_by_cas.remote(d, 25, 4) for _ in range(4)], timeout=120)
    assert d["state"] == {"n": 100, "name": "loop"}


@volley.remote
def _snapshots(d: SharedDict, n: int) -> list:
    """Takes ``n`` snapshots of the pairs, each (a, b) as it saw them."""
    out = []
    for _ in range(n):
        items = dict(d.items())
        out.append((items.get("a"), items.get("b")))
    return out


def test_update_is_atomic_and_items_a_snapshot(volley_shared):
    d = SharedDict("atomic-update")
    d.update(a=0, b=0)
    reader = _snapshots.remote(d, 400)
    for i in range(1, 400):
        d.update({"a": i, "b": i})
    seen = volley.get(reader, timeout=120)
    # Every snapshot saw both keys of one update, never one key of an update and the other of
    # another.
    assert all(a == b for a, b in seen), [x for x in seen if x[0] != x[1]][:5]
    assert dict(d.items()) == {"a": 399, "b": 399}
    # An update whose value cannot be pickled stores nothing of it.
    with pytest.raises(TypeError, match="pickle"):
        d.update(a=-1, c=threading.Lock())
    assert dict(d.items()) == {"a": 399, "b": 399}
    # Too much at once is refused before anything is stored.
    block = b"x" * ((1 << 20) - 64)  # just under the big-value threshold: kept in the table
    with pytest.raises(ValueError, match="at most 16777216 bytes"):
        d.update({f"k{i}": block for i in range(17)})
    assert sorted(d.keys()) == ["a", "b"]
    d.clear()


def test_threads_of_the_driver_share_it_too(volley_shared):
    d = SharedDict("threads")
    d.clear()
    threads = [threading.Thread(target=lambda: [d.incr("n") for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert d["n"] == 200


def test_errors_at_the_call(volley_shared):
    d = SharedDict("errors")
    d.clear()
    with pytest.raises(TypeError, match="name must be a str"):
        SharedDict(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        SharedDict("")

    for bad in (1, b"bytes", None, ("t",)):
        with pytest.raises(TypeError, match="keys are str, not"):
            d[bad] = 1  # type: ignore[index]
        with pytest.raises(TypeError, match="keys are str"):
            d[bad]  # type: ignore[index]
        with pytest.raises(TypeError, match="keys are str"):
            bad in d  # noqa: B015
        with pytest.raises(TypeError, match="keys are str"):
            d.incr(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys are str"):
        d.update({1: "x"})
    assert len(d) == 0, "nothing of a refused update is stored"

    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    with pytest.raises(KeyError):
        d.pop("missing")
    with pytest.raises(KeyError, match="empty"):
        d.popitem()

    with pytest.raises(ValueError, match="key-value key is at most 4096 bytes"):
        d["k" * 5000] = 1
    with pytest.raises(TypeError, match="cannot be pickled"):
        d["lock"] = threading.Lock()

    d["text"] = "ten"
    with pytest.raises(ValueError, match="cannot incr key 'text': the value there is a str"):
        d.incr("text")
    assert d["text"] == "ten", "a refused incr changes nothing"
    library.kv_put("raw", b"\xff\xfe", namespace="shareddict:errors")
    with pytest.raises(ValueError, match="not text"):
        d.incr("raw")
    with pytest.raises(ValueError, match="not written by a SharedDict"):
        d["raw"]
    d["max"] = (1 << 63) - 1
    with pytest.raises(ValueError, match="overflows"):
        d.incr("max")
    with pytest.raises(TypeError, match="delta must be an int"):
        d.incr("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fit in 64 bits"):
        d.incr("n", 1 << 64)
    d.clear()


def test_a_new_process_starts_volley_at_the_first_operation(tmp_path):
    """No ``volley.init``: the first operation starts volley (a handle alone starts nothing)."""
    script = write_script(
        tmp_path,
        """
        import volley
        d = volley.SharedDict("auto")
        print("BEFORE", volley.is_initialized())
        d["x"] = [1, 2]
        print("AFTER", volley.is_initialized(), d["x"], d.incr("n", 5))
        """,
    )
    out, err = finish_driver(start_driver(script), timeout=60)
    assert "BEFORE False" in out and "AFTER True [1, 2] 5" in out, (out, err)


@volley.remote(num_cpus=0.25)
def watch_in_task(d: SharedDict, key: str) -> object:
    return d.watch(key, timeout=60)


def _write_until_done(d: SharedDict, key: str, ref: volley.ObjectRef) -> None:
    """Changes ``key`` every 20 ms until the watcher's ``ref`` is done: whenever its watch
    starts, a change follows (no sleep decides the outcome)."""
    i = 0
    while not volley.wait([ref], timeout=0.02)[0]:
        i += 1
        d[key] = {"step": i}


def test_watch_wakes_a_task_on_a_change_from_the_driver(volley_shared):
    d = SharedDict("watch")
    d.clear()
    d["cmd"] = {"step": 0}
    ref = watch_in_task.remote(d, "cmd")
    _write_until_done(d, "cmd", ref)
    seen = volley.get(ref)
    assert isinstance(seen, dict) and seen["step"] >= 1, seen

    # A delete is a change: the watcher gets MISSING.
    @volley.remote(num_cpus=0.25)
    def delete_until_told(d: SharedDict) -> None:
        import time

        while "stop" not in d:
            d["gone"] = "here"
            time.sleep(0.01)
            del d["gone"]
            time.sleep(0.01)

    writer = delete_until_told.remote(d)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if d.watch("gone", timeout=30) is SharedDict.MISSING:
            break
    else:
        raise AssertionError("no delete seen")
    d["stop"] = True
    volley.get(writer)
    d.clear()


def test_watch_times_out_and_refuses_bad_input(volley_shared):
    d = SharedDict("watch-errors")
    d["k"] = 1
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="key 'k' did not change within 0.3 s"):
        d.watch("k", timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(TimeoutError):
        d.watch("absent", timeout=0)
    with pytest.raises(TypeError, match="keys are str"):
        d.watch(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout must be a number"):
        d.watch("k", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        d.watch("k", timeout=-1)
    d.clear()


def test_ctrl_c_interrupts_a_watch(tmp_path):
    script = write_script(
        tmp_path,
        """
        import volley
        d = volley.SharedDict("ctrl-c")
        d["k"] = 0
        try:
            # Inside the try: a Ctrl-C that lands just after the line is printed is caught too.
            print("WATCHING", flush=True)
            d.watch("k")
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        """,
    )
    proc = start_driver(script)
    read_line_with_prefix(proc, "WATCHING", timeout=60)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = finish_driver(proc, timeout=30)
    assert "INTERRUPTED" in out, (out, err)
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------------ a real cluster


# ------------------------------------------------------- values over 1 MiB: the object store


def _store_objects(node_id: int | None = None) -> int:
    """Objects in the store of the head's node (this one alone, or node ``node_id``)."""
    for n in volley.nodes():
        if node_id is None or n["node_id"] == node_id:
            return n["store"]["objects"]
    raise AssertionError(f"no node {node_id}")


def _poll(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@volley.remote(num_cpus=0.25)
def big_sum(d: SharedDict, key: str) -> tuple[float, bool]:
    import os

    v = d[key]
    return float(v.sum()), os.environ.get("VOLLEY_NODE_ADDRESS", "")


@pytest.mark.one_node("counts the objects in the store of the driver's node, the head")
def test_a_big_value_goes_through_the_store_and_lives_as_long_as_its_key(volley_2cpu):
    np = pytest.importorskip("numpy")
    d = SharedDict("big-values")
    a = np.arange(1_000_000, dtype=np.float64)  # 8 MB: over 1 MiB pickled
    d["a"] = a
    assert _store_objects() == 1
    got = d["a"]
    # Read in place: a view of the store's shared pages, not a copy.
    assert not got.flags.writeable and not got.flags.owndata and (got == a).all()
    assert volley.get(big_sum.remote(d, "a"), timeout=60)[0] == float(a.sum())
    assert [k for k, _ in d.items()] == ["a"] and d.get("a").nbytes == a.nbytes
    del got
    # Overwritten (by a small value, or another big one) or deleted: the head lets it go.
    d["a"] = 1
    assert _poll(lambda: _store_objects() == 0)
    d["a"] = a
    d["a"] = a * 2
    assert _poll(lambda: _store_objects() == 1) and d["a"][1] == 2.0
    del d["a"]
    assert _poll(lambda: _store_objects() == 0)
    # setdefault keeps the first value; a refused default is let go of.
    blob = b"x" * (3 << 20)
    assert d.setdefault("s", blob) == blob
    assert d.setdefault("s", b"y" * (2 << 20)) == blob
    assert _poll(lambda: _store_objects() == 1)
    # compare_and_set by value, big expected and big new; pop reads it, then deletes.
    assert not d.compare_and_set("s", b"z" * (3 << 20), b"n" * (2 << 20))
    assert d.compare_and_set("s", blob, b"n" * (2 << 20))
    assert d.pop("s") == b"n" * (2 << 20) and "s" not in d
    d.update(u=blob, small=1)
    assert d["u"] == blob and d["small"] == 1
    # Not a buffer: stored as its pickle, read back as an equal object.
    rows = {"rows": list(range(300_000))}  # over 1 MiB pickled
    d["rows"] = rows
    assert d["rows"] == rows
    d.clear()
    assert _poll(lambda: _store_objects() == 0)


def test_a_big_value_written_by_a_task_is_read_by_the_driver(volley_2cpu):
    np = pytest.importorskip("numpy")

    @volley.remote
    def write(d: SharedDict) -> None:
        import numpy

        d["w"] = numpy.full(500_000, 3.0)

    d = SharedDict("big-from-task")
    volley.get(write.remote(d), timeout=60)
    assert float(d["w"].sum()) == 1_500_000.0
    assert isinstance(d["w"], np.ndarray)
    d.clear()
    assert "w" not in d


@volley.remote
def rewrite_big(d: SharedDict, key: str, times: int) -> int:
    import numpy

    for i in range(times):
        d[key] = numpy.full(200_000, float(i))  # 1.6 MB: each write frees the one before
    return times


def test_reads_racing_with_writes_of_big_values_always_get_a_whole_value(volley_2cpu):
    np = pytest.importorskip("numpy")
    d = SharedDict("big-race")
    d["k"] = np.full(200_000, -1.0)
    ref = rewrite_big.remote(d, "k", 150)
    reads = 0
    while not volley.wait([ref], timeout=0)[0] or reads < 20:
        v = d["k"]  # a value replaced (and let go of) while it is read is read again
        assert v.shape == (200_000,) and v[0] == v[-1], v
        reads += 1
    assert volley.get(ref, timeout=60) == 150
    assert d["k"][0] == 149.0
    d.clear()


def test_across_a_cluster(three_node_cluster):
    """Set in the driver, read and incremented by tasks on every node of a 3-node cluster
    (SPREAD); a second driver of the cluster sees it all by name."""
    cluster = three_node_cluster
    import subprocess
    import sys

    d = SharedDict("cluster")
    d["cfg"] = {"from": "driver"}

    @volley.remote(scheduling_strategy="SPREAD", num_cpus=0.25)
    def visit(d: SharedDict, n: int) -> tuple[object, str]:
        # Self-contained (this test module is not importable on the nodes).
        import os
        import time

        d.incr("arrived")
        deadline = time.monotonic() + 60
        while d["arrived"] < n and time.monotonic() < deadline:
            time.sleep(0.005)
        for _ in range(25):
            d.incr("hits")
        return d["cfg"], os.environ["VOLLEY_NODE_ADDRESS"]

    results = volley.get([visit.remote(d, 6) for _ in range(6)], timeout=120)
    assert len({node for _, node in results}) >= 2, results  # from several nodes
    assert all(cfg == {"from": "driver"} for cfg, _ in results), results
    assert d["hits"] == 150

    code = (
        "import volley\n"
        f"volley.init(address={cluster.head!r}, token={cluster.token!r})\n"
        "d = volley.SharedDict('cluster')\n"
        "print('SEEN', d['cfg'], d['hits'], d.incr('hits'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "SEEN {'from': 'driver'} 150 151" in out.stdout, out.stdout


def test_watch_from_a_task_on_another_node(three_node_cluster):
    """Tasks on the cluster's nodes (members ask the head over the network) wake on a change
    the driver makes."""
    d = SharedDict("cluster-watch")
    d["cmd"] = "start"

    @volley.remote(scheduling_strategy="SPREAD", num_cpus=0.25)
    def watcher(d: SharedDict) -> tuple[object, str]:
        import os

        return d.watch("cmd", timeout=60), os.environ["VOLLEY_NODE_ADDRESS"]

    refs = [watcher.remote(d) for _ in range(3)]
    i = 0
    while len(volley.wait(refs, num_returns=3, timeout=0.02)[0]) < 3:
        i += 1
        d["cmd"] = f"go-{i}"
    results = volley.get(refs)
    assert all(v.startswith("go-") for v, _ in results), results
    assert len({node for _, node in results}) >= 2, results


def test_big_values_across_a_cluster(three_node_cluster):
    """The driver (a node of its own) and tasks on the members write and read values over
    1 MiB: they live in the head's node's store, and go when their key does."""
    np = pytest.importorskip("numpy")
    d = SharedDict("cluster-big")
    a = np.arange(400_000, dtype=np.float64)  # 3.2 MB
    d["a"] = a  # from the driver's node: stored by a task on the head's node
    got = d["a"]
    assert isinstance(got, np.ndarray) and (got == a).all()

    @volley.remote(num_cpus=0.25)
    def read_and_write(d: SharedDict, i: int) -> tuple[float, str]:
        import numpy

        d[f"w{i}"] = numpy.full(300_000, float(i))
        return float(d["a"].sum()), volley.get_runtime_context().get_node_id()

    members = sorted(n["node_id"] for n in volley.nodes() if not n["driver"])
    assert len(members) == 3, volley.nodes()
    refs = [
        read_and_write.options(
            scheduling_strategy=volley.NodeAffinitySchedulingStrategy(members[i % 3])
        ).remote(d, i)
        for i in range(4)
    ]
    results = volley.get(refs, timeout=120)
    assert all(s == float(a.sum()) for s, _ in results), results
    assert len({node for _, node in results}) == 3, results  # the head and both members
    for i in range(4):
        assert float(d[f"w{i}"].sum()) == 300_000.0 * i
    head = 1
    assert _poll(lambda: _store_objects(head) >= 5)
    d.clear()
    assert _poll(lambda: _store_objects(head) == 0, timeout=30)
