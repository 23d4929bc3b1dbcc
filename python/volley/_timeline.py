"""Chrome trace / Perfetto timelines of the tasks the state API recorded (``volley timeline``).

The trace is the JSON object format of Chrome's trace viewer, which Perfetto
(https://ui.perfetto.dev) and ``chrome://tracing`` open: one process per node, one thread
(track) per worker process, one complete ("X") slice per task that ran, with its function,
task id, attempt, state and sizes in the slice's arguments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["timeline", "trace_events"]


def trace_events(tasks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trace events for task rows as ``volley.state.list_tasks`` gives them.

    Tasks that never started (still waiting, or cancelled before they ran) have no slice; a
    task still running ends at its latest known time (it is marked ``"running": true``).
    """
    slices: list[dict[str, Any]] = []
    nodes: dict[str, int] = {}
    threads: set[tuple[int, int]] = set()
    rows = list(tasks)
    # A running task has no end yet: it is drawn up to the newest time the table knows.
    latest = max(
        (float(t.get(k) or 0) for t in rows for k in ("ended_ms", "started_ms", "submitted_ms")),
        default=0.0,
    )
    for t in rows:
        start = t.get("started_ms")
        if start is None:
            continue
        end = t.get("ended_ms")
        running = end is None
        end = latest if end is None else end
        node = str(t.get("node_id") or "?")
        pid = nodes.setdefault(node, len(nodes) + 1)
        tid = int(t.get("worker_pid") or 0)
        threads.add((pid, tid))
        args = {
            k: t.get(k)
            for k in ("task_id", "state", "attempt", "actor_id", "job_id", "args_bytes", "node_id")
            if t.get(k) is not None
        }
        if running:
            args["running"] = True
        if t.get("error_kind"):
            args["error"] = f"{t['error_kind']}: {t.get('error_message') or ''}"
        slices.append(
            {
                "name": str(t.get("name") or "task"),
                "cat": "actor_task" if t.get("actor_id") else "task",
                "ph": "X",
                "ts": float(start) * 1000.0,
                "dur": max(0.0, float(end) - float(start)) * 1000.0,
                "pid": pid,
                "tid": tid,
                "args": args,
            }
        )
    meta: list[dict[str, Any]] = []
    for node, pid in nodes.items():
        meta.append(
            {
                "name": "process_name",
                "ph": "M",
                "pid": pid,
                "tid": 0,
                "args": {"name": f"node {node}"},
            }
        )
    for pid, tid in sorted(threads):
        meta.append(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": pid,
                "tid": tid,
                "args": {"name": f"worker {tid}"},
            }
        )
    slices.sort(key=lambda e: e["ts"])
    # A pool worker runs one task at a time: on its track, a slice never starts before the one
    # before it ended (the tables' times are milliseconds, stamped per scheduler call). Actors
    # with several threads do overlap: left as they are.
    ends: dict[tuple[int, int], float] = {}
    for e in sorted(slices, key=lambda e: e["ts"] + e["dur"]):
        if e["cat"] != "task":
            continue
        track = (e["pid"], e["tid"])
        prev = ends.get(track)
        if prev is not None and e["ts"] < prev:
            end = e["ts"] + e["dur"]
            e["ts"] = prev
            e["dur"] = max(0.0, end - prev)
        ends[track] = e["ts"] + e["dur"]
    slices.sort(key=lambda e: e["ts"])
    return meta + slices


def timeline(
    path: str | os.PathLike[str] | None = None,
    *,
    filters: Any = None,
    limit: int | None = None,
    address: str | None = None,
    session: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Writes the recorded tasks as a Chrome trace / Perfetto JSON file at ``path``.

    One track per worker (grouped by node), one slice per task with its function, node and
    attempt; open the file in https://ui.perfetto.dev or ``chrome://tracing``. ``filters``
    and ``limit`` are ``volley.state.list_tasks``'s (by default every recorded task);
    ``address`` asks a cluster's head from outside it, ``session`` reads what a head recorded
    in its session directory (also after it stopped). Returns the events (also when ``path``
    is ``None``, which writes nothing). Ray's ``ray.timeline(filename)`` likewise.

    >>> import json, os, tempfile, volley
    >>> @volley.remote
    ... def tl_nap(x):
    ...     return x
    >>> _ = volley.get([tl_nap.remote(i) for i in range(4)])
    >>> path = os.path.join(tempfile.mkdtemp(), "trace.json")
    >>> events = volley.timeline(path, filters=[("name", "=", "tl_nap")])
    >>> sum(1 for e in json.load(open(path))["traceEvents"] if e["ph"] == "X")
    4
    """
    from . import state

    rows = state.query("tasks", filters, limit, False, address=address, session=session)["rows"]
    events = trace_events(rows)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    return events
