"""volley.tune.optuna_storage: Optuna studies held by a volley actor, worked on by real volley
tasks at once (on every node with VOLLEY_TEST_CLUSTER=1), a storage actor SIGKILLed, workers
SIGKILLed mid-trial (heartbeats, optuna_optimize's own watch, RetryFailedTrialCallback), the
actor on the head's node while a worker node is killed, and Optuna's samplers through it."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import uuid
import warnings

import pytest
from conftest import CLUSTER_MODE, poll

import volley
from volley import library
from volley.sync import Barrier, Event

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


# ------------------------------------------------------------------ workers killed mid-trial


def retry_callback(max_retry: int = 1):
    """Optuna's RetryFailedTrialCallback (an alias of RetryHeartbeatStaleTrialCallback since
    4.9, which warns that it is deprecated and experimental: the warnings are not the test's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)


def fail_stale(study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        optuna.storages.fail_stale_trials(study)


@volley.remote(num_cpus=0.5, max_retries=0)
def one_trial_until_killed(storage, study_name: str, gate) -> None:
    """study.optimize in a task of its own, with the storage (and its heartbeat settings)
    pickled into it; its one trial waits for the gate, which the test never opens."""
    study = optuna.load_study(study_name=study_name, storage=storage)

    def obj(trial):
        trial.suggest_float("x", -1, 1)
        trial.set_user_attr("pid", os.getpid())
        if not gate.wait(timeout=60):
            raise AssertionError("the test did not kill this trial's worker within 60 s")
        return 0.0

    study.optimize(obj, n_trials=1)


def test_heartbeats_fail_the_trial_of_a_killed_worker_and_the_callback_retries_it(volley_shared):
    grace = 2.0
    storage = optuna_storage(
        fresh("beat"),
        heartbeat_interval=0.2,
        grace_period=grace,
        failed_trial_callback=retry_callback(),
    )
    study = optuna.create_study(storage=storage, study_name="hb")
    gate = Event()
    ref = one_trial_until_killed.remote(storage, "hb", gate)
    running = poll(
        lambda: [t for t in study.trials if "pid" in t.user_attrs and t.state.name == "RUNNING"],
        timeout=60,
    )
    assert running, "waited 60 s for the task's trial to run"
    victim = running[0]
    # Alive past the grace period: its heartbeats keep it RUNNING.
    seen = time.monotonic()
    poll(lambda: time.monotonic() - seen > grace + 0.5, timeout=grace + 5)
    fail_stale(study)
    assert study.trials[0].state.name == "RUNNING", "a live trial was failed"
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    with pytest.raises(volley.WorkerCrashedError):
        volley.get(ref, timeout=60)

    def failed():
        fail_stale(study)  # what study.optimize does before each trial
        return study.trials[0].state.name == "FAIL"

    assert poll(failed, timeout=30), f"waited 30 s for the stale trial to fail ({grace} s grace)"
    # RetryFailedTrialCallback enqueued its parameters; the next trial runs them.
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
    retried = study.trials[1]
    assert retried.state.name == "COMPLETE" and retried.params == victim.params
    assert retried.system_attrs["failed_trial"] == victim.number
    gate.shutdown()


def test_heartbeat_settings_travel_with_the_storage_and_bad_ones_are_refused(volley_shared):
    name = fresh()
    storage = optuna_storage(
        name, heartbeat_interval=1, grace_period=5, failed_trial_callback=print
    )
    copy = pickle.loads(pickle.dumps(storage))
    assert (copy.get_heartbeat_interval(), copy.grace_period) == (1.0, 5.0)
    assert copy.get_heartbeat_stale_trial_callback() is print
    plain = optuna_storage(name)  # the same studies, no heartbeats of its own
    assert plain.get_heartbeat_interval() is None and plain._get_stale_trial_ids(0) == []
    for bad in (0, -1, "1", True, float("nan")):
        with pytest.raises(ValueError, match="heartbeat_interval must be a positive number"):
            optuna_storage(name, heartbeat_interval=bad)
    with pytest.raises(ValueError, match="grace_period must be a positive number"):
        optuna_storage(name, heartbeat_interval=1, grace_period=0)
    with pytest.raises(ValueError, match="grace_period needs heartbeat_interval"):
        optuna_storage(name, grace_period=5)
    with pytest.raises(ValueError, match=r"grace_period \(1 s\) must be longer"):
        optuna_storage(name, heartbeat_interval=1, grace_period=1)
    with pytest.raises(ValueError, match="not both"):
        optuna_storage(name, failed_trial_callback=print, heartbeat_stale_trial_callback=print)
    with pytest.raises(TypeError, match="failed_trial_callback must be callable"):
        optuna_storage(name, failed_trial_callback=3)


def kill_first_trial(flag: str):
    """An objective whose first trial (of any worker) SIGKILLs its own worker process."""

    def obj(trial):
        x = trial.suggest_float("x", -4, 4)
        if library.kv_put(flag, str(trial.number), overwrite=False):
            trial.set_user_attr("killed", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
        return (x - 1) ** 2

    return obj


def test_optuna_optimize_fails_the_trial_of_a_killed_worker_and_still_runs_n_trials(
    volley_shared,
):
    flag = fresh("flag")
    study = optuna.create_study(storage=optuna_storage(fresh()))
    optuna_optimize(study, kill_first_trial(flag), n_trials=6, n_workers=2, num_cpus=0.5)
    states = {t.number: t.state.name for t in study.trials}
    victim = int(library.kv_get(flag))
    assert states.pop(victim) == "FAIL", "the killed worker's trial is not left RUNNING"
    assert list(states.values()) == ["COMPLETE"] * 6, states
    assert study.trials[victim].user_attrs["killed"] != os.getpid()
    assert sorted(t.number for t in study.trials) == list(range(7))


def test_optuna_optimize_retries_a_killed_trials_params_with_the_retry_callback(volley_shared):
    flag = fresh("flag")
    storage = optuna_storage(fresh(), failed_trial_callback=retry_callback())
    study = optuna.create_study(storage=storage)
    optuna_optimize(study, kill_first_trial(flag), n_trials=6, n_workers=2, num_cpus=0.5)
    victim = study.trials[int(library.kv_get(flag))]
    assert victim.state.name == "FAIL"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1, [t.system_attrs for t in study.trials]
    assert retried[0].state.name == "COMPLETE" and retried[0].params == victim.params
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 6 + ["FAIL"]


def always_kills_its_worker(trial):
    trial.suggest_float("x", 0, 1)
    os.kill(os.getpid(), signal.SIGKILL)


def test_an_objective_that_always_kills_its_worker_stops_the_run_with_an_error(volley_shared):
    study = optuna.create_study(storage=optuna_storage(fresh()))
    with pytest.raises(RuntimeError, match="4 of its worker tasks died"):
        optuna_optimize(study, always_kills_its_worker, n_trials=10, n_workers=1, num_cpus=0.5)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 4


@volley.remote(max_retries=0)
def dies():
    os.kill(os.getpid(), signal.SIGKILL)


def objective_whose_own_task_dies(trial):
    trial.suggest_float("x", 0, 1)
    return volley.get(dies.remote())  # WorkerCrashedError, raised by the objective


def test_a_worker_crash_raised_by_the_objective_is_its_error_not_a_dead_worker(volley_shared):
    study = optuna.create_study(storage=optuna_storage(fresh()))
    with pytest.raises(volley.WorkerCrashedError) as info:
        optuna_optimize(study, objective_whose_own_task_dies, n_trials=5, n_workers=1, num_cpus=0.5)
    assert isinstance(info.value, volley.exceptions.TaskError), "raised as the objective's"
    assert [t.state.name for t in study.trials] == ["FAIL"], "the run went on after it"


# ------------------------------------------------------------------ where the actor lives


def head_node_id() -> int:
    if CLUSTER_MODE:
        from conftest import _cluster_info

        head = [n for n in volley.nodes() if n["address"] == _cluster_info["head"]]
        assert head, f"the head {_cluster_info['head']} is not in volley.nodes()"
        return head[0]["node_id"]
    return volley.nodes()[0]["node_id"]


def actor_node(name: str):
    full = f"volley.tune.optuna_storage/{name}"
    found = [a for a in library.directory()["actors"] if a["name"] == full]
    return found[0]["node_id"] if found else None


def test_the_storage_actor_lives_on_the_heads_node(volley_shared):
    name = fresh()
    optuna_storage(name)
    # (A tuple: node 0, the one node's id, is falsy and poll would wait out its timeout.)
    found = poll(lambda: (n := actor_node(name)) is not None and (n,), timeout=30)
    assert found, "waited 30 s for the head's directory to list the storage actor"
    (node,) = found
    if CLUSTER_MODE:  # the head has no CPU there: the actor is there because it is pinned
        assert node == head_node_id()
    else:  # the one node: nodes() numbers it 0, the head's directory 1 (its id as a head)
        assert node in (head_node_id(), 1)
    assert "head's node" in optuna_storage.__doc__


# ------------------------------------------------------------------ samplers

SAMPLERS = ["tpe", "cmaes", "nsga2", "gp"]


def sampler_for(kind: str):
    """Optuna's sampler ``kind``, seeded; the test skips if its package is missing."""
    if kind == "gp":
        pytest.importorskip("torch", reason="Optuna's GPSampler needs torch (not installed)")
    if kind == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs cmaes (not installed)")
    s = optuna.samplers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning (GP)
        return {
            "tpe": lambda: s.TPESampler(seed=0, n_startup_trials=4),
            "cmaes": lambda: s.CmaEsSampler(seed=0, n_startup_trials=2),
            "nsga2": lambda: s.NSGAIISampler(seed=0, population_size=4),
            "gp": lambda: s.GPSampler(seed=0, n_startup_trials=4),
        }[kind]()


def two_params(trial):
    x, y = trial.suggest_float("x", -3, 3), trial.suggest_float("y", -3, 3)
    return (x - 1) ** 2 + (y + 1) ** 2


def two_objectives(trial):
    x = trial.suggest_float("x", 0, 1)
    return x, (1 - x) ** 2


@pytest.mark.parametrize("kind", SAMPLERS)
def test_each_sampler_runs_through_the_storage(volley_shared, kind):
    multi = kind == "nsga2"
    study = optuna.create_study(
        storage=optuna_storage(fresh(kind)),
        sampler=sampler_for(kind),
        directions=["minimize", "minimize"] if multi else ["minimize"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna_optimize(
            study, two_objectives if multi else two_params, n_trials=12, n_workers=2, num_cpus=0.5
        )
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 12
    attrs = {k for t in trials for k in t.system_attrs}
    if kind == "cmaes":  # its optimizer's state went through the storage, and came back
        assert any(k.startswith("cma:") for k in attrs), attrs
    if kind == "nsga2":
        assert any(k.endswith(":generation") for k in attrs), attrs  # its generations
        assert len(study.best_trials) >= 1 and all(len(t.values) == 2 for t in trials)
    else:
        assert study.best_value < 8.0  # better than the worst corner (20)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_each_sampler_runs_through_optuna_search_in_a_tuner(volley_shared, tmp_path, kind):
    from volley import tune
    from volley.tune.search.optuna import OptunaSearch

    sampler_for(kind)  # skips without the sampler's package
    multi = kind == "nsga2"
    space = {"x": tune.uniform(-3, 3), "y": tune.uniform(-3, 3)}

    def trainable(config):
        a = (config["x"] - 1) ** 2 + (config["y"] + 1) ** 2
        tune.report({"a": a, "b": (config["x"] + 1) ** 2})

    search = OptunaSearch(
        space,
        metric=["a", "b"] if multi else "a",
        mode=["min", "min"] if multi else "min",
        sampler=kind,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=search,
                num_samples=8,
                **({} if multi else {"metric": "a", "mode": "min"}),
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name=kind, verbose=0),
        ).fit()
    assert len(grid) == 8 and grid.num_errors == 0
    configs = [(r.config["x"], r.config["y"]) for r in grid]
    assert len(set(configs)) == 8 and all(-3 <= v <= 3 for c in configs for v in c)
    assert all(r.metrics["training_iteration"] == 1 for r in grid)
    assert type(search.study.sampler).__name__ == type(sampler_for(kind)).__name__


# ------------------------------------------------------------------ a worker node killed
# (last in the module: the node it adds to the suite's cluster is dead after it)


@pytest.mark.skipif(not CLUSTER_MODE, reason="needs the test cluster (VOLLEY_TEST_CLUSTER=1)")
def test_killing_a_worker_node_mid_study_loses_no_complete_trial(volley_shared, tmp_path):
    from conftest import _cluster_info
    from test_cluster import Cluster

    # A third worker node, joined to the suite's cluster, to kill (the suite's stay up).
    extra = Cluster(tmp_path, token=_cluster_info["token"])
    extra.head = _cluster_info["head"]
    addr = extra.start(False, "127.0.0.4")
    try:
        node = poll(lambda: [n for n in volley.nodes() if n["address"] == addr], timeout=30)
        assert node, f"waited 30 s for the node at {addr} to join"
        doomed = node[0]["node_id"]
        name, flag = fresh(), fresh("flag")
        study = optuna.create_study(storage=optuna_storage(name))
        barrier, gate = Barrier(3), Event()

        def obj(trial):
            x = trial.suggest_float("x", -4, 4)
            here = volley.get_runtime_context().get_node_id()
            trial.set_user_attr("node", here)
            if trial.number < 3:  # one worker on each of the three 1-CPU nodes
                barrier.wait(timeout=60)
            if here == doomed and library.kv_put(flag, "1", overwrite=False):
                gate.wait(timeout=60)  # until its node is killed
            return (x - 1) ** 2

        failure: list[BaseException] = []

        def run():
            try:
                optuna_optimize(study, obj, n_trials=15, n_workers=3, num_cpus=1)
            except BaseException as e:
                failure.append(e)

        runner = threading.Thread(target=run)
        runner.start()
        stuck = poll(
            lambda: [
                t
                for t in study.trials
                if t.state.name == "RUNNING"
                and library.kv_get(flag)
                and t.user_attrs.get("node") == doomed
            ],
            timeout=60,
        )
        assert stuck, "waited 60 s for a trial to run on the node to kill"
        before = {t.number: t.params for t in study.trials if t.state.name == "COMPLETE"}
        extra.kill(0)
        runner.join(timeout=60)
        assert not runner.is_alive(), "optuna_optimize did not end within 60 s of the node's death"
        assert not failure, failure
        trials = study.trials
        assert {t.number: t.params for t in trials if t.number in before} == before
        assert all(trials[n].state.name == "COMPLETE" for n in before), "a COMPLETE trial lost"
        assert trials[stuck[0].number].state.name == "FAIL"
        assert sum(t.state.name == "COMPLETE" for t in trials) == 15
        assert actor_node(name) == head_node_id()
        barrier.shutdown()
        gate.shutdown()
    finally:
        extra.stop()
