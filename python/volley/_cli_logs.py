"""``volley logs``: the log files volley processes keep in their session directories.

    volley logs [--address A] [--json]                   list every node's (through the head)
    volley logs --session DIR [--json]                   list this machine's
    volley logs NAME [--tail N] [--follow]               print one (a name the list shows)
    volley logs --worker PID [--tail N] [--follow]       a worker's output
    volley logs --node N [--tail N] [--follow]           node N's log (`volley start`'s daemon)
    volley logs --node N --worker PID | NAME             a file of node N, on any machine
    volley logs --task ID | --actor ID | --job ID        the workers that ran it (state API)

Each worker's stdout and stderr lines are kept in ``worker-<node pid>-<pid>.log`` (made at its
first line; ``[time INFO]`` for stdout, ``[time WARN]`` for stderr), a daemon's own log in
``node-<date>-<time>-<pid>.log``, a driver's node diagnostics in ``driver-<pid>.log``.
``--node N`` and ``--task/--actor/--job`` read the files on the node that has them, through
the cluster's head (``--address``; default: this machine's head, or the one driver running its
own node here), a piece at a time, so ``--follow`` works across machines too; with
``--session`` only this machine's files are read. The list with no arguments shows every
node's files (node, name, size) when a cluster's head is found (``--address``, this machine's
head, or ``VOLLEY_ADDRESS``), asking the nodes at once; otherwise this machine's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import _cluster, _core

#: Bytes read per call while printing or following a file.
CHUNK = 1 << 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``volley logs`` on the ``volley`` command's subparsers."""
    lg = sub.add_parser(
        "logs",
        help="list or print the logs of the cluster's (or this machine's) nodes, workers and "
        "drivers",
        description=__doc__.split("\n\n")[0],
    )
    lg.add_argument("name", nargs="?", help="a log file's name, as the list shows it")
    lg.add_argument("--node", type=int, default=None, help="node id, as `volley status` shows")
    who = lg.add_mutually_exclusive_group()
    who.add_argument("--worker", type=int, default=None, help="a worker's pid")
    who.add_argument("--task", default=None, help="a task's id (needs the state API)")
    who.add_argument("--actor", default=None, help="an actor's id (needs the state API)")
    who.add_argument("--job", default=None, help="a job's id (needs the state API)")
    lg.add_argument("--tail", type=int, default=None, help="only the last N lines")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    lg.add_argument("--session", default=None, help="session directory (default: this user's)")
    lg.add_argument(
        "--address",
        default=None,
        help="HOST:PORT of the cluster's head (default: this machine's), or local:PID for a "
        "driver's own node",
    )
    lg.add_argument("--json", action="store_true", help="the list as JSON")
    lg.set_defaults(func=main)


def logs_dir(session: str | None) -> Path:
    """``<session dir>/logs``: of ``session`` if given, else of this user's session."""
    base = Path(session) if session else _cluster.session_dir()
    return base / "logs"


def list_logs(session: str | None = None) -> list[dict]:
    """The log files of the session: a dict each (``name``, ``kind`` worker/node/driver/job,
    ``pid``, ``node_pid``, ``size``, ``modified_ms``).

    >>> [f["kind"] for f in list_logs("/nonexistent")]
    []
    """
    return _core.list_logs(str(logs_dir(session)))


class _Here:
    """This machine's log files (``<session>/logs``)."""

    def __init__(self, d: str) -> None:
        self.d = d
        self.where = d

    def list(self) -> list[dict]:
        return _core.list_logs(self.d)

    def read(self, name: str, offset: int | None, size: int) -> tuple[bytes, int, int, int]:
        return _core.read_log(self.d, name, offset, size)


class _Node:
    """The log files of node ``node`` of a cluster (or a driver's embedded node), read through
    the head at ``target`` (see ``volley.state.target``), which relays to that node."""

    def __init__(self, target: tuple[str, str, str | None], node: int) -> None:
        self.addr, self.token, self.tls = target
        self.node = node
        self.where = f"node {node}"
        self.node_pid: int | None = None
        self.own_log: str | None = None

    def list(self) -> list[dict]:
        files, self.node_pid, self.own_log = _core.node_logs(
            self.addr, self.token, self.node, self.tls
        )
        return files

    def read(self, name: str, offset: int | None, size: int) -> tuple[bytes, int, int, int]:
        return _core.node_read_log(
            self.addr, self.token, self.node, name, offset, min(size, CHUNK), self.tls
        )


