"""volley.serve's HTTP front end against Ray Serve's, same apps, same load generator, one run.

Usage: python benchmarks/serve_http.py [--runs 3] [--seconds 5] [--conns 1,32,256]
       [--cases echo,chain1,chain2,model_batch,model,io] [--ray-python PATH] [--no-write]

The load is ``wrk --latency`` (``/usr/bin/wrk``) over loopback, ``--seconds`` per point, with 1
thread for 1 connection and 2 threads otherwise. For each system a fresh subprocess starts the
runtime (``init(num_cpus=2)``), deploys every case below as its own application on one port,
checks each answers 200, then waits while this process runs ``wrk`` against it; the systems
alternate between runs (volley first in odd runs, Ray first in even ones), and each figure is
the median over ``--runs``.

Cases (the app code is written once, with ``serve`` bound to ``volley.serve`` or ``ray.serve``
and ``Response`` to volley's or Starlette's; replicas ask for no CPU and take up to 64 requests
at once, ``max_ongoing_requests=64``, on both):

- ``echo``: 1 replica, ``POST /echo`` with a 16-byte body, answered with the body.
- ``chain1``: an ingress deployment that awaits a handle call to an echo deployment with the
  request's 10 KB body and answers with what came back; 1 replica each.
- ``chain2``: the same with 2 replicas of each.
- ``model_batch``: a numpy MLP (512 -> 1024 -> 1024, float32; one BLAS thread) behind
  ``@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)``; the body is 512 float32s.
- ``model``: the same model called once per request in the ``async`` method (no batching),
  for batching's gain.
- ``io``: 1 replica whose ``async`` method awaits 50 ms (a model that waits on a GPU queue or
  another service: the replica is not short of CPU), ``max_ongoing_requests=256`` so that it
  holds every connection's request at once. The case where the tail at 256 connections against
  1 measures the front end rather than a saturated replica's queue (Little's law).

Then the front end's added latency: one connection, a request that carries ``time.time()`` taken
just before its bytes are written to the socket (header ``x-sent``); the replica's ``async``
method reads ``time.time()`` on entry and answers the difference (same machine, same clock).
The p50 of 1000 such requests (after 100 to warm up) is the time from the client's send to the
replica's method starting: the HTTP parse, routing, the hop to the replica and its dispatch.

Ray runs with ``--ray-python`` (an interpreter with ``ray[serve]``; by default
``VOLLEY_BENCH_RAY_PYTHON``), skipped where there is none. Writes
``benchmarks/RESULTS-serve-http.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the `benchmarks` package importable

from benchmarks import common  # noqa: E402

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import numpy as np
    from benchmarks.serve_child import serve_until_told
    system, port = sys.argv[1], int(sys.argv[2])
    if system == "volley":
        import volley as rt
        from volley import serve
        from volley.serve import Response
        rt.init(num_cpus=2)
    else:
        import logging
        import ray as rt
        from ray import serve
        from starlette.responses import Response
        rt.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    opts = dict(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})

    @serve.deployment(**opts)
    class EchoHttp:
        async def __call__(self, request):
            return Response(await request.body(), media_type="application/octet-stream")

    @serve.deployment(**opts)
    class Echo:
        def __call__(self, x):
            return x

    @serve.deployment(**opts)
    class Ingress:
        def __init__(self, echo):
            self.echo = echo

        async def __call__(self, request):
            out = await self.echo.remote(await request.body())
            return Response(out, media_type="application/octet-stream")

    class Mlp:
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w1 = rng.random((512, 1024), dtype=np.float32) / 512
            self.w2 = rng.random((1024, 1024), dtype=np.float32) / 1024

        def forward(self, x):
            return np.tanh(x @ self.w1) @ self.w2

    @serve.deployment(**opts)
    class ModelBatch(Mlp):
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def predict(self, xs):
            ys = self.forward(np.stack(xs))
            return [float(v) for v in ys.sum(axis=1)]

        async def __call__(self, request):
            x = np.frombuffer(await request.body(), dtype=np.float32)
            return {"y": await self.predict(x)}

    @serve.deployment(**opts)
    class Model(Mlp):
        async def __call__(self, request):
            x = np.frombuffer(await request.body(), dtype=np.float32)
            return {"y": float(self.forward(x).sum())}

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class Waits:
        async def __call__(self, request):
            await asyncio.sleep(0.05)
            return Response(await request.body(), media_type="application/octet-stream")

    @serve.deployment(**opts)
    class Stamp:
        async def __call__(self, request):
            t = time.time()
            return {"d": t - float(request.headers["x-sent"])}

    cases = sys.argv[3].split(",")
    apps = {
        "echo": EchoHttp.bind(),
        "chain1": Ingress.bind(Echo.bind()),
        "chain2": Ingress.options(num_replicas=2).bind(Echo.options(num_replicas=2).bind()),
        "model_batch": ModelBatch.bind(),
        "model": Model.bind(),
        "io": Waits.bind(),
        "stamp": Stamp.bind(),
    }
    for name in cases + ["stamp"]:
        serve.run(apps[name], name=name, route_prefix="/" + name)
    body = {"model_batch": b"<" * 2048, "model": b"<" * 2048}
    checks = [(f"/{name}", body.get(name, b"x" * 16), {}) for name in cases]
    serve_until_told(serve, port, checks)
    """
)

