"""volley.tune.search: ConcurrencyLimiter and Repeater around real searchers, and OptunaSearch
with real Optuna (TPE beats random on a seeded quadratic, every domain's conversion and
refusal, multi-objective NSGA-II, CMA-ES, pruning, and a state round trip that goes on exactly
as an uninterrupted run)."""

from __future__ import annotations

import math
import pickle
import random
import statistics
import subprocess
import sys
import textwrap

import pytest

import volley
from volley import tune
from volley.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Repeater, Searcher

optuna = pytest.importorskip("optuna")
from volley.tune.search.optuna import OptunaPruningScheduler, OptunaSearch  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quadratic(config: dict, noise: random.Random) -> float:
    return (
        (config["x"] - 1.5) ** 2
        + (config["y"] + 0.5) ** 2
        + (config["z"] - 0.25) ** 2
        + noise.gauss(0, 0.01)
    )


SPACE = {"x": tune.uniform(-5, 5), "y": tune.uniform(-5, 5), "z": tune.uniform(-5, 5)}


def best_of(searcher: Searcher, budget: int, seed: int) -> float:
    """Runs ``budget`` trials one after another through the searcher protocol."""
    searcher.set_search_properties("loss", "min", {}, num_samples=budget)
    noise = random.Random(seed)
    best = math.inf
    for i in range(budget):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict), config
        loss = quadratic(config, noise)
        best = min(best, loss)
        searcher.on_trial_complete(f"t{i}", {"loss": loss, "training_iteration": 1})
    return best


# ------------------------------------------------------------------ ConcurrencyLimiter


@volley.remote
def hold(gate, tid):
    """A trial: counts itself in the gate actor while it runs."""
    volley.get(gate.enter.remote(tid))
    volley.get(gate.leave.remote(tid))
    return tid


@volley.remote
class Gate:
    def __init__(self):
        self.running, self.most = set(), 0

    def enter(self, tid):
        self.running.add(tid)
        self.most = max(self.most, len(self.running))

    def leave(self, tid):
        self.running.discard(tid)

    def peak(self):
        return self.most


def test_the_limiter_never_lets_more_than_max_concurrent_trials_run(volley_shared):
    limiter = ConcurrencyLimiter(BasicVariantGenerator(random_state=1), max_concurrent=2)
    limiter.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)}, num_samples=12)
    gate = Gate.remote()
    running: dict = {}
    started = done = 0
    while done < 12:
        # A greedy tuner: starts every trial the searcher gives, at once.
        while True:
            config = limiter.suggest(f"t{started}")
            if not isinstance(config, dict):
                break
            assert len(limiter.live_trials) <= 2
            running[hold.remote(gate, f"t{started}")] = f"t{started}"
            started += 1
        assert config is None or (config == Searcher.FINISHED and started == 12)
        assert 1 <= len(running) <= 2, running
        ready, _ = volley.wait(list(running), num_returns=1, timeout=60)
        assert ready, "waited 60 s for a trial task to finish"
        tid = running.pop(ready[0])
        limiter.on_trial_complete(tid, {"loss": 0.0})
        done += 1
    assert started == 12
    assert limiter.suggest("t12") == Searcher.FINISHED
    assert volley.get(gate.peak.remote()) <= 2


def test_a_batch_limiter_starts_the_next_batch_only_when_the_whole_batch_ended():
    limiter = ConcurrencyLimiter(BasicVariantGenerator(random_state=0), 2, batch=True)
    limiter.set_search_properties("loss", "min", {"x": tune.grid_search([1, 2, 3, 4])})
    assert [limiter.suggest(t) for t in "abc"] == [{"x": 1}, {"x": 2}, None]
    limiter.on_trial_complete("a", {"loss": 1})
    assert limiter.suggest("c") is None  # b still runs
    limiter.on_trial_complete("zzz", {"loss": 1})  # not one of its trials: changes nothing
    assert limiter.suggest("c") is None
    limiter.on_trial_complete("b", {"loss": 1})
    assert [limiter.suggest(t) for t in "cde"] == [{"x": 3}, {"x": 4}, None]


