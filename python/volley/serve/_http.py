"""What runs inside a serve replica for each HTTP request: frame in, user code, frame out.

The Rust ingress hands a replica one request frame (see ``_wire``); :func:`handle_frame` turns
it into the :class:`Request` a deployment's method gets, calls the method, and turns whatever it
returns (or raises) into one response frame. The names follow Starlette's, which Ray Serve users
already write: ``request.query_params["q"]``, ``await request.json()``, ``JSONResponse(...)``.

What a method may return: a :class:`Response` (sent as given), ``bytes``
(``application/octet-stream``), ``str`` (``text/plain``), or a dict, list, number, bool or None
(JSON). Anything else, or an exception, is a 500 whose JSON body names the request id; an
:class:`HTTPException` is answered with its own status, and a body that is not valid JSON makes
``await request.json()`` answer 400. Every answer carries ``x-request-id``.

A method may also stream its body: a generator (sync or async) is sent chunk by chunk as it
yields (``bytes`` as is, ``str`` as UTF-8, a dict or list as a JSON line), and a
:class:`StreamingResponse` streams with its own status, headers and media type (SSE:
``text/event-stream``). See ``docs/serve-http.md``, "Streaming".

ASGI apps (FastAPI's ``@serve.ingress``) are served by :func:`handle_frame_asgi`: the frame
carries one whole request and one whole response (a streaming ASGI response is collected whole).

>>> import asyncio
>>> from volley.serve import _wire
>>> def hello(request):
...     return {"hello": request.query_params.get("name", "world")}
>>> frame = _wire.encode_request("r1", "GET", "/hi", "/hi", "name=ada", "127.0.0.1:5000", [], b"")
>>> status, headers, body = _wire.decode_response(asyncio.run(handle_frame(hello, frame)))
>>> status, body, dict(headers)[b"x-request-id"]
(200, b'{"hello":"ada"}', b'r1')
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qsl

from . import _wire
from ._streaming import is_stream

__all__ = [
    "Address",
    "HTMLResponse",
    "HTTPException",
    "Headers",
    "InvalidJSON",
    "JSONResponse",
    "PlainTextResponse",
    "QueryParams",
    "Request",
    "Response",
    "StreamingResponse",
    "URL",
    "encode_error",
    "handle_frame",
    "handle_frame_asgi",
    "handle_frame_in_context",
]


class Address(NamedTuple):
    """The client's address, as Starlette's ``request.client``: ``.host`` and ``.port``."""

    host: str
    port: int


class _MultiDict(Mapping[str, str]):
    """An immutable mapping that keeps every value of a repeated key, in order."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._last: dict[str, str] = {}
        for k, v in items:
            self._last[self._key(k)] = v

    @staticmethod
    def _key(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        return self._last[self._key(key)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._last)

    def __len__(self) -> int:
        return len(self._last)

    def getlist(self, key: str) -> list[str]:
        """Every value of ``key``, in the order they came (``[]`` when absent)."""
        k = self._key(key)
        return [v for name, v in self._items if self._key(name) == k]

    def multi_items(self) -> list[tuple[str, str]]:
        """Every (key, value) pair, repeated keys included, in the order they came."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class QueryParams(_MultiDict):
    """The query string's parameters: ``params["a"]`` is the last value of ``a``,
    ``params.getlist("a")`` all of them (Starlette's ``QueryParams``).

    >>> q = QueryParams.parse("a=1&b=&a=2")
    >>> q["a"], q.getlist("a"), q["b"], q.get("c", "none")
    ('2', ['1', '2'], '', 'none')
    """

    @classmethod
    def parse(cls, query: str) -> QueryParams:
        """The parameters of a raw query string (without the ``?``), percent-decoded."""
        return cls(parse_qsl(query, keep_blank_values=True))


class Headers(_MultiDict):
    """Request headers, looked up without regard to case (Starlette's ``Headers``); a
    repeated header's values are all in ``getlist``. Names and values are decoded as latin-1,
    as HTTP/1.1 defines them.

    >>> h = Headers([("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")])
    >>> h["Content-Type"], h.getlist("X-A"), "CONTENT-TYPE" in h
    ('text/plain', ['1', '2'], True)
    """

    @staticmethod
    def _key(key: str) -> str:
        return key.lower()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._last


class URL(str):
    """The request's path and query as received (``"/echo/x?a=1"``), with ``.path`` and
    ``.query`` (Starlette's ``request.url`` also has the scheme and host, which the ingress does
    not pass; the ``host`` header has the host)."""

    path: str
    query: str

    def __new__(cls, path: str, query: str) -> URL:
        url = super().__new__(cls, f"{path}?{query}" if query else path)
        url.path = path
        url.query = query
        return url

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return URL, (self.path, self.query)


class HTTPException(Exception):
    """Raise it in a deployment to answer with ``status_code`` and a JSON body carrying
    ``detail`` (FastAPI's and Starlette's name), instead of a 500.

    >>> HTTPException(404, "no such model").status_code
    404
    """

    def __init__(self, status_code: int, detail: str | None = None) -> None:
        if not isinstance(status_code, int) or not 400 <= status_code <= 599:
            raise ValueError(f"an HTTPException's status_code is 400-599, not {status_code!r}")
        self.status_code = status_code
        self.detail = detail if detail is not None else f"HTTP {status_code}"
        super().__init__(status_code, self.detail)

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


class InvalidJSON(HTTPException, ValueError):
    """``await request.json()`` on a body that is not JSON: answered 400 unless caught (it is a
    ``ValueError`` too, as ``json.JSONDecodeError`` is)."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


class Request:
    """One HTTP request, as a deployment's method gets it (Starlette's names).

    ``method``, ``url`` (path and query), ``path``, ``query_params``, ``headers`` (any case),
    ``client`` (an :class:`Address`, or None), ``request_id`` (also in the answer's
    ``x-request-id``), ``route_prefix`` (the deployment's prefix that matched), and
    ``await request.body()``, ``await request.text()``, ``await request.json()``. A request
    pickles, so it can be handed on to another deployment.

    >>> r = Request(request_id="r1", method="POST", path="/m/predict", route_prefix="/m",
    ...             query="x=1&x=2", client="10.0.0.1:4242",
    ...             headers=[(b"content-type", b"application/json")], body=b'{"a": [1, 2]}')
    >>> r.url, r.query_params.getlist("x"), r.headers["Content-Type"], r.client.port
    ('/m/predict?x=1&x=2', ['1', '2'], 'application/json', 4242)
    >>> asyncio.run(r.json())
    {'a': [1, 2]}
    """

    def __init__(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        route_prefix: str,
        query: str,
        client: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.route_prefix = route_prefix
        self.url = URL(path, query)
        self.query_params = QueryParams.parse(query)
        self.headers = Headers(
            [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in headers]
        )
        self.client = _address(client)
        self._body = bytes(body)

    @classmethod
    def from_frame(cls, frame: bytes) -> Request:
        """The request a request frame carries; ``_wire.WireError`` if it is not one."""
        return cls(**_wire.decode_request(frame))

    async def body(self) -> bytes:
        """The whole body (the ingress has read it already: this never waits)."""
        return self._body

    async def text(self) -> str:
        """The body decoded with the charset of ``content-type`` (UTF-8 when none is named)."""
        return self._body.decode(_charset(self.headers.get("content-type", "")), errors="replace")

    async def json(self) -> Any:
        """The body parsed as JSON; a body that is not JSON raises :class:`InvalidJSON`,
        which the replica answers with a 400 naming the problem."""
        try:
            return json.loads(self._body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidJSON(f"the request body is not valid JSON: {e}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url} id={self.request_id}>"


def _address(client: str) -> Address | None:
    host, sep, port = client.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return Address(host.strip("[]"), int(port))


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


HeaderArg = Mapping[str, str] | list[tuple[str, str]] | None


class Response:
    """An answer with its own status, headers and body (Starlette's ``Response``).

    ``body`` is bytes or str (Starlette calls it ``content``: ``content=`` works too);
    ``media_type`` becomes ``content-type`` (with ``; charset=utf-8`` for text). The ingress
    sets ``content-length`` (and the framing headers: a ``content-length``,
    ``transfer-encoding`` or ``connection`` given here is dropped).

    >>> r = Response("created", status_code=201, headers={"Location": "/items/7"},
    ...              media_type="text/plain")
    >>> r.status_code, r.body, r.raw_headers()
    (201, b'created', [(b'location', b'/items/7'), (b'content-type', b'text/plain; charset=utf-8')])
    """

    media_type: str | None = None

    def __init__(
        self,
        body: Any = b"",
        status_code: int = 200,
        headers: HeaderArg = None,
        media_type: str | None = None,
        *,
        content: Any = None,
    ) -> None:
        if content is not None:
            if body != b"":
                raise TypeError("give the body once: body= or Starlette's content=, not both")
            body = content
        if not isinstance(status_code, int) or isinstance(status_code, bool):
            raise TypeError(f"status_code is an int, not {type(status_code).__name__}")
        if not 100 <= status_code <= 599:
            raise ValueError(f"status_code is 100-599, not {status_code}")
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.body = self.render(body)
        items = headers.items() if isinstance(headers, Mapping) else (headers or [])
        self.headers: list[tuple[str, str]] = []
        for name, value in items:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"header names and values are str, not {name!r}: {value!r}")
            self.headers.append((name, value))

    def render(self, body: Any) -> bytes:
        """The body as bytes (subclasses encode their own kind)."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            return bytes(body)
        if isinstance(body, str):
            return body.encode()
        raise TypeError(
            f"a Response body is bytes or str, not {type(body).__name__} "
            "(JSONResponse takes objects)"
        )

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as the response frame carries them: lower-case names, ``content-type``
        added from ``media_type`` unless given."""
        out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        if self.media_type is not None and not any(k == b"content-type" for k, _ in out):
            ct = self.media_type
            if ct.startswith("text/") and "charset" not in ct:
                ct += "; charset=utf-8"
            out.append((b"content-type", ct.encode("latin-1")))
        return out


class JSONResponse(Response):
    """A body encoded as compact JSON, ``application/json`` (NaN and infinities are refused,
    as JSON has none).

    >>> JSONResponse({"ok": True}, status_code=202).body
    b'{"ok":true}'
    """

    media_type = "application/json"

    def __init__(
        self,
        content: Any = None,
        status_code: int = 200,
        headers: HeaderArg = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(b"", status_code, headers, media_type)
        self.body = _json_bytes(content)


class PlainTextResponse(Response):
    """A ``text/plain; charset=utf-8`` body.

    >>> PlainTextResponse("hi").raw_headers()
    [(b'content-type', b'text/plain; charset=utf-8')]
    """

    media_type = "text/plain"


class HTMLResponse(Response):
    """A ``text/html; charset=utf-8`` body."""

    media_type = "text/html"


class StreamingResponse(Response):
    """A body sent in chunks as ``content`` yields them (Starlette's ``StreamingResponse``):
    ``content`` is a generator, an async generator or any (async) iterable of ``bytes``,
    ``str`` (UTF-8) or dicts/lists (a JSON line each). The status and headers go out with the
    first chunk; each later chunk as it comes. For server-sent events use
    ``media_type="text/event-stream"`` and yield ``"data: ...\\n\\n"``.

    >>> def events():
    ...     for i in range(2):
    ...         yield f"data: {i}\\n\\n"
    >>> r = StreamingResponse(events(), media_type="text/event-stream")
    >>> r.status_code, r.raw_headers()
    (200, [(b'content-type', b'text/event-stream; charset=utf-8')])
    """

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: HeaderArg = None,
        media_type: str | None = None,
    ) -> None:
        if isinstance(content, (str, bytes, bytearray, memoryview)) or not (
            hasattr(content, "__iter__") or hasattr(content, "__aiter__")
        ):
            raise TypeError(
                "StreamingResponse takes a generator, an async generator or an iterable of "
                f"chunks, not {type(content).__name__} (use Response for a whole body)"
            )
        super().__init__(b"", status_code, headers, media_type)
        self.body_iterator = content


def _json_bytes(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def request_or_error(frame: bytes) -> Request | bytes:
    """The request a request frame carries, or (a frame that is not one) the response frame of
    a 500 that says so.

    >>> request_or_error(_wire.encode_request("r", "GET", "/", "/", "", "", [], b"")).path
    '/'
    >>> _wire.decode_response(request_or_error(b"nope"))[0]
    500
    """
    try:
        return Request.from_frame(bytes(frame))
    except (_wire.WireError, UnicodeDecodeError, TypeError) as e:
        return encode_error(500, "", f"the replica got a malformed request frame: {e}")


def encode_error(status: int, request_id: str, message: str) -> bytes:
    """A response frame for an error: ``status`` and a JSON body
    ``{"error": message, "request_id": ..., "status": ...}`` with ``x-request-id``. The ingress
    writes its own errors (404, 503, 504) in the same shape.

    >>> from volley.serve import _wire
    >>> status, headers, body = _wire.decode_response(encode_error(503, "r9", "no replica"))
    >>> status, json.loads(body)
    (503, {'error': 'no replica', 'request_id': 'r9', 'status': 503})
    """
    body = _json_bytes({"error": message, "request_id": request_id, "status": status})
    return _wire.encode_response(status, _error_headers(request_id), body)


# Headers the answer's framing sets (the ingress, from the body it sends) or the frame's id.
_INGRESS_OWNS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"x-request-id"})


def _error_headers(request_id: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"x-request-id", request_id.encode("latin-1", "replace")),
    ]


def _to_response(value: Any) -> Response:
    if isinstance(value, Response):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response(value, media_type="application/octet-stream")
    if isinstance(value, str):
        return PlainTextResponse(value)
    if value is None or isinstance(value, (dict, list, int, float, bool)):
        return JSONResponse(value)
    raise TypeError(
        f"a deployment returned a {type(value).__module__}.{type(value).__qualname__}; return a "
        "Response, bytes, str, or a dict, list, number, bool or None (sent as JSON)"
    )


def _type_name(e: BaseException) -> str:
    t = type(e)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _log_failure(request_id: str, what: str) -> None:
    sys.stderr.write(f"volley.serve: request {request_id} failed: {what}\n{traceback.format_exc()}")
    sys.stderr.flush()


def _is_async(target: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 (an instance with an async __call__)
    return call is not None and inspect.iscoroutinefunction(call)


#: What the replica does with a streaming answer: ``(request_id, StreamingResponse)`` -> the
#: frame to send (a stream head, or a whole response if the stream yielded nothing).
OnStream = Callable[[str, "StreamingResponse"], Any]


def as_streaming(value: Any) -> StreamingResponse | None:
    """A method's answer as a :class:`StreamingResponse` if it streams (a generator, an async
    generator, or one given), else ``None``."""
    if isinstance(value, StreamingResponse):
        return value
    if is_stream(value):
        return StreamingResponse(value)
    return None


async def handle_frame(
    target: Callable[[Request], Any], frame: bytes, on_stream: OnStream | None = None
) -> bytes:
    """Answers one request frame: builds the :class:`Request`, calls ``target(request)``
    (awaited if it is ``async``, else run in a thread by ``asyncio.to_thread`` so the replica's
    loop goes on serving), and encodes what it returns as a response frame.

    A user exception becomes a 500 whose JSON body names the request id and the exception (its
    traceback goes to this process's stderr, with the request id); an :class:`HTTPException`
    its own status. Never raises: a frame that cannot be decoded is answered with a 500 too.

    >>> async def shout(request):
    ...     return (await request.text()).upper()
    >>> frame = _wire.encode_request("r2", "POST", "/s", "/s", "", "", [], b"hey")
    >>> _wire.decode_response(asyncio.run(handle_frame(shout, frame)))[2]
    b'HEY'
    """
    request = request_or_error(frame)
    if isinstance(request, bytes):
        return request
    rid = request.request_id
    try:
        if _is_async(target):
            value = await target(request)
        else:
            value = await asyncio.to_thread(target, request)
            if inspect.isawaitable(value):
                value = await value
        streaming = as_streaming(value)
        if streaming is not None:
            if on_stream is None:
                raise TypeError(
                    f"a {type(value).__name__} streams its body: only a replica (which follows "
                    "the stream) sends it"
                )
            return await on_stream(rid, streaming)
        response = _to_response(value)
        headers = [(k, v) for k, v in response.raw_headers() if k not in _INGRESS_OWNS]
        headers.append((b"x-request-id", rid.encode("latin-1", "replace")))
        return _wire.encode_response(response.status_code, headers, response.body)
    except HTTPException as e:
        return encode_error(e.status_code, rid, e.detail)
    except Exception as e:
        _log_failure(rid, f"{_type_name(e)}: {e}")
        return encode_error(500, rid, f"{_type_name(e)}: {e}")


def _context_of(request: Request, app: str = "", deployment: str = "") -> Any:
    from ._context import MODEL_ID_HEADER, RequestContext

    return RequestContext(
        request.request_id, request.headers.get(MODEL_ID_HEADER, ""), app, deployment
    )


def _peek_context(frame: bytes, app: str, deployment: str) -> Any:
    """The request context of a request frame, read without copying its body (None if the
    frame is not one: :func:`handle_frame` answers that)."""
    from ._context import MODEL_ID_HEADER, RequestContext

    try:
        r = _wire._Reader(frame, b"VSQ1")
        rid = r.blob().decode()
        for _ in range(5):  # method, path, route_prefix, query, client
            r.take(r.num(_wire._U32))
        model = b""
        want = MODEL_ID_HEADER.encode()
        for name, value in r.headers():
            if name.lower() == want:
                model = value
        return RequestContext(rid, model.decode("latin-1"), app, deployment)
    except (_wire.WireError, UnicodeDecodeError):
        return None


async def handle_frame_in_context(
    target: Callable[[Request], Any],
    frame: bytes,
    app: str = "",
    deployment: str = "",
    on_stream: OnStream | None = None,
) -> bytes:
    """:func:`handle_frame` with the request's context set around the call (its id and the
    ``serve_multiplexed_model_id`` header, for ``serve.get_request_id()``, the log lines'
    prefix and ``serve.get_multiplexed_model_id()``); up to a streamed answer's first chunk."""
    from ._context import serving

    ctx = _peek_context(frame, app, deployment)
    if ctx is None:
        return await handle_frame(target, frame, on_stream)  # (which answers the bad frame)
    with serving(ctx):
        return await handle_frame(target, frame, on_stream)


def _asgi_scope(request: Request) -> dict[str, Any]:
    prefix = request.route_prefix.rstrip("/")
    path = request.path
    if prefix and path == prefix:
        path = prefix + "/"  # "/items" served at "/items" is the app's "/"
    client = request.client
    host = request.headers.get("host", "")
    name, _, port = host.rpartition(":")
    server = (name, int(port)) if name and port.isdigit() else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": prefix,
        "query_string": request.url.query.encode("latin-1"),
        "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in request.headers.multi_items()
        ],
        "client": (client.host, client.port) if client is not None else None,
        "server": server,
        "state": {},
    }


async def handle_frame_asgi(
    asgi_app: Any,
    frame: bytes,
    app: str = "",
    deployment: str = "",
    state: dict[str, Any] | None = None,
) -> bytes:
    """Answers one request frame with an ASGI app (FastAPI's ``@serve.ingress``), run in this
    process: the scope comes from the frame (``path`` is the full path, ``root_path`` the route
    prefix, so that the app's routes are matched without it), the body is the frame's, and the
    app's answer is collected whole into one response frame (a streaming response too: its
    chunks are joined, and sent when it ends). An exception out of the app is a 500 whose JSON
    body names the request id, as :func:`handle_frame`'s; the request's context is set as in
    :func:`handle_frame_in_context`. ``state`` is the app's lifespan state (each request's
    scope gets a shallow copy, as ASGI servers do).

    >>> async def hello(scope, receive, send):
    ...     body = (await receive())["body"]
    ...     await send({"type": "http.response.start", "status": 201,
    ...                 "headers": [(b"content-type", b"text/plain")]})
    ...     await send({"type": "http.response.body", "body": scope["root_path"].encode() + b" "})
    ...     await send({"type": "http.response.body", "body": body, "more_body": False})
    >>> fr = _wire.encode_request("r3", "POST", "/p/x", "/p", "", "", [], b"hi")
    >>> _wire.decode_response(asyncio.run(handle_frame_asgi(hello, fr)))
    (201, [(b'content-type', b'text/plain'), (b'x-request-id', b'r3')], b'/p hi')
    """
    from ._context import serving

    request = request_or_error(frame)
    if isinstance(request, bytes):
        return request
    rid = request.request_id
    scope = _asgi_scope(request)
    if state:
        scope["state"] = dict(state)
    body = request._body
    sent_body = False
    done = asyncio.Event()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client is "gone" once the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        kind = message.get("type")
        if kind == "http.response.start":
            if status is not None:
                raise RuntimeError("the ASGI app started its response twice")
            status = int(message["status"])
            headers.extend((bytes(k).lower(), bytes(v)) for k, v in message.get("headers", []))
        elif kind == "http.response.body":
            if status is None:
                raise RuntimeError("the ASGI app sent a body before http.response.start")
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    with serving(_context_of(request, app, deployment)):
        try:
            await asgi_app(scope, receive, send)
        except Exception as e:
            _log_failure(rid, f"{_type_name(e)}: {e}")
            return encode_error(500, rid, f"{_type_name(e)}: {e}")
        finally:
            done.set()
    if status is None:
        sys.stderr.write(f"volley.serve: request {rid} failed: the ASGI app sent no response\n")
        return encode_error(500, rid, "the ASGI app returned without sending a response")
    out = [(k, v) for k, v in headers if k not in _INGRESS_OWNS]
    out.append((b"x-request-id", rid.encode("latin-1", "replace")))
    return _wire.encode_response(status, out, b"".join(chunks))


async def open_stream(request_id: str, response: StreamingResponse, items: Any) -> tuple:
    """Runs a streaming answer to its first chunk: ``(status, headers, first chunk)``, the
    first chunk ``None`` if the stream yielded nothing (``items``: its ``_streaming.Items``).
    A bare generator's ``content-type`` follows its first item (text, JSON lines or bytes).
    Raises what the generator raised before its first chunk (the caller answers 500)."""
    from ._streaming import END, chunk_bytes, media_type_of

    first: bytes | None = None
    item: Any = END
    while first is None:  # empty chunks are skipped: a zero-size chunk would end the body
        item = await items.next()
        if item is END:
            break
        first = chunk_bytes(item) or None
    headers = [(k, v) for k, v in response.raw_headers() if k not in _INGRESS_OWNS]
    if item is not END and not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", media_type_of(item).encode()))
    headers.append((b"x-request-id", request_id.encode("latin-1", "replace")))
    return response.status_code, headers, first
