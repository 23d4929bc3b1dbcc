"""The dashboard at scale (issue 18): with 1,000,000 finished tasks in the state tables and
thousands of actors, how long the HTTP API takes to answer and how long each page takes to
draw its rows in a real headless chromium, through the real server.

What it does, in one driver process:

1. ``volley.init(num_cpus=2, dashboard=True)`` with ``VOLLEY_TASK_EVENTS_MAX`` set so that no
   finished task is dropped, then ``--tasks`` real no-op tasks in batches (their rows are the
   real ones the scheduler's events made); the driver's RSS before and after.
2. ``--real-actors`` real actors (``num_cpus=0``), each called once, then killed: their rows
   stay as ``DEAD``.
3. Phase "real": p50/p99 of the API's answers (``/api/v0/tasks`` with and without filters,
   ``/api/v0/actors``, ``/api/v0/cluster``, ``/metrics``) and the page loads (navigation to
   rows drawn) of every page with rows: the overview, tasks, actors, task stream, objects,
   placement groups, jobs, workers and nodes.
4. ``--fill-actors`` actor rows put into the head's tables through the path a member's
   heartbeat batch takes (``_core._fill_actors_for_benchmark``: a 2-core machine cannot start
   10,000 actor processes), then phase "filled": the same figures again.

A page load is timed from ``browser.get`` (a fresh navigation from ``about:blank``, so the
page, its script and its first API answer all count) until the page's rows are in the DOM,
polled every 5 ms; the browser's own ``performance.now()`` at that moment (milliseconds since
the navigation started) is reported too.

Needs selenium and Debian's chromium + chromium-driver (as tests/test_dashboard.py). Run by
hand, not in ``make test`` (it takes a minute or two and ~1 GiB):

    .venv/bin/python benchmarks/dashboard_scale.py [--tasks 1000000] [--real-actors 200]
        [--fill-actors 10000] [--reps 30] [--loads 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def rss_mib() -> float:
    """This process's resident set size in MiB (/proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of xs."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def browser():
    """A headless chromium driven by selenium, set up as tests/test_dashboard.py does."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not chromium or not Path(driver).exists():
        sys.exit("chromium and chromium-driver are needed (apt-get install chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,900"):  # fmt: skip
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


# Each page and the JavaScript that says its rows are drawn.
PAGES = {
    "overview": "return document.querySelectorAll('#nodes-table .node-row').length > 0",
    "tasks": "return /matching/.test((document.getElementById('summary')||{}).textContent||'')"
    " && document.querySelectorAll('#rows tr').length > 1",
    "actors": "return /matching/.test((document.getElementById('summary')||{}).textContent||'')"
    " && document.querySelectorAll('#rows tr').length > 1",
    "stream": "const c = document.getElementById('stream-canvas');"
    " return !!(c && c.dataset.slices !== undefined)",
}
# The other tables: their answer drawn (a head row at least; a list may be empty).
for _page in ("objects", "placement_groups", "jobs", "workers", "nodes"):
    PAGES[_page] = (
        "return /matching/.test((document.getElementById('summary')||{}).textContent||'')"
        " && document.querySelectorAll('#rows tr').length > 0"
    )


def api_figures(base: str, token: str, queries: list[str], reps: int) -> dict:
    """p50/p99 (ms) and the answer's size of each GET, `reps` times after one warm-up."""
    out = {}
    for q in queries:
        req = urllib.request.Request(base + q, headers={"Authorization": f"Bearer {token}"})
        times, size = [], 0
        for i in range(reps + 1):
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                assert r.status == 200, (q, r.status)
            if i:
                times.append((time.perf_counter() - t) * 1000)
            size = len(body)
        out[q] = {"p50_ms": statistics.median(times), "p99_ms": pct(times, 99), "bytes": size}
        print(f"  {q:70s} p50 {out[q]['p50_ms']:8.1f} ms  p99 {out[q]['p99_ms']:8.1f} ms"
              f"  {size / 1024:8.1f} KiB", flush=True)  # fmt: skip
    return out


