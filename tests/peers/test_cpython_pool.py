"""CPython's own pool tests (``test._test_multiprocessing``), run against
``volley.multiprocessing.Pool``.

The classes are built as CPython's ``install_tests_in_module_dict`` builds its
``WithProcesses*`` ones (a test mixin, a type mixin, ``unittest.TestCase``), with a "volley" type
mixin whose ``Pool`` is volley's. The tests that call ``multiprocessing.Pool`` directly (the
worker errors and lifetime classes, the initializer test) get volley's there too while they run.
Only tests of CPython's internals (``p._pool``, ``_repopulate_pool``, a mocked process class)
and one that runs the standard library's own Pool are skipped, with the reason next to each
(docs/compatibility.md); each has a test of its own in ``tests/test_pool_sharing.py`` or
``tests/test_multiprocessing.py`` where there is behaviour to check.

    .venv/bin/python -m pytest tests/peers/test_cpython_pool.py
    VOLLEY_TEST_CLUSTER=1 .venv/bin/python -m pytest tests/peers/test_cpython_pool.py
"""

from __future__ import annotations

import multiprocessing
import sys
import unittest

import pytest

import volley
import volley.multiprocessing

cpython = pytest.importorskip(
    "test._test_multiprocessing", reason="CPython's test package is not installed"
)

pytestmark = [pytest.mark.timeout(60)]

VolleyPool = volley.multiprocessing.Pool


@pytest.fixture(scope="module", autouse=True)
def _volley(_volley_module_scope):
    """One 2-CPU volley (or the test cluster) for the module; the classes' ``setUpClass``
    opens pools, so it must be up before them."""
    if not volley.is_initialized():
        sys.modules["conftest"]._init_2cpu()
    yield


@pytest.fixture(autouse=True)
def _volley_is_multiprocessing_pool(monkeypatch):
    """``multiprocessing.Pool(...)`` in a test body is volley's Pool."""
    monkeypatch.setattr(multiprocessing, "Pool", VolleyPool)
    yield


class VolleyMixin(cpython.ProcessesMixin):
    """CPython's "processes" type, with volley's Pool."""

    TYPE = "processes"
    Pool = staticmethod(VolleyPool)


def _skip(reason: str):
    """A test method that is skipped with ``reason``."""

    @unittest.skip(reason)
    def skipped(self: unittest.TestCase) -> None:
        pass

    return skipped


class WithVolleyTestPool(cpython._TestPool, VolleyMixin, unittest.TestCase):
    # Internals: the first half (Pool(-1) and Pool(0) raise ValueError) holds, then it counts
    # the pool's multiprocessing.Process objects in `p._pool`, which volley's pool has not
    # (its chunks run as volley tasks). tests/test_multiprocessing.py checks the ValueErrors.
    test_make_pool = _skip("CPython internals: len(p._pool), the pool's Process objects")


class WithVolleyTestPoolWorkerErrors(cpython._TestPoolWorkerErrors, VolleyMixin, unittest.TestCase):
    pass


class WithVolleyTestPoolWorkerLifetime(
    cpython._TestPoolWorkerLifetime, VolleyMixin, unittest.TestCase
):
    # Internals: reads the pids of `p._pool` and calls `p._repopulate_pool()`. The behaviour
    # (a process retires after maxtasksperchild chunks of the pool) is checked by
    # test_pool_sharing.py::test_maxtasksperchild_retires_the_process_after_n_chunks_of_the_pool.
    test_pool_worker_lifetime = _skip("CPython internals: p._pool pids, p._repopulate_pool()")
    # Runs the standard library's Pool in a child interpreter (`from multiprocessing import
    # Pool`): nothing of volley's to test. The same script with volley's Pool is
    # tests/test_pool_sharing.py::test_a_pool_left_open_in_a_global_at_exit_does_not_hang.
    test_worker_finalization_via_atexit_handler_of_multiprocessing = _skip(
        "runs the stdlib's Pool in a subprocess; the volley version is in test_pool_sharing.py"
    )


class TestInitializers(cpython.TestInitializers):
    # Only the pool's test: the manager's is not about pools.
    test_manager_initializer = None


class TestPoolNotLeakOnFailure(cpython.TestPoolNotLeakOnFailure):
    # Internals: builds multiprocessing.pool.Pool with a mocked context whose Process class
    # fails to start; volley's pool starts no processes of its own.
    test_release_unused_processes = _skip(
        "CPython internals: multiprocessing.pool.Pool with a mocked Process class"
    )


class TestStdinBadfiledescriptor(cpython.TestStdinBadfiledescriptor):
    # Only the pool's test: a Pool used in a child process started by multiprocessing.
    test_queue_in_process = None
    test_flushing = None
    # test_pool_in_process: volley's Pool in a fork-started child of this volley process (the
    # child starts a volley of its own: docs/processes.md).


# The test classes travel to the workers (``p.apply(self._test_traceback)``) by reference, so
# that tracebacks show CPython's source lines (and the classes' state, such as a running pool,
# stays here). On one machine the workers import this file as ``test_cpython_pool``; a test
# cluster's nodes import it as ``peers.test_cpython_pool`` (tests/ is their working_dir), so
# there the classes go by that name.
def _named_for_the_nodes(name: str = "peers.test_cpython_pool") -> None:
    sys.modules.setdefault(name, sys.modules[__name__])
    for cls in [v for v in globals().values() if isinstance(v, type)]:
        if cls.__module__ == __name__:
            cls.__module__ = name


if getattr(sys.modules.get("conftest"), "CLUSTER_MODE", False):
    _named_for_the_nodes()
