"""``volley list`` and ``volley summary``: the state API from the shell.

    volley list tasks|actors|objects|nodes|workers|placement-groups|jobs
        [--filter KEY=VALUE | --filter KEY!=VALUE]... [--limit N] [--detail] [--json]
        [--address HOST:PORT]
    volley summary tasks|actors [--filter ...] [--json] [--address HOST:PORT]
    volley timeline -o trace.json [--filter ...] [--limit N] [--address HOST:PORT]

Without ``--address`` they ask the cluster ``volley start --head`` runs on this machine (the
session's address file, or ``VOLLEY_ADDRESS``), as ``volley status`` does, or else the one
driver of this user that runs its own node here (``--address local:PID`` picks one of several).
Workers and objects are asked of every live node; a node that does not answer in time is named
on stderr, not waited for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import state

#: The columns the table shows per kind (``--json`` gives every field).
COLUMNS = {
    "tasks": [
        "task_id",
        "name",
        "state",
        "node_id",
        "worker_pid",
        "attempt",
        "duration_ms",
        "error_kind",
    ],
    "actors": [
        "actor_id",
        "class_name",
        "name",
        "state",
        "restarts",
        "pid",
        "node_id",
        "death_cause",
    ],
    "nodes": [
        "node_id",
        "addr",
        "alive",
        "driver",
        "workers",
        "cpu_total_milli",
        "cpu_free_milli",
        "store_used",
    ],
    "workers": ["pid", "node_id", "state", "actor_id", "task_id"],
    "objects": ["object_id", "size", "node_id", "state", "pins", "spilled"],
    "placement_groups": ["pg_id", "name", "state", "strategy", "node_id"],
    "jobs": ["job_id", "status", "entrypoint", "driver_pid", "start_ms", "end_ms", "exit_code"],
}


def register(sub: Any) -> None:
    """Adds ``list`` and ``summary`` to the ``volley`` command's subparsers."""
    kinds = [*state.KINDS, "placement-groups"]
    ls = sub.add_parser(
        "list", help="list the cluster's tasks, actors, objects, nodes, workers, ..."
    )
    ls.add_argument("kind", choices=kinds)
    ls.add_argument("--limit", type=int, default=100, help="rows at most (0: all; default 100)")
    ls.add_argument("--detail", action="store_true", help="every field (tracebacks too)")
    _common(ls)
    ls.set_defaults(_run=_list)
    sm = sub.add_parser("summary", help="tasks by function and state, or actors by class")
    sm.add_argument("kind", choices=["tasks", "actors"])
    _common(sm)
    sm.set_defaults(_run=_summary)
    tl = sub.add_parser(
        "timeline", help="write the recorded tasks as a Chrome trace / Perfetto JSON file"
    )
    tl.add_argument("-o", "--output", required=True, metavar="FILE", help="the trace file")
    tl.add_argument("--limit", type=int, default=0, help="tasks at most (0: all)")
    _common(tl)
    tl.set_defaults(_run=_timeline)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep rows whose KEY is VALUE (KEY!=VALUE: is not; KEY>N, KEY>=N, KEY<N, KEY<=N "
        "for numbers such as started_ms); repeat to combine",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--address",
        default=None,
        help="HOST:PORT of the head (default: this machine's), or local:PID for a driver's node",
    )
    p.add_argument(
        "--session",
        default=None,
        metavar="DIR",
        help="read what the head of session DIR recorded (also after it stopped)",
    )


def _parse_filter(text: str) -> tuple[str, str, str]:
    # The first operator in the text, two-character ones before their one-character prefixes
    # (as the HTTP API's `filter=` splits it).
    at = min((i for i in (text.find(c) for c in "=!<>") if i >= 0), default=-1)
    if at > 0 and text[:at].strip():
        for op in ("!=", ">=", "<=", "==", "=", ">", "<"):
            if text.startswith(op, at):
                return text[:at].strip(), op, text[at + len(op) :].strip()
    raise ValueError(
        f"--filter {text!r}: write KEY=VALUE, KEY!=VALUE, or KEY>N, KEY>=N, KEY<N, KEY<=N"
    )


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _address(args: argparse.Namespace) -> str:
    return args.address or "auto"


def _timeline(args: argparse.Namespace) -> int:
    from ._timeline import timeline

    try:
        filters = [_parse_filter(f) for f in args.filter]
        events = timeline(
            args.output,
            filters=filters,
            limit=args.limit or None,
            address=_address(args),
            session=args.session,
        )
    except (ValueError, ConnectionError, OSError) as e:
        print(f"volley: {e}", file=sys.stderr)
        return 1
    slices = sum(1 for e in events if e["ph"] == "X")
    if args.json:
        print(json.dumps({"output": args.output, "tasks": slices}))
    else:
        print(f"wrote {slices} tasks to {args.output} (open it in https://ui.perfetto.dev)")
    return 0


def _list(args: argparse.Namespace) -> int:
    kind = args.kind.replace("-", "_")
    try:
        filters = [_parse_filter(f) for f in args.filter]
        r = state.query(
            kind, filters, args.limit, args.detail, address=_address(args), session=args.session
        )
    except (ValueError, ConnectionError) as e:
        print(f"volley: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    rows = r["rows"]
    if args.detail:
        for row in rows:
            print("\n".join(f"{k}: {_detail(v)}" for k, v in row.items()))
            print()
    elif rows:
        print(_table(rows, COLUMNS[kind]))
    shown = f"{len(rows)} of {r['total']} {kind.replace('_', ' ')}"
    if r["truncated"]:
        shown += f" (--limit {args.limit}; --limit 0 shows all)"
    if r["dropped"]:
        shown += f"; {r['dropped']} older finished task(s) forgotten (VOLLEY_TASK_EVENTS_MAX)"
    print(shown)
    for m in r.get("missing", []):
        print(f"volley: not in this answer: {m}", file=sys.stderr)
    return 0


def _detail(v: Any) -> str:
    if isinstance(v, str) and "\n" in v:
        return "\n  " + v.rstrip().replace("\n", "\n  ")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1_000_000_000_000:
        return f"{v} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v / 1000))})"
    return "-" if v is None else str(v)


def _summary(args: argparse.Namespace) -> int:
    try:
        filters = [_parse_filter(f) for f in args.filter]
        if args.kind == "tasks":
            s = state.summarize_tasks(filters, address=_address(args), session=args.session)
        else:
            s = state.summarize_actors(filters, address=_address(args), session=args.session)
    except (ValueError, ConnectionError) as e:
        print(f"volley: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    if args.kind == "tasks":
        rows = [
            {
                "name": name,
                **{st: g["states"].get(st, 0) for st in state.TASK_STATES},
                "mean_ms": g["mean_ms"],
                "p50_ms": g["p50_ms"],
                "max_ms": g["max_ms"],
            }
            for name, g in s["by_name"].items()
        ]
        cols = ["name", *state.TASK_STATES, "mean_ms", "p50_ms", "max_ms"]
        total = f"{s['total']} task(s)"
        if s["dropped"]:
            total += f"; {s['dropped']} older finished task(s) forgotten"
    else:
        states = ["PENDING", "ALIVE", "RESTARTING", "DEAD"]
        rows = [
            {
                "class_name": c,
                **{st: g["states"].get(st, 0) for st in states},
                "restarts": g["restarts"],
            }
            for c, g in s["by_class"].items()
        ]
        cols = ["class_name", *states, "restarts"]
        total = f"{s['total']} actor(s)"
    if rows:
        print(_table(rows, cols))
    print(total)
    return 0
