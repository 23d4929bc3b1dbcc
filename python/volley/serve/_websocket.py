"""WebSockets in a replica: an ASGI app's ``websocket`` scope (FastAPI's ``@app.websocket``
under ``@serve.ingress``), driven by the Rust ingress.

The ingress sends the upgrade request as a request frame to ``__volley_serve_websocket__``.
The app runs from here in a task of its own, with the request's context (its id for
``serve.get_request_id()`` and the log lines): its first ``receive()`` is
``websocket.connect``. What it does next answers the handshake:

- ``websocket.accept``: a WebSocket head (``_wire.encode_socket_head``) with the socket's key;
  the ingress answers 101 and the socket lives on (its replica slot held until the app ends);
- ``websocket.close`` first: HTTP 403, as ASGI servers answer;
- ``websocket.http.response.*`` (Starlette's ``send_denial_response``): that response;
- the app returns without accepting: 403; it raises: 500 with the request id.

Afterwards the ingress follows ``__volley_serve_ws_out__(key)``, a streaming method that yields
the app's messages as it sends them (at most :data:`OUTBOUND` ahead of the ingress: ``send``
waits), and calls ``__volley_serve_ws_in__`` with each client message in order (``receive``
returns them; at most :data:`INBOUND` wait here, then the ingress waits). The client's close,
or its loss (code 1006), is the app's ``websocket.disconnect``; a ``send`` after it raises
``OSError``. The app's close ends the stream; an app that returns without closing closes with
1000, one that raises with 1011.

>>> import asyncio
>>> from volley.serve import _wire
>>> async def echo(scope, receive, send):
...     assert (await receive())["type"] == "websocket.connect"
...     await send({"type": "websocket.accept", "subprotocol": "chat"})
...     msg = await receive()
...     await send({"type": "websocket.send", "text": msg["text"].upper()})
...     await send({"type": "websocket.close", "code": 1000})
>>> async def main():
...     frame = _wire.encode_request("r1", "GET", "/ws", "/ws", "", "", [], b"")
...     head, sock = await open_socket(echo, frame, key=b"w1")
...     await sock.push(b"thello")
...     headers, key = _wire.decode_socket_head(head)
...     return headers[0], key, [m async for m in sock.outbound()]
>>> asyncio.run(main())
((b'sec-websocket-protocol', b'chat'), b'w1', [b'tHELLO', b'c\\x03\\xe8'])
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any, Callable

from . import _wire

__all__ = ["INBOUND", "OUTBOUND", "Socket", "close_message", "open_socket", "split_inbound"]

#: Client messages that may wait in the replica before the ingress waits to deliver more.
INBOUND = 64
#: App messages that may wait for the ingress before the app's ``send`` waits.
OUTBOUND = 64
#: How long an app whose socket ended is given to return before it is cancelled.
END_WAIT_S = 10.0


def close_message(code: int, reason: str = "") -> bytes:
    """The wire form of a close: ``b"c"``, the code (big-endian u16), the UTF-8 reason.

    >>> close_message(1001, "bye")
    b'c\\x03\\xe9bye'
    """
    return b"c" + int(code).to_bytes(2, "big") + reason.encode("utf-8")


def _client_message(msg: bytes) -> dict[str, Any]:
    kind, payload = msg[:1], msg[1:]
    if kind == b"t":
        return {"type": "websocket.receive", "text": payload.decode("utf-8", "replace")}
    if kind == b"b":
        return {"type": "websocket.receive", "bytes": bytes(payload)}
    if kind == b"c":
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        return {
            "type": "websocket.disconnect",
            "code": code,
            "reason": payload[2:].decode("utf-8", "replace"),
        }
    raise _wire.WireError(f"not a WebSocket message: kind {kind!r}")


def split_inbound(data: bytes) -> tuple[bytes, bytes]:
    """The ``(key, message)`` of ``__volley_serve_ws_in__``'s argument.

    >>> split_inbound(b"\\x02w1tab")
    (b'w1', b'tab')
    """
    n = data[0] if data else 0
    if not data or len(data) < 2 + n:
        raise _wire.WireError(f"a WebSocket message frame of {len(data)} bytes is cut short")
    return bytes(data[1 : 1 + n]), bytes(data[1 + n :])


class Socket:
    """One WebSocket between the ingress and an ASGI app: ``receive``/``send`` for the app,
    ``push`` (client messages), ``outbound`` (the app's) and ``end`` for the replica."""

    def __init__(self, request_id: str, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request_id = request_id
        self.key = key
        self._in: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = asyncio.Condition()
        self._hangup: dict[str, Any] | None = None
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._waiting_out = 0  # the app's messages in _out (at most OUTBOUND)
        self.handshake: asyncio.Future[tuple] = loop.create_future()
        self._connected = False
        self._accepted = False
        self._closed = False
        self._denial: tuple[int, list] | None = None
        self._denial_body: list[bytes] = []
        self.app_task: asyncio.Task | None = None
        #: The task that runs ``outbound`` (the ingress's follower call), once it runs.
        self.out_task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._ending = False
        from ._streaming import Credit

        self.credit = Credit()  # the outbound messages the ingress took

    # ------------------------------------------------------------------ the app's side

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._in) or self._hangup is not None)
            if self._in:
                msg = self._in.popleft()
                self._cond.notify_all()
                return msg
            assert self._hangup is not None
            return self._hangup

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            if self._accepted or self.handshake.done():
                raise RuntimeError("the ASGI app answered the WebSocket handshake twice")
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers") or ()]
            sub = message.get("subprotocol")
            if sub:
                headers.append((b"sec-websocket-protocol", str(sub).encode("latin-1")))
            self._accepted = True
            self.handshake.set_result(("accept", headers))
        elif kind == "websocket.send":
            if not self._accepted:
                raise RuntimeError("the ASGI app sent a WebSocket message before accepting")
            if self._closed:
                raise RuntimeError("the ASGI app sent a WebSocket message after closing")
            if self._hangup is not None:
                raise OSError(f"the client of request {self.request_id} closed the WebSocket")
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                item = b"t" + str(text).encode("utf-8")
            elif data is not None:
                item = b"b" + bytes(data)
            else:
                raise ValueError("a websocket.send message carries neither text nor bytes")
            async with self._cond:  # room, or the client's hang-up: then send raises
                await self._cond.wait_for(
                    lambda: self._waiting_out < OUTBOUND or self._hangup is not None
                )
                if self._hangup is not None:
                    raise OSError(f"the client of request {self.request_id} closed the WebSocket")
                self._waiting_out += 1
            self._out.put_nowait(item)
        elif kind == "websocket.close":
            code = int(message.get("code") or 1000)
            if not self._accepted:
                if not self.handshake.done():
                    self.handshake.set_result(("close", code))
                return
            if not self._closed:
                self._closed = True
                self._out.put_nowait(close_message(code, message.get("reason") or ""))
        elif kind == "websocket.http.response.start":
            if self._accepted or self.handshake.done() or self._denial is not None:
                raise RuntimeError("a WebSocket denial response after the handshake")
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers") or ()]
            self._denial = (int(message["status"]), headers)
        elif kind == "websocket.http.response.body":
            if self._denial is None:
                raise RuntimeError("a WebSocket denial body before websocket.http.response.start")
            self._denial_body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False) and not self.handshake.done():
                status, headers = self._denial
                self.handshake.set_result(("deny", status, headers, b"".join(self._denial_body)))
        else:
            raise ValueError(f"an ASGI message of type {kind!r} on a WebSocket")

    # ------------------------------------------------------------------ the replica's side

    async def push(self, msg: bytes) -> None:
        """One client message (the wire form): waits while :data:`INBOUND` are unread."""
        event = _client_message(msg)
        if event["type"] == "websocket.disconnect":
            await self.hang_up(event["code"], event["reason"])
            return
        async with self._cond:
            await self._cond.wait_for(lambda: len(self._in) < INBOUND or self._hangup is not None)
            if self._hangup is None:
                self._in.append(event)
                self._cond.notify_all()

    async def hang_up(self, code: int, reason: str = "") -> None:
        """The client is gone: the app's ``receive`` says so after the messages before it."""
        async with self._cond:
            if self._hangup is None:
                self._hangup = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._cond.notify_all()

    def app_ended(self, task: asyncio.Task) -> None:
        """The app's task is over: its socket closes (1000, or 1011 if it raised)."""
        failed = not task.cancelled() and task.exception() is not None
        if failed:
            e = task.exception()
            sys.stderr.write(
                f"volley.serve: request {self.request_id}: the WebSocket app raised "
                f"{type(e).__name__}: {e}\n"
            )
        if not self.handshake.done():
            self.handshake.set_result(("failed", task.exception()) if failed else ("close", 1000))
        if self._accepted and not self._closed:
            self._closed = True
            self._out.put_nowait(close_message(1011 if failed else 1000))
        self._out.put_nowait(None)

    async def outbound(self) -> Any:
        """The app's messages (wire form) as it sends them, up to and including its close."""
        if self.timer is not None:
            self.timer.cancel()
        self.out_task = asyncio.current_task()
        code = 1006
        try:
            while True:
                await self.credit.room()  # at most WINDOW ahead of what the ingress took
                item = await self._out.get()
                if item is None:
                    return
                if item[:1] != b"c":  # (a close took no room)
                    async with self._cond:
                        self._waiting_out -= 1
                        self._cond.notify_all()
                self.credit.made += 1
                yield item
                if item[:1] == b"c":
                    code = int.from_bytes(item[1:3], "big")
                    return
        finally:
            await self.end(code)

    async def end(self, code: int = 1006) -> None:
        """The socket is over (closed, or its ingress gone): the app hears of it and is given
        :data:`END_WAIT_S` to return, then cancelled."""
        if self._ending:
            return
        self._ending = True
        if self.timer is not None:
            self.timer.cancel()
        await self.hang_up(code)
        task = self.app_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=END_WAIT_S)
            if not task.done():
                task.cancel()
        out = self.out_task
        if out is not None and out is not asyncio.current_task() and not out.done():
            out.cancel()  # the follower is gone: its call must not wait on for credit


