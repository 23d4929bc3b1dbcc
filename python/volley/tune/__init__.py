"""volley.tune: hyperparameter search on volley (issue 22; being built).

Today: search spaces (``uniform``, ``loguniform``, ``choice``, ``grid_search``,
``sample_from``, ...), the searcher and scheduler interfaces (``volley.tune.search``,
``volley.tune.schedulers``). The tuner itself (``Tuner``, ``report``) comes next.

>>> from volley import tune
>>> isinstance(tune.uniform(0, 1), tune.Domain)
True
"""

from __future__ import annotations

from ._space import (
    Categorical,
    Domain,
    Float,
    Function,
    GridSearch,
    Integer,
    choice,
    generate_variants,
    grid_search,
    lograndint,
    loguniform,
    qlograndint,
    qloguniform,
    qrandint,
    qrandn,
    quniform,
    randint,
    randn,
    sample_from,
    uniform,
)

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
