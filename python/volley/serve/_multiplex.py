"""Model multiplexing: one deployment serves many models, each replica keeping the few it used
last (Ray Serve's ``@serve.multiplexed``).

``@serve.multiplexed(max_num_models_per_replica=N)`` on an async method (or function) that loads
a model by its id makes it a cache: ``await self.get_model(model_id)`` returns the loaded model,
loading it only on a miss; a replica keeps at most ``N`` models, dropping the least recently
used one first (awaiting its ``aclose()``, or an ``async def __del__``, when it has one; a sync
``__del__`` runs when the last reference goes, which the cache's was). Concurrent calls for a
model being loaded wait for that one load.

Each replica publishes the ids it holds in the head's key-value table (namespace
``volley.serve``, key ``models/APP/DEPLOYMENT/ACTOR_ID``, JSON ``{"actor_id": ..., "models":
[...], "version": n}``), rewritten by one writer each time the set changes; handles read it to
send a model's calls to the replica that holds it (see ``_handle``).

>>> import asyncio
>>> loads = []
>>> @multiplexed(max_num_models_per_replica=2)
... async def get_model(model_id: str):
...     loads.append(model_id)
...     return model_id.upper()
>>> async def main():
...     return [await get_model(m) for m in ("a", "b", "a", "c", "b")]
>>> asyncio.run(main())
['A', 'B', 'A', 'C', 'B']
>>> loads  # "b" was evicted when "c" came (the least recently used), so it loaded again
['a', 'b', 'c', 'b']
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable

__all__ = ["models_key", "models_prefix", "multiplexed"]


def models_prefix(app: str, deployment: str) -> str:
    """The KV prefix of a deployment's per-replica model documents."""
    return f"models/{app}/{deployment}/"


def models_key(app: str, deployment: str, actor_id: str) -> str:
    """The KV key where replica ``actor_id`` lists the models it holds."""
    return models_prefix(app, deployment) + actor_id


class _Reporter:
    """This process's replica's published model set (one replica per process)."""

    def __init__(self) -> None:
        self.app = ""
        self.deployment = ""
        self.actor_id = ""
        self.caches: weakref.WeakSet[_ModelCache] = weakref.WeakSet()
        self.version = 0
        self.written = -1
        self.writing = False
        self.lock = threading.Lock()

    def models(self) -> list[str]:
        out: list[str] = []
        for c in list(self.caches):
            out.extend(c.models)
        return sorted(set(out))

    def changed(self) -> None:
        """The set changed: one writer (a thread) publishes the latest set."""
        if not self.actor_id:
            return
        with self.lock:
            self.version += 1
            if self.writing:
                return
            self.writing = True
        threading.Thread(target=self._write, name="volley-serve-models", daemon=True).start()

    def _write(self) -> None:
        from volley import library

        from ._common import NAMESPACE

        while True:
            with self.lock:
                v = self.version
                if v == self.written:
                    self.writing = False
                    return
            doc = {"actor_id": self.actor_id, "models": self.models(), "version": v}
            try:
                library.kv_put(
                    models_key(self.app, self.deployment, self.actor_id),
                    json.dumps(doc),
                    namespace=NAMESPACE,
                )
            except Exception as e:  # the head is gone: nothing reads it either
                sys.stderr.write(f"volley.serve: could not publish this replica's models: {e}\n")
                with self.lock:
                    self.writing = False
                return
            with self.lock:
                self.written = v

    def forget(self) -> None:
        """The replica stops: its document goes (handles stop sending models here)."""
        if not self.actor_id:
            return
        from volley import library

        from ._common import NAMESPACE

        try:
            library.kv_delete(
                models_key(self.app, self.deployment, self.actor_id), namespace=NAMESPACE
            )
        except Exception:  # the head is gone too
            pass


_reporter = _Reporter()


def _replica_started(app: str, deployment: str, actor_id: str) -> None:
    """Called by the replica once it knows its actor id: later model changes are published."""
    _reporter.app, _reporter.deployment, _reporter.actor_id = app, deployment, actor_id
    if _reporter.models():
        _reporter.changed()


