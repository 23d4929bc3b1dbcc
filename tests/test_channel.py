"""volley.channel: CSP channels on the node's primitive service, with real processes: CSP
networks of tasks and actors, rendezvous, select, poison, retire, broadcast, a SIGKILLed
receiver and a SIGINTed driver."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from conftest import (
    DRIVER_PRELUDE,
    finish_driver,
    read_line_with_prefix,
    start_driver,
    write_script,
)

import volley
from volley.channel import (
    Channel,
    ChannelClosed,
    ChannelPoisoned,
    ChannelRetired,
    ReaderEnd,
    WriterEnd,
    select,
)
from volley.exceptions import ActorDiedError

# In the test cluster (VOLLEY_TEST_CLUSTER=1) the tasks and actors here run on other nodes than
# the driver's channels: their ops are forwarded to the channels' home.

# Stages block in channel ops for long stretches: they take no CPU slot, so that a network of
# more stages than CPUs runs (until blocked ops lend their CPU).


@volley.remote(num_cpus=0)
def producer(out: WriterEnd, items: list) -> int:
    with out:
        for x in items:
            out(x)
    return len(items)


@volley.remote(num_cpus=0)
def keep_even(inp: ReaderEnd, out: WriterEnd) -> int:
    n = 0
    with inp, out:
        for x in inp:
            if x % 2 == 0:
                out(x)
                n += 1
    return n


@volley.remote(num_cpus=0)
def sender(ch: Channel, tag: str, n: int) -> int:
    for i in range(n):
        ch.send((tag, i))
    return n


@volley.remote(num_cpus=0)
def send_one(ch: Channel, x: object) -> float:
    ch.send(x)
    return time.time()


@volley.remote(num_cpus=0)
def stage(inp: ReaderEnd, out: WriterEnd) -> str:
    """Forwards until poisoned, then poisons its output (PyCSP's poison spreading)."""
    try:
        while True:
            out(inp() + 1)
    except ChannelPoisoned:
        out.poison()
        return "poisoned"


@volley.remote(num_cpus=0)
def collect(inp: ReaderEnd) -> list:
    return list(inp)


@volley.remote(num_cpus=0)
class Sink:
    def pid(self) -> int:
        return os.getpid()

    def recv(self, ch: Channel, timeout: float | None = None) -> object:
        return ch.recv(timeout=timeout)

    def drain(self, inp: ReaderEnd) -> list:
        return list(inp)

    def sums(self, ch: Channel, n: int) -> list:
        out = []
        for _ in range(n):
            x = ch.recv(timeout=60)
            out.append((type(x).__name__, int(np.asarray(x).sum())))
        return out


@volley.remote(num_cpus=0)
def send_arrays(ch: Channel, n: int) -> str:
    for i in range(n):
        ch.send(np.full(1 << 18, i, dtype=np.int64))  # 2 MiB: through the object store
    return "sent"


def test_producer_filter_consumer_network(volley_2cpu):
    a, b = Channel(), Channel(capacity=4)
    sink = Sink.remote()
    got = sink.drain.remote(b.reader())
    kept = keep_even.remote(a.reader(), b.writer())
    made = [producer.remote(a.writer(), list(range(k, 60, 3))) for k in range(3)]
    assert sorted(volley.get(got, timeout=60)) == list(range(0, 60, 2))
    assert volley.get(kept, timeout=60) == 30
    assert volley.get(made, timeout=60) == [20, 20, 20]


@volley.remote
def double_all(inp: ReaderEnd, out: WriterEnd) -> str:
    with inp, out:
        for x in inp:
            out(x * 2)
    return "done"


@volley.remote
def total(inp: ReaderEnd) -> int:
    with inp:
        return sum(inp)


def test_more_one_cpu_stages_than_cpus_run_because_blocked_ops_lend_their_cpu(volley_2cpu):
    a, b = Channel(), Channel()
    refs = [total.remote(b.reader()), double_all.remote(a.reader(), b.writer())]
    refs.append(producer.options(num_cpus=1).remote(a.writer(), list(range(100))))
    assert volley.get(refs, timeout=60) == [9900, "done", 100]


def test_rendezvous_send_waits_for_a_receiver(volley_2cpu):
    ch = Channel()
    sent = send_one.remote(ch, "x")
    ready, _ = volley.wait([sent], timeout=1.0)
    assert ready == [], "a send on a rendezvous channel returned before any recv"
    before = time.time()
    assert ch.recv(timeout=30) == "x"
    assert volley.get(sent, timeout=30) >= before - 0.01


def test_buffered_channel_backpressures_the_sender(volley_2cpu):
    ch = Channel(capacity=2)
    ch.send(1)
    ch.send(2)
    with pytest.raises(TimeoutError, match="buffer room"):
        ch.send(3, timeout=0.2)
    blocked = send_one.remote(ch, 3)
    ready, _ = volley.wait([blocked], timeout=1.0)
    assert ready == []
    assert [ch.recv(), ch.recv(), ch.recv(timeout=30)] == [1, 2, 3]
    volley.get(blocked, timeout=30)


def test_select_over_two_fed_channels_takes_from_both(volley_2cpu):
    a, b = Channel(capacity=100), Channel(capacity=100)
    feeds = [sender.remote(a, "a", 100), sender.remote(b, "b", 100)]
    # Both channels full (their feeders done): every select has two ready guards, and a fair
    # select takes from both rather than draining the first.
    assert volley.get(feeds, timeout=60) == [100, 100]
    seen: dict = {"a": [], "b": []}
    for _ in range(100):
        index, (tag, i) = select([a.recv, b.recv], timeout=60)
        assert tag == "ab"[index]
        seen[tag].append(i)
    assert min(len(seen["a"]), len(seen["b"])) >= 30, {k: len(v) for k, v in seen.items()}
    for _ in range(100):
        tag, i = select([a.recv, b.recv], timeout=60)[1]
        seen[tag].append(i)
    assert seen == {"a": list(range(100)), "b": list(range(100))}


def test_select_send_guard_timeout_and_skip(volley_2cpu):
    a, b = Channel(), Channel(capacity=1)
    assert select([a.recv, (b.send, "v")]) == (1, None)
    assert select([a.recv, b.recv], skip=True) == (1, "v")
    assert select([a.recv, b.recv], skip=True) == (None, None)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="select on channels"):
        select([a.recv, b.recv], timeout=0.2)
    assert 0.19 <= time.monotonic() - started < 5
    # The timed-out select is gone from both channels: a send waits for a real receiver.
    with pytest.raises(TimeoutError):
        a.send("lost?", timeout=0.2)


