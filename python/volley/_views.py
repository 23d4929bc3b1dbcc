"""A view of every worker (IPython parallel's ``DirectView``): run a function, or code, once on
each, and keep a namespace per worker to push values to and pull them from.

volley's task workers cannot be addressed one by one (a task goes to whichever worker is free,
and a worker may be replaced at any time), so a view's workers are *engines*: one actor per CPU
of each node (or one per node), pinned there with node affinity, created on first use and kept
for the session. They ask for no CPUs (``num_cpus=0``), so they hold nothing while idle and
``volley.map`` (the load-balanced view) keeps the whole cluster; a call on every engine at once
runs one process per CPU. An engine that dies is never restarted behind the view's back (its
namespace would be lost silently): the call fails with ``WorkersError`` naming it, and the next
``volley.workers()`` starts a fresh engine in its place.

>>> view = volley.workers()
>>> len(view) == int(sum(n["num_cpus"] for n in volley.nodes()))
True
>>> view.push({"offset": 10})
>>> set(view.apply(lambda x: x + 1, 1)), set(view.evaluate("offset + 1"))
({2}, {11})
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass

from . import library
from ._actor import ActorHandle, actor_state, kill
from ._objects import get, put, wait
from ._options import NodeAffinitySchedulingStrategy
from ._remote import remote
from ._session import nodes
from .exceptions import ActorDiedError, GetTimeoutError, TaskError, VolleyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any


@dataclass(frozen=True)
class WorkerInfo:
    """Which engine a result came from: its place in the cluster-wide list (``index``), its
    node (``node_id``, as ``volley.nodes()`` lists it) and its process id (``pid``)."""

    index: int
    node_id: int
    pid: int

    def __str__(self) -> str:
        return f"worker {self.index} (node {self.node_id}, pid {self.pid})"


class Results(list):
    """The results of a call on every worker of a view: a ``list`` in the view's order, with
    ``workers`` (a ``WorkerInfo`` per result) and ``by_worker()``.

    >>> r = volley.workers().run(os.getpid)
    >>> [w.pid for w in r.workers] == list(r)
    True
    """

    workers: list[WorkerInfo]

    def __init__(self, values: Iterable[Any], workers: list[WorkerInfo]):
        super().__init__(values)
        self.workers = workers

    def by_worker(self) -> dict[WorkerInfo, Any]:
        """``{WorkerInfo: result}``."""
        return dict(zip(self.workers, self))

    def __reduce__(self) -> tuple:
        return (Results, (list(self), self.workers))


class WorkersError(VolleyError):
    """A call on a view failed on some of its workers: ``errors`` maps each such worker's
    ``WorkerInfo`` to its exception (a ``TaskError`` for what the function raised, an
    ``ActorDiedError`` for a worker that died, a ``GetTimeoutError`` for one that did not
    answer in time); ``results`` holds the other workers' results (None where one failed).
    The message names every worker that failed and why."""

    def __init__(self, what: str, errors: dict[WorkerInfo, BaseException], results: Results):
        self.what = what
        self.errors = errors
        self.results = results
        lines = [f"{what} failed on {len(errors)} of {len(results)} worker(s):"]
        for w, e in errors.items():
            if isinstance(e, ActorDiedError):
                lines.append(f"  {w} died: {e}")
            elif isinstance(e, GetTimeoutError):
                lines.append(f"  {w} did not answer: {e}")
            elif isinstance(e, TaskError):  # its last line is the original "Type: message"
                lines.append(f"  {w}: {_first_line(e)}")
            else:
                lines.append(f"  {w}: {type(e).__name__}: {_first_line(e)}")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:
        return (WorkersError, (self.what, self.errors, self.results))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else ""


_MISSING = object()


class WorkerEngine:
    """One worker of the views: a process with a namespace of its own."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__volley_worker__"}

    def whoami(self) -> tuple[int, int]:
        import volley

        return volley.get_runtime_context().get_node_id(), os.getpid()

    def apply(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)

    def apply_packed(self, fn: Callable, packed: tuple[tuple, dict]) -> Any:
        return fn(*packed[0], **packed[1])

    def push(self, values: dict[str, Any]) -> None:
        self.namespace.update(values)

    def pull(self, names: Sequence[str]) -> list[Any]:
        found = [self.namespace.get(n, _MISSING) for n in names]
        missing = [n for n, v in zip(names, found) if v is _MISSING]
        if missing:
            raise NameError(f"name(s) {missing} not defined in this worker's namespace")
        return found

    def execute(self, code: str) -> None:
        exec(compile(code, "<volley.workers execute>", "exec"), self.namespace)

    def evaluate(self, expression: str) -> Any:
        return eval(compile(expression, "<volley.workers eval>", "eval"), self.namespace)


