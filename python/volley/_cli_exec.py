"""``volley exec``: run shell commands on a running cluster's nodes (pdsh's and GNU parallel's
job), printing each output line as it comes, prefixed by where it came from.

    volley exec -- CMD ...                     once, on whichever node has room
    volley exec --all-nodes -- CMD ...         once on every node (not drivers)
    volley exec --node 2 --node 3 -- CMD ...   once on each node named
    volley exec --file CMDS [--concurrency N]  each line of CMDS (- for stdin) a command

The words after ``--`` are joined with spaces and run by ``/bin/sh -c`` on the node (as ssh
and pdsh do; quote what the local shell must not expand); ``--no-shell`` runs them as an
argument list instead. It connects as a driver to the cluster at ``--address`` (default:
``VOLLEY_ADDRESS``, else this machine's head). The exit status is the command's when one
ran, else 0 when every command exited with 0 and 1 when any did not; a command that ran out
of ``--timeout`` counts as status 124 (as ``timeout(1)`` says).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

#: The exit status for a command that ran out of time (``timeout(1)``'s).
TIMED_OUT_STATUS = 124


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``volley exec`` to the ``volley`` command's subparsers."""
    p = sub.add_parser(
        "exec",
        help="run a shell command on the cluster's nodes (every node, some, or a list of "
        "commands in parallel), its output prefixed as it comes",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--all-nodes", action="store_true", help="run it once on every node")
    where.add_argument(
        "--node", type=int, action="append", default=None, metavar="ID",
        help="run it on node ID (as `volley status` shows; repeat for several)",
    )  # fmt: skip
    p.add_argument(
        "--file", default=None, metavar="CMDS",
        help="run each non-empty line of CMDS (- for stdin) as a command, in parallel",
    )  # fmt: skip
    p.add_argument(
        "--concurrency", "-j", type=int, default=None, metavar="N",
        help="at most N commands at once (default: every node named at once; with --file, "
        "the cluster's CPUs)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="kill after S s")
    p.add_argument("--no-shell", action="store_true", help="run the words as argv, no shell")
    p.add_argument("--no-prefix", action="store_true", help="print lines without a prefix")
    p.add_argument("--address", default=None, help="HOST:PORT of the cluster's head")
    p.add_argument("--token", default=None, help="the cluster's token (default: VOLLEY_TOKEN)")
    p.add_argument("--tls-cert", default=None, help="the cluster's TLS certificate, if any")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=main)


def _commands(args: argparse.Namespace) -> list[str | list[str]]:
    words = list(args.cmd)
    if words and words[0] == "--":
        words = words[1:]
    if args.file is not None:
        if words:
            raise ValueError("give the commands either with --file or after --, not both")
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"--file {args.file}: no commands in it")
        return [shlex.split(ln) if args.no_shell else ln for ln in lines]  # type: ignore[misc]
    if not words:
        raise ValueError("no command: write it after --, e.g. volley exec --all-nodes -- uptime")
    return [words if args.no_shell else " ".join(words)]


def main(args: argparse.Namespace) -> int:
    try:
        cmds = _commands(args)
        if args.concurrency is not None and args.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, not {args.concurrency}")
        if args.timeout is not None and args.timeout <= 0:
            raise ValueError(f"--timeout must be > 0, not {args.timeout}")
        if args.file is not None and (args.all_nodes or args.node):
            raise ValueError("--file runs each command once: not with --all-nodes or --node")
    except (ValueError, OSError) as e:
        print(f"volley exec: {e}", file=sys.stderr)
        return 2

    import volley

    address = args.address or os.environ.get("VOLLEY_ADDRESS") or "auto"
    try:
        volley.init(address=address, token=args.token, tls_cert=args.tls_cert)
    except (ConnectionError, OSError, RuntimeError, ValueError) as e:
        print(f"volley exec: cannot connect to the cluster at {address}: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, cmds)
    except (ValueError, TypeError) as e:
        print(f"volley exec: {e}", file=sys.stderr)
        return 2
    finally:
        volley.shutdown()


def _run(args: argparse.Namespace, cmds: list[str | list[str]]) -> int:
    import volley

    nodes: list[int] | None = None
    if args.all_nodes:
        nodes = [n["node_id"] for n in volley.nodes() if not n["driver"]]
        if not nodes:
            raise ValueError("the cluster has no nodes (only drivers)")
    elif args.node:
        nodes = list(args.node)
    if nodes is not None:
        cmds = cmds * len(nodes)
        prefix: bool | str = "[node {node}] "
    else:
        prefix = "[{index}] " if len(cmds) > 1 else False
    if args.no_prefix:
        prefix = False
    concurrency = args.concurrency
    if concurrency is None and nodes is not None:
        concurrency = len(nodes)  # one on each node at once, as pdsh does
    results = volley.shell_many(
        cmds,
        concurrency=concurrency,
        prefix=prefix,
        node=nodes,
        timeout=args.timeout,
    )
    failed = [(i, r) for i, r in enumerate(results) if not r.ok]
    for i, r in failed:
        who = f"node {r.node}" if nodes is not None else f"command {i}"
        print(f"volley exec: {who}: {r.cmd!r} {r.why()}", file=sys.stderr)
    if len(results) == 1:
        r = results[0]
        if r.timed_out:
            return TIMED_OUT_STATUS
        if r.returncode is None:  # its worker died
            return 1
        return r.returncode if r.returncode >= 0 else 128 - r.returncode  # as a shell says
    return 1 if failed else 0