BODIES = {
    "echo": "x" * 16,
    "chain1": "y" * 10240,
    "chain2": "y" * 10240,
    "model_batch": "<" * 2048,  # 512 float32s of 0.0115 each
    "model": "<" * 2048,
    "io": "x" * 16,
}
LABELS = {
    "echo": "echo, 1 replica, 16 B",
    "chain1": "chain ingress -> echo, 10 KB, 1 replica each",
    "chain2": "chain ingress -> echo, 10 KB, 2 replicas each",
    "model_batch": "numpy MLP, @serve.batch(32), 1 replica",
    "model": "numpy MLP, no batching, 1 replica",
    "io": "async 50 ms wait (I/O-bound), 1 replica, max_ongoing_requests=256",
    "echo_quickack": "echo, 1 replica, 16 B, Python client with TCP_QUICKACK (not wrk)",
}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"wrk printed a latency this script cannot read: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    """Requests/s, p50/p99 latency (ms) and the errors from ``wrk --latency``'s output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rate and p50 and p99):
        raise ValueError(f"wrk's output has no rate or latency distribution:\n{out}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {
        "rate": float(rate.group(1)),
        "p50_ms": ms(p50.group(1)),
        "p99_ms": ms(p99.group(1)),
        "errors": errors,
    }


def run_wrk(wrk: str, port: int, case: str, conns: int, seconds: float, script: Path) -> dict:
    cmd = [
        wrk,
        f"-t{1 if conns == 1 else 2}",
        f"-c{conns}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/{case}",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr}")
    return parse_wrk(p.stdout)


