"""Serve config files (a subset of Ray Serve's format) and ``module:attribute`` import paths.

A config file (YAML if PyYAML is installed, else JSON) holds ``applications``: each with
``import_path`` (``module:attribute``, an ``Application`` or a ``Deployment``), and optionally
``name`` (default ``"default"``), ``route_prefix`` (default ``"/"``) and ``deployments``: a
list of ``{name: ..., <deployment options>}`` that override the code's options; and optionally
``http_options`` (``host``, ``port``).

>>> cfg = parse_config('{"applications": [{"import_path": "m:app", "route_prefix": "/a"}]}')
>>> cfg["applications"][0]["name"], cfg["applications"][0]["route_prefix"]
('default', '/a')
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from ._deployment import Application, Deployment

_APP_KEYS = {"name", "route_prefix", "import_path", "deployments", "runtime_env", "args"}
_TOP_KEYS = {"applications", "http_options", "proxy_location", "grpc_options", "logging_config"}


class ConfigError(ValueError):
    """A config file that is not a serve config, with where it is wrong."""


def parse_config(text: str, source: str = "config") -> dict:
    """The config in ``text`` (YAML with PyYAML installed, else JSON), checked."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
    elif source.endswith((".yaml", ".yml")):
        raise ConfigError(
            f"{source}: a YAML config needs PyYAML, which is not installed (pip install pyyaml), "
            "or write the config as JSON"
        )
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{source}: not valid JSON ({e}); PyYAML is not installed, so only JSON config "
                "files can be read (pip install pyyaml for YAML)"
            ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a serve config is a mapping with 'applications'")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    apps = doc.get("applications")
    if not isinstance(apps, list) or not apps:
        raise ConfigError(f"{source}: 'applications' must be a non-empty list")
    names = set()
    for i, a in enumerate(apps):
        where = f"{source}: applications[{i}]"
        if not isinstance(a, dict):
            raise ConfigError(f"{where} must be a mapping")
        bad = set(a) - _APP_KEYS
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_APP_KEYS)}")
        if not isinstance(a.get("import_path"), str):
            raise ConfigError(f"{where}: 'import_path' (module:attribute) is required")
        a.setdefault("name", "default")
        a.setdefault("route_prefix", "/")
        if a["name"] in names:
            raise ConfigError(f"{where}: a second application named {a['name']!r}")
        names.add(a["name"])
        deps = a.setdefault("deployments", [])
        if not isinstance(deps, list) or not all(
            isinstance(d, dict) and isinstance(d.get("name"), str) for d in deps
        ):
            raise ConfigError(f"{where}: 'deployments' is a list of mappings with a 'name'")
    return doc


def import_app(path: str) -> Application:
    """The application at ``module:attribute`` (a ``Deployment`` is bound with no arguments);
    the current directory is importable, as it is for ``python -m``."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ConfigError(f"an import path is module:attribute, not {path!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"cannot import module {module!r} of {path!r}: {e}") from None
    _ship_by_value(mod)
    try:
        target = getattr(mod, attr)
    except AttributeError:
        raise ConfigError(f"module {module!r} has no attribute {attr!r}") from None
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise ConfigError(
            f"{path} is a {type(target).__name__}, not an application (Deployment.bind(...))"
        )
    return target


def _ship_by_value(mod: Any) -> None:
    """A module from the working directory travels with its classes (cloudpickle by value):
    the nodes that run the replicas need not have the file."""
    f = getattr(mod, "__file__", None)
    if f is None or not Path(f).resolve().is_relative_to(Path.cwd().resolve()):
        return
    import cloudpickle

    cloudpickle.register_pickle_by_value(mod)


def apply_overrides(app: Application, overrides: list[dict]) -> Application:
    """The application with the options of the deployments named in ``overrides`` changed
    (``ValueError`` for a name the application does not have)."""
    by_name = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in overrides}
    seen: set[str] = set()
    done: dict[int, Application] = {}

    def visit(a: Application) -> Application:
        if id(a) in done:
            return done[id(a)]

        def sub(x: Any) -> Any:
            return visit(x) if isinstance(x, Application) else x

        d = a._deployment
        if d.name in by_name:
            seen.add(d.name)
            d = d.options(**by_name[d.name])
        out = Application(
            d, tuple(sub(x) for x in a._args), {k: sub(v) for k, v in a._kwargs.items()}
        )
        done[id(a)] = out
        return out

    out = visit(app)
    missing = set(by_name) - seen
    if missing:
        raise ConfigError(
            f"the config names deployment(s) the application has not: {sorted(missing)}"
        )
    return out
