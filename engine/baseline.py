"""The baselines a run must beat, at its own compute: what a practitioner would do without the lab.

- ``finetune``: ONE LoRA adapter trained for the run's whole budget of optimizer steps (the same
  pruned student, data, loss, distillation and validation rows), scored on validation every
  ``eval_every`` steps, the best checkpoint kept — the classic fine-tune with a checkpoint per
  epoch (``epochs/epoch_NNNN/`` with ``epoch_info.json``: step, loss, learning rate, time, path).
- ``random``: random search — ``[population] size`` random genomes (ranks, learning rates within
  the spread, seeds), each trained for an equal share of the budget, the best kept.

Both are the orchestrator with its generation loop replaced (``_evolve``): the same workers,
pruning, teacher cache, references, test split, export and report.json (``kind`` says which).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from engine.events import GenerationStarted
from engine.individual import Individual, LoraGenome
from engine.orchestrator import Orchestrator
from engine.rundir import RunDir, atomic_write_bytes, atomic_write_text

KINDS = ("finetune", "random")
MARKER = "baseline.json"  # in a baseline's run directory: what it is (resume refuses it)


def epoch_steps(profile: Any) -> int:
    """Optimizer steps in one pass over the training rows (at least 1)."""
    from engine.data import read_examples
    from engine.workers.common import load_split  # noqa: F401  (the same row count the workers use)

    d = profile.data
    rows = len(read_examples(d.train, d.format, limit=d.max_train_examples))
    return max(1, math.ceil(rows / (d.batch_size * profile.training.gradient_accumulation)))


class FinetuneBaseline(Orchestrator):
    report_kind = "baseline-finetune"

    def __init__(
        self,
        profile: Any,
        run: RunDir,
        *,
        steps: int,
        lr_scale: float = 1.0,
        eval_every: int | None = None,
        rank: int | None = None,
        kd_alpha: float | None = None,
    ) -> None:
        super().__init__(profile, run)
        self.steps = steps
        self.lr_scale = lr_scale
        self.eval_every = eval_every or max(
            epoch_steps(profile), profile.training.steps_per_generation
        )
        self.rank = rank or max(profile.population.ranks)
        self.kd_alpha = kd_alpha  # None: the profile's [distill] alpha

    @property
    def chunks(self) -> int:
        return math.ceil(self.steps / self.eval_every)

    @property
    def planned_generations(self) -> int:
        return self.chunks

    async def _evolve(self, prof: Any) -> None:
        pop = prof.population
        lr = prof.training.learning_rate * self.lr_scale
        genome = LoraGenome(
            self.rank,
            self._alpha(self.rank),
            tuple(pop.target_modules),
            pop.dropout,
            lr,
            self.rng.randrange(2**31),
            self.kd_alpha,
        )
        live = Individual("ft", 0, genome, [], "finetune")
        best: Individual | None = None
        prev: str | None = None
        epochs = self.run_dir.path / "epochs"
        for k in range(self.chunks):
            await self._gate()
            if self.stop_requested:
                return
            t0 = time.perf_counter()
            n = min(self.eval_every, self.steps - live.steps_trained)
            self.generation = k
            self.publish(GenerationStarted(k, [live.id]))
            losses_before = len(live.loss_history)
            await self._train(live, steps=n)
            if self.stop_requested or live.status == "failed":
                return
            step = live.steps_trained
            snap = Individual(
                f"ft-{step:05d}",
                k,
                genome,
                [prev] if prev else [],
                f"finetune step {step}",
                trained=True,
                steps_trained=step,
                stretches=live.stretches,
            )
            snap.tensors = live.tensors
            await self._evaluate([snap])
            if snap.fitness is None:
                return
            if best is None or snap.fitness > best.fitness:  # type: ignore[operator]
                best = snap
            self.population = [best] if best is snap else [best, snap]
            prev = snap.id
            seconds = time.perf_counter() - t0
            chunk = live.loss_history[losses_before:]
            where = epochs / f"epoch_{k + 1:04d}"
            atomic_write_bytes(where / "adapter_model.safetensors", _blob(snap))
            atomic_write_text(
                where / "epoch_info.json",
                json.dumps(
                    {
                        "epoch": k + 1,
                        "step": step,
                        "loss": sum(chunk) / max(1, len(chunk)),
                        "val_loss": snap.val_loss,
                        "learning_rate": lr,
                        "seconds": round(seconds, 3),
                        "path": str(where / "adapter_model.safetensors"),
                        "best_so_far": best.id,
                    },
                    indent=1,
                )
                + "\n",
            )
            self._finish_generation(k, seconds)
            self._check_log()


class RandomBaseline(Orchestrator):
    report_kind = "baseline-random"

    def __init__(self, profile: Any, run: RunDir, *, steps: int) -> None:
        super().__init__(profile, run)
        self.steps = steps

    @property
    def planned_generations(self) -> int:
        return 1

    async def _evolve(self, prof: Any) -> None:
        import asyncio

        t0 = time.perf_counter()
        self.population = self.initial_population()
        self.generation = 0
        n = len(self.population)
        shares = [self.steps // n + (1 if j < self.steps % n else 0) for j in range(n)]
        for ind in self.population:
            self._update(ind)
        self.publish(GenerationStarted(0, [i.id for i in self.population]))
        await asyncio.gather(
            *(self._train(i, steps=s) for i, s in zip(self.population, shares, strict=True) if s)
        )
        if self.stop_requested:
            return
        await self._evaluate([i for i in self.population if i.trained])
        if self.stop_requested:
            return
        self._finish_generation(0, time.perf_counter() - t0)


def _blob(ind: Individual) -> bytes:
    from safetensors.torch import save

    assert ind.tensors is not None
    return save({k: v.contiguous() for k, v in ind.tensors.items()})


def make_baseline(
    kind: str,
    profile: Any,
    run: RunDir,
    *,
    steps: int,
    lr_scale: float = 1.0,
    eval_every: int | None = None,
    kd_alpha: float | None = None,
) -> Orchestrator:
    if kind == "finetune":
        orch: Orchestrator = FinetuneBaseline(
            profile, run, steps=steps, lr_scale=lr_scale, eval_every=eval_every, kd_alpha=kd_alpha
        )
    else:
        orch = RandomBaseline(profile, run, steps=steps)
    atomic_write_text(
        run.path / MARKER,
        json.dumps(
            {"kind": kind, "steps": steps, "lr_scale": lr_scale, "kd_alpha": kd_alpha}, indent=1
        )
        + "\n",
    )
    return orch


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A baseline's figures as a run's report.json keeps them under "baselines"."""
    champ = report.get("champion") or {}
    return {
        "kind": report.get("kind"),
        "run_dir": report.get("run_dir"),
        "train_steps": report.get("compute", {}).get("train_steps"),
        "train_tokens": report.get("compute", {}).get("train_tokens"),
        "val_loss": champ.get("val_loss"),
        "test_loss": champ.get("test_loss"),
        "best": champ.get("id"),
        "learning_rate": (champ.get("genome") or {}).get("learning_rate"),
    }


def ranked_note(report: dict[str, Any]) -> str:
    """One line: the run's champion against each baseline recorded in its report, on test."""
    champ = (report.get("champion") or {}).get("test_loss")
    parts = []
    for name, b in sorted((report.get("baselines") or {}).items()):
        if champ is None or b.get("test_loss") is None:
            continue
        diff = 100 * (b["test_loss"] - champ) / b["test_loss"]
        parts.append(f"{name} {b['test_loss']:.4f} ({diff:+.1f}% for the champion)")
    return "; ".join(parts)
