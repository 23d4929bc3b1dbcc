"""An evolutionary run with DEAP whose fitness evaluations run on volley.

DEAP evaluates a generation with ``toolbox.map``; registering ``volley.map`` there is the only
change. With the same seed the run evolves exactly as with the built-in ``map``.

    python examples/deap_onemax.py
"""

from __future__ import annotations

import random

from deap import algorithms, base, creator, tools

import volley


def evaluate(individual):
    """OneMax: the number of ones (a tuple, as DEAP wants)."""
    return (sum(individual),)


def evolve(map_fn, seed: int = 7, generations: int = 15, size: int = 60):
    """Runs a seeded genetic algorithm with ``map_fn`` as the toolbox's map; returns the best
    individual and the per-generation maxima."""
    if not hasattr(creator, "FitnessMax"):
        creator.create("FitnessMax", base.Fitness, weights=(1.0,))
        creator.create("Individual", list, fitness=creator.FitnessMax)
    rng = random.Random(seed)
    random.seed(seed)
    toolbox = base.Toolbox()
    toolbox.register("bit", rng.randint, 0, 1)
    toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.bit, 40)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", evaluate)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", map_fn)
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    stats.register("max", max)
    pop = toolbox.population(n=size)
    hof = tools.HallOfFame(1)
    _, log = algorithms.eaSimple(
        pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=generations, stats=stats, halloffame=hof,
        verbose=False,
    )  # fmt: skip
    return list(hof[0]), log.select("max")


if __name__ == "__main__":
    volley.init()
    best, maxima = evolve(volley.map)
    print("best fitness per generation:", maxima)
    print("same as the built-in map:", (best, maxima) == evolve(map))
