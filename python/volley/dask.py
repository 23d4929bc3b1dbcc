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
"""

from __future__ import annotations

import pickle
from typing import Any, Mapping

from . import _api

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
    import cloudpickle

    return cloudpickle.dumps(node, protocol=5)


_run = _api.remote(max_retries=3)(_run_node)


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
                    raise KeyError(f"the graph names {d!r}, which is not in it")
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
            refs[key] = _api.put(node.value)
            continue
        deps = tuple(node.dependencies)
        name = key_split(key)
        run = runs.get(name)
        if run is None:
            run = runs[name] = _run.options(**options, name=name)
        refs[key] = run.remote(_dumps(node), deps, *(refs[d] for d in deps))
    return refs


def _pack(keys: Any, values: dict) -> Any:
    if isinstance(keys, list):
        return [_pack(k, values) for k in keys]
    return values[keys]


def _flat(keys: Any, out: list) -> list:
    if isinstance(keys, list):
        for k in keys:
            _flat(k, out)
    else:
        out.append(keys)
    return out


def get(dsk: Mapping, keys: Any, **kwargs: Any) -> Any:
    """Computes ``keys`` of the Dask graph ``dsk`` on volley (a Dask ``scheduler=``).

    ``keys`` may be one key or nested lists of keys; the result has the same shape. Task
    options for every node (``num_cpus``, ``resources``, ``max_retries``) go in
    ``volley_options``; Dask's other keyword arguments are accepted and ignored.

    >>> import dask.array as da, volley.dask
    >>> int(da.ones(1000, chunks=100).sum().compute(scheduler=volley.dask.get))
    1000
    """
    from dask._task_spec import convert_legacy_graph

    _api._ensure_init()
    options = dict(kwargs.get("volley_options") or {})
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    graph = convert_legacy_graph(dict(dsk))
    wanted = list(dict.fromkeys(_flat(keys, [])))
    missing = [k for k in wanted if k not in graph]
    if missing:
        raise KeyError(f"keys not in the graph: {missing[:5]}")
    refs = _submit_graph(graph, wanted, options)
    values = dict(zip(wanted, _api.get([refs[k] for k in wanted])))
    return _pack(keys, values)
