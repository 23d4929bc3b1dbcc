"""``volley serve run|status|deploy|shutdown``: volley.serve from the command line.

    volley serve run MODULE:APP [--name NAME] [--route-prefix /x] [--address HOST:PORT]
    volley serve deploy CONFIG.yaml [--address HOST:PORT]
    volley serve status [--json] [--address HOST:PORT]
    volley serve shutdown [--address HOST:PORT]

``run`` deploys the application and stays until Ctrl-C (or SIGTERM), then deletes it; without
``--address`` it joins the cluster ``volley start --head`` runs on this machine, or else runs
volley in this process. ``deploy`` reads a config file (Ray Serve's format, a subset: see
docs/serve.md), deploys its applications on the cluster and returns; ``status`` and
``shutdown`` ask that cluster.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Adds ``volley serve ...`` to the ``volley`` command's parser."""
    s = sub.add_parser("serve", help="deploy and manage volley.serve applications")
    ssub = s.add_subparsers(dest="serve_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None, help="HOST:PORT of the head (default: auto)")

    r = ssub.add_parser("run", help="deploy MODULE:APP and serve until Ctrl-C")
    r.add_argument("import_path", help="module:attribute of an application (Deployment.bind())")
    r.add_argument("--name", default="default", help="the application's name (default: default)")
    r.add_argument("--route-prefix", default="/", help="its HTTP route prefix (default: /)")
    common(r)
    d = ssub.add_parser("deploy", help="deploy the applications of a config file and return")
    d.add_argument("config", help="a serve config file (YAML, or JSON)")
    common(d)
    st = ssub.add_parser("status", help="the applications, deployments and replicas")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    common(st)
    sh = ssub.add_parser("shutdown", help="delete every application and stop serve")
    common(sh)
    s.set_defaults(_run=main)


def _connect(address: str | None, local_ok: bool) -> None:
    import volley

    try:
        volley.init(address=address or "auto")
    except (ConnectionError, ValueError, RuntimeError) as e:
        if address is not None or not local_ok:
            raise ConnectionError(f"no volley cluster to ask: {e}") from None
        volley.init()


def _run(args: argparse.Namespace) -> int:
    from volley import serve
    from volley.serve._config import import_app

    app = import_app(args.import_path)  # a bad path fails before volley starts
    _connect(args.address, local_ok=True)
    route = None if args.route_prefix in ("", "none", "None") else args.route_prefix
    serve.run(app, name=args.name, route_prefix=route)
    print(f"application {args.name!r} running (route prefix {route}); Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    serve.delete(args.name)
    print(f"application {args.name!r} deleted", flush=True)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from volley import serve
    from volley.serve._config import apply_overrides, import_app, parse_config

    path = Path(args.config)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
    cfg = parse_config(text, str(path))
    apps = [
        (a, apply_overrides(import_app(a["import_path"]), a["deployments"]))
        for a in cfg["applications"]
    ]
    _connect(args.address, local_ok=False)
    if cfg.get("http_options"):
        serve.start(http_options=cfg["http_options"])
    for a, app in apps:
        serve.run(app, name=a["name"], route_prefix=a["route_prefix"])
        print(f"deployed application {a['name']!r} (route prefix {a['route_prefix']})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from volley import serve

    _connect(args.address, local_ok=False)
    st = asdict(serve.status())
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    if not st["applications"]:
        print("no applications")
    for name, a in st["applications"].items():
        print(f"{name}: {a['status']}  route {a['route_prefix']}  ingress {a['ingress']}")
        if a["message"]:
            print(f"  {a['message']}")
        for dn, d in a["deployments"].items():
            states = ", ".join(f"{k} {v}" for k, v in sorted(d["replica_states"].items()))
            print(
                f"  {dn}: {d['status']}  replicas {states or 'none'} (target "
                f"{d['target_replicas']})  ongoing {d['ongoing_requests']}"
            )
            if d["message"]:
                print(f"    {d['message']}")
    return 0


def _shutdown(args: argparse.Namespace) -> int:
    from volley import serve

    _connect(args.address, local_ok=False)
    serve.shutdown()
    print("serve shut down")
    return 0


def main(args: argparse.Namespace) -> int:
    """Runs ``volley serve <args.serve_cmd>``; errors are one line on stderr and status 1."""
    commands = {"run": _run, "deploy": _deploy, "status": _status, "shutdown": _shutdown}
    try:
        return commands[args.serve_cmd](args)
    except (ConnectionError, ValueError, TypeError, RuntimeError, TimeoutError) as e:
        print(f"volley serve: {e}", file=sys.stderr, flush=True)
        return 1
