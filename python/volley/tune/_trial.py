"""A trial as the tuner, its searcher and its scheduler see it.

>>> from volley.tune._trial import Trial
>>> t = Trial("t0", {"x": 1})
>>> t.status, t.training_iteration
('PENDING', 0)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trial"]

PENDING, RUNNING, PAUSED, TERMINATED, ERROR = "PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR"


class Trial:
    """One run of the trainable with one config.

    ``status``: PENDING (not started, or to be restarted), RUNNING, PAUSED (stopped by its
    scheduler, to be resumed from its checkpoint), TERMINATED (done, or stopped for good),
    ERROR (failed more than ``max_failures`` times). ``last_result`` is its latest result
    (with ``training_iteration``, ``time_total_s``, ... as ``report`` adds them), ``history``
    every result in order, ``checkpoint`` its latest ``volley.tune.Checkpoint``.
    """

    PENDING, RUNNING, PAUSED, TERMINATED, ERROR = PENDING, RUNNING, PAUSED, TERMINATED, ERROR

    def __init__(self, trial_id: str, config: dict, resources: dict | None = None) -> None:
        self.trial_id = trial_id
        self.config = config
        self.resources = resources or {}
        self.status = PENDING
        self.last_result: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.checkpoint: Any = None
        self.error: str | None = None
        self.num_failures = 0
        self.path: str | None = None

    @property
    def training_iteration(self) -> int:
        return int(self.last_result.get("training_iteration", 0))

    def is_finished(self) -> bool:
        return self.status in (TERMINATED, ERROR)

    def __repr__(self) -> str:
        return f"Trial({self.trial_id!r}, {self.status}, {self.config!r})"
