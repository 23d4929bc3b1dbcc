"""Worker crashes: retries on fresh workers, WorkerCrashedError, worker replacement,
externally killed workers, and workers exiting when their driver is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import (
    DRIVER_PRELUDE,
    finish_driver,
    is_running,
    kill_driver,
    poll,
    read_line_with_prefix,
    start_driver,
    wait_all_gone,
    worker_node_pid,
    worker_pids,
    write_script,
)

import volley

pytestmark = pytest.mark.usefixtures("volley_2cpu")

CRASH_MODES = ["os_exit", "sigkill_self", "segfault"]


def crash(mode):
    if mode == "os_exit":
        os._exit(1)
    elif mode == "sigkill_self":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    elif mode == "segfault":
        import ctypes

        ctypes.string_at(0)
    raise AssertionError(f"unknown crash mode {mode}")


def record_attempt(directory):
    """Record one attempt (with this worker's pid) and return its 1-based number."""
    n = len([f for f in os.listdir(directory) if f.startswith("attempt-")]) + 1
    with open(os.path.join(directory, f"attempt-{n}"), "w") as f:
        f.write(str(os.getpid()))
    return n


def attempts(directory):
    names = sorted(
        (f for f in os.listdir(directory) if f.startswith("attempt-")),
        key=lambda f: int(f.split("-")[1]),
    )
    return [int((directory / name).read_text()) for name in names]


@volley.remote
def always_crash(mode):
    crash(mode)


@volley.remote
def always_crash_counting(directory, mode="os_exit"):
    record_attempt(directory)
    crash(mode)


@volley.remote(max_retries=3)
def crash_until(directory, crash_times, mode="os_exit"):
    n = record_attempt(directory)
    if n <= crash_times:
        crash(mode)
    return n


@volley.remote
def block_first_attempt(directory, timeout=60.0):
    """First attempt blocks until killed from outside; later attempts return at once."""
    n = record_attempt(directory)
    if n == 1:
        time.sleep(timeout)
        return "first attempt was never killed"
    return f"attempt {n}"


@volley.remote
def getpid():
    return os.getpid()


@volley.remote
def wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return os.getpid()


@volley.remote
def barrier(directory, token, parties, timeout=30.0):
    with open(os.path.join(directory, f"arrived-{token}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len([n for n in os.listdir(directory) if n.startswith("arrived-")]) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("barrier not reached")
        time.sleep(0.01)
    return os.getpid()


@volley.remote
def touch(path, x):
    with open(path, "w") as f:
        f.write("ran")
    return x


@volley.remote
def get_crashing_child():
    return volley.get(always_crash.options(max_retries=0, name="inner_crash").remote("os_exit"))


def both_worker_pids(directory):
    """Pids of the two workers, found by running two tasks that must overlap."""
    directory.mkdir()
    pids = volley.get([barrier.remote(str(directory), i, 2) for i in range(2)], timeout=60)
    assert len(set(pids)) == 2
    return set(pids)


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_crash_without_retries_raises_worker_crashed_error(mode):
    ref = always_crash.options(max_retries=0).remote(mode)
    with pytest.raises(volley.WorkerCrashedError) as info:
        volley.get(ref, timeout=60)
    assert isinstance(info.value, volley.VolleyError)
    assert "always_crash" in str(info.value)


def test_max_retries_zero_fails_after_one_attempt(tmp_path):
    ref = always_crash_counting.options(max_retries=0).remote(tmp_path)
    with pytest.raises(volley.WorkerCrashedError) as info:
        volley.get(ref, timeout=60)
    assert "always_crash_counting" in str(info.value)
    assert len(attempts(tmp_path)) == 1


def test_default_max_retries_is_three(tmp_path):
    with pytest.raises(volley.WorkerCrashedError) as info:
        volley.get(always_crash_counting.remote(tmp_path), timeout=60)
    assert "always_crash_counting" in str(info.value)
    pids = attempts(tmp_path)
    assert len(pids) == 4  # the first attempt + 3 retries
    assert len(set(pids)) == 4, "a crashed worker was reused"


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_crash_is_retried_on_a_fresh_worker_until_success(tmp_path, mode):
    assert volley.get(crash_until.remote(tmp_path, 2, mode), timeout=60) == 3
    pids = attempts(tmp_path)
    assert len(pids) == 3
    assert len(set(pids)) == 3, "retry ran on a dead worker's pid"
    assert not any(is_running(p) for p in pids[:2])


def test_max_retries_via_options(tmp_path):
    ref = crash_until.options(max_retries=1).remote(tmp_path, 2)
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(ref, timeout=60)
    assert len(attempts(tmp_path)) == 2


def test_crash_error_names_the_task_given_by_options():
    ref = always_crash.options(max_retries=0, name="my_custom_task_name").remote("os_exit")
    with pytest.raises(volley.WorkerCrashedError) as info:
        volley.get(ref, timeout=60)
    assert "my_custom_task_name" in str(info.value)


def test_task_depending_on_crashed_task_fails_without_running(tmp_path):
    marker = tmp_path / "ran"
    crashed = always_crash.options(max_retries=0).remote("os_exit")
    downstream = touch.remote(str(marker), crashed)
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(downstream, timeout=60)
    assert not marker.exists()


def test_crash_in_nested_task_surfaces_in_parent():
    with pytest.raises(volley.VolleyError) as info:
        volley.get(get_crashing_child.remote(), timeout=60)
    assert "inner_crash" in str(info.value)


@pytest.mark.one_node(
    "checks that workers are the driver's children; in a cluster they are the nodes'"
)
def test_crash_does_not_disturb_task_on_other_worker(tmp_path):
    release = tmp_path / "release"
    survivor = wait_for_file.remote(str(release))
    crashed = always_crash.options(max_retries=0).remote("sigkill_self")
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(crashed, timeout=60)
    release.touch()
    pid = volley.get(survivor, timeout=60)
    assert worker_node_pid(pid) == os.getpid()


# --------------------------------------------------------------------------- replacement


@pytest.mark.one_node(
    "checks that workers are the driver's children; in a cluster they are the nodes'"
)
def test_crashed_worker_is_replaced(tmp_path):
    before = both_worker_pids(tmp_path / "b1")
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(always_crash.options(max_retries=0).remote("os_exit"), timeout=60)
    results = volley.get([getpid.remote() for _ in range(20)], timeout=60)
    after = both_worker_pids(tmp_path / "b2")
    assert len(after) == 2
    assert len(before & after) == 1, (before, after)  # exactly one of the two was replaced
    for pid in set(results) | after:
        assert is_running(pid) and worker_node_pid(pid) == os.getpid()
    assert poll(lambda: len(worker_pids()) == 2), worker_pids()


@pytest.mark.one_node(
    "checks that workers are the driver's children; in a cluster they are the nodes'"
)
def test_idle_worker_killed_from_outside_is_replaced(tmp_path):
    before = both_worker_pids(tmp_path / "b1")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    assert poll(lambda: not is_running(victim))
    pids = volley.get([getpid.remote() for _ in range(30)], timeout=60)
    assert victim not in pids
    after = both_worker_pids(tmp_path / "b2")
    assert victim not in after
    assert poll(lambda: len(worker_pids()) == 2), worker_pids()


@pytest.mark.one_node(
    "checks that workers are the driver's children; in a cluster they are the nodes'"
)
def test_busy_worker_killed_from_outside_task_is_retried(tmp_path):
    ref = block_first_attempt.remote(tmp_path)
    assert poll(lambda: (tmp_path / "attempt-1").exists(), timeout=30)
    victim = int(poll(lambda: (tmp_path / "attempt-1").read_text()))
    assert worker_node_pid(victim) == os.getpid()
    os.kill(victim, signal.SIGKILL)
    assert volley.get(ref, timeout=60) == "attempt 2"
    pids = attempts(tmp_path)
    assert pids[0] == victim and pids[1] != victim


# --------------------------------------------------------------------------- chaos


@volley.remote(max_retries=20)
def chaos_leaf(i):
    time.sleep(0.005)
    return i


@volley.remote(max_retries=20)
def chaos_add(a, b):
    time.sleep(0.002)
    return a + b


def run_chaos(leaves, kills):
    """A tree reduction while workers are SIGKILLed from outside; the sum must be exact."""
    refs = [chaos_leaf.remote(i) for i in range(leaves)]
    level = refs
    while len(level) > 1:
        nxt = [chaos_add.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    killed = set()
    deadline = time.monotonic() + 60
    while len(killed) < kills and time.monotonic() < deadline:
        if volley.wait([level[0]], num_returns=1, timeout=0)[0]:
            break
        victims = worker_pids() - killed
        if not victims:
            # Replacements are still starting: between fork and exec a worker's command line is
            # still its parent's, so it is not listed yet.
            time.sleep(0.01)
            continue
        victim = min(victims)
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        time.sleep(0.05)
    assert volley.get(level[0], timeout=120) == sum(range(leaves))
    return killed


def test_tree_reduction_survives_killed_workers():
    killed = run_chaos(leaves=200, kills=3)
    assert killed, "no worker was killed: the graph finished before the first kill"
    assert not killed & worker_pids()
    assert volley.get(chaos_add.remote(1, 2), timeout=60) == 3


@pytest.mark.slow
def test_tree_reduction_survives_many_killed_workers():
    run_chaos(leaves=4096, kills=40)
    assert volley.get([chaos_leaf.remote(i) for i in range(100)], timeout=60) == list(range(100))


# --------------------------------------------------------------------------- driver death

KILLED_DRIVER_SCRIPT = (
    DRIVER_PRELUDE
    + """
volley.init(num_cpus=2)
workdir = os.path.dirname(os.path.abspath(__file__))

@volley.remote
def barrier(directory, token, parties):
    with open(os.path.join(directory, f"arrived-{token}"), "w"):
        pass
    while len([n for n in os.listdir(directory) if n.startswith("arrived-")]) < parties:
        time.sleep(0.01)
    return os.getpid()

@volley.remote
def busy(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)

os.makedirs(os.path.join(workdir, "barrier"))
task_pids = volley.get([barrier.remote(os.path.join(workdir, "barrier"), i, 2) for i in range(2)])
if BUSY:
    ref = busy.remote(os.path.join(workdir, "busy"))
    while not os.path.exists(os.path.join(workdir, "busy")):
        time.sleep(0.01)
print("TASKPIDS " + json.dumps(sorted(task_pids)), flush=True)
print("PIDS " + json.dumps(my_worker_pids()), flush=True)
time.sleep(600)
"""
)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_workers_exit_when_driver_is_sigkilled(tmp_path, busy):
    script = write_script(tmp_path, KILLED_DRIVER_SCRIPT.replace("BUSY", str(busy)))
    proc = start_driver(script)
    pids: list[int] = []
    try:
        task_pids = json.loads(read_line_with_prefix(proc, "TASKPIDS "))
        pids = json.loads(read_line_with_prefix(proc, "PIDS "))
        assert len(set(task_pids)) == 2
        assert set(task_pids) <= set(pids)
        for pid in pids:
            assert worker_node_pid(pid) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        left = wait_all_gone(pids, timeout=5)
        assert not left, f"workers {left} outlived their SIGKILLed driver"
    finally:
        kill_driver(proc)
        for pid in pids:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


HUNG_START_SCRIPT = """
import os, volley

volley.init(num_cpus=1)


# No retry to spend: the task never ran on the worker that hung.
@volley.remote(max_retries=0)
def where():
    return os.getpid()


print("RESULT " + str(volley.get(where.remote(), timeout=120)), flush=True)
volley.shutdown()
"""


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_worker_that_never_connects_is_killed_and_its_work_runs_on_another(
    tmp_path, monkeypatch, mode
):
    """A worker stuck before its handshake (made to hang by a test hook) is killed once the
    start deadline passes, with a warning that says so, and the task it was meant for runs on
    the worker started in its place: no silent wait on "a worker process is starting"."""
    hang = tmp_path / "hung-worker"
    script = write_script(tmp_path, HUNG_START_SCRIPT)
    monkeypatch.setenv("VOLLEY_TEST_WORKER_HANG_ONCE", str(hang))
    monkeypatch.setenv("VOLLEY_WORKER_START_TIMEOUT", "2")
    if mode == "exec":
        monkeypatch.setenv("VOLLEY_WORKER_START", "exec")
    proc = start_driver(script)
    try:
        pid = int(read_line_with_prefix(proc, "RESULT ", timeout=90))
        out, err = finish_driver(proc)
        assert proc.returncode == 0, err
        hung = int(hang.read_text())
        assert pid != hung
        assert not wait_all_gone([hung], timeout=10), f"the hung worker {hung} still runs"
        assert "did not connect to its node within 2 s" in err, err
    finally:
        kill_driver(proc)
