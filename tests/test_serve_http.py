"""What a serve replica does with a request frame: ``volley.serve._http.handle_frame`` fed real
frames from ``_wire`` (as the Rust ingress sends them), every kind of return value, user errors,
bad JSON, headers in any case, repeated query parameters, a 1 MB body, sync targets in a thread,
and once inside a real volley async actor called with the frame bytes."""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import threading
import time

import pytest

import volley
from volley.serve import _http, _wire
from volley.serve._http import (
    HTTPException,
    InvalidJSON,
    JSONResponse,
    PlainTextResponse,
    Request,
    Response,
    encode_error,
    handle_frame,
)

WAIT_S = 30.0


def frame(
    method: str = "GET",
    path: str = "/app/x",
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    rid: str = "rid-1",
    prefix: str = "/app",
    client: str = "127.0.0.1:40000",
) -> bytes:
    return _wire.encode_request(rid, method, path, prefix, query, client, headers or [], body)


def answer(target, fr: bytes | None = None, **kw) -> tuple[int, dict[bytes, bytes], bytes]:
    out = asyncio.run(handle_frame(target, fr if fr is not None else frame(**kw)))
    status, headers, body = _wire.decode_response(out)
    names = [k for k, _ in headers]
    for once in (b"x-request-id", b"content-type"):
        assert names.count(once) <= 1, f"{once!r} is repeated: {headers}"
    return status, dict(headers), body


def returning(value):
    def target(request):
        return value

    return target


# --------------------------------------------------------------------------- return values


@pytest.mark.parametrize(
    ("value", "body", "ctype"),
    [
        (b"\x00\xffraw", b"\x00\xffraw", b"application/octet-stream"),
        (bytearray(b"ba"), b"ba", b"application/octet-stream"),
        ("héllo", "héllo".encode(), b"text/plain; charset=utf-8"),
        ({"a": [1, 2.5, None, True]}, b'{"a":[1,2.5,null,true]}', b"application/json"),
        ([1, "x"], b'[1,"x"]', b"application/json"),
        (7, b"7", b"application/json"),
        (0.5, b"0.5", b"application/json"),
        (None, b"null", b"application/json"),
        (False, b"false", b"application/json"),
    ],
)
def test_each_plain_return_type_becomes_its_content_type(value, body, ctype):
    status, headers, got = answer(returning(value))
    assert (status, got, headers[b"content-type"]) == (200, body, ctype)
    assert headers[b"x-request-id"] == b"rid-1"


def test_a_response_is_sent_with_its_status_headers_and_media_type():
    r = Response(b"<p>hi</p>", status_code=201, headers={"X-Thing": "1"}, media_type="text/html")
    status, headers, body = answer(returning(r), rid="abc")
    assert status == 201 and body == b"<p>hi</p>"
    assert headers == {
        b"x-thing": b"1",
        b"content-type": b"text/html; charset=utf-8",
        b"x-request-id": b"abc",
    }


def test_json_and_plain_text_responses_and_starlettes_content_keyword():
    status, headers, body = answer(returning(JSONResponse({"k": "v"}, status_code=418)))
    assert (status, json.loads(body), headers[b"content-type"]) == (
        418,
        {"k": "v"},
        b"application/json",
    )
    status, headers, body = answer(returning(PlainTextResponse("plain", status_code=404)))
    assert (status, body, headers[b"content-type"]) == (404, b"plain", b"text/plain; charset=utf-8")
    out = asyncio.run(
        handle_frame(returning(Response(content="c", headers=[("a", "1"), ("a", "2")])), frame())
    )
    status, headers, body = _wire.decode_response(out)
    assert (status, body, headers[:2]) == (200, b"c", [(b"a", b"1"), (b"a", b"2")])


def test_the_frames_request_id_replaces_one_the_user_set_and_framing_is_the_ingresss():
    framing = {"x-request-id": "mine", "Content-Length": "99", "Transfer-Encoding": "chunked"}
    status, headers, _ = answer(returning(Response(b"ab", headers=framing)), rid="r7")
    assert headers == {b"x-request-id": b"r7"}