def test_the_limiter_refuses_bad_arguments_where_it_is_made():
    with pytest.raises(ValueError, match="max_concurrent must be a positive int, got 0"):
        ConcurrencyLimiter(BasicVariantGenerator(), 0)
    with pytest.raises(TypeError, match="max_concurrent must be an int"):
        ConcurrencyLimiter(BasicVariantGenerator(), 2.5)
    with pytest.raises(TypeError, match="searcher must be a volley.tune.search.Searcher"):
        ConcurrencyLimiter(object(), 2)
    with pytest.raises(ValueError, match="repeat must be a positive int"):
        Repeater(BasicVariantGenerator(), 0)


def test_the_limiter_state_round_trips_with_its_searcher():
    space = {"x": tune.uniform(0, 1)}
    a = ConcurrencyLimiter(BasicVariantGenerator(random_state=3), 2)
    a.set_search_properties("loss", "min", space, num_samples=5)
    first = [a.suggest("t0"), a.suggest("t1")]
    a.on_trial_complete("t0", {"loss": 0})
    state = pickle.loads(pickle.dumps(a.get_state()))
    b = ConcurrencyLimiter(BasicVariantGenerator(random_state=99), 2)
    b.set_search_properties("loss", "min", space, num_samples=5)
    b.set_state(state)
    assert b.live_trials == {"t1"}
    assert b.suggest("t2") == a.suggest("t2") not in first
    assert b.suggest("t3") is None  # t1 and t2 run


class Recorder(Searcher):
    """A searcher that gives numbered configs and keeps what it is told."""

    def __init__(self):
        super().__init__()
        self.n, self.told = 0, {}

    def suggest(self, trial_id):
        self.n += 1
        return {"k": self.n} if self.n <= 2 else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = (result and result.get("loss"), error)


def test_the_repeater_tells_its_searcher_the_mean_over_the_copies_of_a_config():
    inner = Recorder()
    rep = Repeater(inner, repeat=3)
    rep.set_search_properties("loss", "min", {})
    configs = [rep.suggest(f"t{i}") for i in range(7)]
    assert configs[:6] == [{"k": k, "__trial_index__": i} for k in (1, 2) for i in range(3)]
    assert configs[6] == Searcher.FINISHED
    for i, loss in enumerate([1.0, 2.0, 6.0]):
        assert inner.told == {}
        rep.on_trial_complete(f"t{i}", {"loss": loss})
    assert inner.told == {"t0": (3.0, False)}  # told under the id of its first copy
    rep.on_trial_complete("t3", None, error=True)
    rep.on_trial_complete("t4", {"loss": 5.0})
    rep.on_trial_complete("t5", {"other": 1.0})  # no metric: not counted
    assert inner.told["t3"] == (5.0, False)
    rep2 = Repeater(Recorder(), repeat=2)
    rep2.set_search_properties("loss", "min", {})
    rep2.suggest("a"), rep2.suggest("b")
    rep2.on_trial_complete("a", error=True)
    rep2.on_trial_complete("b", error=True)
    assert rep2.searcher.told == {"a": (None, True)}  # every copy failed


# ------------------------------------------------------------------ OptunaSearch


def test_tpe_finds_a_better_quadratic_minimum_than_random_search_in_the_same_budget():
    seeds, budget = range(5), 60
    tpe = [best_of(OptunaSearch(SPACE, seed=s), budget, s) for s in seeds]
    rand = [best_of(OptunaSearch(SPACE, sampler="random", seed=s), budget, s) for s in seeds]
    plain = [
        best_of(_Basic(BasicVariantGenerator(random_state=s), SPACE), budget, s) for s in seeds
    ]
    assert statistics.median(tpe) < statistics.median(rand), (tpe, rand)
    assert statistics.median(tpe) < statistics.median(plain), (tpe, plain)
    assert statistics.median(tpe) < 0.5, tpe


