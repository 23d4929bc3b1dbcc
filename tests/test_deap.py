"""DEAP with volley.map as the toolbox's map evolves exactly as with the built-in map."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import volley

pytest.importorskip("deap")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import deap_onemax  # noqa: E402

pytestmark = pytest.mark.usefixtures("volley_shared")


def test_a_seeded_run_evolves_the_same_with_volley_map():
    expected = deap_onemax.evolve(map)
    got = deap_onemax.evolve(volley.map)
    assert got == expected
    assert got[1][-1] > got[1][0]  # it did evolve
