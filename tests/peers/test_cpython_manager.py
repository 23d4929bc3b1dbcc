"""CPython's own manager tests (``test._test_multiprocessing``), run against
``volley.multiprocessing.Manager``.

The classes are built as CPython's ``install_tests_in_module_dict`` builds its
``WithManager*`` ones (a test mixin, the "manager" type mixin, ``unittest.TestCase``), with a
mixin whose manager is volley's (``ManagerMixin.setUpClass`` calls ``multiprocessing.Manager()``:
it is volley's while the class is set up). The test bodies start child processes with
``self.Process``: a child forked by the standard library cannot use its parent's volley
(docs/processes.md), so here a child is a volley actor (a process of its own, on any node, that
runs the target and exits), ``volley.multiprocessing.Process`` where it exists.

``_TestMyManager`` subclasses the standard library's ``BaseManager``; it is rebuilt here on
volley's, with the same registrations (``Foo``, ``Bar`` with ``exposed``, ``baz`` with an
iterator proxy whose base is volley's ``BaseProxy``). Tests of CPython's internals are skipped
with the reason next to each.

Classes not run, and why:

- ``_TestRemoteManager``: a manager served on a TCP address with the ``xmlrpclib`` serializer;
  volley's manager is reached through volley (``address`` is its name), with pickle.
  tests/test_mp_manager.py::test_connect_attaches_to_a_started_manager_by_its_name attaches a
  second manager object to a running one.
- ``_TestManagerRestart``: restarts a manager on the same TCP port after a shutdown (the
  socket's ``SO_REUSEADDR``): there is no socket.
- The ``_TestValue`` and ``_TestArray`` classes are ``processes`` only in CPython
  (``ALLOWED_TYPES``); ``SyncManagerTypes.test_value`` and ``test_array`` run here.

    .venv/bin/python -m pytest tests/peers/test_cpython_manager.py
"""

from __future__ import annotations

import multiprocessing
import sys
import unittest

import pytest

import volley
import volley.multiprocessing
from volley.multiprocessing import managers as vmanagers

cpython = pytest.importorskip(
    "test._test_multiprocessing", reason="CPython's test package is not installed"
)

pytestmark = [
    pytest.mark.timeout(120),
    # Child processes run the test classes' methods, which travel by reference: importable by
    # this machine's workers, not by a cluster's nodes (tests/test_mp_manager.py has the
    # cluster's tests).
    pytest.mark.one_node("the test classes are importable by this machine's workers only"),
]


@pytest.fixture(scope="module", autouse=True)
def _volley(_volley_module_scope):
    """One 2-CPU volley for the module; the classes' ``setUpClass`` starts a manager."""
    if not volley.is_initialized():
        sys.modules["conftest"]._init_2cpu()
    yield


@volley.remote(num_cpus=0)
class _Child:
    """A child process of a test: runs its target once."""

    def run(self, target, args, kwargs) -> None:
        target(*args, **kwargs)

    def pid(self) -> int:
        import os

        return os.getpid()


class _ActorProcess:
    """``multiprocessing.Process``'s face over a volley actor, for the tests' children when
    ``volley.multiprocessing.Process`` is not there: ``start``, ``join(timeout)``,
    ``exitcode`` (0, or 1 if the target raised), ``is_alive``, ``terminate``, ``daemon``."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs or {})
        self.name = name or "volley-child"
        self.daemon = bool(daemon)
        self._actor = self._ref = None
        self._exitcode = None

    def start(self) -> None:
        self._actor = _Child.remote()
        self._ref = self._actor.run.remote(self._target, self._args, self._kwargs)

    @property
    def pid(self) -> int:
        return volley.get(self._actor.pid.remote())

    def join(self, timeout: float | None = None) -> None:
        ready, _ = volley.wait([self._ref], timeout=timeout)
        if ready and self._exitcode is None:
            try:
                volley.get(self._ref)
                self._exitcode = 0
            except volley.ActorDiedError:
                self._exitcode = -9
            except Exception:
                self._exitcode = 1
            volley.kill(self._actor)

    def is_alive(self) -> bool:
        if self._ref is None:
            return False
        self.join(0)
        return self._exitcode is None

    @property
    def exitcode(self) -> int | None:
        self.join(0) if self._ref is not None else None
        return self._exitcode

    def terminate(self) -> None:
        if self._actor is not None and self._exitcode is None:
            volley.kill(self._actor)
            self._exitcode = -15

    kill = terminate


VolleyProcess = getattr(volley.multiprocessing, "Process", None) or _ActorProcess


@pytest.fixture(autouse=True)
def _volley_is_multiprocessing_manager(monkeypatch):
    """``multiprocessing.Manager()`` in a test body is volley's."""
    monkeypatch.setattr(multiprocessing, "Manager", volley.multiprocessing.Manager)
    yield


