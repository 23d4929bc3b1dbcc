"""Streaming in volley.serve: handle calls with ``stream=True`` on generator methods, and
generator (or ``StreamingResponse``) answers sent over real HTTP as chunked transfer (h2c DATA
frames), each chunk as it is yielded; errors, a client that leaves, and the stream's slot."""

from __future__ import annotations

import asyncio
import gc
import http.client as httpc
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import settled_count, wait_for

from volley import serve

WAIT_S = 30.0


def _wait_file(path: str) -> None:
    """In a replica: waits until the test made ``path`` (the test's go-ahead)."""
    deadline = time.monotonic() + WAIT_S
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never made {path}")
        time.sleep(0.01)


async def _await_file(path: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never made {path}")
        await asyncio.sleep(0.01)


@pytest.fixture
def http(serve_url):
    """The ingress's (host, port)."""
    host, port = serve_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@serve.deployment
class Gens:
    def count(self, n: int):
        yield from range(n)

    async def acount(self, n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    def gated(self, go: str):
        yield "first"
        _wait_file(go)
        yield "second"

    def fails(self):
        yield 1
        yield 2
        raise ValueError("broke after two")

    def plain(self) -> int:
        return 7

    async def forever(self, mark: str):
        try:
            while True:
                yield "tick"
                await asyncio.sleep(0.01)
        except BaseException as e:
            Path(mark).write_text(type(e).__name__)
            raise

    def forever_sync(self, mark: str):
        try:
            while True:
                yield "tick"
                time.sleep(0.01)
        except BaseException as e:
            Path(mark).write_text(type(e).__name__)
            raise


# ---- over a handle -------------------------------------------------------------------------


def test_a_handle_streams_a_generators_items_in_order(volley_shared):
    h = serve.run(Gens.bind(), name="gens", route_prefix=None)
    try:
        gen = h.options(stream=True).count.remote(5)
        assert isinstance(gen, serve.DeploymentResponseGenerator)
        assert list(gen) == [0, 1, 2, 3, 4]

        async def consume():
            return [x async for x in h.options(stream=True).acount.remote(3)]

        assert asyncio.run(consume()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    finally:
        serve.delete("gens")


def test_a_stream_whose_replica_was_stopping_goes_to_another(volley_shared):
    import volley
    from volley.serve import _handle, _wire

    h = serve.run(Gens.options(num_replicas=2).bind(), name="gens2", route_prefix=None)
    try:
        doc = json.loads(volley.library.kv_get("deployment/gens2/Gens", namespace="volley.serve"))
        stopping = doc["replicas"][0]
        # The replica begins to drain (as in a rolling update) before this handle hears of it:
        # it refuses new calls with ReplicaStoppingError before running them.
        actor = volley.get_actor(stopping, namespace=_wire.KV_NAMESPACE)
        drained = actor.drain.remote(60.0)
        assert volley.get(drained, timeout=WAIT_S) == 0
        got = [list(h.options(stream=True).count.remote(3)) for _ in range(10)]

        async def consume():
            return [x async for x in h.options(stream=True).count.remote(2)]

        got += [asyncio.run(consume()) for _ in range(4)]
        assert got == [[0, 1, 2]] * 10 + [[0, 1]] * 4
        # (The router chose the stopping replica at least once: 14 calls, two replicas.)
        assert stopping in _handle._router("gens2", "Gens").dead
    finally:
        serve.delete("gens2")


def test_items_come_as_they_are_yielded_not_at_the_end(volley_shared, tmp_path):
    h = serve.run(Gens.bind(), name="gens", route_prefix=None)
    try:
        go = tmp_path / "go"
        gen = h.options(stream=True).gated.remote(str(go))
        # The generator waits for `go` after its first item: that item must come first.
        assert next(gen) == "first"
        go.touch()
        assert list(gen) == ["second"]
    finally:
        serve.delete("gens")


def test_an_error_is_raised_at_the_item_where_it_happened(volley_shared):
    h = serve.run(Gens.bind(), name="gens", route_prefix=None)
    try:
        gen = h.options(stream=True).fails.remote()
        assert next(gen) == 1
        assert next(gen) == 2
        with pytest.raises(ValueError, match="broke after two"):
            next(gen)
    finally:
        serve.delete("gens")


def test_stream_flags_that_do_not_fit_the_method_fail_with_a_clear_message(volley_shared):
    h = serve.run(Gens.bind(), name="gens", route_prefix=None)
    try:
        with pytest.raises(TypeError, match="not a generator.*without stream=True"):
            list(h.options(stream=True).plain.remote())
        with pytest.raises(TypeError, match="is a generator.*stream=True"):
            h.count.remote(3).result(timeout_s=WAIT_S)
        with pytest.raises(TypeError, match="stream is True or False"):
            h.options(stream="yes")
        assert h.plain.remote().result(timeout_s=WAIT_S) == 7  # the replica still serves
    finally:
        serve.delete("gens")


def test_a_stream_to_a_deployment_that_does_not_exist_fails_at_the_call(volley_shared):
    h = serve.DeploymentHandle("Nope", "nothing-here")
    with pytest.raises(serve.NoReplicaError, match="does not exist"):
        h.options(stream=True).remote()


def test_what_cannot_be_streamed_is_refused_with_its_type():
    from volley.serve._streaming import chunk_bytes

    with pytest.raises(TypeError, match="generator.*not str"):
        serve.StreamingResponse("a whole body")
    with pytest.raises(TypeError, match="not builtins.set"):
        chunk_bytes({1})


@serve.deployment
class BadItem:
    def __call__(self, request):
        if request.path.endswith("/first"):
            yield {1, 2}
        yield "ok"
        yield {3}


def test_an_item_that_cannot_be_sent_fails_the_stream_where_it_is(http):
    serve.run(BadItem.bind(), name="bad", route_prefix="/bad")
    conn, r = _open(http, "/bad/first")
    try:
        doc = json.loads(r.read())
        assert r.status == 500 and "builtins.set" in doc["error"], doc
    finally:
        conn.close()
    conn, r = _open(http, "/bad")
    try:
        with pytest.raises(httpc.IncompleteRead) as e:
            r.read()
        assert e.value.partial == b"ok"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "seen"), [("forever", "CancelledError"), ("forever_sync", "GeneratorExit")]
)
def test_dropping_the_generator_stops_it_in_the_replica(volley_shared, tmp_path, method, seen):
    h = serve.run(Gens.bind(), name="gens", route_prefix=None)
    try:
        mark = tmp_path / "mark"
        gen = getattr(h.options(stream=True), method).remote(str(mark))
        assert next(gen) == "tick"
        del gen
        gc.collect()
        wait_for(mark.exists, f"the replica's {method} generator to be stopped", WAIT_S)
        assert mark.read_text() == seen
        assert h.plain.remote().result(timeout_s=WAIT_S) == 7
    finally:
        serve.delete("gens")


# ---- over HTTP -----------------------------------------------------------------------------


def _open(addr, path: str, headers: dict | None = None) -> tuple:
    conn = httpc.HTTPConnection(*addr, timeout=WAIT_S)
    conn.request("GET", path, headers=headers or {})
    return conn, conn.getresponse()


@serve.deployment
class Gated:
    """A generator ``__call__``: one chunk, then waits for the test's file, then another."""

    def __init__(self, go: str) -> None:
        self.go = go

    def __call__(self, request):
        yield "first\n"
        _wait_file(self.go)
        yield "second\n"


def test_a_generator_streams_over_http_chunk_by_chunk(http, tmp_path):
    go = tmp_path / "go"
    serve.run(Gated.bind(str(go)), name="gated", route_prefix="/g")
    conn, r = _open(http, "/g", {"x-request-id": "s-1"})
    try:
        assert r.status == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["x-request-id"] == "s-1"
        # The first chunk reaches the client while the generator still waits for `go`.
        assert r.read1() == b"first\n"
        go.touch()
        assert r.read() == b"second\n"
    finally:
        conn.close()


def test_sse_with_a_streaming_response_and_json_lines(http):
    @serve.deployment
    class Events:
        async def __call__(self, request):
            if request.path.endswith("/lines"):
                return self.lines()

            async def events():
                for i in range(3):
                    yield f"data: {i}\n\n"

            return serve.StreamingResponse(
                events(), status_code=201, headers={"x-kind": "sse"}, media_type="text/event-stream"
            )

        async def lines(self):
            for i in range(3):
                yield {"n": i}

    serve.run(Events.bind(), name="events", route_prefix="/ev")
    conn, r = _open(http, "/ev")
    try:
        assert (r.status, r.headers["x-kind"]) == (201, "sse")
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    finally:
        conn.close()
    conn, r = _open(http, "/ev/lines")
    try:
        assert r.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(x) for x in r.read().splitlines()] == [{"n": 0}, {"n": 1}, {"n": 2}]
    finally:
        conn.close()


