"""The ``volley`` command: start, stop and look at a cluster.

    volley start --head [--host 127.0.0.1] [--port 6380] [--num-cpus N] [--block]
    volley start --address HOST:PORT [--host 127.0.0.2] [--port 0] [--block]
    volley status [--address HOST:PORT] [--json]
    volley stop
    volley logs [NAME] [--node N] [--worker PID] [--tail N] [--follow]   (see _cli_logs)
    volley serve run|deploy|status|shutdown ...                         (see _cli_serve)

Without ``--block``, ``start`` runs the node in the background (its log goes to the session
directory's ``logs/``), waits until it has joined, prints its address and returns.

``status`` prints the cluster's nodes, and the drivers on this machine that run their own node
(``volley.init()`` without an address): what each uses and what waits there, and why.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import (
    _cli_dashboard,
    _cli_exec,
    _cli_job,
    _cli_logs,
    _cli_serve,
    _cli_state,
    _cluster,
    _core,
    _runtime_dir,
    _session,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="volley", description="volley cluster control")
    p.add_argument(
        "--version",
        action="version",
        version=f"volley {_core.VERSION} (protocol {_core.PROTOCOL_VERSION}, Python "
        f"{sys.version.split()[0]})",
    )
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
        "--token",
        default=None,
        help="cluster token (default: VOLLEY_TOKEN, else the session's token file, so a "
        "restarted head keeps its cluster, else a new one)",
    )
    s.add_argument(
        "--tls-cert",
        default=None,
        help="TLS on every connection: the cluster's certificate, PEM (or VOLLEY_TLS_CERT); "
        "every node uses the same one, drivers trust exactly it",
    )
    s.add_argument("--tls-key", default=None, help="its private key, PEM (or VOLLEY_TLS_KEY)")
    s.add_argument(
        "--tls",
        action="store_true",
        help="TLS with a self-signed certificate kept in the session directory (the head "
        "generates it once; a node on the same machine uses it)",
    )
    s.add_argument("--block", action="store_true", help="stay in the foreground")
    _cli_dashboard.add_start_arguments(s)
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
    _cli_job.register(sub)
    _cli_exec.register(sub)
    _cli_logs.add_parser(sub)
    _cli_state.register(sub)
    _cli_serve.register(sub)
    return p


def _free_port(host: str) -> int:
    """A port free on ``host`` now (so the node's workers can be told its address up front)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback one (127.x, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos
    )


def _warn_plaintext(host: str) -> None:
    """Warns on stderr (the terminal of ``volley start`` and the node's log) when a daemon
    accepts connections from the network without TLS."""
    if _is_loopback(host):
        return
    print(
        f"volley: warning: listening on {host} without TLS: after the token handshake, frames "
        "are not encrypted nor integrity-protected, so anyone on the network path can read "
        "them or inject pickles (code that runs on the cluster). Turn TLS on with "
        "`volley start --head --tls` (or --tls-cert/--tls-key on every node).",
        file=sys.stderr,
        flush=True,
    )


GENERATED_CERT = "cluster-cert.pem"
GENERATED_KEY = "cluster-key.pem"


def _generated_tls(
    args: argparse.Namespace, cert: str | None, key: str | None
) -> tuple[str | None, str | None]:
    """The TLS certificate and key of ``volley start --tls``: the pair generated in the session
    directory (made by the head the first time, reused after). A node without ``--tls`` whose
    certificate is that generated one (found through the session directory) gets its key too."""
    sess = _cluster.session_dir()
    gen_cert, gen_key = sess / GENERATED_CERT, sess / GENERATED_KEY
    if not args.tls:
        same = cert and os.path.abspath(cert) == os.path.abspath(gen_cert)
        if same and not key and gen_key.exists():
            return cert, str(gen_key)
        return cert, key
    if args.tls_cert or args.tls_key:
        raise ValueError("--tls generates a certificate; it does not go with --tls-cert/--tls-key")
    sess = _cluster.session_dir(create=True)
    have = _runtime_dir.read_file(gen_cert) is not None
    if have != (_runtime_dir.read_file(gen_key) is not None):
        raise ValueError(f"only one of {gen_cert} and {gen_key} exists; remove it to start over")
    if not have:
        if not args.head:
            raise ValueError(
                f"--tls on a node uses the certificate `volley start --head --tls` generated in "
                f"{sess}, and there is none; copy the head's cluster-cert.pem and "
                "cluster-key.pem here and pass --tls-cert/--tls-key"
            )
        cert_pem, key_pem = _core.self_signed_cert()
        try:
            # The certificate last: a node on this machine takes the pair once it is there.
            _runtime_dir.create_file(gen_key, key_pem, 0o600)
            _runtime_dir.create_file(gen_cert, cert_pem, 0o600)
        except FileExistsError:
            raise ValueError(
                f"another `volley start --head --tls` is generating {gen_cert}; start again"
            ) from None
    return str(gen_cert), str(gen_key)


