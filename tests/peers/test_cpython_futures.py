"""CPython's own ``test_concurrent_futures``, its process-pool test classes, run against
``volley.futures.Executor``.

The module is CPython's: from its ``test`` package when the install has it, else Debian's
``libpython3.11-testsuite`` (``make test`` installs it), else the 3.10 copy of pyenv's 3.10.13.
It is loaded by path under the name ``cpython_test_concurrent_futures`` from a folder put on
``sys.path`` before volley starts, so that volley's workers import its functions by reference
(its initializer sets a global of that module, which must be the same module in the worker).

The classes are CPython's ``ProcessPoolSpawn*`` ones (volley's workers are fresh interpreters,
as with ``spawn``) with ``executor_type`` replaced by volley's ``Executor``; the two tests that
run a script in a subprocess (``assert_python_ok``) get a first line that makes
``concurrent.futures.ProcessPoolExecutor`` volley's ``Executor`` in that script. Tests of
``ProcessPoolExecutor``'s internals are skipped with the reason next to each, and so are the
documented design differences (docs/compatibility.md).

    .venv/bin/python -m pytest tests/peers/test_cpython_futures.py
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import unittest
import weakref
from pathlib import Path

import pytest

import volley
import volley.futures

pytestmark = pytest.mark.timeout(60)

MODULE = "cpython_test_concurrent_futures"


def _source() -> Path | None:
    """CPython's test_concurrent_futures.py (see the module docstring for the order)."""
    candidates = []
    try:
        spec = importlib.util.find_spec("test.test_concurrent_futures")
    except ImportError:
        spec = None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates.append(Path(f"/usr/lib/python{version}/test/test_concurrent_futures.py"))
    candidates.append(
        Path.home() / ".pyenv/versions/3.10.13/lib/python3.10/test/test_concurrent_futures.py"
    )
    return next((p for p in candidates if p.is_file()), None)


SOURCE = _source()
if SOURCE is None:
    pytest.skip(
        "CPython's test_concurrent_futures.py is not installed "
        "(apt-get install libpython3.11-testsuite; `make test` does it)",
        allow_module_level=True,
    )

_spec = importlib.util.find_spec(MODULE)
if _spec is not None and _spec.origin:
    # In a worker (which imports this module for the test classes, sent by reference): the
    # folder is on its sys.path already.
    _DIR = os.path.dirname(_spec.origin)
    cpython = importlib.import_module(MODULE)
else:
    # A folder of our own with the module under a name the workers can import.
    _DIR = tempfile.mkdtemp(prefix="volley-cpython-futures-")
    os.symlink(SOURCE, os.path.join(_DIR, MODULE + ".py"))
    sys.path.insert(0, _DIR)
    cpython = importlib.import_module(MODULE)
    sys.path.remove(_DIR)  # put back (for the workers) while this module's tests run


class ProcessPoolExecutor(volley.futures.Executor):
    """volley's Executor under the name the subprocess scripts import from concurrent.futures."""


# The scripts of test_interpreter_shutdown and test_submit_after_interpreter_shutdown import
# ProcessPoolExecutor from concurrent.futures and sleep_and_print from
# test.test_concurrent_futures: make both volley's and ours there.
_PRELUDE = f"""\
import sys
sys.path.insert(0, {_DIR!r})
import concurrent.futures, volley.futures
concurrent.futures.ProcessPoolExecutor = volley.futures.Executor
import {MODULE}
sys.modules["test.test_concurrent_futures"] = {MODULE}
"""
_assert_python_ok = cpython.assert_python_ok


def _assert_python_ok_on_volley(*args, **env):
    args = list(args)
    i = args.index("-c") + 1
    args[i] = _PRELUDE + args[i]
    return _assert_python_ok(*args, **env)


cpython.assert_python_ok = _assert_python_ok_on_volley

