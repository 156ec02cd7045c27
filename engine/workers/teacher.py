"""The teacher: a process that holds the teacher model on its own device.

It scores the validation split (the target the students are compared to) and, for distillation,
computes its temperature-softened top-k log-probabilities on the training split: once for the whole
split into a cache file that every generation and every resume reuses, or — online — for exactly
the rows one individual trains on.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from engine.workers.common import load_split
from engine.workers.messages import (
    AnswersDone,
    LogitsDone,
    TeacherAnswersTask,
    TeacherDone,
    TeacherEvalTask,
    TeacherLogitsTask,
)


class Teacher:
    def __init__(
        self, worker: str, device: str, profile: Any, results: Any = None, go: Any = None
    ) -> None:
        from engine.models import load_causal_lm

        t0 = time.perf_counter()
        self.worker, self.device, self.profile = worker, device, profile
        self.model, self.tokenizer = load_causal_lm(profile.teacher, device, fallback=True)
        self.val_split = load_split(profile, "validation", self.tokenizer)
        self._train_split: Any = None
        self.params = sum(p.numel() for p in self.model.parameters())
        self.load_seconds = time.perf_counter() - t0

    @property
    def ready_detail(self) -> str:
        return f"teacher {self.params / 1e6:.2f}M params, loaded in {self.load_seconds:.1f}s"

    @property
    def train_split(self) -> Any:
        if self._train_split is None:  # only distillation needs it
            self._train_split = load_split(self.profile, "train", self.tokenizer)
        return self._train_split

    @property
    def vocab(self) -> int:
        """The real vocabulary: padded embedding rows beyond the tokenizer's are never compared."""
        return min(int(self.model.config.vocab_size), len(self.tokenizer))

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        """Hashes the whole vocabulary: once per worker, not once per request."""
        from engine.distill import tokenizer_fingerprint

        return tokenizer_fingerprint(self.tokenizer)

    def meta(self) -> dict[str, str]:
        d = self.profile.distill
        return {
            "teacher": str(self.profile.teacher.model),
            "tokenizer": self.tokenizer_fingerprint,
            "temperature": repr(float(d.temperature)),
            "top_k": str(d.top_k),
            "vocab": str(self.vocab),
            "rows": str(len(self.train_split)),
        }

    def handle(self, task: Any) -> Any:
        if isinstance(task, TeacherEvalTask):
            from engine.losses import validation_loss

            t0 = time.perf_counter()
            split = self.val_split
            if task.split == "test":
                from engine.errors import DataError

                split = load_split(self.profile, "test", self.tokenizer)
                if split is None:
                    raise DataError("the profile has no test split ([data] test)")
            loss, tokens = validation_loss(
                self.model, split, self.profile.data.eval_batch_size, self.device
            )
            return TeacherDone(self.worker, task.job, loss, tokens, time.perf_counter() - t0)
        if isinstance(task, TeacherLogitsTask):
            return self.logits(task)
        if isinstance(task, TeacherAnswersTask):
            return self.answers(task)
        raise TypeError(f"teacher cannot handle {type(task).__name__}")

    def logits(self, task: TeacherLogitsTask) -> LogitsDone:
        import torch
        from safetensors.torch import save

        from engine import distill
        from engine.errors import DataError

        t0 = time.perf_counter()
        d, split = self.profile.distill, self.train_split
        k = min(d.top_k, self.vocab)
        kwargs = dict(
            temperature=d.temperature,
            k=k,
            vocab=self.vocab,
            batch_size=self.profile.data.eval_batch_size,
            device=self.device,
        )
        if task.cache_dir is not None:
            spec = self.profile.teacher
            key = distill.cache_key(
                teacher=f"{spec.model}@{spec.revision or ''}",
                teacher_files=distill.model_files(spec.model),
                tokenizer_fingerprint=self.tokenizer_fingerprint,
                input_ids=split.input_ids,
                temperature=d.temperature,
                k=k,
                vocab=self.vocab,
            )
            path = Path(task.cache_dir) / f"{key}.safetensors"
            note = ""
            if path.exists():
                try:
                    cache, _ = distill.load_cache(path)
                    if len(cache["rows"]) == len(split):
                        return LogitsDone(
                            self.worker, task.job, str(path), None, len(split), 0.0, True
                        )
                except DataError as exc:  # computed again below and replaced atomically
                    note = exc.message
            cache = distill.teacher_topk(self.model, split, None, **kwargs)
            distill.save_cache(path, cache, self.meta())
            return LogitsDone(
                self.worker,
                task.job,
                str(path),
                None,
                len(split),
                time.perf_counter() - t0,
                False,
                note,
            )
        assert task.seed is not None and task.steps is not None
        p = self.profile
        drawn = distill.batch_indices(
            task.seed, len(split), task.steps, p.training.gradient_accumulation, p.data.batch_size
        )
        rows = torch.unique(torch.cat(drawn)) if drawn else torch.zeros(0, dtype=torch.long)
        part = distill.teacher_topk(self.model, split, rows, **kwargs)
        blob = save({n: t.contiguous() for n, t in part.items()}, metadata=self.meta())
        return LogitsDone(
            self.worker, task.job, None, blob, len(rows), time.perf_counter() - t0, False
        )

    def answers(self, task: TeacherAnswersTask) -> AnswersDone:
        """Sequence-level distillation: the teacher's greedy answer to every training prompt,
        computed once into a JSON file keyed by the teacher, the prompts and max_new_tokens."""
        from engine import distill
        from engine.data import read_examples
        from engine.errors import DataError

        t0 = time.perf_counter()
        p = self.profile
        examples = read_examples(p.data.train, p.data.format, limit=p.data.max_train_examples)
        prompts = [e.prompt for e in examples]
        spec = p.teacher
        key = distill.sequence_cache_key(
            teacher=f"{spec.model}@{spec.revision or ''}",
            teacher_files=distill.model_files(spec.model),
            prompts=prompts,
            max_new_tokens=p.distill.max_new_tokens,
        )
        path = Path(task.cache_dir) / f"answers-{key}.json"
        note = ""
        if path.exists():
            try:
                have, _, _ = distill.load_answers(path)
                if have == prompts:
                    return AnswersDone(self.worker, task.job, str(path), len(prompts), 0.0, True)
            except DataError as exc:  # generated again below and replaced atomically
                note = exc.message
        answers = distill.teacher_answers(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=p.distill.max_new_tokens,
            batch_size=p.data.eval_batch_size,
            device=self.device,
        )
        meta = {
            "teacher": str(spec.model),
            "max_new_tokens": str(p.distill.max_new_tokens),
            "decoding": "greedy",
        }
        distill.save_answers(path, prompts, answers, meta)
        return AnswersDone(
            self.worker, task.job, str(path), len(prompts), time.perf_counter() - t0, False, note
        )
