"""Queues and channels between two processes on one node: volley's `util.queue.Queue` and
`volley.channel.Channel` (buffered and rendezvous) against `multiprocessing.Queue` (and Ray's
`util.queue.Queue` where Ray is installed), 1 KiB messages, one producer process and one
consumer process, in the same run; and a channel ping-pong round trip against a task's.

Usage: python benchmarks/channels.py [--messages 20000] [--runs 3] [--no-write]

The queue rows run with batches (a consumer that keeps getting takes up to 64 items a round
trip, docs/queue.md) and, in a fresh session of their own each run, without
(`VOLLEY_QUEUE_BATCH=1`: one round trip a get, as before batches).

Each row is the median of `--runs` runs of messages/s, timed in the consumer from its first
item to its last (the producer starts first; start-up is not counted). volley's producer is a
task and its consumer an actor (both worker processes); multiprocessing's are two
`multiprocessing.Process`es (fork). Rows also: an uncontended put+get round trip from the
driver. Replaces `benchmarks/RESULTS-channels.md`.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import volley  # noqa: E402
from volley.channel import Channel  # noqa: E402
from volley.util.queue import Queue  # noqa: E402

PAYLOAD = b"x" * 1024
BIG = 100 << 20  # the 100 MB numpy payload


def _mp_producer(q, n: int) -> None:
    for _ in range(n):
        q.put(PAYLOAD)


def _mp_consumer(q, n: int, out) -> None:
    q.get()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    out.put(time.perf_counter() - t0)


def mp_rate(n: int) -> float:
    ctx = mp.get_context("fork")
    q, out = ctx.Queue(), ctx.Queue()
    cons = ctx.Process(target=_mp_consumer, args=(q, n, out))
    prod = ctx.Process(target=_mp_producer, args=(q, n))
    cons.start()
    prod.start()
    took = out.get()
    prod.join()
    cons.join()
    return (n - 1) / took


@volley.remote
def _v_producer(q: Queue, n: int) -> int:
    for _ in range(n):
        q.put(PAYLOAD)
    return n


@volley.remote(num_cpus=0)
class _VConsumer:
    def ready(self) -> bool:
        return True

    def drain(self, q: Queue, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            q.get_nowait()
        return time.perf_counter() - t0

    def fill(self, q: Queue, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            q.put(PAYLOAD)
        q.qsize()  # the last put has reached the node
        return time.perf_counter() - t0

    def recv_all(self, ch: Channel, n: int) -> float:
        ch.recv()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            ch.recv()
        return time.perf_counter() - t0

    def recv_at(self, ch: Channel) -> float:
        """When a large message arrived (perf_counter is the machine's monotonic clock)."""
        x = ch.recv()
        at = time.perf_counter()
        assert x.nbytes == BIG
        return at

    def run(self, q: Queue, n: int) -> float:
        q.get()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            q.get()
        return time.perf_counter() - t0


@volley.remote
def _c_producer(ch: Channel, n: int) -> int:
    for _ in range(n):
        ch.send(PAYLOAD)
    return n


@volley.remote
def _noop() -> None:
    return None


@volley.remote(num_cpus=0)
class _Echo:
    def run(self, inp: Channel, out: Channel) -> int:
        n = 0
        while (x := inp.recv()) is not None:
            out.send(x)
            n += 1
        return n


def channel_rate(n: int, consumer, capacity: int) -> float:
    """A task sends, an actor receives, on a channel of `capacity` (0: rendezvous)."""
    ch = Channel(capacity)
    took = consumer.recv_all.remote(ch, n)
    prod = _c_producer.remote(ch, n)
    rate = (n - 1) / volley.get(took)
    volley.get(prod)
    ch.poison()
    return rate


def channel_round_trip(n: int, echo) -> float:
    """µs per driver -> actor -> driver ping-pong over two rendezvous channels."""
    a, b = Channel(), Channel()
    done = echo.run.remote(a, b)
    a.send(PAYLOAD)
    b.recv()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send(PAYLOAD)
        b.recv()
    took = time.perf_counter() - t0
    a.send(None)
    volley.get(done)
    return took / n * 1e6


def big_message(consumer) -> tuple[float, float]:
    """ms for a 100 MiB numpy array to cross a channel from the driver to an actor (the actor
    waiting in recv), and ms for one memcpy of it."""
    import numpy as np

    arr = np.ones(BIG // 8)
    ch = Channel(1)
    at = consumer.recv_at.remote(ch)
    time.sleep(0.3)  # let the actor park in recv
    t0 = time.perf_counter()
    ch.send(arr)
    crossed = volley.get(at) - t0
    dst = np.zeros_like(arr)  # pages touched: the copy is timed, not the page faults
    copies = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, arr)
        copies.append(time.perf_counter() - t0)
    return crossed * 1e3, statistics.median(copies) * 1e3


def task_round_trip(n: int) -> float:
    """µs per `volley.get(noop.remote())` from the driver."""
    volley.get(_noop.remote())
    t0 = time.perf_counter()
    for _ in range(n):
        volley.get(_noop.remote())
    return (time.perf_counter() - t0) / n * 1e6


def volley_rate(n: int, consumer) -> float:
    q = Queue()
    took = consumer.run.remote(q, n)
    prod = _v_producer.remote(q, n)
    rate = (n - 1) / volley.get(took)
    volley.get(prod)
    q.shutdown()
    return rate


def one_side(n: int, consumer) -> tuple[float, float]:
    """A worker's puts alone (unbounded: not waited for) and its gets alone (from a full
    queue: one round trip each), messages/s."""
    q = Queue()
    put = n / volley.get(consumer.fill.remote(q, n))
    get = n / volley.get(consumer.drain.remote(q, n))
    q.shutdown()
    return put, get


def driver_round_trip(n: int) -> float:
    """µs per put+get from the driver (its embedded node: no socket)."""
    q = Queue()
    t0 = time.perf_counter()
    for _ in range(n):
        q.put(PAYLOAD)
        q.get()
    took = time.perf_counter() - t0
    q.shutdown()
    return took / n * 1e6


def ray_rate(n: int) -> float | None:
    try:
        import ray
        from ray.util.queue import Queue as RayQueue
    except ImportError:
        return None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def prod(q, n):
            for _ in range(n):
                q.put(PAYLOAD)

        @ray.remote
        def cons(q, n):
            q.get()
            t0 = time.perf_counter()
            for _ in range(n - 1):
                q.get()
            return time.perf_counter() - t0

        q = RayQueue()
        c = cons.remote(q, n)
        prod.remote(q, n)
        return (n - 1) / ray.get(c)
    finally:
        ray.shutdown()


def queue_only(n: int) -> None:
    """One task -> actor run and one gets-alone run in a session of their own: prints both."""
    volley.init(num_cpus=2)
    consumer = _VConsumer.remote()
    volley.get(consumer.ready.remote())
    volley_rate(1000, consumer)  # warm
    rate = volley_rate(n, consumer)
    _, get = one_side(n, consumer)
    volley.shutdown()
    print(f"{rate} {get}")


def unbatched(n: int) -> tuple[float, float]:
    """The queue rows with batches off (`VOLLEY_QUEUE_BATCH=1`), in a fresh session."""
    env = dict(os.environ, VOLLEY_QUEUE_BATCH="1")
    cmd = [sys.executable, __file__, "--queue-only", "--messages", str(n)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rate, get = out.split()[-2:]
    return float(rate), float(get)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--queue-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.messages
    if args.queue_only:
        return queue_only(n)
    load_before = os.getloadavg()[0]
    volley.init(num_cpus=2)
    consumer = _VConsumer.remote()
    volley.get(consumer.ready.remote())
    volley_rate(1000, consumer)  # warm: workers started, code shipped
    echo = _Echo.remote()
    channel_rate(1000, consumer, 64)
    v, m, cb, cr, crt, trt, big, off = [], [], [], [], [], [], [], []
    for _ in range(args.runs):  # alternated in one run
        v.append(volley_rate(n, consumer))
        off.append(unbatched(n))
        m.append(mp_rate(n))
        cb.append(channel_rate(n, consumer, 64))
        cr.append(channel_rate(n, consumer, 0))
        crt.append(channel_round_trip(2000, echo))
        trt.append(task_round_trip(2000))
        big.append(big_message(consumer))
    sides = [one_side(n, consumer) for _ in range(args.runs)]
    put_alone = statistics.median(p for p, _ in sides)
    get_alone = statistics.median(g for _, g in sides)
    rt = statistics.median(driver_round_trip(5000) for _ in range(args.runs))
    volley.shutdown()
    ray = ray_rate(min(n, 2000))
    vm, mm = statistics.median(v), statistics.median(m)
    cbm, crm = statistics.median(cb), statistics.median(cr)
    crtm, trtm = statistics.median(crt), statistics.median(trt)
    bigm = statistics.median(b for b, _ in big)
    cpym = statistics.median(c for _, c in big)
    offm = statistics.median(r for r, _ in off)
    off_get = statistics.median(g for _, g in off)
    load_after = os.getloadavg()[0]
    rows = [
        (
            "volley `util.queue.Queue` (task -> actor)",
            f"{vm:,.0f}",
            ", ".join(f"{x:,.0f}" for x in v),
        ),
        (
            "volley `util.queue.Queue`, batches off (`VOLLEY_QUEUE_BATCH=1`)",
            f"{offm:,.0f}",
            ", ".join(f"{r:,.0f}" for r, _ in off),
        ),
        ("`multiprocessing.Queue` (fork)", f"{mm:,.0f}", ", ".join(f"{x:,.0f}" for x in m)),
        (
            "volley `channel.Channel(64)` buffered (task -> actor)",
            f"{cbm:,.0f}",
            ", ".join(f"{x:,.0f}" for x in cb),
        ),
        (
            "volley `channel.Channel(0)` rendezvous (task -> actor)",
            f"{crm:,.0f}",
            ", ".join(f"{x:,.0f}" for x in cr),
        ),
    ]
    if ray is not None:
        rows.append(("Ray `util.queue.Queue`", f"{ray:,.0f}", "one run"))
    lines = [
        "# Queues and channels (issue 20)",
        "",
        f"`python benchmarks/channels.py --messages {n} --runs {args.runs}`, "
        f"{datetime.date.today()}, {os.cpu_count()} cores. 1 KiB messages, one producer "
        "process, one consumer process, messages/s timed in the consumer (median of the runs; "
        "the runs alternate volley and multiprocessing). Load average (1 min) "
        f"{load_before:.1f} before, {load_after:.1f} after: on a shared machine the figures "
        "vary by 2x from run to run; rerun on a quiet one.",
        "",
        "| queue | messages/s (median) | runs |",
        "|---|---:|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"volley / multiprocessing: **{vm / mm:.2f}x** (batches off: {offm / mm:.2f}x); "
        f"buffered channel / multiprocessing: **{cbm / mm:.2f}x**"
        + (f"; volley / Ray: **{vm / ray:.0f}x**" if ray else "; Ray: not installed here"),
        "",
        f"One worker alone: puts (unbounded queue, not waited for) {put_alone:,.0f}/s; gets "
        f"from a full queue {get_alone:,.0f}/s with batches, {off_get:,.0f}/s without (one "
        f"round trip each, {1e6 / off_get:.0f} µs a get). Driver put+get on its embedded "
        f"node (no socket): {rt:.1f} µs.",
        "",
        f"Channel ping-pong (driver -> actor -> driver over two rendezvous channels, 1 KiB): "
        f"**{crtm:.0f} µs** a round trip (runs: {', '.join(f'{x:.0f}' for x in crt)}); a task "
        f"round trip (`volley.get(noop.remote())`): {trtm:.0f} µs (runs: "
        f"{', '.join(f'{x:.0f}' for x in trt)}); ratio **{crtm / trtm:.2f}x** (target <= 2x). "
        "A rendezvous send waits for its answer (it completes only when a receiver took the "
        "item): one message per round trip to the node.",
        "",
        f"A 100 MiB numpy array crosses a channel (driver -> actor waiting in recv: put in "
        f"the object store, ref through the channel, a view on the other side) in "
        f"**{bigm:.0f} ms** (runs: {', '.join(f'{b:.0f}' for b, _ in big)}); one memcpy of it "
        f"(into memory already touched, median of 3) takes {cpym:.0f} ms: "
        f"**{bigm / cpym:.2f}x** (target <= 2x). The first run also pays the store's first "
        "touch of its pages.",
        "",
        "How: `multiprocessing.Queue`'s consumer reads a pipe the producer's feeder thread "
        "writes, with no third process. A volley `get` alone is a round trip to the node (the "
        "driver process): the consumer's request, the node's reader, the answer, the "
        "consumer's reader thread, its main thread (acknowledgements ride on the next request "
        "and unbounded puts are not waited for). A consumer that keeps getting from a queue "
        "with a backlog takes up to 64 items a round trip (docs/queue.md, 'Batches'); the "
        "items wait in its connection, still counted by qsize, recalled when another process "
        "waits. A buffered channel streams the same way (docs/channel.md, 'Streaming'): a "
        "worker that receives alone takes batches whose items keep their room in the buffer "
        "until handed out, and a worker that sends alone is granted slots of the buffer that "
        "its sends fill without waiting; the capacity holds exactly. A rendezvous channel "
        "still moves one message per round trip.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "RESULTS-channels.md").write_text(text)


if __name__ == "__main__":
    main()