def _print_tls_howto(addr: str, cert: str | None, key: str | None) -> None:
    host, _, port = addr.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::"):
        addr = f"<this machine's address>:{port}"
    print(
        f"volley: TLS with the self-signed certificate {cert}\n"
        f"volley:   other machines: copy {cert} and {key} there (privately: the key lets its "
        f"holder act as a node), then `volley start --address {addr} --tls-cert cluster-cert.pem "
        f"--tls-key cluster-key.pem`\n"
        f"volley:   drivers elsewhere: volley.init(address={addr!r}, tls_cert='cluster-cert.pem') "
        "(or VOLLEY_TLS_CERT); on this machine they find it in the session directory",
        flush=True,
    )


def _run_node(args: argparse.Namespace) -> int:
    _cluster.session_dir(create=True)  # an unsafe one is refused before anything starts

    port = args.port if args.port is not None else (_cluster.DEFAULT_PORT if args.head else 0)
    if port == 0:
        port = _free_port(args.host)
    listen = f"{args.host}:{port}"
    if args.head:
        # A head restarted in the same session keeps its token: the nodes and drivers that
        # survived it rejoin with the one they have.
        token = (
            args.token or _cluster._setting(None, "VOLLEY_TOKEN", "token") or _cluster.new_token()
        )
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
    try:
        tls_cert, tls_key = _generated_tls(args, tls_cert, tls_key)
    except ValueError as e:
        print(f"volley: {e}", file=sys.stderr, flush=True)
        return 2
    if bool(tls_cert) != bool(tls_key):
        print("volley: --tls-cert and --tls-key go together", file=sys.stderr, flush=True)
        return 2
    if not tls_cert:
        _warn_plaintext(args.host)
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
        node_id, addr = _session.start_daemon(
            daemon,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            resources=resources,
            **kwargs,
        )
    except (ConnectionError, OSError, ValueError) as e:
        print(f"volley: could not start the node: {e}", file=sys.stderr, flush=True)
        return 1
    sess = _cluster.session_dir(create=True)
    tls = (daemon["tls_cert"], daemon["tls_key"])
    if args.head and _cli_dashboard.start_for_head(args, token, sess, tls) != 0:
        _session.shutdown()
        return 1
    if args.head and args.tls:
        _print_tls_howto(addr, tls_cert, tls_key)
    if args.head:
        _core.record_history(str(sess / "history"))  # for `volley list --session`
        _cluster.write_private(sess / "token", token)
        _cluster.write_private(sess / "address", addr)
        _cluster.write_private(sess / "tls_cert", daemon["tls_cert"] or "")
    record = _cluster.record_node(
        {
            "pid": os.getpid(),
            "node_id": node_id,
            "address": addr,
            "head": bool(args.head),
            "log": _own_log(),
        }
    )
    if args.head:
        print(
            f"volley: the cluster's token is in {sess / 'token'}; the other machines need it "
            "(VOLLEY_TOKEN or --token)",
            flush=True,
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
        _session.shutdown()
        record.unlink(missing_ok=True)
        if args.head:
            (sess / "address").unlink(missing_ok=True)
            (sess / "dashboard").unlink(missing_ok=True)
    return 0


def _own_log() -> str | None:
    """The file this daemon's stderr goes to (its log, for ``volley logs --node``), if a file."""
    try:
        path = os.readlink("/proc/self/fd/2")
    except OSError:
        return None
    return path if path.startswith("/") and os.path.isfile(path) else None


def _start(args: argparse.Namespace) -> int:
    if args.block:
        return _run_node(args)
    logs = _cluster.private_subdir("logs")
    log = logs / f"node-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    argv = [sys.executable, "-m", "volley._cli", *sys.argv[1:], "--block"]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
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
            # What the node said while starting: warnings to stderr, the rest (its address,
            # how to join with TLS) to stdout.
            for line in text.strip().splitlines():
                warning = line.startswith("volley: warning")
                print(line, file=sys.stderr if warning else sys.stdout)
            print(f"volley: running in the background (pid {proc.pid}); log: {log}")
            return 0
        if proc.poll() is not None:
            sys.stderr.write(text)
            return proc.returncode or 1
        time.sleep(0.05)
    print(f"volley: the node did not start within 30 s; see {log}", file=sys.stderr)
    return 1


def _status(args: argparse.Namespace) -> int:
    # Drivers running their own node (``volley.init()`` without an address) have no cluster to
    # ask; each answers on its Unix socket. Nodes in a cluster are shown by the head instead.
    local = [n for n in _core.local_nodes() if n["node_id"] == 0]
    addr, nodes, refused = None, [], []
    try:
        addr = _cluster.resolve_address(args.address)
        nodes, refused = _core.query_cluster_status(
            addr, _cluster.resolve_token(args.token), _cluster.resolve_tls_cert(args.tls_cert)
        )
    except ConnectionError as e:
        if addr is not None:
            e = _cluster.connection_error(addr, f"--address {args.address}", e)
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
        _cli_dashboard.print_status_line()
        for n in nodes:
            kind = "driver" if n["driver"] else ("head" if n["node_id"] == 1 else "node")
            _print_node(f"node {n['node_id']} ({kind}) {n['address'] or '-'}", n)
        for r in refused:
            print(
                f"  refused {r['peer']}: {r['reason']} ({r['count']} time(s), last "
                f"{r['last_seconds_ago']:.0f} s ago)"
            )
    if local:
        print(f"{len(local)} driver(s) on this machine with their own node (not in a cluster)")
        _cli_dashboard.print_driver_dashboards()
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
    for a in n.get("named_actors", []):
        name = f"'{a['name']}'" if a["name"] else "(detached, no name)"
        print(f"    actor {name} {a['class_name']} {a['actor_id']}")


def _stop(args: argparse.Namespace) -> int:
    """Stops the nodes recorded in the session directory: only a pid that is still the process
    the record names is signalled; a record of a node that is gone is dropped."""
    nodes = _cluster.recorded_nodes()
    if not nodes:
        print("volley: no volley nodes run on this machine")
        return 0
    live, stale = [], []
    for n in nodes:
        (live if _cluster.is_recorded_process(n) else stale).append(n)
    for n in stale:
        Path(n["record"]).unlink(missing_ok=True)
    for n in live:
        try:
            os.kill(n["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    killed = 0
    for n in live:
        while time.monotonic() < deadline and _cluster.is_recorded_process(n):
            time.sleep(0.05)
        # Checked again right before the signal: the pid may have been freed meanwhile.
        if _cluster.is_recorded_process(n):
            try:
                os.kill(n["pid"], signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        Path(n["record"]).unlink(missing_ok=True)
    msg = f"volley: stopped {len(live)} node(s)"
    if killed:
        msg += f" ({killed} did not exit on SIGTERM within 10 s and got SIGKILL)"
    if stale:
        pids = ", ".join(str(n["pid"]) for n in stale)
        msg += (
            f"; dropped {len(stale)} stale record(s) (pid {pids}: no longer a volley node, "
            "not signalled)"
        )
    print(msg)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if hasattr(args, "func"):  # a command registered from its own module
            return args.func(args)
        if hasattr(args, "_run"):
            return args._run(args)
        commands = {"start": _start, "status": _status, "stop": _stop, "job": _cli_job.main}
        return commands[args.cmd](args)
        return {"start": _start, "status": _status, "stop": _stop}[args.cmd](args)
    except _runtime_dir.RuntimeDirError as e:
        print(f"volley: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
