"""volley.sync: locks, semaphores, events, barriers and conditions on the node's primitive
service, used by the driver, tasks and actors of one node, with real processes (SIGKILLed
holders and parties, a SIGINTed driver)."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    DRIVER_PRELUDE,
    finish_driver,
    read_line_with_prefix,
    start_driver,
    write_script,
)

import volley
from volley.exceptions import ActorDiedError, ChannelClosed
from volley.sync import (
    Barrier,
    BoundedSemaphore,
    BrokenBarrierError,
    Condition,
    Event,
    Lock,
    LockLost,
    RLock,
    Semaphore,
)


@volley.remote(num_cpus=0.5)
def add_under_lock(lock: Lock, path: str, times: int) -> int:
    for _ in range(times):
        with lock:
            p = Path(path)
            n = int(p.read_text())
            p.write_text(str(n + 1))
    return times


@volley.remote(num_cpus=0.5)
def inside_semaphore(sem: Semaphore, hold: float) -> tuple[float, float]:
    with sem:
        start = time.monotonic()
        time.sleep(hold)
        return start, time.monotonic()


@volley.remote(num_cpus=0)
class Party:
    """A process that holds, waits and reports; killed by the tests."""

    def pid(self) -> int:
        return os.getpid()

    def acquire(self, lock: Lock, timeout: float = -1) -> tuple[bool, bool, bool]:
        """(got, previous_holder_died, LockLost raised)."""
        try:
            got = lock.acquire(timeout=timeout)
        except LockLost:
            return True, True, True
        return got, lock.previous_holder_died, False

    def locked_then_release(self, lock: Lock) -> bool:
        was = lock.locked()
        lock.release()
        return was

    def wait_event(self, e: Event, timeout: float) -> bool:
        return e.wait(timeout)

    def wait_barrier(self, b: Barrier, timeout: float | None = None) -> object:
        try:
            return b.wait(timeout)
        except BrokenBarrierError as e:
            return f"broken: {e}"

    def consume(self, cond: Condition, path: str, want: int) -> int:
        with cond:
            assert cond.wait_for(lambda: int(Path(path).read_text()) >= want, timeout=60)
            return int(Path(path).read_text())

    def produce(self, cond: Condition, path: str, times: int) -> int:
        for _ in range(times):
            with cond:
                p = Path(path)
                p.write_text(str(int(p.read_text()) + 1))
                cond.notify_all()
            time.sleep(0.02)
        return times


def test_lock_makes_800_increments_from_4_tasks_exact(volley_2cpu, tmp_path):
    path = tmp_path / "counter"
    path.write_text("0")
    lock = Lock()
    refs = [add_under_lock.remote(lock, str(path), 200) for _ in range(4)]
    assert volley.get(refs, timeout=120) == [200] * 4
    assert int(path.read_text()) == 800
    assert not lock.locked()


def _kill_holder(lock: Lock) -> tuple:
    """A party takes `lock`, another parks on it, the holder is SIGKILLed: the waiter's answer
    and how long it took after the kill."""
    holder, waiter = Party.remote(), Party.remote()
    pid = volley.get(holder.pid.remote(), timeout=60)
    assert volley.get(holder.acquire.remote(lock), timeout=60) == (True, False, False)
    parked = waiter.acquire.remote(lock)
    time.sleep(0.5)  # let it park in acquire()
    assert not volley.wait([parked], timeout=0)[0]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    answer = volley.get(parked, timeout=60)
    took = time.monotonic() - killed
    assert volley.get(waiter.locked_then_release.remote(lock), timeout=60)
    assert not lock.locked()
    return answer, took


def test_a_holder_sigkilled_hands_the_lock_on_with_the_flag(volley_2cpu):
    answer, took = _kill_holder(Lock())
    assert answer == (True, True, False)
    assert took < 10.0
    # The flag went to that acquire only.
    lock = Lock()
    assert lock.acquire() and not lock.previous_holder_died
    lock.release()


def test_a_holder_sigkilled_raises_lock_lost_in_raise_mode(volley_2cpu):
    answer, _ = _kill_holder(Lock(on_holder_death="raise"))
    assert answer == (True, True, True)  # LockLost, with the lock held (released above)


def test_a_dead_processes_semaphore_units_and_rlock_are_released(volley_2cpu):
    sem, rlock = Semaphore(2), RLock()
    holder = Party.remote()
    pid = volley.get(holder.pid.remote(), timeout=60)
    for _ in range(2):
        assert volley.get(holder.acquire.remote(sem), timeout=60)[0]
    assert volley.get(holder.acquire.remote(rlock), timeout=60)[0]
    assert volley.get(holder.acquire.remote(rlock), timeout=60)[0]  # reentrant: two holds
    assert sem.get_value() == 0 and not sem.acquire(blocking=False)
    os.kill(pid, signal.SIGKILL)
    assert sem.acquire(timeout=30) and sem.previous_holder_died
    assert sem.acquire(timeout=30) and sem.previous_holder_died
    assert rlock.acquire(timeout=30) and rlock.previous_holder_died
    rlock.release()
    sem.release(2)


def test_semaphore_limits_concurrency(volley_2cpu):
    sem = Semaphore(2)
    spans = volley.get([inside_semaphore.remote(sem, 0.3) for _ in range(4)], timeout=120)
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    inside = most = 0
    for _, step in edges:
        inside += step
        most = max(most, inside)
    assert most <= 2
    assert sem.get_value() == 2


def test_event_wakes_three_waiting_actors(volley_2cpu):
    e = Event()
    parties = [Party.remote() for _ in range(3)]
    waits = [p.wait_event.remote(e, 60) for p in parties]
    time.sleep(0.5)
    assert volley.wait(waits, timeout=0)[0] == []
    e.set()
    assert volley.get(waits, timeout=60) == [True, True, True]
    assert e.is_set() and e.wait(0)
    e.clear()
    assert not e.is_set() and e.wait(timeout=0.05) is False


def _mark(path: str) -> None:
    Path(path).write_text("ran")


def _fail() -> None:
    raise ValueError("the action failed")


@volley.remote(num_cpus=0)
class ActionParty:
    def wait(self, b: Barrier, path: str) -> object:
        try:
            index = b.wait(60)
        except BrokenBarrierError:
            return "broken"
        except ValueError as e:
            return f"raised: {e}"
        # The action ran before any party's wait returned.
        return index, Path(path).read_text()


def test_barrier_action_runs_once_before_any_party_goes_on(volley_2cpu, tmp_path):
    marker = str(tmp_path / "action")
    b = Barrier(3, action=functools.partial(_mark, marker))
    parties = [ActionParty.remote() for _ in range(3)]
    got = volley.get([p.wait.remote(b, marker) for p in parties], timeout=60)
    assert sorted(got) == [(0, "ran"), (1, "ran"), (2, "ran")]
    b.shutdown()
    # An action that raises breaks the barrier: its party gets the error, the others
    # BrokenBarrierError.
    b = Barrier(3, action=_fail)
    got = volley.get([p.wait.remote(b, marker) for p in parties], timeout=60)
    assert sorted(map(str, got)) == ["broken", "broken", "raised: the action failed"]
    assert b.broken
    b.reset()
    assert not b.broken
    b.shutdown()


def test_barrier_of_three_actors_and_broken_by_a_killed_party(volley_2cpu):
    b = Barrier(3)
    parties = [Party.remote() for _ in range(3)]
    got = volley.get([p.wait_barrier.remote(b, 60) for p in parties], timeout=60)
    assert sorted(got) == [0, 1, 2]
    # Next round: two parties wait, one of them is SIGKILLed; the other is told it died.
    pid = volley.get(parties[2].pid.remote(), timeout=60)
    waits = [parties[0].wait_barrier.remote(b, 60), parties[2].wait_barrier.remote(b, 60)]
    time.sleep(0.5)
    assert b.n_waiting == 2
    os.kill(pid, signal.SIGKILL)
    broken = volley.get(waits[0], timeout=60)
    assert isinstance(broken, str) and "died" in broken, broken
    with pytest.raises(ActorDiedError):
        volley.get(waits[1], timeout=60)
    assert b.broken
    with pytest.raises(BrokenBarrierError):
        b.wait()
    b.reset()
    assert not b.broken and b.n_waiting == 0


def test_condition_producer_consumer(volley_2cpu, tmp_path):
    path = tmp_path / "items"
    path.write_text("0")
    cond = Condition()
    consumer, producer = Party.remote(), Party.remote()
    seen = consumer.consume.remote(cond, str(path), 5)
    time.sleep(0.3)
    assert volley.get(producer.produce.remote(cond, str(path), 5), timeout=60) == 5
    assert volley.get(seen, timeout=60) >= 5
    # The wait gave the lock back: the driver takes it at once.
    assert cond.acquire(timeout=10)
    cond.release()


def test_timeouts_return_false_like_threading(volley_2cpu):
    lock, party = Lock(), Party.remote()
    assert lock.acquire()
    started = time.monotonic()
    assert volley.get(party.acquire.remote(lock, 0.2), timeout=60) == (False, False, False)
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.05) is False
    assert time.monotonic() - started < 30
    lock.release()
    cond = Condition(Lock())
    with cond:
        assert cond.wait(timeout=0.05) is False
        assert cond._lock.locked()  # held again after the timed-out wait
    assert not cond._lock.locked()
    assert Semaphore(0).acquire(timeout=0.05) is False
    b = Barrier(2)
    with pytest.raises(BrokenBarrierError, match="timed out"):
        b.wait(timeout=0.05)
    assert b.broken


def test_misuse_and_bad_values_raise_threadings_errors(volley_2cpu):
    lock = Lock()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    r = RLock()
    assert r.acquire()
    errors: list = []

    def release_elsewhere() -> None:
        try:
            r.release()
        except RuntimeError as e:
            errors.append(str(e))

    other = threading.Thread(target=release_elsewhere)
    other.start()
    other.join()
    assert errors and "un-acquired" in errors[0]
    r.release()
    b = BoundedSemaphore(1)
    with pytest.raises(ValueError, match="too many"):
        b.release()
    with pytest.raises(ValueError, match=">= 0"):
        Semaphore(-1)
    with pytest.raises(TypeError):
        Semaphore(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parties"):
        Barrier(0)
    with pytest.raises(TypeError, match="action must be callable"):
        Barrier(2, action="print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="volley.sync.Lock"):
        Condition(threading.Lock())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(False, 1)
    with pytest.raises(ValueError, match="non-negative"):
        lock.acquire(timeout=-2)
    with pytest.raises(ValueError, match="on_holder_death"):
        Lock(on_holder_death="ignore")
    cond = Condition()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.notify()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.wait(0.01)
    with pytest.raises(ValueError, match="n must be one or more"):
        Semaphore(1).release(0)


def test_ops_after_shutdown_name_the_primitive_and_its_home(volley_2cpu):
    e, lock = Event(), Lock()
    parked = Party.remote().wait_event.remote(e, 60)
    time.sleep(0.3)
    e.shutdown()
    with pytest.raises(ChannelClosed, match=r"Event\(id=\d+\), made on node \d+, is gone"):
        volley.get(parked, timeout=60)
    with pytest.raises(ChannelClosed, match=r"Event\(id=\d+\), made on node \d+"):
        e.set()
    e.shutdown()  # again: nothing
    sem = Semaphore(1)
    volley.shutdown()
    with pytest.raises(ChannelClosed, match=r"Lock\(id=\d+\).*volley was shut down"):
        lock.acquire()
    with pytest.raises(ChannelClosed, match=r"Semaphore\(id=\d+\).*volley was shut down"):
        sem.release()


CTRL_C_SCRIPT = (
    DRIVER_PRELUDE
    + """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