async def open_socket(
    asgi_app: Any,
    frame: bytes,
    app: str = "",
    deployment: str = "",
    state: dict[str, Any] | None = None,
    key: bytes = b"w",
    on_app_end: Callable[[], None] | None = None,
) -> tuple[bytes, Socket | None]:
    """Runs ``asgi_app`` on the upgrade request ``frame`` until it answers the handshake: the
    answer for the ingress (a WebSocket head, or a response frame) and the socket if accepted.
    ``on_app_end`` is called once when the app's task ends (or at once if it never started)."""
    from ._context import serving
    from ._http import _asgi_scope, _context_of, encode_error, request_or_error

    request = request_or_error(frame)
    if isinstance(request, bytes):
        if on_app_end is not None:
            on_app_end()
        return request, None
    rid = request.request_id
    scope = _asgi_scope(request)
    del scope["method"]
    scope.update(type="websocket", scheme="ws")
    scope["subprotocols"] = [
        p.strip()
        for v in request.headers.getlist("sec-websocket-protocol")
        for p in v.split(",")
        if p.strip()
    ]
    scope["extensions"] = {"websocket.http.response": {}}
    if state:
        scope["state"] = dict(state)
    sock = Socket(rid, key)
    with serving(_context_of(request, app, deployment)):  # the task copies the context
        task = asyncio.get_running_loop().create_task(asgi_app(scope, sock.receive, sock.send))
    sock.app_task = task
    task.add_done_callback(sock.app_ended)
    if on_app_end is not None:
        task.add_done_callback(lambda _t: on_app_end())
    answer = await sock.handshake
    rid_header = (b"x-request-id", rid.encode("latin-1", "replace"))
    if answer[0] == "accept":
        return _wire.encode_socket_head([*answer[1], rid_header], key), sock
    await sock.end(1006)
    if answer[0] == "deny":
        _, status, headers, body = answer
        return _wire.encode_response(status, [*headers, rid_header], body), None
    if answer[0] == "failed":
        e = answer[1]
        return encode_error(500, rid, f"{type(e).__name__}: {e}"), None
    why = f"the app closed the WebSocket (code {answer[1]}) before accepting it"
    return encode_error(403, rid, why), None