class _Basic(Searcher):
    """BasicVariantGenerator over SPACE, for the comparison above."""

    def __init__(self, gen, space):
        super().__init__()
        self.gen, self.space = gen, space

    def set_search_properties(self, metric, mode, config, **spec):
        return self.gen.set_search_properties(metric, mode, self.space, **spec)

    def suggest(self, trial_id):
        return self.gen.suggest(trial_id)


def test_every_domain_kind_becomes_its_optuna_distribution():
    d = optuna.distributions
    space = {
        "u": tune.uniform(0, 2),
        "qu": tune.quniform(0.1, 1.0, 0.25),
        "lu": tune.loguniform(1e-4, 1e-1),
        "ri": tune.randint(1, 5),
        "qri": tune.qrandint(1, 20, 5),
        "lri": tune.lograndint(1, 100),
        "c": tune.choice(["a", 1, None, 2.5, True]),
        "cobj": tune.choice([[1, 2], {"k": 3}]),
        "nested": {"deep": {"v": tune.uniform(-1, 1)}, "list": [tune.randint(0, 2), 7]},
        "const": "kept",
    }
    s = OptunaSearch(space, metric="loss", mode="min", seed=0)
    dists = {".".join(map(str, p.path)): p.dist for p in s._params}
    assert dists["u"] == d.FloatDistribution(0, 2)
    assert dists["qu"] == d.FloatDistribution(0.25, 1.0, step=0.25)  # multiples of q inside
    assert dists["lu"] == d.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["ri"] == d.IntDistribution(1, 4)  # randint's upper bound is excluded
    assert dists["qri"] == d.IntDistribution(5, 20, step=5)
    assert dists["lri"] == d.IntDistribution(1, 99, log=True)
    assert dists["c"] == d.CategoricalDistribution(["a", 1, None, 2.5, True])
    assert dists["cobj"] == d.CategoricalDistribution([0, 1])  # chosen by index
    assert dists["nested.deep.v"] == d.FloatDistribution(-1, 1)
    assert dists["nested.list.0"] == d.IntDistribution(0, 1)
    seen = set()
    for i in range(30):
        c = s.suggest(f"t{i}")
        assert 0 <= c["u"] <= 2 and c["qu"] in (0.25, 0.5, 0.75, 1.0)
        assert 1e-4 <= c["lu"] <= 1e-1 and c["ri"] in range(1, 5)
        assert c["qri"] in (5, 10, 15, 20) and 1 <= c["lri"] <= 99
        assert c["cobj"] in ([1, 2], {"k": 3}) and c["const"] == "kept"
        assert -1 <= c["nested"]["deep"]["v"] <= 1 and c["nested"]["list"][1] == 7
        seen.add(str(c["cobj"]))
        s.on_trial_complete(f"t{i}", {"loss": c["u"]})
    assert seen == {"[1, 2]", "{'k': 3}"}
    # The study holds the flat names, the trials the values as the config had them.
    assert "nested/deep/v" in s.study.trials[0].params


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({"g": tune.grid_search([1, 2])}, r"cannot take grid_search\(\) \('g'\).*choice\(\)"),
        ({"a": {"f": tune.sample_from(lambda s: 1)}}, r"sample_from\(\) \('a/f'\).*define-by-run"),
        ({"n": tune.randn(0, 1)}, r"randn\(\)/qrandn\(\) \('n'\): Optuna has no normal"),
        ({"q": tune.qloguniform(1e-3, 1, 1e-3)}, r"qloguniform\(\) \('q'\)"),
        ({"q": tune.qlograndint(1, 100, 5)}, r"qlograndint\(\) \('q'\)"),
        ({"q": tune.qrandint(1, 4, 5)}, r"no multiple of q=5 lies in \[1, 4\]"),
    ],
)
def test_a_space_optuna_cannot_model_is_refused_naming_the_parameter(space, match):
    with pytest.raises(ValueError, match=match):
        OptunaSearch(space, metric="loss", mode="min")


