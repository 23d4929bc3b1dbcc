"""Ray's ``ray.util.multiprocessing`` module: ``Pool`` is ``volley.multiprocessing.Pool``."""

from __future__ import annotations

from ..multiprocessing import Pool

__all__ = ["Pool"]
