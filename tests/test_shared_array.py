"""volley.shared_array: a numpy array in shared memory that the driver, tasks and actors of a node
write together (real worker processes, the same pages: no copy), its handle's errors (freed, its
creator gone, another node's memory), its lock, and nothing left behind after shutdown."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import CLUSTER_MODE

import volley
from volley._shared_array import SharedArray, SharedArrayError

pytestmark = pytest.mark.timeout(120)

one_node = pytest.mark.one_node("the driver's memory is on the workers' node")


def _memfds(pid: int | str = "self") -> list[str]:
    """The shared array files a process holds open."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        if "volley-shared-array" in link:
            out.append(link)
    return out


def _mapped_memfds() -> int:
    with open("/proc/self/maps") as f:
        return sum("volley-shared-array" in line for line in f)


@volley.remote
def write_square(a: SharedArray, i: int) -> tuple[str, int]:
    a[i] = i * i
    return type(a).__name__, os.getpid()


@volley.remote
def fill_slice(view: SharedArray, value: float) -> None:
    view[...] = value


@volley.remote
def add_under_lock(a: SharedArray, times: int) -> None:
    for _ in range(times):
        with a.lock:
            a[0] += 1


@volley.remote
def make_in_worker(n: int) -> SharedArray:
    a = volley.shared_array(n, dtype="int64")
    a[:] = np.arange(n)
    return a


@volley.remote
def free_here(a: SharedArray) -> None:
    a.free()


@volley.remote
def node_of_worker() -> int:
    return volley.get_runtime_context().get_node_id()


@volley.remote(num_cpus=0)
class Writer:
    def __init__(self, a: SharedArray) -> None:
        self.a = a

    def write(self, i: int, value: float) -> int:
        self.a[i] = value
        return os.getpid()


@one_node
def test_tasks_write_one_array_and_the_driver_sees_their_writes(volley_shared):
    a = volley.shared_array(64, dtype="int64", fill=-1)
    out = volley.get([write_square.remote(a, i) for i in range(64)], timeout=60)
    assert a.tolist() == [i * i for i in range(64)]
    assert {name for name, _ in out} == {"SharedArray"}
    assert os.getpid() not in {pid for _, pid in out}, "the tasks ran in worker processes"
    a.free()


def test_the_handle_is_small_whatever_the_size():
    for shape in [(10,), (1000, 1000)]:  # 80 bytes, 8 MB
        a = volley.shared_array(shape)
        assert len(pickle.dumps(a[1:])) < 600, shape
        a.free()


@one_node
def test_a_view_passed_to_a_task_writes_that_part_of_the_array(volley_shared):
    a = volley.shared_array((4, 6), fill=0.0)
    volley.get(fill_slice.remote(a[1], 1.0), timeout=60)
    volley.get(fill_slice.remote(a[:, ::3], 2.0), timeout=60)
    expected = np.zeros((4, 6))
    expected[1] = 1.0
    expected[:, ::3] = 2.0
    np.testing.assert_array_equal(a, expected)
    a.free()


@one_node
def test_an_actor_holds_the_array_and_its_writes_are_seen(volley_shared):
    a = volley.shared_array(3, fill=0.0)
    w = Writer.remote(a)
    pid = volley.get(w.write.remote(2, 5.5), timeout=60)
    assert pid != os.getpid() and a[2] == 5.5
    volley.kill(w)
    a.free()


def test_arithmetic_makes_ordinary_arrays_that_pickle_as_copies():
    a = volley.shared_array(3, fill=1.0)
    b = a + 1
    assert type(b) is np.ndarray
    assert type(pickle.loads(pickle.dumps(b))) is np.ndarray
    assert isinstance(a[1:], SharedArray) and a[1:]._seg is a._seg
    a.free()


@one_node
def test_the_lock_makes_read_modify_write_exact(volley_shared):
    a = volley.shared_array(1, dtype="int64", fill=0)
    volley.get([add_under_lock.remote(a, 100) for _ in range(3)], timeout=90)
    assert a[0] == 300
    a.free()


@one_node
def test_an_array_made_in_a_task_comes_back_mapped(volley_shared):
    a = volley.get(make_in_worker.remote(5), timeout=60)
    assert isinstance(a, SharedArray) and a.tolist() == [0, 1, 2, 3, 4]
    a[0] = 42  # the worker's memory: a second task sees it
    assert volley.get(fill_slice.remote(a[1:2], 7), timeout=60) is None
    assert a.tolist() == [42, 7, 2, 3, 4]
    with pytest.raises(SharedArrayError, match="only its creator frees it"):
        a.free()


