"""The style genome and its operators: K token logits, their softmax the student's style weights.

Selection (elitism, tournaments, parent choice, the copy-or-crossover split) is
``engine.genetics`` — the same code the LoRA track uses; only the two operators on a genome differ:

* **crossover** here is an arithmetic blend of the parents' logit vectors, child = w·a + (1 − w)·b
  with w drawn uniformly in [0.3, 0.7]. The LoRA track (``engine.genomes.lora``) instead merges each
  parent's ΔW = (α/r)·BA (linear, SLERP, TIES, DARE) and re-factors the child by truncated SVD.
* **mutation** adds gaussian noise of absolute std ``mutation_scale`` to each logit with
  probability ``mutation_rate``. The LoRA track's noise is relative to each tensor's RMS and is
  decided per tensor; it also mutates the rank, which a style genome does not have.

Logits rather than weights, so that every genome is on the simplex the decoder was trained on
(weights ≥ 0, summing to 1) whatever the operators do. All zeros is the neutral style (1/K each).
Everything is deterministic from the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import genetics


def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    s = sum(e)
    return [x / s for x in e]


@dataclass
class StyleIndividual:
    """One style genome in a population (``engine.genetics.Scored``)."""

    id: str
    generation: int
    logits: list[float]
    parents: list[str] = field(default_factory=list)
    operator: str = "random"
    fitness: float | None = None  # −(mean MCD + [tts] tempo_weight · tempo_error), in dB
    mcd: float | None = None  # mean MCD (dB) over the sentences
    status: str = "queued"
    tempo_error: float | None = None  # mean |ln(duration / the target's)| over the sentences
    duration_ratio: float | None = None  # exp(mean ln(duration / the target's)): > 1 is slower

    @property
    def weights(self) -> list[float]:
        return softmax(self.logits)

    def genome_dict(self) -> dict[str, Any]:
        return {
            "kind": "style",
            "logits": [round(x, 6) for x in self.logits],
            "weights": [round(x, 6) for x in self.weights],
            **(
                {}
                if self.duration_ratio is None
                else {"duration_ratio": round(self.duration_ratio, 4)}
            ),
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "generation": self.generation,
            "logits": list(self.logits),
            "parents": list(self.parents),
            "operator": self.operator,
            "fitness": self.fitness,
            "mcd": self.mcd,
            "status": self.status,
            "tempo_error": self.tempo_error,
            "duration_ratio": self.duration_ratio,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> StyleIndividual:
        return cls(
            d["id"],
            d["generation"],
            [float(x) for x in d["logits"]],
            list(d.get("parents", [])),
            d.get("operator", ""),
            d.get("fitness"),
            d.get("mcd"),
            d.get("status", "evaluated"),
            d.get("tempo_error"),
            d.get("duration_ratio"),
        )


def crossover(a: Sequence[float], b: Sequence[float], weight: float) -> list[float]:
    """Arithmetic blend of two logit vectors."""
    return [weight * x + (1.0 - weight) * y for x, y in zip(a, b, strict=True)]


def mutate(
    logits: Sequence[float], rate: float, scale: float, rng: random.Random
) -> tuple[list[float], int]:
    """Gaussian noise of std ``scale`` on each logit with probability ``rate``; (logits, how many)."""
    out, n = [], 0
    for x in logits:
        if scale > 0 and rng.random() < rate:
            x += rng.gauss(0.0, scale)
            n += 1
        out.append(x)
    return out, n


def initial_logits(size: int, k: int, scale: float, rng: random.Random) -> list[list[float]]:
    """``size`` genomes: the neutral one (all zeros) first, then gaussian logits of std ``scale``."""
    out = [[0.0] * k]
    for _ in range(size - 1):
        out.append([rng.gauss(0.0, scale) for _ in range(k)])
    return out


def make_child(
    ind_id: str,
    generation: int,
    a: StyleIndividual,
    b: StyleIndividual | None,
    rng: random.Random,
    *,
    mutation_rate: float,
    mutation_scale: float,
) -> StyleIndividual:
    if b is not None:
        w = rng.uniform(0.3, 0.7)
        logits, op, parents = crossover(a.logits, b.logits, w), f"blend {w:.2f}", [a.id, b.id]
    else:
        logits, op, parents = list(a.logits), "copy", [a.id]
    logits, n = mutate(logits, mutation_rate, mutation_scale, rng)
    if n:
        op += f" +mut{n}"
    return StyleIndividual(ind_id, generation, logits, parents, op)


def next_generation(
    population: Sequence[StyleIndividual],
    generation: int,
    size: int,
    evo: Any,
    rng: random.Random,
    new_id: Any,
) -> tuple[list[StyleIndividual], list[StyleIndividual]]:
    """(elites, children): the ``evo.elitism`` best survive unscored-again; tournament winners
    breed the rest (``engine.genetics.breed``). ``new_id(generation)`` names each child."""
    scored = [i for i in population if i.fitness is not None]
    elites = genetics.select_elites(scored, evo.elitism)
    children = genetics.breed(
        scored,
        max(0, size - len(elites)),
        evo.tournament_size,
        rng,
        lambda a, b: make_child(
            new_id(generation),
            generation,
            a,
            b,
            rng,
            mutation_rate=evo.mutation_rate,
            mutation_scale=evo.mutation_scale,
        ),
        evo.crossover_rate,
    )
    return elites, children  # type: ignore[return-value]