_EngineActor = remote(num_cpus=0, max_restarts=0, max_concurrency=1)(WorkerEngine)

# The session's engines: node id -> the engines there, in order. Guarded by _lock, so that two
# threads asking for a view at once start one set.
_engines: dict[int, list[tuple[ActorHandle, WorkerInfo] | None]] = {}
_lock = threading.Lock()

#: How long starting the engines may take before ``volley.workers()`` says which did not start.
START_TIMEOUT_S = 60.0


def _alive(handle: ActorHandle) -> bool:
    try:
        s = actor_state(handle)
    except Exception:  # a handle of an earlier session
        return False
    return s is not None and s["state"] != "DEAD"


def _wanted() -> dict[int, int]:
    """node id -> engines it should have: one per whole CPU (at least one on a node with some
    CPU); nodes without CPUs (a cluster's bare head, a driver joined to a cluster) get none."""
    want = {}
    for n in nodes():
        if n["num_cpus"] > 0:
            want[n["node_id"]] = max(1, int(n["num_cpus"]))
    return want


def _refresh(timeout: float) -> list[tuple[ActorHandle, WorkerInfo]]:
    """Brings the session's engines in line with the cluster (starting engines for new CPUs
    and in place of dead ones, forgetting those of nodes gone) and returns them all, ordered
    by node and place on it."""
    want = _wanted()
    if not want:
        raise RuntimeError(
            "volley.workers(): no node of the cluster has a CPU to run a worker on "
            f"(nodes: {[(n['node_id'], n['num_cpus']) for n in nodes()]})"
        )
    for node in list(_engines):
        if node not in want:
            for e in _engines.pop(node):
                if e is not None:
                    _kill_quietly(e[0])
    starting: list[tuple[int, int, ActorHandle, Any]] = []
    # On one machine there is nowhere else to go, and the engine's own node takes no affinity
    # (it is not a member of a cluster): the engines start there without a strategy.
    pin = library.in_cluster()
    for node, count in sorted(want.items()):
        have = _engines.setdefault(node, [])
        have.extend([None] * (count - len(have)))
        for slot, e in enumerate(have):
            if e is not None and not _alive(e[0]):
                _kill_quietly(e[0])
                have[slot] = None  # a fresh engine takes the dead one's place
        opts = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node)} if pin else {}
        for slot in range(count):
            if have[slot] is None:
                h = _EngineActor.options(**opts).remote()
                starting.append((node, slot, h, h.whoami.remote()))
    if starting:
        _, late = wait([s[3] for s in starting], num_returns=len(starting), timeout=timeout)
        try:
            if late:
                slow = [(n, s) for n, s, _, r in starting if r in set(late)]
                raise GetTimeoutError(
                    f"volley.workers(): {len(late)} worker(s) (node, slot) {slow} did not "
                    f"start within {timeout:g} s"
                )
            for node, slot, h, ref in starting:
                try:
                    node_id, pid = get(ref)
                except Exception as e:
                    raise RuntimeError(
                        f"volley.workers(): the worker for slot {slot} of node {node} could not "
                        f"start: {type(e).__name__}: {e}"
                    ) from e
                _engines[node][slot] = (h, WorkerInfo(-1, node_id, pid))
        except BaseException:
            for node, slot, h, _ in starting:
                _kill_quietly(h)
                _engines[node][slot] = None
            raise
    everyone = []
    for node in sorted(_engines):
        for e in _engines[node]:
            if e is not None:
                h, w = e
                everyone.append((h, WorkerInfo(len(everyone), w.node_id, w.pid)))
    return everyone


def _kill_quietly(handle: ActorHandle) -> None:
    try:
        kill(handle)
    except Exception:  # already gone, or of an earlier session
        pass


def workers(per_node: bool = False, *, timeout: float | None = None) -> WorkerView:
    """A view of every worker of the cluster (one engine per CPU of each node), or with
    ``per_node=True`` of one worker per node, to run functions and code on each
    (IPython parallel's ``DirectView``). The engines are started on first use and kept for the
    session: a later view, a slice, and the ``per_node`` view (each node's first engine) share
    their namespaces. The view holds the engines that existed when it was made; a node that
    joins later is in the next ``volley.workers()``. ``timeout`` (seconds) bounds each call
    on the view (``WorkersError`` naming the workers that did not answer); None waits.

    The load-balanced view (each call on whichever worker is free) is ``volley.map``.

    >>> every = volley.workers()
    >>> every.run(lambda: "hello")[0]
    'hello'
    >>> len(volley.workers(per_node=True)) == len({w.node_id for w in every.workers})
    True
    """
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
    library.init_if_needed()
    with _lock:
        everyone = _refresh(START_TIMEOUT_S)
    if per_node:
        seen: set[int] = set()
        everyone = [e for e in everyone if not (e[1].node_id in seen or seen.add(e[1].node_id))]
    return WorkerView(everyone, timeout)


