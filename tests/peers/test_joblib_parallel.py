"""joblib's own ``joblib/test/test_parallel.py`` (the installed joblib's copy), run on volley.

Every test of that module that takes a backend (``backend``, ``parent_backend``,
``outer_backend``, ...) runs here with ``"volley"`` in place of joblib's own backends; inner
backends of nested tests run with ``"volley"`` and ``"threading"``. Tests that take no backend
run joblib's default backend unless listed in ``_UNDER_VOLLEY``, which run with ``"volley"``
made the default by ``parallel_config``. What is skipped, and why, is in ``_SKIP``: tests of
other backends' specifics (loky's executor reuse, multiprocessing's pickling, loky's memmap
files) and of joblib's internals that no backend changes.

Run: ``.venv/bin/python -m pytest tests/peers/test_joblib_parallel.py``
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any, Callable

import cloudpickle
import pytest
from _peer_tools import skipped

joblib = pytest.importorskip("joblib")
if tuple(int(p) for p in joblib.__version__.split(".")[:2]) < (1, 6):
    pytest.skip("written for joblib 1.6's test_parallel.py", allow_module_level=True)

import joblib.test.test_parallel as peer  # noqa: E402
from joblib import parallel_config  # noqa: E402

import volley  # noqa: E402
import volley.joblib  # noqa: E402, F401  (registers the backend)

pytestmark = [pytest.mark.usefixtures("volley_shared"), pytest.mark.timeout(60)]

# This module's own task functions travel by value: on a test cluster (VOLLEY_TEST_CLUSTER=1)
# the nodes cannot import it.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# The argument names through which test_parallel.py chooses backends.
_OUTER = {"backend", "parent_backend", "outer_backend"}
_INNER = {"child_backend", "inner_backend"}
_OUTER_VALUES = ["volley"]
_INNER_VALUES = ["volley", "threading"]

_OTHER_BACKEND = "about another backend's specifics, not the volley backend's"
_INTERNALS = "joblib's internals: no backend is involved"

# Test name -> why it does not run here.
_SKIP: dict[str, str] = {
    # Other backends' specifics.
    "test_nested_parallel_warnings": _OTHER_BACKEND + " (loky/multiprocessing nested warnings)",
    "test_background_thread_parallelism": _OTHER_BACKEND + " (loky/multiprocessing in threads)",
    "test_nested_loop_with_exception_with_loky": _OTHER_BACKEND + " (loky)",
    "test_mutate_input_with_threads": _OTHER_BACKEND + " (threading shares memory)",
    "test_parallel_pickling": _INTERNALS + " (Parallel objects are not picklable)",
    "test_parallel_byteorder_corruption": _OTHER_BACKEND + " (loky's memmap files)",
    "test_batching_auto_threading": _OTHER_BACKEND + " (threading)",
    "test_exception_dispatch": _INTERNALS + " (the default backend's error path)",
    "test_invalid_backend": _INTERNALS,
    "test_register_parallel_backend": _INTERNALS,
    "test_overwrite_default_backend": _INTERNALS,
    "test_backend_no_multiprocessing": _INTERNALS + " (only without multiprocessing)",
    "test_parameterized_backend_context_manager": _INTERNALS + " (joblib's fake backends)",
    "test_directly_parameterized_backend_context_manager": _INTERNALS,
    "test_retrieval_context": _INTERNALS + " (a test backend of its own)",
    "test_invalid_batch_size": _INTERNALS,
    "test_default_mp_context": _OTHER_BACKEND + " (multiprocessing's start method)",
    "test_parallel_with_interactively_defined_functions_loky": _OTHER_BACKEND + " (loky)",
    "test_parallel_with_interactively_defined_bound_method_loky": _OTHER_BACKEND + " (loky)",
    "test_memmap_with_big_offset": _OTHER_BACKEND + " (loky's memmap files)",
    "test_warning_about_timeout_not_supported_by_backend": _OTHER_BACKEND + " (sequential)",
    "test_memmapping_leaks": _OTHER_BACKEND + " (loky's memmap files)",
    "test_backend_hinting_and_constraints": _INTERNALS + " (prefer=/require= choose joblib's own)",
    "test_backend_hinting_and_constraints_with_custom_backends": _INTERNALS,
    "test_invalid_backend_hinting_and_constraints": _INTERNALS,
    "test_nested_parallelism_limit": _OTHER_BACKEND
    + " (loky/threading; volley's limit: test_nested_parallelism_limit_on_volley below)",
    "test_thread_bomb_mitigation": _OTHER_BACKEND
    + " (loky/threading; volley's: test_process_bomb_mitigation_on_volley below)",
    "test_parallel_thread_limit": _OTHER_BACKEND + " (needs joblib's compiled OpenMP helper)",
    "test_dask_backend_when_dask_not_installed": _INTERNALS,
    "test_zero_worker_backend": _INTERNALS + " (a test backend of its own)",
    "test_threadpool_limitation_in_child_loky": _OTHER_BACKEND + " (loky)",
    "test_threadpool_limitation_in_child_context": _OTHER_BACKEND + " (loky's inner threads)",
    "test_threadpool_limitation_in_child_override": _OTHER_BACKEND + " (loky's worker env)",
    "test_loky_reuse_workers": _OTHER_BACKEND + " (loky)",
    "test_initializer_reused": _OTHER_BACKEND + " (loky's worker reuse)",
    "test_initializer_not_reused": _OTHER_BACKEND + " (loky's worker reuse)",
    "test_cpu_count": _INTERNALS,
    "test_effective_n_jobs": _INTERNALS,
    "test_effective_n_jobs_None": _INTERNALS + " (the default backend's n_jobs)",
    "test_globals_update_at_each_parallel_call": _OTHER_BACKEND + " (loky's cloudpickle)",
    "test_nested_backend_in_sequential": _INTERNALS + " (joblib's own backends in sequential)",
    "test_error_capture": _INTERNALS + " (asserts on the pool objects of loky/multiprocessing,"
    " _pool/_workers; the errors themselves: test_error_capture_on_volley below)",
    # Design differences (docs/compatibility.md).
    "test_nested_backend_context_manager": "design difference: a Parallel inside a volley task"
    " runs on volley (one level deep), not on threads (test_nested_backend_on_volley below)",
    "test_auto_memmap_on_arrays_from_generator": "design difference: arrays reach the tasks"
    " through volley's object store as read-only numpy arrays, not as np.memmap files",
}

# Tests whose tasks take multiprocessing.Manager proxies (workers run with the driver's
# authkey: docs/processes.md), run with the marks they have, backend swapped or not.
_MANAGER_PROXIES = {
    "test_dispatch_multiprocessing",
    "test_initializer_context",
    "test_initializer_parallel",
}

# Tests that run a script in a subprocess naming backend "volley": the script imports
# volley.joblib first (joblib has no discovery of third-party backends).
_SCRIPTS = {
    "test_parallel_with_interactively_defined_functions",
    "test_parallel_with_unpicklable_functions_in_args",
}

# Tests that take no backend but run Parallel with the default one: run with volley as default.
_UNDER_VOLLEY: set[str] = {
    "test_parallel_kwargs",
    "test_dispatch_race_condition",
    "test_parallel_with_exhausted_iterator",
    "test_parallel_return_order_with_return_as_generator_parameter",
    "test_backend_hinting_always_running",
}


def _volley_marks(marks: list) -> list | None:
    """The marks with the backend parametrisations swapped for volley's; None when the test
    takes no backend."""
    out, swapped = [], False
    for m in marks:
        if m.name != "parametrize":
            out.append(m)
            continue
        names = m.args[0]
        names_list = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if len(names_list) == 1 and names_list[0] in _OUTER | _INNER:
            new = _OUTER_VALUES if names_list[0] in _OUTER else _INNER_VALUES
            out.append(pytest.mark.parametrize(names, new))
            swapped = True
        elif names_list[0] in _OUTER:
            # Rows (backend, expectations...): volley expects what threading does (each call
            # has its own workers, not a shared executor as loky's).
            rows = [("volley", *row[1:]) for row in m.args[1] if row[0] == "threading"]
            out.append(pytest.mark.parametrize(names, rows))
            swapped = True
        else:
            out.append(m)
    return out if swapped else None


def _copy(f: Callable, marks: list) -> Callable:
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__dict__.update(f.__dict__)
    g.__wrapped__ = f  # pytest reads the signature
    g.pytestmark = marks
    g.__module__ = __name__
    return g


def _wrapped(f: Callable, around: Callable[[], Any], marks: list | None = None) -> Callable:
    """``f`` run inside the context manager ``around()``."""

    def test(*args: Any, **kwargs: Any) -> Any:
        with around():
            return f(*args, **kwargs)

    test.__name__ = f.__name__
    test.__wrapped__ = f  # pytest reads the signature
    test.pytestmark = list(getattr(f, "pytestmark", []) if marks is None else marks)
    return test


def _check_subprocess_call_with_volley(cmd: list, **kwargs: Any) -> Any:
    """joblib's ``check_subprocess_call``, the script importing ``volley.joblib`` first."""
    exe, *rest = cmd
    if rest[0] == "-c":
        code = "import volley.joblib\n" + rest[1]
    else:
        code = f"import runpy, volley.joblib\nrunpy.run_path({rest[0]!r}, run_name='__main__')"
    return _peer_check_subprocess_call([exe, "-c", code], **kwargs)


