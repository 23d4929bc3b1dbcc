"""``@serve.deployment``: a class or function made servable, its options checked where they are
written, and ``.bind(...)`` making the application graph ``serve.run`` deploys."""

from __future__ import annotations

import hashlib
import inspect
import math
import pickle
from typing import Any, Callable

_RESOURCE_KEYS = {"num_cpus", "num_gpus", "resources", "runtime_env"}
_AUTOSCALING_KEYS = {
    "min_replicas",
    "max_replicas",
    "initial_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "metrics_interval_s",
    "look_back_period_s",
}

#: The options of ``@serve.deployment`` and their defaults (Ray Serve's names and defaults).
DEFAULTS: dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 5,
    "max_queued_requests": -1,
    "autoscaling_config": None,
    "ray_actor_options": None,
    "user_config": None,
    "health_check_period_s": 10.0,
    "health_check_timeout_s": 30.0,
    "graceful_shutdown_timeout_s": 20.0,
    "request_timeout_s": None,
    "name": None,
}

#: Options that a redeploy applies to the running replicas (no restart).
LIGHT_OPTIONS = {"num_replicas", "autoscaling_config", "user_config", "max_queued_requests"}


def _number(name: str, v: Any, low: float, *, integer: bool = False, none: bool = False) -> None:
    if v is None and none:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or v < low or (not integer and math.isnan(v)):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {low}, not {v!r}")


