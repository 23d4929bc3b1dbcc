"""The shared-memory object store: zero-copy reads, reference counting, spilling, faults.

Everything runs against real worker processes and real shared memory. "Zero-copy" is checked
where it can be seen: the address of an array's data lies inside this process's mapping of the
store (``/proc/<pid>/maps`` names it ``memfd:volley-store``), and a reader's private memory does
not grow by the array's size.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    CLUSTER_MODE,
    DRIVER_PRELUDE,
    driver_env,
    poll,
    wait_all_gone,
    write_script,
)

import volley
from volley import ObjectStoreFullError, SerializationError

MiB = 1 << 20


def store_ranges(pid: int | str = "self") -> list[tuple[int, int]]:
    """Address ranges where ``pid`` maps the object store."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "memfd:volley-store" in line:
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def in_store(addr: int, pid: int | str = "self") -> bool:
    return any(lo <= addr < hi for lo, hi in store_ranges(pid))


def address(x) -> int:
    """Address of the first byte of a numpy array or buffer."""
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    return np.frombuffer(x, dtype=np.uint8).__array_interface__["data"][0]


def store_settles(**expected) -> dict:
    """Polls the store's counters until they match (releases from workers are asynchronous)."""
    last = {}

    def ok():
        nonlocal last
        gc.collect()
        last = volley.object_store_stats()
        return all(last[k] == v for k, v in expected.items())

    assert poll(ok, timeout=10), f"store never reached {expected}: {last}"
    return last


# ----------------------------------------------------------------- zero-copy in the driver


def test_put_get_is_a_read_only_view_of_shared_memory(volley_shared):
    a = np.arange(2_000_000, dtype=np.float64)
    ref = volley.put(a)
    b = volley.get(ref)
    assert np.array_equal(a, b)
    assert in_store(address(b)), "the array is not backed by the store"
    assert not b.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        b[0] = 1.0
    c = np.array(b)  # the documented way to get a writable copy
    c[0] = 1.0
    assert c.flags.writeable and not in_store(address(c))
    # Two gets are two views of the same bytes.
    assert address(volley.get(ref)) == address(b)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(300_000, dtype=np.int8),
        lambda: np.arange(300_000, dtype=np.int64).reshape(600, 500),
        lambda: np.asfortranarray(np.arange(300_000, dtype=np.float32).reshape(600, 500)),
        lambda: (np.arange(200_000) + 1j * np.arange(200_000)).astype(np.complex128),
        lambda: np.ones(200_000, dtype=[("a", "<i4"), ("b", "<f8")]),
        lambda: np.arange(400_000, dtype=np.uint16) > 100,
    ],
    ids=["int8", "int64-2d", "float32-fortran", "complex128", "structured", "bool"],
)
def test_contiguous_arrays_of_any_dtype_are_views(volley_shared, make):
    a = make()
    b = volley.get(volley.put(a))
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b)
    assert b.flags.f_contiguous == a.flags.f_contiguous
    assert in_store(address(b))
    assert not b.flags.writeable


def test_a_non_contiguous_array_round_trips(volley_shared):
    base = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    a = base[:, ::3]
    b = volley.get(volley.put(a))
    assert np.array_equal(a, b)


def test_bytes_bytearray_and_memoryview(volley_shared):
    raw = os.urandom(300_000)
    b = volley.get(volley.put(raw))
    assert type(b) is bytes and b == raw
    ba = volley.get(volley.put(bytearray(raw)))
    assert type(ba) is bytearray and ba == raw
    ba[0] ^= 1  # a bytearray stays mutable (it is rebuilt with one copy out of the store)
    mv = volley.get(volley.put(memoryview(raw)))
    assert type(mv) is memoryview and mv.readonly and mv == raw
    assert in_store(address(mv))
    shaped = memoryview(np.arange(60_000, dtype=np.int32).reshape(300, 200))
    back = volley.get(volley.put(shaped))
    assert back.format == "i" and back.shape == (300, 200) and back.tolist() == shaped.tolist()
    fortran = memoryview(np.asfortranarray(np.arange(60_000, dtype=np.float64).reshape(300, 200)))
    back = volley.get(volley.put(fortran))
    assert back.shape == (300, 200) and back.tolist() == fortran.tolist()
    small = volley.get(volley.put(memoryview(b"abc")))
    assert type(small) is memoryview and small == b"abc"  # same type whatever the size
    swapped = memoryview(np.arange(20_000, dtype=">f8"))  # a format cast() cannot rebuild
    assert bytes(volley.get(volley.put(swapped))) == swapped.tobytes()


