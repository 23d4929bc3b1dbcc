"""A Dask scheduler: any Dask graph runs as volley tasks.

Before::

    result = x.compute()                      # Dask's threaded scheduler

After::

    import volley.dask
    result = x.compute(scheduler=volley.dask.get)
    # or for every compute in a block:
    with dask.config.set(scheduler=volley.dask.get):
        result = x.compute()

Each node of the graph becomes one volley task whose arguments are the refs of the nodes it
depends on: volley starts it when they are ready (in the engine, not in Python), intermediate
results stay in the object store (large arrays are handed to the next task without a copy, on
whichever node it runs), and only the keys asked for come back. Literal data in the graph is
put in the store once instead of running as a task. An exception raised by a node is raised by
``compute``, as the same exception class with the remote traceback.

As with Dask's own schedulers, a list of keys gives a tuple of results (nested lists, nested
tuples), a graph that names a key it lacks raises ``ValueError("Missing dependency ...")``, and
Dask's callbacks (``dask.diagnostics.ProgressBar``, ``dask.callbacks.Callback``: ``start``,
``start_state``, ``pretask``, ``posttask``, ``finish``) are called as ``dask.local.get_async``
calls them. With a ``posttask`` callback, every node's result is fetched to the driver (the
callback takes it).
"""

from __future__ import annotations

import pickle
import queue
from typing import Any, Mapping

import cloudpickle

from . import get as get_values
from . import put, remote
from .exceptions import TaskError, original_error
from .library import init_if_needed

__all__ = ["get"]


def _run_node(node: bytes, keys: tuple, *values: Any) -> Any:
    return pickle.loads(node)(dict(zip(keys, values)))


def _dumps(node: Any) -> bytes:
    """A node's bytes: the C pickler when it can (most nodes name functions of importable
    modules, and a graph is thousands of nodes), cloudpickle for lambdas, local functions and
    the script's own."""
    try:
        data = pickle.dumps(node, protocol=5)
        if b"__main__" not in data:  # the script's own functions travel by value
            return data
    except Exception:
        pass
    return cloudpickle.dumps(node, protocol=5)


_run = remote(max_retries=3)(_run_node)


def _topological(dsk: Mapping, roots: list) -> list:
    """The keys ``roots`` need (themselves included), every node after its dependencies."""
    order: list = []
    state: dict = {}  # key -> 1 visiting, 2 done
    for root in roots:
        if state.get(root) == 2:
            continue
        stack = [(root, iter(dsk[root].dependencies))]
        state[root] = 1
        while stack:
            key, deps = stack[-1]
            for d in deps:
                if d not in dsk:
                    raise ValueError(f"Missing dependency {d!r} for dependents {{{key!r}}}")
                s = state.get(d)
                if s is None:
                    state[d] = 1
                    stack.append((d, iter(dsk[d].dependencies)))
                    break
                if s == 1:
                    raise RuntimeError(f"the graph has a cycle through {d!r}")
            else:
                stack.pop()
                state[key] = 2
                order.append(key)
    return order


def _submit_graph(dsk: Mapping, roots: list, options: dict) -> dict:
    """Submits the nodes of a converted graph that ``roots`` need; returns
    ``{key: ObjectRef}``."""
    from dask._task_spec import Alias, DataNode
    from dask.utils import key_split

    runs: dict = {}  # one remote function per node name, for logs and errors
    refs: dict = {}
    for key in _topological(dsk, roots):
        node = dsk[key]
        if isinstance(node, Alias):
            target = next(iter(node.dependencies), None)
            if target is not None:
                refs[key] = refs[target]
                continue
        if isinstance(node, DataNode):
            refs[key] = put(node.value)
            continue
        deps = tuple(node.dependencies)
        name = key_split(key)
        run = runs.get(name)
        if run is None:
            run = runs[name] = _run.options(**options, name=name)
        refs[key] = run.remote(_dumps(node), deps, *(refs[d] for d in deps))
    return refs


def _pack(keys: Any, values: dict) -> Any:
    """The values of ``keys`` in their shape, lists as tuples (as Dask's ``nested_get``)."""
    if isinstance(keys, list):
        return tuple(_pack(k, values) for k in keys)
    return values[keys]


def _flat(keys: Any, out: list) -> list:
    if isinstance(keys, list):
        for k in keys:
            _flat(k, out)
    else:
        out.append(keys)
    return out