def check_autoscaling(cfg: Any) -> dict | None:
    """``autoscaling_config`` with its defaults filled in; ``ValueError`` naming what is wrong."""
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise TypeError(f"autoscaling_config must be a dict, not {type(cfg).__name__}")
    unknown = set(cfg) - _AUTOSCALING_KEYS
    if unknown:
        raise ValueError(
            f"unknown autoscaling_config key(s) {sorted(unknown)}; "
            f"known: {sorted(_AUTOSCALING_KEYS)}"
        )
    out = {
        "min_replicas": 1,
        "max_replicas": 1,
        "target_ongoing_requests": 2.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2.0,
    }
    out.update(cfg)
    _number("autoscaling_config['min_replicas']", out["min_replicas"], 0, integer=True)
    _number("autoscaling_config['max_replicas']", out["max_replicas"], 1, integer=True)
    if out["max_replicas"] < out["min_replicas"]:
        raise ValueError(
            f"autoscaling_config: max_replicas ({out['max_replicas']}) is below "
            f"min_replicas ({out['min_replicas']})"
        )
    init = out.setdefault("initial_replicas", None)
    if init is not None:
        _number("autoscaling_config['initial_replicas']", init, 0, integer=True)
        if not out["min_replicas"] <= init <= out["max_replicas"]:
            raise ValueError("autoscaling_config: initial_replicas must lie in [min, max]_replicas")
    for k in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
        _number(f"autoscaling_config[{k!r}]", out[k], 0)
    _number("autoscaling_config['metrics_interval_s']", out["metrics_interval_s"], 0.01)
    t = out["target_ongoing_requests"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
        raise ValueError(f"autoscaling_config['target_ongoing_requests'] must be > 0, not {t!r}")
    return out


def check_options(options: dict) -> dict:
    """``options`` if they are valid deployment options; ``TypeError``/``ValueError`` naming the
    first that is not. Unknown names are a ``TypeError`` listing the known ones."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(
            f"unknown deployment option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    o = dict(options)
    if "num_replicas" in o and o["num_replicas"] != "auto":
        _number("num_replicas", o["num_replicas"], 0, integer=True)
    if "max_ongoing_requests" in o:
        _number("max_ongoing_requests", o["max_ongoing_requests"], 1, integer=True)
    if "max_queued_requests" in o:
        _number("max_queued_requests", o["max_queued_requests"], -1, integer=True)
    for k in ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s"):
        if k in o:
            _number(k, o[k], 0)
    if "request_timeout_s" in o:
        _number("request_timeout_s", o["request_timeout_s"], 0, none=True)
    if "autoscaling_config" in o:
        o["autoscaling_config"] = check_autoscaling(o["autoscaling_config"])
    rao = o.get("ray_actor_options")
    if rao is not None:
        if not isinstance(rao, dict):
            raise TypeError(f"ray_actor_options must be a dict, not {type(rao).__name__}")
        bad = set(rao) - _RESOURCE_KEYS
        if bad:
            raise ValueError(
                f"unknown ray_actor_options key(s) {sorted(bad)}; known: {sorted(_RESOURCE_KEYS)}"
            )
        if rao.get("runtime_env"):
            raise ValueError(
                "ray_actor_options['runtime_env'] is not supported yet: volley actors (a "
                "deployment's replicas) take no runtime_env; install the packages on the nodes, "
                "or set env vars before volley starts"
            )
        for k in ("num_cpus", "num_gpus"):
            if k in rao:
                _number(f"ray_actor_options[{k!r}]", rao[k], 0)
        res = rao.get("resources")
        if res is not None and (
            not isinstance(res, dict)
            or not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in res.items())
        ):
            raise TypeError("ray_actor_options['resources'] must be a dict of str -> number")
    name = o.get("name")
    if name is not None and (not isinstance(name, str) or not name or "#" in name):
        raise ValueError(f"a deployment's name is a non-empty str without '#', not {name!r}")
    return o


class Deployment:
    """A class or function made a deployment by ``@serve.deployment``: ``.bind(*args)`` makes
    an application for ``serve.run``, ``.options(...)`` a copy with options changed.

    >>> from volley import serve
    >>> @serve.deployment(num_replicas=2)
    ... class Hello:
    ...     def __call__(self, name):
    ...         return f"hello {name}"
    >>> Hello.name, Hello.num_replicas
    ('Hello', 2)
    >>> Hello.options(num_replicas=3).num_replicas
    3
    """

    def __init__(self, target: Callable, options: dict) -> None:
        if not callable(target):
            raise TypeError(f"@serve.deployment takes a class or function, not {target!r}")
        self._target = target
        self._options = check_options(options)
        self.__doc__ = getattr(target, "__doc__", None)

    @property
    def name(self) -> str:
        """The deployment's name: ``name=`` if given, else the class's or function's."""
        return self._options.get("name") or self._target.__name__

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in DEFAULTS:
            raise AttributeError(key)
        return self.__dict__["_options"].get(key, DEFAULTS[key])

    @property
    def func_or_class(self) -> Callable:
        """The class or function that was decorated.

        >>> from volley import serve
        >>> serve.deployment(len).func_or_class is len
        True
        """
        return self._target

    def options(self, **options: Any) -> Deployment:
        """This deployment with some options changed (the others kept).

        >>> Hello.options(name="Hi").name
        'Hi'
        """
        merged = dict(self._options)
        merged.update(options)
        return Deployment(self._target, merged)

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """An application whose ingress is this deployment, built with ``args``/``kwargs``
        (bound deployments among them are deployed too and reach the constructor as
        ``DeploymentHandle``s).

        >>> app = Hello.bind()
        >>> type(app).__name__
        'Application'
        """
        if not inspect.isclass(self._target) and (args or kwargs):
            raise TypeError(f"deployment {self.name!r} is a function: bind() takes no arguments")
        return Application(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"deployment {self.name!r} cannot be called directly: use .bind(...) and serve.run"
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r})"