class WorkerView:
    """Some of the session's workers, in order (made by ``volley.workers()``, or by indexing
    or slicing a view): ``len(view)``, ``view[i]`` (a view of one), ``view[a:b]``, iteration
    over their ``WorkerInfo``, and the calls below, each made on every worker of the view at
    once. A call returns a ``Results`` list in the view's order, or raises ``WorkersError``
    naming each worker it failed on (the function raised, the worker died, or it did not
    answer within the view's ``timeout``).

    >>> view = volley.workers()
    >>> view[0].run(lambda: 42)
    [42]
    """

    def __init__(self, engines: list[tuple[ActorHandle, WorkerInfo]], timeout: float | None):
        self._engines = engines
        self.timeout = timeout

    # ------------------------------------------------------------------ the sequence of workers

    @property
    def workers(self) -> list[WorkerInfo]:
        """The view's workers, in order."""
        return [w for _, w in self._engines]

    def __len__(self) -> int:
        return len(self._engines)

    def __iter__(self):
        return iter(self.workers)

    def __getitem__(self, key: int | slice) -> WorkerView:
        if isinstance(key, slice):
            return WorkerView(self._engines[key], self.timeout)
        if not isinstance(key, int) or isinstance(key, bool):
            raise TypeError(f"a view is indexed by an int or a slice, not {type(key).__name__}")
        if not -len(self) <= key < len(self):
            raise IndexError(f"worker index {key} out of range for a view of {len(self)}")
        return WorkerView([self._engines[key]], self.timeout)

    def __repr__(self) -> str:
        where = sorted({w.node_id for w in self.workers})
        return f"<WorkerView of {len(self)} worker(s) on node(s) {where}>"

    # ------------------------------------------------------------------ calls on every worker

    def _call(self, what: str, make: Callable[[ActorHandle, int], Any]) -> Results:
        if not self._engines:
            return Results([], [])
        refs = [make(h, i) for i, (h, _) in enumerate(self._engines)]
        done, late = wait(refs, num_returns=len(refs), timeout=self.timeout)
        late_set = set(late)
        values: list[Any] = []
        errors: dict[WorkerInfo, BaseException] = {}
        for ref, (_, w) in zip(refs, self._engines):
            if ref in late_set:
                errors[w] = GetTimeoutError(f"no answer to {what} within {self.timeout:g} s")
                values.append(None)
                continue
            try:
                values.append(get(ref))
            except Exception as e:
                errors[w] = e
                values.append(None)
        results = Results(values, self.workers)
        if errors:
            raise WorkersError(what, errors, results)
        return results

    def apply(self, fn: Callable, *args: Any, **kwargs: Any) -> Results:
        """``fn(*args, **kwargs)`` on every worker of the view; their results, in order. A
        ``@volley.remote`` function runs as the plain function it wraps.

        >>> volley.workers().apply(pow, 2, 10)[0]
        1024
        """
        fn, _, name = library.unwrap_remote(fn, "function")  # a @volley.remote one too
        if len(self) > 1 and _large(*args, *kwargs.values()):
            # Stored once, read by every worker (from shared memory on the driver's node),
            # instead of serialised and sent once per worker.
            packed = put((args, kwargs))
            return self._call(f"apply({name})", lambda h, _: h.apply_packed.remote(fn, packed))
        return self._call(f"apply({name})", lambda h, _: h.apply.remote(fn, args, kwargs))

    def run(self, fn: Callable[[], Any]) -> Results:
        """``fn()`` on every worker of the view (``apply`` without arguments).

        >>> len(set(volley.workers().run(os.getpid))) == len(volley.workers())
        True
        """
        return self.apply(fn)

    def push(self, values: dict[str, Any]) -> None:
        """Sets each ``name: value`` of ``values`` in every worker's namespace (each worker
        gets its own copy).

        >>> volley.workers().push({"greeting": "hi"})
        >>> volley.workers().pull("greeting")[0]
        'hi'
        """
        values = _names_dict(values)
        sent: Any = put(values) if len(self) > 1 and _large(*values.values()) else values
        self._call("push", lambda h, _: h.push.remote(sent))

    def pull(self, names: str | Sequence[str]) -> Results:
        """The value of ``names`` (a name: its value; a list of names: a list of values) in
        each worker's namespace. A name a worker does not have fails as ``NameError``.

        >>> view = volley.workers()
        >>> view.push({"a": 1, "b": 2})
        >>> view.pull(["a", "b"])[0]
        [1, 2]
        """
        one = isinstance(names, str)
        wanted = [names] if one else list(names)  # type: ignore[list-item]
        for n in wanted:
            if not isinstance(n, str):
                raise TypeError(f"pull() takes names (str), not {type(n).__name__}")
        r = self._call(f"pull({names!r})", lambda h, _: h.pull.remote(wanted))
        return Results([v[0] for v in r] if one else r, r.workers)

    def execute(self, code: str) -> None:
        """Runs ``code`` (Python statements) in every worker's namespace: what it defines is
        there for later calls (``pull``, ``evaluate``, more ``execute``). What it prints goes
        to the driver's output, as a task's does.

        >>> view = volley.workers()
        >>> view.execute("import math; r = math.sqrt(16)")
        >>> view.pull("r")[0]
        4.0
        """
        if not isinstance(code, str):
            raise TypeError(f"execute() takes code as a str, not {type(code).__name__}")
        compile(code, "<volley.workers execute>", "exec")  # a SyntaxError here, not N of them
        self._call("execute", lambda h, _: h.execute.remote(code))

    def evaluate(self, expression: str) -> Results:
        """The value of ``expression`` in each worker's namespace.

        >>> volley.workers().evaluate("2 + 3")[0]
        5
        """
        if not isinstance(expression, str):
            raise TypeError(f"evaluate() takes a str, not {type(expression).__name__}")
        compile(expression, "<volley.workers eval>", "eval")
        return self._call(f"evaluate({expression!r})", lambda h, _: h.evaluate.remote(expression))

    def scatter(self, name: str, seq: Sequence[Any]) -> None:
        """Splits ``seq`` (anything sliceable: a list, tuple, range, string, numpy array) into
        ``len(view)`` consecutive parts as even as can be (the first ones one longer), and
        sets part ``i`` as ``name`` in worker ``i``'s namespace. ``gather(name)`` joins them
        back.

        >>> view = volley.workers()
        >>> view.scatter("part", list(range(10)))
        >>> sum(len(p) for p in view.pull("part"))
        10
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"scatter() needs a name (an identifier), not {name!r}")
        try:
            n = len(seq)
            seq[0:0]
        except TypeError:
            raise TypeError(
                f"scatter() takes a sequence that has a length and slices, not "
                f"{type(seq).__name__} (make it a list first)"
            ) from None
        k = len(self)
        if k == 0:
            return
        size, extra = divmod(n, k)
        bounds = list(itertools.accumulate([0] + [size + (i < extra) for i in range(k)]))
        parts = [seq[bounds[i] : bounds[i + 1]] for i in range(k)]
        self._call(f"scatter({name!r})", lambda h, i: h.push.remote({name: parts[i]}))

    def gather(self, name: str) -> Any:
        """The parts of ``name`` from every worker, joined in the view's order: one numpy
        array if they are arrays, one string if strings, else one list.

        >>> view = volley.workers()
        >>> view.scatter("xs", [1, 2, 3, 4, 5])
        >>> view.execute("xs = [x * x for x in xs]")
        >>> view.gather("xs")
        [1, 4, 9, 16, 25]
        """
        parts = self.pull(name)
        if parts and all(type(p).__module__ == "numpy" and hasattr(p, "ndim") for p in parts):
            import numpy

            return numpy.concatenate(parts)
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
        out: list[Any] = []
        for w, p in zip(parts.workers, parts):
            try:
                out.extend(p)
            except TypeError:
                raise TypeError(
                    f"gather({name!r}): {w} holds a {type(p).__name__}, not a sequence"
                ) from None
        return out

    def shutdown(self) -> None:
        """Stops the view's workers (their namespaces are lost); the next ``volley.workers()``
        starts fresh ones in their place. Other views that hold them fail with
        ``WorkersError`` naming them.

        >>> v = volley.workers()
        >>> v[0].shutdown()
        >>> len(volley.workers()) == len(v)
        True
        """
        with _lock:
            gone = {id(h) for h, _ in self._engines}
            for h, _ in self._engines:
                _kill_quietly(h)
            for engines in _engines.values():
                engines[:] = [None if e is not None and id(e[0]) in gone else e for e in engines]


#: Arguments at least this large (an array's ``nbytes``, a bytes-like's length) are stored
#: once for a call on several workers.
LARGE_ARGUMENT_BYTES = 64 * 1024


def _large(*values: Any) -> bool:
    for v in values:
        size = getattr(v, "nbytes", None)
        if size is None and isinstance(v, (bytes, bytearray, memoryview)):
            size = len(v)
        if isinstance(size, int) and size >= LARGE_ARGUMENT_BYTES:
            return True
    return False


def _names_dict(values: object) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise TypeError(f"push() takes a dict of name: value, not {type(values).__name__}")
    for k in values:
        if not isinstance(k, str) or not k.isidentifier():
            raise ValueError(f"push(): {k!r} is not a name (an identifier)")
    return dict(values)
