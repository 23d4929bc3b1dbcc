"""Per-task cost of two volley builds, side by side: rows (b), (c), (o), (p) of the suite, each
measured in fresh driver processes of each build, alternated (A, B, A, B, ...).

Usage: python benchmarks/ab.py PYTHON_A PYTHON_B [--rounds 7] [--adapters]

With ``--store``, the rows are (g) the tree reduction, (i) put and (j) get of a 100 MiB array and
(u) a 100 MiB transfer to a task on another node (a 0-CPU head and one node on 127.0.0.x), each run
by the suite's own function (benchmarks/systems/volley_.py), three times per process (issue 17).

With ``--adapters``, the rows are the drop-ins' instead (issue 16): ``pm`` Pool(2).map over
100,000 no-op items, ``pi`` Pool(2).imap over 2,000 items one at a time, ``pa`` 500 sequential
``Pool.apply``, ``z`` 10,000 ``Executor.submit`` then every result, ``za`` 1,000 sequential
``submit().result()``, ``w`` joblib ``Parallel(n_jobs=2)`` over 10,000 no-op calls (volley backend).

Each PYTHON is an interpreter with a volley build installed (e.g. a venv with the wheel of an
older commit, and .venv/bin/python). Each process warms up, then times every row 7 times and
reports its medians; the table gives, per build, the median of those over the rounds, and the
range. Used for the before/after figures in RESULTS.md (issue 15).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE_PROCESS = r"""
import json, statistics, time
import volley

volley.init(num_cpus=2)

@volley.remote
def noop():
    return None

@volley.remote
class A:
    def m(self):
        return None

a = A.remote()
volley.get(a.m.remote())

def b():
    t = time.perf_counter(); volley.get([noop.remote() for _ in range(10_000)])
    return time.perf_counter() - t

def c():
    t = time.perf_counter()
    for _ in range(1000):
        volley.get(noop.remote())
    return time.perf_counter() - t

def o():
    t = time.perf_counter(); volley.get([a.m.remote() for _ in range(10_000)])
    return time.perf_counter() - t

def p():
    t = time.perf_counter()
    for _ in range(1000):
        volley.get(a.m.remote())
    return time.perf_counter() - t

rows = {"b": b, "c": c, "o": o, "p": p}
for f in rows.values():
    f()
times = {k: [] for k in rows}
for _ in range(7):
    for k, f in rows.items():
        times[k].append(f())
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
volley.shutdown()
"""


ADAPTERS = r"""
import json, statistics, time
import joblib
import volley
import volley.joblib
from volley.futures import Executor
from volley.multiprocessing import Pool

volley.init(num_cpus=2)

def noop(x=None):
    return x

ex = Executor()

# Each pool row opens its pool outside the timed region and closes it after: before issue 16 an
# open pool held every CPU, so the Executor and joblib rows would wait for ever beside one.
def with_pool(body):
    pool = Pool(2)
    pool.map(noop, range(4))
    t = time.perf_counter()
    body(pool)
    took = time.perf_counter() - t
    pool.close(); pool.join()
    return took

def pm():
    return with_pool(lambda pool: pool.map(noop, range(100_000)))

def pi():
    return with_pool(lambda pool: list(pool.imap(noop, range(2000))))

def pa():
    return with_pool(lambda pool: [pool.apply(noop, (i,)) for i in range(500)])

def z():
    t = time.perf_counter()
    fs = [ex.submit(noop, i) for i in range(10_000)]
    [f.result() for f in fs]
    return time.perf_counter() - t

def za():
    t = time.perf_counter()
    for i in range(1000):
        ex.submit(noop, i).result()
    return time.perf_counter() - t

def w():
    t = time.perf_counter()
    with joblib.parallel_config(backend="volley", n_jobs=2):
        joblib.Parallel()(joblib.delayed(noop)(i) for i in range(10_000))
    return time.perf_counter() - t

rows = {"pm": pm, "pi": pi, "pa": pa, "z": z, "za": za, "w": w}
for f in rows.values():
    f()
times = {k: [] for k in rows}
for _ in range(5):
    for k, f in rows.items():
        times[k].append(f())
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
ex.shutdown()
volley.shutdown()
"""


STORE = r"""
import json, statistics
from benchmarks.systems import volley_

rows = {"g": volley_.g, "i": volley_.i, "j": volley_.j, "u": volley_.u}
times = {k: [] for k in rows}
for _ in range(3):
    for k, f in rows.items():
        v = f()
        times[k].append(v["value"] if isinstance(v, dict) else v)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""


def _ms(median: float, values: list[float]) -> str:
    """A median and range in ms, or in µs below a millisecond (row j is a few µs)."""
    if median >= 1:
        return f"{median:.1f} ms ({min(values):.0f}-{max(values):.0f})"
    return f"{median * 1e3:.1f} µs ({min(values) * 1e3:.1f}-{max(values) * 1e3:.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--adapters", action="store_true", help="the drop-ins' rows")
    ap.add_argument("--store", action="store_true", help="rows g, i, j and u")
    args = ap.parse_args()
    if args.adapters:
        program, names = ADAPTERS, ["pm", "pi", "pa", "z", "za", "w"]
    elif args.store:
        program, names = STORE, list("giju")
    else:
        program, names = ONE_PROCESS, list("bcop")
    # --store runs the suite's own functions: the repository root goes on the path.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runs: dict[str, list[dict]] = {args.a: [], args.b: []}
    for i in range(args.rounds):
        for py in (args.a, args.b):
            out = subprocess.run(
                [py, "-c", program], capture_output=True, text=True, timeout=600, cwd="/", env=env
            )
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return 1
            runs[py].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {i + 1} {py}: {runs[py][-1]}", file=sys.stderr)
    print("| row | A | B | B/A |")
    print("|---|---|---|---|")
    for row in names:
        a = [r[row] * 1e3 for r in runs[args.a]]
        b = [r[row] * 1e3 for r in runs[args.b]]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| ({row}) | {_ms(ma, a)} | {_ms(mb, b)} | {mb / ma:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