class Application:
    """A deployment bound to its constructor's arguments (``Deployment.bind``): what
    ``serve.run`` deploys."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict) -> None:
        self._deployment = deployment
        self._args = args
        self._kwargs = kwargs

    def __repr__(self) -> str:
        return f"Application({self._deployment.name!r})"


class HandleMarker:
    """Stands in the constructor arguments for a bound deployment of the same application: the
    replica replaces it with a ``DeploymentHandle``."""

    def __init__(self, app: str, deployment: str) -> None:
        self.app = app
        self.deployment = deployment


def _code_hash(target: Callable, pickled: bytes, init: bytes = b"") -> str:
    """What tells a code change from a config change: the source of the target's module (and
    the bound arguments) where it can be read, else the pickle. (A class pickled by value
    pickles differently in each process: a redeploy from another process, such as ``volley
    serve deploy`` run again, would otherwise count as new code and replace every replica.)"""
    try:
        module = inspect.getmodule(target)
        source = inspect.getsource(module if module is not None else target)
    except (OSError, TypeError):
        return hashlib.sha256(pickled).hexdigest()[:16]
    h = hashlib.sha256(source.encode())
    h.update(getattr(target, "__qualname__", "").encode())
    h.update(init)
    # Values a class or function defined in a function closes over (the same source can
    # make different deployments): by plain pickle, else the whole pickle decides.
    fns = [target] + (list(vars(target).values()) if inspect.isclass(target) else [])
    for fn in fns:
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                h.update(pickle.dumps(cell.cell_contents, 5))
            except Exception:  # not plain data (or an empty cell)
                h.update(pickled)
    return h.hexdigest()[:16]


def flatten(app: Application, app_name: str) -> tuple[str, list[dict]]:
    """The application's deployments (ingress last, each after those it takes), as the specs
    the controller deploys: name, pickled target and arguments, options, a hash of the code."""
    import cloudpickle

    specs: list[dict] = []
    seen: dict[int, str] = {}
    names: set[str] = set()

    def visit(a: Application) -> HandleMarker:
        if id(a) in seen:
            return HandleMarker(app_name, seen[id(a)])

        def sub(x: Any) -> Any:
            if isinstance(x, Application):
                return visit(x)
            if isinstance(x, Deployment):
                raise TypeError(
                    f"deployment {x.name!r} passed unbound: pass {x.name}.bind(...) instead"
                )
            return x

        args = tuple(sub(x) for x in a._args)
        kwargs = {k: sub(v) for k, v in a._kwargs.items()}
        d = a._deployment
        name = d.name
        if name in names:
            raise ValueError(
                f"application {app_name!r} has two deployments named {name!r}: "
                "give one another name with .options(name=...)"
            )
        names.add(name)
        seen[id(a)] = name
        target = cloudpickle.dumps(d._target)
        init = cloudpickle.dumps((args, kwargs))
        opts = {k: d._options.get(k, v) for k, v in DEFAULTS.items() if k != "name"}
        specs.append(
            {
                "name": name,
                "target": target,
                "init": init,
                "is_class": inspect.isclass(d._target),
                "options": opts,
                "code": _code_hash(d._target, target + init, init),
            }
        )
        return HandleMarker(app_name, name)

    if not isinstance(app, Application):
        if isinstance(app, Deployment):
            raise TypeError(
                f"serve.run takes an application: {app.name}.bind(...), not the deployment"
            )
        raise TypeError(f"serve.run takes an application (Deployment.bind(...)), not {app!r}")
    ingress = visit(app)
    return ingress.deployment, specs


def deployment(
    target: Callable | None = None,
    /,
    *,
    num_replicas: int | str | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    autoscaling_config: dict | None = None,
    ray_actor_options: dict | None = None,
    user_config: Any = None,
    health_check_period_s: float | None = None,
    health_check_timeout_s: float | None = None,
    graceful_shutdown_timeout_s: float | None = None,
    request_timeout_s: float | None = None,
    name: str | None = None,
) -> Any:
    """Makes a class (its instances serve requests: ``__call__`` for HTTP and ``handle.remote``,
    other methods through ``handle.method.remote``) or a function a deployment. Used bare
    (``@serve.deployment``) or with options; bad options raise here, at the decorator.

    >>> from volley import serve
    >>> @serve.deployment(max_ongoing_requests=10, user_config={"greeting": "hi"})
    ... class Greeter:
    ...     def reconfigure(self, config):
    ...         self.greeting = config["greeting"]
    ...     def __call__(self, name):
    ...         return f"{self.greeting} {name}"
    >>> Greeter.max_ongoing_requests
    10
    >>> serve.deployment(num_replicas=-1)
    Traceback (most recent call last):
    ValueError: num_replicas must be an int >= 0, not -1
    """
    given = {
        "num_replicas": num_replicas,
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "autoscaling_config": autoscaling_config,
        "ray_actor_options": ray_actor_options,
        "user_config": user_config,
        "health_check_period_s": health_check_period_s,
        "health_check_timeout_s": health_check_timeout_s,
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s,
        "request_timeout_s": request_timeout_s,
        "name": name,
    }
    options = check_options({k: v for k, v in given.items() if v is not None})
    if autoscaling_config is not None and num_replicas not in (None, "auto"):
        raise ValueError("give num_replicas or autoscaling_config, not both")

    def wrap(target: Callable) -> Deployment:
        return Deployment(target, options)

    if target is not None:
        return wrap(target)
    return wrap
