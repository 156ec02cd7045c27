"""Pruning in its own process: the student is loaded, pruned and saved by a spawned process, like
every other model computation, so the orchestrator's event loop (and its process's OpenMP pool)
stays free while it runs — in a thread of the orchestrator it competed with the UI link and, on
busy cores, ran many times slower (174 s against 6 s measured here while another job trained)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prune_job(profile: Any, out: str, threads: int, log_path: str | None) -> dict[str, Any]:
    """Load the student in full precision on the first coliseum device, prune it as ``[prune]``
    says and save the checkpoint and report in ``out``; returns the report."""
    from engine.workers.common import setup_process

    setup_process(threads, log_path)
    from engine.models import is_local, load_causal_lm
    from engine.prune import prune_layers
    from engine.workers.common import load_split

    device = profile.devices.coliseum[0]
    spec = profile.student.model_copy(update={"load_in_4bit": False})  # prune real weights
    model, tokenizer = load_causal_lm(spec, device)
    source = Path(spec.model).expanduser() if is_local(spec.model) else None
    p = profile.prune
    return prune_layers(
        model,
        tokenizer,
        source,
        Path(out),
        fraction=p.layers,
        width=p.width,
        importance=p.importance,
        layer_score=p.layer_score,
        heads=p.heads,
        sparsity=p.sparsity,
        calibration=load_split(profile, "train", tokenizer),
        validation=load_split(profile, "validation", tokenizer),
        calibration_rows=p.calibration_rows,
        batch_size=profile.data.eval_batch_size,
        device=device,
    )
