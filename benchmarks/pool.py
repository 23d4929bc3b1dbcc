"""``volley.multiprocessing.Pool`` against ``multiprocessing.Pool`` (fork, the default on Linux)
on the same work, and optionally against another volley build (a before/after of a change).

Usage: python benchmarks/pool.py [--rounds 5] [--base DIR]

Rows (each a fresh ``Pool(2)`` per timing; the time covers the calls, not opening the pool,
except for ``po``):

- ``pm``: ``map`` of a no-op over 100,000 items (default chunksize);
- ``pa``: 300 sequential ``apply`` of a no-op;
- ``pd``: ``map`` over 20,000 items, each returning a small dict (the results' pickling counts);
- ``pc``: ``map`` over 20,000 items, each returning an instance of the script's own dataclass
  (a class of ``__main__``: volley sends it by value);
- ``pn``: ``map`` over 8 items, each returning an 8 MB float64 array;
- ``pi``: ``imap`` over 2,000 items one at a time, each returning a small dict (a chunk's fixed
  costs count);
- ``pb``: 3,000 ``apply_async`` with a callback, then wait for all;
- ``ps``: 200 sequential ``apply_async(callback=...).get()`` (a callback's hand-off counts);
- ``po``: open ``Pool(2, initializer)``, ``map`` over 2 items, ``close``, ``join``.

``--base DIR`` adds a column for the volley package under DIR (a ``python/`` folder holding
``volley`` with its built ``_core``), run with the same interpreter. Each round runs every
system once, in a fresh process each, alternating (A, B, C, A, B, C, ...); a process warms up,
then times each row 3 times and reports its medians; the table gives the median over the
rounds and the range, and the ratios to multiprocessing (and to the base).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROGRAM = r"""
import json, statistics, sys, time
SYSTEM = sys.argv[1]
if SYSTEM == "mp":
    from multiprocessing import Pool
else:
    import volley
    volley.init(num_cpus=2)
    from volley.multiprocessing import Pool
import dataclasses
import numpy as np

@dataclasses.dataclass
class Point:
    x: int
    y: float

def point(i):
    return Point(i, i / 2)

def noop(x=None):
    return None

def record(i):
    return {"i": i, "name": str(i), "vals": [i, i + 1, i + 2]}

def array(i):
    return np.full(1_000_000, float(i))

def timed(body, initializer=None):
    pool = Pool(2, initializer=initializer)
    try:
        t = time.perf_counter()
        body(pool)
        return time.perf_counter() - t
    finally:
        pool.close()
        pool.join()

def pm():
    return timed(lambda p: p.map(noop, range(100_000)))

def pa():
    return timed(lambda p: [p.apply(noop, (i,)) for i in range(300)])

def pd():
    return timed(lambda p: p.map(record, range(20_000)))

def pc():
    return timed(lambda p: p.map(point, range(20_000)))

def pn():
    return timed(lambda p: p.map(array, range(8), chunksize=1))

def pi():
    return timed(lambda p: list(p.imap(record, range(2000))))

def pb():
    def body(p):
        got = []
        for r in [p.apply_async(noop, (i,), callback=got.append) for i in range(3000)]:
            r.wait()
        assert len(got) == 3000
    return timed(body)

def ps():
    return timed(lambda p: [p.apply_async(noop, (i,), callback=noop).get() for i in range(200)])

def po():
    t = time.perf_counter()
    p = Pool(2, initializer=noop)
    p.map(noop, range(2), chunksize=1)
    p.close()
    p.join()
    return time.perf_counter() - t

rows = {"pm": pm, "pa": pa, "pd": pd, "pc": pc, "pn": pn, "pi": pi, "pb": pb, "ps": ps, "po": po}
for f in rows.values():
    f()
print(json.dumps({k: statistics.median(f() for _ in range(3)) for k, f in rows.items()}))
if SYSTEM != "mp":
    volley.shutdown()
"""

ROWS = ["pm", "pa", "pd", "pc", "pn", "pi", "pb", "ps", "po"]


def run_one(system: str, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    env.pop("VOLLEY_ADDRESS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, "mp" if system == "mp" else "volley"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"{system} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--base", help="a python/ folder holding another volley build")
    args = p.parse_args()
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
    systems = {"volley": here, "mp": None}
    if args.base:
        systems["volley-base"] = os.path.abspath(args.base)
    got: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(args.rounds):
        for s, path in systems.items():
            got[s].append(run_one(s, path))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {s: {k: statistics.median(x[k] for x in runs) for k in ROWS} for s, runs in got.items()}
    head = "| row | " + " | ".join(f"{s} (s)" for s in systems) + " | mp / volley |"
    if args.base:
        head += " base / volley |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for k in ROWS:
        cells = []
        for s in systems:
            lo = min(x[k] for x in got[s])
            hi = max(x[k] for x in got[s])
            cells.append(f"{med[s][k]:.4f} ({lo:.4f}-{hi:.4f})")
        line = f"| {k} | " + " | ".join(cells) + f" | {med['mp'][k] / med['volley'][k]:.2f} |"
        if args.base:
            line += f" {med['volley-base'][k] / med['volley'][k]:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
