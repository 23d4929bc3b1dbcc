"""Queues between two nodes on loopback: a head (127.0.0.1) and a member (127.0.0.2), each
with one CPU, and this process their driver. 1 KiB messages, one producer task on one node and
one consumer actor on the other, in the same run:

- home at the consumer: the producer's puts are forwarded to the other node (not waited for),
  the consumer's gets are local to its node;
- home at the producer: each get is a round trip to the other node.

Usage: python benchmarks/channels_cluster.py [--messages 20000] [--runs 3] [--no-write]

Each row is the median of `--runs` runs of messages/s, timed in the consumer from its first
item to its last. Replaces `benchmarks/RESULTS-channels-cluster.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import volley  # noqa: E402
from volley.util.queue import Queue  # noqa: E402

PAYLOAD = b"x" * 1024
TOKEN = "bench-token-0123456789"


@volley.remote(num_cpus=0)
class Side:
    """Lives on one node: makes queues there, produces or consumes."""

    def make(self) -> Queue:
        return Queue()

    def produce(self, q: Queue, n: int) -> int:
        for _ in range(n):
            q.put(PAYLOAD)
        return n

    def consume(self, q: Queue, n: int) -> float:
        q.get()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            q.get()
        return (n - 1) / (time.perf_counter() - t0)

    def get_rtt(self, q: Queue, n: int) -> float:
        """µs per put+get pair, each a round trip to the queue's home."""
        t0 = time.perf_counter()
        for _ in range(n):
            q.put(PAYLOAD, timeout=30)
            q.get()
        return (time.perf_counter() - t0) / n * 1e6


def _start(tmp: str, name: str, argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, VOLLEY_SESSION_DIR=os.path.join(tmp, name))
    log_path = os.path.join(tmp, f"{name}.log")
    with open(log_path, "wb") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "volley._cli", "start", *argv, "--num-cpus", "1",
             "--token", TOKEN, "--block"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while "listening on" not in open(log_path).read():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start (see {log_path})")
        time.sleep(0.05)
    return p


def rate(producer, consumer, home, n: int) -> float:
    q = volley.get(home.make.remote())
    took = consumer.consume.remote(q, n)
    prod = producer.produce.remote(q, n)
    r = volley.get(took, timeout=600)
    volley.get(prod, timeout=600)
    q.shutdown()
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    n = args.messages
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="volley-chan-bench-")
    head = _start(tmp, "head", ["--head", "--host", "127.0.0.1", "--port", str(port)])
    member = _start(tmp, "member", ["--address", f"127.0.0.1:{port}", "--host", "127.0.0.2"])
    load_before = os.getloadavg()[0]
    try:
        volley.init(address=f"127.0.0.1:{port}", token=TOKEN)
        deadline = time.monotonic() + 30
        while len([x for x in volley.nodes() if not x["driver"]]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the member did not join")
            time.sleep(0.05)
        ids = [x["node_id"] for x in volley.nodes() if not x["driver"]]
        a, b = (
            Side.options(scheduling_strategy=volley.NodeAffinitySchedulingStrategy(i)).remote()
            for i in ids[:2]
        )
        rate(a, b, b, 1000)  # warm: workers started, code shipped, links open
        at_consumer, at_producer = [], []
        for _ in range(args.runs):  # alternated in one run
            at_consumer.append(rate(a, b, b, n))
            at_producer.append(rate(a, b, a, n))
        q = volley.get(a.make.remote())
        rtt = statistics.median(volley.get(b.get_rtt.remote(q, 2000)) for _ in range(args.runs))
        volley.shutdown()
    finally:
        for p in (member, head):
            p.terminate()
            p.wait(timeout=30)
    load_after = os.getloadavg()[0]

    def row(name: str, xs: list[float]) -> str:
        runs = ", ".join(f"{x:,.0f}" for x in xs)
        return f"| {name} | {statistics.median(xs):,.0f} | {runs} |"

    lines = [
        "# Queues between two nodes (issue 20)",
        "",
        f"`python benchmarks/channels_cluster.py --messages {n} --runs {args.runs}`, "
        f"{datetime.date.today()}, {os.cpu_count()} cores. Two nodes on loopback (a head on "
        "127.0.0.1 and a member on 127.0.0.2, 1 CPU each), 1 KiB messages, one producer on "
        "one node and one consumer on the other, messages/s timed in the consumer (median of "
        f"the runs, alternated). Load average (1 min) {load_before:.1f} before, "
        f"{load_after:.1f} after.",
        "",
        "| queue's home | messages/s (median) | runs |",
        "|---|---:|---|",
        row("at the consumer (puts forwarded, not waited for)", at_consumer),
        row("at the producer (each get a round trip to the other node)", at_producer),
        "",
        f"A put (waited for) and a get from the other node: {rtt:.0f} µs the pair.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "RESULTS-channels-cluster.md").write_text(text)


if __name__ == "__main__":
    main()
