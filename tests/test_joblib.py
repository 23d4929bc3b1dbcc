"""The joblib backend, and scikit-learn on it."""

from __future__ import annotations

import time

import numpy as np
import pytest

import volley

joblib = pytest.importorskip("joblib")
from joblib import Parallel, delayed, parallel_config  # noqa: E402

import volley.joblib  # noqa: E402, F401  (registers the backend)

pytestmark = pytest.mark.usefixtures("volley_shared")


def square(x):
    return x * x


def fails_at_5(x):
    if x == 5:
        raise KeyError("five")
    time.sleep(0.01)
    return x


def array_facts(a, i):
    return float(a.sum()) + i, a.flags.writeable


def inner_sum(n):
    return sum(Parallel(n_jobs=2)(delayed(square)(i) for i in range(n)))


def test_parallel_runs_on_volley_with_auto_batching():
    with parallel_config(backend="volley"):
        p = Parallel(n_jobs=-1)
        assert p(delayed(square)(i) for i in range(2000)) == [i * i for i in range(2000)]
        assert "VolleyBackend" in type(p._backend).__name__
        # Auto-batching: far fewer batches than calls for tiny calls.
        assert p.n_dispatched_batches < 2000
    assert Parallel(n_jobs=2, backend="volley")(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_generators_ordered_and_unordered():
    with parallel_config(backend="volley", n_jobs=2):
        gen = Parallel(return_as="generator")(delayed(square)(i) for i in range(20))
        assert not isinstance(gen, list)
        assert list(gen) == [i * i for i in range(20)]
        un = Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(20))
        assert sorted(un) == [i * i for i in range(20)]


def test_an_exception_is_raised_and_aborts_the_rest():
    with parallel_config(backend="volley", n_jobs=2):
        with pytest.raises(KeyError, match="five") as info:
            Parallel(batch_size=1)(delayed(fails_at_5)(i) for i in range(200))
    assert "fails_at_5" in info.value.remote_traceback


def test_large_arrays_travel_through_the_store_once_without_temp_files(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path))
    a = np.arange(4 << 20, dtype=np.float64)  # 32 MiB
    with parallel_config(backend="volley", n_jobs=2):
        out = Parallel()(delayed(array_facts)(a, i) for i in range(6))
    assert [o[0] for o in out] == [float(a.sum()) + i for i in range(6)]
    assert not any(o[1] for o in out), "read-only views of the stored value, as loky memmaps"
    assert list(tmp_path.iterdir()) == []  # no memmap files


def test_nested_parallel_inside_tasks_does_not_deadlock():
    # Every CPU runs an outer call that waits for its inner calls.
    with parallel_config(backend="volley", n_jobs=2):
        got = Parallel(batch_size=1)(delayed(inner_sum)(n) for n in range(2, 8))
    assert got == [sum(i * i for i in range(n)) for n in range(2, 8)]


def test_verbose_shows_a_progress_bar(capsys):
    with parallel_config(backend="volley", n_jobs=2):
        Parallel(verbose=5)(delayed(square)(i) for i in range(50))
    assert "joblib" in capsys.readouterr().err


def test_scikit_learn_gives_the_same_results_as_with_loky():
    sklearn = pytest.importorskip("sklearn")
    del sklearn
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    X, y = make_classification(n_samples=300, n_features=8, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}

    def search():
        gs = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=-1)
        gs.fit(X, y)
        return gs.best_params_, gs.cv_results_["mean_test_score"].tolist()

    def cv():
        clf = DecisionTreeClassifier(random_state=0)
        return cross_val_score(clf, X, y, cv=5, n_jobs=-1).tolist()

    with parallel_config(backend="loky", n_jobs=2):
        expected = (search(), cv())
    with parallel_config(backend="volley"):
        assert (search(), cv()) == expected


def die_once(x, marker):
    import os
    import signal

    if x == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_a_killed_worker_is_retried(tmp_path):
    marker = str(tmp_path / "m")
    with parallel_config(backend="volley", n_jobs=2):
        assert Parallel(batch_size=1)(delayed(die_once)(i, marker) for i in range(5)) == [
            0, 1, 2, 3, 4
        ]  # fmt: skip