def _run_with_callbacks(
    graph: Mapping, wanted: list, refs: dict, cache: Mapping, callbacks: list, state: dict
) -> None:
    """Calls Dask's callbacks as ``dask.local.get_async`` does while the submitted graph runs:
    ``start_state`` with Dask's scheduler state, ``pretask`` when a node's dependencies are
    done, ``posttask`` when it is done (with its result), in an order that keeps that state
    consistent (``state``, filled here, is that state). Raises the first node error it meets."""
    from dask.callbacks import unpack_callbacks
    from dask.local import finish_task, start_state_from_dask
    from dask.order import order

    _, start_state_cbs, pretask_cbs, posttask_cbs, _ = unpack_callbacks(callbacks)
    keyorder = order(graph)
    state.update(
        start_state_from_dask(graph, keys=set(wanted), cache=dict(cache), sortkey=keyorder.get)
    )
    for f in start_state_cbs:
        if f:
            f(graph, state)
    done: queue.SimpleQueue = queue.SimpleQueue()
    results = set(wanted)

    def fire() -> None:
        while state["ready"]:
            key = state["ready"].pop()
            state["running"].add(key)
            for f in pretask_cbs:
                f(key, graph, state)
            fut = refs[key].future()
            fut.add_done_callback(lambda fut, key=key: done.put((key, fut)))

    fire()
    while state["running"]:
        key, fut = done.get()
        if posttask_cbs:
            value = fut.result()
        else:  # no need to fetch the value
            err = fut.exception()
            if err is not None:
                raise err
            value = None
        state["cache"][key] = value
        finish_task(graph, key, state, results, keyorder.get)
        for f in posttask_cbs:
            f(key, value, graph, state, None)
        fire()


def get(
    dsk: Mapping,
    keys: Any,
    cache: Mapping | None = None,
    callbacks: Any = None,
    volley_options: Mapping | None = None,
    **kwargs: Any,
) -> Any:
    """Computes ``keys`` of the Dask graph ``dsk`` on volley (a Dask ``scheduler=``).

    ``keys`` may be one key or nested lists of keys; the result has the same shape, with
    tuples for lists (as Dask's schedulers). ``cache``: values for keys, which then do not
    run (as in ``dask.local.get_async``; default ``dask.config.get("cache")``). ``callbacks``:
    Dask callbacks for this call, besides the active ones (``with ProgressBar():``). Task
    options for every node (``num_cpus``, ``resources``, ``max_retries``) go in
    ``volley_options``; Dask's other keyword arguments are accepted and ignored.

    Raises ``KeyError`` for a key not in the graph and ``ValueError`` for a graph that names
    a key it lacks.

    >>> import dask.array as da, volley.dask
    >>> int(da.ones(1000, chunks=100).sum().compute(scheduler=volley.dask.get))
    1000
    """
    from dask import config
    from dask._task_spec import DataNode, convert_legacy_graph
    from dask.callbacks import local_callbacks, normalize_callback

    init_if_needed()
    options = dict(volley_options or {})
    if cache is None:
        cache = config.get("cache", None) or {}
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    graph = convert_legacy_graph(dict(dsk), all_keys=set(dsk) | set(cache))
    for k, v in cache.items():
        graph[k] = DataNode(k, v)
    wanted = list(dict.fromkeys(_flat(keys, [])))
    missing = [k for k in wanted if k not in graph]
    if missing:
        raise KeyError(f"keys not in the graph: {missing[:5]}")
    with local_callbacks(callbacks) as active:
        active = [normalize_callback(cb) for cb in active]
        started: list = []
        state: dict = {}
        failed = True
        try:
            for cb in active:
                if cb[0]:
                    cb[0](graph)
                started.append(cb)
            refs = _submit_graph(graph, wanted, options)
            try:
                if active:
                    _run_with_callbacks(graph, wanted, refs, cache, active, state)
                values = dict(zip(wanted, get_values([refs[k] for k in wanted])))
            except TaskError as e:
                if e.cause is None or isinstance(e.cause, Exception):
                    raise  # a TaskError that is also of the node's exception class
                # KeyboardInterrupt, SystemExit: raised as themselves, as Dask's schedulers.
                err = original_error(e)
                raise err from err.__cause__
            failed = False
        finally:
            for cb in started:
                if cb[4]:
                    cb[4](graph, state, failed)
    return _pack(keys, values)