def added_latency(port: int, n: int = 1000, warm: int = 100) -> float:
    """p50 in µs of (replica's time.time() on entry) - (client's time.time() before send)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ds = []
    try:
        for i in range(n + warm):
            conn.putrequest("GET", "/stamp")
            t = time.time()
            conn.putheader("x-sent", repr(t))
            conn.endheaders()  # the request's bytes are written here
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"/stamp answered {r.status}: {body[:200]!r}")
            if i >= warm:
                ds.append(json.loads(body)["d"])
    finally:
        conn.close()
    return statistics.median(ds) * 1e6


def quickack_echo(port: int, seconds: float) -> dict:
    """``POST /echo`` one at a time on one connection, the client acknowledging at once.

    A client with delayed ACKs (wrk, curl, most clients) waits up to 40 ms for the second
    segment of an answer its server wrote in two without ``TCP_NODELAY``; ``TCP_QUICKACK``,
    set again before each read, removes that wait, so this row shows the servers' own latency.
    """
    req = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 16\r\n\r\n" + b"x" * 16
    lat = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            s.sendall(req)
            while True:
                head, sep, rest = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head) if sep else None
                if m and len(rest) >= int(m.group(1)):
                    buf = rest[int(m.group(1)) :]
                    break
                if sep and m is None:
                    raise RuntimeError(f"/echo answered with no content-length: {head!r}")
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection during /echo")
                buf += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"/echo answered {head[:40]!r}")
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "rate": len(lat) / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
        "errors": 0,
    }


def run_system(
    python: str,
    system: str,
    cases: list[str],
    conns: list[int],
    seconds: float,
    wrk: str,
    scripts: dict[str, Path],
    logdir: Path,
    child: str = CHILD,
    extra: Callable[[int, str, list[str], float, dict], None] | None = None,
) -> dict | None:
    """One system's figures: ``child`` (a script taking the system, a port and the cases; it
    prints READY once every case answers, and stops at a line on its stdin) started with
    ``python``, then ``wrk`` against each case at each connection count (the script sets the
    request; the URL is ``/CASE``), then ``extra(port, system, cases, seconds, out)`` for other
    figures. ``out`` maps ``CASE@CONNS`` to ``run_wrk``'s figures, and ``ready_s`` to the
    child's start-up; None (with the child's stderr printed) if it never got ready."""
    port = free_port()
    env = dict(
        os.environ,
        # volley's package, and the repository for benchmarks.serve_child.
        PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(ROOT)]),
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    log = open(logdir / f"{system}.stderr", "w")
    p = subprocess.Popen(
        [python, "-c", child, system, str(port), ",".join(cases)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    out: dict = {}
    try:
        t = time.monotonic()
        line = p.stdout.readline()  # the child prints READY, or exits (or hangs: the timeout)
        if line.strip() != "READY":
            p.kill()
            log.flush()
            tail = (logdir / f"{system}.stderr").read_text()[-3000:]
            print(f"{system} did not get ready ({line!r}):\n{tail}", file=sys.stderr)
            return None
        out["ready_s"] = time.monotonic() - t
        for case in cases:
            for c in conns:
                out[f"{case}@{c}"] = run_wrk(wrk, port, case, c, seconds, scripts[case])
                print(f"  {system} {case} c={c}: {json.dumps(out[f'{case}@{c}'])}", flush=True)
        if extra is not None:
            extra(port, system, cases, seconds, out)
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    return out


def front_end_figures(port: int, system: str, cases: list[str], seconds: float, out: dict) -> None:
    """This benchmark's figures besides wrk's: echo with a quick-ACK client, and the front
    end's added latency (``run_system``'s ``extra``)."""
    if "echo" in cases:
        out["echo_quickack@1"] = quickack_echo(port, seconds)
        print(f"  {system} echo quick-ACK c=1: {json.dumps(out['echo_quickack@1'])}")
    try:
        out["added_us"] = added_latency(port)
        print(f"  {system} added latency p50: {out['added_us']:.0f} µs", flush=True)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        print(f"  {system} added latency not measured: {e!r}", file=sys.stderr, flush=True)


def table_row(label: str, conns: int, v: list, r: list, p99_ratio: bool = True) -> str:
    """A row of the results table: volley's and Ray's (req/s, p50 ms, p99 ms), None where not
    measured, and their ratios."""

    def f(x: float | None, unit: str = "") -> str:
        if x is None:
            return "-"
        return f"{x:,.0f}" if unit == "" else f"{x:.2f} ms"

    ratio = f"{v[0] / r[0]:.1f}x" if r[0] else "-"
    row = (
        f"| {label} | {conns} | {f(v[0])} | {f(v[1], 'ms')} | {f(v[2], 'ms')} "
        f"| {f(r[0])} | {f(r[1], 'ms')} | {f(r[2], 'ms')} | {ratio} |"
    )
    if p99_ratio:
        row += f" {f'{r[2] / v[2]:.1f}x' if r[2] else '-'} |"
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", default="1,32,256")
    ap.add_argument("--cases", default="echo,chain1,chain2,model_batch,model,io")
    ap.add_argument("--ray-python", default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in BODIES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {list(BODIES)}")
    conns = [int(c) for c in args.conns.split(",")]
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    rpy = common.ray_python(args.ray_python, "ray.serve")
    systems = [("volley", sys.executable)] + ([("ray", rpy)] if rpy else [])
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="serve_http."))  # 0700, ours
    scripts = {}
    for case in cases:
        scripts[case] = tmp / f"{case}.lua"
        scripts[case].write_text(
            f'wrk.method = "POST"\nwrk.body = string.rep("{BODIES[case][0]}", '
            f"{len(BODIES[case])})\n"
        )
    results: dict[str, list[dict]] = {s: [] for s, _ in systems}
    try:
        for i in range(args.runs):
            order = systems if i % 2 == 0 else systems[::-1]
            for s, py in order:
                print(f"run {i + 1} {s}", flush=True)
                r = run_system(
                    py, s, cases, conns, args.seconds, wrk, scripts, tmp, extra=front_end_figures
                )
                if r is not None:
                    results[s].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    def med(s: str, key: str, field: str | None = None) -> float | None:
        xs = [r[key] if field is None else r[key][field] for r in results[s] if key in r]
        return statistics.median(xs) if xs else None

    has_ray = bool(results.get("ray"))
    lines = [
        "| case | conns | volley req/s | p50 | p99 | Ray req/s | p50 | p99 "
        "| req/s volley/Ray | p99 Ray/volley |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    errs = {
        s: sum(v["errors"] for r in results[s] for k, v in r.items() if "@" in k)
        for s, _ in systems
    }
    rows = [(case, c) for case in cases for c in conns]
    if "echo" in cases:
        rows.insert((cases.index("echo") + 1) * len(conns), ("echo_quickack", 1))
    for case, c in rows:
        key = f"{case}@{c}"
        v = [med("volley", key, f) for f in ("rate", "p50_ms", "p99_ms")]
        r = [med("ray", key, f) for f in ("rate", "p50_ms", "p99_ms")] if has_ray else [None] * 3
        if v[0] is not None:
            lines.append(table_row(LABELS[case], c, v, r))
    table = "\n".join(lines)
    extra = []
    for s, _ in systems:
        a, rd = med(s, "added_us"), med(s, "ready_s")
        if rd is not None:
            added = f"{a:,.0f} µs" if a is not None else "not measured"
            extra.append(
                f"- {s}: front end's added latency p50 {added}; start + deploy of all "
                f"apps {rd:.1f} s; wrk errors (non-2xx, socket) over all runs: {errs[s]}"
            )
    if "echo" in cases and 1 in conns and 256 in conns:
        for s, _ in systems:
            p1, p256 = med(s, "echo@1", "p99_ms"), med(s, "echo@256", "p99_ms")
            if p1 and p256:
                extra.append(f"- {s}: echo p99 at 256 conns / p99 at 1 conn: {p256 / p1:.1f}x")
    if "io" in cases and 1 in conns and 256 in conns:
        for s, _ in systems:
            p1, p256 = med(s, "io@1", "p99_ms"), med(s, "io@256", "p99_ms")
            if p1 and p256:
                extra.append(f"- {s}: I/O-bound p99 at 256 conns / p99 at 1 conn: {p256 / p1:.2f}x")
    if "model_batch" in cases and "model" in cases:
        for s, _ in systems:
            for c in conns:
                b, n = med(s, f"model_batch@{c}", "rate"), med(s, f"model@{c}", "rate")
                if b and n:
                    extra.append(f"- {s}: batching's gain at {c} conns: {b / n:.1f}x the req/s")
    summary = "\n".join(extra)
    print(table)
    print(summary)
    print("before:", uptime_before)
    print("after: ", uptime_after)
    if args.no_write:
        return
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    cmd = "python benchmarks/serve_http.py " + " ".join(sys.argv[1:])
    text = f"""# volley.serve's HTTP front end against Ray Serve's

`{cmd}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {head},
{len(results["volley"])} volley runs and {len(results.get("ray", []))} Ray runs (medians),
systems alternated, each in a fresh process, `wrk --latency` {args.seconds:g} s per point.
Ray: {rpy or "not run (no interpreter with ray[serve])"}.

Load: 2 cores shared with other sessions (the load generator, the server and everything else
on the same 2 cores): the machine is noisy, read the ratios, not the absolute figures.

- before: `{uptime_before}`
- after: `{uptime_after}`

{table}

{summary}

What each case does is in the docstring of `benchmarks/serve_http.py`.
"""
    (ROOT / "benchmarks" / "RESULTS-serve-http.md").write_text(text)


if __name__ == "__main__":
    main()
