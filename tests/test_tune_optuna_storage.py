"""volley.tune.optuna_storage: Optuna studies held by a volley actor, worked on by real volley
tasks at once (on every node with VOLLEY_TEST_CLUSTER=1), and a storage actor SIGKILLed."""

from __future__ import annotations

import os
import pickle
import signal
import uuid

import pytest
from conftest import CLUSTER_MODE, poll

import volley
from volley.sync import Barrier

optuna = pytest.importorskip("optuna")
from volley.tune._optuna_storage import optuna_optimize, optuna_storage  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def fresh(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def objective(trial):
    x = trial.suggest_float("x", -4, 4)
    trial.set_user_attr("node", volley.get_runtime_context().get_node_id())
    trial.set_user_attr("pid", os.getpid())
    return (x - 1) ** 2


@volley.remote(num_cpus=0.25)
def optimize_in_task(storage_name: str, study_name: str, n: int, barrier=None) -> int:
    """What users' code does today with a database URL: load the study, optimize. With a
    barrier, it starts optimizing once all its parties run (so they run at once)."""
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(storage_name))
    if barrier is not None:
        barrier.wait(timeout=60)  # BrokenBarrierError if the 8 do not all run within 60 s
    study.optimize(objective, n_trials=n)
    return n


def test_existing_study_code_runs_on_the_storage_and_a_task_sees_the_same_study(volley_shared):
    storage = optuna_storage(fresh())
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    study.set_user_attr("owner", "driver")
    study.optimize(objective, n_trials=5)
    assert volley.get(optimize_in_task.remote(storage.name, "s", 3)) == 3
    again = optuna.load_study(study_name="s", storage=optuna_storage(storage.name))
    assert len(again.trials) == 8 and again.user_attrs == {"owner": "driver"}
    assert [t.number for t in again.trials] == list(range(8))
    # Optuna's own errors come through as they are.
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(storage=storage, study_name="s")
    assert optuna.create_study(storage=storage, study_name="s", load_if_exists=True).trials
    with pytest.raises(KeyError):
        optuna.load_study(study_name="nope", storage=storage)
    assert optuna.get_all_study_names(storage) == ["s"]
    optuna.delete_study(study_name="s", storage=storage)
    assert optuna.get_all_study_names(storage) == []
    copy = pickle.loads(pickle.dumps(storage))
    assert repr(copy) == repr(storage) and copy.get_all_studies() == []


def test_eight_concurrent_tasks_optimizing_one_study_make_every_trial_once(volley_shared):
    name = fresh()
    study = optuna.create_study(storage=optuna_storage(name), study_name="eight")
    barrier = Barrier(8)
    refs = [optimize_in_task.remote(name, "eight", 10, barrier) for _ in range(8)]
    assert sum(volley.get(refs, timeout=120)) == 80
    barrier.shutdown()
    trials = study.trials
    assert len(trials) == 80
    assert sorted(t.number for t in trials) == list(range(80))
    assert all(t.state.name == "COMPLETE" for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 8, f"the 8 tasks ran at once, in {len(pids)} processes"
    if CLUSTER_MODE:
        nodes = {t.user_attrs["node"] for t in trials}
        assert len(nodes) == 2, f"trials ran on {nodes}: the two worker nodes expected"
    assert study.best_value < 0.5


def test_optuna_optimize_runs_exactly_n_trials_spread_over_the_workers(volley_shared):
    study = optuna.create_study(
        storage=optuna_storage(fresh()), sampler=optuna.samplers.TPESampler(seed=0)
    )
    barrier = Barrier(2)

    def first_two_meet(trial):
        # The first trial of each of two workers waits for the other: both run trials.
        if trial.number < 2:
            barrier.wait(timeout=60)
        return objective(trial)

    optuna_optimize(study, first_two_meet, n_trials=41, n_workers=8, num_cpus=0.25)
    barrier.shutdown()
    trials = study.trials
    assert len(trials) == 41 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) > 1
    # Each worker drew its own numbers (reseeded), none repeated another's.
    assert len({t.params["x"] for t in trials}) == 41
    if CLUSTER_MODE:
        assert len({t.user_attrs["node"] for t in trials}) == 2


class Boom(Exception):
    pass


