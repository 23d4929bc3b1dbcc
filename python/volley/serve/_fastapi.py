"""FastAPI ingress: ``@serve.ingress(app)`` on a deployment's class serves a FastAPI app (Ray
Serve's name and shape).

The class's methods carry the app's route decorators (``@app.get("/items/{item_id}")``); in
each replica the routes whose endpoint is a method of the class are rebuilt with the replica's
own instance bound as ``self``, so FastAPI sees the method's parameters without ``self`` (path,
query, body, pydantic models, dependencies) and validates them as usual. The replica runs the
app in its own process for each request frame (``_http.handle_frame_asgi``): no web server
process, and the route prefix is the ASGI ``root_path``, as Ray Serve sets it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

__all__ = ["Lifespan", "asgi_app_of", "ingress"]

#: The class attribute where ``@serve.ingress`` keeps the app.
APP_ATTR = "__volley_serve_asgi__"


def _need_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "serve.ingress(app) serves a FastAPI app, and the 'fastapi' package is not "
            f"installed here ({e}); install it with: pip install fastapi"
        ) from None


def _rebuild_state(items: dict[str, Any]) -> Any:
    from starlette.datastructures import State

    return State(items)


def _reduce_state(state: Any) -> tuple[Any, tuple[dict[str, Any]]]:
    return _rebuild_state, (dict(object.__getattribute__(state, "_state")),)


def _make_picklable() -> None:
    """Starlette's ``State`` (``app.state``) does not survive a pickle round trip (its
    ``__getattr__`` recurses while it is rebuilt); the app goes to each replica pickled, so
    ``State`` is pickled by its items (``copyreg``: cloudpickle follows it)."""
    import copyreg

    from starlette.datastructures import State

    copyreg.pickle(State, _reduce_state)


class _Builder:
    """A function that builds the ASGI app, called in each replica (``serve.ingress(fn)``)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def build(self) -> Any:
        app = self.fn()
        if not callable(app):
            raise TypeError(
                f"the builder function {getattr(self.fn, '__qualname__', self.fn)!r} given to "
                f"serve.ingress returned {type(app).__name__}, not an ASGI app (a FastAPI app)"
            )
        return app


def _is_builder(app: Any) -> bool:
    """A plain function that takes no argument builds the app; an ASGI app takes three."""
    if not inspect.isfunction(app):
        return False
    try:
        return not inspect.signature(app).parameters
    except (TypeError, ValueError):
        return False


def ingress(app: Any) -> Callable[..., type]:
    """Serves the FastAPI ``app`` from a deployment's class: put it under
    ``@serve.deployment``, and decorate the class's methods with the app's routes. ``self`` is
    the replica's instance; requests reach the app with the deployment's route prefix stripped
    (the ASGI ``root_path``), as in Ray Serve.

    As in Ray Serve, ``app`` may also be a function of no argument that builds the app: it is
    called in each replica (an app that cannot be pickled, or one that makes handles when it
    starts). ``serve.ingress(app)()``, with no class, makes one that serves the app alone:
    ``serve.deployment(serve.ingress(app)())``.

    >>> from fastapi import FastAPI
    >>> from volley import serve
    >>> app = FastAPI()
    >>> @serve.deployment
    ... @serve.ingress(app)
    ... class Greeter:
    ...     def __init__(self, greeting: str):
    ...         self.greeting = greeting
    ...     @app.get("/hello/{name}")
    ...     def hello(self, name: str, excited: bool = False) -> dict:
    ...         return {"text": f"{self.greeting}, {name}" + ("!" if excited else "")}
    >>> _ = serve.run(Greeter.bind("Hi"), name="greeter", route_prefix="/greet")
    >>> # curl 'localhost:PORT/greet/hello/ada?excited=true'  ->  {"text":"Hi, ada!"}
    >>> serve.delete("greeter")
    """
    _need_fastapi()
    _make_picklable()
    if not callable(app):
        raise TypeError(
            "serve.ingress takes a FastAPI app (or another ASGI app, or a function of no "
            f"argument that builds one), not {type(app).__name__}"
        )
    builder = _Builder(app) if _is_builder(app) else None

    def decorator(cls: type | None = None) -> type:
        from ._deployment import Deployment

        if cls is None:  # the app alone, its routes its own
            name = getattr(app, "__name__", None) or type(app).__name__
            cls = type(f"ASGIIngress_{name}", (), {"__module__": __name__})
        if isinstance(cls, Deployment):
            raise TypeError(
                "@serve.ingress(app) goes below @serve.deployment (it decorates the class "
                "itself): @serve.deployment / @serve.ingress(app) / class ..."
            )
        if not inspect.isclass(cls):
            raise TypeError(
                f"@serve.ingress(app) decorates a class, not {type(cls).__name__} "
                "(a function deployment has no FastAPI routes)"
            )
        if builder is not None:
            setattr(cls, APP_ATTR, builder)
            return cls
        _resolve_annotations(app, cls)
        setattr(cls, APP_ATTR, app)
        return cls

    return decorator