def test_poison_spreads_through_a_pipeline(volley_2cpu):
    c0, c1, c2, c3 = (Channel() for _ in range(4))
    stages = [stage.remote(x.reader(), y.writer()) for x, y in [(c0, c1), (c1, c2), (c2, c3)]]
    out = c3.reader()
    c0.send(1)
    assert out.recv(timeout=60) == 4
    c0.poison()
    assert volley.get(stages, timeout=60) == ["poisoned"] * 3
    with pytest.raises(ChannelPoisoned, match="poisoned"):
        out.recv(timeout=30)
    for ch in (c0, c1, c2, c3):
        with pytest.raises(ChannelPoisoned):
            ch.send("x", timeout=30)


def test_retire_of_all_writers_ends_iteration(volley_2cpu):
    ch = Channel(capacity=2)
    got = collect.remote(ch.reader())
    writers = [producer.remote(ch.writer(), [k] * 5) for k in range(3)]
    assert sorted(volley.get(got, timeout=60)) == sorted([0] * 5 + [1] * 5 + [2] * 5)
    assert volley.get(writers, timeout=30) == [5, 5, 5]
    with pytest.raises(ChannelRetired, match="writer ends retired"):
        ch.recv(timeout=30)


def test_retire_of_all_readers_fails_writers(volley_2cpu):
    ch = Channel()
    r1, r2 = ch.reader(), ch.reader()
    r1.retire()
    r1.retire()  # again: nothing happens
    with pytest.raises(ChannelRetired, match="was retired"):
        r1.recv()
    with r2:
        pass
    with pytest.raises(ChannelRetired, match="reader ends retired"):
        ch.send(1, timeout=30)


def test_broadcast_reaches_every_reader(volley_2cpu):
    ch = Channel(capacity=2, broadcast=True)
    sinks = [Sink.remote() for _ in range(3)]
    got = [s.drain.remote(ch.reader()) for s in sinks]
    with ch.writer() as out:
        for i in range(20):
            out(i)
    assert volley.get(got, timeout=60) == [list(range(20))] * 3
    with pytest.raises(ValueError, match="reader end"):
        ch.recv(timeout=1)


def test_large_payloads_travel_through_the_store_and_outlive_the_senders_refs(volley_2cpu):
    import gc

    ch = Channel(capacity=4)
    arr = np.arange(1 << 19, dtype=np.int64)  # 4 MiB
    ch.send(arr)
    ch.send(b"b" * (3 << 20))
    ch.send({"big": "x" * (2 << 20)})  # a pickle over the limit: its bytes go to the store
    del arr
    gc.collect()  # the driver holds no ref of its own now: the node holds them for the messages
    sink = Sink.remote()
    got = volley.get(sink.sums.remote(ch, 1), timeout=60)
    assert got == [("ndarray", sum(range(1 << 19)))]
    assert ch.recv(timeout=60) == b"b" * (3 << 20)
    assert ch.recv(timeout=60) == {"big": "x" * (2 << 20)}
    # From a task (which ends, dropping its refs) to the driver.
    sent = send_arrays.remote(ch, 3)
    assert volley.get(sent, timeout=60) == "sent"
    gc.collect()
    for i in range(3):
        x = ch.recv(timeout=60)
        assert x.shape == (1 << 18,) and int(x[0]) == i and int(x[-1]) == i


