"""Helpers shared by the peer-suite harnesses in this folder."""

from __future__ import annotations

from typing import Callable

import pytest


def skipped(name: str, reason: str) -> Callable:
    """One skipped test standing for the peer's test ``name`` (not one per parametrisation),
    with ``reason`` shown by ``pytest -rs``."""

    def test() -> None:
        pass

    test.__name__ = name
    test.pytestmark = [pytest.mark.skip(reason=reason)]
    return test