def _class_functions(cls: type) -> dict[Any, str]:
    out: dict[Any, str] = {}
    for klass in reversed(cls.__mro__):
        for name, v in vars(klass).items():
            if inspect.isfunction(v):
                out[v] = name
    return out


def _rebuilt(route: Any, endpoint: Callable[..., Any]) -> Any:
    """``route`` (a FastAPI ``APIRoute`` or ``APIWebSocketRoute``) again, with ``endpoint``
    instead of its own."""
    cls = type(route)
    kwargs: dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "endpoint") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(route, name):
            kwargs[name] = getattr(route, name)
    return cls(endpoint=endpoint, **kwargs)


def _resolve_annotations(app: Any, cls: type) -> None:
    """Gives each endpoint method of ``cls`` a ``__signature__`` with its annotations evaluated
    here, where the module's names are all there (``from __future__ import annotations`` makes
    them strings, and a replica's copy of a function pickled by value keeps only the globals it
    uses: FastAPI there would take ``item: "Item"`` for a query parameter)."""
    import typing

    functions = _class_functions(cls)
    for route in getattr(getattr(app, "router", None), "routes", None) or []:
        fn = getattr(route, "endpoint", None)
        if fn not in functions or "__signature__" in vars(fn):
            continue
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:  # a name defined later or elsewhere: FastAPI resolves it, or says
            continue
        sig = inspect.signature(fn)
        params = [
            p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
        ]
        fn.__signature__ = sig.replace(
            parameters=params, return_annotation=hints.get("return", sig.return_annotation)
        )


def asgi_app_of(instance: Any) -> Any:
    """The ASGI app a replica's ``instance`` serves (None: not an ingress class), its class's
    route endpoints bound to ``instance``. Run once per replica, on the replica's own copy of
    the app."""
    app = getattr(type(instance), APP_ATTR, None)
    if app is None:
        return None
    if isinstance(app, _Builder):
        return app.build()  # its routes are its own: nothing to bind
    router = getattr(app, "router", None)
    routes = getattr(router, "routes", None)
    if not isinstance(routes, list):
        return app  # an ASGI app without FastAPI's routes: served as it is
    from fastapi.routing import APIRoute, APIWebSocketRoute

    functions = _class_functions(type(instance))
    for i, route in enumerate(routes):
        bound = isinstance(route, (APIRoute, APIWebSocketRoute))
        if bound and route.endpoint in functions:
            routes[i] = _rebuilt(route, getattr(instance, functions[route.endpoint]))
    return app


#: How long a replica waits for the app's lifespan startup (or shutdown) to say it is done.
LIFESPAN_TIMEOUT_S = 120.0


class Lifespan:
    """The ASGI lifespan of an app in a replica: ``startup`` runs the app's startup (FastAPI's
    ``lifespan=`` or ``on_event("startup")`` handlers) before the replica takes requests,
    ``shutdown`` its shutdown when the replica drains. ``state`` is the lifespan's state,
    copied into each request's scope (Starlette's ``request.state``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._inbox: Any = None
        self._started: Any = None
        self._stopped: Any = None
        self._task: Any = None

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type", "")
        fut = self._started if kind.startswith("lifespan.startup") else self._stopped
        if fut is None or fut.done():
            return
        if kind.endswith(".complete"):
            fut.set_result(None)
        elif kind.endswith(".failed"):
            fut.set_exception(RuntimeError(message.get("message") or kind))

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as e:
            if not self._started.done():
                # An app that does not do lifespan raises at its scope: served without one.
                self.supported = False
            elif self._stopped is not None and not self._stopped.done():
                self._stopped.set_exception(e)
        finally:
            if not self._started.done():
                self._started.set_result(None)
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)

    async def startup(self) -> None:
        """Runs the app's startup; raises ``RuntimeError`` with the app's message if it fails,
        ``TimeoutError`` if it does not finish within ``LIFESPAN_TIMEOUT_S``."""
        import asyncio

        loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        self._started = loop.create_future()
        self._task = asyncio.ensure_future(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        try:
            await asyncio.wait_for(asyncio.shield(self._started), LIFESPAN_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"the ASGI app's lifespan startup did not finish in {LIFESPAN_TIMEOUT_S:.0f} s"
            ) from None

    async def shutdown(self, timeout_s: float = LIFESPAN_TIMEOUT_S) -> None:
        """Runs the app's shutdown (at most ``timeout_s``); a failure is written to stderr."""
        import asyncio
        import sys

        if self._task is None or self._task.done():
            return
        self._stopped = asyncio.get_running_loop().create_future()
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout_s)
        except Exception as e:
            sys.stderr.write(f"volley.serve: the ASGI app's lifespan shutdown failed: {e!r}\n")
