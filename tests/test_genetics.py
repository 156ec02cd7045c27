"""Selection over abstract genomes: elitism, a real tournament, rank mutation."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from engine import genetics


@dataclass
class Ind:
    id: str
    fitness: float | None


def pop(*fits):
    return [Ind(f"i{k}", f) for k, f in enumerate(fits)]


def test_ranked_is_best_first_with_unscored_last():
    p = pop(-3.0, None, -1.0, -2.0)
    assert [i.id for i in genetics.ranked(p)] == ["i2", "i3", "i0", "i1"]


def test_elites_are_the_k_best_plus_promoted():
    p = pop(-1.0, -5.0, -2.0, -9.0)
    assert [i.id for i in genetics.select_elites(p, 2)] == ["i0", "i2"]
    # a promoted individual survives whatever its fitness, on top of the k best
    assert [i.id for i in genetics.select_elites(p, 2, {"i3"})] == ["i0", "i2", "i3"]
    # promoted and already among the best: counted once
    assert [i.id for i in genetics.select_elites(p, 2, {"i0"})] == ["i0", "i2"]
    assert genetics.select_elites(p, 0) == []


def test_tournament_winner_is_fittest_contender_and_weaker_ones_can_win():
    p = pop(*[-float(k) for k in range(10)])
    rng = random.Random(0)
    wins = Counter(genetics.tournament(p, 3, rng).id for _ in range(3000))
    # the two worst can never win a 3-way tournament; the best wins most often but not always
    assert "i9" not in wins and "i8" not in wins
    assert wins["i0"] == max(wins.values())
    assert len(wins) >= 6  # not "random among the top five"
    # tournament of size 1 is uniform selection
    rng1 = random.Random(1)
    wins1 = Counter(genetics.tournament(p, 1, rng1).id for _ in range(2000))
    assert len(wins1) == 10


def test_pick_parents_distinct_and_deterministic():
    p = pop(-1.0, -2.0, -3.0, -4.0)
    a = [tuple(x.id for x in genetics.pick_parents(p, 2, random.Random(7))) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    for _ in range(100):
        x, y = genetics.pick_parents(p, 2, random.Random(_))
        assert x.id != y.id


def test_mutate_choice_moves_to_a_neighbour():
    rng = random.Random(0)
    assert genetics.mutate_choice(8, [4, 8, 16], 0.0, rng) == 8
    seen = {genetics.mutate_choice(8, [4, 8, 16], 1.0, rng) for _ in range(50)}
    assert seen == {4, 16}
    assert {genetics.mutate_choice(4, [4, 8, 16], 1.0, rng) for _ in range(20)} == {8}
    assert genetics.mutate_choice(8, [8], 1.0, rng) == 8


def test_breed_uses_crossover_rate():
    p = pop(-1.0, -2.0, -3.0)
    kids = genetics.breed(p, 50, 2, random.Random(0), lambda a, b: (a.id, b and b.id), 1.0)
    assert all(b is not None and a != b for a, b in kids)
    kids = genetics.breed(p, 50, 2, random.Random(0), lambda a, b: (a.id, b and b.id), 0.0)
    assert all(b is None for _, b in kids)
