"""volley.serve's HTTP ingress (Rust, in the head's process): real HTTP over loopback to real
replica actors, routed by the KV documents that serve's controller writes (here written by the
test itself with ``volley.library.kv_put``, the public interface).

The replicas are a plain async actor class with ``__volley_serve_http__``, decoding and
answering with ``volley.serve._wire`` (the contract between the ingress and a replica).
Requests that must stay in flight wait on a gate the test opens, never on a timer.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest
from conftest import _init_2cpu, wait_for

import volley
from volley import library
from volley.serve import _wire

# On a cluster the ingress runs in the head's process: it reaches a replica on another node when
# the routes document names that node ("replica_nodes", as serve's controller writes it; see
# tests/test_serve_over_http.py on the cluster). These hand-written documents name none.
pytestmark = pytest.mark.one_node(
    "hand-written routes documents without replica_nodes: the head's ingress knows only its "
    "own node's replicas then"
)

NS = _wire.KV_NAMESPACE
WAIT_S = 30.0


@volley.remote(num_cpus=0, max_concurrency=64, max_restarts=0)
class Replica:
    """Answers with what it got: headers ``x-replica``, ``x-path``, ``x-prefix``, ``x-method``,
    ``x-query``, ``x-client`` and each request header as ``x-got-NAME``; the body echoed.
    ``?gate=1`` holds the request until the test opens the gate; ``?status=N`` answers N."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.now = 0
        self.peak = 0
        self.served = 0
        self.gate = asyncio.Event()

    async def __volley_serve_http__(self, frame: bytes) -> bytes:
        req = _wire.decode_request(frame)
        q = dict(urllib.parse.parse_qsl(req["query"]))
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            if q.get("raise"):
                raise RuntimeError("the replica raised")
            if q.get("junk"):
                return b"junk"
            if q.get("none"):
                return None
            if q.get("gate"):
                await self.gate.wait()
            elif q.get("yield"):
                await asyncio.sleep(0.01)
            headers = [
                (b"x-replica", self.name.encode()),
                (b"x-path", req["path"].encode()),
                (b"x-prefix", req["route_prefix"].encode()),
                (b"x-method", req["method"].encode()),
                (b"x-query", req["query"].encode()),
                (b"x-client", req["client"].encode()),
                (b"x-request-id-seen", req["request_id"].encode()),
            ]
            headers += [(b"x-got-" + n, v) for n, v in req["headers"] if n.startswith(b"x-t-")]
            self.served += 1
            return _wire.encode_response(int(q.get("status", 200)), headers, req["body"])
        finally:
            self.now -= 1

    async def ping(self) -> None:
        """A public async method: volley runs an actor as async when one of its public methods
        is (``_actor._method_table`` skips dunder names such as ``__volley_serve_http__``)."""

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate = asyncio.Event()

    def stats(self) -> dict:
        return {"now": self.now, "peak": self.peak, "served": self.served}

    def actor_id(self) -> str:
        return volley.get_runtime_context().get_actor_id()

    def pid(self) -> int:
        return os.getpid()


def route(
    prefix: str,
    replicas: list,
    *,
    max_ongoing: int = 8,
    max_queued: int = -1,
    timeout: float | None = None,
    name: str | None = None,
) -> dict:
    return {
        "prefix": prefix,
        "app": "default",
        "deployment": name or f"D{prefix}",
        "replicas": [volley.get(r.actor_id.remote()) for r in replicas],
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": max_queued,
        "request_timeout_s": timeout,
    }


_version = [0]


def put_routes(*routes: dict) -> None:
    _version[0] += 1
    doc = {"version": _version[0], "routes": list(routes)}
    assert library.kv_put(_wire.ROUTES_KEY, json.dumps(doc), namespace=NS)


def listen(port: int = 0) -> dict:
    """Writes the "http" document; the "http_status" the ingress answers."""
    library.kv_delete(_wire.HTTP_STATUS_KEY, namespace=NS)
    doc = json.dumps({"host": "127.0.0.1", "port": port})
    assert library.kv_put(_wire.HTTP_KEY, doc, namespace=NS)
    raw = wait_for(
        lambda: library.kv_get(_wire.HTTP_STATUS_KEY, namespace=NS), "the ingress's http_status"
    )
    return json.loads(raw)


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def close(self) -> None:
        self.conn.close()


def get(port: int, path: str, headers=None):
    c = Client(port)
    try:
        return c.request("GET", path, headers=headers)
    finally:
        c.close()