async def _unload(model: Any) -> None:
    close = getattr(model, "aclose", None)
    if close is None:
        d = getattr(type(model), "__del__", None)
        close = model.__del__ if inspect.iscoroutinefunction(d) else None
        if close is not None:
            # Python calls an async __del__ again when the object goes, making a coroutine
            # nobody awaits: the one that counts was awaited here, so that warning is noise.
            warnings.filterwarnings(
                "ignore", r"coroutine '.*__del__' was never awaited", RuntimeWarning
            )
    if close is None:
        return
    try:
        out = close()
        if inspect.isawaitable(out):
            await out
    except Exception as e:  # an unload failing must not fail the request that evicted it
        sys.stderr.write(f"volley.serve: unloading a model failed: {type(e).__name__}: {e}\n")


class _ModelCache:
    """The LRU of one multiplexed loader for one owner (a replica's instance)."""

    def __init__(self, load: Callable[..., Any], owner: Any, capacity: int) -> None:
        self.load = load
        self.owner = owner
        self.capacity = capacity
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loading: dict[str, asyncio.Future] = {}
        self.loads = 0  # how many loads ran (a replica's stats)
        _reporter.caches.add(self)

    async def get(self, model_id: str) -> Any:
        if not isinstance(model_id, str) or not model_id:
            raise TypeError(
                f"a multiplexed model id is a non-empty str, not {model_id!r} (did the request "
                "carry the serve_multiplexed_model_id header or "
                "handle.options(multiplexed_model_id=...)?)"
            )
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        pending = self.loading.get(model_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.loading[model_id] = fut
        try:
            self.loads += 1
            args = (model_id,) if self.owner is None else (self.owner, model_id)
            model = await self.load(*args)
        except BaseException as e:
            del self.loading[model_id]
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        del self.loading[model_id]
        evicted = []
        while len(self.models) >= self.capacity:
            evicted.append(self.models.popitem(last=False)[1])
        self.models[model_id] = model
        fut.set_result(model)
        _reporter.changed()
        while evicted:  # (no reference stays here: a sync __del__ runs as the pop's goes)
            await _unload(evicted.pop(0))
        return model


def multiplexed(
    func: Callable[..., Any] | None = None, *, max_num_models_per_replica: int = 3
) -> Any:
    """Makes an async model loader ``async def get_model(self, model_id)`` (a method of a
    deployment's class, or a function) a per-replica LRU cache of at most
    ``max_num_models_per_replica`` models; call it with
    ``await self.get_model(serve.get_multiplexed_model_id())``. As Ray Serve's
    ``@serve.multiplexed``.

    >>> multiplexed(max_num_models_per_replica=0)
    Traceback (most recent call last):
    ...
    ValueError: max_num_models_per_replica is a positive int (or -1: no limit), not 0
    """
    n = max_num_models_per_replica
    if not isinstance(n, int) or isinstance(n, bool) or (n < 1 and n != -1):
        raise ValueError(
            f"max_num_models_per_replica is a positive int (or -1: no limit), not {n!r}"
        )
    capacity = n if n > 0 else sys.maxsize

    def wrap(load: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(load):
            raise TypeError(
                f"@serve.multiplexed takes an async function (async def ...(self, model_id)), "
                f"not {load!r}"
            )
        params = [
            p
            for p in inspect.signature(load).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) not in (1, 2):
            raise TypeError(
                f"@serve.multiplexed: {load.__qualname__} takes the model id (after self, for "
                f"a method) and nothing else; it takes {[p.name for p in params]}"
            )
        is_method = len(params) == 2
        attr = f"__volley_models_{load.__name__}"
        state: dict[str, _ModelCache] = {}

        if is_method:

            @functools.wraps(load)
            async def method(self: Any, model_id: str) -> Any:
                cache = self.__dict__.get(attr)
                if cache is None:
                    cache = _ModelCache(load, self, capacity)
                    self.__dict__[attr] = cache
                return await cache.get(model_id)

            return method

        @functools.wraps(load)
        async def function(model_id: str) -> Any:
            cache = state.get("cache")
            if cache is None:
                cache = state.setdefault("cache", _ModelCache(load, None, capacity))
            return await cache.get(model_id)

        return function

    return wrap(func) if func is not None else wrap
