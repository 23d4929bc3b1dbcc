"""Optuna's TPE picks the configs, ASHA stops the poor trials early, at most 4 run at once.

The volley version of the second side by side in docs/tune.md (the Ray Tune script there is
the same code with ``ray`` for ``volley``): ``OptunaSearch`` + ``ConcurrencyLimiter`` +
``ASHAScheduler``. Needs Optuna (``pip install optuna``).

    python examples/tune_optuna_asha.py
"""

from __future__ import annotations

import time

import volley
from volley import tune
from volley.tune.schedulers import ASHAScheduler
from volley.tune.search import ConcurrencyLimiter
from volley.tune.search.optuna import OptunaSearch


def train(config):
    """A stand-in for a training loop: the loss falls towards a floor set by the model's
    shape, faster with a learning rate near 0.03; one report per epoch."""
    floor = 0.1 * (config["layers"] - 3) ** 2 + config["dropout"]
    rate = 0.3 / (1 + abs(config["lr"] - 0.03) * 30)
    loss = 10.0
    for _epoch in range(30):
        time.sleep(0.01)  # the epoch's work
        loss -= rate * (loss - floor)
        tune.report({"loss": loss})


def main() -> None:
    volley.init()  # optional: fit() starts volley if it is not running
    search = ConcurrencyLimiter(OptunaSearch(seed=0), max_concurrent=4)
    scheduler = ASHAScheduler(max_t=30, grace_period=3, reduction_factor=3)
    tuner = tune.Tuner(
        train,
        param_space={
            "lr": tune.loguniform(1e-4, 1e-1),
            "layers": tune.randint(1, 6),
            "dropout": tune.uniform(0.0, 0.5),
        },
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", search_alg=search, scheduler=scheduler, num_samples=40
        ),
        run_config=tune.RunConfig(verbose=0),
    )
    results = tuner.fit()
    best = results.get_best_result()
    print(best.config, round(best.metrics["loss"], 4))
    epochs = sum(r.metrics["training_iteration"] for r in results)
    print(f"{len(results)} trials, {epochs} epochs run of {30 * len(results)}")


if __name__ == "__main__":
    main()