@pytest.mark.parametrize("value", [{1, 2}, object(), (x for x in ())])
def test_an_unsupported_return_type_is_a_500_naming_the_type(value):
    status, headers, body = answer(returning(value), rid="r-type")
    doc = json.loads(body)
    assert status == 500 and doc["request_id"] == "r-type" and doc["status"] == 500
    assert type(value).__name__ in doc["error"]
    assert headers[b"x-request-id"] == b"r-type"


def test_json_that_cannot_be_encoded_is_a_500_not_invalid_json():
    status, _, body = answer(returning({"x": math.nan}))
    assert status == 500 and "Out of range float" in json.loads(body)["error"]
    status, _, body = answer(returning({"x": object()}))
    assert status == 500 and "not JSON serializable" in json.loads(body)["error"]


# --------------------------------------------------------------------------- errors


def test_a_user_exception_is_a_500_naming_request_id_type_and_message(capfd):
    def boom(request):
        raise KeyError("no such model: m3")

    status, headers, body = answer(boom, rid="req-42")
    assert status == 500 and headers[b"x-request-id"] == b"req-42"
    assert headers[b"content-type"] == b"application/json"
    doc = json.loads(body)
    assert doc == {"error": "KeyError: 'no such model: m3'", "request_id": "req-42", "status": 500}
    err = capfd.readouterr().err
    assert "request req-42 failed" in err and "Traceback" in err and "in boom" in err


def test_an_exception_of_a_users_own_class_names_its_module():
    class ModelError(Exception):
        pass

    async def boom(request):
        raise ModelError("weights missing")

    status, _, body = answer(boom)
    assert status == 500
    error = json.loads(body)["error"]
    assert error.startswith(f"{__name__}.") and error.endswith(
        "<locals>.ModelError: weights missing"
    )


def test_http_exception_answers_with_its_status_and_detail():
    def missing(request):
        raise HTTPException(404, "no item 9")

    status, headers, body = answer(missing, rid="r404")
    assert status == 404 and json.loads(body) == {
        "error": "no item 9",
        "request_id": "r404",
        "status": 404,
    }
    with pytest.raises(ValueError, match="400-599"):
        HTTPException(200)


def test_bad_json_is_a_400_and_good_json_parses():
    async def echo_json(request):
        return {"got": await request.json()}

    hdr = [(b"content-type", b"application/json")]
    status, _, body = answer(echo_json, method="POST", headers=hdr, body=b'{"x": [1, 2]}')
    assert (status, json.loads(body)) == (200, {"got": {"x": [1, 2]}})
    status, _, body = answer(echo_json, method="POST", headers=hdr, body=b"{not json", rid="bad")
    doc = json.loads(body)
    assert status == 400 and doc["request_id"] == "bad" and "not valid JSON" in doc["error"]
    status, _, body = answer(echo_json, method="POST", body=b"\xff\xfe")
    assert status == 400


def test_bad_json_can_be_caught_as_a_value_error():
    async def lenient(request):
        try:
            return await request.json()
        except ValueError as e:
            assert isinstance(e, InvalidJSON)
            return "fallback"

    assert answer(lenient, body=b"{")[2] == b"fallback"


def test_a_malformed_frame_is_answered_with_a_500_not_raised():
    called = []
    for bad in (b"", b"VSQ1\x05", b"HTTP/1.1 GET /", frame()[:-1] + b"", frame() + b"x"):
        status, _, body = answer(called.append, bad)
        assert status == 500 and "malformed request frame" in json.loads(body)["error"], bad
    assert called == []


def test_encode_error_has_the_shape_the_ingress_mirrors():
    status, headers, body = _wire.decode_response(encode_error(503, "r1", "no replica alive"))
    assert status == 503
    assert dict(headers) == {b"content-type": b"application/json", b"x-request-id": b"r1"}
    assert json.loads(body) == {"error": "no replica alive", "request_id": "r1", "status": 503}


def test_response_arguments_are_checked_where_they_are_given():
    with pytest.raises(ValueError, match="100-599"):
        Response(b"", status_code=700)
    with pytest.raises(TypeError, match="status_code is an int"):
        Response(b"", status_code="200")
    with pytest.raises(TypeError, match="not both"):
        Response(b"a", content=b"b")
    with pytest.raises(TypeError, match="bytes or str, not dict"):
        Response({"a": 1})
    with pytest.raises(TypeError, match="header names and values are str"):
        Response(b"", headers={"a": 1})


