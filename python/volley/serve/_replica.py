"""A replica: the async volley actor that holds one instance of a deployment's class (or its
function) and runs the calls that handles and the HTTP ingress send it.

At most ``max_ongoing_requests`` calls run at once (an ``asyncio.Semaphore`` here; the rest
wait in this process and count as ongoing for the autoscaler). The actor itself takes many more
calls at once than that (``CONTROL_SLOTS`` more), so that the controller's health checks and
metric reads are never queued behind requests. A sync user method runs in a thread of the
replica, an async one on its event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import volley

from . import _context, _multiplex
from ._common import ReplicaStoppingError
from ._deployment import HandleMarker

#: Calls the actor takes at once beyond ``max_ongoing_requests``: requests that wait here for
#: a slot (they count as ongoing for the autoscaler) and the controller's own calls, which must
#: never queue behind requests in the engine (a health check would time out).
CONTROL_SLOTS = 1000


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
                    return await _call(fn, args, kwargs, self._pool)
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

    async def _serve_frame(self, frame: bytes) -> bytes:
        """One request frame through the user's ASGI app (``@serve.ingress``) or callable."""
        from ._http import handle_frame_asgi, handle_frame_in_context

        if self._asgi is not None:
            state = self._lifespan.state if self._lifespan is not None else None
            return await handle_frame_asgi(self._asgi, frame, self._app, self._deployment, state)
        return await handle_frame_in_context(self._user, frame, self._app, self._deployment)

    async def __volley_serve_http__(self, frame: bytes) -> bytes:
        """An HTTP request from the ingress (a request frame) -> its response frame."""
        self._ongoing += 1
        try:
            assert self._sem is not None, "a request came before the replica was ready"
            async with self._sem:
                return await self._serve_frame(frame)
        finally:
            self._ongoing -= 1
            self._served += 1

    async def handle_http(self, frame: bytes) -> bytes:
        """The same as ``__volley_serve_http__`` (a Python handle reaches no dunder method)."""
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