@one_node
def test_only_the_creator_frees(volley_shared):
    a = volley.shared_array(2)
    with pytest.raises(volley.TaskError, match="only its creator frees it"):
        volley.get(free_here.remote(a), timeout=60)
    a.free()


def test_a_freed_array_cannot_be_passed_on_but_still_reads_here(volley_shared):
    with volley.shared_array(3, fill=4.0) as a:
        pass
    assert a.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(volley.SerializationError, match="was freed"):
        write_square.remote(a, 0)
    a.free()  # twice: nothing


def test_a_handle_whose_creator_exited_says_it_is_gone(tmp_path):
    script = textwrap.dedent("""
        import pickle, sys
        import volley
        a = volley.shared_array(4, fill=3.0)
        sys.stdout.write(pickle.dumps(a).hex())
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    with pytest.raises(SharedArrayError, match="is gone: its creator freed it"):
        pickle.loads(bytes.fromhex(out.stdout))


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (((2, -1),), ValueError, "negative"),
        (("ten",), TypeError, "shape must be an int or a tuple of ints"),
        (((2.5,),), TypeError, "shape must be an int"),
        ((3, "no-such-type"), TypeError, "is not a numpy dtype"),
        ((3, object), TypeError, "holds Python objects"),
    ],
)
def test_bad_arguments_raise_at_the_call(args, error, match):
    with pytest.raises(error, match=match):
        volley.shared_array(*args)


def test_an_array_not_in_shared_memory_has_no_lock():
    a = volley.shared_array(3)
    b = a * 2
    assert not isinstance(b, SharedArray)
    c = np.ndarray.view(np.arange(3.0), SharedArray)
    with pytest.raises(SharedArrayError, match="not in shared memory"):
        c.lock  # noqa: B018
    a.free()


def test_nothing_is_left_after_shutdown_or_sigkill(tmp_path):
    """A driver that shares arrays with tasks and shuts down holds no file and no mapping once
    its arrays are dropped; one SIGKILLed leaves nothing named anywhere (the files have no
    name: /dev/shm gains nothing)."""
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(f"""
        import gc, os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import volley
        from test_shared_array import write_square, _memfds, _mapped_memfds
        volley.init(num_cpus=2)
        arrays = [volley.shared_array(1000, dtype="int64") for _ in range(3)]
        volley.get([write_square.remote(a, 7) for a in arrays], timeout=60)
        print("held", len(_memfds()), flush=True)
        volley.shutdown()
        print("after-shutdown", len(_memfds()), sum(int(a[7]) for a in arrays), flush=True)
        del arrays
        gc.collect()
        print("after-drop", _mapped_memfds(), flush=True)
        b = volley.shared_array(10)
        print("ready", os.getpid(), flush=True)
        sys.stdin.read()
        """)
    )
    p = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [p.stdout.readline().split() for _ in range(4)]
        assert lines[0] == ["held", "3"], lines
        assert lines[1] == ["after-shutdown", "0", "147"], lines
        assert lines[2] == ["after-drop", "0"], lines
        assert lines[3][0] == "ready", lines
        assert len(_memfds(int(lines[3][1]))) == 1
    finally:
        p.kill()
        p.wait(timeout=30)
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not {n for n in shm_after - shm_before if "volley" in n or "shared" in n}


def test_the_file_is_private_to_this_user():
    a = volley.shared_array(8)
    fd = a._seg.fd
    assert os.fstat(fd).st_mode & 0o777 == 0o600
    assert "memfd:volley-shared-array" in os.readlink(f"/proc/self/fd/{fd}")
    a.free()


def test_gather_copies_and_scatter_on_one_node_does_nothing(volley_shared):
    a = volley.shared_array(3, fill=2.0)
    assert a.scatter() is a
    b = a.gather()
    b[0] = 9.0
    assert a.tolist() == [2.0, 2.0, 2.0] and b.tolist() == [9.0, 2.0, 2.0]
    with pytest.raises(SharedArrayError, match="has no copy on node 99"):
        a.gather(node=99)
    if not CLUSTER_MODE:
        with pytest.raises(ValueError, match="no node 99"):
            a.scatter(node=99)
    a.free()
    b.free()


def test_memory_is_freed_with_the_last_array_never_pickled():
    a = volley.shared_array(100)
    assert len(_memfds()) >= 1
    before = len(_memfds())
    del a
    gc.collect()
    assert len(_memfds()) == before - 1


# ------------------------------------------------------------- on a cluster: memory is per node


@pytest.mark.skipif(not CLUSTER_MODE, reason="needs the test cluster (VOLLEY_TEST_CLUSTER=1)")
def test_a_handle_on_another_node_names_both_nodes_and_scatter_makes_it_work(volley_shared):
    here = volley.get_runtime_context().get_node_id()
    a = volley.shared_array(4, dtype="int64", fill=1)
    others = sorted(
        {n["node_id"] for n in volley.nodes() if not n["driver"] and n["num_cpus"] > 0} - {here}
    )
    assert others, "the test cluster has nodes with CPUs besides the driver's"
    on = {i: volley.NodeAffinitySchedulingStrategy(i) for i in others}
    with pytest.raises(volley.SerializationError, match=rf"node {here}\b.*node {others[0]}\b"):
        volley.get(write_square.options(scheduling_strategy=on[others[0]]).remote(a, 2), timeout=60)
    a.scatter()
    for i in others:
        volley.get(write_square.options(scheduling_strategy=on[i]).remote(a, 3), timeout=60)
        assert volley.get(node_of_worker.options(scheduling_strategy=on[i]).remote()) == i
        assert a.gather(node=i).tolist() == [1, 1, 1, 9], f"node {i}'s copy"
    assert a.tolist() == [1, 1, 1, 1], "the home copy is not written by other nodes"
    a.free()


# ------------------------------------------- volley.multiprocessing's Value, Array, Raw* on it


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: volley.multiprocessing.Value("z", 1), TypeError, "unknown typecode 'z'"),
        (lambda: volley.multiprocessing.RawValue(int), TypeError, "neither a typecode nor"),
        (lambda: volley.multiprocessing.RawArray("i", -1), ValueError, "size must be >= 0"),
        (lambda: volley.multiprocessing.RawArray("i", 2.5), TypeError, "an int or a sequence"),
        (lambda: volley.multiprocessing.Array("i", 3, lock="no"), AttributeError, "'acquire'"),
    ],
)
def test_bad_value_and_array_arguments_raise_at_the_call(call, error, match):
    import volley.multiprocessing  # noqa: F401

    with pytest.raises(error, match=match):
        call()


@volley.remote
def count_up(counter: object, n: int) -> None:
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


@one_node
def test_many_values_share_arenas_and_a_locked_counter_is_exact(volley_shared):
    from volley.multiprocessing import Array, RawValue, Value

    before = len(_memfds())
    values = [RawValue("d", i) for i in range(2000)]  # more than a process's descriptors
    assert len(_memfds()) - before <= 1
    assert sum(v.value for v in values) == sum(range(2000))
    counter = Value("i", 0)
    volley.get([count_up.remote(counter, 100) for _ in range(3)], timeout=90)
    assert counter.value == 300
    text = Array("c", b"hello")
    assert (text.value, text.raw, len(text)) == (b"hello", b"hello", 5)
    assert repr(counter) == "<Synchronized wrapper for c_int(300)>"


@volley.remote
def set_value(v: object, x: float) -> None:
    v.value = x


@one_node
def test_values_made_after_a_session_ended_are_in_fresh_memory(volley_2cpu):
    from volley.multiprocessing import RawValue

    old = RawValue("d", 1.0)
    volley.get(set_value.remote(old, 2.0), timeout=60)
    volley.shutdown()  # closes the arena's file: `old` can no longer be passed on
    sys.modules["conftest"]._init_2cpu()
    with pytest.raises(volley.SerializationError, match="was freed"):
        set_value.remote(old, 3.0)
    new = RawValue("d", 1.0)
    volley.get(set_value.remote(new, 4.0), timeout=60)
    assert (old.value, new.value) == (2.0, 4.0)


def test_a_handle_whose_file_identity_or_size_does_not_match_is_refused(tmp_path):
    from volley._shared_array import _Place, _rebuild
    from volley._shared_memory import _open

    a = volley.shared_array(4)
    place = a._seg.place
    wrong = _Place(place.pid, place.fd, place.dev, place.ino + 1)
    args = (a.dtype, a.shape, a.strides, 0)
    with pytest.raises(SharedArrayError, match="now names another file"):
        _rebuild("x", a.nbytes, wrong, None, {}, None, *args)
    b = volley.shared_array(4)
    with pytest.raises(SharedArrayError, match="has 32 bytes, its handle says 1000"):
        _open("y", 1000, b._seg.place, "this machine")  # as a process that maps it first
    other = tmp_path / "plain"
    other.write_bytes(b"12345678" * 4)
    with open(other, "r+b") as f:  # a handle forged to map a user's file is refused
        st = os.fstat(f.fileno())
        forged = _Place(os.getpid(), f.fileno(), st.st_dev, st.st_ino)
        with pytest.raises(SharedArrayError, match="is not a volley shared memory file"):
            _rebuild("z", 32, forged, None, {}, None, *args)
    a.free()
    b.free()


@volley.remote
def scatter_here(a: SharedArray) -> None:
    a.scatter()


@one_node
def test_only_the_creator_scatters(volley_shared):
    a = volley.shared_array(2)
    with pytest.raises(volley.TaskError, match="only the creator of shared array"):
        volley.get(scatter_here.remote(a), timeout=60)
    a.free()


@one_node
def test_a_value_passes_to_a_volley_pool(volley_shared):
    from volley.multiprocessing import Pool, Value

    counter = Value("i", 0)
    with Pool(2) as pool:
        pool.map(count_up_one, [counter] * 8)
    assert counter.value == 8


def count_up_one(counter: object) -> None:
    with counter.get_lock():
        counter.value += 1


# ------------------------------------------------ NodeRLock: a pthread mutex in shared memory


@volley.remote(max_retries=0)
def hold_and_die(lock: object) -> None:
    lock.acquire()
    os.kill(os.getpid(), 9)


@one_node
def test_a_node_lock_guards_a_value_across_tasks_and_survives_a_killed_holder(volley_shared):
    import threading

    from volley._mp_values import NodeRLock
    from volley.multiprocessing import Value

    counter = Value("i", 0, lock=NodeRLock())
    volley.get([count_up.remote(counter, 500) for _ in range(2)], timeout=90)
    assert counter.value == 1000

    lock = NodeRLock()
    assert lock.acquire() and lock.acquire(blocking=False)  # recursive
    lock.release()
    lock.release()
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        lock.release()
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(hold_and_die.remote(lock), timeout=60)  # SIGKILLed holding it
    assert lock.acquire(timeout=30), "a dead holder's lock is handed on"
    assert lock.previous_holder_died
    got: list[bool] = []
    other = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.2)))
    other.start()
    other.join(timeout=30)
    assert got == [False], "another thread times out while this one holds it"
    lock.release()


def test_values_need_no_numpy():
    """``volley.multiprocessing`` (its Pool users included) does not import numpy."""
    script = textwrap.dedent("""
        import sys
        from volley.multiprocessing import Array, Value
        v, a = Value("i", 3), Array("d", [1.0, 2.0])
        print("numpy" in sys.modules, v.value, a[:])
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split(maxsplit=1) == ["False", "3 [1.0, 2.0]\n"]


@volley.remote
def negate(view: SharedArray) -> list:
    view *= -1
    return view.tolist()


@one_node
def test_reversed_transposed_and_empty_views_travel_as_views(volley_shared):
    a = volley.shared_array((2, 3), dtype="int64")
    a[:] = [[1, 2, 3], [4, 5, 6]]
    assert volley.get(negate.remote(a[0, ::-1]), timeout=60) == [-3, -2, -1]
    assert volley.get(negate.remote(a.T[:, 1]), timeout=60) == [-4, -5, -6]
    assert a.tolist() == [[-1, -2, -3], [-4, -5, -6]]
    empty = volley.shared_array(0)
    assert volley.get(negate.remote(empty), timeout=60) == []
    a.free()
    empty.free()


def test_an_array_passed_on_without_a_lock_says_so_instead_of_making_another():
    script = textwrap.dedent("""
        import pickle, sys
        import volley
        a = volley.shared_array(4, fill=3.0)
        print(pickle.dumps(a).hex(), flush=True)  # volley is not running: no lock goes along
        sys.stdin.read()
    """)
    p = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = p.stdout.readline().strip()
        assert line, "the creator printed no handle"
        b = pickle.loads(bytes.fromhex(line))  # the creator is alive: it maps
        assert b.tolist() == [3.0] * 4
        with pytest.raises(SharedArrayError, match="has no lock yet: use arr.lock in the creator"):
            b.lock  # noqa: B018
    finally:
        p.kill()
        p.wait(timeout=30)


def test_an_array_larger_than_the_memory_left_is_refused_at_the_call():
    with pytest.raises(MemoryError, match="bytes of memory and swap available"):
        volley.shared_array((1 << 40,), dtype="int64")  # 8 TiB: never written, never mapped


def test_running_out_of_file_descriptors_says_what_holds_them():
    script = textwrap.dedent("""
        import resource
        import volley
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        arrays = []
        try:
            for _ in range(100):
                arrays.append(volley.shared_array(10))
        except OSError as e:
            print(len(arrays) > 10, e)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.startswith("True"), out
    assert "holds a file descriptor in its creator until free()" in out.stdout
