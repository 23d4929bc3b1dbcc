"""A replica: the async volley actor that holds one instance of a deployment's class (or its
function) and runs the calls that handles and the HTTP ingress send it.

At most ``max_ongoing_requests`` calls run at once (an ``asyncio.Semaphore`` here; the rest
wait in this process and count as ongoing for the autoscaler). The actor itself takes many more
calls at once than that (``CONTROL_SLOTS`` more), so that the controller's health checks and
metric reads are never queued behind requests. A sync user method runs in a thread of the
replica, an async one on its event loop.

Streams (a generator method called with ``stream=True`` through a handle, or an HTTP answer
that streams) hold their slot until they end; they are registered by key, so that the caller
(or the ingress, for a client that left) can stop them with ``cancel_stream`` /
``__volley_serve_cancel__``. See ``_streaming`` and ``docs/serve-http.md``, "Streaming".
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import os
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import volley

from . import _context, _multiplex, _streaming
from ._common import ReplicaStoppingError
from ._deployment import HandleMarker

#: Calls the actor takes at once beyond ``max_ongoing_requests``: requests that wait here for
#: a slot (they count as ongoing for the autoscaler) and the controller's own calls, which must
#: never queue behind requests in the engine (a health check would time out).
CONTROL_SLOTS = 1000
#: How long an HTTP stream's generator waits for the ingress to ask for its chunks (after its
#: head went out) before the replica closes it: the ingress is gone.
STREAM_PICKUP_S = 60.0
#: How long a cancel waits for the stream's generator to be closed.
CANCEL_WAIT_S = 10.0


def _resolve(x: Any) -> Any:
    if isinstance(x, HandleMarker):
        from ._handle import DeploymentHandle

        return DeploymentHandle(x.deployment, x.app)
    return x


async def _call(fn: Any, args: tuple, kwargs: dict, pool: Any = None) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    out = await asyncio.get_running_loop().run_in_executor(pool, call)
    if inspect.isawaitable(out):
        out = await out
    return out


async def _next_in(st: _streaming.Stream) -> Any:
    """The stream's next item, made with its request's context set (each step apart: the
    generator that awaits this may be resumed from another task between items)."""
    token = _context._current.set(st.context)
    try:
        return await st.items.next()
    finally:
        _context._current.reset(token)


class Replica:
    """One replica of a deployment (made by the controller; users never make one)."""

    def __init__(
        self,
        app: str,
        deployment: str,
        target: bytes,
        init: bytes,
        is_class: bool,
        max_ongoing_requests: int,
    ) -> None:
        import cloudpickle

        self._app = app
        self._deployment = deployment
        _context.install_log_prefix()  # before the user's code makes its logging handlers
        fn = cloudpickle.loads(target)
        args, kwargs = cloudpickle.loads(init)
        args = tuple(_resolve(a) for a in args)
        kwargs = {k: _resolve(v) for k, v in kwargs.items()}
        self._user = fn(*args, **kwargs) if is_class else fn
        self._is_class = is_class
        self._limit = max_ongoing_requests
        self._sem: asyncio.Semaphore | None = None
        # The threads a sync method runs in: as many as calls may run at once.
        self._pool = ThreadPoolExecutor(max_ongoing_requests, thread_name_prefix="serve-replica")
        self._ongoing = 0
        self._served = 0
        self._draining = False
        self._asgi = None
        self._lifespan: Any = None
        if is_class:
            from ._fastapi import asgi_app_of

            self._asgi = asgi_app_of(self._user)
        # Streams under way (HTTP, and handle calls with stream=True), by key.
        self._streams: dict[bytes, _streaming.Stream] = {}
        # WebSockets accepted (until the ingress stops following them), by key.
        self._sockets: dict[bytes, Any] = {}
        self._stream_ids = itertools.count()

    def _what(self) -> str:
        return f"deployment {self._deployment!r} of application {self._app!r}"

    async def ready(self, user_config: Any, has_user_config: bool) -> tuple[str, int]:
        """Called once by the controller after ``__init__``: applies the first user_config and
        returns this actor's id (hex), as the ingress's routing table names it, and its node."""
        self._sem = asyncio.Semaphore(self._limit)
        if self._asgi is not None and self._lifespan is None:
            from ._fastapi import Lifespan

            self._lifespan = Lifespan(self._asgi)
            await self._lifespan.startup()  # (FastAPI's lifespan / startup handlers)
        if has_user_config:
            await self.reconfigure(user_config)
        ctx = volley.get_runtime_context()
        actor_id = ctx.get_actor_id()
        assert actor_id is not None
        _multiplex._replica_started(self._app, self._deployment, actor_id)
        return actor_id, int(ctx.get_node_id())

    def _method(self, name: str) -> Any:
        if not self._is_class:
            if name != "__call__":
                raise AttributeError(f"{self._what()} is a function: it has no method {name!r}")
            return self._user
        if name.startswith("_") and name != "__call__":
            raise AttributeError(f"{self._what()}: method {name!r} is private")
        fn = getattr(self._user, name, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"{self._what()} has no method {name!r}")
        return fn

    async def handle_request(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Runs ``method`` of the user's object (a handle call)."""
        if self._draining:
            raise ReplicaStoppingError(f"this replica of {self._what()} is stopping")
        fn = self._method(method)
        ctx = self._context_of_call(kwargs)
        self._ongoing += 1
        try:
            assert self._sem is not None, "a call came before the replica was ready"
            async with self._sem:
                token = _context._current.set(ctx)
                try:
                    out = await _call(fn, args, kwargs, self._pool)
                    if _streaming.is_stream(out):
                        await _streaming.Items(out, self._pool).close()
                        raise TypeError(
                            f"{self._what()}: method {method!r} is a generator: call it with "
                            "handle.options(stream=True)"
                        )
                    return out
                finally:
                    _context._current.reset(token)
        finally:
            self._ongoing -= 1
            self._served += 1

    def _context_of_call(self, kwargs: dict) -> _context.RequestContext:
        """A handle call's request context: the (request id, model id) the handle sent, taken
        out of ``kwargs`` (a caller that sent none, e.g. an older handle, gets a fresh id)."""
        meta = kwargs.pop(_context.META_KWARG, None)
        rid, model = meta if isinstance(meta, tuple) else (_context.new_request_id(), "")
        return _context.RequestContext(rid, model, self._app, self._deployment)

    async def _serve_frame(self, frame: bytes, on_stream: Any = None) -> bytes:
        """One request frame through the user's ASGI app (``@serve.ingress``: a streaming
        response is collected whole) or callable (which may stream through ``on_stream``)."""
        from ._http import handle_frame_asgi, handle_frame_in_context

        if self._asgi is not None:
            state = self._lifespan.state if self._lifespan is not None else None
            return await handle_frame_asgi(self._asgi, frame, self._app, self._deployment, state)
        return await handle_frame_in_context(
            self._user, frame, self._app, self._deployment, on_stream
        )

    async def __volley_serve_http__(self, frame: bytes) -> bytes:
        """An HTTP request from the ingress (a request frame) -> its response frame, or a stream
        head: then the request keeps its slot (and counts as ongoing) until its stream ends."""
        self._ongoing += 1
        opened: list[bytes] = []  # the stream's key, once it holds the slot
        try:
            assert self._sem is not None, "a request came before the replica was ready"
            await self._sem.acquire()
            try:
                return await self._serve_frame(
                    frame, lambda rid, r: self._open_http_stream(rid, r, opened)
                )
            finally:
                if not opened:
                    self._sem.release()
        finally:
            if not opened:
                self._ongoing -= 1
                self._served += 1

    async def _open_http_stream(self, rid: str, response: Any, opened: list[bytes]) -> bytes:
        """Runs a streaming answer to its first chunk and registers the rest under a key: the
        stream head for the ingress (a whole, empty response if it yielded nothing)."""
        from . import _wire
        from ._http import open_stream

        items = _streaming.Items(response.body_iterator, self._pool)
        try:
            status, headers, first = await open_stream(rid, response, items)
        except BaseException:
            await items.close()
            raise
        if first is None:
            await items.close()
            return _wire.encode_response(status, headers, b"")
        key = f"h{next(self._stream_ids)}".encode()
        st = _streaming.Stream(items, rid, _context.current())
        self._streams[key] = st
        opened.append(key)
        loop = asyncio.get_running_loop()
        st.timer = loop.call_later(STREAM_PICKUP_S, self._abandon, key)
        return _wire.encode_stream_head(status, headers, first, key)

    def _abandon(self, key: bytes) -> None:
        st = self._streams.get(key)
        if st is not None and st.task is None:
            print(
                f"volley.serve: request {st.request_id}: the ingress did not take its stream "
                f"within {STREAM_PICKUP_S} s; it is closed",
                file=sys.stderr,
            )
            asyncio.get_running_loop().create_task(self._end_stream(key))

    async def _end_stream(self, key: bytes) -> None:
        """A stream is over: its generator is closed and its slot given back (once)."""
        st = self._streams.pop(key, None)
        if st is None:
            return
        if st.timer is not None:
            st.timer.cancel()
        try:
            await st.items.close()
        finally:
            assert self._sem is not None
            self._sem.release()
            self._ongoing -= 1
            self._served += 1
            st.over.set()

    async def __volley_serve_stream__(self, key: bytes) -> Any:
        """The chunks (bytes) of the HTTP stream ``key`` after its first: what the ingress
        follows after a stream head."""
        st = self._streams.get(key)
        if st is None:
            raise RuntimeError(f"no stream {key!r} in this replica (cancelled, or abandoned)")
        st.task = asyncio.current_task()
        if st.timer is not None:
            st.timer.cancel()
        try:
            while True:
                await st.credit.room()  # at most WINDOW ahead of what the ingress took
                item = await _next_in(st)
                if item is _streaming.END:
                    return
                chunk = _streaming.chunk_bytes(item)
                if chunk:
                    st.credit.made += 1
                    yield chunk
        except Exception as e:
            sys.stderr.write(
                f"volley.serve: request {st.request_id} failed mid-stream (the client gets an "
                f"incomplete body): {type(e).__name__}: {e}\n{traceback.format_exc()}"
            )
            sys.stderr.flush()
            raise
        finally:
            await self._end_stream(key)

    async def __volley_serve_credit__(self, data: bytes) -> bytes:
        """The ingress took this many items of stream (or WebSocket) ``key``: its producer may
        run ``_streaming.WINDOW`` past them."""
        key, taken = _streaming.split_credit(data)
        owner = self._streams.get(key) or self._sockets.get(key)
        if owner is not None:
            owner.credit.ack(taken)
        return b""

    async def __volley_serve_cancel__(self, key: bytes) -> bytes:
        """Stops the stream ``key`` (its client left): its generator gets ``CancelledError``
        (async) or ``GeneratorExit`` (sync); returns once it is closed (at most
        ``CANCEL_WAIT_S``)."""
        return await self.cancel_stream(key)

    async def cancel_stream(self, key: bytes) -> bytes:
        """The same as ``__volley_serve_cancel__``, for Python handles (streams of
        ``handle.options(stream=True)`` calls)."""
        sock = self._sockets.pop(key, None)
        if sock is not None:  # a WebSocket whose client left
            await sock.end(1006)
            return b""
        st = self._streams.get(key)
        if st is None:
            return b""
        if st.task is not None and not st.task.done():
            st.task.cancel()
            try:
                await asyncio.wait_for(st.over.wait(), CANCEL_WAIT_S)
            except asyncio.TimeoutError:
                pass
        else:
            await self._end_stream(key)
        return b""

    async def __volley_serve_websocket__(self, frame: bytes) -> bytes:
        """A WebSocket upgrade request from the ingress: runs the ASGI app (``@serve.ingress``)
        until it answers the handshake (see ``_websocket``). An accepted socket holds its slot
        (and counts as ongoing) until the app returns."""
        from . import _websocket
        from ._http import _peek_context, encode_error

        if self._asgi is None:
            ctx = _peek_context(frame, self._app, self._deployment)
            rid = ctx.request_id if ctx is not None else ""
            why = (
                f"{self._what()} serves no WebSockets: make it a FastAPI app with "
                "@serve.ingress(app) and an @app.websocket route"
            )
            return encode_error(501, rid, why)
        assert self._sem is not None, "a request came before the replica was ready"
        self._ongoing += 1
        await self._sem.acquire()

        def ended() -> None:
            assert self._sem is not None
            self._sem.release()
            self._ongoing -= 1
            self._served += 1

        key = f"w{next(self._stream_ids)}".encode()
        state = self._lifespan.state if self._lifespan is not None else None
        head, sock = await _websocket.open_socket(
            self._asgi, frame, self._app, self._deployment, state, key, ended
        )
        if sock is not None:
            self._sockets[key] = sock
            sock.timer = asyncio.get_running_loop().call_later(
                STREAM_PICKUP_S, self._abandon_socket, key
            )
        return head

    def _abandon_socket(self, key: bytes) -> None:
        sock = self._sockets.pop(key, None)
        if sock is not None:
            print(
                f"volley.serve: request {sock.request_id}: the ingress did not take its "
                f"WebSocket within {STREAM_PICKUP_S} s; it is closed",
                file=sys.stderr,
            )
            asyncio.get_running_loop().create_task(sock.end(1006))

    async def __volley_serve_ws_out__(self, key: bytes) -> Any:
        """The messages the app sends on WebSocket ``key``, up to its close."""
        sock = self._sockets.get(key)
        if sock is None:
            raise RuntimeError(f"no WebSocket {key!r} in this replica (closed, or abandoned)")
        try:
            async for item in sock.outbound():
                yield item
        finally:
            self._sockets.pop(key, None)

    async def __volley_serve_ws_in__(self, data: bytes) -> bytes:
        """One message of a WebSocket's client (``_websocket.split_inbound``'s form); waits
        while the app has many unread. A message for a socket that ended is dropped."""
        from ._websocket import split_inbound

        key, msg = split_inbound(data)
        sock = self._sockets.get(key)
        if sock is not None:
            await sock.push(msg)
        return b""

    async def handle_request_stream(
        self, key: bytes, method: str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """Runs generator ``method`` of the user's object and yields its items as they come
        (a handle call with ``stream=True``); ``cancel_stream(key)`` stops it."""
        if self._draining:
            raise ReplicaStoppingError(f"this replica of {self._what()} is stopping")
        fn = self._method(method)
        ctx = self._context_of_call(kwargs)
        assert self._sem is not None, "a call came before the replica was ready"
        self._ongoing += 1
        held = False
        try:
            await self._sem.acquire()
            held = True
            token = _context._current.set(ctx)
            try:
                out = await _call(fn, args, kwargs, self._pool)
            finally:
                _context._current.reset(token)
            if not _streaming.is_stream(out):
                raise TypeError(
                    f"{self._what()}: method {method!r} is not a generator (it returned a "
                    f"{type(out).__name__}): call it without stream=True"
                )
            st = _streaming.Stream(_streaming.Items(out, self._pool), ctx.request_id, ctx)
            st.task = asyncio.current_task()
            self._streams[key] = st
            held = False  # _end_stream gives the slot back
        finally:
            if held:
                self._sem.release()
                self._ongoing -= 1
                self._served += 1
            elif key not in self._streams:
                self._ongoing -= 1
                self._served += 1
        try:
            while True:
                item = await _next_in(st)
                if item is _streaming.END:
                    return
                yield item
        finally:
            await self._end_stream(key)

    async def handle_http(self, frame: bytes) -> bytes:
        """The same as ``__volley_serve_http__`` (a Python handle reaches no dunder method). A
        streaming answer comes back as a stream head whose stream only the ingress follows
        (unfollowed, it is closed after ``STREAM_PICKUP_S``)."""
        return await self.__volley_serve_http__(frame)

    async def reconfigure(self, user_config: Any) -> None:
        """Passes a new ``user_config`` to the user's ``reconfigure`` (no restart)."""
        fn = getattr(self._user, "reconfigure", None) if self._is_class else None
        if fn is None:
            raise TypeError(
                f"{self._what()} has a user_config but its class has no reconfigure(config) method"
            )
        await _call(fn, (user_config,), {})

    async def check_health(self) -> None:
        """Raises if the user's ``check_health`` does (a replica without one is healthy)."""
        fn = getattr(self._user, "check_health", None) if self._is_class else None
        if fn is not None:
            await _call(fn, (), {})

    async def stats(self) -> dict:
        """What the controller's autoscaler reads: calls running or waiting here (and this
        actor's id, as the routing table names it)."""
        return {
            "ongoing": self._ongoing,
            "served": self._served,
            "actor_id": volley.get_runtime_context().get_actor_id(),
            "pid": os.getpid(),
            "models": _multiplex._reporter.models(),
        }

    async def drain(self, timeout_s: float) -> int:
        """Takes no more handle calls (they go to other replicas), then waits until no call
        runs here (at most ``timeout_s``); the calls still running. HTTP requests are still
        served meanwhile: the ingress stopped sending them with the routing table."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._ongoing and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_multiplex._reporter.forget)
        if self._lifespan is not None:
            await self._lifespan.shutdown(max(0.0, deadline - loop.time()) + 5.0)
        return self._ongoing
