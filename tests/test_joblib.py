"""The joblib backend, and scikit-learn on it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    DRIVER_PRELUDE,
    finish_driver,
    kill_driver,
    start_driver,
    write_script,
)

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


# ------------------------------------------------------------------ nesting (bugs 6 and 11)


@pytest.mark.one_node("counts the driver's own worker processes via /proc")
def test_recursive_parallel_ends_in_recursion_error_not_a_process_bomb(tmp_path):
    # Before: every nested level ran on volley, one blocked worker per call: 119 processes and
    # 4.8 GiB after 20 s. max_workers caps this run (the old code ends in UnschedulableError).
    script = write_script(
        tmp_path,
        DRIVER_PRELUDE
        + """
import threading
import volley.joblib
from joblib import Parallel, delayed, parallel_config

def recurse():
    return Parallel()(delayed(recurse)() for _ in range(2))

volley.init(num_cpus=2, max_workers=24)
peak, stop = 0, threading.Event()

def watch():
    global peak
    while not stop.is_set():
        peak = max(peak, len(my_worker_pids()))
        time.sleep(0.01)

watcher = threading.Thread(target=watch)
watcher.start()
try:
    with parallel_config(backend="volley", n_jobs=2):
        recurse()
    print("RESULT returned")
except RecursionError as e:
    print("RESULT RecursionError", isinstance(e, volley.TaskError))
except Exception as e:
    print("RESULT", type(e).__name__, str(e)[:300].replace("\\n", " "))
stop.set()
watcher.join()
print("PEAK", peak)
""",
    )
    proc = start_driver(script)
    try:
        out, err = finish_driver(proc, timeout=120)
    finally:
        kill_driver(proc)
    assert "RESULT RecursionError True" in out, out + err
    # Level 0: 2 tasks, blocked, each lending its CPU to level 1 (2 tasks each), which recurse
    # sequentially: 6 workers, plus the pool's own 2 and some slack for restarts.
    peak = int(out.split("PEAK ")[1].split()[0])
    assert peak <= 10, out


def backend_and_level() -> tuple[str, int | None, int]:
    from joblib.parallel import get_active_backend

    backend = get_active_backend()[0]
    return type(backend).__name__, backend.nesting_level, os.getpid()


def nested_levels() -> list:
    return [
        backend_and_level(),
        *Parallel(n_jobs=2)(delayed(backend_and_level)() for _ in range(2)),
    ]


def test_nested_calls_run_on_volley_one_level_then_sequentially():
    # Before: the backend arrived in the tasks with nesting_level None (joblib's
    # ParallelBackendBase.__init__ reset it on unpickling): every level said 0.
    with parallel_config(backend="volley", n_jobs=2):
        got = Parallel()(delayed(nested_levels)() for _ in range(2))
    for outer in got:
        # In the outer task: volley at level 1; in the inner ones: sequential at level 2.
        assert [(name, level) for name, level, _ in outer] == [
            ("VolleyBackend", 1),
            ("SequentialBackend", 2),
            ("SequentialBackend", 2),
        ]


def record_init(directory: str, tag: str) -> None:
    with open(os.path.join(directory, f"{tag}-{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass


def inits_seen(directory: str, tag: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(f"{tag}-{os.getpid()}-"))


def test_initializer_runs_once_per_worker_before_its_first_task(tmp_path):
    # Before: initializer and initargs were accepted and silently ignored.
    d = str(tmp_path)
    with parallel_config(backend="volley", n_jobs=2, initializer=record_init, initargs=(d, "a")):
        seen = Parallel(batch_size=1)(delayed(inits_seen)(d, "a") for _ in range(20))
    assert all(len(s) == 1 for s in seen), seen  # once in each worker, before its first task
    seen = Parallel(n_jobs=2, backend="volley", initializer=record_init, initargs=(d, "b"))(
        delayed(inits_seen)(d, "b") for _ in range(20)
    )
    assert all(len(s) == 1 for s in seen), seen
    first_pids = {s[0].split("-")[1] for s in seen}
    # A second Parallel call runs its initializer again in workers that ran the first (and
    # once in a worker the first call did not use: the pool may hand the call another one).
    seen = Parallel(n_jobs=2, backend="volley", initializer=record_init, initargs=(d, "b"))(
        delayed(inits_seen)(d, "b") for _ in range(20)
    )
    for s in seen:
        assert len(s) == (2 if s[0].split("-")[1] in first_pids else 1), seen
    assert any(s[0].split("-")[1] in first_pids for s in seen), seen
    assert len(list(Path(d).iterdir())) >= 3


def test_bad_initializer_and_unknown_arguments_fail_at_the_call():
    with pytest.raises(TypeError, match="initializer must be callable"):
        Parallel(n_jobs=2, backend="volley", initializer=3)(delayed(square)(i) for i in range(2))
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        Parallel(n_jobs=2, backend="volley", initializer=print, initargs=5)(
            delayed(square)(i) for i in range(2)
        )
    with pytest.raises(TypeError, match="no argument colour"):
        Parallel(n_jobs=2, backend="volley", colour=1)(delayed(square)(i) for i in range(2))


def interrupt(x):
    raise KeyboardInterrupt


def test_keyboard_interrupt_in_a_task_is_raised_as_itself():
    with pytest.raises(KeyboardInterrupt):
        Parallel(n_jobs=2, backend="volley")(delayed(interrupt)(i) for i in range(2))


def nap_then_touch(path: str) -> None:
    time.sleep(3)
    with open(path, "w"):
        pass


def test_dropping_a_generator_stops_its_batches(tmp_path):
    # An interrupt could miss a batch that was just starting (it then ran on for its whole
    # duration, holding its CPU): abort kills the workers of the running batches, as loky does.
    for trial in range(20):
        g = Parallel(n_jobs=2, backend="volley", return_as="generator")(
            delayed(nap_then_touch)(str(tmp_path / f"{trial}-{i}")) for i in range(4)
        )
        # Rebinding g drops the first generator: joblib aborts its call.
        g = Parallel(n_jobs=2, backend="volley", return_as="generator")(
            delayed(square)(i) for i in range(4)
        )
        assert list(g) == [0, 1, 4, 9]
    time.sleep(4)
    assert list(tmp_path.iterdir()) == []