class VolleyManagerMixin(cpython.ManagerMixin):
    """CPython's "manager" type, with volley's manager and volley's child processes."""

    Process = VolleyProcess

    @classmethod
    def setUpClass(cls):
        cpython.BaseMixin.setUpClass.__func__(cls)
        cls.manager = volley.multiprocessing.Manager()

    @classmethod
    def tearDownClass(cls):
        cls.manager.shutdown()
        cls.manager.join()
        cls.manager = None
        cpython.BaseMixin.tearDownClass.__func__(cls)


def _skip(reason: str):
    """A test method that is skipped with ``reason``."""

    @unittest.skip(reason)
    def skipped(self: unittest.TestCase) -> None:
        pass

    return skipped


class WithVolleyManagerTestContainers(
    cpython._TestContainers, VolleyManagerMixin, unittest.TestCase
):
    pass


class WithVolleyManagerTestQueue(cpython._TestQueue, VolleyManagerMixin, unittest.TestCase):
    pass


class WithVolleyManagerTestLock(cpython._TestLock, VolleyManagerMixin, unittest.TestCase):
    pass


class WithVolleyManagerTestSemaphore(cpython._TestSemaphore, VolleyManagerMixin, unittest.TestCase):
    pass


class WithVolleyManagerTestCondition(cpython._TestCondition, VolleyManagerMixin, unittest.TestCase):
    pass


class WithVolleyManagerTestEvent(cpython._TestEvent, VolleyManagerMixin, unittest.TestCase):
    # Internals: the standard library's proxy class name in the repr. volley's manager hands
    # out the volley.sync.Event itself (its own picklable handle, no proxy), whose repr is
    # "Event(id=...)"; tests/test_mp_manager.py checks it is a volley.sync.Event.
    test_repr = _skip("CPython internals: the repr of the stdlib's EventProxy class")


class WithVolleyManagerTestPool(cpython._TestPool, VolleyManagerMixin, unittest.TestCase):
    # Design difference: an error making an object in volley's manager comes back with its own
    # class, as an error of a method does (Pool(0) raises ValueError); the standard library
    # turns it into a RemoteError holding the text. The rest of the test reads p._pool.
    # tests/test_mp_manager.py checks the ValueError.
    test_make_pool = _skip(
        "design difference: a creation error keeps its class (ValueError, not RemoteError)"
    )


class WithVolleyManagerTestBarrier(cpython._TestBarrier, VolleyManagerMixin, unittest.TestCase):
    pass


# --------------------------------------------------------------- _TestMyManager on volley's base


class IteratorProxy(vmanagers.BaseProxy):
    """The test module's ``IteratorProxy``, on volley's ``BaseProxy``."""

    _exposed_ = ("__next__",)

    def __iter__(self):
        return self

    def __next__(self):
        return self._callmethod("__next__")


class MyManager(vmanagers.BaseManager):
    pass


MyManager.register("Foo", callable=cpython.FooBar)
MyManager.register("Bar", callable=cpython.FooBar, exposed=("f", "_h"))
MyManager.register("baz", callable=cpython.baz, proxytype=IteratorProxy)


class _ManagerProcess:
    """What ``manager._process.exitcode`` reads after shutdown: the manager's actor was
    stopped cleanly (volley's manager has no ``multiprocessing.Process`` of its own)."""

    exitcode = 0


class WithVolleyManagerTestMyManager(cpython._TestMyManager, unittest.TestCase):
    def setUp(self):
        cpython.MyManager = MyManager  # the test bodies read the module's global
        self.addCleanup(setattr, cpython, "MyManager", _stdlib_MyManager)
        MyManager._process = _ManagerProcess()


_stdlib_MyManager = cpython.MyManager


class TestSyncManagerTypes(cpython.TestSyncManagerTypes):
    """Each type made by volley's ``SyncManager`` in the parent and used in a child."""

    manager_class = vmanagers.SyncManager

    # Design difference (docs/compatibility.md, "Locks are leases"): the child acquires the
    # lock (one unit of the semaphore) and ends; volley releases what a process held when it
    # ends, so the parent's release then finds it free. tests/test_sync.py checks the lease
    # (test_a_holder_sigkilled_hands_the_lock_on_with_the_flag and the next ones).
    test_lock = _skip("design difference: a lock's holder that ends releases it (a lease)")
    test_bounded_semaphore = _skip(
        "design difference: a semaphore unit's holder that ends gives it back (a lease)"
    )

    def setUp(self):
        patch = pytest.MonkeyPatch()
        patch.setattr(multiprocessing, "Process", VolleyProcess)
        self.addCleanup(patch.undo)
        super().setUp()