volley.init(num_cpus=1)
from volley.sync import Lock
lock = Lock()
lock.acquire()
print("BLOCKING", flush=True)
try:
    lock.acquire()  # not reentrant: waits for ever
    print("RESULT", flush=True)
except KeyboardInterrupt:
    print("CAUGHT " + repr(time.monotonic()), flush=True)
lock.release()
print("AFTER " + repr(lock.acquire(timeout=10)), flush=True)
volley.shutdown()
"""
)


@pytest.mark.usefixtures("no_volley")
def test_ctrl_c_interrupts_a_blocked_acquire(tmp_path):
    proc = start_driver(write_script(tmp_path, CTRL_C_SCRIPT))
    read_line_with_prefix(proc, "BLOCKING")
    time.sleep(0.5)  # let the driver park in acquire()
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    caught = float(read_line_with_prefix(proc, "CAUGHT ", timeout=30))
    assert caught - sent < 2.0
    # The interrupted acquire left nothing parked or held: the lock is free after one release.
    assert read_line_with_prefix(proc, "AFTER ", timeout=30) == "True"
    out, err = finish_driver(proc)
    assert proc.returncode == 0, err


@volley.remote(num_cpus=0.5)
def take(lock: Lock) -> bool:
    return lock.acquire()


def test_cancelling_a_task_blocked_in_acquire_leaves_the_lock_whole(volley_2cpu):
    lock = Lock()
    assert lock.acquire()
    waiting = take.remote(lock)
    time.sleep(0.5)  # let it park in acquire()
    volley.cancel(waiting)
    with pytest.raises(volley.exceptions.TaskCancelledError):
        volley.get(waiting, timeout=60)
    lock.release()  # the cancelled acquire is no longer waiting: the lock stays free
    assert not lock.locked()
    assert lock.acquire(timeout=10)
    lock.release()


@volley.remote(num_cpus=1)
def wait_at(b: Barrier) -> int:
    return b.wait(timeout=60)


def test_tasks_parked_at_a_barrier_lend_their_cpus(volley_2cpu):
    """Three 1-CPU tasks on 2 CPUs meet at a barrier: the two that wait first lend their CPUs,
    so the third runs instead of every one waiting for ever."""
    b = Barrier(3)
    assert sorted(volley.get([wait_at.remote(b) for _ in range(3)], timeout=90)) == [0, 1, 2]
