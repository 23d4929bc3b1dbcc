"""Every ``>>>`` example in the volley package runs, and shows what it says.

A module's examples run in the order they stand in it, as a reader meets them, and share their
names (an example may use the ``Counter`` that the one above it made), with the module's own
names, ``volley``, and ``volley.library`` as ``library``. An example that calls
``volley.init``, ``volley.shutdown`` or ``volley.is_initialized`` starts with volley shut down;
the others share one running volley (the first call starts it, as in a program). Examples that
need a cluster or a GPU carry ``# doctest: +SKIP``, one line at a time.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import volley
from volley import library

PACKAGE = Path(volley.__file__).parent
MODULES = sorted(
    ".".join(("volley", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        found.extend(t for t in finder.find(module) if t.examples)
    return sorted(found, key=lambda t: (t.filename or "", t.lineno or 0))


TESTS = _tests()
FRESH = ("volley.init(", "volley.shutdown(", "volley.is_initialized(")
_shared: dict[str, dict] = {}  # a module's names made by its examples so far


def test_the_package_has_examples():
    assert len(TESTS) > 40
    assert sum(len(t.examples) for t in TESTS) > 120


@pytest.mark.parametrize("test", TESTS, ids=[t.name for t in TESTS])
def test_example(test: doctest.DocTest):
    if any(word in e.source for e in test.examples for word in FRESH) and volley.is_initialized():
        volley.shutdown()
    shared = _shared.setdefault(test.filename or "", {})
    test.globs = {**test.globs, **shared, "volley": volley, "library": library}
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=False)
    shared.update(test.globs)
    assert result.failed == 0, "".join(out)


def test_zz_shut_down():
    """The examples' volley is not left running for the next test module."""
    if volley.is_initialized():
        volley.shutdown()
