"""The asyncio forms of the primitives, `volley.map` over an ActorPool and big SharedDict
values, against their blocking or plain counterparts, in the same run (issue 20).

Usage: python benchmarks/async_prims.py [--messages 5000] [--runs 3] [--no-write]

Rows (median of `--runs`, the two sides of a row alternated within each run):
- a queue drained by an actor: `await q.get_async()` in an async actor against `q.get()` in a
  plain one (1 KiB items put by a task beforehand), messages/s;
- from the driver, an uncontended `put_async`+`get_async` against `put`+`get`, and
  `async with lock` against `with lock`, µs per pair;
- `volley.map(pool, items, method=...)` against `pool.map(...)`: 2 actors, 400 calls of a
  method that sleeps 1 ms (one item in 10 sleeps 20 ms), seconds;
- a SharedDict value of 8 MB (numpy): `d[k] = a; d[k]` against `volley.get(volley.put(a))`,
  ms.
Replaces `benchmarks/RESULTS-async.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import numpy as np  # noqa: E402

import volley  # noqa: E402
from volley.sync import Lock  # noqa: E402
from volley.util import ActorPool  # noqa: E402
from volley.util.queue import Queue  # noqa: E402

PAYLOAD = b"x" * 1024


@volley.remote(num_cpus=0)
def fill(q: Queue, n: int) -> int:
    for _ in range(n):
        q.put(PAYLOAD)
    return n


@volley.remote(num_cpus=0)
class SyncDrain:
    def run(self, q: Queue, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            q.get()
        return time.perf_counter() - t0


@volley.remote(num_cpus=0)
class AsyncDrain:
    async def run(self, q: Queue, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await q.get_async()
        return time.perf_counter() - t0


@volley.remote(num_cpus=0)
class Sleeper:
    def work(self, v: int) -> int:
        time.sleep(0.02 if v % 10 == 0 else 0.001)
        return v


def drain_rate(actor, n: int) -> float:
    q = Queue()
    volley.get(fill.remote(q, n))
    took = volley.get(actor.run.remote(q, n))
    q.shutdown()
    return n / took


def driver_pair_us(n: int, use_async: bool) -> float:
    q = Queue()

    async def run_async() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await q.put_async(PAYLOAD)
            await q.get_async()
        return time.perf_counter() - t0

    if use_async:
        took = asyncio.run(run_async())
    else:
        t0 = time.perf_counter()
        for _ in range(n):
            q.put(PAYLOAD)
            q.get()
        took = time.perf_counter() - t0
    q.shutdown()
    return took / n * 1e6


def lock_pair_us(n: int, use_async: bool) -> float:
    lock = Lock()

    async def run_async() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            async with lock:
                pass
        return time.perf_counter() - t0

    if use_async:
        took = asyncio.run(run_async())
    else:
        t0 = time.perf_counter()
        for _ in range(n):
            with lock:
                pass
        took = time.perf_counter() - t0
    lock.shutdown()
    return took / n * 1e6


def pool_map_s(pool: ActorPool, through_volley: bool) -> float:
    t0 = time.perf_counter()
    if through_volley:
        out = list(volley.map(pool, range(400), method="work"))
    else:
        out = list(pool.map(lambda a, v: a.work.remote(v), range(400)))
    assert out == list(range(400))
    return time.perf_counter() - t0


def big_value_ms(a: np.ndarray, through_dict: bool) -> float:
    d = volley.SharedDict("bench-big")
    t0 = time.perf_counter()
    if through_dict:
        d["a"] = a
        b = d["a"]
    else:
        b = volley.get(volley.put(a))
    took = time.perf_counter() - t0
    assert b.nbytes == a.nbytes
    del b
    d.clear()
    return took * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    n, runs = args.messages, args.runs
    load_before = os.getloadavg()[0]
    volley.init(num_cpus=2)
    sync_a, async_a = SyncDrain.remote(), AsyncDrain.remote()
    pool = ActorPool([Sleeper.remote() for _ in range(2)])
    a = np.arange(1_000_000, dtype=np.float64)
    # Warm-up: workers started, code loaded.
    drain_rate(sync_a, 200), drain_rate(async_a, 200)
    driver_pair_us(100, True), lock_pair_us(100, True), big_value_ms(a, True)
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for _ in range(runs):
        add("drain_sync", drain_rate(sync_a, n))
        add("drain_async", drain_rate(async_a, n))
        add("pair_sync", driver_pair_us(n, False))
        add("pair_async", driver_pair_us(n, True))
        add("lock_sync", lock_pair_us(n, False))
        add("lock_async", lock_pair_us(n, True))
        add("pool_map", pool_map_s(pool, False))
        add("volley_map", pool_map_s(pool, True))
        add("put_get", big_value_ms(a, False))
        add("dict_big", big_value_ms(a, True))
    volley.shutdown()
    load_after = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in rows.items()}

    def runs_of(k: str, fmt: str) -> str:
        return ", ".join(format(x, fmt) for x in rows[k])

    lines = [
        "# asyncio primitives, `volley.map` over an ActorPool, big SharedDict values (issue 20)",
        "",
        f"`python benchmarks/async_prims.py --messages {n} --runs {runs}`, "
        f"{datetime.date.today()}, {os.cpu_count()} cores. Load average (1 min) "
        f"{load_before:.1f} before, {load_after:.1f} after (a shared machine: rerun on a quiet "
        "one before quoting).",
        "",
        "| row | blocking / plain | asyncio / new | runs (plain; new) |",
        "|---|---:|---:|---|",
        f"| actor drains a queue, 1 KiB, messages/s | {med['drain_sync']:,.0f} | "
        f"{med['drain_async']:,.0f} | {runs_of('drain_sync', ',.0f')}; "
        f"{runs_of('drain_async', ',.0f')} |",
        f"| driver put+get, µs a pair | {med['pair_sync']:.1f} | {med['pair_async']:.1f} | "
        f"{runs_of('pair_sync', '.1f')}; {runs_of('pair_async', '.1f')} |",
        f"| driver lock acquire+release, µs a pair | {med['lock_sync']:.1f} | "
        f"{med['lock_async']:.1f} | {runs_of('lock_sync', '.1f')}; "
        f"{runs_of('lock_async', '.1f')} |",
        f"| 400 calls on a 2-actor pool, s (`pool.map`; `volley.map(pool, ...)`) | "
        f"{med['pool_map']:.2f} | {med['volley_map']:.2f} | {runs_of('pool_map', '.2f')}; "
        f"{runs_of('volley_map', '.2f')} |",
        f"| 8 MB numpy, ms (`get(put(a))`; SharedDict set+get) | {med['put_get']:.1f} | "
        f"{med['dict_big']:.1f} | {runs_of('put_get', '.1f')}; {runs_of('dict_big', '.1f')} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "RESULTS-async.md").write_text(text)


if __name__ == "__main__":
    main()
