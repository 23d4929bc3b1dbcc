"""Searchers: what config the next trial runs. The tuner asks ``suggest(trial_id)`` whenever it
can start a trial, and tells the searcher each result and each trial's end.

``BasicVariantGenerator`` (the default) resolves the ``param_space`` itself: grid axes crossed,
distributions sampled (see ``volley.tune.generate_variants``). A searcher of your own subclasses
``Searcher``; ``ConcurrencyLimiter`` and ``OptunaSearch`` (``volley.tune.search.optuna``) are
built on the same interface.

>>> from volley import tune
>>> from volley.tune.search import BasicVariantGenerator, Searcher
>>> gen = BasicVariantGenerator(random_state=0)
>>> gen.set_search_properties("loss", "min", {"x": tune.grid_search([1, 2])}, num_samples=1)
True
>>> [gen.suggest(f"t{i}") for i in range(3)]
[{'x': 1}, {'x': 2}, 'FINISHED']
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from .._space import generate_variants

__all__ = ["BasicVariantGenerator", "ConcurrencyLimiter", "Repeater", "Searcher"]


class Searcher:
    """The interface between the tuner and a search algorithm.

    ``suggest(trial_id)`` returns the config of a new trial, ``None`` when it has none to give
    now (asked again later, e.g. once a running trial completes), or ``Searcher.FINISHED`` when
    it will give no more. ``metric``/``mode`` ("min" or "max") may come from the constructor or
    from the tuner (``set_search_properties``), which refuses a run where neither says them and
    the searcher needs them."""

    FINISHED = "FINISHED"

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Called by the tuner before the first ``suggest``: the run's ``metric``, ``mode`` and
        ``param_space`` (``config``), and ``spec`` (``num_samples``). Returns False if this
        searcher cannot take them (the tuner then raises, naming it)."""
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An intermediate result of a running trial."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """The trial ended: ``result`` is its last result (None if it failed before any),
        ``error`` whether it failed."""

    def get_state(self) -> dict:
        """What ``Tuner.restore`` needs to go on (picklable); the default keeps nothing."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restores what ``get_state`` returned."""


class BasicVariantGenerator(Searcher):
    """Random and grid search over the ``param_space``: ``num_samples`` times every combination
    of its ``grid_search`` axes, distributions drawn from ``random_state`` (an int seed or a
    ``random.Random``). ``max_concurrent`` (0: no limit) caps the trials running at once."""

    def __init__(
        self, random_state: int | random.Random | None = None, max_concurrent: int = 0
    ) -> None:
        super().__init__()
        if max_concurrent < 0:
            raise ValueError(f"max_concurrent must be >= 0, got {max_concurrent}")
        self._rng = (
            random_state if isinstance(random_state, random.Random) else random.Random(random_state)
        )
        self.max_concurrent = max_concurrent
        self._variants: Iterator[dict] | None = None
        self._space: tuple[dict, int] = ({}, 1)
        self._start: Any = None
        self._given = 0
        self._live: set[str] = set()

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        super().set_search_properties(metric, mode, config, **spec)
        self._space = (config, spec.get("num_samples", 1))
        self._start = self._rng.getstate()
        self._variants = generate_variants(config, self._space[1], self._rng)
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._variants is None:
            raise RuntimeError("set_search_properties() must be called before suggest()")
        if self.max_concurrent and len(self._live) >= self.max_concurrent:
            return None
        config = next(self._variants, None)
        if config is None:
            return Searcher.FINISHED
        self._given += 1
        self._live.add(trial_id)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self._live.discard(trial_id)

    def get_state(self) -> dict:
        return {"given": self._given, "start": self._start}

    def set_state(self, state: dict) -> None:
        """Goes on after the configs already given: the same ones again from the same start
        (seeded: the very same), skipped (the tuner calls ``set_search_properties`` first)."""
        if self._variants is None:
            raise RuntimeError("set_search_properties() must be called before set_state()")
        self._rng.setstate(state["start"])
        self._start = state["start"]
        self._variants = generate_variants(self._space[0], self._space[1], self._rng)
        for _ in range(state["given"]):
            next(self._variants, None)
        self._given = state["given"]


# At the end: the wrappers subclass Searcher, defined above.
from ._limiter import ConcurrencyLimiter, Repeater  # noqa: E402
