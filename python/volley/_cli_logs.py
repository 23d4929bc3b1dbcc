"""``volley logs``: the log files this machine's volley processes keep in the session directory.

    volley logs [--session DIR] [--json]                 list them
    volley logs NAME [--tail N] [--follow]               print one (a name the list shows)
    volley logs --worker PID [--tail N] [--follow]       a worker's output
    volley logs --node N [--tail N] [--follow]           node N's log (`volley start`'s daemon)
    volley logs --node N --worker PID                    a worker of node N
    volley logs --task ID | --actor ID | --job ID        the workers that ran it (state API)

Each worker's stdout and stderr lines are kept in ``worker-<node pid>-<pid>.log`` (made at its
first line; ``[time INFO]`` for stdout, ``[time WARN]`` for stderr), a daemon's own log in
``node-<date>-<time>-<pid>.log``, a driver's node diagnostics in ``driver-<pid>.log``. The
files of other machines are not reachable from here (run ``volley logs`` there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import _cluster, _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

#: Bytes read per call while printing or following a file.
CHUNK = 1 << 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``volley logs`` on the ``volley`` command's subparsers."""
    lg = sub.add_parser(
        "logs",
        help="list or print the logs of this machine's nodes, workers and drivers",
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


def _pids_from_state(what: str, ident: str) -> list[int]:
    """The worker pids the state API lists for a task, an actor or a job's tasks."""
    try:
        from . import state  # type: ignore[attr-defined]
    except ImportError:
        raise SystemExit(
            f"volley: --{what} needs the state API (volley.state), which this volley lacks; "
            "use --worker PID (`volley status` and the task's error show pids)"
        ) from None
    import volley

    if not volley.is_initialized():
        try:  # the state is the cluster's: ask it as a driver of this machine's cluster
            volley.init(address="auto", log_to_driver=False)
        except ConnectionError as e:
            raise SystemExit(f"volley: --{what} asks the cluster's state: {e}") from None
    if what == "actor":
        rows = state.list_actors(filters=[("actor_id", "=", ident)], limit=None)
        return sorted({int(r["pid"]) for r in rows if r.get("pid")})
    key = "task_id" if what == "task" else "job_id"
    rows = state.list_tasks(filters=[(key, "=", ident)], limit=None)
    return sorted({int(r["worker_pid"]) for r in rows if r.get("worker_pid")})


#: What ``--task/--actor/--job`` use to find pids: ``(what, id)`` (what: "task", "actor" or
#: "job") to the pids of the workers that ran it (replaceable: the state API's wiring).
resolve_pids: Callable[[str, str], list[int]] = _pids_from_state


def _node_pid(node: int) -> tuple[int, str | None]:
    """The pid of this machine's node ``node`` (as ``volley status`` numbers them) and its log
    file, from the records ``volley start`` keeps."""
    for n in _cluster.recorded_nodes():
        if n.get("node_id") == node and _cluster.is_recorded_process(n):
            return int(n["pid"]), n.get("log")
    raise SystemExit(
        f"volley: no node {node} runs on this machine (see `volley status`); "
        "the logs of another machine's nodes are on that machine"
    )


def _pick(files: list[dict], args: argparse.Namespace) -> list[dict]:
    """The files the arguments name (may be several: a job's workers)."""
    if args.name:
        found = [f for f in files if f["name"] == args.name]
        if not found:
            raise SystemExit(f"volley: no log named {args.name!r} (see `volley logs`)")
        return found
    pids: list[int] | None = None
    if args.worker is not None:
        pids = [args.worker]
    for what in ("task", "actor", "job"):
        ident = getattr(args, what)
        if ident is not None:
            pids = resolve_pids(what, ident)
            if not pids:
                raise SystemExit(f"volley: no worker ran {what} {ident} (yet)")
    node_pid = None
    if args.node is not None:
        node_pid, node_log = _node_pid(args.node)
        if pids is None:
            # Its stderr: a file of the session's logs/ (`volley start`), or where the
            # command that started it with --block sent it.
            if not node_log:
                raise SystemExit(f"volley: node {args.node} (pid {node_pid}) has no log file")
            return [{"name": Path(node_log).name, "dir": str(Path(node_log).parent)}]
    workers = [
        f
        for f in files
        if f["kind"] == "worker"
        and f["name"].endswith(".log")
        and (pids is None or f["pid"] in pids)
        and (node_pid is None or f["node_pid"] == node_pid)
    ]
    if not workers:
        which = f"pid {', '.join(map(str, pids or []))}"
        raise SystemExit(
            f"volley: no log of worker {which} in {logs_dir(args.session)} (a worker's log "
            "is made at its first line of output)"
        )
    return workers


def _tail_start(d: str, name: str, lines: int) -> int:
    """The offset of the last ``lines`` lines of log ``name``."""
    _, _, end, size = _core.read_log(d, name, None, 0)
    start = end
    want = max(lines, 0)
    step = 64 * 1024
    while start > 0:
        start = max(0, start - step)
        data, _, _, _ = _core.read_log(d, name, start, end - start)
        if data.count(b"\n") > want:
            cut = len(data)
            for _ in range(want + 1):
                cut = data.rfind(b"\n", 0, cut)
            return start + cut + 1
        step *= 2
    return 0


def _print_from(d: str, name: str, offset: int, prefix: str) -> int:
    """Prints log ``name`` from ``offset`` to its end; returns where it ended."""
    while True:
        data, _, nxt, size = _core.read_log(d, name, offset, CHUNK)
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


def main(args: argparse.Namespace) -> int:
    """``volley logs`` (see the module's doc)."""
    d = str(logs_dir(args.session))
    try:
        files = _core.list_logs(d)
    except OSError as e:
        print(f"volley: cannot list the logs in {d}: {e}", file=sys.stderr)
        return 1
    naming = any(
        v is not None for v in (args.name, args.node, args.worker, args.task, args.actor, args.job)
    )
    if not naming:
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
        chosen = _pick(files, args)
        prefix_each = len(chosen) > 1
        offsets = {}
        for f in chosen:
            where = f.get("dir", d)
            start = 0 if args.tail is None else _tail_start(where, f["name"], args.tail)
            prefix = f"[{f['name']}] " if prefix_each else ""
            offsets[f["name"]] = _print_from(where, f["name"], start, prefix)
    except (OSError, ValueError) as e:
        print(f"volley: {e}", file=sys.stderr)
        return 1
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(0.2)
            for f in chosen:
                prefix = f"[{f['name']}] " if prefix_each else ""
                where = f.get("dir", d)
                try:
                    offsets[f["name"]] = _print_from(where, f["name"], offsets[f["name"]], prefix)
                except OSError:
                    pass  # being rotated: found again on the next round
    except KeyboardInterrupt:
        return 0
