"""Where a worker's primitive op spends its time: CPU per op of each thread involved (the
worker's main and reader threads, the driver's node reader for that worker), user and system
time apart, from /proc (Linux), against the wall time per op.

Usage: python benchmarks/prim_cpu.py [--ops 20000]

Rows: an uncontended `sync.Lock` acquire+release pair in an actor, and a `util.queue` get
from a full queue in an actor (with batches unless VOLLEY_QUEUE_BATCH=1). Prints only (no
results file): the figures go in benchmarks/RESULTS-locks.md's and RESULTS-channels.md's
discussions.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import volley  # noqa: E402
from volley.sync import Lock  # noqa: E402
from volley.util.queue import Queue  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> dict[str, tuple[float, float]]:
    """Per thread (by its /proc path): name, user and system seconds."""
    out = {}
    for d in glob.glob(f"/proc/{pid}/task/*"):
        try:
            name = Path(d, "comm").read_text().strip()
            fields = Path(d, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[d] = (name, int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


def per_op(before: dict, after: dict, n: int) -> str:
    by_name: dict[str, list[float]] = {}
    for k, (name, u, s) in after.items():
        _, u0, s0 = before.get(k, (name, 0.0, 0.0))
        acc = by_name.setdefault(name, [0.0, 0.0])
        acc[0] += u - u0
        acc[1] += s - s0
    parts = [
        f"{name} {u / n * 1e6:.1f}+{s / n * 1e6:.1f}"
        for name, (u, s) in sorted(by_name.items())
        if u + s > 0
    ]
    return ", ".join(parts) or "-"


@volley.remote(num_cpus=0)
class _Worker:
    def pid(self) -> int:
        return os.getpid()

    def pairs(self, lock: Lock, n: int) -> None:
        for _ in range(n):
            lock.acquire()
            lock.release()

    def gets(self, q: Queue, n: int) -> None:
        for _ in range(n):
            q.get_nowait()


def measure(label: str, w, wpid: int, call, n: int) -> None:
    a, d = cpu(wpid), cpu(os.getpid())
    t0 = time.perf_counter()
    volley.get(call())
    wall = (time.perf_counter() - t0) / n * 1e6
    print(f"{label}: {wall:.1f} µs wall per op; CPU µs per op (user+system):")
    print(f"  worker: {per_op(a, cpu(wpid), n)}")
    print(f"  driver (node): {per_op(d, cpu(os.getpid()), n)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=20000)
    n = ap.parse_args().ops
    volley.init(num_cpus=2)
    w = _Worker.remote()
    wpid = volley.get(w.pid.remote())
    volley.get(w.pairs.remote(Lock(), 100))  # warm
    lock = Lock()
    measure("lock acquire+release", w, wpid, lambda: w.pairs.remote(lock, n), n)
    q = Queue()
    for _ in range(n):
        q.put(b"x" * 1024)
    measure("queue get (1 KiB, full queue)", w, wpid, lambda: w.gets.remote(q, n), n)
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}")
    volley.shutdown()


if __name__ == "__main__":
    main()
