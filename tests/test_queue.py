"""volley.util.queue: a queue on the node's primitive service, used by the driver, tasks and
actors of one node, with real processes (SIGKILLed consumers, a SIGINTed driver)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import (
    DRIVER_PRELUDE,
    finish_driver,
    poll,
    read_line_with_prefix,
    start_driver,
    write_script,
)

import volley
from volley.exceptions import ActorDiedError, ChannelClosed
from volley.util.queue import Empty, Full, JoinableQueue, Queue

STOP = "stop"


@volley.remote
def produce(q: Queue, items: list, end: object = None) -> int:
    for i in items:
        q.put(i)
    if end is not None:
        q.put(end)
    return len(items)


@volley.remote
def put_one(q: Queue, item: object) -> str:
    q.put(item)
    return "put"


@volley.remote
def get_one(q: Queue) -> object:
    return q.get()


@volley.remote(num_cpus=0)
class Squarer:
    def run(self, inq: Queue, outq: Queue) -> int:
        n = 0
        while (x := inq.get()) != STOP:
            outq.put(x * x)
            n += 1
        outq.put(STOP)
        return n


@volley.remote(num_cpus=0)
class Consumer:
    def pid(self) -> int:
        return os.getpid()

    def take_all(self, q: Queue) -> list:
        got = []
        while (x := q.get(timeout=60)) != STOP:
            got.append(x)
        return got

    def take(self, q: Queue, timeout: float | None = None) -> object:
        return q.get(timeout=timeout)


def test_pipeline_task_to_actor_to_driver(volley_2cpu):
    inq, outq = Queue(), Queue(maxsize=4)
    actor = Squarer.remote()
    done = actor.run.remote(inq, outq)
    n = produce.remote(inq, list(range(100)), STOP)
    got = []
    while (x := outq.get(timeout=60)) != STOP:
        got.append(x)
    assert got == [i * i for i in range(100)]
    assert volley.get([n, done], timeout=60) == [100, 100]
    assert inq.empty() and outq.qsize() == 0


def test_get_timeout_raises_empty_promptly_and_loses_nothing(volley_2cpu):
    q = Queue()
    started = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    took = time.monotonic() - started
    assert 0.19 <= took < 2.0, took
    with pytest.raises(Empty):
        q.get_nowait()
    # Gets that time out over and over while a task puts: every cancelled wait is answered
    # either with an item or with Empty, never both, never neither.
    ref = produce.remote(q, list(range(300)))
    got, timeouts = [], 0
    deadline = time.monotonic() + 60
    while len(got) < 300 and time.monotonic() < deadline:
        try:
            got.append(q.get(timeout=0.0005))
        except Empty:
            timeouts += 1
    assert got == list(range(300)), (len(got), timeouts)
    assert volley.get(ref, timeout=60) == 300
    assert q.qsize() == 0


def test_full_queue_blocks_put_until_a_get(volley_2cpu):
    q = Queue(maxsize=1)
    q.put("a")
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait("x")
    started = time.monotonic()
    with pytest.raises(Full):
        q.put("x", timeout=0.2)
    assert time.monotonic() - started >= 0.19
    blocked = put_one.remote(q, "b")
    ready, _ = volley.wait([blocked], timeout=0.5)
    assert ready == [], "put into a full queue returned before any get"
    assert q.get() == "a"
    assert volley.get(blocked, timeout=60) == "put"
    assert q.get(timeout=10) == "b"
    assert q.empty() and not q.full()


def test_many_producers_and_consumers_deliver_each_item_once(volley_2cpu):
    q = Queue(maxsize=16)
    consumers = [Consumer.remote() for _ in range(3)]
    takes = [c.take_all.remote(q) for c in consumers]
    batches = [list(range(k * 1000, k * 1000 + 250)) for k in range(4)]
    puts = [produce.remote(q, b) for b in batches]
    assert volley.get(puts, timeout=120) == [250] * 4
    for _ in consumers:
        q.put(STOP)
    results = volley.get(takes, timeout=120)
    everything = sorted(x for r in results for x in r)
    assert everything == sorted(x for b in batches for x in b)
    for r in results:  # each consumer saw each producer's items in order
        for b in batches:
            mine = [x for x in r if x in set(b)]
            assert mine == sorted(mine)


def test_tasks_blocked_in_get_lend_their_cpus_to_the_producer(volley_2cpu):
    # Two CPUs, both held by consumer tasks parked in get(): the producer task can only run
    # on a CPU they lend while they wait, as a task blocked in a nested volley.get() does.
    q = Queue()
    takes = [get_one.remote(q) for _ in range(2)]
    time.sleep(0.5)  # let both park
    assert volley.get(produce.remote(q, ["a", "b"]), timeout=60) == 2
    assert sorted(volley.get(takes, timeout=60)) == ["a", "b"]
    # Answered, they took their CPUs back: the node is whole again for plain tasks.
    assert volley.get([put_one.remote(q, i) for i in range(4)], timeout=60) == ["put"] * 4


def test_tasks_blocked_in_put_lend_their_cpus_to_the_consumer(volley_2cpu):
    q = Queue(maxsize=1)
    q.put("first")
    puts = [put_one.remote(q, i) for i in range(2)]  # both park: the queue is full
    time.sleep(0.5)
    got = volley.get([get_one.remote(q) for _ in range(3)], timeout=60)
    assert volley.get(puts, timeout=60) == ["put", "put"]
    assert sorted(map(str, got)) == ["0", "1", "first"]


def test_consumer_killed_while_parked_loses_nothing(volley_2cpu):
    q = Queue()
    victim, other = Consumer.remote(), Consumer.remote()
    pid = volley.get(victim.pid.remote(), timeout=60)
    parked = victim.take.remote(q)
    time.sleep(0.5)  # let it park in get()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        volley.get(parked, timeout=60)
    q.put("next")
    assert volley.get(other.take.remote(q, 30), timeout=60) == "next"


def test_a_consumer_killed_as_the_item_comes_loses_nothing(volley_2cpu):
    """The kill and the put race: the item reaches the dead consumer's parked get (its
    answer fails to send and the item goes back) or the next consumer's."""
    q = Queue()
    for round_ in range(3):
        victim, other = Consumer.remote(), Consumer.remote()
        pid = volley.get(victim.pid.remote(), timeout=60)
        victim.take.remote(q)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        q.put(round_)
        assert volley.get(other.take.remote(q, 30), timeout=60) == round_