def page_figures(b, base: str, loads: int, tasks: int) -> dict:
    """Median and max (ms) of `loads` fresh navigations per page to its rows drawn; `tasks`:
    the task rows the table holds."""
    from selenium.webdriver.support.ui import WebDriverWait

    out = {}
    for page, ready in PAGES.items():
        wall, inner = [], []
        for i in range(loads + 1):
            b.get("about:blank")
            t = time.perf_counter()
            b.get(f"{base}/#{page}")
            WebDriverWait(b, 60, poll_frequency=0.005).until(lambda d, r=ready: d.execute_script(r))
            took = (time.perf_counter() - t) * 1000
            nav = b.execute_script("return performance.now()")
            if i:  # the first load warms the browser's cache of app.js
                wall.append(took)
                inner.append(nav)
        out[page] = {
            "median_ms": statistics.median(wall),
            "max_ms": max(wall),
            "browser_median_ms": statistics.median(inner),
        }
        if page == "stream":
            out[page]["slices"] = int(b.execute_script(
                "return document.getElementById('stream-canvas').dataset.slices"))  # fmt: skip
        o = out[page]
        print(f"  page {page:10s} median {o['median_ms']:7.1f} ms  max {o['max_ms']:7.1f} ms"
              f"  (browser's clock {o['browser_median_ms']:.1f} ms)", flush=True)  # fmt: skip
    # The tasks page with its largest limit (10,000 rows fetched, one page of 500 drawn): from
    # the choice in the menu to the summary saying so and the next frame (its layout done),
    # timed in the browser (selenium's own round trips to choose an option would count).
    choose = """
      const [want, done] = arguments;
      const sel = document.getElementById('limit'), sum = document.getElementById('summary');
      const t0 = performance.now();
      const check = () => {
        if (sum.textContent.startsWith(want + ' shown'))
          requestAnimationFrame(() => done(performance.now() - t0));
        else setTimeout(check, 2);
      };
      sel.value = '10000';
      sel.dispatchEvent(new Event('change'));
      check();
    """
    b.set_script_timeout(60)
    big = []
    for i in range(loads + 1):
        b.get("about:blank")
        b.get(f"{base}/#tasks")
        WebDriverWait(b, 60, poll_frequency=0.005).until(lambda d: d.execute_script(PAGES["tasks"]))
        took = b.execute_async_script(choose, min(tasks, 10_000))
        if i:
            big.append(took)
    out["tasks_10000_rows"] = {"median_ms": statistics.median(big), "max_ms": max(big)}
    print(f"  tasks page, 10000 rows chosen: median {statistics.median(big):7.1f} ms  max "
          f"{max(big):7.1f} ms", flush=True)  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--real-actors", type=int, default=200)
    ap.add_argument("--fill-actors", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=30, help="GETs per API query")
    ap.add_argument("--loads", type=int, default=7, help="navigations per page")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--api-only", action="store_true", help="no browser: the API's figures only")
    args = ap.parse_args()
    os.environ["VOLLEY_TASK_EVENTS_MAX"] = str(max(args.tasks, 100_000) + args.real_actors * 2)

    import volley
    from volley import _core

    res: dict = {"args": vars(args)}
    volley.init(num_cpus=2, dashboard=True, dashboard_port=0)
    base, token = volley.dashboard_url().split("?token=")
    base = base.rstrip("/")

    @volley.remote
    def noop() -> None:
        return None

    @volley.remote(num_cpus=0)
    class Idle:
        def ping(self) -> int:
            return os.getpid()

    volley.get([noop.remote() for _ in range(1000)])
    res["rss_before_mib"] = rss_mib()
    t = time.perf_counter()
    done = 0
    while done < args.tasks:
        n = min(args.batch, args.tasks - done)
        volley.get([noop.remote() for _ in range(n)])
        done += n
    res["tasks_s"] = time.perf_counter() - t
    res["rss_after_tasks_mib"] = rss_mib()
    noop_name = json.loads(_core.state_query("tasks", [], 1))["rows"][0]["name"]
    print(f"{args.tasks} tasks in {res['tasks_s']:.1f} s; driver RSS {res['rss_before_mib']:.0f} "
          f"-> {res['rss_after_tasks_mib']:.0f} MiB", flush=True)  # fmt: skip

    t = time.perf_counter()
    made = 0
    while made < args.real_actors:
        group = [Idle.remote() for _ in range(min(50, args.real_actors - made))]
        volley.get([a.ping.remote() for a in group])
        for a in group:
            volley.kill(a)
        made += len(group)
    res["real_actors_s"] = time.perf_counter() - t
    print(f"{made} real actors made, called and killed in {res['real_actors_s']:.1f} s", flush=True)

    queries = [
        "/api/v0/tasks?limit=100",
        "/api/v0/tasks?limit=10000",
        "/api/v0/tasks?limit=100&filter=state=FAILED",
        "/api/v0/tasks?limit=100&filter=" + urllib.parse.quote(f"name={noop_name}"),
        "/api/v0/tasks?limit=2000&filter=state!=QUEUED&filter=state!=WAITING_ARGS",
        "/api/v0/actors?limit=100&filter=class_name=Bench7",
        "/api/v0/actors?limit=100",
        "/api/v0/actors?limit=10000",
        "/api/v0/actors?limit=100&filter=state=ALIVE",
        "/api/v0/cluster",
        "/metrics",
    ]
    b = None if args.api_only else browser()
    try:
        if b is not None:
            b.get(f"{base}/?token={token}")  # the login: a cookie for every later load
        for phase in ("real", "filled"):
            if phase == "filled":
                _core._fill_actors_for_benchmark(args.fill_actors)
            actors = json.loads(_core.state_query("actors", [], 1))["total"]
            tasks = json.loads(_core.state_query("tasks", [], 1))["total"]
            print(f"phase {phase}: {tasks} task rows, {actors} actor rows", flush=True)
            # The stream page after its first look asks only for what changed since its last
            # answer (1.5 s before, with 5 s of slack): on a cluster idle since the fill, none.
            time.sleep(6.5)
            since = int(time.time() * 1000) - 6500
            stream = (
                "/api/v0/tasks?limit=2000&filter="
                + urllib.parse.quote(f"changed_ms>{since}")
                + "&filter=state!=QUEUED&filter=state!=WAITING_ARGS"
            )
            stream_last = (
                "/api/v0/tasks?limit=2000&filter=state!=QUEUED&filter=state!=WAITING_ARGS"
                "&filter=" + urllib.parse.quote(f"changed_ms>{since}")
            )
            res[phase] = {
                "task_rows": tasks,
                "actor_rows": actors,
                "api": api_figures(base, token, [*queries, stream_last, stream], args.reps),
                "pages": page_figures(b, base, args.loads, tasks) if b is not None else {},
            }
    finally:
        if b is not None:
            b.quit()
    res["rss_end_mib"] = rss_mib()
    print(f"driver RSS at the end {res['rss_end_mib']:.0f} MiB", flush=True)
    volley.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
