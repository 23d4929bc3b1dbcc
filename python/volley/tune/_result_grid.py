"""What ``Tuner.fit()`` returns: a ``ResultGrid`` of one ``Result`` per trial.

>>> import tempfile
>>> from volley import tune
>>> store = tempfile.mkdtemp()  # where the examples' runs go (default: ~/volley_results)
>>> def f(config):
...     return {"loss": (config["x"] - 2) ** 2}
>>> grid = tune.Tuner(f, param_space={"x": tune.grid_search([1, 2, 3])},
...                   tune_config=tune.TuneConfig(metric="loss", mode="min"),
...                   run_config=tune.RunConfig(storage_path=store, verbose=0)).fit()
>>> len(grid), grid.num_errors, grid.get_best_result().config
(3, 0, {'x': 2})
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ._checkpoint import Checkpoint

__all__ = ["Result", "ResultGrid"]

_SCOPES = ("last", "avg", "last-5-avg", "last-10-avg", "all")


class Result:
    """One trial's outcome: ``metrics`` (its last result), ``config``, ``checkpoint`` (its
    latest), ``error`` (None, or the error that ended it), ``path`` (its folder),
    ``metrics_dataframe`` (every result, a pandas DataFrame), ``best_checkpoints``
    (``(Checkpoint, metrics)`` of the checkpoints kept)."""

    def __init__(
        self,
        metrics: dict,
        config: dict,
        checkpoint: Checkpoint | None,
        error: BaseException | None,
        path: str | None,
        history: list[dict],
        best_checkpoints: list[tuple[Checkpoint, dict]],
        trial_id: str = "",
        status: str = "",
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.checkpoint = checkpoint
        self.error = error
        self.path = path
        self.best_checkpoints = best_checkpoints
        self.trial_id = trial_id
        self.status = status
        self._history = history

    @property
    def metrics_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame([_flat(r) for r in self._history])

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.metrics.items() if k != "config"}
        return f"Result(metrics={shown!r}, path={self.path!r}, error={self.error!r})"


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


class ResultGrid:
    """The results of a run: ``len``, ``grid[i]``, iteration (in trial order);
    ``get_best_result``, ``get_dataframe``, ``errors``, ``num_errors``, ``num_terminated``,
    ``experiment_path``."""

    def __init__(
        self, results: list[Result], experiment_path: str, metric: str | None, mode: str | None
    ) -> None:
        self._results = results
        self.experiment_path = experiment_path
        self._metric = metric
        self._mode = mode

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> list[BaseException]:
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        return sum(1 for r in self._results if r.status == "ERROR")

    @property
    def num_terminated(self) -> int:
        return sum(1 for r in self._results if r.status == "TERMINATED")

    def get_best_result(
        self,
        metric: str | None = None,
        mode: str | None = None,
        scope: str = "last",
        filter_nan_and_inf: bool = True,
    ) -> Result:
        """The trial best by ``metric`` in ``mode`` (default: the ``TuneConfig``'s), judged on
        its last result (``scope="last"``), the mean of all (``"avg"``), of the last 5 or 10
        (``"last-5-avg"``, ``"last-10-avg"``), or its best result ever (``"all"``)."""
        metric = metric or self._metric
        mode = mode or self._mode
        if not metric or not mode:
            raise ValueError(
                "get_best_result() needs a metric and a mode: pass them, or set them in "
                "TuneConfig(metric=..., mode=...)"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"get_best_result: mode must be 'min' or 'max', got {mode!r}")
        if scope not in _SCOPES:
            raise ValueError(f"get_best_result: scope must be one of {_SCOPES}, got {scope!r}")
        best: tuple[float, Result] | None = None
        for r in self._results:
            vals = [v for h in r._history if (v := _num(h.get(metric))) is not None]
            if not vals:
                continue
            if scope == "last":
                score = vals[-1]
            elif scope == "all":
                score = min(vals) if mode == "min" else max(vals)
            else:
                tail = vals if scope == "avg" else vals[-int(scope.split("-")[1]) :]
                score = sum(tail) / len(tail)
            if filter_nan_and_inf and math.isinf(score):
                continue
            if best is None or (score < best[0] if mode == "min" else score > best[0]):
                best = (score, r)
        if best is None:
            raise RuntimeError(
                f"get_best_result: no trial reported a number for {metric!r} "
                f"({len(self._results)} trials, {self.num_errors} failed)"
            )
        return best[1]

    def get_dataframe(
        self, filter_metric: str | None = None, filter_mode: str | None = None
    ) -> Any:
        """A pandas DataFrame with a row per trial: its last result (or, with
        ``filter_metric``/``filter_mode``, its best one by that metric), config keys as
        ``config/<name>``, and ``logdir``."""
        import pandas as pd

        if (filter_metric is None) != (filter_mode is None):
            raise ValueError("get_dataframe: give filter_metric and filter_mode together")
        if filter_mode is not None and filter_mode not in ("min", "max"):
            raise ValueError(
                f"get_dataframe: filter_mode must be 'min' or 'max', got {filter_mode!r}"
            )
        rows = []
        for r in self._results:
            row = r.metrics
            if filter_metric is not None:
                scored = [h for h in r._history if _num(h.get(filter_metric)) is not None]
                if scored:
                    pick = min if filter_mode == "min" else max
                    row = pick(scored, key=lambda h: h[filter_metric])
            flat = _flat({k: v for k, v in row.items() if k != "config"})
            flat.update(_flat(r.config, "config/"))
            flat["trial_id"] = r.trial_id
            flat["logdir"] = r.path
            rows.append(flat)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"ResultGrid<{len(self)} trials, {self.num_errors} errors, {self.experiment_path}>"
