"""serve's metrics: real HTTP requests through the Rust ingress, then the dashboard's
``/metrics`` (Prometheus text) and ``/api/v0/serve`` (the Serve view's JSON) scraped over HTTP,
and the Serve page in a real browser.

The ingress counts each request itself (by app, deployment, route prefix and status code, with
a latency histogram); the gauges (requests waiting in the ingress, ongoing per replica) are read
at each scrape; replicas by state, target replicas and autoscaling decisions come from serve's
controller's ``metrics`` document. Counters only grow over the head's life (on the test
cluster the head outlives this module), so each test compares a scrape before with one after.
Requests that must stay in flight wait on a gate file the test creates, never on a timer.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import CLUSTER_MODE, _cluster_info, _ensure_down, _init_2cpu, wait_for

import volley
from volley import serve

WAIT_S = 60.0


def _head_dashboard() -> tuple[str, str]:
    """(base URL, token) of the dashboard that serves this session's ``/metrics``: this
    process's own on one node; on the test cluster the head daemon's, which writes its URL to
    ``dashboard`` in its session directory (found through the daemon's environment)."""
    if not CLUSTER_MODE:
        url = volley.dashboard_url()
        assert url, "volley.init(dashboard=True) started no dashboard"
        base, token = url.split("?token=")
        return base.rstrip("/"), token
    head = _cluster_info["procs"][0]
    env = Path(f"/proc/{head.pid}/environ").read_bytes().split(b"\0")
    sess = next(e.split(b"=", 1)[1] for e in env if e.startswith(b"VOLLEY_SESSION_DIR="))
    base = (Path(os.fsdecode(sess)) / "dashboard").read_text().strip()
    return base.rstrip("/"), _cluster_info["token"]


@pytest.fixture(scope="module")
def dash():
    """(dashboard base URL, token, ingress base URL): a volley with a dashboard, serve's
    ingress on a free port. Everything is shut down after the module."""
    _ensure_down()
    if CLUSTER_MODE:
        _init_2cpu()
    else:
        volley.init(num_cpus=2, dashboard=True, dashboard_port=0)
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    port = serve.status().http_status["port"]
    base, token = _head_dashboard()
    yield base, token, f"http://127.0.0.1:{port}"
    serve.shutdown()
    _ensure_down()


def call(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of one GET; an HTTP error status is an answer too."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(dash) -> dict[tuple[str, frozenset], float]:
    """The serve samples of ``/metrics``: {(name, labels): value}. Checks that every
    ``volley_serve_`` family has its HELP and TYPE lines once."""
    base, token, _ = dash
    status, body = call(f"{base}/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    text = body.decode()
    out: dict[tuple[str, frozenset], float] = {}
    helped = set()
    for line in text.splitlines():
        if line.startswith("# HELP volley_serve_"):
            name = line.split()[2]
            assert name not in helped, f"HELP of {name} twice"
            helped.add(name)
            continue
        if not line.startswith("volley_serve_"):
            continue
        head, value = line.rsplit(" ", 1)
        if "{" in head:
            name, rest = head.split("{", 1)
            labels = frozenset(tuple(kv.split("=", 1)) for kv in _split_labels(rest[:-1]))
        else:
            name, labels = head, frozenset()
        out[(name, labels)] = float(value)
    for name, _ in out:
        family = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        assert family in helped or name in helped, f"{name} has no HELP line"
    return out


def _split_labels(s: str) -> list[str]:
    """`a="x",b="y,z"` -> ['a=x', 'b=y,z'] (values unquoted; no escapes in these tests)."""
    parts, cur, quoted = [], "", False
    for ch in s:
        if ch == '"':
            quoted = not quoted
            continue
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        parts.append(cur)
    return parts


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly ``labels`` (0 when absent: a counter not yet
    counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def serve_json(dash) -> dict:
    base, token, _ = dash
    status, body = call(f"{base}/api/v0/serve", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    return json.loads(body)


def wait_gate(path: str) -> None:
    """Blocks until the test creates ``path`` (a replica's request or constructor held)."""
    while not os.path.exists(path):
        time.sleep(0.005)


@serve.deployment(num_replicas=1, max_ongoing_requests=1, max_queued_requests=0)
class Codes:
    """Answers 200, raises (500) on ``/boom``, holds ``?gate=PATH`` until the file exists."""

    async def __call__(self, request):
        if request.path.endswith("/boom"):
            raise ValueError("boom on purpose")
        gate = request.query_params.get("gate")
        if gate:
            import asyncio

            while not os.path.exists(gate):
                await asyncio.sleep(0.005)
        return {"ok": True}


def background(url: str, out: list) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(call(url)[0]), daemon=True)
    t.start()
    return t


def test_requests_are_counted_by_code_and_timed(dash, tmp_path):
    serve.run(Codes.bind(), name="mcodes", route_prefix="/mcodes")
    http = dash[2]
    labels = {"app": "mcodes", "deployment": "Codes", "route": "/mcodes"}
    no_route = {"app": "", "deployment": "", "route": ""}
    before = scrape(dash)
    total = "volley_serve_http_requests_total"
    for _ in range(3):
        assert call(f"{http}/mcodes/x")[0] == 200
    assert call(f"{http}/mcodes/boom")[0] == 500
    assert call(f"{http}/nowhere-at-all")[0] == 404
    assert call(f"{http}/nowhere-else")[0] == 404
    # One request held at the only replica (max_ongoing_requests=1, no line): the next is 503.
    gate = str(tmp_path / "gate")
    held: list = []
    t = background(f"{http}/mcodes/held?gate={gate}", held)
    wait_for(
        lambda: (
            value(scrape(dash), "volley_serve_ongoing_requests", app="mcodes", deployment="Codes")
            == 1
        ),
        "the held request at its replica (volley_serve_ongoing_requests 1)",
        WAIT_S,
    )
    assert call(f"{http}/mcodes/x")[0] == 503
    Path(gate).touch()
    t.join(WAIT_S)
    assert held == [200]
    after = scrape(dash)

    def delta(name: str, **lb: str) -> float:
        return value(after, name, **lb) - value(before, name, **lb)

    assert delta(total, **labels, code="200") == 4
    assert delta(total, **labels, code="500") == 1
    assert delta(total, **labels, code="503") == 1
    assert delta(total, **no_route, code="404") == 2
    hist = "volley_serve_http_request_duration_seconds"
    assert delta(f"{hist}_count", **labels) == 6
    assert value(after, f"{hist}_sum", **labels) > value(before, f"{hist}_sum", **labels)
    buckets = sorted(
        (float("inf") if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), v)
        for k, v in after.items()
        if k[0] == f"{hist}_bucket" and {x for x in k[1] if x[0] != "le"} == set(labels.items())
    )
    assert len(buckets) >= 10 and buckets[0][0] < 0.001 and buckets[-2][0] >= 10, buckets
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"buckets not monotone: {buckets}"
    assert counts[-1] == value(after, f"{hist}_count", **labels)
    assert value(after, "volley_serve_http_ongoing_requests", **labels) == 0
    assert value(after, "volley_serve_queued_requests", app="mcodes", deployment="Codes") == 0
    # The Serve view's JSON says the same.
    v = serve_json(dash)
    d = next(x for x in v["deployments"] if x["app"] == "mcodes")
    assert d["deployment"] == "Codes" and d["route_prefix"] == "/mcodes" and d["ingress"]
    assert d["status"] == "HEALTHY" and d["target"] == 1
    assert [r["state"] for r in d["replicas"]] == ["RUNNING"]
    assert d["replicas"][0]["actor_id"] and d["replicas"][0]["ongoing"] == 0
    assert d["http"]["requests"] == value(after, f"{hist}_count", **labels)
    assert d["http"]["codes"]["500"] >= 1 and d["http"]["codes"]["503"] >= 1
    assert 0 < d["http"]["p50_s"] <= d["http"]["p99_s"], d["http"]
    assert v["no_route"]["codes"]["404"] >= 2
    assert {"prefix": "/mcodes", "app": "mcodes", "deployment": "Codes"} in v["routes"]
    assert v["now_ms"] > 0
    serve.delete("mcodes")


@serve.deployment(num_replicas=1, max_ongoing_requests=1)
class Line:
    async def __call__(self, request):
        gate = request.query_params.get("gate")
        if gate:
            import asyncio

            while not os.path.exists(gate):
                await asyncio.sleep(0.005)
        return "ok"


def test_queued_gauge_rises_behind_a_full_replica_and_falls_to_zero(dash, tmp_path):
    serve.run(Line.bind(), name="mline", route_prefix="/mline")
    http = dash[2]
    dep = {"app": "mline", "deployment": "Line"}
    gate = str(tmp_path / "gate")
    done: list = []
    threads = [background(f"{http}/mline?gate={gate}", done) for _ in range(3)]
    # One at the replica (max_ongoing_requests=1), two waiting in the ingress's line.
    wait_for(
        lambda: value(scrape(dash), "volley_serve_queued_requests", **dep) == 2,
        "volley_serve_queued_requests == 2 (two requests behind the full replica)",
        WAIT_S,
    )
    s = scrape(dash)
    assert value(s, "volley_serve_ongoing_requests", **dep) == 1
    assert value(s, "volley_serve_http_ongoing_requests", **dep, route="/mline") == 3
    replica = [
        k for k in s if k[0] == "volley_serve_replica_ongoing_requests" and ("app", "mline") in k[1]
    ]
    assert len(replica) == 1 and s[replica[0]] == 1, replica
    d = next(x for x in serve_json(dash)["deployments"] if x["app"] == "mline")
    assert d["queued"] == 2 and d["http"]["ongoing"] == 3, d
    Path(gate).touch()
    for t in threads:
        t.join(WAIT_S)
    assert done == [200, 200, 200]
    s = scrape(dash)
    assert value(s, "volley_serve_queued_requests", **dep) == 0
    assert value(s, "volley_serve_ongoing_requests", **dep) == 0
    assert value(s, "volley_serve_http_ongoing_requests", **dep, route="/mline") == 0
    serve.delete("mline")


@serve.deployment(
    max_ongoing_requests=4,
    autoscaling_config={
        "min_replicas": 0,
        "max_replicas": 1,
        "initial_replicas": 0,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 600,
    },
)
class FromZero:
    def __init__(self, gate: str) -> None:
        wait_gate(gate)  # the replica stays STARTING until the test lets it start

    async def __call__(self, request):
        return "up"


def test_queued_at_zero_replicas_and_the_replicas_gauge_follows_the_scale(dash, tmp_path):
    gate = str(tmp_path / "gate")
    serve.run(FromZero.bind(gate), name="mzero", route_prefix="/mzero")
    http = dash[2]
    dep = {"app": "mzero", "deployment": "FromZero"}
    s = scrape(dash)
    assert value(s, "volley_serve_target_replicas", **dep) == 0
    assert value(s, "volley_serve_replicas", **dep, state="RUNNING") == 0
    ups = value(s, "volley_serve_autoscaling_decisions_total", **dep, direction="up")
    done: list = []
    t = background(f"{http}/mzero", done)

    def starting():
        s = scrape(dash)
        return (
            value(s, "volley_serve_queued_requests", **dep) == 1
            and value(s, "volley_serve_replicas", **dep, state="STARTING") == 1
            and s
        )

    s = wait_for(starting, "a queued request and a STARTING replica (scale from zero)", WAIT_S)
    assert value(s, "volley_serve_target_replicas", **dep) == 1
    assert value(s, "volley_serve_autoscaling_decisions_total", **dep, direction="up") == ups + 1
    Path(gate).touch()
    t.join(WAIT_S)
    assert done == [200], json.dumps(serve_json(dash)["deployments"])
    s = scrape(dash)
    assert value(s, "volley_serve_queued_requests", **dep) == 0
    wait_for(
        lambda: value(scrape(dash), "volley_serve_replicas", **dep, state="RUNNING") == 1,
        "volley_serve_replicas RUNNING == 1",
        WAIT_S,
    )
    serve.delete("mzero")


@serve.deployment(num_replicas=1)
class Scaled:
    async def __call__(self, request):
        return "s"


def test_the_replicas_gauge_follows_a_change_of_num_replicas(dash):
    serve.run(Scaled.bind(), name="mscale", route_prefix="/mscale")
    dep = {"app": "mscale", "deployment": "Scaled"}

    def replicas(state: str, n: int):
        s = scrape(dash)
        ok = (
            value(s, "volley_serve_replicas", **dep, state=state) == n
            and value(s, "volley_serve_target_replicas", **dep) == n
            and sum(
                v
                for k, v in s.items()
                if k[0] == "volley_serve_replicas" and ("app", "mscale") in k[1]
            )
            == n
        )
        return ok

    wait_for(lambda: replicas("RUNNING", 1), "1 RUNNING replica of mscale", WAIT_S)
    serve.run(Scaled.options(num_replicas=3).bind(), name="mscale", route_prefix="/mscale")
    wait_for(lambda: replicas("RUNNING", 3), "3 RUNNING replicas and target 3", WAIT_S)
    v = serve_json(dash)
    d = next(x for x in v["deployments"] if x["app"] == "mscale")
    assert len({r["id"] for r in d["replicas"]}) == 3
    assert all(r["node"] is not None for r in d["replicas"]), d["replicas"]
    serve.run(Scaled.options(num_replicas=1).bind(), name="mscale", route_prefix="/mscale")
    wait_for(lambda: replicas("RUNNING", 1), "back to 1 RUNNING replica, none STOPPING", WAIT_S)
    serve.delete("mscale")
    wait_for(
        lambda: (
            not any(
                ("app", "mscale") in k[1] for k in scrape(dash) if k[0] == "volley_serve_replicas"
            )
        ),
        "the deleted app's replicas gone from /metrics",
        WAIT_S,
    )


def test_the_serve_view_needs_the_token(dash):
    base, _, _ = dash
    status, body = call(f"{base}/api/v0/serve")
    assert status == 401, body
    status, body = call(f"{base}/api/v0/serve", {"Authorization": "Bearer not-the-token"})
    assert status == 401 and b"not this cluster's token" in body


def test_the_serve_page_in_a_browser(dash):
    from test_dashboard import _browser, _wait

    driver = _browser()  # or a skip saying what is missing
    from selenium.webdriver.common.by import By

    base, token, http = dash
    try:
        serve.run(Scaled.bind(), name="mpage", route_prefix="/mpage")
        for _ in range(5):
            assert call(f"{http}/mpage")[0] == 200
        driver.get(f"{base}/?token={token}")
        driver.get(f"{base}/#serve")
        wait = _wait(driver, WAIT_S)

        def row(_):
            rows = driver.find_elements(
                By.CSS_SELECTOR, 'tr.serve-deployment[data-key="mpage/Scaled"]'
            )
            return rows[0] if rows else None

        def cells(_):
            # The page redraws its tables on each refresh: one read of the row, as text.
            r = row(_)
            if r is None:
                return None
            return (
                r.find_element(By.CSS_SELECTOR, "td.requests").text,
                r.find_element(By.CSS_SELECTOR, "td.codes").text,
                r.text,
            )

        _, codes, whole = wait.until(lambda _: (c := cells(_)) and c[0] == "5" and c)
        assert "200: 5" in codes
        assert "/mpage" in whole and "HEALTHY" in whole
        wait.until(
            lambda _: any(
                "mpage" in x.text and "RUNNING" in x.text
                for x in driver.find_elements(By.CSS_SELECTOR, "tr.serve-replica")
            )
        )
        assert driver.find_element(By.CSS_SELECTOR, "#nav a.active").text == "Serve"
        assert not driver.find_element(By.ID, "error").is_displayed()
    finally:
        driver.quit()
        serve.delete("mpage")
