"""volley.tune search spaces and the default searcher: pure logic, seeded (no volley needed)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from volley import tune
from volley.tune.search import BasicVariantGenerator, Searcher


def draws(domain, n=2000, seed=1):
    rng = random.Random(seed)
    return [domain.sample(rng) for _ in range(n)]


def test_each_distribution_stays_in_its_range_and_on_its_grid():
    assert all(2 <= x < 5 for x in draws(tune.uniform(2, 5)))
    q = draws(tune.quniform(0, 1, 0.25))
    assert set(q) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    ints = draws(tune.randint(3, 7))
    assert set(ints) == {3, 4, 5, 6}, "randint excludes its upper bound, as Ray's"
    assert set(draws(tune.qrandint(0, 10, 5))) == {0, 5, 10}
    logs = draws(tune.loguniform(1e-4, 1))
    assert all(1e-4 <= x <= 1 for x in logs)
    # Log-uniform: the median is near the geometric middle (1e-2), far below the arithmetic one.
    assert 3e-3 < statistics.median(logs) < 3e-2
    assert all(1 <= x < 1000 for x in draws(tune.lograndint(1, 1000)))
    normal = draws(tune.randn(10, 2))
    assert 9.5 < statistics.mean(normal) < 10.5 and 1.5 < statistics.stdev(normal) < 2.5
    assert set(draws(tune.choice(["a", "b", "c"]))) == {"a", "b", "c"}


def test_bad_spaces_are_refused_where_they_are_made():
    with pytest.raises(ValueError, match="lower < upper"):
        tune.uniform(1, 1)
    with pytest.raises(ValueError, match="lower > 0"):
        tune.loguniform(0, 1)
    with pytest.raises(ValueError, match="q must be positive"):
        tune.quniform(0, 1, 0)
    with pytest.raises(ValueError, match="at least one"):
        tune.choice([])
    with pytest.raises(ValueError, match="at least one"):
        tune.grid_search([])
    with pytest.raises(TypeError, match="callable"):
        tune.sample_from(3)
    with pytest.raises(ValueError, match="num_samples"):
        list(tune.generate_variants({}, num_samples=0))
    with pytest.raises(TypeError, match="param_space must be a dict"):
        list(tune.generate_variants([1]))


def test_grids_are_crossed_and_repeated_per_sample_and_sample_from_sees_the_rest():
    space = {
        "a": tune.grid_search([1, 2, 3]),
        "nested": {"b": tune.grid_search(["x", "y"]), "c": tune.uniform(0, 1)},
        "fixed": [1, {"d": tune.choice([7])}],
        "sum": tune.sample_from(lambda spec: spec.config["a"] + spec.config["nested"]["c"]),
    }
    configs = list(tune.generate_variants(space, num_samples=2, rng=random.Random(3)))
    assert len(configs) == 12
    assert [(c["a"], c["nested"]["b"]) for c in configs[:6]] == [
        (a, b) for a in (1, 2, 3) for b in ("x", "y")
    ]
    for c in configs:
        assert math.isclose(c["sum"], c["a"] + c["nested"]["c"])
        assert c["fixed"] == [1, {"d": 7}]
    # The space itself is untouched.
    assert isinstance(space["a"], tune.GridSearch)


def test_the_default_searcher_limits_concurrency_and_resumes_where_it_stopped():
    space = {"x": tune.uniform(0, 1), "g": tune.grid_search([0, 1])}
    gen = BasicVariantGenerator(random_state=5, max_concurrent=2)
    assert gen.set_search_properties("loss", "min", space, num_samples=3)
    first = [gen.suggest(f"t{i}") for i in range(3)]
    assert first[2] is None, "a third trial while two run breaks max_concurrent"
    gen.on_trial_complete("t0", {"loss": 1.0})
    third = gen.suggest("t3")
    assert isinstance(third, dict)


def test_the_default_searcher_resumes_where_it_stopped():
    space = {"x": tune.uniform(0, 1), "g": tune.grid_search([0, 1])}
    gen = BasicVariantGenerator(random_state=5)
    gen.set_search_properties("loss", "min", space, num_samples=3)
    given = [gen.suggest(f"t{i}") for i in range(2)]
    state = gen.get_state()
    rest = [gen.suggest(f"t{i}") for i in range(2, 7)]
    assert rest[-1] == Searcher.FINISHED and Searcher.FINISHED not in rest[:-1]
    # A fresh searcher with the same seed, restored, gives the same remaining configs.
    again = BasicVariantGenerator(random_state=5)
    again.set_search_properties("loss", "min", space, num_samples=3)
    again.set_state(state)
    assert [again.suggest(f"t{i}") for i in range(2, 7)] == rest
    assert given[0] not in rest


def test_suggest_before_the_space_is_set_says_so():
    with pytest.raises(RuntimeError, match="set_search_properties"):
        BasicVariantGenerator().suggest("t0")
    with pytest.raises(ValueError, match="mode"):
        Searcher(mode="lowest")
