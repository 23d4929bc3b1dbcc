"""volley.dask.get: Dask graphs on volley give what Dask's own schedulers give."""

from __future__ import annotations

import operator

import numpy as np
import pytest

import volley

dask = pytest.importorskip("dask")
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402

import volley.dask  # noqa: E402

pytestmark = pytest.mark.usefixtures("volley_shared")


def test_dask_array_matches_the_sync_scheduler():
    x = da.random.RandomState(0).random((600, 600), chunks=(150, 150))
    y = (x + x.T).mean(axis=0) - x.std()
    np.testing.assert_allclose(y.compute(scheduler=volley.dask.get), y.compute(scheduler="sync"))
    big = da.ones((2000, 2000), chunks=(1000, 1000))  # 8-MiB blocks through the store
    assert float((big * 2).sum().compute(scheduler=volley.dask.get)) == 8_000_000


def test_dask_bag_and_dataframe_match_the_sync_scheduler():
    bag = (
        db.from_sequence(range(1000), npartitions=8)
        .map(lambda v: v * 3)
        .filter(lambda v: v % 2 == 0)
    )
    assert bag.sum().compute(scheduler=volley.dask.get) == bag.sum().compute(scheduler="sync")
    assert bag.frequencies().compute(scheduler=volley.dask.get) == bag.frequencies().compute(
        scheduler="sync"
    )
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    df = pd.DataFrame({"k": np.arange(2000) % 7, "v": np.arange(2000.0)})
    ddf = dd.from_pandas(df, npartitions=5)
    q = ddf[ddf.v > 100].groupby("k").v.agg(["mean", "count"])
    pd.testing.assert_frame_equal(q.compute(scheduler=volley.dask.get), q.compute(scheduler="sync"))


def test_config_set_and_raw_graphs_with_nested_keys():
    with dask.config.set(scheduler=volley.dask.get):
        assert float(da.ones(1000, chunks=100).sum().compute()) == 1000.0
    dsk = {"a": 1, "b": (operator.add, "a", 2), "c": (operator.mul, "b", 10), "unused": (len, 5)}
    # Tuples for lists, as Dask's own schedulers (dask.local.nested_get).
    assert volley.dask.get(dsk, ["c", ["b", "a"]]) == (30, (3, 1))
    assert volley.dask.get(dsk, ["c", ["b", "a"]]) == dask.get(dsk, ["c", ["b", "a"]])
    assert volley.dask.get(dsk, "c") == 30  # "unused" is never run (it would raise)
    with pytest.raises(KeyError, match="not in the graph"):
        volley.dask.get(dsk, "zzz")


def explode(v):
    raise ValueError(f"bad value {v}")


def test_an_exception_is_raised_at_compute():
    dsk = {"a": 1, "b": (explode, "a"), "c": (operator.add, "b", 1)}
    with pytest.raises(ValueError, match="bad value 1") as info:
        volley.dask.get(dsk, "c")
    assert isinstance(info.value, volley.TaskError)
    assert "explode" in info.value.remote_traceback
    delayed = dask.delayed(explode)(2)
    with pytest.raises(ValueError, match="bad value 2"):
        delayed.compute(scheduler=volley.dask.get)


def test_a_tree_reduction():
    leaves = [dask.delayed(operator.add)(i, 1) for i in range(256)]
    while len(leaves) > 1:
        leaves = [dask.delayed(operator.add)(a, b) for a, b in zip(leaves[::2], leaves[1::2])]
    assert leaves[0].compute(scheduler=volley.dask.get) == sum(range(1, 257))


def die_once(x, marker):
    import os
    import signal

    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1


def test_a_killed_worker_is_retried(tmp_path):
    dsk = {"a": 1, "b": (die_once, "a", str(tmp_path / "m")), "c": (operator.mul, "b", 5)}
    assert volley.dask.get(dsk, "c") == 10


# ------------------------------------------------------------------ as Dask's schedulers (bug 14)


def test_a_missing_dependency_is_a_value_error_as_in_dask():
    # Before: KeyError. Dask's schedulers raise ValueError("Missing dependency ...").
    from dask._task_spec import Task, TaskRef

    dsk = {"y": Task("y", operator.add, TaskRef("x"), 1)}
    with pytest.raises(ValueError, match="Missing dependency 'x'"):
        volley.dask.get(dsk, "y")
    assert volley.dask.get(dsk, "y", cache={"x": 1}) == 2  # cache= supplies it, as in Dask
    assert volley.dask.get({"y": (operator.add, "x", 1)}, "y", cache={"x": 1}) == 2


def test_callbacks_are_called_as_dask_local_calls_them():
    # Before: none of them was called.
    from dask.callbacks import Callback

    calls: list = []
    dsk = {"a": 1, "b": (operator.add, "a", 2), "c": (operator.mul, "b", 10), "d": (len, "zz")}

    class Recorder(Callback):
        def _start(self, dsk):
            calls.append(("start", sorted(dsk)))

        def _start_state(self, dsk, state):
            calls.append(("start_state", sorted(state["ready"]), sorted(state["cache"])))

        def _pretask(self, key, dsk, state):
            calls.append(("pretask", key, key in state["running"]))

        def _posttask(self, key, result, dsk, state, worker_id):
            calls.append(("posttask", key, result, key in state["finished"]))

        def _finish(self, dsk, state, errored):
            calls.append(("finish", sorted(state["finished"]), errored))

    with Recorder():
        assert volley.dask.get(dsk, "c") == 30
    assert calls == [
        ("start", ["a", "b", "c", "d"]),
        ("start_state", ["b"], ["a"]),
        ("pretask", "b", True),
        ("posttask", "b", 3, True),
        ("pretask", "c", True),
        ("posttask", "c", 30, True),
        ("finish", ["b", "c"], False),
    ]
    calls.clear()
    with pytest.raises(ValueError, match="bad value"):
        volley.dask.get({"a": 1, "b": (explode, "a")}, "b", callbacks=[Recorder()])
    assert calls[-1] == ("finish", [], True)


def test_the_progress_bar_shows(capsys):
    from dask.diagnostics import ProgressBar

    with ProgressBar():
        assert float(da.ones(1000, chunks=100).sum().compute(scheduler=volley.dask.get)) == 1000
    assert "100% Completed" in capsys.readouterr().out


def interrupt(x):
    raise KeyboardInterrupt


def test_keyboard_interrupt_in_a_node_is_raised_as_itself():
    with pytest.raises(KeyboardInterrupt):
        volley.dask.get({"a": 1, "b": (interrupt, "a")}, "b")
