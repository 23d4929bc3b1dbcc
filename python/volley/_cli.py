"""The ``volley`` command: start, stop and look at a cluster.

    volley start --head [--host 127.0.0.1] [--port 6380] [--num-cpus N] [--block]
    volley start --address HOST:PORT [--host 127.0.0.2] [--port 0] [--block]
    volley status [--address HOST:PORT] [--json]
    volley stop

Without ``--block``, ``start`` runs the node in the background (its log goes to the session
directory's ``logs/``), waits until it has joined, prints its address and returns.

``status`` prints the cluster's nodes, and the drivers on this machine that run their own node
(``volley.init()`` without an address): what each uses and what waits there, and why.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from . import _cluster


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="volley", description="volley cluster control")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a node (the head with --head)")
    role = s.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head (and a node)")
    role.add_argument("--address", help="HOST:PORT of the head to join")
    s.add_argument("--host", default="127.0.0.1", help="address to accept nodes on")
    s.add_argument("--port", type=int, default=None, help="port (head: 6380, nodes: any free)")
    s.add_argument("--num-cpus", type=float, default=None)
    s.add_argument("--num-gpus", type=float, default=None)
    s.add_argument("--resources", default=None, help='custom resources as JSON: {"disk": 2}')
    s.add_argument("--object-store-memory", type=int, default=None)
    s.add_argument(
        "--token", default=None, help="cluster token (default: generated / VOLLEY_TOKEN)"
    )
    s.add_argument(
        "--tls-cert",
        default=None,
        help="TLS on every connection: the cluster's certificate, PEM (or VOLLEY_TLS_CERT); "
        "every node uses the same one, drivers trust exactly it",
    )
    s.add_argument("--tls-key", default=None, help="its private key, PEM (or VOLLEY_TLS_KEY)")
    s.add_argument("--block", action="store_true", help="stay in the foreground")
    s.add_argument("--heartbeat-ms", type=int, default=500)
    s.add_argument(
        "--dead-after-ms", type=int, default=10_000, help="declare a silent node dead after this"
    )
    st = sub.add_parser(
        "status", help="print the cluster's nodes and this machine's drivers, with what waits"
    )
    st.add_argument("--address", default="auto")
    st.add_argument("--token", default=None)
    st.add_argument("--tls-cert", default=None, help="the cluster's TLS certificate, if any")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("stop", help="stop this machine's volley nodes")
    return p


def _free_port(host: str) -> int:
    """A port free on ``host`` now (so the node's workers can be told its address up front)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run_node(args: argparse.Namespace) -> int:
    import volley

    port = args.port if args.port is not None else (_cluster.DEFAULT_PORT if args.head else 0)
    if port == 0:
        port = _free_port(args.host)
    listen = f"{args.host}:{port}"
    if args.head:
        token = args.token or os.environ.get("VOLLEY_TOKEN") or _cluster.new_token()
        head = None
    else:
        token = _cluster.resolve_token(args.token)
        head = _cluster.resolve_address(args.address)
    resources = json.loads(args.resources) if args.resources else None
    tls_cert = (
        _cluster.resolve_tls_cert(args.tls_cert)
        if not args.head
        else (args.tls_cert or os.environ.get("VOLLEY_TLS_CERT"))
    )
    tls_key = args.tls_key or os.environ.get("VOLLEY_TLS_KEY")
    if bool(tls_cert) != bool(tls_key):
        print("volley: --tls-cert and --tls-key go together", file=sys.stderr, flush=True)
        return 2
    daemon = {
        "tls_cert": os.path.abspath(tls_cert) if tls_cert else None,
        "tls_key": os.path.abspath(tls_key) if tls_key else None,
        "listen": listen,
        "head": head,
        "token": token,
        "heartbeat_ms": args.heartbeat_ms,
        "dead_after_ms": args.dead_after_ms,
    }
    kwargs = {}
    if args.object_store_memory:
        kwargs["object_store_memory"] = args.object_store_memory
    try:
        volley.init(
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            resources=resources,
            _daemon=daemon,
            **kwargs,
        )
    except (ConnectionError, OSError, ValueError) as e:
        print(f"volley: could not start the node: {e}", file=sys.stderr, flush=True)
        return 1
    node_id, addr = daemon["joined"]
    sess = _cluster.session_dir()
    if args.head:
        _cluster.write_private(sess / "token", token)
        _cluster.write_private(sess / "address", addr)
        _cluster.write_private(sess / "tls_cert", daemon["tls_cert"] or "")
    record = _cluster.record_node(
        {"pid": os.getpid(), "node_id": node_id, "address": addr, "head": bool(args.head)}
    )
    print(f"volley: node {node_id} listening on {addr}", flush=True)
    done = {"stop": False}

    def stop(signum, frame):
        done["stop"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not done["stop"]:
            time.sleep(0.2)
    finally:
        volley.shutdown()
        record.unlink(missing_ok=True)
        if args.head:
            (sess / "address").unlink(missing_ok=True)
    return 0


def _start(args: argparse.Namespace) -> int:
    if args.block:
        return _run_node(args)
    logs = _cluster.session_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = logs / f"node-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    argv = [sys.executable, "-m", "volley._cli", *sys.argv[1:], "--block"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on" in text:
            print(text.strip().splitlines()[-1])
            print(f"volley: running in the background (pid {proc.pid}); log: {log}")
            return 0
        if proc.poll() is not None:
            sys.stderr.write(text)
            return proc.returncode or 1
        time.sleep(0.05)
    print(f"volley: the node did not start within 30 s; see {log}", file=sys.stderr)
    return 1


def _status(args: argparse.Namespace) -> int:
    from . import _core

    # Drivers running their own node (``volley.init()`` without an address) have no cluster to
    # ask; each answers on its Unix socket. Nodes in a cluster are shown by the head instead.
    local = [n for n in _core.local_nodes() if n["node_id"] == 0]
    addr, nodes = None, []
    try:
        addr = _cluster.resolve_address(args.address)
        nodes = _core.query_cluster(
            addr, _cluster.resolve_token(args.token), _cluster.resolve_tls_cert(args.tls_cert)
        )
    except ConnectionError as e:
        if args.address != "auto" or not local:
            print(f"volley: {e}", file=sys.stderr)
            if not local:
                print("volley: no volley driver runs on this machine either", file=sys.stderr)
            return 1
        addr = None
    if args.json:
        print(json.dumps([*nodes, *local], indent=2))
        return 0
    if addr is not None:
        print(f"cluster at {addr}: {sum(1 for n in nodes if not n['driver'])} node(s)")
        for n in nodes:
            kind = "driver" if n["driver"] else ("head" if n["node_id"] == 1 else "node")
            _print_node(f"node {n['node_id']} ({kind}) {n['address'] or '-'}", n)
    if local:
        print(f"{len(local)} driver(s) on this machine with their own node (not in a cluster)")
        for n in local:
            _print_node("driver", n)
    return 0


def _print_node(title: str, n: dict) -> None:
    """A node's line (resources in use, workers, store, tasks waiting) and what waits there."""
    used = n["num_cpus"] - n["cpus_free"]
    plain = {r: v for r, v in n["resources"].items() if not r.startswith("pg:")}
    res = "".join(f", {r} {t - f:g}/{t:g}" for r, (t, f) in sorted(plain.items()))
    # Placement-group bundles appear as resources of their own: count the bundles.
    bundles = sum(
        1 for r in n["resources"] if r.startswith("pg:") and r.count(":") == 3
        and r.endswith(":bundle")
    )  # fmt: skip
    if bundles:
        res += f", {bundles} placement-group bundle(s)"
    store = f"{n['store_used'] / 2**20:.1f}/{n['store_capacity'] / 2**20:.0f} MiB"
    waiting = f", {n['tasks_waiting']} task(s) waiting" if n["tasks_waiting"] else ""
    print(
        f"  {title} pid {n['pid']}: CPU {used:g}/{n['num_cpus']:g}{res}, "
        f"{n['workers']} worker(s), store {store}{waiting}"
    )
    for line in n.get("waiting", []):
        print(f"    {line}")


def _stop(args: argparse.Namespace) -> int:
    nodes = _cluster.recorded_nodes()
    if not nodes:
        print("volley: no volley nodes run on this machine")
        return 0
    for n in nodes:
        try:
            os.kill(n["pid"], signal.SIGTERM)
        except ProcessLookupError:
            (_cluster.session_dir() / "nodes" / f"{n['pid']}.json").unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    for n in nodes:
        while time.monotonic() < deadline:
            try:
                os.kill(n["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(n["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    print(f"volley: stopped {len(nodes)} node(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"start": _start, "status": _status, "stop": _stop}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