def in_threads(n: int, fn) -> tuple[list, list[threading.Thread]]:
    out: list = []
    lock = threading.Lock()

    def run(i):
        r = fn(i)
        with lock:
            out.append(r)

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    return out, ts


def join(ts, what: str) -> None:
    for t in ts:
        t.join(WAIT_S)
        assert not t.is_alive(), f"timed out waiting for {what}"


@pytest.fixture(scope="module")
def serving(_volley_module_scope):
    """volley, started for this module's tests (each needs the same ingress and replicas)."""
    if not volley.is_initialized():
        _init_2cpu()


@pytest.fixture(scope="module")
def port(serving):
    status = listen(0)
    assert status["error"] is None, status
    assert status["port"] > 0
    return status["port"]


@pytest.fixture(scope="module")
def pair(serving):
    a, b = Replica.remote("A"), Replica.remote("B")
    volley.get([a.stats.remote(), b.stats.remote()])
    return a, b


def test_routes_by_longest_prefix_on_segment_boundaries(port, pair):
    a, b = pair
    put_routes(route("/echo", [a]), route("/echo/deep", [b]))
    st, h, _ = get(port, "/echo")
    assert (st, h["x-replica"], h["x-prefix"]) == (200, "A", "/echo")
    st, h, _ = get(port, "/echo/x?k=v")
    assert (st, h["x-replica"], h["x-path"], h["x-query"]) == (200, "A", "/echo/x", "k=v")
    assert get(port, "/echo/deep/y")[1]["x-replica"] == "B"
    assert get(port, "/echo/deeper")[1]["x-replica"] == "A", "not a segment boundary"
    st, h, body = get(port, "/echoes")
    assert st == 404
    doc = json.loads(body)
    assert doc["path"] == "/echoes" and "no route" in doc["error"]
    assert h["x-request-id"] == doc["request_id"]
    put_routes(route("/", [b]), route("/echo", [a]))
    assert get(port, "/echoes")[1]["x-replica"] == "B", "'/' takes what nothing longer does"


def test_request_ids(port, pair):
    a, _ = pair
    put_routes(route("/r", [a]))
    _, h1, _ = get(port, "/r")
    _, h2, _ = get(port, "/r")
    assert h1["x-request-id"] != h2["x-request-id"]
    assert h1["x-request-id"] == h1["x-request-id-seen"], "the frame carries the same id"
    _, h, _ = get(port, "/r", headers={"x-request-id": "mine-42"})
    assert h["x-request-id"] == "mine-42" == h["x-request-id-seen"]


def test_body_and_headers_both_ways_over_one_kept_alive_connection(port, pair):
    a, _ = pair
    put_routes(route("/echo", [a]))
    big = os.urandom(1 << 20)
    c = Client(port)
    try:
        st, h, body = c.request("POST", "/echo/up?x=1", big, {"x-t-one": "1", "X-T-Two": "zwei"})
        sock = c.conn.sock
        assert st == 200 and body == big
        assert (h["x-method"], h["x-got-x-t-one"], h["x-got-x-t-two"]) == ("POST", "1", "zwei")
        assert h["x-client"].startswith("127.0.0.1:")
        # Out of band but inline (a few KB), as well as through the store (1 MB, above).
        mid = os.urandom(8000)
        assert c.request("POST", "/echo/mid", mid)[2] == mid
        for i in range(5):
            st, h, body = c.request("PUT", f"/echo/{i}", b"small %d" % i)
            assert (st, body, h["x-method"]) == (200, b"small %d" % i, "PUT")
        assert c.conn.sock is sock, "the connection was kept alive and reused"
        st, _, body = c.request("GET", "/echo?status=418")
        assert st == 418 and body == b""
    finally:
        c.close()


def test_http2_prior_knowledge(port, pair):
    if shutil.which("curl") is None:
        pytest.skip("no curl to speak h2c")
    a, _ = pair
    put_routes(route("/echo", [a]))
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "--data-binary",
            "h2 body",
            f"http://127.0.0.1:{port}/echo/h2",
        ],
        capture_output=True,
        timeout=WAIT_S,
        check=True,
    ).stdout
    assert out.startswith(b"HTTP/2 200"), out[:200]
    assert b"x-replica: A" in out and out.endswith(b"h2 body")


