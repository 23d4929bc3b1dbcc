"""volley.tune: hyperparameter search on volley, with Ray Tune's names.

``Tuner(trainable, param_space=..., tune_config=TuneConfig(...), run_config=RunConfig(...))``
runs a trial per config (a volley task each), ``fit()`` returns a ``ResultGrid``; inside a trial
``report`` sends metrics (and a ``Checkpoint``), ``get_checkpoint`` gives the one to go on
from. Search spaces (``uniform``, ``loguniform``, ``choice``, ``grid_search``,
``sample_from``, ...), searchers (``volley.tune.search``) and schedulers
(``volley.tune.schedulers``) plug in. See docs/tune.md.

>>> from volley import tune
>>> isinstance(tune.uniform(0, 1), tune.Domain)
True
"""

from __future__ import annotations

from ._checkpoint import Checkpoint
from ._config import Callback, CheckpointConfig, FailureConfig, RunConfig, Stopper, TuneConfig
from ._optuna_storage import optuna_optimize, optuna_storage
from ._result_grid import Result, ResultGrid
from ._session import TuneContext, get_checkpoint, get_context, report
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
from ._trainable import PlacementGroupFactory, Trainable, with_parameters, with_resources
from ._tuner import Tuner

__all__ = [
    "Callback",
    "Categorical",
    "Checkpoint",
    "CheckpointConfig",
    "FailureConfig",
    "PlacementGroupFactory",
    "Result",
    "ResultGrid",
    "RunConfig",
    "Stopper",
    "Trainable",
    "TuneConfig",
    "TuneContext",
    "Tuner",
    "Domain",
    "Float",
    "Function",
    "GridSearch",
    "Integer",
    "choice",
    "generate_variants",
    "get_checkpoint",
    "get_context",
    "optuna_optimize",
    "optuna_storage",
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
    "report",
    "sample_from",
    "uniform",
    "with_parameters",
    "with_resources",
]
