"""The dashboard's part of the ``volley`` command: ``volley start --head`` serves it
(``--dashboard-host``, ``--dashboard-port``, ``--no-dashboard``) and ``volley status`` says
where it is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _cluster, _dashboard


def add_start_arguments(s: argparse.ArgumentParser) -> None:
    """The dashboard's options of ``volley start``."""
    s.add_argument(
        "--dashboard-host",
        default=None,
        help="where the head serves the dashboard and /metrics (default: the head's --host)",
    )
    s.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help=f"its port (default {_dashboard.DEFAULT_PORT}, or a free one if that is taken; "
        "a port given here that is taken is an error)",
    )
    s.add_argument("--no-dashboard", action="store_true", help="the head serves no dashboard")


def start_for_head(
    args: argparse.Namespace,
    token: str,
    sess: Path,
    tls: tuple[str | None, str | None] = (None, None),
) -> int:
    """Starts the head's dashboard with the cluster's token; prints its URL (with the token,
    once) and records it (without) in the session directory for ``volley status``. ``tls``:
    the cluster's certificate and key, if it uses TLS: the dashboard then serves HTTPS with
    them. Returns 0, or 1 after saying why it could not start."""
    if args.no_dashboard:
        return 0
    cert, key = tls
    try:
        url = _dashboard.start(
            args.dashboard_host or args.host, args.dashboard_port, token, tls_cert=cert, tls_key=key
        )
    except (OSError, ValueError) as e:
        print(f"volley: could not start the dashboard: {e}", file=sys.stderr, flush=True)
        return 1
    _cluster.write_private(sess / "dashboard", url.split("?", 1)[0])
    print(f"volley: dashboard at {url}", flush=True)
    return 0


def print_status_line() -> None:
    """``volley status``'s line for the head's dashboard on this machine, if it serves one."""
    try:
        url = (_cluster.session_dir() / "dashboard").read_text().strip()
    except OSError:
        return
    if url:
        print(f"dashboard at {url} (log in with the cluster's token)")


def print_driver_dashboards() -> None:
    """``volley status``'s lines for the dashboards this machine's drivers serve."""
    for d in _dashboard.recorded():
        print(f"  driver pid {d['pid']}: dashboard at {d['url']} (see volley.dashboard_url())")