def _workers_from_state(what: str, ident: str, address: str | None) -> list[tuple[int, int]]:
    """``(node_id, pid)`` of the workers the state API lists for a task, an actor or a job's
    tasks (asked of the cluster's head, or of a driver's embedded node: ``state.target``)."""
    from . import state

    try:
        if what == "actor":
            rows = state.query("actors", [("actor_id", "=", ident)], None, address=address)
            pairs = {(r.get("node_id"), r.get("pid")) for r in rows["rows"]}
        else:
            key = "task_id" if what == "task" else "job_id"
            rows = state.query("tasks", [(key, "=", ident)], None, address=address)
            pairs = {(r.get("node_id"), r.get("worker_pid")) for r in rows["rows"]}
    except ConnectionError as e:
        raise SystemExit(f"volley: --{what} asks the cluster's state: {e}") from None
    except ValueError as e:
        raise SystemExit(f"volley: --{what} {ident}: {e}") from None
    return sorted((int(n or 0), int(p)) for n, p in pairs if p)


def _node_pid(node: int) -> tuple[int, str | None]:
    """The pid of this machine's node ``node`` (as ``volley status`` numbers them) and its log
    file, from the records ``volley start`` keeps."""
    for n in _cluster.recorded_nodes():
        if n.get("node_id") == node and _cluster.is_recorded_process(n):
            return int(n["pid"]), n.get("log")
    raise SystemExit(
        f"volley: no node {node} runs on this machine (see `volley status`); without "
        "--session, `volley logs --node` asks the cluster's head for another machine's logs"
    )


def _recorded_here(node: int) -> bool:
    """Whether this machine's records (``volley start``) have a running node ``node``."""
    return any(
        n.get("node_id") == node and n.get("log") and _cluster.is_recorded_process(n)
        for n in _cluster.recorded_nodes()
    )


def _worker_files(files: list[dict], pids: list[int] | None, node_pid: int | None) -> list[str]:
    return [
        f["name"]
        for f in files
        if f["kind"] == "worker"
        and f["name"].endswith(".log")
        and (pids is None or f["pid"] in pids)
        and (node_pid is None or f["node_pid"] == node_pid)
    ]


def _missing_worker(pids: list[int] | None, where: str) -> SystemExit:
    which = f"pid {', '.join(map(str, pids or []))}"
    return SystemExit(
        f"volley: no log of worker {which} in {where} (a worker's log is made at its first "
        "line of output)"
    )


def _named(args: argparse.Namespace) -> tuple[str, str] | None:
    for what in ("task", "actor", "job"):
        ident = getattr(args, what)
        if ident is not None:
            return what, ident
    return None


def _pick(d: str, args: argparse.Namespace) -> list[tuple[_Here | _Node, str]]:
    """The files the arguments name, with where each is read (may be several: a job's
    workers, on several nodes)."""
    here = _Here(d)
    named = _named(args)
    remote = args.session is None
    if args.node is not None and remote:
        on_node = _pick_on_node(args, named)
        if on_node is not None:
            return on_node
    if named is not None and remote and args.name is None:
        return _pick_by_state(here, args, *named)
    files = here.list()
    if args.name:
        if not any(f["name"] == args.name for f in files):
            raise SystemExit(f"volley: no log named {args.name!r} (see `volley logs`)")
        return [(here, args.name)]
    pids: list[int] | None = [args.worker] if args.worker is not None else None
    if named is not None:
        pids = [p for _, p in _workers_from_state(*named, args.address)]
        if not pids:
            raise SystemExit(f"volley: no worker ran {named[0]} {named[1]} (yet)")
    node_pid = None
    if args.node is not None:
        node_pid, node_log = _node_pid(args.node)
        if pids is None:
            # Its stderr: a file of the session's logs/ (`volley start`), or where the
            # command that started it with --block sent it.
            if not node_log:
                raise SystemExit(f"volley: node {args.node} (pid {node_pid}) has no log file")
            return [(_Here(str(Path(node_log).parent)), Path(node_log).name)]
    found = _worker_files(files, pids, node_pid)
    if not found:
        raise _missing_worker(pids, d)
    return [(here, n) for n in found]