# --------------------------------------------------------------------------- the request


def test_the_request_carries_what_the_frame_says():
    seen: list[Request] = []

    async def look(request):
        seen.append(request)
        return ""

    answer(
        look,
        method="PUT",
        path="/app/items/3",
        query="q=a%20b&tag=x&tag=y&empty=",
        headers=[
            (b"content-type", b"text/plain; charset=latin-1"),
            (b"x-multi", b"1"),
            (b"x-multi", b"2"),
        ],
        body="café".encode("latin-1"),
        rid="r-req",
        client="10.1.2.3:5555",
    )
    (r,) = seen
    assert (r.method, r.path, r.route_prefix, r.request_id) == (
        "PUT",
        "/app/items/3",
        "/app",
        "r-req",
    )
    assert r.url == "/app/items/3?q=a%20b&tag=x&tag=y&empty="
    assert (r.url.path, r.url.query) == ("/app/items/3", "q=a%20b&tag=x&tag=y&empty=")
    assert r.query_params["q"] == "a b" and r.query_params["empty"] == ""
    assert r.query_params["tag"] == "y" and r.query_params.getlist("tag") == ["x", "y"]
    assert r.query_params.get("nope") is None and r.query_params.getlist("nope") == []
    assert sorted(r.query_params) == ["empty", "q", "tag"]
    assert r.headers["Content-Type"] == r.headers["CONTENT-TYPE"] == "text/plain; charset=latin-1"
    assert "X-Multi" in r.headers and r.headers.getlist("X-MULTI") == ["1", "2"]
    assert r.headers.get("absent", "d") == "d"
    assert r.client == ("10.1.2.3", 5555) and r.client.host == "10.1.2.3"
    assert asyncio.run(r.body()) == "café".encode("latin-1")
    assert asyncio.run(r.text()) == "café"


def test_client_addresses_of_every_form():
    def client_of(c: str):
        return Request(
            request_id="r",
            method="GET",
            path="/",
            route_prefix="/",
            query="",
            client=c,
            headers=[],
            body=b"",
        ).client

    assert client_of("[::1]:8080") == ("::1", 8080)
    assert client_of("") is None and client_of("unix-socket") is None


def test_a_request_pickles_so_it_can_be_handed_on():
    r = Request.from_frame(frame(query="a=1&a=2", headers=[(b"x-a", b"b")], body=b"payload"))
    r2 = pickle.loads(pickle.dumps(r))
    assert (r2.url, r2.url.path, r2.query_params.getlist("a"), r2.headers["X-A"]) == (
        r.url,
        "/app/x",
        ["1", "2"],
        "b",
    )
    assert asyncio.run(r2.body()) == b"payload"


def test_a_one_megabyte_body_goes_through_whole():
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def echo(request):
        return Response(await request.body(), media_type="application/octet-stream")

    status, _, body = answer(echo, method="POST", body=payload)
    assert status == 200 and len(body) == len(payload) and body == payload


# --------------------------------------------------------------------------- how the target runs


def test_a_sync_target_runs_in_a_thread_while_the_loop_goes_on():
    started, go = threading.Event(), threading.Event()
    threads: dict[str, int] = {}

    def blocking(request):
        threads["target"] = threading.get_ident()
        started.set()
        if not go.wait(WAIT_S):
            raise AssertionError("the loop never ran while the sync target blocked")
        return "done"

    async def main():
        threads["loop"] = threading.get_ident()
        task = asyncio.create_task(handle_frame(blocking, frame()))
        deadline = time.monotonic() + WAIT_S
        while not started.is_set():  # the loop runs this while the target blocks its thread
            assert time.monotonic() < deadline, "the sync target never started"
            await asyncio.sleep(0.005)
        go.set()
        return await asyncio.wait_for(task, WAIT_S)

    status, _, body = _wire.decode_response(asyncio.run(main()))
    assert (status, body) == (200, b"done")
    assert threads["target"] != threads["loop"]