def test_shutdown_fails_parked_and_later_ops(volley_2cpu):
    q = Queue()
    waiting = get_one.remote(q)
    time.sleep(0.3)
    q.shutdown()
    with pytest.raises(ChannelClosed, match="shut down"):
        volley.get(waiting, timeout=60)
    with pytest.raises(ChannelClosed):
        q.put(1)
    with pytest.raises(ChannelClosed):
        q.qsize()
    q.shutdown()  # again: nothing happens


def test_joinable_queue_task_done_and_join(volley_2cpu):
    q = JoinableQueue()
    for i in range(3):
        q.put(i)
    assert q.join(timeout=0.1) is False
    for _ in range(3):
        q.get()
        q.task_done()
    assert q.join(timeout=10) is True
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


def test_bad_input_is_refused_clearly(volley_2cpu):
    with pytest.raises(TypeError, match="maxsize"):
        Queue(maxsize="3")
    q = Queue()
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="at most 67108864 bytes"):
        q.put(b"x" * (64 << 20))
    q.put(lambda: 7)  # cloudpickle carries what pickle cannot
    assert q.get()() == 7
    assert "Queue(id=" in repr(q)


CTRL_C_SCRIPT = (
    DRIVER_PRELUDE
    + """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
volley.init(num_cpus=1)
from volley.util.queue import Queue
q = Queue()
print("BLOCKING", flush=True)
try:
    q.get()
    print("RESULT", flush=True)
except KeyboardInterrupt:
    print("CAUGHT " + repr(time.monotonic()), flush=True)
q.put("after")
print("AFTER " + q.get(timeout=10), flush=True)
volley.shutdown()
"""
)


