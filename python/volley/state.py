"""The state API: what the cluster runs and ran, as lists of dicts.

Every view (``volley list``, ``volley summary``, the dashboard) reads the same rows, kept by the
cluster's head: tasks (waiting, queued, running, finished, failed, cancelled; their function,
node, worker, durations, retries and errors), actors, nodes, workers, objects, placement groups
and jobs. Filters are applied where the rows are, so a query never stops at an arbitrary
number of entries: ``limit`` only bounds what comes back, and :func:`query` says how many rows
matched in all.

>>> import volley, volley.state
>>> @volley.remote
... def st_square(x):
...     return x * x
>>> volley.get([st_square.remote(i) for i in range(3)])
[0, 1, 4]
>>> tasks = volley.state.list_tasks(filters=[("name", "=", "st_square")])
>>> sorted(t["state"] for t in tasks)
['FINISHED', 'FINISHED', 'FINISHED']

Filters are ``(key, op, value)`` with op ``"="``, ``"!="``, or for numeric fields (times such
as ``started_ms``, ``duration_ms``, counts) ``">"``, ``">="``, ``"<"``, ``"<="`` (a dict
``{key: value}`` means ``=`` for each); the keys of each kind are listed in docs/state.md. A
bad kind, key, operator or value raises ``ValueError`` saying what is allowed.

>>> recent = volley.state.list_tasks(filters=[("ended_ms", ">", 0), ("name", "=", "st_square")])
>>> len(recent)
3
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import _core

#: The kinds of rows, as ``volley list`` names them (``placement-groups`` is accepted too).
KINDS = ("tasks", "actors", "nodes", "workers", "objects", "placement_groups", "jobs")

#: A task's states, in the order of its life.
TASK_STATES = ("WAITING_ARGS", "QUEUED", "RUNNING", "FINISHED", "FAILED", "CANCELLED")

Filters = Iterable[tuple[str, str, Any]] | Mapping[str, Any] | None


def _kind(kind: str) -> str:
    k = kind.replace("-", "_")
    if k not in KINDS:
        raise ValueError(f"unknown state kind {kind!r} (one of {', '.join(KINDS)})")
    return k


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _core.ObjectRef):
        return value.hex()
    return str(value)


_RANGE_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}

#: Every filter operator; the ordering ones compare numbers.
FILTER_OPS = ("=", "==", "!=", *_RANGE_OPS)


def _filters(filters: Filters) -> list[tuple[str, str, str]]:
    if filters is None:
        return []
    if isinstance(filters, Mapping):
        return [(str(k), "=", _text(v)) for k, v in filters.items()]
    out = []
    for f in filters:
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(
                f"a filter is a (key, op, value) tuple such as ('state', '=', 'FAILED'), not {f!r}"
            )
        key, op, value = f
        if op not in FILTER_OPS:
            raise ValueError(
                f"filter {key}: operator {op!r} is not one of {', '.join(map(repr, FILTER_OPS))}"
            )
        if op in _RANGE_OPS:
            try:
                float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"filter {key}{op}: {value!r} is not a number ({op!r} compares numbers)"
                ) from None
        out.append((str(key), str(op), _text(value)))
    return out


def _limit(limit: int | None) -> int | None:
    if limit is None or limit == 0:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be a positive int, or None/0 for all, not {limit!r}")
    return limit


def query(
    kind: str,
    filters: Filters = None,
    limit: int | None = 100,
    detail: bool = False,
    *,
    address: str | None = None,
    session: str | os.PathLike | None = None,
) -> dict:
    """One state query: ``{"kind", "rows", "total", "truncated", "dropped", "missing"}``.
    ``total`` counts every matching row (beyond ``limit``), ``dropped`` the finished tasks the
    bounded table forgot (``VOLLEY_TASK_EVENTS_MAX``), ``missing`` the nodes whose workers or
    objects are not in the answer (each asked at once; one that did not answer in time is named
    with the reason). Without ``address`` it asks this session's cluster (``volley.init``
    first), or else the cluster ``volley start --head`` runs here, or else the one driver
    running its own node here (see :func:`target`).
    With ``session`` (a session directory) it reads the tasks and actors its head recorded
    there instead, also after that cluster stopped or crashed.

    >>> r = volley.state.query("nodes")
    >>> r["total"] >= 1 and r["rows"][0]["alive"]
    True
    """
    k = _kind(kind)
    fs = _filters(filters)
    lim = _limit(limit)
    if session is not None:
        return _from_history(Path(session), k, fs, lim, bool(detail))
    if address is None and _core.mode() is not None:
        text = _core.state_query(k, fs, lim, bool(detail))
    else:
        addr, token, tls = target(address)
        text = _core.query_state(addr, token, k, fs, lim, bool(detail), tls)
    return json.loads(text)


def embedded_nodes() -> list[dict]:
    """The nodes that drivers of this user run by themselves on this machine
    (``volley.init()`` without a cluster), as ``volley status`` lists them, with their
    ``pid`` and ``socket``.

    >>> all(n["node_id"] == 0 for n in embedded_nodes())
    True
    """
    return [n for n in _core.local_nodes() if n["node_id"] == 0]


def target(address: str | None) -> tuple[str, str, str | None]:
    """Where a question from outside a volley session goes: ``(address, token, tls_cert)``.

    ``address`` is a head's ``HOST:PORT``; ``None`` or ``"auto"`` the head ``volley start
    --head`` runs on this machine, or else the one driver of this user that runs its own node
    here (asked over its Unix socket); ``"local"`` or ``"local:PID"`` such a driver (by its
    pid when several run). Raises ``ConnectionError`` saying what runs when none fits.

    >>> import pytest
    >>> with pytest.raises(ConnectionError, match="no volley driver with pid 1 "):
    ...     target("local:1")
    """
    from . import _cluster

    if address is not None and (address == "local" or address.startswith("local:")):
        return _local_target(address.partition(":")[2]), "", None
    try:
        addr = _cluster.resolve_address(address or "auto")
    except ConnectionError as e:
        if address not in (None, "auto"):
            raise
        if not embedded_nodes():
            raise ConnectionError(f"{e}; no volley driver runs on this machine either") from None
        return _local_target(""), "", None
    return addr, _cluster.resolve_token(None), _cluster.resolve_tls_cert(None)


def _local_target(pid: str) -> str:
    """``local:<socket>`` of the embedded node of driver ``pid`` (any, if only one runs)."""
    nodes = embedded_nodes()
    pids = ", ".join(str(n["pid"]) for n in nodes)
    if pid:
        found = [n for n in nodes if str(n["pid"]) == pid.strip()]
        if not found:
            raise ConnectionError(
                f"no volley driver with pid {pid} runs its own node on this machine "
                f"({'drivers: ' + pids if nodes else 'none runs'})"
            )
        nodes = found
    if not nodes:
        raise ConnectionError("no volley driver runs its own node on this machine")
    if len(nodes) > 1:
        raise ConnectionError(
            f"{len(nodes)} volley drivers run their own nodes on this machine (pids {pids}): "
            "pick one with --address local:PID (address='local:PID')"
        )
    return "local:" + nodes[0]["socket"]


#: The fields a filter may name in a session's history (as the head's tables check them).
_HISTORY_KEYS = {
    "tasks": (
        "task_id", "name", "state", "job_id", "actor_id", "node_id", "worker_pid", "attempt",
        "error_kind", "submitted_ms", "started_ms", "ended_ms", "duration_ms", "changed_ms",
    ),
    "actors": (
        "actor_id", "class_name", "name", "namespace", "state", "restarts", "pid", "node_id",
        "job_id", "detached", "death_cause",
    ),
    "jobs": ("job_id", "status", "entrypoint", "driver_pid", "exit_code", "driver_node"),
}  # fmt: skip

#: The fields the ordering operators take there.
_HISTORY_NUMERIC = {
    "tasks": (
        "worker_pid", "attempt", "submitted_ms", "started_ms", "ended_ms", "duration_ms",
        "changed_ms",
    ),
    "actors": ("restarts", "pid", "node_id"),
    "jobs": ("driver_pid", "exit_code", "driver_node"),
}  # fmt: skip


def _from_history(session: Path, kind: str, fs: list, limit: int | None, detail: bool) -> dict:
    """A query over the rows a head wrote to ``session``/history (see docs/state.md)."""
    keys = _HISTORY_KEYS.get(kind)
    if keys is None:
        raise ValueError(f"a session's history holds tasks and actors, and jobs, not {kind}")
    folder = session / "history" if (session / "history").is_dir() else session
    # A head's files, and those of each driver that wrote its own (driver-<pid>-<ms>/, see
    # init's ``history``): a row is its folder's, so two drivers' job "0" stay apart.
    folders = [folder, *sorted(d for d in folder.glob("driver-*") if d.is_dir())]
    files = [(d, d / f"{kind}{ext}") for d in folders for ext in (".1.jsonl", ".jsonl")]
    if not any(f.exists() for _, f in files):
        raise ValueError(f"no volley history in {session} (no {kind}.jsonl there)")
    id_key = {"tasks": "task_id", "actors": "actor_id", "jobs": "job_id"}[kind]
    latest: dict[tuple[Path, str], dict] = {}
    for d, f in files:
        if not f.exists():
            continue
        with open(f, encoding="utf-8") as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                latest[(d, row[id_key])] = row
    numeric = _HISTORY_NUMERIC[kind]
    for key, op, _ in fs:
        if key not in keys:
            raise ValueError(
                f"{kind} have no field {key!r} to filter on (one of {', '.join(keys)})"
            )
        if op in _RANGE_OPS and key not in numeric:
            raise ValueError(
                f"filter {key}{op}: {op!r} compares numbers, and {kind}' {key} is not one "
                f"(use = or !=; the numeric fields are {', '.join(numeric)})"
            )

    def text(v: Any) -> str:
        return "null" if v is None else (json.dumps(v) if not isinstance(v, str) else v)

    def field(row: dict, k: str) -> Any:
        if k == "changed_ms":  # the latest of its times, as the head's tables compute it
            times = [row.get(t) for t in ("submitted_ms", "started_ms", "ended_ms")]
            return max((t for t in times if t is not None), default=None)
        return row.get(k)

    def meets(row: dict, k: str, op: str, v: str) -> bool:
        f = field(row, k)
        if op in _RANGE_OPS:
            return (
                isinstance(f, (int, float))
                and not isinstance(f, bool)
                and _RANGE_OPS[op](f, float(v))
            )
        same = text(f).lower() == v.lower() or (f is None and v.lower() in ("", "null", "none"))
        return same == (op != "!=")

    def keep(row: dict) -> bool:
        return all(meets(row, k, op, v) for k, op, v in fs)

    rows = [r for r in latest.values() if keep(r)]
    if kind == "tasks":
        rows.sort(key=lambda r: (r.get("submitted_ms") or 0, r["task_id"]), reverse=True)
    elif kind == "jobs":
        rows.sort(key=lambda r: (r.get("start_ms") or 0, r["job_id"]))
    total = len(rows)
    shown = rows if limit is None else rows[:limit]
    if not detail:
        shown = [{k: v for k, v in r.items() if k != "traceback"} for r in shown]
    return {
        "kind": kind,
        "rows": shown,
        "total": total,
        "truncated": limit is not None and total > limit,
        "dropped": 0,
        "missing": [],
    }


def _rows(
    kind: str, filters: Filters, limit: int | None, detail: bool, address: str | None
) -> list[dict]:
    return query(kind, filters, limit, detail, address=address)["rows"]


def list_tasks(
    filters: Filters = None,
    limit: int | None = 100,
    detail: bool = False,
    *,
    address: str | None = None,
) -> list[dict]:
    """Tasks, newest first: ``task_id, name, state, job_id, actor_id, node_id, worker_pid,
    attempt, submitted_ms, started_ms, ended_ms, duration_ms, waiting_for, error_kind,
    error_message`` (and ``traceback`` with ``detail``).

    >>> @volley.remote
    ... def st_fails():
    ...     raise ValueError("no")
    >>> _ = volley.wait([st_fails.remote()])
    >>> [t["error_kind"] for t in volley.state.list_tasks(filters=[("name", "=", "st_fails")])]
    ['TASK_EXCEPTION']
    """
    return _rows("tasks", filters, limit, detail, address)


def get_task(task_id: str | _core.ObjectRef, *, address: str | None = None) -> dict | None:
    """One task with its details (the traceback of a failure), by its id or any of its
    results' ``ObjectRef``; None if the cluster does not know it (or forgot it).

    >>> @volley.remote
    ... def st_one():
    ...     return 1
    >>> ref = st_one.remote()
    >>> volley.get(ref)
    1
    >>> volley.state.get_task(ref)["name"]
    'st_one'
    """
    tid = task_id.hex() if isinstance(task_id, _core.ObjectRef) else str(task_id)
    rows = _rows("tasks", [("task_id", "=", tid[:32])], 1, True, address)
    return rows[0] if rows else None


def list_actors(
    filters: Filters = None,
    limit: int | None = 100,
    detail: bool = False,
    *,
    address: str | None = None,
) -> list[dict]:
    """Actors: ``actor_id, class_name, name, namespace, state (PENDING, ALIVE, RESTARTING,
    DEAD), restarts, pid, node_id, job_id, detached, death_cause``.

    >>> @volley.remote
    ... class StBox:
    ...     def get(self):
    ...         return 1
    >>> b = StBox.remote()
    >>> volley.get(b.get.remote())
    1
    >>> [a["state"] for a in volley.state.list_actors(filters={"class_name": "StBox"})]
    ['ALIVE']
    """
    return _rows("actors", filters, limit, detail, address)


def get_actor(actor_id: Any, *, address: str | None = None) -> dict | None:
    """One actor by its id (hex) or its handle; None if unknown.

    >>> @volley.remote
    ... class StNamed:
    ...     pass
    >>> h = StNamed.remote()
    >>> volley.state.get_actor(h)["class_name"]
    'StNamed'
    """
    ref = getattr(actor_id, "_actor_ref", None)
    aid = ref.hex() if ref is not None else str(actor_id)
    rows = _rows("actors", [("actor_id", "=", aid)], 1, True, address)
    return rows[0] if rows else None


def list_nodes(
    filters: Filters = None, limit: int | None = 100, *, address: str | None = None
) -> list[dict]:
    """Nodes, as ``volley.nodes()`` describes them, with ``node_id`` and ``alive``.

    >>> len(volley.state.list_nodes()) >= 1
    True
    """
    return _rows("nodes", filters, limit, False, address)


def list_workers(
    filters: Filters = None, limit: int | None = 100, *, address: str | None = None
) -> list[dict]:
    """The worker processes of the node asked (this driver's node, or the head for the CLI):
    ``pid, node_id, state (STARTING, IDLE, BUSY, BLOCKED, ACTOR), actor_id, task_id``.

    >>> states = {"STARTING", "IDLE", "BUSY", "BLOCKED", "ACTOR"}
    >>> all(w["state"] in states for w in volley.state.list_workers())
    True
    """
    return _rows("workers", filters, limit, False, address)


def list_objects(
    filters: Filters = None, limit: int | None = 100, *, address: str | None = None
) -> list[dict]:
    """The objects the node asked knows: ``object_id, size, node_id, state, pins, spilled``.

    >>> ref = volley.put(b"x" * 10)
    >>> any(o["object_id"] == ref.hex() for o in volley.state.list_objects(limit=None))
    True
    """
    return _rows("objects", filters, limit, False, address)


def list_placement_groups(
    filters: Filters = None, limit: int | None = 100, *, address: str | None = None
) -> list[dict]:
    """Placement groups: ``pg_id, name, state, strategy, bundles, node_id``.

    >>> volley.state.list_placement_groups(filters={"state": "NO_SUCH_STATE"})
    []
    """
    return _rows("placement_groups", filters, limit, False, address)


def list_jobs(
    filters: Filters = None, limit: int | None = 100, *, address: str | None = None
) -> list[dict]:
    """Jobs: ``job_id, status, entrypoint, driver_pid, start_ms, end_ms, exit_code, message``
    (a driver's session is a job; submitted jobs too).

    >>> isinstance(volley.state.list_jobs(), list)
    True
    """
    return _rows("jobs", filters, limit, False, address)


def _durations(rows: list[dict]) -> dict:
    d = [r["duration_ms"] for r in rows if r.get("duration_ms") is not None]
    if not d:
        return {"mean_ms": None, "p50_ms": None, "max_ms": None}
    return {"mean_ms": statistics.fmean(d), "p50_ms": statistics.median(d), "max_ms": max(d)}


def summarize_tasks(
    filters: Filters = None, *, address: str | None = None, session: str | None = None
) -> dict:
    """Tasks by function: how many in each state, and the mean, median and longest durations
    of those that ran. ``{"total", "dropped", "by_name": {name: {"states": {...}, "mean_ms",
    "p50_ms", "max_ms"}}}``.

    >>> @volley.remote
    ... def summed():
    ...     return 0
    >>> _ = volley.get([summed.remote() for _ in range(4)])
    >>> volley.state.summarize_tasks()["by_name"]["summed"]["states"]
    {'FINISHED': 4}
    """
    r = query("tasks", filters, None, False, address=address, session=session)
    groups: dict[str, list[dict]] = {}
    for row in r["rows"]:
        groups.setdefault(row["name"], []).append(row)
    by_name = {}
    for name in sorted(groups):
        rows = groups[name]
        states: dict[str, int] = {}
        for row in rows:
            states[row["state"]] = states.get(row["state"], 0) + 1
        by_name[name] = {"states": states, **_durations(rows)}
    return {"total": r["total"], "dropped": r["dropped"], "by_name": by_name}


def summarize_actors(
    filters: Filters = None, *, address: str | None = None, session: str | None = None
) -> dict:
    """Actors by class: how many in each state, and their restarts in all.

    >>> @volley.remote
    ... class Summed:
    ...     pass
    >>> _ = Summed.remote()
    >>> volley.state.summarize_actors()["by_class"]["Summed"]["restarts"]
    0
    """
    r = query("actors", filters, None, False, address=address, session=session)
    by_class: dict[str, dict] = {}
    for row in r["rows"]:
        c = by_class.setdefault(row["class_name"], {"states": {}, "restarts": 0})
        c["states"][row["state"]] = c["states"].get(row["state"], 0) + 1
        c["restarts"] += row["restarts"] or 0
    return {"total": r["total"], "by_class": dict(sorted(by_class.items()))}
