"""Searchers that wrap another: ``ConcurrencyLimiter`` (at most N of its trials at once) and
``Repeater`` (each config run N times, the searcher told their mean).

>>> from volley import tune
>>> from volley.tune.search import BasicVariantGenerator, ConcurrencyLimiter
>>> lim = ConcurrencyLimiter(BasicVariantGenerator(random_state=0), max_concurrent=2)
>>> lim.set_search_properties("loss", "min", {"x": tune.grid_search([1, 2, 3])}, num_samples=1)
True
>>> [lim.suggest(f"t{i}") for i in range(3)]  # the third waits for a free place
[{'x': 1}, {'x': 2}, None]
>>> lim.on_trial_complete("t0", {"loss": 1.0})
>>> lim.suggest("t2")
{'x': 3}
"""

from __future__ import annotations

import copy
import math
from typing import Any

from . import Searcher

__all__ = ["ConcurrencyLimiter", "Repeater"]


def _check_searcher(searcher: object) -> Searcher:
    if not isinstance(searcher, Searcher):
        raise TypeError(
            f"searcher must be a volley.tune.search.Searcher, got {type(searcher).__name__}"
        )
    return searcher


class ConcurrencyLimiter(Searcher):
    """Lets at most ``max_concurrent`` trials of ``searcher`` run at once: ``suggest`` returns
    None (the tuner asks again later) while that many are live. With ``batch=True`` it waits
    for the whole batch of ``max_concurrent`` to end before it suggests the next batch (for
    searchers that learn best from complete batches); as in Ray Tune.

    The same as Ray's ``ConcurrencyLimiter`` except that a trial id the limiter never
    suggested, completing, changes nothing (Ray's counts it in ``batch`` mode), and bad
    arguments fail here, not at the first suggest.

    >>> from volley.tune.search import BasicVariantGenerator
    >>> ConcurrencyLimiter(BasicVariantGenerator(), max_concurrent=0)
    Traceback (most recent call last):
    ...
    ValueError: max_concurrent must be a positive int, got 0
    """

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False) -> None:
        self.searcher = _check_searcher(searcher)
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise TypeError(f"max_concurrent must be an int, got {type(max_concurrent).__name__}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a positive int, got {max_concurrent}")
        super().__init__(searcher.metric, searcher.mode)
        self.max_concurrent = max_concurrent
        self.batch = bool(batch)
        self._live: set[str] = set()
        self._batch_done: set[str] = set()

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self._live) >= self.max_concurrent:
            return None
        if self.batch and self._batch_done:
            # A batch is still ending: the next starts when all of it has.
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._live.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._live:
            return
        self.searcher.on_trial_complete(trial_id, result, error)
        if not self.batch:
            self._live.discard(trial_id)
            return
        self._batch_done.add(trial_id)
        if self._batch_done >= self._live:
            self._live.clear()
            self._batch_done.clear()

    @property
    def live_trials(self) -> frozenset[str]:
        """The trials suggested and not yet complete (in ``batch`` mode: of the current batch)."""
        return frozenset(self._live)

    def get_state(self) -> dict:
        return {
            "searcher": self.searcher.get_state(),
            "live": sorted(self._live),
            "batch_done": sorted(self._batch_done),
        }

    def set_state(self, state: dict) -> None:
        self.searcher.set_state(state["searcher"])
        self._live = set(state["live"])
        self._batch_done = set(state["batch_done"])


class Repeater(Searcher):
    """Runs each config of ``searcher`` ``repeat`` times (e.g. with different seeds: each copy
    gets ``config[SEED_KEY] = 0 .. repeat-1`` when ``set_index`` is true) and tells
    ``searcher`` one result per config: the mean of the ``metric`` over the copies that
    reported it, once all have ended (``error=True`` if every copy failed).

    Use it under a ``ConcurrencyLimiter`` with ``max_concurrent`` a multiple of ``repeat``,
    so that the copies of one config run together (as with Ray's ``Repeater``).

    >>> from volley import tune
    >>> from volley.tune.search import BasicVariantGenerator
    >>> rep = Repeater(BasicVariantGenerator(random_state=0), repeat=2)
    >>> rep.set_search_properties("loss", "min", {"x": tune.grid_search([1])}, num_samples=1)
    True
    >>> [rep.suggest(t) for t in ("a", "b", "c")]
    [{'x': 1, '__trial_index__': 0}, {'x': 1, '__trial_index__': 1}, 'FINISHED']
    """

    SEED_KEY = "__trial_index__"

    def __init__(self, searcher: Searcher, repeat: int = 1, set_index: bool = True) -> None:
        self.searcher = _check_searcher(searcher)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be a positive int, got {repeat!r}")
        super().__init__(searcher.metric, searcher.mode)
        self.repeat = repeat
        self.set_index = set_index
        # group id (the inner searcher's trial id) -> its copies' trial ids and results
        self._groups: dict[str, dict[str, Any]] = {}
        self._group_of: dict[str, str] = {}
        self._current: tuple[str, dict, int] | None = None  # group id, config, copies given

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._current is None:
            config = self.searcher.suggest(trial_id)
            if not isinstance(config, dict):
                return config
            self._current = (trial_id, config, 0)
            self._groups[trial_id] = {"trials": [], "results": [], "ended": 0, "errors": 0}
        group, config, given = self._current
        out = copy.deepcopy(config)
        if self.set_index:
            out[self.SEED_KEY] = given
        self._groups[group]["trials"].append(trial_id)
        self._group_of[trial_id] = group
        given += 1
        self._current = None if given >= self.repeat else (group, config, given)
        return out

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        group = self._group_of.pop(trial_id, None)
        if group is None:
            return
        g = self._groups[group]
        g["ended"] += 1
        if error or result is None or self.metric is None or self.metric not in result:
            g["errors"] += 1
        else:
            g["results"].append(result)
        if g["ended"] < self.repeat:
            return
        del self._groups[group]
        if not g["results"]:
            self.searcher.on_trial_complete(group, None, error=True)
            return
        assert self.metric is not None
        mean = math.fsum(r[self.metric] for r in g["results"]) / len(g["results"])
        merged = dict(g["results"][-1])
        merged[self.metric] = mean
        self.searcher.on_trial_complete(group, merged, error=False)

    def get_state(self) -> dict:
        return {
            "searcher": self.searcher.get_state(),
            "groups": copy.deepcopy(self._groups),
            "group_of": dict(self._group_of),
            "current": copy.deepcopy(self._current),
        }

    def set_state(self, state: dict) -> None:
        self.searcher.set_state(state["searcher"])
        self._groups = state["groups"]
        self._group_of = state["group_of"]
        self._current = state["current"]
