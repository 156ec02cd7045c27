"""Selection over an abstract genome: elitism, tournament, parent choice, rank mutation.

Nothing here knows about tensors: the LLM track (LoRA genomes) and the TTS track (style genomes)
share this one implementation. Higher fitness is better.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Scored(Protocol):
    id: str
    fitness: float | None


T = TypeVar("T", bound=Scored)


def _fitness(x: Scored) -> float:
    return float("-inf") if x.fitness is None else x.fitness


def ranked(population: Sequence[T]) -> list[T]:
    """Best first; ties broken by id so the order is deterministic."""
    return sorted(population, key=lambda x: (-_fitness(x), x.id))


def select_elites(population: Sequence[T], k: int, promoted: set[str] = frozenset()) -> list[T]:
    """The ``k`` best, plus every promoted individual whatever its fitness (a promoted one among
    the ``k`` best counts once)."""
    best = ranked(population)
    top = best[:k]
    extra = [x for x in best[k:] if x.id in promoted]
    return top + extra


def tournament(population: Sequence[T], size: int, rng: random.Random) -> T:
    """A real tournament: draw ``size`` distinct contenders uniformly, the fittest wins."""
    if not population:
        raise ValueError("tournament over an empty population")
    contenders = rng.sample(list(population), min(size, len(population)))
    return ranked(contenders)[0]


def pick_parents(population: Sequence[T], size: int, rng: random.Random) -> tuple[T, T]:
    """Two tournament winners, distinct whenever the population has two individuals."""
    first = tournament(population, size, rng)
    rest = [x for x in population if x.id != first.id]
    second = tournament(rest, size, rng) if rest else first
    return first, second


def mutate_choice(value: int, choices: Sequence[int], rate: float, rng: random.Random) -> int:
    """With probability ``rate`` move ``value`` to a neighbouring entry of the sorted ``choices``."""
    options = sorted(choices)
    if rng.random() >= rate or len(options) < 2:
        return value
    i = (
        options.index(value)
        if value in options
        else min(range(len(options)), key=lambda j: abs(options[j] - value))
    )
    step = rng.choice([-1, 1])
    if not 0 <= i + step < len(options):
        step = -step
    return options[i + step]


def summarize(values: Sequence[float]) -> tuple[float, float, float]:
    """(best, mean, worst) of fitness values."""
    if not values:
        return (float("nan"),) * 3  # type: ignore[return-value]
    return max(values), sum(values) / len(values), min(values)


def breed(
    parents_pool: Sequence[T],
    n_children: int,
    tournament_size: int,
    rng: random.Random,
    make_child: Callable[[T, T | None], object],
    crossover_rate: float,
) -> list[object]:
    """Make ``n_children``: with ``crossover_rate`` from two tournament winners, else one (a copy to mutate)."""
    children = []
    for _ in range(n_children):
        if rng.random() < crossover_rate and len(parents_pool) > 1:
            a, b = pick_parents(parents_pool, tournament_size, rng)
            children.append(make_child(a, b))
        else:
            children.append(make_child(tournament(parents_pool, tournament_size, rng), None))
    return children
