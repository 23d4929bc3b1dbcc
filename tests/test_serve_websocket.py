"""WebSockets through the Rust ingress to a FastAPI app's ``@app.websocket`` route
(``@serve.ingress``), over real sockets: text and binary both ways and in order, server push,
subprotocols and the request id, the app's refusals (403, a denial response), its close codes,
an app that raises (1011), the client's close and loss reaching the app, the replica's slot
held for the socket's life, a plain deployment's 501, and a replica SIGKILLed under a socket."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import settled_count, wait_for

pytest.importorskip("fastapi")
websocket = pytest.importorskip("websocket")  # websocket-client

from fastapi import FastAPI, WebSocket, WebSocketDisconnect  # noqa: E402

import volley  # noqa: E402
from volley import serve  # noqa: E402

WAIT_S = 30.0


@pytest.fixture
def ws_url(serve_url):
    return serve_url.replace("http://", "ws://")


def connect(url: str, **kw) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=WAIT_S, **kw)


app = FastAPI()


@serve.deployment(max_ongoing_requests=1)
@serve.ingress(app)
class Chat:
    def __init__(self, log: str) -> None:
        self.log = Path(log)

    def note(self, line: str) -> None:
        with open(self.log, "a") as f:
            f.write(line + "\n")

    @app.websocket("/echo")
    async def echo(self, ws: WebSocket) -> None:
        await ws.accept(subprotocol="chat" if "chat" in ws.scope["subprotocols"] else None)
        self.note(f"rid {serve.get_request_id()}")
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(msg["code"])
                if msg.get("text") is not None:
                    await ws.send_text(msg["text"].upper())
                else:
                    await ws.send_bytes(msg["bytes"][::-1])
        except WebSocketDisconnect as e:
            self.note(f"disconnect {e.code}")

    @app.websocket("/push/{n}")
    async def push(self, ws: WebSocket, n: int) -> None:
        await ws.accept()
        for i in range(n):
            await ws.send_json({"i": i})
        await ws.close(code=4001, reason="all sent")

    @app.websocket("/refuse")
    async def refuse(self, ws: WebSocket) -> None:
        await ws.close(code=1008)

    @app.websocket("/deny")
    async def deny(self, ws: WebSocket) -> None:
        from fastapi.responses import JSONResponse

        await ws.send_denial_response(JSONResponse({"why": "no token"}, status_code=401))

    @app.websocket("/raise")
    async def raises(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        raise ValueError("the app broke")

    @app.websocket("/pid")
    async def pid(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(str(os.getpid()))
        while True:
            await ws.send_text(await ws.receive_text())

    @app.get("/hello")
    def hello(self) -> str:
        return "hi"


@pytest.fixture
def chat(ws_url, tmp_path):
    log = tmp_path / "chat.log"
    log.touch()
    serve.run(Chat.bind(str(log)), name="chat", route_prefix="/chat")
    return ws_url + "/chat", log


def test_text_and_binary_go_both_ways_in_order_with_the_subprotocol_and_request_id(chat):
    url, log = chat
    ws = connect(url + "/echo", subprotocols=["chat"])
    try:
        rid = ws.getheaders()["x-request-id"]
        assert ws.getsubprotocol() == "chat"
        for i in range(200):
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(200)] == [f"M{i}" for i in range(200)]
        ws.send_binary(b"\x00\x01\x02")
        opcode, data = ws.recv_data()
        assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, b"\x02\x01\x00")
        # The app's context: serve.get_request_id() is the handshake's x-request-id.
        wait_for(lambda: f"rid {rid}" in log.read_text(), "the app's request id")
    finally:
        ws.close(status=4100)
    assert wait_for(lambda: "disconnect 4100" in log.read_text(), "the app to see the close")


def test_the_app_pushes_without_reading_and_its_close_code_reaches_the_client(chat):
    url, _ = chat
    ws = connect(url + "/push/300")
    import json

    got = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        got.append(json.loads(data)["i"])
    assert got == list(range(300))
    assert int.from_bytes(data[:2], "big") == 4001 and data[2:] == b"all sent"
    ws.close()


def test_an_app_that_closes_or_denies_before_accepting_refuses_the_handshake(chat):
    url, _ = chat
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(url + "/refuse")
    assert e.value.status_code == 403
    assert b"before accepting" in e.value.resp_body
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(url + "/deny")
    assert e.value.status_code == 401 and b"no token" in e.value.resp_body
    # No WebSocket route at that path: Starlette closes before accepting, a 403 too.
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(url + "/nowhere")
    assert e.value.status_code == 403
    # And HTTP on the same app still works.
    import urllib.request

    http = url.replace("ws://", "http://")
    with urllib.request.urlopen(http + "/hello", timeout=WAIT_S) as r:
        assert r.read() == b'"hi"'


def test_an_app_that_raises_closes_the_socket_with_1011(chat):
    url, _ = chat
    ws = connect(url + "/raise")
    ws.send("go")
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1011
    ws.close()


def test_a_client_that_vanishes_is_a_1006_disconnect_and_frees_the_replica(chat):
    url, log = chat
    # max_ongoing_requests=1: a live socket holds the replica's one slot.
    ws = connect(url + "/echo")
    ws.send("x")
    assert ws.recv() == "X"
    ws.sock.shutdown(socket.SHUT_RDWR)  # gone without a close frame
    ws.sock.close()
    wait_for(lambda: "disconnect 1006" in log.read_text(), "the app to hear the client is gone")
    again = connect(url + "/echo")
    again.send("y")
    assert again.recv() == "Y"
    again.close()


def test_a_replica_sigkilled_under_a_socket_closes_it_not_hangs(chat):
    url, _ = chat
    ws = connect(url + "/pid")
    pid = int(ws.recv())
    ws.send("alive")
    assert ws.recv() == "alive"
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    try:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1011
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        pass  # the connection ended: as good as a close, and no hang
    assert time.monotonic() - start < WAIT_S
    ws.close()
    # The controller replaces the replica: a new socket works.
    fresh = wait_for(lambda: _try_connect(url + "/pid"), "a replacement replica")
    assert int(fresh.recv()) != pid
    fresh.close()


def _try_connect(url: str):
    try:
        return connect(url)
    except (websocket.WebSocketException, ConnectionError):
        return None


@serve.deployment
class Plain:
    def __call__(self, request) -> str:
        return "plain"


def test_a_plain_deployment_answers_an_upgrade_with_a_501_that_says_how(ws_url):
    serve.run(Plain.bind(), name="plain", route_prefix="/plain")
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(ws_url + "/plain")
    assert e.value.status_code == 501
    assert b"@app.websocket" in e.value.resp_body


def test_a_bad_upgrade_request_is_a_400_that_never_reaches_a_replica(serve_url, chat):
    import http.client

    host, port = serve_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    try:
        # No Sec-WebSocket-Key.
        conn.request("GET", "/chat/echo", headers={"connection": "upgrade", "upgrade": "websocket"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 400 and b"WebSocket" in body, body
    finally:
        conn.close()
    assert volley.is_initialized()


flood_app = FastAPI()


@serve.deployment
@serve.ingress(flood_app)
class Flood:
    def __init__(self, count: str) -> None:
        self.count = count

    @flood_app.websocket("/flood")
    async def flood(self, ws: WebSocket) -> None:
        await ws.accept()
        chunk = b"z" * (256 * 1024)
        try:
            for i in range(1, 301):
                await ws.send_bytes(chunk)
                Path(self.count).write_text(str(i))
        except WebSocketDisconnect as e:  # the client left (Starlette's form of our OSError)
            Path(self.count + ".gone").write_text(f"{type(e).__name__}: {e.code}")
            return
        await ws.close()


def test_an_app_that_sends_faster_than_its_client_reads_is_held_back(ws_url, tmp_path):
    count = tmp_path / "count"
    serve.run(Flood.bind(str(count)), name="flood", route_prefix="/flood")
    ws = connect(ws_url + "/flood/flood")
    try:
        held = settled_count(count, "the app to start sending")
        # 64 wait in the replica for the ingress, 32 more may be made past its last count,
        # 16 wait in the ingress; the sockets' buffers hold a few more.
        assert held < 200, f"the app sent {held} messages to a client that read none"
        got = 0
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            got += 1
        assert got == 300 and count.read_text() == "300"
    finally:
        ws.close()


def test_a_client_that_vanishes_while_the_app_floods_ends_every_call_of_its_socket(
    ws_url, tmp_path
):
    import volley.state

    count = tmp_path / "count"
    serve.run(Flood.bind(str(count)), name="flood", route_prefix="/flood")
    ws = connect(ws_url + "/flood/flood")
    wait_for(count.exists, "the app to start sending")
    ws.sock.shutdown(socket.SHUT_RDWR)  # gone without a close, the app's messages unread
    ws.sock.close()

    def calls_left() -> list:
        rows = volley.state.list_tasks(limit=None)
        return [
            r
            for r in rows
            if r["name"].startswith(("__volley_serve_ws", "__volley_serve_cancel"))
            and r["state"] not in ("FINISHED", "FAILED")
        ]

    # The app is told (its send raises) and the replica's outbound call for the ingress,
    # blocked on the credit that never comes, is ended too.
    gone = tmp_path / "count.gone"
    wait_for(gone.exists, "the app's send to raise once the client is gone", 30)
    assert gone.read_text() == "WebSocketDisconnect: 1006"
    wait_for(lambda: not calls_left(), "the socket's calls in the replica to end", 30)
    wait_for(
        lambda: serve.status().applications["flood"].deployments["Flood"].ongoing_requests == 0,
        "the socket to count no more at its replica",
    )