@serve.deployment
class Breaks:
    def __call__(self, request):
        if request.path.endswith("/early"):
            raise KeyError("before any chunk")
        yield b"a"
        yield b"b"
        raise ValueError("mid-stream")


def test_an_error_mid_stream_ends_the_body_incomplete(http):
    serve.run(Breaks.bind(), name="breaks", route_prefix="/b")
    conn, r = _open(http, "/b")
    try:
        assert r.status == 200
        with pytest.raises(httpc.IncompleteRead) as e:
            r.read()
        assert e.value.partial == b"ab"  # the chunks sent, and no clean end
    finally:
        conn.close()


def test_an_error_before_the_first_chunk_is_a_500_with_the_request_id(http):
    serve.run(Breaks.bind(), name="breaks", route_prefix="/b")
    conn, r = _open(http, "/b/early", {"x-request-id": "early-1"})
    try:
        doc = json.loads(r.read())
        assert (r.status, doc["request_id"]) == (500, "early-1")
        assert "before any chunk" in doc["error"]
    finally:
        conn.close()


@serve.deployment
class Ticker:
    def __init__(self, mark: str) -> None:
        self.mark = mark

    async def __call__(self, request):
        if request.path.endswith("/sync"):
            return serve.StreamingResponse(self.ticks_sync(), media_type="text/event-stream")
        return serve.StreamingResponse(self.ticks(), media_type="text/event-stream")

    async def ticks(self):
        try:
            while True:
                yield "data: tick\n\n"
                await asyncio.sleep(0.02)
        except BaseException as e:
            Path(self.mark).write_text(type(e).__name__)
            raise

    def ticks_sync(self):
        try:
            while True:
                yield "data: tick\n\n"
                time.sleep(0.02)
        except BaseException as e:
            Path(self.mark).write_text(type(e).__name__)
            raise