def _pick_on_node(args: argparse.Namespace, named: tuple[str, str] | None) -> list | None:
    """``--node N [NAME | --worker PID | --task ID ...]``: node N's files, through the head
    (None when no cluster is found: then this machine's records say where node N's are)."""
    from . import state

    try:
        where = state.target(args.address)
    except ConnectionError:
        if args.address is not None:
            raise
        return None
    try:
        src = _Node(where, args.node)
        files = src.list()
    except (ConnectionError, ValueError) as e:
        raise SystemExit(f"volley: the logs of node {args.node}: {e}") from None
    if args.name:
        if not any(f["name"] == args.name for f in files):
            raise SystemExit(f"volley: node {args.node} has no log named {args.name!r}")
        return [(src, args.name)]
    pids: list[int] | None = [args.worker] if args.worker is not None else None
    if named is not None:
        pids = [p for n, p in _workers_from_state(*named, args.address) if n == args.node]
        if not pids:
            raise SystemExit(f"volley: no worker of node {args.node} ran {named[0]} {named[1]}")
    if pids is None:
        if not src.own_log and _recorded_here(args.node):
            return None  # `volley start --block` sent it elsewhere: its record says where
        if not src.own_log:
            raise SystemExit(
                f"volley: node {args.node} (pid {src.node_pid}) keeps no log of its own in "
                "its session's logs/ (a daemon started with --block writes elsewhere; a "
                "driver's node makes driver-<pid>.log at its first diagnostic); --worker PID "
                "or a name from `volley logs` reads its other files"
            )
        return [(src, src.own_log)]
    found = _worker_files(files, pids, src.node_pid)
    if not found:
        raise _missing_worker(pids, src.where)
    return [(src, n) for n in found]


def _pick_by_state(here: _Here, args: argparse.Namespace, what: str, ident: str) -> list:
    """``--task/--actor/--job``: the workers the state API names, read on their nodes through
    the head (on this machine's files for a node the head cannot reach, such as a driver's)."""
    from . import state

    workers = _workers_from_state(what, ident, args.address)
    if not workers:
        raise SystemExit(f"volley: no worker ran {what} {ident} (yet)")
    chosen: list[tuple[_Here | _Node, str]] = []
    by_node: dict[int, list[int]] = {}
    for node, pid in workers:
        by_node.setdefault(node, []).append(pid)
    for node, pids in sorted(by_node.items()):
        try:
            src: _Here | _Node = _Node(state.target(args.address), node)
            found = _worker_files(src.list(), pids, src.node_pid)
        except (ConnectionError, ValueError):
            src, found = here, _worker_files(here.list(), pids, None)
        chosen += [(src, n) for n in found]
    if not chosen:
        raise _missing_worker([p for _, p in workers], "the nodes that ran it")
    return chosen


def _tail_start(src: _Here | _Node, name: str, lines: int) -> int:
    """The offset of the last ``lines`` lines of log ``name``."""
    _, _, end, size = src.read(name, None, 0)
    start = end
    want = max(lines, 0)
    step = 64 * 1024
    while start > 0:
        start = max(0, start - step)
        data, _, _, _ = src.read(name, start, end - start)
        if data.count(b"\n") > want:
            cut = len(data)
            for _ in range(want + 1):
                cut = data.rfind(b"\n", 0, cut)
            return start + cut + 1
        step = min(step * 2, CHUNK)
    return 0


def _print_from(src: _Here | _Node, name: str, offset: int, prefix: str) -> int:
    """Prints log ``name`` from ``offset`` to its end; returns where it ended."""
    while True:
        data, _, nxt, size = src.read(name, offset, CHUNK)
        if size < offset:  # rotated: the new file starts over
            offset = 0
            continue
        if data:
            out = data.decode(errors="replace")
            if prefix:
                out = "".join(prefix + line for line in out.splitlines(keepends=True))
            sys.stdout.write(out)
            sys.stdout.flush()
        offset = nxt
        if len(data) < CHUNK:
            return offset


def _cluster_target(address: str | None) -> tuple[str, str, str | None] | None:
    """The cluster's head to list every node's files through: ``address``'s, or the one found
    as ``volley list`` finds it; None when there is none (or only a driver's own node, whose
    files are this machine's). An ``address`` that does not answer raises ``ConnectionError``."""
    from . import state

    try:
        where = state.target(address)
    except ConnectionError:
        if address is not None:
            raise
        return None
    return None if where[0].startswith("local:") else where


