"""volley.multiprocessing against the standard library's multiprocessing, side by side on the
same work in one run: Process start-to-join (fork and spawn), Pipe round trip, Queue
throughput. Runs alternate between the two, each figure is the median of several runs, and
the ratio is multiprocessing's time over volley's (above 1: volley is faster).

    PYTHONPATH=python .venv/bin/python benchmarks/mp_process.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as std
import os
import statistics
import time

import volley
from volley import multiprocessing as vmp


def noop() -> None:
    pass


def echo(conn, n: int) -> None:
    for _ in range(n):
        conn.send(conn.recv())


def drain(q, n: int) -> None:
    for _ in range(n):
        q.get()


def start_join(Process, n: int) -> float:  # noqa: N803
    t = time.perf_counter()
    for _ in range(n):
        p = Process(target=noop)
        p.start()
        p.join()
    return (time.perf_counter() - t) / n


def pipe_round_trip(Process, Pipe, n: int) -> float:  # noqa: N803
    mine, theirs = Pipe()
    p = Process(target=echo, args=(theirs, n))
    p.start()
    mine.send(0)
    mine.recv()  # the child is up
    t = time.perf_counter()
    for i in range(n - 1):
        mine.send(i)
        mine.recv()
    dt = (time.perf_counter() - t) / (n - 1)
    p.join()
    return dt


def queue_throughput(Process, Queue, n: int) -> float:  # noqa: N803
    """Items per second from this process to a child that gets them all."""
    q = Queue()
    p = Process(target=drain, args=(q, n))
    p.start()
    t = time.perf_counter()
    for i in range(n):
        q.put(i)
    p.join()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n_start = 10 if args.quick else 50
    n_rt = 200 if args.quick else 2000
    n_q = 2000 if args.quick else 20000
    volley.init(num_cpus=2)
    fork, spawn = std.get_context("fork"), std.get_context("spawn")
    cases = [
        ("Process start-to-join, s", "fork", lambda: start_join(fork.Process, n_start),
         lambda: start_join(vmp.Process, n_start), False),
        ("Process start-to-join, s", "spawn", lambda: start_join(spawn.Process, n_start // 5),
         lambda: start_join(vmp.Process, n_start), False),
        ("Pipe round trip, s", "fork", lambda: pipe_round_trip(fork.Process, fork.Pipe, n_rt),
         lambda: pipe_round_trip(vmp.Process, vmp.Pipe, n_rt), False),
        ("Queue put->get, items/s", "fork",
         lambda: queue_throughput(fork.Process, fork.Queue, n_q),
         lambda: queue_throughput(vmp.Process, vmp.Queue, n_q), True),
    ]  # fmt: skip
    load = os.getloadavg()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = " ".join(f"{x:.1f}" for x in load)
    print(f"# {when}, {os.cpu_count()} cores, load average {loads}; medians of {args.runs}")
    print(f"{'what':28} {'peer':6} {'multiprocessing':>16} {'volley':>12} {'ratio':>7}")
    for what, method, theirs, ours, higher_is_better in cases:
        a, b = [], []
        for _ in range(args.runs):  # alternated
            a.append(theirs())
            b.append(ours())
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = mb / ma if higher_is_better else ma / mb
        print(f"{what:28} {method:6} {ma:16.6g} {mb:12.6g} {ratio:6.2f}x")
    volley.shutdown()


if __name__ == "__main__":
    main()