def test_concurrent_requests_spread_over_two_replicas_within_the_bound(port, pair):
    a, b = pair
    for r in pair:
        r.close.remote()
    put_routes(route("/c", [a, b], max_ongoing=3))
    results, ts = in_threads(10, lambda i: get(port, "/c?gate=1"))
    # Six run (three on each replica), four wait in the ingress for a free one.
    wait_for(
        lambda: [s["now"] for s in volley.get([a.stats.remote(), b.stats.remote()])] == [3, 3],
        "three requests under way at each replica",
    )
    for r in pair:
        r.open.remote()
    join(ts, "the gated requests")
    assert sorted(r[0] for r in results) == [200] * 10
    assert {r[1]["x-replica"] for r in results} == {"A", "B"}
    peaks = [s["peak"] for s in volley.get([a.stats.remote(), b.stats.remote()])]
    assert max(peaks) <= 3, f"more than max_ongoing_requests at one replica: {peaks}"
    # Many short requests from many connections: every one answered, the bound held.
    results, ts = in_threads(32, lambda i: [get(port, "/c?yield=1")[0] for _ in range(4)])
    join(ts, "32 clients' requests")
    assert sorted(sum(results, [])) == [200] * 128
    peaks = [s["peak"] for s in volley.get([a.stats.remote(), b.stats.remote()])]
    assert max(peaks) <= 3, f"more than max_ongoing_requests at one replica: {peaks}"


def test_overload_answers_503_with_retry_after(port, pair):
    a, _ = pair
    a.close.remote()
    put_routes(route("/o", [a], max_ongoing=1, max_queued=1))
    first, t1 = in_threads(1, lambda i: get(port, "/o?gate=1"))
    wait_for(lambda: volley.get(a.stats.remote())["now"] == 1, "the first request under way")
    rest, ts = in_threads(4, lambda i: get(port, "/o?gate=1"))
    # One waits (the bound is 1); the three others are turned away at once.
    wait_for(lambda: len(rest) == 3, "three requests turned away")
    for st, h, body in rest:
        assert st == 503 and h["retry-after"] == "1", (st, h)
        doc = json.loads(body)
        assert "overloaded" in doc["error"] and doc["request_id"] == h["x-request-id"]
    a.open.remote()
    join(t1 + ts, "the admitted requests")
    assert sorted(r[0] for r in first + rest) == [200, 200, 503, 503, 503]


def test_timeout_answers_504(port, pair):
    a, _ = pair
    a.close.remote()
    put_routes(route("/t", [a], max_ongoing=1, timeout=0.3))
    st, h, body = get(port, "/t?gate=1")
    assert st == 504
    doc = json.loads(body)
    assert "timeout" in doc["error"] and doc["request_id"] == h["x-request-id"]
    assert h["x-request-id"] in doc["error"]
    # The timed-out call still holds its replica (max_ongoing 1): the next one waits for it too.
    st, _, _ = get(port, "/t")
    assert st == 504
    a.open.remote()
    wait_for(lambda: get(port, "/t")[0] == 200, "the replica free again")


def test_route_table_swapped_while_requests_run(port, pair):
    a, b = pair
    for r in pair:
        r.open.remote()
    put_routes(route("/s", [a, b], max_ongoing=4))
    stop = threading.Event()

    def hammer(i):
        got = []
        c = Client(port)
        try:
            while not stop.is_set():
                got.append(c.request("GET", "/s/x?yield=1")[0])
        finally:
            c.close()
        return got

    results, ts = in_threads(6, hammer)
    for i in range(30):
        reps = [[a], [b], [a, b]][i % 3]
        put_routes(route("/s", reps, max_ongoing=1 + i % 4))
        time.sleep(0.02)
    stop.set()
    join(ts, "the hammering clients")
    codes = sum(results, [])
    assert codes and set(codes) == {200}, f"failures while the table changed: {set(codes)}"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
        return True
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection was queued on the listener as it closed.
        return False