def list_every_node(where: tuple[str, str, str | None]) -> tuple[list[dict], list[str]]:
    """Every live node's log files, asked through the head at ``where`` (all nodes at once):
    the files (each with its ``node_id``), and a line for each node that did not answer.

    >>> import pytest
    >>> with pytest.raises(ConnectionError):
    ...     list_every_node(("127.0.0.1:1", "", None))
    """
    addr, token, tls = where
    rows = json.loads(_core.query_state(addr, token, "nodes", [], None, False, tls))["rows"]
    nodes = sorted(int(n["node_id"]) for n in rows if n.get("alive", True))

    def ask(node: int) -> tuple[int, list[dict] | str]:
        try:
            files, _, _ = _core.node_logs(addr, token, node, tls)
            return node, files
        except (ConnectionError, ValueError, OSError) as e:
            return node, str(e)

    files: list[dict] = []
    missing: list[str] = []
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(nodes)))) as pool:
        for node, got in pool.map(ask, nodes):
            if isinstance(got, str):
                missing.append(got if got.startswith(f"node {node} ") else f"node {node}: {got}")
            else:
                files += [{"node_id": node, **f} for f in got]
    return files, missing


def _print_every_node(where: tuple[str, str, str | None], as_json: bool) -> int:
    files, missing = list_every_node(where)
    for m in missing:
        print(f"volley: not in this list: {m}", file=sys.stderr)
    if as_json:
        print(json.dumps(files, indent=2))
        return 0
    if not files:
        print(f"volley: no logs on any node of the cluster at {where[0]}")
        return 0
    print(f"{'NODE':>4} {'NAME':<40} {'KIND':<7} {'PID':>8} {'SIZE':>10}  MODIFIED")
    for f in files:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["modified_ms"] / 1000))
        print(
            f"{f['node_id']:>4} {f['name']:<40} {f['kind']:<7} {f['pid'] or '-':>8} "
            f"{f['size']:>10}  {when}"
        )
    return 0


def main(args: argparse.Namespace) -> int:
    """``volley logs`` (see the module's doc)."""
    d = str(logs_dir(args.session))
    naming = any(
        v is not None for v in (args.name, args.node, args.worker, args.task, args.actor, args.job)
    )
    if not naming and args.session is None:
        try:
            where = _cluster_target(args.address)
            if where is not None:
                return _print_every_node(where, args.json)
        except (ConnectionError, ValueError) as e:
            print(f"volley: {e}", file=sys.stderr)
            return 1
    if not naming:
        try:
            files = _core.list_logs(d)
        except OSError as e:
            print(f"volley: cannot list the logs in {d}: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(files, indent=2))
            return 0
        if not files:
            print(f"volley: no logs in {d}")
            return 0
        print(f"{'NAME':<40} {'KIND':<7} {'PID':>8} {'NODE PID':>8} {'SIZE':>10}  MODIFIED")
        for f in files:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["modified_ms"] / 1000))
            print(
                f"{f['name']:<40} {f['kind']:<7} {f['pid'] or '-':>8} {f['node_pid'] or '-':>8} "
                f"{f['size']:>10}  {when}"
            )
        return 0
    try:
        chosen = _pick(d, args)
        prefix_each = len(chosen) > 1
        offsets = {}
        for src, name in chosen:
            start = 0 if args.tail is None else _tail_start(src, name, args.tail)
            prefix = f"[{name}] " if prefix_each else ""
            offsets[(src.where, name)] = _print_from(src, name, start, prefix)
    except (OSError, ValueError, ConnectionError) as e:
        print(f"volley: {e}", file=sys.stderr)
        return 1
    if not args.follow:
        return 0
    said: set[str] = set()
    try:
        while True:
            time.sleep(0.2)
            for src, name in chosen:
                prefix = f"[{name}] " if prefix_each else ""
                key = (src.where, name)
                try:
                    offsets[key] = _print_from(src, name, offsets[key], prefix)
                except (OSError, ValueError, ConnectionError) as e:
                    # Being rotated (found again next round), or its node is unreachable:
                    # said once, and tried again.
                    if isinstance(src, _Node) and str(e) not in said:
                        said.add(str(e))
                        print(f"volley: {src.where}: {e} (still trying)", file=sys.stderr)
    except KeyboardInterrupt:
        return 0