def test_bad_searcher_arguments_are_refused_where_it_is_made():
    with pytest.raises(ValueError, match="sampler must be one of"):
        OptunaSearch(SPACE, metric="loss", mode="min", sampler="bayes")
    with pytest.raises(TypeError, match="sampler must be an Optuna sampler"):
        OptunaSearch(SPACE, metric="loss", mode="min", sampler=object())
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        OptunaSearch(SPACE, metric="loss", mode="minimize")
    with pytest.raises(ValueError, match=r"2 metric\(s\) \['a', 'b'\] need as many modes"):
        OptunaSearch(SPACE, metric=["a", "b"], mode="min")
    with pytest.raises(ValueError, match="evaluated_rewards needs points_to_evaluate"):
        OptunaSearch(SPACE, metric="loss", mode="min", evaluated_rewards=[1.0])
    with pytest.raises(TypeError, match="space must be a dict or a define-by-run function"):
        OptunaSearch([1, 2], metric="loss", mode="min")
    with pytest.raises(RuntimeError, match="OptunaSearch has no study yet"):
        OptunaSearch(SPACE).suggest("t0")
    with pytest.raises(ValueError, match="got a space twice"):
        OptunaSearch(SPACE, metric="loss", mode="min").set_search_properties("loss", "min", SPACE)
    with pytest.raises(ValueError, match="needs metric and mode"):
        OptunaSearch().set_search_properties(None, None, SPACE)
    assert OptunaSearch().set_search_properties("loss", "min", {}) is False  # no space at all


def test_the_tuners_param_space_metric_and_mode_are_taken_when_the_searcher_has_none():
    s = OptunaSearch(seed=0)
    assert s.set_search_properties("acc", "max", {"lr": tune.loguniform(1e-3, 1)}) is True
    assert s.study.direction.name == "MAXIMIZE"
    assert 1e-3 <= s.suggest("t0")["lr"] <= 1


def test_points_to_evaluate_come_first_and_evaluated_rewards_are_known_trials():
    points = [{"x": 1.5, "y": -0.5, "z": 0.25}, {"x": 0.0, "y": 0.0, "z": 0.0}]
    s = OptunaSearch(SPACE, metric="loss", mode="min", points_to_evaluate=points, seed=0)
    assert [s.suggest("a"), s.suggest("b")] == points
    s2 = OptunaSearch(
        SPACE, "loss", "min", points_to_evaluate=points, evaluated_rewards=[0.0, 2.6], seed=0
    )
    assert [t.value for t in s2.study.trials] == [0.0, 2.6]
    assert s2.study.best_params == points[0]
    c = OptunaSearch({"o": tune.choice([[1], [2]])}, "loss", "min", points_to_evaluate=[{"o": [2]}])
    assert c.suggest("a") == {"o": [2]}
    with pytest.raises(ValueError, match=r"\[3\] is not one of the choices of 'o'"):
        OptunaSearch({"o": tune.choice([[1], [2]])}, "l", "min", points_to_evaluate=[{"o": [3]}])


def test_a_failed_trial_or_one_without_the_metric_is_a_failed_optuna_trial():
    s = OptunaSearch(SPACE, metric="loss", mode="min", seed=0)
    for t in "abc":
        s.suggest(t)
    s.on_trial_complete("a", None, error=True)
    s.on_trial_complete("b", {"other": 1.0})
    s.on_trial_complete("c", {"loss": 2.0})
    s.on_trial_complete("never-suggested", {"loss": 0.0})
    assert [t.state.name for t in s.study.trials] == ["FAIL", "FAIL", "COMPLETE"]