def test_receiver_killed_while_parked_loses_nothing(volley_2cpu):
    ch = Channel()
    victim, other = Sink.remote(), Sink.remote()
    pid = volley.get(victim.pid.remote(), timeout=60)
    parked = victim.recv.remote(ch)
    time.sleep(0.5)  # let it park in recv()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        volley.get(parked, timeout=60)
    taking = other.recv.remote(ch, 30)
    ch.send("next", timeout=30)
    assert volley.get(taking, timeout=60) == "next"


def test_a_receiver_killed_as_the_item_comes_loses_nothing(volley_2cpu):
    ch = Channel(capacity=4)
    for round_ in range(3):
        victim, other = Sink.remote(), Sink.remote()
        pid = volley.get(victim.pid.remote(), timeout=60)
        victim.recv.remote(ch)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        ch.send(round_)
        assert volley.get(other.recv.remote(ch, 30), timeout=60) == round_


def test_recv_timeout_names_the_channel(volley_2cpu):
    ch = Channel(name="jobs")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="recv on channel 'jobs' waited 0.2 s for a sender"):
        ch.recv(timeout=0.2)
    assert 0.19 <= time.monotonic() - started < 5
    with pytest.raises(TimeoutError, match="send on channel 'jobs' waited 0.1 s for a receiver"):
        ch.send(1, timeout=0.1)


def test_recvs_timing_out_while_a_task_sends_lose_nothing(volley_2cpu):
    # Every cancelled wait is answered with the item or with a timeout, never both, never
    # neither; on a rendezvous channel the sender's send completes exactly for the items taken.
    ch = Channel()
    sent = sender.remote(ch, "t", 200)
    got, timeouts = [], 0
    deadline = time.monotonic() + 60
    while len(got) < 200 and time.monotonic() < deadline:
        try:
            got.append(ch.recv(timeout=0.0005)[1])
        except TimeoutError:
            timeouts += 1
    assert got == list(range(200)), (len(got), timeouts)
    assert volley.get(sent, timeout=60) == 200


@volley.remote(num_cpus=0)
def recv_one(ch: Channel) -> object:
    return ch.recv()


def test_cancelling_a_task_blocked_in_recv_leaves_the_channel_whole(volley_2cpu):
    ch = Channel(capacity=1)
    waiting = recv_one.remote(ch)
    time.sleep(0.5)  # let it park in recv()
    volley.cancel(waiting)
    with pytest.raises(volley.exceptions.TaskCancelledError):
        volley.get(waiting, timeout=60)
    ch.send("kept")  # the cancelled recv no longer waits: the item stays for the next
    assert ch.recv(timeout=10) == "kept"


def test_bad_input_is_refused_clearly(volley_2cpu):
    with pytest.raises(ValueError, match="capacity"):
        Channel(-1)
    with pytest.raises(TypeError, match="capacity"):
        Channel("3")
    ch = Channel(1)
    with pytest.raises(ValueError, match="timeout"):
        ch.recv(timeout=-1)
    with pytest.raises(ValueError, match="non-empty list of guards"):
        select([])
    with pytest.raises(TypeError, match="select guard"):
        select([ch.send])
    with pytest.raises(TypeError, match="send guard"):
        select([(ch.recv, 1)])
    # A select over channels of two nodes (here: an id naming node 99 as its home, which a
    # lone node does not have): tried node by node, the missing one fails clearly.
    far = Channel._attach((99 << 40) | (ch._id & ((1 << 40) - 1)), 1, False, "far")
    with pytest.raises(ChannelClosed):
        select([ch.recv, far.recv], skip=True)
    # An id this node never made.
    with pytest.raises(ChannelClosed, match="another session|node 0"):
        Channel._attach(12345, 0, False, None).send(1)
    ch.poison()
    with pytest.raises(ChannelPoisoned, match="poisoned"):
        ch.send(1)
    with pytest.raises(ChannelPoisoned):
        select([Channel(1).recv, ch.recv], skip=True)
    w = ch.writer()
    w.retire()
    with pytest.raises(volley.exceptions.SerializationError, match="cannot be passed on"):
        producer.remote(w, [1])