@pytest.mark.usefixtures("no_volley")
def test_ctrl_c_interrupts_a_blocked_get(tmp_path):
    proc = start_driver(write_script(tmp_path, CTRL_C_SCRIPT))
    read_line_with_prefix(proc, "BLOCKING")
    time.sleep(0.5)  # let the driver park in get()
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    caught = float(read_line_with_prefix(proc, "CAUGHT ", timeout=30))
    assert caught - sent < 2.0
    assert read_line_with_prefix(proc, "AFTER ", timeout=30) == "after"
    out, err = finish_driver(proc)
    assert proc.returncode == 0, err


def test_queue_in_a_task_answers_from_the_same_node(volley_2cpu):
    q = Queue()
    ref = produce.remote(q, [json.dumps({"k": 1})])
    assert json.loads(q.get(timeout=60)) == {"k": 1}
    assert volley.get(ref, timeout=60) == 1
    assert poll(lambda: q.empty())


@volley.remote
def put_into_shut_queue(a: Queue, b: Queue) -> str:
    a.put("lost")  # unbounded: sent without waiting for the answer
    try:
        b.qsize()  # a round trip: the failure of the put above has arrived by its end...
        b.qsize()  # ...so this raises it, if the first did not
    except ChannelClosed as e:
        return str(e)
    return "no error"


def test_a_put_without_answer_fails_at_the_next_op(volley_2cpu):
    a, b = Queue(), Queue()
    a.shutdown()
    message = volley.get(put_into_shut_queue.remote(a, b), timeout=60)
    assert f"queue {a._id} was shut down" in message
    assert b.qsize() == 0


@volley.remote(num_cpus=0)
class OneProcess:
    """Two calls in one worker process."""

    def put_and_return(self, q: Queue) -> str:
        q.put("lost")  # unbounded: not waited for; fails, and the call is over before it hears
        return "returned"

    def size(self, q: Queue) -> int:
        return q.qsize()


def test_a_failed_put_a_call_never_heard_of_is_not_raised_by_the_next_call(volley_2cpu):
    shut, good = Queue(), Queue()
    shut.shutdown()
    a = OneProcess.remote()
    assert volley.get(a.put_and_return.remote(shut), timeout=60) == "returned"
    time.sleep(0.3)  # the node's failure notice reaches the worker after the call
    # The next call's own op works: the earlier call's failure is said on the worker's
    # stderr, not raised here as if it were this call's.
    assert volley.get(a.size.remote(good), timeout=60) == 0
    good.shutdown()


def test_shutdown_of_volley_ends_a_blocked_get(volley_2cpu):
    import threading

    q = Queue()
    errors: list = []

    def blocked() -> None:
        try:
            q.get()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.3)
    volley.shutdown()
    t.join(timeout=10)
    assert not t.is_alive(), "a get blocked in the driver outlived volley.shutdown()"
    assert len(errors) == 1 and "shut down" in str(errors[0]), errors


def test_cancelling_a_task_blocked_in_get_leaves_the_queue_whole(volley_2cpu):
    q = Queue()
    waiting = get_one.remote(q)
    time.sleep(0.5)  # let it park in get()
    volley.cancel(waiting)
    with pytest.raises(volley.exceptions.TaskCancelledError):
        volley.get(waiting, timeout=60)
    q.put("kept")  # the cancelled get is no longer waiting: the item stays for the next
    assert q.get(timeout=10) == "kept"
    assert q.empty()


@volley.remote(num_cpus=1, max_retries=0)
def put_into(q: Queue) -> str:
    q.put("late")  # not waited for: the queue was shut down, so this fails at the node
    return "sent"


@volley.remote(num_cpus=1, max_retries=0)
def size_of(q: Queue) -> int:
    q.qsize()  # the put's failure comes meanwhile
    return q.qsize()


@pytest.mark.one_node("pipelines two tasks on the one worker of a 1-CPU node")
def test_a_failed_put_is_not_raised_in_the_next_task_of_the_worker(no_volley):
    """A put that fails after its task ended (it was not waited for) is that task's failure:
    the next task of the same worker, queued behind it, must not raise it from its own ops."""
    volley.init(num_cpus=1)
    try:
        dead, live = Queue(), Queue()
        dead.shutdown()
        for _ in range(30):
            first, second = put_into.remote(dead), size_of.remote(live)
            assert volley.get([first, second], timeout=60) == ["sent", 0]
    finally:
        volley.shutdown()
