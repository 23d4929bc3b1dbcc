"""volley.serve's FastAPI ingress (``@serve.ingress``) against Ray Serve's, same app, same load
generator, one run; and volley's plain deployment on the same work, for the ASGI adapter's cost.

Usage: python benchmarks/serve_fastapi.py [--runs 3] [--seconds 3] [--conns 1,32]
       [--ray-python PATH] [--no-write]

The app (written once, ``serve`` bound to ``volley.serve`` or ``ray.serve``): a class-based
FastAPI ingress, 1 replica, ``max_ongoing_requests=64``, no CPU reserved, with

- ``fa_get``: ``GET /fa_get/items/7?q=abc`` -> path and query parameters validated by FastAPI,
  a small JSON answer;
- ``fa_post``: ``POST /fa_post/items`` with a pydantic model body (3 fields) -> JSON;
- ``plain`` (volley only): a plain deployment answering the same JSON as ``fa_get`` from
  ``request.query_params`` (no FastAPI), for what the ASGI layer costs in volley.

The load is ``wrk --latency`` over loopback (``benchmarks/serve_http.py``'s runner), ``--seconds``
per point. For each system a fresh subprocess starts the runtime (``init(num_cpus=2)``) and
deploys the cases; the systems alternate between runs (volley first in odd runs), and each figure
is the median over ``--runs``. Ray runs with ``--ray-python`` (an interpreter with ``ray[serve]``
and FastAPI; by default ``VOLLEY_BENCH_RAY_PYTHON``), skipped where there is none. Writes
``benchmarks/RESULTS-serve-fastapi.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the `benchmarks` package importable

from benchmarks import common  # noqa: E402
from benchmarks.serve_http import run_system, table_row  # noqa: E402

CHILD = textwrap.dedent(
    """
    import sys
    from fastapi import FastAPI
    from benchmarks.serve_child import serve_until_told
    from pydantic import BaseModel
    system, port, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    if system == "volley":
        import volley as rt
        from volley import serve
        rt.init(num_cpus=2)
    else:
        import logging
        import ray as rt
        from ray import serve
        rt.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    opts = dict(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})

    class Item(BaseModel):
        name: str
        price: float
        tags: list[str] = []

    def make(kind):
        app = FastAPI()

        @serve.deployment(**opts)
        @serve.ingress(app)
        class Api:
            def __init__(self):
                self.n = 0

            @app.get("/items/{item_id}")
            async def get_item(self, item_id: int, q: str = "") -> dict:
                self.n += 1
                return {"id": item_id, "q": q, "n": self.n}

            @app.post("/items")
            async def post_item(self, item: Item) -> dict:
                self.n += 1
                return {"name": item.name, "total": item.price * len(item.tags), "n": self.n}

        return Api.bind()

    @serve.deployment(**opts)
    class Plain:
        def __init__(self):
            self.n = 0

        async def __call__(self, request):
            self.n += 1
            item_id = int(request.path.rsplit("/", 1)[1])
            return {"id": item_id, "q": request.query_params.get("q", ""), "n": self.n}

    apps = {"fa_get": lambda: make("get"), "fa_post": lambda: make("post"),
            "plain": lambda: Plain.bind()}
    for name in cases:
        serve.run(apps[name](), name=name, route_prefix="/" + name)
    checks = {
        "fa_get": ("/fa_get/items/7?q=abc", None),
        "fa_post": ("/fa_post/items", b'{"name": "pen", "price": 1.5, "tags": ["a", "b"]}'),
        "plain": ("/plain/items/7?q=abc", None),
    }
    json_type = {"content-type": "application/json"}
    serve_until_told(serve, port, [(*checks[name], json_type) for name in cases])
    """
)

SCRIPTS = {
    "fa_get": 'wrk.path = "/fa_get/items/7?q=abc"\n',
    "fa_post": (
        'wrk.method = "POST"\nwrk.path = "/fa_post/items"\n'
        'wrk.body = \'{"name": "pen", "price": 1.5, "tags": ["a", "b"]}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    ),
    "plain": 'wrk.path = "/plain/items/7?q=abc"\n',
}
LABELS = {
    "fa_get": "FastAPI GET /items/{id}?q= (path + query)",
    "fa_post": "FastAPI POST /items (pydantic body)",
    "plain": "plain deployment, same GET (no FastAPI)",
}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--conns", default="1,32")
    ap.add_argument("--ray-python", default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    if not os.path.exists(wrk):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    conns = [int(c) for c in args.conns.split(",")]
    ray = common.ray_python(args.ray_python, "ray.serve")
    systems = {"volley": (sys.executable, ["fa_get", "fa_post", "plain"])}
    if ray:
        systems["ray"] = (ray, ["fa_get", "fa_post"])
    else:
        print("no interpreter with ray.serve: the Ray side is skipped", file=sys.stderr)
    before = _uptime()
    results: dict[str, list[dict]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        scripts = {}
        for case, text in SCRIPTS.items():
            scripts[case] = logdir / f"{case}.lua"
            scripts[case].write_text(text)
        for i in range(args.runs):
            order = list(systems) if i % 2 == 0 else list(reversed(systems))
            for s in order:
                print(f"run {i + 1}: {s}", flush=True)
                python, cases = systems[s]
                got = run_system(
                    python, s, cases, conns, args.seconds, wrk, scripts, logdir, child=CHILD
                )
                if got is not None:
                    results[s].append(got)
    after = _uptime()

    def med(system: str, key: str, field: str) -> float | None:
        vals = [r[key][field] for r in results.get(system, []) if key in r]
        return statistics.median(vals) if vals else None

    rows = [
        "| case | conns | volley req/s | p50 | p99 | Ray req/s | p50 | p99 | req/s volley/Ray |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in ("fa_get", "fa_post", "plain"):
        for c in conns:
            key = f"{case}@{c}"
            v = [med("volley", key, f) for f in ("rate", "p50_ms", "p99_ms")]
            r = [med("ray", key, f) for f in ("rate", "p50_ms", "p99_ms")]
            if v[0] is not None:
                rows.append(table_row(LABELS[case], c, v, r, p99_ratio=False))
    table = "\n".join(rows)
    print(table)
    if args.no_write:
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["python benchmarks/serve_fastapi.py", *sys.argv[1:]])
    text = f"""# volley.serve's FastAPI ingress against Ray Serve's

`{cmd}`, {now}, commit {commit}, {args.runs} runs of each system (medians), systems
alternated, each in a fresh process, `wrk --latency` {args.seconds:g} s per point.
Ray: {ray or "not run"}.

Load: 2 cores shared with other sessions (the load generator, the server and everything else
on the same 2 cores): the machine is noisy, read the ratios, not the absolute figures.

- before: `{before}`
- after: `{after}`

{table}

The app runs inside the replica (an ASGI scope from the request frame, the answer collected
into one frame); the `plain` row is the same GET answered by a plain volley deployment, so the
difference between it and the FastAPI GET row is what FastAPI and the ASGI adapter cost.
Ray's ~50 ms at 1 connection is mostly the Nagle/delayed-ACK stall of its proxy under `wrk`
(see RESULTS-serve-http.md, which measures it with a client that acks at once).
"""
    (ROOT / "benchmarks" / "RESULTS-serve-fastapi.md").write_text(text)
    print("wrote benchmarks/RESULTS-serve-fastapi.md")


if __name__ == "__main__":
    main()
