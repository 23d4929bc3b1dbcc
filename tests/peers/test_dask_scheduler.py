"""Dask's own scheduler tests, run on ``volley.dask.get``.

- ``dask.utils_test.GetFunctionTestMixin``: the tests Dask provides for any ``get`` function.
- The tests of ``dask/tests/test_local.py``, ``dask/tests/test_threaded.py``,
  ``dask/tests/test_callbacks.py`` and ``dask/diagnostics/tests/test_progress.py`` that are
  about what any scheduler does (results, nested keys, errors, callbacks, the progress bar,
  missing dependencies): run with Dask's ``get_sync`` / ``dask.threaded.get`` replaced by
  ``volley.dask.get`` (and volley as the default scheduler). The tests of those schedulers' own
  machinery (their state functions, thread pools, threads, signals) are skipped, with the
  reason next to each in ``_SKIP``.

Run: ``.venv/bin/python -m pytest tests/peers/test_dask_scheduler.py``
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable

import pytest
from _peer_tools import skipped

dask = pytest.importorskip("dask")
import dask.diagnostics.tests.test_progress as peer_progress  # noqa: E402
import dask.local  # noqa: E402, F811
import dask.tests.test_callbacks as peer_callbacks  # noqa: E402
import dask.tests.test_local as peer_local  # noqa: E402
import dask.tests.test_threaded as peer_threaded  # noqa: E402
import dask.threaded  # noqa: E402
from dask.utils_test import GetFunctionTestMixin  # noqa: E402

import volley.dask  # noqa: E402

pytestmark = [pytest.mark.usefixtures("volley_shared"), pytest.mark.timeout(60)]

_LOCAL = "dask.local's own machinery (its state functions), not a scheduler's behaviour"
_THREADS = "dask.threaded's own machinery (thread pools, threads), not a scheduler's behaviour"
_DRIVER_STATE = "the tasks mutate the driver's memory (volley runs them in other processes)"

_SKIP: dict[str, str] = {
    # test_local.py
    "test_start_state": _LOCAL,
    "test_start_state_looks_at_cache": _LOCAL,
    "test_start_state_with_redirects": _LOCAL,
    "test_start_state_with_independent_but_runnable_tasks": _LOCAL,
    "test_start_state_with_tasks_no_deps": _LOCAL,
    "test_finish_task": _LOCAL,
    "test_sort_key": _LOCAL,
    "test_cache_options": _DRIVER_STATE + " (asserts on the scheduler's cache inside a task)",
    "test_ordering": _DRIVER_STATE + " (appends to a list of the driver's)",
    "test_complex_ordering": "the synchronous scheduler's one-at-a-time order of pretask calls"
    " (volley runs ready nodes in parallel; its pretask order follows completion)",
    # test_threaded.py
    "test_reuse_pool": _THREADS,
    "test_pool_kwarg": _THREADS,
    "test_threaded_within_thread": _THREADS,
    "test_dont_spawn_too_many_threads": _THREADS,
    "test_dont_spawn_too_many_threads_CPU_COUNT": _THREADS,
    "test_thread_safety": _THREADS,
    "test_interrupt": _THREADS + " (SIGINT to the driver's main thread)",
    "test_contextvars": _THREADS + " (contextvars of the driver's threads)",
    "test_context_aware_warnings": _THREADS + " (warnings in the driver's threads)",
    # test_callbacks.py
    "test_nested_schedulers": _DRIVER_STATE + " (a callback object used inside a task is"
    " that process's copy; the driver's copy is asserted on)",
    # test_progress.py
    "test_format_time": "a formatting helper of dask.diagnostics: no scheduler involved",
}


class TestVolleyGet(GetFunctionTestMixin):
    """Dask's tests for any ``get`` function."""

    get = staticmethod(volley.dask.get)


@contextlib.contextmanager
def _volley_as_dask_schedulers():
    """``dask.threaded.get`` and ``dask.local.get_sync`` are volley's for the test (some tests
    import them inside their body)."""
    saved = dask.threaded.get, dask.local.get_sync
    dask.threaded.get = dask.local.get_sync = volley.dask.get
    try:
        with dask.config.set(scheduler=volley.dask.get):
            yield
    finally:
        dask.threaded.get, dask.local.get_sync = saved


_DASK_GETS = (dask.threaded.get, dask.local.get_sync)


def _swap_marks(marks: list) -> list:
    """Parametrisations over Dask's get functions take volley's instead."""
    out = []
    for m in marks:
        if m.name == "parametrize" and any(v in _DASK_GETS for v in m.args[1]):
            values = [volley.dask.get if v in _DASK_GETS else v for v in m.args[1]]
            m = pytest.mark.parametrize(m.args[0], values, **m.kwargs).mark
        out.append(m)
    return out


def _on_volley(f: Callable) -> Callable:
    """``f`` with its module's ``get``/``get_sync`` being ``volley.dask.get``."""
    names = dict(f.__globals__)
    for name in ("get", "get_sync", "get_threaded"):
        if name in names:
            names[name] = volley.dask.get
    g = types.FunctionType(f.__code__, names, f.__name__, f.__defaults__, f.__closure__)
    g.__dict__.update(f.__dict__)

    def test(*args: Any, **kwargs: Any) -> Any:
        with _volley_as_dask_schedulers():
            return g(*args, **kwargs)

    test.__name__ = f.__name__
    test.__wrapped__ = f  # pytest reads the signature
    test.pytestmark = _swap_marks(list(getattr(f, "pytestmark", [])))
    return test


def _collect() -> dict[str, Callable]:
    tests: dict[str, Callable] = {}
    for module in (peer_local, peer_threaded, peer_callbacks, peer_progress):
        for name, f in vars(module).items():
            if not name.startswith("test_") or not isinstance(f, types.FunctionType):
                continue
            t = _on_volley(f) if name not in _SKIP else skipped(name, _SKIP[name])
            tests[f"{name}__{module.__name__.rsplit('.', 1)[1]}"] = t
    return tests


globals().update(_collect())