def test_rebind_and_port_in_use(port, pair):
    a, _ = pair
    put_routes(route("/echo", [a]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        new = s.getsockname()[1]
    status = listen(new)
    assert status == {"host": "127.0.0.1", "port": new, "error": None}
    assert get(new, "/echo")[0] == 200
    # The same document again: the listener stays, and the status is written again.
    assert listen(new) == status
    assert get(new, "/echo")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        get(port, "/echo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        status = listen(busy)
        assert status["port"] == busy and "in use" in status["error"], status
    # No "http" document: nothing listens.
    assert listen(new)["error"] is None
    assert library.kv_delete(_wire.HTTP_KEY, namespace=NS)
    wait_for(lambda: not _accepts(new), "the listener to close once its document is deleted")
    # Back on the first port (the module's other tests use it).
    status = listen(port)
    assert status["error"] is None and status["port"] == port
    assert get(port, "/echo")[0] == 200


def post(port: int, path: str, body: bytes = b"x"):
    c = Client(port)
    try:
        return c.request("POST", path, body=body)
    finally:
        c.close()


def test_a_get_whose_replica_dies_under_it_goes_to_another_once(port):
    a, b = Replica.remote("GA"), Replica.remote("GB")
    pids = volley.get([a.pid.remote(), b.pid.remote()])
    put_routes(route("/g", [a, b], max_ongoing=1))
    results, ts = in_threads(2, lambda i: get(port, "/g?gate=1"))
    wait_for(
        lambda: [s["now"] for s in volley.get([a.stats.remote(), b.stats.remote()])] == [1, 1],
        "a request under way at each replica",
    )
    os.kill(pids[0], signal.SIGKILL)
    # The GET that was on the killed replica waits for the other's slot (not a 500).
    wait_for(lambda: volley.get(b.stats.remote())["now"] == 1, "the other replica still busy")
    assert results == [], results
    b.open.remote()
    join(ts, "both GETs")
    assert sorted((st, h["x-replica"]) for st, h, _ in results) == [(200, "GB"), (200, "GB")]
    volley.kill(b)


def test_a_killed_replica(port):
    a, b = Replica.remote("KA"), Replica.remote("KB")
    pids = volley.get([a.pid.remote(), b.pid.remote()])
    put_routes(route("/k", [a, b], max_ongoing=1))
    # One request in flight on each; the POST on the killed replica gets a 500 naming it (a
    # GET would go to the other replica: the test above).
    results, ts = in_threads(2, lambda i: post(port, "/k?gate=1"))
    wait_for(
        lambda: [s["now"] for s in volley.get([a.stats.remote(), b.stats.remote()])] == [1, 1],
        "a request under way at each replica",
    )
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: len(results) == 1, "the killed replica's request answered")
    st, h, body = results[0]
    doc = json.loads(body)
    assert st == 500 and "died" in doc["error"] and h["x-request-id"] in doc["error"], doc
    b.open.remote()
    join(ts, "the other replica's request")
    assert results[1][0] == 200

    def dead():
        try:
            volley.get(a.stats.remote())
        except volley.exceptions.ActorDiedError:
            return True
        return False

    wait_for(dead, "the engine to see the replica dead")
    # Every later request goes to the live one, none hangs or fails.
    for _ in range(6):
        st, h, _ = get(port, "/k")
        assert (st, h["x-replica"]) == (200, "KB")
    volley.kill(b)
    wait_for(lambda: get(port, "/k")[0] == 503, "503 once no replica lives")
    st, _, body = get(port, "/k")
    assert st == 503 and "no replica alive" in json.loads(body)["error"]


def test_bad_documents(port, pair):
    a, _ = pair
    put_routes(route("/echo", [a]))
    # A routes document the ingress cannot read: it keeps the table it had.
    assert library.kv_put(_wire.ROUTES_KEY, "{not json", namespace=NS)
    assert library.kv_put(
        _wire.HTTP_KEY, json.dumps({"host": "127.0.0.1", "port": port}), namespace=NS
    )
    assert get(port, "/echo")[0] == 200
    library.kv_delete(_wire.HTTP_STATUS_KEY, namespace=NS)
    assert library.kv_put(_wire.HTTP_KEY, json.dumps({"port": "x"}), namespace=NS)
    raw = wait_for(lambda: library.kv_get(_wire.HTTP_STATUS_KEY, namespace=NS), "http_status")
    assert "port" in json.loads(raw)["error"]
    assert listen(port)["error"] is None
    assert get(port, "/echo")[0] == 200


def test_a_replica_that_fails_or_answers_garbage_gets_a_500_naming_the_request(port, pair):
    a, _ = pair
    put_routes(route("/f", [a]))
    for query, said in [
        ("raise=1", "the replica raised"),
        ("junk=1", "not a response frame"),
        ("none=1", "other than bytes"),
    ]:
        st, h, body = get(port, f"/f?{query}")
        doc = json.loads(body)
        assert st == 500 and said in doc["error"], (query, doc)
        assert doc["request_id"] == h["x-request-id"] and h["x-request-id"] in doc["error"]
    assert get(port, "/f")[0] == 200, "the replica still serves"