def test_async_targets_run_on_the_loop_and_callable_instances_work():
    class AsyncModel:
        async def __call__(self, request):
            return {"thread": threading.get_ident()}

    class SyncModel:
        def __call__(self, request):
            return {"thread": threading.get_ident()}

    async def main():
        here = threading.get_ident()
        a = _wire.decode_response(await handle_frame(AsyncModel(), frame()))
        s = _wire.decode_response(await handle_frame(SyncModel(), frame()))
        return here, json.loads(a[2])["thread"], json.loads(s[2])["thread"]

    loop_thread, async_thread, sync_thread = asyncio.run(main())
    assert async_thread == loop_thread and sync_thread != loop_thread


def test_a_sync_target_returning_a_coroutine_is_awaited():
    async def inner():
        return "awaited"

    assert answer(lambda request: inner())[2] == b"awaited"


def test_concurrent_requests_on_one_loop_each_get_their_own_answer():
    async def echo_id(request):
        await asyncio.sleep(0)
        return request.request_id

    async def main():
        frames = [frame(rid=f"r{i}") for i in range(50)]
        return await asyncio.gather(*(handle_frame(echo_id, f) for f in frames))

    outs = [_wire.decode_response(o) for o in asyncio.run(main())]
    assert [b for _, _, b in outs] == [f"r{i}".encode() for i in range(50)]
    assert all(dict(h)[b"x-request-id"] == b for _, h, b in outs)


@volley.remote
class Replica:
    """What serve's replica does with the ingress's call, minus the controller."""

    def __init__(self):
        self.calls = 0

    def predict(self, request):
        self.calls += 1
        return {
            "q": request.query_params.getlist("q"),
            "n": self.calls,
            "thread": threading.get_ident(),
        }

    # The ingress calls __volley_serve_http__; a Python ActorHandle does not expose dunder
    # methods (only __call__), so this test calls the same code under a plain name.
    async def serve_http(self, fr: bytes) -> bytes:
        return await _http.handle_frame(self.predict, fr)

    async def loop_thread(self):
        return threading.get_ident()


@pytest.mark.usefixtures("volley_shared")
def test_inside_a_real_async_actor_called_with_frame_bytes():
    replica = Replica.remote()
    call = replica.serve_http
    refs = [call.remote(frame(query=f"q={i}&q=x", rid=f"a{i}")) for i in range(8)]
    outs = [_wire.decode_response(o) for o in volley.get(refs, timeout=WAIT_S)]
    assert [s for s, _, _ in outs] == [200] * 8
    docs = [json.loads(b) for _, _, b in outs]
    assert [d["q"] for d in docs] == [[str(i), "x"] for i in range(8)]
    assert sorted(d["n"] for d in docs) == list(range(1, 9))
    loop_thread = volley.get(replica.loop_thread.remote(), timeout=WAIT_S)
    assert all(d["thread"] != loop_thread for d in docs)
    assert [dict(h)[b"x-request-id"] for _, h, _ in outs] == [f"a{i}".encode() for i in range(8)]
    bad = volley.get(call.remote(b"junk"), timeout=WAIT_S)
    assert _wire.decode_response(bad)[0] == 500


def test_a_batched_call_method_answers_each_request_frame_with_its_own_result():
    from volley.serve._batching import batch

    class Model:
        def __init__(self):
            self.sizes: list[int] = []

        @batch(max_batch_size=4, batch_wait_timeout_s=1.0)
        async def __call__(self, requests: list[Request]) -> list[dict]:
            self.sizes.append(len(requests))
            return [{"x": int(r.query_params["x"]) * 2} for r in requests]

    model = Model()

    async def main():
        frames = [frame(query=f"x={i}", rid=f"b{i}") for i in range(12)]
        return await asyncio.gather(*(handle_frame(model, f) for f in frames))

    outs = [_wire.decode_response(o) for o in asyncio.run(main())]
    assert [json.loads(b)["x"] for _, _, b in outs] == [2 * i for i in range(12)]
    assert [dict(h)[b"x-request-id"] for _, h, _ in outs] == [f"b{i}".encode() for i in range(12)]
    assert model.sizes == [4, 4, 4]