def test_a_define_by_run_space_gives_conditional_configs():
    def space(trial):
        kind = trial.suggest_categorical("model", ["lin", "tree"])
        if kind == "tree":
            trial.suggest_int("tree/depth", 1, 8)
        return {"fixed": 1}

    s = OptunaSearch(space, metric="loss", mode="min", seed=2)
    kinds = set()
    for i in range(12):
        c = s.suggest(f"t{i}")
        assert c["fixed"] == 1
        kinds.add(c["model"])
        assert ("tree" in c) == (c["model"] == "tree")
        if c["model"] == "tree":
            assert 1 <= c["tree"]["depth"] <= 8
        s.on_trial_complete(f"t{i}", {"loss": 1.0})
    assert kinds == {"lin", "tree"}


def test_nsga2_runs_a_multi_objective_study_and_keeps_a_pareto_front():
    s = OptunaSearch({"x": tune.uniform(0, 1)}, metric=["a", "b"], mode=["min", "min"], seed=0)
    assert type(s.study.sampler).__name__ == "NSGAIISampler"
    for i in range(30):
        x = s.suggest(f"t{i}")["x"]
        s.on_trial_complete(f"t{i}", {"a": x, "b": (1 - x) ** 2})
    front = s.study.best_trials
    assert len(front) > 3
    xs = sorted(t.params["x"] for t in front)
    # On the front, one objective only gets better as the other gets worse.
    assert all(a < b for a, b in zip(xs, xs[1:]))


def test_cmaes_searches_the_quadratic():
    pytest.importorskip("cmaes")
    s = OptunaSearch(SPACE, sampler="cmaes", seed=0)
    best = best_of(s, 60, 0)
    assert type(s.study.sampler).__name__ == "CmaEsSampler"
    assert best < 2.0, best


def test_the_gp_sampler_is_there_by_name():
    pytest.importorskip("torch", reason="Optuna's GPSampler needs torch")
    s = OptunaSearch(SPACE, sampler="gp", seed=0)
    assert best_of(s, 15, 0) < 10