def test_containers_of_arrays_are_views_each(volley_shared):
    value = {
        "x": np.arange(100_000, dtype=np.float64),
        "parts": [np.full(50_000, i, dtype=np.int32) for i in range(5)],
        "meta": {"name": "batch", "n": 5},
    }
    got = volley.get(volley.put(value))
    assert got["meta"] == value["meta"]
    assert np.array_equal(got["x"], value["x"])
    for i, p in enumerate(got["parts"]):
        assert (p == i).all() and in_store(address(p)) and not p.flags.writeable
    assert in_store(address(got["x"]))


def test_pandas_dataframe_columns_are_views(volley_shared):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": np.arange(200_000, dtype=np.float64), "b": np.arange(200_000)})
    got = volley.get(volley.put(df))
    assert got.equals(df)
    assert in_store(address(got["a"].to_numpy()))


def test_small_values_stay_out_of_the_store(volley_shared):
    before = volley.object_store_stats()["objects"]
    refs = [volley.put(np.zeros(100)), volley.put(b"x" * 1000), volley.put(list(range(100)))]
    assert volley.object_store_stats()["objects"] == before
    assert volley.get(refs[2]) == list(range(100))


# ----------------------------------------------------------------- zero-copy in workers


@volley.remote
def inspect(x):
    """Where the task's argument lives, in the worker."""
    import numpy as np

    addr = x.__array_interface__["data"][0]
    maps = open("/proc/self/maps").read().splitlines()
    inside = False
    for line in maps:
        if "memfd:volley-store" in line:
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            inside = inside or lo <= addr < hi
    return inside, bool(x.flags.writeable), float(np.sum(x))


def test_task_arguments_are_views_in_the_worker(volley_shared):
    a = np.arange(1_000_000, dtype=np.float64)
    ref = volley.put(a)
    inside, writeable, total = volley.get(inspect.remote(ref))
    assert inside and not writeable and total == a.sum()
    # An array passed directly goes through the store as well.
    inside, writeable, total = volley.get(inspect.remote(a))
    assert inside and not writeable and total == a.sum()


@volley.remote
def describe_bytes(*args, **kwargs):
    import hashlib

    def d(v):
        return type(v).__name__, len(v), hashlib.sha256(v).hexdigest()

    return [d(a) for a in args], {k: d(v) for k, v in kwargs.items()}


def test_large_bytes_arguments_round_trip_with_their_type(volley_shared):
    import hashlib

    def d(v):
        return type(v).__name__, len(v), hashlib.sha256(v).hexdigest()

    raw = os.urandom(64 * MiB)
    mutable = bytearray(raw[: 8 * MiB])
    small = b"just a few bytes"
    args, kwargs = volley.get(describe_bytes.remote(raw, small, 7 * b"x", extra=mutable))
    assert args == [d(raw), d(small), d(7 * b"x")] and kwargs == {"extra": d(mutable)}
    # Out of band: the argument's pickle stream does not hold the payload.
    from volley._serialization import dumps_args

    data, buffers, _ = dumps_args((raw,), {"extra": mutable})
    assert len(data) < 4096 and [len(b) for b in buffers] == [len(raw), len(mutable)]