@pytest.mark.parametrize(("path", "seen"), [("/t", "CancelledError"), ("/t/sync", "GeneratorExit")])
def test_a_client_that_leaves_mid_stream_cancels_the_generator(http, tmp_path, path, seen):
    mark = tmp_path / "mark"
    serve.run(Ticker.bind(str(mark)), name="ticker", route_prefix="/t")
    sock = socket.create_connection(http, timeout=WAIT_S)
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    got = b""
    while b"data: tick" not in got:
        data = sock.recv(4096)
        assert data, f"the connection closed before a chunk: {got!r}"
        got += data
    sock.close()
    wait_for(mark.exists, "the replica's generator to be stopped after the client left", WAIT_S)
    assert mark.read_text() == seen


def test_a_stream_counts_as_ongoing_until_it_ends(http, tmp_path):
    go = tmp_path / "go"
    serve.run(
        Gated.options(max_ongoing_requests=1, max_queued_requests=0).bind(str(go)),
        name="gated",
        route_prefix="/g",
    )
    conn, r = _open(http, "/g")
    try:
        assert r.read1() == b"first\n"

        def ongoing() -> int:
            return serve.status().applications["gated"].deployments["Gated"].ongoing_requests

        # The replica counts it (serve.status(), the autoscaler) while it streams.
        wait_for(lambda: ongoing() == 1, "the open stream to count as ongoing at its replica")
        # The stream holds the replica's only slot: another request is refused, not queued.
        c2, r2 = _open(http, "/g")
        assert r2.status == 503, r2.read()
        assert r2.headers["retry-after"]
        c2.close()
        go.touch()
        assert r.read() == b"second\n"
    finally:
        conn.close()
    # The stream is over: its slot is free again.
    c3, r3 = _open(http, "/g")
    try:
        assert (r3.status, r3.read()) == (200, b"first\nsecond\n")
    finally:
        c3.close()
    wait_for(lambda: ongoing() == 0, "the streams' ends to be counted at their replica")


