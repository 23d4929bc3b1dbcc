"""Thread pools of numeric libraries in workers: as many threads as the task holds CPUs (at least
one), unless the user's environment says otherwise."""

from __future__ import annotations

import os

import pytest

import volley

VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

pytestmark = pytest.mark.usefixtures("no_volley")


@volley.remote
def thread_vars():
    return {v: os.environ.get(v) for v in VARS}


@volley.remote
def blas_threads():
    import numpy as np
    from threadpoolctl import threadpool_info

    np.dot(np.ones((4, 4)), np.ones((4, 4)))  # the BLAS library loaded and used
    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})


def _clear(monkeypatch):
    for v in VARS:
        monkeypatch.delenv(v, raising=False)


def test_a_task_gets_as_many_library_threads_as_it_holds_cpus(monkeypatch):
    _clear(monkeypatch)
    volley.init(num_cpus=2)
    one, two = dict.fromkeys(VARS, "1"), dict.fromkeys(VARS, "2")
    assert volley.get(thread_vars.remote()) == one
    assert volley.get(thread_vars.options(num_cpus=2).remote()) == two
    # Half a CPU is still one thread; and a worker goes back to one after a 2-CPU task.
    assert volley.get([thread_vars.options(num_cpus=0.5).remote() for _ in range(4)]) == [one] * 4
    assert volley.get(thread_vars.remote()) == one


def test_a_blas_already_loaded_follows_the_tasks_cpus(monkeypatch):
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numpy")
    _clear(monkeypatch)
    volley.init(num_cpus=2)
    # The same worker (one task at a time on a 2-CPU node: a 2-CPU task takes both) loads
    # BLAS with one thread, then runs with two, then one again.
    assert volley.get(blas_threads.options(num_cpus=2).remote()) == [2]
    for want in ([1], [2], [1]):
        cpus = want[0]
        got = volley.get([blas_threads.options(num_cpus=cpus).remote() for _ in range(2)])
        assert got == [want] * 2


def test_a_thread_count_the_user_set_is_left_alone(monkeypatch):
    _clear(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    volley.init(num_cpus=2)
    want = {v: ("3" if v == "OMP_NUM_THREADS" else None) for v in VARS}
    assert volley.get(thread_vars.remote()) == want
    assert volley.get(thread_vars.options(num_cpus=2).remote()) == want
