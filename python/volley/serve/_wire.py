"""How the HTTP ingress (Rust, in the head's process) and a replica (a volley actor) talk.

No Python process stands between a client's HTTP request and the replica that answers it: the
ingress encodes the request as one *request frame* (bytes), calls the replica actor's method
``__volley_serve_http__(frame)`` through volley's own transport, and decodes the *response frame*
(bytes) the method returns. Both frames are plain length-prefixed fields (little-endian), so the
Rust side needs no pickle parser beyond a top-level ``bytes`` value.

Request frame::

    b"VSQ1"
    str  request_id      (the ingress's id for the request: logs, the x-request-id header)
    str  method          ("GET", "POST", ...)
    str  path            (the full path, as received)
    str  route_prefix    (the prefix that matched)
    str  query           (the raw query string, without "?")
    str  client          ("ip:port" of the peer)
    u32  number of headers, then per header: bytes name (lower case), bytes value
    u64  body length, then the body

Response frame::

    b"VSR1"
    u16  status
    u32  number of headers, then per header: bytes name, bytes value
    u64  body length, then the body

``str`` and ``bytes`` are a u32 length then that many bytes (UTF-8 for ``str``).

Stream head (the answer of a method that streams its body, instead of a response frame)::

    b"VSS1"
    u16  status
    u32  number of headers, then per header: bytes name, bytes value
    u64  length of the first chunk, then the first chunk
    bytes stream key

The ingress sends the first chunk at once, then calls the replica's streaming method
:data:`STREAM_METHOD` ``(key)`` and sends each ``bytes`` item it yields as a chunk; a client
that leaves makes it call :data:`CANCEL_METHOD` ``(key)`` (see ``docs/serve-http.md``,
"Streaming").

WebSocket head (the answer of :data:`SOCKET_METHOD` that accepts a WebSocket: the same fields
as a stream head, magic ``b"VSW1"``, status 101, no first chunk; ``sec-websocket-protocol`` among
the headers names the subprotocol the app chose). The ingress then completes the upgrade, follows
:data:`SOCKET_OUT_METHOD` ``(key)`` for the app's messages and calls :data:`SOCKET_IN_METHOD`
with each of the client's, in order. A message is its kind, then its payload: ``b"t"`` and UTF-8
text, ``b"b"`` and bytes, ``b"c"``, a big-endian u16 close code and the UTF-8 reason. The inbound
call's one argument is a u8 key length, the key, then one message.

The routing table the ingress serves is a JSON document in the head's key-value table
(namespace :data:`KV_NAMESPACE`, key :data:`ROUTES_KEY`), rewritten whole by serve's controller
(each route: prefix, app, deployment, replicas (actor ids), replica_nodes (the node of each,
optional: a replica on another node is reached there), max_ongoing_requests,
max_queued_requests, request_timeout_s);
the ingress follows its changes. The address to listen on is key :data:`HTTP_KEY`; the ingress
answers under :data:`HTTP_STATUS_KEY` (see ``docs/serve.md``, "How it runs").

>>> frame = encode_request("r1", "POST", "/echo/x", "/echo", "a=1", "127.0.0.1:5000",
...                        [(b"content-type", b"text/plain")], b"hi")
>>> decode_request(frame)["body"]
b'hi'
>>> decode_response(encode_response(200, [(b"content-type", b"text/plain")], b"ok"))
(200, [(b'content-type', b'text/plain')], b'ok')
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = [
    "HTTP_KEY",
    "HTTP_STATUS_KEY",
    "KV_NAMESPACE",
    "METHOD",
    "ROUTES_KEY",
    "WireError",
    "decode_request",
    "decode_response",
    "decode_socket_head",
    "decode_stream_head",
    "encode_request",
    "encode_response",
    "encode_socket_head",
    "encode_stream_head",
]

#: The replica actor's method the ingress calls with a request frame.
METHOD = "__volley_serve_http__"
#: The replica's streaming method that yields the chunks after a stream head's first one.
STREAM_METHOD = "__volley_serve_stream__"
#: The replica's method that stops a stream whose client left.
CANCEL_METHOD = "__volley_serve_cancel__"
#: The replica's method the ingress calls with a WebSocket upgrade request's frame.
SOCKET_METHOD = "__volley_serve_websocket__"
#: The replica's streaming method that yields an accepted WebSocket's outbound messages.
SOCKET_OUT_METHOD = "__volley_serve_ws_out__"
#: The replica's method that takes one of the client's WebSocket messages.
SOCKET_IN_METHOD = "__volley_serve_ws_in__"
KV_NAMESPACE = "volley.serve"
ROUTES_KEY = "routes"
HTTP_KEY = "http"
HTTP_STATUS_KEY = "http_status"

_REQ = b"VSQ1"
_RESP = b"VSR1"
_STREAM = b"VSS1"
_SOCKET = b"VSW1"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

Headers = list[tuple[bytes, bytes]]


class WireError(ValueError):
    """A frame that is cut short or is not a serve frame."""


def _put(out: list[bytes], b: bytes) -> None:
    out.append(_U32.pack(len(b)))
    out.append(b)


def _headers(out: list[bytes], headers: Headers) -> None:
    out.append(_U32.pack(len(headers)))
    for name, value in headers:
        _put(out, bytes(name))
        _put(out, bytes(value))


def encode_request(
    request_id: str,
    method: str,
    path: str,
    route_prefix: str,
    query: str,
    client: str,
    headers: Headers,
    body: bytes,
) -> bytes:
    out = [_REQ]
    for s in (request_id, method, path, route_prefix, query, client):
        _put(out, s.encode())
    _headers(out, headers)
    out.append(_U64.pack(len(body)))
    out.append(bytes(body))
    return b"".join(out)


def encode_response(status: int, headers: Headers, body: bytes) -> bytes:
    if not 100 <= status <= 999:
        raise WireError(f"an HTTP status is 100-999, not {status!r}")
    out = [_RESP, _U16.pack(status)]
    _headers(out, headers)
    out.append(_U64.pack(len(body)))
    out.append(bytes(body))
    return b"".join(out)


def encode_socket_head(headers: Headers, key: bytes) -> bytes:
    """A WebSocket head: the app accepted the upgrade; ``key`` names the socket.

    >>> decode_socket_head(encode_socket_head([(b"sec-websocket-protocol", b"chat")], b"w1"))
    ([(b'sec-websocket-protocol', b'chat')], b'w1')
    """
    return encode_stream_head(101, headers, b"", key, _SOCKET)


def decode_socket_head(frame: bytes) -> tuple[Headers, bytes]:
    """``(headers, key)`` of a WebSocket head."""
    _, headers, _, key = decode_stream_head(frame, _SOCKET)
    return headers, key


def encode_stream_head(
    status: int, headers: Headers, first: bytes, key: bytes, magic: bytes = _STREAM
) -> bytes:
    """A stream head: status, headers, the first chunk and the stream's key.

    >>> encode_stream_head(201, [], b"a", b"k")
    b'VSS1\\xc9\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00a\\x01\\x00\\x00\\x00k'
    >>> decode_stream_head(encode_stream_head(200, [(b"a", b"1")], b"x", b"k1"))
    (200, [(b'a', b'1')], b'x', b'k1')
    """
    if not 100 <= status <= 999:
        raise WireError(f"an HTTP status is 100-999, not {status!r}")
    if not key:
        raise WireError("a stream head needs a key")
    out = [magic, _U16.pack(status)]
    _headers(out, headers)
    out.append(_U64.pack(len(first)))
    out.append(bytes(first))
    _put(out, key)
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes, magic: bytes) -> None:
        self.m = memoryview(data)
        if bytes(self.m[:4]) != magic:
            raise WireError(f"not a serve frame: it starts {bytes(self.m[:4])!r}, not {magic!r}")
        self.at = 4

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.m):
            raise WireError(f"frame cut short: {n} bytes wanted at {self.at} of {len(self.m)}")
        v = self.m[self.at : self.at + n]
        self.at += n
        return v

    def num(self, s: struct.Struct) -> int:
        return int(s.unpack(self.take(s.size))[0])

    def blob(self) -> bytes:
        return bytes(self.take(self.num(_U32)))

    def headers(self) -> Headers:
        return [(self.blob(), self.blob()) for _ in range(self.num(_U32))]

    def body(self) -> bytes:
        b = bytes(self.take(self.num(_U64)))
        if self.at != len(self.m):
            raise WireError(f"{len(self.m) - self.at} bytes after the frame's end")
        return b


def decode_request(frame: bytes) -> dict[str, Any]:
    r = _Reader(frame, _REQ)
    names = ("request_id", "method", "path", "route_prefix", "query", "client")
    out: dict[str, Any] = {n: r.blob().decode() for n in names}
    out["headers"] = r.headers()
    out["body"] = r.body()
    return out


def decode_response(frame: bytes) -> tuple[int, Headers, bytes]:
    r = _Reader(frame, _RESP)
    status = r.num(_U16)
    headers = r.headers()
    return status, headers, r.body()


def decode_stream_head(frame: bytes, magic: bytes = _STREAM) -> tuple[int, Headers, bytes, bytes]:
    """``(status, headers, first chunk, key)`` of a stream head."""
    r = _Reader(frame, magic)
    status = r.num(_U16)
    headers = r.headers()
    first = bytes(r.take(r.num(_U64)))
    key = r.blob()
    if r.at != len(r.m):
        raise WireError(f"{len(r.m) - r.at} bytes after the frame's end")
    return status, headers, first, key