def test_intermediate_results_reach_optuna_and_its_pruner_stops_bad_trials():
    s = OptunaSearch(
        {"x": tune.uniform(0, 1)},
        metric="loss",
        mode="min",
        seed=0,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    sched = s.pruning_scheduler()
    assert isinstance(sched, OptunaPruningScheduler)
    decisions = {}
    for i in range(12):
        tid = f"t{i}"
        x = s.suggest(tid)["x"]
        for step in range(1, 6):
            result = {"loss": x * step, "training_iteration": step}
            s.on_trial_result(tid, result)
            decision = sched.on_trial_result(None, _T(tid), result)
            if decision == sched.STOP:
                break
        decisions[tid] = decision
        s.on_trial_complete(tid, result)
    first = s.study.trials[0]
    assert first.intermediate_values == {k: k * first.params["x"] for k in range(1, 6)}
    states = [t.state.name for t in s.study.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    for t, tid in zip(s.study.trials, decisions):
        assert (t.state.name == "PRUNED") == (decisions[tid] == sched.STOP)
    with pytest.raises(TypeError, match="needs an OptunaSearch"):
        OptunaPruningScheduler(BasicVariantGenerator())
    # Results without training_iteration are numbered 1, 2, ... per trial.
    s.suggest("plain")
    for loss in (0.3, 0.2):
        s.on_trial_result("plain", {"loss": loss})
    s.on_trial_complete("plain", {"loss": 0.2})
    assert s.study.trials[-1].intermediate_values == {1: 0.3, 2: 0.2}


class _T:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_a_restored_searcher_goes_on_exactly_as_an_uninterrupted_one():
    def run(stop_at: int | None) -> list[dict]:
        s = OptunaSearch(SPACE, metric="loss", mode="min", seed=7)
        configs = []
        for i in range(20):
            if i == stop_at:
                state = pickle.loads(pickle.dumps(s.get_state()))
                s = OptunaSearch(SPACE, seed=123)  # a new process: a differently seeded one
                s.set_search_properties("loss", "min", {})
                s.set_state(state)
                # the trial running at the stop is running again, and completes
                s.on_trial_complete("t-live", {"loss": 9.0})
            c = s.suggest(f"t{i}")
            configs.append(c)
            if i == 9:
                s.suggest("t-live")  # one left running across the stop
                if stop_at is None:
                    s.on_trial_complete("t-live", {"loss": 9.0})
            s.on_trial_complete(f"t{i}", {"loss": quadratic(c, random.Random(i))})
        assert len(s.study.trials) == 21 and all(t.state.name == "COMPLETE" for t in s.study.trials)
        return configs

    uninterrupted = run(stop_at=None)
    assert run(stop_at=10) == uninterrupted


def test_a_scikit_learn_model_is_tuned_with_the_optuna_searcher(volley_shared):
    pytest.importorskip("sklearn")

    @volley.remote
    def score(config):
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        X, y = load_iris(return_X_y=True)
        model = LogisticRegression(C=config["C"], max_iter=200)
        return float(cross_val_score(model, X, y, cv=3).mean())

    s = ConcurrencyLimiter(
        OptunaSearch({"C": tune.loguniform(1e-4, 1e2)}, metric="acc", mode="max", seed=0), 2
    )
    s.set_search_properties(None, None, {})
    for batch in range(4):
        configs = {f"t{batch}{i}": s.suggest(f"t{batch}{i}") for i in range(3)}
        live = {t: c for t, c in configs.items() if isinstance(c, dict)}
        assert len(live) == 2
        for (t, _), acc in zip(live.items(), volley.get([score.remote(c) for c in live.values()])):
            s.on_trial_complete(t, {"acc": acc})
    study = s.searcher.study
    assert len(study.trials) == 8
    assert study.best_value > 0.9 and study.best_params["C"] > 1e-2


def test_the_module_imports_without_optuna_and_says_how_to_install_it(tmp_path):
    blocker = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "optuna" or name.startswith("optuna."):
                    raise ImportError("No module named 'optuna'")
        sys.meta_path.insert(0, Block())
        import volley.tune.search.optuna as m
        import volley.tune._optuna_storage as st
        for make in (lambda: m.OptunaSearch(), lambda: st.optuna_storage("x")):
            try:
                make()
            except ImportError as e:
                print("ImportError:", e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("pip install optuna" in line for line in lines), out.stdout


def test_the_tuner_runs_a_scikit_learn_search_with_optuna_and_a_limit(volley_shared, tmp_path):
    """The whole path a user takes: Tuner + OptunaSearch in a ConcurrencyLimiter, trials as
    volley tasks reporting to the driver, Optuna told each result."""
    pytest.importorskip("sklearn")

    def trainable(config):
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        X, y = load_iris(return_X_y=True)
        model = LogisticRegression(C=config["C"], max_iter=200)
        tune.report({"acc": float(cross_val_score(model, X, y, cv=3).mean())})

    search = ConcurrencyLimiter(OptunaSearch(seed=0), max_concurrent=2)
    grid = tune.Tuner(
        trainable,
        param_space={"C": tune.loguniform(1e-4, 1e2)},
        tune_config=tune.TuneConfig(metric="acc", mode="max", search_alg=search, num_samples=8),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="sk", verbose=0),
    ).fit()
    assert len(grid) == 8 and grid.num_errors == 0
    best = grid.get_best_result()
    assert best.metrics["acc"] > 0.9 and best.config["C"] > 1e-2


def test_num_samples_bounds_a_searcher_that_never_finishes(volley_shared, tmp_path):
    """A searcher of one's own that always has a config: num_samples is its number of trials
    (as in Ray Tune), not an endless run."""

    class Endless(Searcher):
        def suggest(self, trial_id):
            return {"x": int(trial_id)}

    grid = tune.Tuner(
        lambda config: {"y": config["x"]},
        tune_config=tune.TuneConfig(metric="y", mode="max", search_alg=Endless(), num_samples=5),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="endless", verbose=0),
    ).fit()
    assert sorted(r.config["x"] for r in grid) == [0, 1, 2, 3, 4]