def test_h2c_streams_as_data_frames(http, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("no curl to speak h2c")
    go = tmp_path / "go"
    go.touch()
    serve.run(Gated.bind(str(go)), name="gated", route_prefix="/g")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "--http2-prior-knowledge",
            "-D",
            "-",
            f"http://{http[0]}:{http[1]}/g",
        ],
        capture_output=True,
        timeout=WAIT_S,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/2 200"), out.stdout
    assert out.stdout.endswith(b"first\nsecond\n"), out.stdout
    # A generator that raises mid-stream: the chunks sent, then the h2 stream is reset.
    serve.run(Breaks.bind(), name="breaks", route_prefix="/b")
    out = subprocess.run(
        ["curl", "-sS", "-N", "--http2-prior-knowledge", f"http://{http[0]}:{http[1]}/b"],
        capture_output=True,
        timeout=WAIT_S,
    )
    assert (out.returncode, out.stdout) == (92, b"ab"), out
    assert b"not closed cleanly" in out.stderr, out.stderr


def test_a_websocket_upgrade_to_a_plain_deployment_is_a_501_saying_how_to_serve_one(http):
    serve.run(Gated.bind("unused"), name="gated", route_prefix="/g")
    headers = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
    }
    conn, r = _open(http, "/g/ws", headers)
    try:
        doc = json.loads(r.read())
        assert r.status == 501
        assert "serves no WebSockets" in doc["error"] and "@serve.ingress" in doc["error"]
        assert doc["request_id"] == r.headers["x-request-id"]
    finally:
        conn.close()


@serve.deployment(request_timeout_s=1.0, max_ongoing_requests=1, max_queued_requests=0)
class Late:
    """Waits for the test's file before its first chunk (``/late``) or after it."""

    def __init__(self, go: str) -> None:
        self.go = go

    def __call__(self, request):
        if request.path.endswith("/late"):
            _wait_file(self.go)
        yield "first\n"
        if not request.path.endswith("/late"):
            _wait_file(self.go)
        yield "second\n"


def test_request_timeout_bounds_the_time_to_the_first_chunk_only(http, tmp_path):
    go = tmp_path / "go"
    serve.run(Late.bind(str(go)), name="late", route_prefix="/l")
    conn, r = _open(http, "/l/late", {"x-request-id": "late-1"})
    try:
        doc = json.loads(r.read())
        assert (r.status, doc["request_id"]) == (504, "late-1"), doc
    finally:
        conn.close()
    go.touch()  # the late generator now yields: its stream, nobody's any more, is cancelled

    def served() -> bytes | None:
        c, r = _open(http, "/l/again")
        try:
            return r.read() if r.status == 200 else None
        finally:
            c.close()

    # Its slot comes back once the late generator, its stream cancelled, is closed.
    assert wait_for(served, "a request to be served after the late one") == b"first\nsecond\n"
    # A stream outlives the timeout once its first chunk is out.
    go.unlink()
    started = time.monotonic()
    conn, r = _open(http, "/l/slow")
    try:
        assert r.status == 200 and r.read1() == b"first\n"
        wait_for(lambda: time.monotonic() - started > 1.5, "the request's timeout to pass")
        go.touch()
        assert r.read() == b"second\n"
    finally:
        conn.close()


@serve.deployment
class Firehose:
    """Yields 256 KiB chunks as fast as it can, counting them in a file."""

    def __init__(self, count: str) -> None:
        self.count = count

    def __call__(self, request):
        chunk = b"z" * (256 * 1024)
        for i in range(1, 301):
            yield chunk
            Path(self.count).write_text(str(i))


def test_a_client_that_does_not_read_holds_the_generator_back(http, tmp_path):
    count = tmp_path / "count"
    serve.run(Firehose.bind(str(count)), name="hose", route_prefix="/hose")
    sock = socket.create_connection(http, timeout=WAIT_S)
    try:
        sock.sendall(b"GET /hose HTTP/1.1\r\nhost: x\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # The client reads nothing more: the generator stops once the socket's buffers, the
        # ingress's 16 chunks and the replica's window (32 past the ingress's last count) are
        # full, instead of making all 300 chunks (75 MiB) into the engine's memory.
        held = settled_count(count, "the generator to start")
        assert held < 150, f"the generator made {held} chunks for a client that read none"
        # Reading on, the client gets every byte.
        sock.settimeout(WAIT_S)
        got = len(first)  # (headers and chunk sizes too: at least the body's bytes)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
            if data.endswith(b"0\r\n\r\n"):
                break
        assert got >= 300 * 256 * 1024
        assert count.read_text() == "300"
    finally:
        sock.close()