CTRL_C_SCRIPT = (
    DRIVER_PRELUDE
    + """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
volley.init(num_cpus=1)
from volley.channel import Channel, select
a, b = Channel(), Channel()
for what in ("recv", "select"):
    print("BLOCKING " + what, flush=True)
    try:
        a.recv() if what == "recv" else select([a.recv, b.recv])
        print("RESULT", flush=True)
    except KeyboardInterrupt:
        print("CAUGHT " + repr(time.monotonic()), flush=True)
# The interrupted ops are gone from the channels: a send waits for a real receiver.
try:
    a.send("x", timeout=0.3)
    print("AFTER taken", flush=True)
except TimeoutError:
    print("AFTER clean", flush=True)
volley.shutdown()
"""
)


@pytest.mark.usefixtures("no_volley")
def test_ctrl_c_interrupts_a_blocked_recv_and_select(tmp_path):
    proc = start_driver(write_script(tmp_path, CTRL_C_SCRIPT))
    for what in ("recv", "select"):
        read_line_with_prefix(proc, "BLOCKING " + what)
        time.sleep(0.5)  # let the driver park
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        caught = float(read_line_with_prefix(proc, "CAUGHT ", timeout=30))
        assert caught - sent < 2.0
    assert read_line_with_prefix(proc, "AFTER ", timeout=30) == "clean"
    out, err = finish_driver(proc)
    assert proc.returncode == 0, err


# Streaming: a worker that sends alone is granted buffer slots it fills without waiting, and a
# worker that receives alone takes batches (docs/channel.md, "Streaming"). What a user sees
# must not change: the capacity, the order, nothing lost, poison still reaches the sender.


@volley.remote(num_cpus=0)
def send_until_full(ch: Channel) -> int:
    n = 0
    while True:
        try:
            ch.send(n, timeout=1)
        except TimeoutError:
            return n
        n += 1


@volley.remote(num_cpus=0)
def send_until_poisoned(ch: Channel) -> int:
    n = 0
    try:
        while True:
            ch.send(n, timeout=60)
            n += 1
    except ChannelPoisoned:
        return n


@volley.remote(num_cpus=0)
def send_range(ch: Channel, n: int, ends: int) -> int:
    for i in range(n):
        ch.send(i, timeout=60)
    for _ in range(ends):
        ch.send(None, timeout=60)
    return n


@volley.remote(num_cpus=0)
class Taker:
    def pid(self) -> int:
        return os.getpid()

    def until_none(self, ch: Channel) -> list:
        out = []
        while (x := ch.recv(timeout=60)) is not None:
            out.append(x)
        return out

    def take_and_report(self, ch: Channel, n: int, report: Channel) -> None:
        """Takes `n` items, reports them, then stays (with what else it took in its buffer)."""
        for _ in range(n):
            report.send(ch.recv(timeout=60), timeout=60)
        time.sleep(600)


def test_a_streaming_sender_stops_at_the_capacity(volley_2cpu):
    ch = Channel(capacity=8)
    assert volley.get(send_until_full.remote(ch), timeout=60) == 8
    assert [ch.recv(timeout=10) for _ in range(8)] == list(range(8))
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.2)


def test_two_receivers_of_a_stream_get_each_item_once_and_in_order(volley_2cpu):
    ch = Channel(capacity=64)
    a, b = Taker.remote(), Taker.remote()
    got = [a.until_none.remote(ch), b.until_none.remote(ch)]
    sent = send_range.remote(ch, 3000, 2)
    lists = volley.get(got, timeout=120)
    assert volley.get(sent, timeout=60) == 3000
    for part in lists:
        assert part == sorted(part), "a receiver saw items out of the channel's order"
    assert sorted(lists[0] + lists[1]) == list(range(3000))


def test_a_receiver_killed_with_a_batch_in_its_buffer_loses_nothing(volley_2cpu):
    ch, report = Channel(capacity=600), Channel(capacity=600)
    for i in range(500):
        ch.send(i)
    victim = Taker.remote()
    pid = volley.get(victim.pid.remote(), timeout=60)
    victim.take_and_report.remote(ch, 50, report)
    first = [report.recv(timeout=60) for _ in range(50)]
    assert first == list(range(50))
    os.kill(pid, signal.SIGKILL)
    ch.send(None)
    after = volley.get(Taker.remote().until_none.remote(ch), timeout=60)
    assert after == list(range(50, 500)), "items in the killed receiver's buffer were lost"


def test_poison_reaches_a_streaming_sender(volley_2cpu):
    ch = Channel(capacity=32)
    sending = send_until_poisoned.remote(ch)
    assert [ch.recv(timeout=60) for _ in range(200)] == list(range(200))
    ch.poison()
    sent = volley.get(sending, timeout=60)
    assert sent >= 200
