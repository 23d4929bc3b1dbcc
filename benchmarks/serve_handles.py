"""volley.serve's handles against Ray Serve's on the same apps, in one run: calls from Python
(``handle.remote``), the path that composition takes (the HTTP path is the ingress's benchmark).

Usage: python benchmarks/serve_handles.py [--runs 3] [--seconds 3] [--ray-python PATH] [--no-write]

Rows (each the median of ``--runs`` runs; in each run the systems alternate, each in a fresh
subprocess with ``init(num_cpus=2)``):

- ``deploy``: seconds for ``serve.run`` of a 1-replica echo app (after ``init``).
- ``echo, 1 at a time``: a 1-replica echo deployment called from the driver, one call after the
  other: calls/s and the p50/p99 latency of a call.
- ``echo, 32 at once``: the same with 32 calls kept in flight (32 asyncio tasks in the driver,
  each awaiting its call then making the next): calls/s, p50/p99.
- ``chain, 10 KB, 32 at once``: an ingress deployment that awaits a call to an echo
  deployment (1 replica each), a 10 KB bytes payload, 32 in flight.

The same code runs for both: the app is written once with ``serve`` bound to ``volley.serve`` or
``ray.serve`` (the API is the same). Replicas ask for no CPU in both and take up to 32 calls at
once (``max_ongoing_requests=32``). Ray runs with ``--ray-python`` (an interpreter with
``ray[serve]``; by default ``VOLLEY_BENCH_RAY_PYTHON``), skipped where there is none. Writes
``benchmarks/RESULTS-serve-handles.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the `benchmarks` package importable

from benchmarks import common  # noqa: E402

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    system, seconds = sys.argv[1], float(sys.argv[2])
    if system == "volley":
        import volley as rt
        from volley import serve
    else:
        import ray as rt
        from ray import serve
        import logging
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
    rt.init(num_cpus=2)
    opts = dict(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0})

    @serve.deployment(**opts)
    class Echo:
        def __call__(self, x):
            return x

    @serve.deployment(**opts)
    class Ingress:
        def __init__(self, echo):
            self.echo = echo

        async def __call__(self, x):
            return await self.echo.remote(x)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def row(n, elapsed, lat):
        return {"rate": n / elapsed, "p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6}

    out = {}
    t = time.perf_counter()
    h = serve.run(Echo.bind(), name="echo", route_prefix=None)
    out["deploy"] = time.perf_counter() - t
    for _ in range(50):
        h.remote(b"x").result()

    lat = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        h.remote(b"x").result()
        lat.append(time.perf_counter() - t)
    out["echo1"] = row(len(lat), time.perf_counter() - t0, lat)

    async def load(handle, payload, n_conc):
        lat = []
        stop = time.perf_counter() + seconds

        async def worker():
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await handle.remote(payload)
                assert len(r) == len(payload)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(n_conc)))
        return row(len(lat), time.perf_counter() - t0, lat)

    out["echo32"] = asyncio.run(load(h, b"x", 32))
    serve.delete("echo")
    hc = serve.run(Ingress.bind(Echo.bind()), name="chain", route_prefix=None)
    for _ in range(50):
        hc.remote(b"x").result()
    out["chain32"] = asyncio.run(load(hc, b"y" * 10240, 32))
    serve.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
    """
)

ROWS = [
    ("deploy", "deploy a 1-replica app: s"),
    ("echo1", "echo, 1 at a time"),
    ("echo32", "echo, 32 at once"),
    ("chain32", "chain ingress -> echo, 10 KB, 32 at once"),
]


def run_child(python: str, system: str, seconds: float) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    p = subprocess.run(
        [python, "-c", CHILD, system, str(seconds)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"{system} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--ray-python", default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rpy = common.ray_python(args.ray_python, "ray.serve")
    systems = [("volley", sys.executable)] + ([("ray", rpy)] if rpy else [])
    results: dict[str, list[dict]] = {s: [] for s, _ in systems}
    for i in range(args.runs):
        order = systems if i % 2 == 0 else systems[::-1]
        for s, py in order:
            r = run_child(py, s, args.seconds)
            if r is not None:
                results[s].append(r)
                print(f"run {i + 1} {s}: {json.dumps(r)}", flush=True)

    def med(s: str, key: str, field: str | None = None) -> float | None:
        xs = [r[key] if field is None else r[key][field] for r in results[s]]
        return statistics.median(xs) if xs else None

    lines = ["| row | system | value | ratio (volley / ray) |", "|---|---|---|---|"]
    for key, label in ROWS:
        for s, _ in systems:
            if key == "deploy":
                v = med(s, key)
                if v is None:
                    continue
                r = med("ray", key) if "ray" in results else None
                ratio = f"{r / v:.1f}x faster" if s == "volley" and r else ""
                lines.append(f"| {label} | {s} | {v:.2f} s | {ratio} |")
                continue
            rate, p50, p99 = med(s, key, "rate"), med(s, key, "p50_us"), med(s, key, "p99_us")
            if rate is None:
                continue
            ratio = ""
            if s == "volley" and "ray" in results and results["ray"]:
                rr, rp50 = med("ray", key, "rate"), med("ray", key, "p50_us")
                ratio = f"{rate / rr:.1f}x the calls/s, p50 {rp50 / p50:.1f}x lower"
            lines.append(
                f"| {label} | {s} | {rate:,.0f} calls/s, p50 {p50:,.0f} µs, p99 {p99:,.0f} µs "
                f"| {ratio} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    load = os.getloadavg()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    cmd = "python benchmarks/serve_handles.py " + " ".join(sys.argv[1:])
    text = f"""# volley.serve's handles against Ray Serve's

`{cmd}`, {datetime.date.today()}, commit {head}, {args.runs} runs (medians), systems alternated,
each in a fresh process. Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}
on 2 cores shared with other sessions: the machine is noisy, read ratios, not absolute figures.
Ray: {rpy or "not run (no interpreter with ray[serve])"}.

{table}

What each row times is in the docstring of `benchmarks/serve_handles.py`. These are calls from
Python through handles (what composition uses); the HTTP front end has its own benchmark.
"""
    (ROOT / "benchmarks" / "RESULTS-serve-handles.md").write_text(text)


if __name__ == "__main__":
    main()