BYTES_MEMORY_DRIVER = """
import sys, time
import volley

def peak_rss():
    # This process's own high-water mark (ru_maxrss would also count what the parent had when
    # it forked this one).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024

volley.init(num_cpus=1)

@volley.remote
def size_of(b):
    return type(b).__name__, len(b)

assert volley.get(size_of.remote(b"warm up")) == ("bytes", 7)
base = peak_rss()
data = b"\\x01" * (int(sys.argv[1]) << 20)  # touched: resident from here on
t = time.perf_counter()
assert volley.get(size_of.remote(data)) == ("bytes", len(data))
took = time.perf_counter() - t
print("PEAK", (peak_rss() - base) / len(data), took)
volley.shutdown()
"""


def test_a_large_bytes_argument_costs_one_copy_into_the_store(tmp_path):
    """The driver's peak memory for a 256 MiB bytes argument: the value itself plus one copy
    in the store (pickled in-band it was three times the value: a copy in the pickle stream
    too)."""
    script = write_script(tmp_path, BYTES_MEMORY_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script), "256"],
        capture_output=True,
        text=True,
        timeout=120,
        env=driver_env(),
        cwd=str(tmp_path),
    )
    peaks = [line.split() for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
    assert proc.returncode == 0 and peaks, proc.stderr
    ratio = float(peaks[0][1])
    assert ratio < 2.2, f"peak driver memory was {ratio:.2f}x the argument"


@volley.remote
def make_array(n, fill):
    import numpy as np

    return np.full(n, fill, dtype=np.float64)


def test_large_results_come_back_through_the_store(volley_shared):
    before = volley.object_store_stats()["objects"]
    ref = make_array.remote(2_000_000, 3.0)
    x = volley.get(ref)
    assert x.shape == (2_000_000,) and (x == 3.0).all()
    assert in_store(address(x))
    assert volley.object_store_stats()["objects"] == before + 1
    inside, _, total = volley.get(inspect.remote(ref))  # and on to another task, still shared
    assert inside and total == 6_000_000.0


@volley.remote
def nested_put_and_get(n):
    import numpy as np

    import volley

    ref = volley.put(np.arange(n, dtype=np.float64))
    x = volley.get(ref)
    return ref, float(x.sum()), bool(x.flags.writeable)


def test_workers_put_and_get_through_the_store(volley_shared):
    ref, total, writeable = volley.get(nested_put_and_get.remote(1_000_000))
    assert total == float(np.arange(1_000_000).sum()) and not writeable
    x = volley.get(ref)
    assert in_store(address(x)) and x[-1] == 999_999


@volley.remote
def private_growth(x):
    """KiB of private (anonymous) memory this worker gained while reading all of ``x``."""
    import numpy as np

    def anon():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    before = anon()
    total = float(np.sum(x))
    return anon() - before, total


def test_readers_do_not_copy(volley_shared):
    size = 200 * MiB
    a = np.ones(size // 8)
    ref = volley.put(a)
    del a
    results = volley.get([private_growth.remote(ref) for _ in range(6)])
    for growth_kib, total in results:
        assert total == size // 8
        assert growth_kib * 1024 < size // 10, f"a reader copied the array: +{growth_kib} KiB"
    assert volley.object_store_stats()["used"] < 2 * size


# ----------------------------------------------------------------- reference counting


def test_freed_when_the_last_ref_goes(volley_shared):
    base = store_settles(pinned=0)
    ref = volley.put(np.zeros(1_000_000))
    assert volley.object_store_stats()["objects"] == base["objects"] + 1
    del ref
    store_settles(objects=base["objects"], used=base["used"])


def test_a_live_view_outlives_its_refs(volley_shared):
    base = store_settles(pinned=0)
    ref = volley.put(np.arange(1_000_000, dtype=np.float64))
    x = volley.get(ref)
    del ref
    gc.collect()
    st = volley.object_store_stats()
    assert st["objects"] == base["objects"]  # no ref: the object is gone...
    assert st["used"] > base["used"]  # ...but its memory stays while the view lives
    assert x[123_456] == 123_456.0
    del x
    store_settles(used=base["used"])


def test_nested_refs_keep_their_objects(volley_shared):
    base = store_settles(pinned=0)
    inner = volley.put(np.ones(1_000_000))
    outer = volley.put([inner])
    del inner
    gc.collect()
    assert volley.object_store_stats()["objects"] == base["objects"] + 1
    (again,) = volley.get(outer)
    assert volley.get(again).sum() == 1_000_000
    del again, outer
    store_settles(objects=base["objects"], used=base["used"])


@volley.remote
def slow_sum(x, delay):
    import time

    time.sleep(delay)
    return float(x.sum())


@pytest.mark.one_node("a 2-CPU task needs a node with 2 CPUs; the test cluster has two 1-CPU nodes")
def test_pending_tasks_keep_their_arguments(volley_shared):
    base = store_settles(pinned=0)
    ref = volley.put(np.ones(1_000_000))
    blocker = slow_sum.remote(np.zeros(10), 0.3)
    out = slow_sum.options(num_cpus=2).remote(ref, 0)  # waits behind the blocker
    del ref
    gc.collect()
    assert volley.get(out) == 1_000_000
    del blocker, out
    store_settles(objects=base["objects"], used=base["used"])


def test_worker_views_are_released_after_the_task(volley_shared):
    base = store_settles(pinned=0)
    ref = volley.put(np.ones(1_000_000))
    assert volley.get([slow_sum.remote(ref, 0) for _ in range(4)]) == [1_000_000.0] * 4
    st = store_settles(pinned=0)
    assert st["objects"] == base["objects"] + 1


# ----------------------------------------------------------------- limits and spilling


@pytest.fixture
def small_store(no_volley, tmp_path):
    spill = tmp_path / "spill"
    volley.init(num_cpus=2, object_store_memory=64 * MiB, object_spill_dir=spill)
    yield spill
    volley.shutdown()


def spill_fds(spill_dir) -> list[str]:
    """Files under ``spill_dir`` this process has open (spill files have no name on disk)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(spill_dir)):
            out.append(target)
    return out


def test_spilling_round_trips_three_times_the_store(small_store):
    n = 16 * MiB // 8
    refs = [volley.put(np.full(n, i, dtype=np.float64)) for i in range(12)]  # 192 MiB
    st = volley.object_store_stats()
    assert st["objects"] == 12 and st["objects_spilled"] >= 8
    assert st["used"] <= st["capacity"]
    # Spill files have no name: nothing to see, nothing to leak.
    assert list(small_store.iterdir()) == []
    assert len(spill_fds(small_store)) == st["objects_spilled"]
    for i, r in enumerate(refs):
        x = volley.get(r)
        assert x[0] == i and x[-1] == i and x.shape == (n,)
        del x
    assert volley.object_store_stats()["restore_count"] >= 8
    # Tasks read spilled objects too.
    assert volley.get(slow_sum.remote(refs[0], 0)) == 0.0
    assert volley.get(slow_sum.remote(refs[11], 0)) == 11.0 * n
    del refs, r
    store_settles(objects=0, used=0, spilled_bytes=0)
    assert spill_fds(small_store) == [] and list(small_store.iterdir()) == []


def test_getting_more_than_the_store_holds_at_once_still_works(small_store):
    n = 16 * MiB // 8
    refs = [volley.put(np.full(n, i, dtype=np.float64)) for i in range(6)]  # 96 MiB
    views = volley.get(refs)  # cannot all be mapped at once: the rest are copied out of disk
    assert [(v[0], v[-1]) for v in views] == [(i, i) for i in range(6)]
    assert sum(in_store(address(v)) for v in views) >= 1
    del views, refs
    store_settles(objects=0, used=0, spilled_bytes=0)


def test_an_object_larger_than_the_store_fails_at_once(small_store):
    with pytest.raises(ObjectStoreFullError, match=r"100\.0 MiB.*larger than the whole"):
        volley.put(np.zeros(100 * MiB // 8))
    assert volley.object_store_stats()["used"] == 0


def test_full_of_pinned_objects_raises_and_recovers(small_store):
    views = [volley.get(volley.put(np.full(5 * MiB, i, dtype=np.uint8))) for i in range(12)]
    with pytest.raises(ObjectStoreFullError) as info:
        volley.put(np.zeros(8 * MiB, dtype=np.uint8))
    msg = str(info.value)
    assert "8.0 MiB" in msg and "64.0 MiB" in msg and "pinned" in msg
    assert isinstance(info.value, MemoryError)
    # Nothing was lost: the pinned objects are intact, and dropping views makes room again.
    assert all((v == i).all() for i, v in enumerate(views))
    del views
    gc.collect()
    assert volley.get(volley.put(np.ones(8 * MiB, dtype=np.uint8))).sum() == 8 * MiB


@volley.remote
def too_big():
    import numpy as np

    return np.zeros(100 * (1 << 20) // 8)


def test_a_result_too_large_for_the_store_fails_the_task(small_store):
    with pytest.raises(ObjectStoreFullError, match="larger than the whole"):
        volley.get(too_big.remote())
    assert volley.get(slow_sum.remote(np.ones(10), 0)) == 10.0


def test_an_unpicklable_value_names_itself(volley_shared):
    import threading

    with pytest.raises(SerializationError, match="dict"):
        volley.put({"data": np.zeros(1_000_000), "lock": threading.Lock()})
    with pytest.raises(SerializationError, match="argument 1"):
        slow_sum.remote(np.zeros(1_000_000), threading.Lock())


# ----------------------------------------------------------------- faults


@volley.remote(max_retries=0)
def hold_view_and_wait(x, path):
    import os
    import time

    view = x[10:20]  # keep a view alive while blocked
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(60)
    return float(view.sum())


@pytest.mark.one_node("reads the driver's store stats while the reader runs on another node")
def test_a_killed_reader_releases_its_views(volley_2cpu, tmp_path):
    keep = volley.put(np.ones(2_000_000))
    other = volley.put(np.full(2_000_000, 7.0))
    base = store_settles(pinned=0)
    flag = tmp_path / "holding"
    out = hold_view_and_wait.remote(keep, str(flag))
    assert poll(flag.exists, timeout=20)
    assert volley.object_store_stats()["pinned"] > 0
    os.kill(int(flag.read_text()), signal.SIGKILL)
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(out)
    st = store_settles(pinned=0)
    assert st["objects"] == base["objects"] and st["used"] == base["used"]
    assert volley.get(other)[0] == 7.0 and volley.get(slow_sum.remote(keep, 0)) == 2_000_000


@volley.remote(max_retries=0)
def write_big_then_die(n):
    import os
    import signal
    import threading

    import numpy as np

    a = np.ones(n)
    # Die somewhere around the copy into the store: before, during or after it.
    threading.Timer(0.002, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    return a


def test_a_writer_killed_mid_write_leaks_nothing(volley_2cpu):
    keep = volley.put(np.full(1_000_000, 5.0))
    base = store_settles(pinned=0)
    for _ in range(3):
        ref = write_big_then_die.remote(40 * MiB // 8)
        try:
            x = volley.get(ref)
            assert x.sum() == 40 * MiB // 8
            del x
        except volley.WorkerCrashedError:
            pass
        del ref
        store_settles(used=base["used"], objects=base["objects"], pinned=0)
    assert volley.get(keep)[0] == 5.0


SHM_LEAK_DRIVER = (
    DRIVER_PRELUDE
    + """
import numpy as np
spill = sys.argv[1]
volley.init(num_cpus=2, object_store_memory=32 << 20, object_spill_dir=spill)

@volley.remote
def echo(x):
    return x

refs = [volley.put(np.full(4 << 20, i, dtype=np.uint8)) for i in range(16)]
views = [volley.get(echo.remote(r)) for r in refs[:2]]
st = volley.object_store_stats()
assert st["objects_spilled"] > 0, st
print("PIDS", json.dumps(my_worker_pids()), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
volley.shutdown()
print("DONE", flush=True)
"""
)


def volley_shm_entries() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if "volley" in e.lower()}


@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_nothing_is_left_after_shutdown_or_sigkill(tmp_path, how):
    spill = tmp_path / "spill"
    spill.mkdir()
    before = volley_shm_entries()
    script = write_script(tmp_path, SHM_LEAK_DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(spill), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env(),
        cwd=str(tmp_path),
    )
    out, err = proc.communicate(timeout=60)
    pids = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("PIDS ")]
    assert pids, f"driver failed: {err}"
    if how == "kill":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0 and "DONE" in out, err
    # Every process is gone, and with them the memfd and the unnamed spill files.
    assert not wait_all_gone(pids[0], timeout=10)
    assert list(spill.iterdir()) == []
    assert volley_shm_entries() == before


def test_memory_is_shared_not_copied_per_reader(volley_shared):
    """Shared memory grows by one copy of the array, not one per reader."""

    def shared_bytes():
        if CLUSTER_MODE:
            # The cluster suite runs alone: the machine's shared memory (every node's store).
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("Shmem:"):
                        return int(line.split()[1]) * 1024
            return 0
        # The pages of this node's store (its memfd), not the machine's: another test process
        # may be filling its own store meanwhile.
        total = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:volley-store"):
                    total += os.fstat(int(fd)).st_blocks * 512
            except OSError:
                continue
        return total

    size = 256 * MiB
    before = shared_bytes()
    ref = volley.put(np.ones(size // 8))
    results = volley.get([private_growth.remote(ref) for _ in range(8)])
    grown = shared_bytes() - before
    assert all(total == size // 8 for _, total in results)
    # The store keeps freed pages for reuse, so growth is at most one array (plus slack), and
    # certainly not eight.
    assert grown < 2 * size, f"shared memory grew by {grown / MiB:.0f} MiB for 8 readers"


# ----------------------------------------------------------------- stress


@volley.remote(max_retries=-1)
def produce(i, n):
    import numpy as np

    return np.full(n, i, dtype=np.float64)


@volley.remote(max_retries=-1)
def consume(refs):
    import volley

    return sum(float(volley.get(r)[-1]) for r in refs)


def _churn(rounds: int, kills: int) -> None:
    n = 2 * MiB // 8
    rng = np.random.default_rng(7)
    for _ in range(rounds):
        produced = [produce.remote(i, n) for i in range(24)]  # 48 MiB of results: spills
        groups = [produced[i : i + 4] for i in range(0, 24, 4)]
        sums = [consume.remote(g) for g in groups]
        for _ in range(kills):
            pids = volley._core.worker_pids()
            if pids:
                try:
                    os.kill(int(rng.choice(pids)), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert volley.get(sums) == [float(sum(range(i, i + 4))) for i in range(0, 24, 4)]
        got = volley.get(produced)
        assert [int(x[0]) for x in got] == list(range(24))
        del got, produced, groups, sums
    store_settles(objects=0, used=0, pinned=0, spilled_bytes=0)


def test_churn_with_spilling_and_kills(no_volley, tmp_path):
    volley.init(num_cpus=2, object_store_memory=40 * MiB, object_spill_dir=tmp_path)
    _churn(rounds=2, kills=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_churn_with_spilling_and_kills_long(no_volley, tmp_path):
    volley.init(num_cpus=2, object_store_memory=40 * MiB, object_spill_dir=tmp_path)
    _churn(rounds=15, kills=2)
    assert list(tmp_path.iterdir()) == []
