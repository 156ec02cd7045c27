"""An individual of the LLM track: a LoRA genome (hyper-parameters) plus its adapter tensors only.

The base model never belongs to an individual; workers hold it once and never mutate it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

LoraTensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoraGenome:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dropout: float
    learning_rate: float
    seed: int
    # Distillation's cross-entropy weight for this individual ([population] kd_alphas); None: the
    # profile's [distill] alpha (genomes saved before this gene existed read back as None)
    kd_alpha: float | None = None
    # AdamW's weight decay for this individual ([population] weight_decays); None: the
    # profile's [training] weight_decay
    weight_decay: float | None = None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraGenome:
        return cls(**{**d, "target_modules": tuple(d["target_modules"])})


@dataclass
class Individual:
    id: str
    generation: int  # the generation it was born in
    genome: LoraGenome
    parents: list[str] = field(default_factory=list)
    operator: str = "random"
    status: str = "queued"
    trained: bool = False
    fitness: float | None = None
    val_loss: float | None = None
    perplexity: float | None = None
    loss_history: list[float] = field(default_factory=list)
    paused: bool = False
    paused_at: int | None = None  # the generation the operator paused it in (while paused)
    promoted: bool = False
    reason: str = ""
    # Optimizer steps in this adapter's weights: its own and, for a copy, its parent's before it
    steps_trained: int = 0
    stretches: int = 0  # training stretches so far (each draws its batches from a new seed)
    stale: int = 0  # its continuations that scored no better than it ([evolution] patience)
    tensors: LoraTensors | None = field(default=None, repr=False, compare=False)
    # AdamW's state after its last stretch (engine.workers.optim), for continued training
    optimizer: bytes | None = field(default=None, repr=False, compare=False)

    def to_state(self) -> dict[str, Any]:
        """JSON form (the tensors and optimizer state are stored beside it as safetensors)."""
        skip = ("tensors", "optimizer")
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        d["genome"] = self.genome.to_dict()
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Individual:
        names = {f.name for f in dataclasses.fields(cls)} - {"tensors", "genome", "optimizer"}
        return cls(
            genome=LoraGenome.from_dict(d["genome"]), **{k: v for k, v in d.items() if k in names}
        )
