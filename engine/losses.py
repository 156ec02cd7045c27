"""Training losses (pluggable) and the one definition of validation loss every figure uses.

A training loss maps (student logits, batch) to (scalar loss, named terms). The distillation issue
adds a KD loss with the same signature; events carry the named terms so the UI can plot each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (sum of next-token losses, number of scored tokens); -100 labels are not scored."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels != -100
    return (per_token * mask).sum(dim=1), mask.sum(dim=1)


def cross_entropy(
    logits: torch.Tensor, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over the batch's scored tokens."""
    sums, counts = token_losses(logits, batch["labels"])
    loss = sums.sum() / counts.sum().clamp(min=1)
    return loss, {"ce": float(loss.detach())}


LOSSES: dict[str, LossFn] = {"ce": cross_entropy}


def distillation(temperature: float, alpha: float, vocab: int) -> LossFn:
    """KL(teacher_T ‖ student_T)·T² on the teacher's top-k (``batch["kd_logp"]``,
    ``batch["kd_idx"]``) plus alpha × cross-entropy on the labels; both terms are reported."""
    from engine.distill import kd_loss

    def loss(
        logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        sums, counts = token_losses(logits, batch["labels"])
        ce = sums.sum() / counts.sum().clamp(min=1)
        kd = kd_loss(
            logits,
            batch["kd_logp"],
            batch["kd_idx"],
            batch["labels"],
            temperature=temperature,
            vocab=vocab,
        )
        return kd + alpha * ce, {"kd": float(kd.detach()), "ce": float(ce.detach())}

    return loss


def get_loss(name: str, **_: Any) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, split: Any, batch_size: int, device: str
) -> tuple[float, int]:
    """Token-weighted mean validation loss of ``model`` over a tokenized split, and its token count.

    The lab's fitness, the teacher's reference and the exported adapter's check all use this.
    """
    total, count = 0.0, 0
    for start in range(0, len(split), batch_size):
        ids = split.input_ids[start : start + batch_size].to(device)
        mask = split.attention_mask[start : start + batch_size].to(device)
        labels = split.labels[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        s, c = token_losses(logits, labels)
        total += float(s.sum())
        count += int(c.sum())
    return total / max(count, 1), count