_peer_check_subprocess_call = peer.check_subprocess_call


@contextlib.contextmanager
def _scripts_import_volley():
    peer.check_subprocess_call = _check_subprocess_call_with_volley
    try:
        yield
    finally:
        peer.check_subprocess_call = _peer_check_subprocess_call


def _collect() -> dict[str, Callable]:
    tests: dict[str, Callable] = {}
    for name, f in vars(peer).items():
        if not name.startswith("test_") or not isinstance(f, types.FunctionType):
            continue
        marks = list(getattr(f, "pytestmark", []))
        if name in _SKIP:
            tests[name] = skipped(name, _SKIP[name])
            continue
        swapped = _volley_marks(marks)
        if name in _MANAGER_PROXIES:
            tests[name] = _wrapped(f, contextlib.nullcontext, swapped)
        elif name in _SCRIPTS:
            tests[name] = _wrapped(f, _scripts_import_volley, swapped)
        elif swapped is not None:
            tests[name] = _copy(f, swapped)
        elif name in _UNDER_VOLLEY:
            tests[name] = _wrapped(f, lambda: parallel_config(backend="volley"))
        else:
            tests[name] = skipped(name, _INTERNALS + " (takes no backend)")
    return tests


globals().update(_collect())


# volley's versions of the tests above that are written for loky and threading only.


