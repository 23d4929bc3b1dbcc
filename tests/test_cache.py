"""``volley.cache``: results computed once and loaded after, by the driver and by tasks on every
node; numpy arrays keyed by content and memory-mapped back; changed code recomputes; processes
racing on one key compute it once, and a waiter takes over when the computing process is
SIGKILLed; a damaged entry is recomputed; LRU eviction; unsafe directories refused."""

from __future__ import annotations

import importlib
import mmap
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import volley
from volley._cache import CacheDirError

pytestmark = pytest.mark.timeout(120)


def _calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _note(log: Path) -> None:
    """Records one computation (one line per call; O_APPEND writes of a line do not mix)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)


def _wait_for(what: str, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def test_a_result_is_computed_once_then_loaded(tmp_path):
    log = tmp_path / "calls"
    memory = volley.cache(tmp_path / "c")

    @memory
    def add(a, b=10):
        _note(log)
        return a + b

    assert add(1) == 11 and add(1) == 11 and add(1, b=10) == 11  # the default is part of the key
    assert add(a=1, b=10) == 11
    assert len(_calls(log)) == 1
    assert add(2) == 12 and len(_calls(log)) == 2
    assert add.check_call_in_cache(1) and not add.check_call_in_cache(3)
    with pytest.raises(TypeError):
        add(1, 2, 3)  # a bad call fails as the function's own would


def test_numpy_arrays_are_keyed_by_content_and_come_back_memory_mapped(tmp_path):
    log = tmp_path / "calls"
    memory = volley.cache(tmp_path / "c")

    @memory
    def double(a):
        _note(log)
        return {"twice": a * 2, "small": np.arange(3)}

    a = np.arange(200_000, dtype=np.float64)
    first = double(a)
    again = double(a.copy())  # another object, the same content: a hit
    assert len(_calls(log)) == 1
    np.testing.assert_array_equal(again["twice"], a * 2)
    np.testing.assert_array_equal(again["small"], np.arange(3))
    arr = again["twice"]
    assert not arr.flags.writeable  # the cache's file is never written through a result
    base = arr
    while not isinstance(base, memoryview) and getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    assert first["twice"].flags.writeable  # the computed value is the function's own
    # Other content, another dtype with the same bytes, a non-contiguous view: misses.
    b = a.copy()
    b[-1] = -1
    double(b)
    double(a.view(np.int64))
    double(a[::2])
    assert len(_calls(log)) == 4
    double(np.ascontiguousarray(a[::2]))  # the same content as the view: a hit
    assert len(_calls(log)) == 4


def test_sets_and_kwargs_are_keyed_by_value_not_by_order(tmp_path):
    log = tmp_path / "calls"
    memory = volley.cache(tmp_path / "c")

    @memory
    def f(s, **kw):
        _note(log)
        return len(s) + len(kw)

    f({"x", "y", "z"}, a=1, b=2)
    f({"z", "y", "x"}, b=2, a=1)
    assert len(_calls(log)) == 1


def test_changed_code_is_recomputed(tmp_path, monkeypatch):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    monkeypatch.syspath_prepend(str(mod_dir))
    src = mod_dir / "cached_mod_v.py"
    template = (
        "import volley\n"
        "memory = volley.cache({loc!r})\n"
        "@memory\n"
        "def compute(x):\n"
        "    return x + {k}\n"
    )
    src.write_text(template.format(loc=str(tmp_path / "c"), k=1))
    mod = importlib.import_module("cached_mod_v")
    assert mod.compute(1) == 2
    src.write_text(template.format(loc=str(tmp_path / "c"), k=100))
    importlib.invalidate_caches()
    sys.modules.pop("cached_mod_v")
    mod = importlib.import_module("cached_mod_v")
    assert mod.compute(1) == 101  # not the old code's 2
    sys.modules.pop("cached_mod_v")


def test_ignored_arguments_are_left_out_of_the_key(tmp_path):
    log = tmp_path / "calls"

    @volley.cache(tmp_path / "c").cache(ignore=["verbose"])
    def f(x, verbose=False):
        _note(log)
        return x

    assert f(1) == 1 and f(1, verbose=True) == 1
    assert len(_calls(log)) == 1


def test_clear_removes_results(tmp_path):
    log = tmp_path / "calls"
    memory = volley.cache(tmp_path / "c")

    @memory
    def f(x):
        _note(log)
        return x

    @memory
    def g(x):
        _note(log)
        return x

    f(1), g(1)
    f.clear()
    assert not f.check_call_in_cache(1) and g.check_call_in_cache(1)
    memory.clear()
    assert not g.check_call_in_cache(1) and memory.size() == 0
    f(1), g(1)
    assert len(_calls(log)) == 4


def test_a_damaged_or_partial_entry_is_recomputed(tmp_path):
    log = tmp_path / "calls"
    memory = volley.cache(tmp_path / "c")

    @memory
    def f(x):
        _note(log)
        return np.full(100_000, x, dtype=np.int64)

    f(1)

    def entry() -> Path:
        (found,) = [
            p
            for p in (tmp_path / "c").rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix != ".lock"
        ]
        return found

    size = entry().stat().st_size
    damage = [
        lambda p: p.write_bytes(p.read_bytes()[: size // 2]),  # cut short
        lambda p: p.write_bytes(p.read_bytes()[:40] + b"x" * 60 + p.read_bytes()[100:]),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(p.read_bytes() + b"more"),
    ]
    for i, spoil in enumerate(damage, start=2):
        spoil(entry())
        np.testing.assert_array_equal(f(1), np.full(100_000, 1))
        assert len(_calls(log)) == i, f"damage {i - 2} was not recomputed"
        assert entry().stat().st_size == size  # stored whole again
    # A writer killed half-way leaves a temporary file, which no reader looks at.
    e = entry()
    (e.parent / f".tmp-{e.name}-1-dead").write_bytes(b"half")
    np.testing.assert_array_equal(f(1), np.full(100_000, 1))
    assert len(_calls(log)) == 5


def test_size_limit_evicts_the_least_recently_used(tmp_path):
    memory = volley.cache(tmp_path / "c", size_limit="2500K")

    @memory
    def block(i):
        return np.full(2**17, i, dtype=np.float64)  # 1 MiB each

    block(1)
    block(2)
    time.sleep(0.01)  # distinct last-use times on a coarse clock
    block(1)  # a hit: 1 is now more recent than 2
    time.sleep(0.01)
    block(3)  # over the limit: 2 goes
    assert block.check_call_in_cache(1) and block.check_call_in_cache(3)
    assert not block.check_call_in_cache(2)
    assert memory.size() <= 2500 * 1024
    assert memory.reduce_size(0) > 0 and memory.size() == 0


def test_bad_input_is_refused_at_the_call(tmp_path):
    with pytest.raises(TypeError, match=r"@volley.cache\('/path/to/dir'\)"):

        @volley.cache
        def f(x):
            return x

    with pytest.raises(TypeError, match="location must be a path"):
        volley.cache(42)
    with pytest.raises(ValueError, match="is not a size"):
        volley.cache(tmp_path, size_limit="lots")
    with pytest.raises(ValueError, match=">= 0"):
        volley.cache(tmp_path, size_limit=-1)
    with pytest.raises(ValueError, match="'nope', which is not an argument"):
        volley.cache(tmp_path).cache(lambda x: x, ignore=["nope"])
    with pytest.raises(TypeError, match="not classes"):
        volley.cache(tmp_path)(int)


def test_an_unsafe_directory_is_refused(tmp_path):
    root = tmp_path / "open" / "volley-cache"
    root.mkdir(parents=True)
    root.chmod(0o777)
    with pytest.raises(CacheDirError, match="group or others may write"):
        volley.cache(tmp_path / "open")(abs)(-1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "volley-cache").symlink_to(elsewhere)
    with pytest.raises(CacheDirError, match="is a symlink"):
        volley.cache(tmp_path / "link")(abs)(-1)
    if os.getuid() == 0:
        owned = tmp_path / "owned" / "volley-cache"
        owned.mkdir(parents=True, mode=0o700)
        os.chown(owned, 12345, -1)
        with pytest.raises(CacheDirError, match="owned by uid 12345"):
            volley.cache(tmp_path / "owned")(abs)(-1)
    # A new one is private.
    volley.cache(tmp_path / "new")(abs)(-1)
    assert (tmp_path / "new" / "volley-cache").stat().st_mode & 0o777 == 0o700


# ------------------------------------------------------------------------------ tasks


@volley.remote(num_cpus=0)
class Caller:
    def pid(self) -> int:
        return os.getpid()

    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def call_at(self, barrier, fn, *args):
        barrier.wait(timeout=60)
        return fn(*args)


def test_tasks_racing_on_one_key_compute_it_once(volley_shared, tmp_path):
    log = tmp_path / "calls"

    @volley.cache(tmp_path / "c")
    def slow(x):
        _note(log)
        time.sleep(0.3)  # widens the race; exactly-once holds at any speed
        return x * 2, os.getpid()

    callers = [Caller.remote() for _ in range(4)]
    barrier = volley.sync.Barrier(4)
    results = volley.get([c.call_at.remote(barrier, slow, 21) for c in callers], timeout=90)
    assert len(_calls(log)) == 1
    assert len(set(results)) == 1 and results[0][0] == 42
    for c in callers:
        volley.kill(c)


def test_a_waiter_computes_when_the_computing_process_is_killed(volley_shared, tmp_path):
    log = tmp_path / "calls"
    never = volley.sync.Event()

    @volley.cache(tmp_path / "c").cache(ignore=["stall"])
    def value(x, stall=False):
        _note(log)
        if stall:
            never.wait()  # the first computer hangs until it is killed
        return x + 1

    first, second = Caller.remote(), Caller.remote()
    pid = volley.get(first.pid.remote(), timeout=60)
    stuck = first.call.remote(value, 1, stall=True)
    _wait_for("the first process to start computing", lambda: len(_calls(log)) == 1)
    waiting = second.call.remote(value, 1)
    time.sleep(0.2)  # it waits for the first one's result (checked below, not by timing)
    assert not volley.wait([waiting], timeout=0)[0], "the second caller did not wait"
    os.kill(pid, signal.SIGKILL)
    assert volley.get(waiting, timeout=60) == 2  # it took the key over and computed it
    assert len(_calls(log)) == 2
    with pytest.raises(volley.ActorDiedError):
        volley.get(stuck, timeout=60)
    never.shutdown()


def test_cache_above_and_below_remote(volley_shared, tmp_path):
    log = tmp_path / "calls"

    @volley.cache(tmp_path / "c")
    @volley.remote(num_cpus=0.5)
    def above(x):
        _note(log)
        return x, os.getpid()

    @volley.remote
    @volley.cache(tmp_path / "c")
    def below(x):
        _note(log)
        return -x, os.getpid()

    a1 = volley.get(above.remote(3), timeout=60)
    b1 = volley.get(below.remote(3), timeout=60)
    assert volley.get([above.remote(3) for _ in range(4)], timeout=60) == [a1] * 4
    assert volley.get([below.remote(3) for _ in range(4)], timeout=60) == [b1] * 4
    assert len(_calls(log)) == 2
    assert above.check_call_in_cache(3)
    above.clear()
    assert not above.check_call_in_cache(3)


@volley.remote(num_cpus=0.25)
def _on_node(fn, x):
    return fn(x), os.environ.get("VOLLEY_NODE_ADDRESS")


def test_a_shared_directory_serves_every_node(three_node_cluster, tmp_path):
    # The test cluster's nodes share this machine's file system: a shared directory.
    log = tmp_path / "calls"

    @volley.cache(tmp_path / "c")
    def compute(x):
        import os

        import numpy as np

        with open(log, "a") as f:  # the nodes do not import this module: no _note here
            f.write(f"{os.getpid()}\n")
        return np.arange(x), os.getpid()

    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    on = [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in three_node_cluster.addrs]
    first, addr = volley.get(_on_node.options(scheduling_strategy=on[0]).remote(compute, 5))
    assert addr == three_node_cluster.addrs[0]
    rest = volley.get([_on_node.options(scheduling_strategy=s).remote(compute, 5) for s in on[1:]])
    assert [a for _, a in rest] == three_node_cluster.addrs[1:]
    for (arr, pid), _ in rest:
        assert pid == first[1]  # computed on the first node, loaded on the others
        np.testing.assert_array_equal(arr, np.arange(5))
    assert len(_calls(log)) == 1


def test_a_waiter_says_what_it_waits_for(tmp_path, monkeypatch, caplog):
    import fcntl
    import threading

    import volley._cache as cache_module

    monkeypatch.setattr(cache_module, "_SAY_AFTER", 0.05)

    @volley.cache(tmp_path / "c")
    def f(x):
        return x * 3

    f(0)  # makes the function's directory
    cf = f.check_call_in_cache.__self__
    _, entry = cf._paths(cf.key((7,), {}))
    # Another holder of the key's lock (an open file description of its own, as a process).
    fd = os.open(entry + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"pid 4242 on elsewhere")
    fcntl.flock(fd, fcntl.LOCK_EX)
    result = []
    caller = threading.Thread(target=lambda: result.append(f(7)))
    with caplog.at_level("WARNING", logger="volley.cache"):
        caller.start()
        _wait_for(
            "the waiter's message",
            lambda: any("pid 4242 on elsewhere" in r.getMessage() for r in caplog.records),
        )
    assert not result  # it still waits
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    caller.join(timeout=60)
    assert result == [21]


def test_a_result_that_cannot_be_stored_is_returned_with_a_warning(tmp_path):
    import threading

    @volley.cache(tmp_path / "c")
    def make_lock(x):
        return threading.Lock()

    with pytest.warns(RuntimeWarning, match="was not stored.*returned, not cached"):
        lock = make_lock(1)
    assert lock.acquire() and not make_lock.check_call_in_cache(1)


def test_an_argument_that_cannot_be_hashed_says_which_and_how_to_ignore_it(tmp_path):
    import threading

    @volley.cache(tmp_path / "c")
    def f(x, lock):
        return x

    with pytest.raises(TypeError, match=r"argument 'lock' of .*ignore=\['lock'\]"):
        f(1, threading.Lock())

    @volley.cache(tmp_path / "c").cache(ignore=["lock"])
    def g(x, lock):
        return x

    assert g(1, threading.Lock()) == 1


def test_generator_functions_are_refused(tmp_path):
    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator or coroutine"):
        volley.cache(tmp_path)(gen)


def test_functions_made_by_one_factory_with_different_values_are_different(tmp_path):
    memory = volley.cache(tmp_path / "c")

    def scaled(k):
        @memory
        def scale(x):
            return x * k

        return scale

    assert scaled(2)(10) == 20
    assert scaled(3)(10) == 30  # not the first one's result
    assert scaled(2)(10) == 20


def test_a_result_this_process_cannot_import_is_computed_here(tmp_path, monkeypatch, caplog):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "cache_thing_mod.py").write_text(
        "class Thing:\n    def __init__(self, x):\n        self.x = x\n"
    )
    monkeypatch.syspath_prepend(str(mod_dir))

    @volley.cache(tmp_path / "c")
    def make(x):
        try:
            import cache_thing_mod
        except ImportError:
            return "made without the module"
        return cache_thing_mod.Thing(x)

    assert make(1).x == 1
    # Now this process cannot import the module the stored result needs.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(mod_dir)])
    monkeypatch.delitem(sys.modules, "cache_thing_mod")
    with caplog.at_level("WARNING", logger="volley.cache"):
        assert make(1) == "made without the module"
    assert any("cannot load" in r.getMessage() for r in caplog.records)