INTERNALS = "tests ProcessPoolExecutor's internals"
SKIPS = {
    "ProcessPoolShutdownTest": {
        "test_interpreter_shutdown": "design difference: a worker's output comes to the "
        "driver's stdout with a '(task pid=N) ' prefix on each line (volley.init's "
        "log_to_driver), so the script prints '(sleep_and_print pid=N) apple', not 'apple' "
        "(tests/test_executor_exit.py checks that the call finishes at exit)",
        "test_processes_terminate": f"{INTERNALS}: executor._processes (its process table)",
        "test_context_manager_shutdown": f"{INTERNALS}: executor._processes; also names "
        "concurrent.futures.ProcessPoolExecutor itself",
        "test_del_shutdown": f"{INTERNALS}: _executor_manager_thread, _call_queue, _processes",
        "test_shutdown_no_wait": f"{INTERNALS}: _executor_manager_thread, _call_queue, _processes",
        "test_hang_gh83386": "CPython skips it for ProcessPoolExecutor (it hangs, "
        "cpython#83386); its `executor_type == ProcessPoolExecutor` check does not see a "
        "substitute, so it would run its thread-pool script",
    },
    "ProcessPoolExecutorTest": {
        "test_killed_child": f"{INTERNALS}: kills a process from executor._processes "
        "(tests/test_executor_compat.py kills a worker and checks BrokenProcessPool)",
        "test_saturation": f"{INTERNALS}: counts executor._processes",
        "test_idle_process_reuse_one": f"{INTERNALS}: counts executor._processes",
        "test_idle_process_reuse_multiple": f"{INTERNALS}: counts executor._processes",
        "test_max_tasks_per_child": f"{INTERNALS}: counts executor._processes "
        "(tests/test_executor_compat.py checks the worker pids the same way)",
    },
    "ExecutorDeadlockTest": {
        "test_shutdown_deadlock_pickle": f"{INTERNALS}: joins executor._executor_manager_thread",
        "test_exit_during_result_pickle_on_worker": "design difference: a result whose pickling "
        "calls sys.exit() fails the call with volley.TaskError (the worker's serializer reports "
        "it), not with the SystemExit itself",
    },
    "FailingInitializerTest": {
        "test_initializer": "design difference: it passes a multiprocessing.Queue in initargs, "
        "which only a process's start can hand over (inheritance); volley pickles initargs "
        "for workers it started already (tests/test_executor_compat.py tests a failing "
        "initializer with a Manager queue)",
    },
}

# CPython's generated classes: ProcessPoolSpawn<Mixin>Test.
_CLASSES = [
    "ProcessPoolShutdownTest",
    "WaitTest",
    "AsCompletedTest",
    "ProcessPoolExecutorTest",
    "ExecutorDeadlockTest",
    "InitializerTest",
    "FailingInitializerTest",
]


def _free_reference(self: unittest.TestCase) -> None:
    """``test_free_reference`` as CPython fixed it (python/cpython#130957, in 3.14): the
    thread that completes a future holds the result for an instant after it hands it over,
    in any executor, so the weak reference is checked until it dies (here within 10 s) rather
    than at once. What it tests is unchanged: the map iterator keeps no result it returned
    (tests/test_executor_compat.py checks the same with the executor's bookkeeping empty)."""
    for obj in self.executor.map(cpython.make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        deadline = time.monotonic() + 10
        while True:
            cpython.support.gc_collect()
            if wr() is None:
                break
            self.assertLess(time.monotonic(), deadline, "a result map returned stays alive")
            time.sleep(0.01)


# CPython's tests replaced by the version CPython itself has now, with the reason above.
FIXED_UPSTREAM = {"ProcessPoolExecutorTest": {"test_free_reference": _free_reference}}


def _volley_class(name: str) -> type:
    base = getattr(cpython, "ProcessPoolSpawn" + name.replace("Test", "") + "Test")
    cls = type("Volley" + name, (base,), {"executor_type": ProcessPoolExecutor})
    for test, fixed in FIXED_UPSTREAM.get(name, {}).items():
        setattr(cls, test, fixed)
    for test, reason in SKIPS.get(name, {}).items():
        setattr(cls, test, unittest.skip(reason)(getattr(cls, test)))
    return cls


for _name in _CLASSES:
    globals()["Volley" + _name] = _volley_class(_name)
del _name


@pytest.fixture(scope="module", autouse=True)
def _volley_with_the_module_importable():
    """volley started with the module's folder on sys.path (the workers get the driver's)."""
    if volley.is_initialized():
        volley.shutdown()
    sys.path.insert(0, _DIR)
    volley.init(num_cpus=2)
    yield
    volley.shutdown()
    sys.path.remove(_DIR)
    shutil.rmtree(_DIR, ignore_errors=True)
