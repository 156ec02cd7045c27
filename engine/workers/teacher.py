"""The teacher: a process that holds the teacher model on its own device.

For now it measures the teacher's own validation loss — the target the students are compared to.
The distillation issue adds logit computation and caching to the same process.
"""

from __future__ import annotations

import time
from typing import Any

from engine.workers.common import load_split
from engine.workers.messages import TeacherDone, TeacherEvalTask


class Teacher:
    def __init__(
        self, worker: str, device: str, profile: Any, results: Any = None, go: Any = None
    ) -> None:
        from engine.models import load_causal_lm

        t0 = time.perf_counter()
        self.worker, self.device, self.profile = worker, device, profile
        self.model, self.tokenizer = load_causal_lm(profile.teacher, device)
        self.val_split = load_split(profile, "validation", self.tokenizer)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.load_seconds = time.perf_counter() - t0

    @property
    def ready_detail(self) -> str:
        return f"teacher {self.params / 1e6:.2f}M params, loaded in {self.load_seconds:.1f}s"

    def handle(self, task: Any) -> Any:
        if isinstance(task, TeacherEvalTask):
            from engine.losses import validation_loss

            t0 = time.perf_counter()
            loss, tokens = validation_loss(
                self.model, self.val_split, self.profile.data.eval_batch_size, self.device
            )
            return TeacherDone(self.worker, task.job, loss, tokens, time.perf_counter() - t0)
        raise TypeError(f"teacher cannot handle {type(task).__name__}")
