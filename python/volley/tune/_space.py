"""Search spaces: the distributions a ``param_space`` is made of, and how a space becomes the
configs of trials (grid axes crossed, everything else sampled, ``sample_from`` last).

>>> from volley import tune
>>> import random
>>> space = {"lr": tune.loguniform(1e-4, 1e-1), "layers": tune.grid_search([1, 2]),
...          "opt": {"name": tune.choice(["sgd", "adam"])},
...          "double": tune.sample_from(lambda spec: spec.config["layers"] * 2)}
>>> configs = list(tune.generate_variants(space, num_samples=2, rng=random.Random(0)))
>>> [(c["layers"], c["double"]) for c in configs]
[(1, 2), (2, 4), (1, 2), (2, 4)]
>>> all(1e-4 <= c["lr"] <= 1e-1 and c["opt"]["name"] in ("sgd", "adam") for c in configs)
True
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = [
    "Categorical",
    "Domain",
    "Float",
    "Function",
    "GridSearch",
    "Integer",
    "choice",
    "generate_variants",
    "grid_search",
    "lograndint",
    "loguniform",
    "qlograndint",
    "qloguniform",
    "qrandint",
    "qrandn",
    "quniform",
    "randint",
    "randn",
    "sample_from",
    "uniform",
]


class Domain:
    """A distribution a hyperparameter is drawn from. ``sample(rng)`` draws one value;
    searchers that model the space (Optuna) read the attributes of the subclasses."""

    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _check_q(q: float | None) -> None:
    if q is not None and not q > 0:
        raise ValueError(f"q must be positive, got {q!r}")


def _quantize(x: float, q: float | None) -> float:
    return x if q is None else round(x / q) * q


class Float(Domain):
    """A float in ``[lower, upper)``: uniform, or uniform in log space (``log``); a normal
    (``mean``, ``sd``) when ``normal`` is set; rounded to a multiple of ``q`` if given."""

    def __init__(
        self,
        lower: float | None,
        upper: float | None,
        *,
        log: bool = False,
        q: float | None = None,
        normal: tuple[float, float] | None = None,
    ) -> None:
        _check_q(q)
        if normal is None:
            if lower is None or upper is None or not lower < upper:
                raise ValueError(f"a float range needs lower < upper, got [{lower!r}, {upper!r})")
            if log and not lower > 0:
                raise ValueError(f"a log-uniform range needs lower > 0, got {lower!r}")
        elif not normal[1] > 0:
            raise ValueError(f"the standard deviation must be positive, got {normal[1]!r}")
        self.lower, self.upper, self.log, self.q, self.normal = lower, upper, log, q, normal

    def sample(self, rng: random.Random) -> float:
        if self.normal is not None:
            return _quantize(rng.gauss(*self.normal), self.q)
        assert self.lower is not None and self.upper is not None
        if self.log:
            x = math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))
        else:
            x = rng.uniform(self.lower, self.upper)
        x = _quantize(x, self.q)
        return min(max(x, self.lower), self.upper)


class Integer(Domain):
    """An int in ``[lower, upper)`` (upper excluded, as Ray's ``randint``), uniform or
    log-uniform; with ``q``, a multiple of ``q`` in ``[lower, upper]`` (as Ray's ``qrandint``)."""

    def __init__(self, lower: int, upper: int, *, log: bool = False, q: int | None = None):
        _check_q(q)
        if not lower < upper:
            raise ValueError(f"an int range needs lower < upper, got [{lower!r}, {upper!r})")
        if log and not lower > 0:
            raise ValueError(f"a log-uniform int range needs lower > 0, got {lower!r}")
        self.lower, self.upper, self.log, self.q = lower, upper, log, q

    def sample(self, rng: random.Random) -> int:
        # Quantized ranges include their upper bound (as Ray's qrandint): 0..10 by 5 is 0, 5, 10.
        top = self.upper if self.q is not None else self.upper - 1
        if self.log:
            v = int(math.exp(rng.uniform(math.log(self.lower), math.log(top + 1))))
        else:
            v = rng.randint(self.lower, top)
        if self.q is not None:
            v = int(round(v / self.q) * self.q)
            while v > top:
                v -= self.q
            while v < self.lower:
                v += self.q
        return min(max(v, self.lower), top)


class Categorical(Domain):
    """One of ``categories``, each as likely."""

    def __init__(self, categories: Sequence[Any]) -> None:
        categories = list(categories)
        if not categories:
            raise ValueError("choice() needs at least one category")
        self.categories = categories

    def sample(self, rng: random.Random) -> Any:
        return copy.deepcopy(rng.choice(self.categories))


class Function(Domain):
    """A value computed from the rest of the trial's config: ``fn(spec)``, where
    ``spec.config`` holds the values resolved so far (``sample_from``)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"sample_from() needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def sample(self, rng: random.Random) -> Any:
        raise TypeError("a sample_from() value is resolved with the rest of the config")


class GridSearch:
    """Every value of ``values`` is tried (crossed with the other grid axes)."""

    def __init__(self, values: Sequence[Any]) -> None:
        values = list(values)
        if not values:
            raise ValueError("grid_search() needs at least one value")
        self.values = values

    def __repr__(self) -> str:
        return f"grid_search({self.values!r})"


def uniform(lower: float, upper: float) -> Float:
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float) -> Float:
    return Float(lower, upper, log=True)


def qloguniform(lower: float, upper: float, q: float) -> Float:
    return Float(lower, upper, log=True, q=q)


def randn(mean: float = 0.0, sd: float = 1.0) -> Float:
    return Float(None, None, normal=(mean, sd))


def qrandn(mean: float, sd: float, q: float) -> Float:
    return Float(None, None, normal=(mean, sd), q=q)


def randint(lower: int, upper: int) -> Integer:
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    return Integer(lower, upper, q=q)


def lograndint(lower: int, upper: int) -> Integer:
    return Integer(lower, upper, log=True)


def qlograndint(lower: int, upper: int, q: int) -> Integer:
    return Integer(lower, upper, log=True, q=q)


def choice(categories: Sequence[Any]) -> Categorical:
    return Categorical(categories)


def sample_from(fn: Callable[..., Any]) -> Function:
    return Function(fn)


def grid_search(values: Sequence[Any]) -> GridSearch:
    return GridSearch(values)


class _Spec:
    """What a ``sample_from`` function sees: ``spec.config`` (resolved so far)."""

    def __init__(self, config: dict) -> None:
        self.config = config


def _paths(space: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """The leaves of a nested dict (and list) space, with their paths."""
    if isinstance(space, dict):
        for k, v in space.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(space, list):
        for i, v in enumerate(space):
            yield from _paths(v, (*prefix, i))
    else:
        yield prefix, space


def _set(config: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        config = config[k]
    config[path[-1]] = value


def generate_variants(
    param_space: dict, num_samples: int = 1, rng: random.Random | None = None
) -> Iterator[dict]:
    """The configs of ``param_space``: for each of ``num_samples`` samples, every combination
    of its ``grid_search`` axes, with its distributions drawn (``rng``) and its
    ``sample_from`` values computed last (in the order they stand, each seeing the others)."""
    if not isinstance(param_space, dict):
        raise TypeError(f"param_space must be a dict, got {type(param_space).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    rng = rng or random.Random()
    leaves = list(_paths(param_space))
    grid = [(p, v) for p, v in leaves if isinstance(v, GridSearch)]
    for _ in range(num_samples):
        for combo in itertools.product(*(g.values for _, g in grid)):
            config = copy.deepcopy(param_space)
            for (path, _), value in zip(grid, combo):
                _set(config, path, copy.deepcopy(value))
            for path, v in leaves:
                if isinstance(v, Domain) and not isinstance(v, Function):
                    _set(config, path, v.sample(rng))
            for path, v in leaves:
                if isinstance(v, Function):
                    _set(config, path, v.fn(_Spec(config)))
            yield config
