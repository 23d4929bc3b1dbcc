"""CPython's own shared value and array tests (``test._test_multiprocessing``'s ``_TestValue``
and ``_TestArray``), run against ``volley.multiprocessing``'s ``Value``, ``Array``,
``RawValue`` and ``RawArray``.

The classes are built as CPython's ``install_tests_in_module_dict`` builds its
``WithProcesses*`` ones (a test mixin, a type mixin, ``unittest.TestCase``), with a "volley"
type mixin whose ``Value``/``Array``/``RawValue``/``RawArray`` are volley's and whose ``Lock`` is
``volley.sync.Lock``. The tests hand the shared objects to a child ``Process`` that writes them
and check the writes in the parent. Until ``volley.multiprocessing.Process`` lands (another part
of issue 21), the child is a volley task run through :class:`TaskProcess` (the objects travel
pickled, as handles of the same memory, to a worker process): a stricter test than the
standard library's fork, where the child inherits the memory. Switch ``Process`` below to
``volley.multiprocessing.Process`` once it exists.

Nothing is skipped: the two classes test behaviour only.

    .venv/bin/python -m pytest tests/peers/test_cpython_values.py
"""

from __future__ import annotations

import sys
import unittest
from typing import Any, Callable

import pytest

import volley
import volley.multiprocessing
import volley.sync

cpython = pytest.importorskip(
    "test._test_multiprocessing", reason="CPython's test package is not installed"
)

pytestmark = [
    pytest.mark.timeout(60),
    # The test classes travel to the workers (``Process(target=self.f)``) by reference: they
    # import on this machine's workers, not on a cluster's nodes; and the shared memory is this
    # node's.
    pytest.mark.one_node("the test classes are importable by this machine's workers only"),
]


@pytest.fixture(scope="module", autouse=True)
def _volley(_volley_module_scope):
    if not volley.is_initialized():
        sys.modules["conftest"]._init_2cpu()
    yield


class TaskProcess:
    """The part of ``multiprocessing.Process`` these tests use (``start``, ``join``,
    ``daemon``), as a volley task: ``target(*args)`` runs in a worker process."""

    def __init__(self, target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None):
        self._target, self._args, self._kwargs = target, args, kwargs or {}
        self.daemon = False
        self._ref: Any = None
        self.exitcode: int | None = None

    def start(self) -> None:
        self._ref = volley.remote(self._target).remote(*self._args, **self._kwargs)

    def join(self, timeout: float | None = None) -> None:
        volley.get(self._ref, timeout=60 if timeout is None else timeout)
        self.exitcode = 0


class VolleyValuesMixin(cpython.ProcessesMixin):
    """CPython's "processes" type, with volley's shared values and arrays."""

    TYPE = "processes"
    Process = TaskProcess
    Lock = staticmethod(volley.sync.Lock)
    RLock = staticmethod(volley.sync.RLock)
    Value = staticmethod(volley.multiprocessing.Value)
    Array = staticmethod(volley.multiprocessing.Array)
    RawValue = staticmethod(volley.multiprocessing.RawValue)
    RawArray = staticmethod(volley.multiprocessing.RawArray)


class WithVolleyTestValue(cpython._TestValue, VolleyValuesMixin, unittest.TestCase):
    pass


class WithVolleyTestArray(cpython._TestArray, VolleyValuesMixin, unittest.TestCase):
    pass
