"""Channels across the nodes of a real cluster (node daemons on 127.0.0.x): a channel lives in
the node that made it, and its ends work from every node, their ops forwarded to its home (the
queue's forwarding); a select over channels of two nodes tries each node in turn."""

from __future__ import annotations

import asyncio

import pytest

import volley
from volley.channel import (
    Channel,
    ChannelPoisoned,
    ReaderEnd,
    WriterEnd,
    select,
    select_async,
)

pytestmark = pytest.mark.timeout(180)


def _on(cluster) -> list:
    ids = {n["address"]: n["node_id"] for n in volley.nodes() if not n["driver"]}
    return [volley.NodeAffinitySchedulingStrategy(ids[a]) for a in cluster.addrs]


@volley.remote(num_cpus=0.25)
def produce(out: WriterEnd, tag: str, n: int) -> str:
    import os

    with out:
        for i in range(n):
            out((tag, i))
    return os.environ["VOLLEY_NODE_ADDRESS"]


@volley.remote(num_cpus=0.25)
def relay(inp: ReaderEnd, out: WriterEnd) -> str:
    """Forwards until poisoned, then poisons its output."""
    try:
        while True:
            out(inp())
    except ChannelPoisoned:
        out.poison()
        return "poisoned"


@volley.remote(num_cpus=0)
class Holder:
    """Holds a writer end until it is killed."""

    def take(self, out: WriterEnd) -> int:
        import os

        self.out = out
        out("hello")
        return os.getpid()


@volley.remote(num_cpus=0)
class Home:
    """Makes channels in its own node."""

    def make(self, capacity: int = 0) -> Channel:
        self.ch = Channel(capacity)
        return self.ch


def test_a_drivers_channel_fed_by_tasks_on_every_node_retires(three_node_cluster):
    ch = Channel(capacity=4)
    on = _on(three_node_cluster)
    refs = [
        produce.options(scheduling_strategy=s).remote(ch.writer(), f"p{k}", 50)
        for k, s in enumerate(on)
    ]
    with ch.reader() as inp:
        got = list(inp)  # ends once the three remote writer ends retired
    assert sorted(volley.get(refs, timeout=60)) == sorted(three_node_cluster.addrs)
    for k in range(3):
        assert [i for tag, i in got if tag == f"p{k}"] == list(range(50))


@volley.remote(num_cpus=0.25)
def send_one(out: WriterEnd, value: object) -> str:
    out(value)
    return "sent"


def test_poison_crosses_nodes_and_select_spans_them(three_node_cluster):
    on = _on(three_node_cluster)
    home = Home.options(scheduling_strategy=on[0]).remote()
    far = volley.get(home.make.remote(0), timeout=60)  # a rendezvous channel on node 0
    near = Channel()
    stage = relay.options(scheduling_strategy=on[1]).remote(far.reader(), near.writer())
    # A select on the remote channel alone goes to its home.
    assert select([(far.send, "hello")], timeout=60) == (0, None)
    assert near.recv(timeout=60) == "hello"
    # Over channels of two nodes: nothing ready, so skip returns at once, a timeout times out.
    assert select([far.recv, near.recv], skip=True) == (None, None)
    with pytest.raises(TimeoutError, match="waited 0.2 s"):
        select([far.recv, near.recv], timeout=0.2)
    with pytest.raises(TimeoutError, match="waited 0.2 s"):
        asyncio.run(select_async([far.recv, near.recv], timeout=0.2))
    # A send from a third node reaches the select through either channel (the relay may
    # take it first from far and pass it on to near): exactly one guard fires.
    sender = send_one.options(scheduling_strategy=on[2]).remote(far.writer(), "x")
    index, value = select([far.recv, near.recv], timeout=60)
    assert (index, value) in ((0, "x"), (1, "x"))
    assert volley.get(sender, timeout=60) == "sent"
    assert select([far.recv, near.recv], skip=True) == (None, None)
    far.poison()
    assert volley.get(stage, timeout=60) == "poisoned"
    with pytest.raises(ChannelPoisoned):
        near.recv(timeout=60)
    volley.kill(home)


def test_a_remote_writer_killed_retires_its_end(three_node_cluster):
    import os
    import signal

    on = _on(three_node_cluster)
    ch = Channel(capacity=1)
    holder = Holder.options(scheduling_strategy=on[1]).remote()
    pid = volley.get(holder.take.remote(ch.writer()), timeout=60)
    with ch.reader() as inp:
        assert inp.recv(timeout=60) == "hello"
        assert select([inp.recv], skip=True) == (None, None)  # not retired: it waits
        os.kill(pid, signal.SIGKILL)
        # Its node tells the channel's home that the end's process is gone: the channel's
        # only writer end retired, and the reader's iteration ends.
        assert list(inp) == []
