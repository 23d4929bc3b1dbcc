"""``serve.run``, ``start``, ``delete``, ``status``, ``shutdown`` and the handle getters: what a
driver calls; each is a call to the controller actor (started at the first use). The engine
restarts a controller whose process dies; a call meanwhile waits for the restarted one (at most
``CONTROLLER_RESTART_WAIT_S``) and is sent again: every call is idempotent."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import volley
from volley import library

from ._common import CONTROLLER_NAME, HTTP_STATUS_KEY, NAMESPACE
from ._controller import Controller
from ._deployment import Application, flatten
from ._handle import DeploymentHandle, _forget_routers

#: How long a call to the controller may take before it fails naming what it waited for.
CONTROLLER_TIMEOUT_S = 300.0
#: How long a new controller waits for the name of a stopped one to be forgotten.
CONTROLLER_NAME_WAIT_S = 30.0
#: How long a call waits for the engine to restart a controller whose process died.
CONTROLLER_RESTART_WAIT_S = 60.0
#: How long ``serve.start`` waits for the ingress to say whether it listens.
HTTP_STATUS_WAIT_S = 15.0

DEFAULT_HTTP = {"host": "127.0.0.1", "port": 8000}


def _controller(create: bool) -> Any:
    """The controller actor (started if ``create`` and none runs), or None. A name the head
    still lists for a controller that was stopped is waited out (the head forgets it at its
    next heartbeat)."""
    library.init_if_needed()
    deadline = time.monotonic() + CONTROLLER_NAME_WAIT_S
    while True:
        try:
            c = volley.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
        except ValueError:
            c = None
            if not create:
                return None
            try:
                c = (
                    volley.remote(Controller)
                    .options(
                        name=CONTROLLER_NAME,
                        namespace=NAMESPACE,
                        lifetime="detached",
                        get_if_exists=True,
                        max_concurrency=1000,
                        max_restarts=-1,  # it recovers from its checkpoint
                    )
                    .remote(uuid.uuid4().hex)
                )
            except ValueError:  # the head still holds the name of a stopped controller
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
        try:
            _call(c, "ping", what="the serve controller to answer")
            return c
        except volley.ActorDiedError:
            if not create:
                return None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the name {CONTROLLER_NAME!r} still names a stopped serve controller after "
                    f"{CONTROLLER_NAME_WAIT_S:.0f} s: cannot start a new one"
                ) from None
            time.sleep(0.05)


def _ask(ref: Any, what: str, timeout: float = CONTROLLER_TIMEOUT_S) -> Any:
    try:
        return volley.get(ref, timeout=timeout)
    except volley.GetTimeoutError:
        raise TimeoutError(f"waited {timeout:.0f} s for {what}") from None


def _call(c: Any, method: str, *args: Any, what: str) -> Any:
    """``c.method(*args)``; if the controller's process dies under the call, the call waits
    for the engine to restart it (it recovers from its checkpoint) and is sent again.
    ``ActorDiedError`` if the controller is stopped for good; ``TimeoutError``, saying what
    it waited for, if no restarted controller answers in time."""
    deadline = time.monotonic() + CONTROLLER_RESTART_WAIT_S
    while True:
        try:
            return _ask(getattr(c, method).remote(*args), what)
        except volley.ActorDiedError as e:
            st = volley.actor_state(c)
            state = "DEAD" if st is None else st["state"]
            # Stopped for good (serve.shutdown kills it without restart): no wait. (On a
            # cluster this node may not know yet that another node's actor is dead; the
            # error's text says it was killed.)
            if state == "DEAD" or "volley.kill()" in str(e):
                raise
            try:  # a controller being restarted keeps its name; one stopped for good loses it
                volley.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            except ValueError:
                raise e from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {CONTROLLER_RESTART_WAIT_S:.0f} s for the serve controller to come "
                    f"back after its process died (it is {state}: {e}), for {what}"
                ) from None
            time.sleep(0.05)


def _check_route_prefix(p: Any) -> str | None:
    if p is None:
        return None
    if not isinstance(p, str) or not p.startswith("/"):
        raise ValueError(f"route_prefix must be None or a str starting with '/', not {p!r}")
    if p != "/" and p.endswith("/"):
        raise ValueError(f"route_prefix must not end with '/' (except '/' itself): {p!r}")
    return p


def start(http_options: dict | None = None) -> None:
    """Starts serve's controller (if it does not run) and sets where the HTTP ingress listens
    (``http_options``: ``host``, default 127.0.0.1, and ``port``, default 8000; port 0: any
    free port, which ``serve.status().http_status["port"]`` names). Raises ``RuntimeError`` if
    the ingress reports that it cannot listen there, or does not answer.

    >>> from volley import serve
    >>> serve.start(http_options={"host": "127.0.0.1", "port": 0})
    >>> serve.status().http
    {'host': '127.0.0.1', 'port': 0}
    >>> serve.status().http_status["port"] > 0
    True
    """
    opts = dict(DEFAULT_HTTP)
    if http_options is not None:
        if not isinstance(http_options, dict):
            raise TypeError(f"http_options must be a dict, not {type(http_options).__name__}")
        bad = set(http_options) - {"host", "port"}
        if bad:
            raise ValueError(f"unknown http_options {sorted(bad)}; known: ['host', 'port']")
        opts.update(http_options)
    host, port = opts["host"], opts["port"]
    if not isinstance(host, str) or not host:
        raise ValueError(f"http_options['host'] must be a non-empty str, not {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"http_options['port'] must be an int in 0-65535, not {port!r}")
    c = _controller(create=True)
    _call(c, "set_http", host, port, what="the serve controller to set the HTTP address")
    deadline = time.monotonic() + HTTP_STATUS_WAIT_S
    while time.monotonic() < deadline:
        raw = library.kv_get(HTTP_STATUS_KEY, namespace=NAMESPACE)
        if raw:
            st = json.loads(raw)
            if st.get("host") == host and (port == 0 or st.get("port") == port):
                if st.get("error"):
                    raise RuntimeError(
                        f"the HTTP ingress cannot listen on {host}:{port}: {st['error']}"
                    )
                return
        time.sleep(0.02)
    raise RuntimeError(
        f"the HTTP ingress did not answer within {HTTP_STATUS_WAIT_S:.0f} s whether it listens "
        f"on {host}:{port} (it runs in the head's process: is the head up?)"
    )


def run(
    target: Application,
    *,
    name: str = "default",
    route_prefix: str | None = "/",
    blocking: bool = False,
) -> DeploymentHandle:
    """Deploys the application (or updates it, if one called ``name`` runs) and returns a
    handle on its ingress deployment once every replica is ready. A constructor that raises
    fails this call with its error. ``route_prefix=None``: reachable through handles only.
    With ``blocking=True`` it then waits until Ctrl-C.

    >>> from volley import serve
    >>> @serve.deployment
    ... class Echo:
    ...     def __call__(self, x):
    ...         return x
    >>> handle = serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    >>> handle.remote("hi").result()
    'hi'
    >>> serve.delete("echo")
    """
    if not isinstance(name, str) or not name or "/" in name or "#" in name:
        raise ValueError(f"an application's name is a non-empty str without '/' or '#': {name!r}")
    prefix = _check_route_prefix(route_prefix)
    ingress, specs = flatten(target, name)
    c = _controller(create=True)
    err = _call(c, "deploy", name, prefix, ingress, specs, what=f"application {name!r} to deploy")
    if err is not None:
        raise RuntimeError(err)
    if prefix is not None:  # the ingress listens on the default address unless told otherwise
        _call(
            c,
            "ensure_http",
            DEFAULT_HTTP["host"],
            DEFAULT_HTTP["port"],
            what="the serve controller to set the HTTP address",
        )
    handle = DeploymentHandle(ingress, name)
    if blocking:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return handle


def delete(name: str) -> None:
    """Deletes application ``name``: its replicas drain and stop, its route goes.
    ``ValueError`` if no application has that name.

    >>> serve.delete("no-such-app")
    Traceback (most recent call last):
    ValueError: no application named 'no-such-app'; running: []
    """
    c = _controller(create=False)
    if c is None:
        raise ValueError(f"no application named {name!r}: serve is not running")
    err = _call(c, "delete", name, what=f"application {name!r} to be deleted")
    if err is not None:
        raise ValueError(err)


def shutdown() -> None:
    """Deletes every application and stops the controller (the ingress stops listening).
    Does nothing if serve does not run.

    >>> serve.shutdown()
    """
    if not volley.is_initialized():
        return
    c = _controller(create=False)
    if c is not None:
        _call(c, "shutdown", what="serve to shut down")
        volley.kill(c)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # its name is free once the head forgets it
            try:
                volley.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.02)
    _forget_routers()


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle on the ingress deployment of running application ``name``; ``ValueError`` if
    there is none.

    >>> serve.get_app_handle("nothing")
    Traceback (most recent call last):
    ValueError: no application named 'nothing' runs
    """
    c = _controller(create=False)
    ingress = None if c is None else _call(c, "app_ingress", name, what="the serve controller")
    if ingress is None:
        raise ValueError(f"no application named {name!r} runs")
    return DeploymentHandle(ingress, name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    """A handle on deployment ``deployment_name`` of application ``app_name``; ``ValueError``
    if there is none.

    >>> @serve.deployment
    ... def shout(s):
    ...     return s.upper()
    >>> _ = serve.run(shout.bind(), name="shouter", route_prefix=None)
    >>> serve.get_deployment_handle("shout", "shouter").remote("hi").result()
    'HI'
    >>> serve.delete("shouter")
    """
    c = _controller(create=False)
    ok = c is not None and _call(
        c, "has_deployment", app_name, deployment_name, what="the serve controller"
    )
    if not ok:
        raise ValueError(f"no deployment {deployment_name!r} in application {app_name!r}")
    return DeploymentHandle(deployment_name, app_name)


@dataclass
class DeploymentStatusOverview:
    """A deployment's state: ``status`` (UPDATING, HEALTHY, UNHEALTHY, DELETING), why,
    its replicas by state, and the replica count it aims for."""

    status: str
    message: str
    replica_states: dict[str, int]
    target_replicas: int
    ongoing_requests: int


@dataclass
class ApplicationStatusOverview:
    """An application's state: ``status`` (DEPLOYING, RUNNING, DEPLOY_FAILED, DELETING)."""

    status: str
    message: str
    route_prefix: str | None
    ingress: str
    deployments: dict[str, DeploymentStatusOverview] = field(default_factory=dict)


@dataclass
class ServeStatus:
    """``serve.status()``: the applications, where the ingress listens (``http``, as set) and
    what it reported (``http_status``; None while no ingress answered)."""

    applications: dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    http: dict | None = None
    http_status: dict | None = None


def status() -> ServeStatus:
    """The applications, their deployments and replicas, as the controller sees them now.

    >>> serve.status().applications
    {}
    """
    c = _controller(create=False)
    if c is None:
        return ServeStatus()
    raw = _call(c, "status", what="the serve controller's status")
    apps = {
        name: ApplicationStatusOverview(
            status=a["status"],
            message=a["message"],
            route_prefix=a["route_prefix"],
            ingress=a["ingress"],
            deployments={n: DeploymentStatusOverview(**d) for n, d in a["deployments"].items()},
        )
        for name, a in raw["applications"].items()
    }
    return ServeStatus(apps, raw["http"], raw["http_status"])