def _nested_backend_and_pids() -> tuple[str, list[int]]:
    from joblib import Parallel, delayed

    backend = type(peer.parallel.get_active_backend()[0]).__name__
    return backend, Parallel(n_jobs=2)(delayed(peer.sleep_and_return_pid)() for _ in range(2))


@pytest.mark.parametrize("context", [peer.parallel_config, peer.parallel_backend])
def test_nested_backend_on_volley(context: Any) -> None:
    """test_nested_backend_context_manager: the nested calls run on volley."""
    from joblib import Parallel, delayed

    with context("volley"):
        got = Parallel(n_jobs=2)(delayed(_nested_backend_and_pids)() for _ in range(4))
    assert {backend for backend, _ in got} == {"VolleyBackend"}


@pytest.mark.parametrize("context", [peer.parallel_config, peer.parallel_backend])
def test_nested_parallelism_limit_on_volley(context: Any) -> None:
    """test_nested_parallelism_limit: volley one level deep, then sequential."""
    with context("volley", n_jobs=2):
        got = peer._recursive_backend_info()
    assert got == [
        ("VolleyBackend", 0),
        ("VolleyBackend", 1),
        ("SequentialBackend", 2),
        ("SequentialBackend", 2),
    ]


@pytest.mark.parametrize("context", [peer.parallel_config, peer.parallel_backend])
def test_process_bomb_mitigation_on_volley(context: Any) -> None:
    """test_thread_bomb_mitigation: recursive Parallel ends in RecursionError."""
    with context("volley", n_jobs=2):
        with pytest.raises(RecursionError):
            peer._recursive_parallel()


def test_error_capture_on_volley() -> None:
    """test_error_capture without its checks of loky's pool objects."""
    from joblib import Parallel, delayed

    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            Parallel(n_jobs=2, backend="volley")(
                [delayed(peer.division)(x, y) for x, y in zip((0, 1), (1, 0))]
            )
        with pytest.raises(KeyboardInterrupt):
            Parallel(n_jobs=2, backend="volley")(
                [delayed(peer.interrupt_raiser)(x) for x in (1, 0)]
            )
    with Parallel(n_jobs=2, backend="volley") as parallel:
        with pytest.raises(ZeroDivisionError):
            parallel([delayed(peer.division)(x, y) for x, y in zip((0, 1), (1, 0))])
        assert parallel(delayed(peer.f)(x, y=1) for x in range(10)) == [
            peer.f(x, y=1) for x in range(10)
        ]
        with pytest.raises(KeyboardInterrupt):
            parallel([delayed(peer.interrupt_raiser)(x) for x in (1, 0)])
        assert parallel(delayed(peer.f)(x, y=1) for x in range(10)) == [
            peer.f(x, y=1) for x in range(10)
        ]
    with pytest.raises(peer.MyExceptionWithFinickyInit):
        Parallel(n_jobs=2, backend="volley")(
            delayed(peer.exception_raiser)(i, custom_exception=True) for i in range(30)
        )