def failing(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 3:
        raise Boom(f"trial {trial.number} failed")
    return x


def test_an_objectives_error_stops_the_workers_and_is_raised(volley_shared):
    study = optuna.create_study(storage=optuna_storage(fresh()))
    with pytest.raises(Exception, match="trial 3 failed") as info:
        optuna_optimize(study, failing, n_trials=200, n_workers=2, num_cpus=0.5)
    assert isinstance(info.value, Boom) or "Boom" in str(info.value)
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1
    assert len(states) < 200, "the other worker went on after the failure"
    # With catch, a failing trial is one failed trial of the n.
    caught = optuna.create_study(storage=optuna_storage(fresh()))
    optuna_optimize(caught, failing, n_trials=6, n_workers=2, catch=Boom, num_cpus=0.5)
    assert sorted(t.state.name for t in caught.trials) == ["COMPLETE"] * 5 + ["FAIL"]


def test_optuna_optimize_refuses_what_it_cannot_run(volley_shared):
    with pytest.raises(ValueError, match=r"needs a study on volley.tune.optuna_storage\(\)"):
        optuna_optimize(optuna.create_study(), objective, n_trials=1)
    study = optuna.create_study(storage=optuna_storage(fresh()))
    with pytest.raises(ValueError, match="n_trials must be a positive int, got 0"):
        optuna_optimize(study, objective, n_trials=0)
    with pytest.raises(ValueError, match="n_workers must be a positive int"):
        optuna_optimize(study, objective, n_trials=1, n_workers=0)
    with pytest.raises(TypeError, match="objective must be callable"):
        optuna_optimize(study, 3, n_trials=1)
    with pytest.raises(TypeError, match="study must be an optuna.Study"):
        optuna_optimize("study", objective, n_trials=1)
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        optuna_storage("")
    assert study.trials == []  # nothing ran


def storage_pid(name: str) -> int:
    handle = volley.get_actor(f"volley.tune.optuna_storage/{name}")
    state = poll(lambda: (volley.actor_state(handle) or {}).get("pid"), timeout=30)
    assert state, "waited 30 s for the storage actor's pid"
    return state


@volley.remote(num_cpus=0.25)
def slow_objective_worker(storage_name: str, study_name: str, gate) -> None:
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(storage_name))

    def obj(trial):
        volley.get(gate.arrive.remote())
        return trial.suggest_float("x", 0, 1)

    study.optimize(obj, n_trials=10_000)


@volley.remote(num_cpus=0)
class Gate:
    def __init__(self):
        self.n = 0

    def arrive(self):
        self.n += 1

    def count(self):
        return self.n


def test_a_killed_storage_actor_is_a_clear_error_for_every_user_never_a_hang(volley_shared):
    name = fresh("killed")
    storage = optuna_storage(name)
    study = optuna.create_study(storage=storage, study_name="k")
    study.optimize(objective, n_trials=3)
    gate = Gate.remote()
    workers = [slow_objective_worker.remote(name, "k", gate) for _ in range(2)]
    assert poll(lambda: volley.get(gate.count.remote()) >= 4, timeout=60), (
        "waited 60 s for the worker tasks to run trials on the study"
    )
    os.kill(storage_pid(name), signal.SIGKILL)
    with pytest.raises(RuntimeError, match=rf"the Optuna storage '{name}' is gone.*lost"):
        study.trials  # noqa: B018
    for ref in workers:
        with pytest.raises(Exception, match=rf"the Optuna storage '{name}' is gone"):
            volley.get(ref, timeout=60)
    with pytest.raises(RuntimeError, match="is gone"):
        optuna_optimize(study, objective, n_trials=2, n_workers=1)
    # The name can be used again once the dead actor is forgotten: a new, empty storage.
    found = poll(lambda: _new_storage(name), timeout=30)
    assert found, "waited 30 s for a new storage under the name of the killed one"
    assert optuna.get_all_study_names(found) == []


def _new_storage(name):
    try:
        return optuna_storage(name)
    except RuntimeError:
        return None


def test_a_callback_that_stops_the_study_stops_every_worker(volley_shared):
    study = optuna.create_study(storage=optuna_storage(fresh()))
    seen = []

    def stop_at_five(study, trial):
        seen.append(trial.number)
        if trial.number >= 5:
            study.stop()

    optuna_optimize(study, objective, n_trials=500, n_workers=2, callbacks=[stop_at_five])
    assert 6 <= len(study.trials) < 500, len(study.trials)
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_a_running_trial_reads_the_same_from_its_maker_as_from_the_actor(volley_shared):
    storage = optuna_storage(fresh())
    study = optuna.create_study(storage=storage)
    seen = []

    def obj(trial):
        trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("c", ["a", "b"])
        trial.set_user_attr("u", [1, 2])
        trial.report(0.5, 1)
        trial.report(0.25, 2)
        other = pickle.loads(pickle.dumps(storage))  # a copy with nothing cached
        mine, theirs = storage.get_trial(trial._trial_id), other.get_trial(trial._trial_id)
        seen.append((mine, theirs))
        return 1.0

    study.optimize(obj, n_trials=3)
    for mine, theirs in seen:
        assert mine == theirs
        assert mine.intermediate_values == {1: 0.5, 2: 0.25} and mine.user_attrs == {"u": [1, 2]}
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_a_value_that_does_not_pickle_is_refused_at_the_call(volley_shared):
    study = optuna.create_study(storage=optuna_storage(fresh()))
    trial = study.ask()
    with pytest.raises(Exception, match="pickle"):
        trial.set_user_attr("f", lambda: 1)
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == {} and study.trials[0].state.name == "COMPLETE"
