"""The dashboard: pages, a JSON API and Prometheus ``/metrics`` served by this process's node
(the head's, or a driver's with ``volley.init(dashboard=True)``). The server is in the engine;
this module only starts it, remembers its URL and stops it with volley. See
``docs/dashboard.md``."""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from . import _cluster, _core, _runtime_dir

DEFAULT_PORT = 8265

_log = logging.getLogger("volley")
_recorded: Path | None = None  # this driver's record for `volley status`


def start(
    host: str = "127.0.0.1",
    port: int | None = None,
    token: str | None = None,
    driver: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> str:
    """Starts the dashboard over this process's node; returns its URL with the token (the one
    link that logs a browser in). ``port`` None: 8265, or a free port if that one is taken (the
    log says so); a port given explicitly that is taken raises ``OSError``. ``token`` None: a
    new random one (a driver's own node has no cluster token). ``driver``: a driver's
    dashboard, which says where it is on stderr (and on the ``volley`` logger) and is recorded
    in the session directory for ``volley status``. With ``tls_cert`` and ``tls_key`` (the
    cluster's PEM files) it serves HTTPS only, and the URL says ``https://``."""
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535
    ):
        raise ValueError(f"dashboard_port must be a port number (0-65535), not {port!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"dashboard_host must be a host name or address, not {host!r}")
    token = token or secrets.token_hex(16)
    url = _core.start_dashboard(
        host, DEFAULT_PORT if port is None else port, port is not None, token, tls_cert, tls_key
    )
    full = f"{url}?token={token}"
    if driver:
        _log.info("dashboard at %s", full)
        _record(url)
    return full


def _record(url: str) -> None:
    """Records a driver's dashboard (its URL without the token) for ``volley status``."""
    global _recorded
    try:
        path = _cluster.private_subdir("dashboards") / f"{os.getpid()}.json"
        info = {"pid": os.getpid(), "start_time": _cluster.process_start_time(os.getpid())}
        _runtime_dir.write_file(path, json.dumps({**info, "url": url}))
        _recorded = path
    except OSError as e:
        _log.warning("could not record the dashboard for `volley status`: %s", e)


def recorded() -> list[dict]:
    """The dashboards of this machine's drivers that still run: a dict each (``pid``,
    ``url``)."""
    d = _cluster.session_dir() / "dashboards"
    if not _runtime_dir.check_private_dir(_cluster.session_dir()) or not (
        _runtime_dir.check_private_dir(d)
    ):
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            info = json.loads(_runtime_dir.read_file(p) or b"")
            alive = _cluster.process_start_time(info["pid"]) == info["start_time"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            out.append(info)
        else:
            p.unlink(missing_ok=True)
    return out


def stop() -> None:
    """Stops this process's dashboard, if one runs."""
    global _recorded
    _core.stop_dashboard()
    if _recorded is not None:
        _recorded.unlink(missing_ok=True)
        _recorded = None


def dashboard_url(with_token: bool = True) -> str | None:
    """The URL of this process's dashboard (started by ``volley.init(dashboard=True)``, or by
    ``volley start --head`` in the head's process), with the token that logs a browser in
    unless ``with_token`` is False; None when none runs here.

    >>> _ = volley.init(num_cpus=1, dashboard=True, dashboard_port=0)
    >>> volley.dashboard_url(with_token=False).startswith("http://127.0.0.1:")
    True
    >>> volley.shutdown()
    >>> volley.dashboard_url() is None
    True
    """
    info = _core.dashboard_info()
    if info is None:
        return None
    url, token = info
    return f"{url}?token={token}" if with_token else url
