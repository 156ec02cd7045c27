"""The coliseum: a process that holds the student base model once and trains and evaluates adapters.

The base is wrapped by PEFT once at start-up; each individual's adapter is added under its own
name, trained or evaluated, read back with ``get_peft_model_state_dict`` and deleted. The base
weights are never modified and never reloaded. Evaluation puts many adapters in one forward pass
(PEFT mixed-adapter batches, ``adapter_names=[...]``), one block of rows per individual.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from engine.workers.common import load_split
from engine.workers.messages import (
    EvalDone,
    EvalTask,
    ExportDone,
    ExportTask,
    Progress,
    TrainDone,
    TrainTask,
)

HOST_ADAPTER = "_host"  # PEFT needs one adapter to build the PeftModel; it is never active


class Coliseum:
    def __init__(self, worker: str, device: str, profile: Any, results: Any, go: Any) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from engine.models import load_causal_lm

        self.worker, self.device, self.profile, self.results, self.go = (
            worker,
            device,
            profile,
            results,
            go,
        )
        t0 = time.perf_counter()
        base, self.tokenizer = load_causal_lm(profile.student, device)
        self.train_split = load_split(profile, "train", self.tokenizer)
        self.val_split = load_split(profile, "validation", self.tokenizer)
        for p in base.parameters():
            p.requires_grad_(False)
        host = LoraConfig(r=1, lora_alpha=1, target_modules=list(profile.population.target_modules))
        self.model = get_peft_model(base, host, adapter_name=HOST_ADAPTER)
        self.model.eval()
        self.params = sum(p.numel() for p in base.parameters())
        self.base_path = base.config.name_or_path or profile.student.model
        self.load_seconds = time.perf_counter() - t0
        self.torch = torch
        self._kd_cache: tuple[str, dict[str, Any]] | None = None  # (path, tensors): the last one
        self._answers: tuple[str, Any] | None = None  # (path, tokenized split): the last one
        self._test_split: Any = None

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        """Hashes the whole vocabulary: once per worker, not once per individual."""
        from engine.distill import tokenizer_fingerprint

        return tokenizer_fingerprint(self.tokenizer)

    @property
    def ready_detail(self) -> str:
        return f"student {self.params / 1e6:.2f}M params, loaded in {self.load_seconds:.1f}s"

    def _split(self, which: str) -> Any:
        """The validation split, or the test split (loaded on first use: only reports need it)."""
        if which == "validation":
            return self.val_split
        if which != "test":
            raise ValueError(f"no split {which!r}")
        if self._test_split is None:
            from engine.errors import DataError

            self._test_split = load_split(self.profile, "test", self.tokenizer)
            if self._test_split is None:
                raise DataError("the profile has no test split ([data] test)")
        return self._test_split

    # --- adapters -------------------------------------------------------------------------------

    def _add(self, name: str, genome: dict[str, Any], adapter: bytes | None) -> None:
        from peft import LoraConfig, set_peft_model_state_dict
        from safetensors.torch import load as load_bytes

        cfg = LoraConfig(
            r=genome["rank"],
            lora_alpha=genome["alpha"],
            lora_dropout=genome["dropout"],
            target_modules=list(genome["target_modules"]),
            bias="none",
        )
        self.torch.manual_seed(genome["seed"])  # PEFT's initialisation draws from the global RNG
        self.model.add_adapter(name, cfg)
        if adapter is not None:
            tensors = load_bytes(adapter)
            result = set_peft_model_state_dict(self.model, tensors, adapter_name=name)
            unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
            if unexpected:
                raise ValueError(
                    f"adapter has tensors for modules the genome does not target: {unexpected[:3]}"
                )

    def _read(self, name: str) -> bytes:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save as save_bytes

        sd = get_peft_model_state_dict(self.model, adapter_name=name)
        return save_bytes({k: v.detach().to("cpu").contiguous() for k, v in sd.items()})

    def _remove(self, name: str) -> None:
        self.model.set_adapter(HOST_ADAPTER)
        if name in self.model.peft_config:
            self.model.delete_adapter(name)

    # --- work -----------------------------------------------------------------------------------

    def handle(self, task: Any) -> Any:
        if isinstance(task, TrainTask):
            return self.train(task)
        if isinstance(task, EvalTask):
            return self.evaluate(task)
        if isinstance(task, ExportTask):
            return self.export(task)
        raise TypeError(f"coliseum cannot handle {type(task).__name__}")

    def _teacher_topk(self, task: TrainTask) -> dict[str, Any] | None:
        """The teacher's top-k for this task (cache file or online bytes), checked against this
        worker's own tokenizer: a KL across two vocabularies is never computed."""
        import json
        import struct

        from safetensors.torch import load as load_bytes

        from engine.distill import load_cache
        from engine.errors import DataError

        if task.kd_path is not None:
            if self._kd_cache is None or self._kd_cache[0] != task.kd_path:
                tensors, meta = load_cache(Path(task.kd_path))
                self._kd_cache = (task.kd_path, {**tensors, "meta": meta})
            kd = self._kd_cache[1]
        elif task.kd_blob is not None:
            # The safetensors header: 8 bytes of length, then JSON with "__metadata__".
            (n,) = struct.unpack("<Q", task.kd_blob[:8])
            meta = json.loads(task.kd_blob[8 : 8 + n]).get("__metadata__", {})
            kd = {**load_bytes(task.kd_blob), "meta": meta}
        else:
            return None
        meta = kd["meta"]
        if meta.get("tokenizer") != self.tokenizer_fingerprint:
            raise DataError(
                f"the teacher's logits ({meta.get('teacher', '?')}) use another tokenizer than the "
                f"student ({self.profile.student.model}): logit distillation needs one vocabulary"
            )
        return kd

    def _answers_split(self, path: str) -> Any:
        """Sequence-level distillation: the training prompts with the teacher's answers, tokenized
        by this student's own tokenizer (the teacher's may differ: only text crosses over)."""
        if self._answers is None or self._answers[0] != path:
            from engine.data import Example, read_examples, tokenize
            from engine.distill import load_answers
            from engine.errors import DataError

            d = self.profile.data
            prompts, answers, _ = load_answers(Path(path))
            own = [e.prompt for e in read_examples(d.train, d.format, limit=d.max_train_examples)]
            if prompts != own:
                raise DataError(
                    f"the teacher's answers {path} answer other prompts than {d.train} holds: "
                    "the training data changed since they were generated"
                )
            examples = [Example(p, a) for p, a in zip(prompts, answers, strict=True)]
            self._answers = (path, tokenize(examples, self.tokenizer, d.max_seq_len))
        return self._answers[1]

    def train(self, task: TrainTask) -> TrainDone:
        from engine.distill import batch_indices, lookup
        from engine.losses import distillation, get_loss

        torch, prof = self.torch, self.profile
        name = f"ind_{task.id}"
        t0 = time.perf_counter()
        try:
            self._add(name, task.genome, task.adapter)
            self.model.set_adapter(name)  # only this adapter is trainable and active
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            params = [p for _, p in named]
            opt = torch.optim.AdamW(
                params,
                lr=task.genome["learning_rate"],
                weight_decay=prof.training.weight_decay
                if task.genome.get("weight_decay") is None
                else float(task.genome["weight_decay"]),
            )
            if task.optimizer is not None:
                from engine.workers.optim import unpack

                unpack(task.optimizer, opt, named, name)  # False: another shape, a cold start
            kd = self._teacher_topk(task)
            if kd is not None:
                loss_fn = distillation(
                    float(kd["meta"]["temperature"]),
                    prof.distill.alpha
                    if task.genome.get("kd_alpha") is None
                    else float(task.genome["kd_alpha"]),
                    int(kd["meta"]["vocab"]),
                )
            else:
                loss_fn = get_loss(prof.training.loss)
            torch.manual_seed(task.genome["seed"])  # dropout
            split, bs, accum = (
                self._answers_split(task.answers_path) if task.answers_path else self.train_split,
                prof.data.batch_size,
                prof.training.gradient_accumulation,
            )
            # The same rows, in the same order, as the teacher's online top-k was computed on.
            draw_seed = task.genome["seed"] if task.draw_seed is None else task.draw_seed
            draws = iter(batch_indices(draw_seed, len(split), task.steps, accum, bs))
            every = max(1, task.steps // 10)
            losses: list[float] = []
            tokens = 0
            self.model.train()
            for step in range(1, task.steps + 1):
                self.go.wait()  # the engine's pause: no work is done while it is cleared
                step_loss = 0.0
                terms: dict[str, float] = {}
                for _ in range(accum):
                    drawn = next(draws)
                    # task.splits > 1 after an out-of-memory retry: the same rows in smaller
                    # pieces, each weighted by its share of the drawn micro-batch.
                    for idx in drawn.chunk(max(1, min(task.splits, len(drawn)))):
                        share = len(idx) / len(drawn) / accum
                        batch = {
                            "input_ids": split.input_ids[idx].to(self.device),
                            "attention_mask": split.attention_mask[idx].to(self.device),
                            "labels": split.labels[idx].to(self.device),
                        }
                        if kd is not None:
                            logp, top = lookup(kd, idx)
                            batch["kd_logp"], batch["kd_idx"] = (
                                logp.to(self.device),
                                top.to(self.device),
                            )
                        # No KV cache: nothing is generated, and a cache of every block's keys
                        # and values would sit beside the logits (engine/memory.py counts none).
                        logits = self.model(
                            input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"],
                            use_cache=False,
                        ).logits
                        loss, t = loss_fn(logits, batch)
                        (loss * share).backward()
                        step_loss += float(loss.detach()) * share
                        for k, v in t.items():
                            terms[k] = terms.get(k, 0.0) + v * share
                        tokens += int(batch["attention_mask"].sum())
                if prof.training.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, prof.training.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(step_loss)
                if step % every == 0 or step == task.steps:
                    self.results.put(
                        Progress(self.worker, task.job, task.id, step, task.steps, step_loss, terms)
                    )
            self.model.eval()
            from engine.workers.optim import pack

            return TrainDone(
                self.worker,
                task.job,
                task.id,
                self._read(name),
                losses,
                tokens,
                time.perf_counter() - t0,
                pack(opt, named, name),
            )
        finally:
            self.model.eval()
            self._remove(name)

    def evaluate(self, task: EvalTask) -> EvalDone:
        """Mean validation token loss of every adapter in ``task``, many adapters per forward pass."""
        from engine.losses import token_losses

        torch = self.torch
        t0 = time.perf_counter()
        names = []
        try:
            for ind_id, genome, adapter in task.items:
                if genome is None:  # the base model alone: PEFT's reserved name in mixed batches
                    names.append("__base__")
                    continue
                name = f"ind_{ind_id}"
                self._add(name, genome, adapter)
                names.append(name)
            self.model.set_adapter(HOST_ADAPTER)
            d = self.profile.data
            per_pass = task.rows_per_pass or d.eval_rows_per_pass
            split, n = self._split(task.split), max(1, min(d.eval_batch_size, per_pass))
            sums = torch.zeros(len(names), dtype=torch.float64)
            counts = torch.zeros(len(names), dtype=torch.int64)
            group = max(1, per_pass // n)  # adapters sharing one pass
            with torch.no_grad():
                for start in range(0, len(split), n):
                    self.go.wait()
                    ids = split.input_ids[start : start + n].to(self.device)
                    mask = split.attention_mask[start : start + n].to(self.device)
                    labels = split.labels[start : start + n].to(self.device)
                    rows = ids.size(0)
                    for g0 in range(0, len(names), group):
                        chunk = names[g0 : g0 + group]
                        k = len(chunk)
                        logits = self.model(
                            input_ids=ids.repeat(k, 1),
                            attention_mask=mask.repeat(k, 1),
                            adapter_names=[nm for nm in chunk for _ in range(rows)],
                            use_cache=False,
                        ).logits
                        s, c = token_losses(logits, labels.repeat(k, 1))
                        sums[g0 : g0 + k] += s.view(k, rows).sum(1).double().cpu()
                        counts[g0 : g0 + k] += c.view(k, rows).sum(1).cpu()
            scores = {
                ind_id: (float(sums[i] / counts[i].clamp(min=1)), int(counts[i]))
                for i, (ind_id, _, _) in enumerate(task.items)
            }
            return EvalDone(
                self.worker, task.job, scores, int(counts.sum()), time.perf_counter() - t0
            )
        finally:
            for name in names:
                if name != "__base__":
                    self._remove(name)

    def export(self, task: ExportTask) -> ExportDone:
        """Save the adapter as a standard PEFT directory, re-measure its validation loss through
        the plain single-adapter path, and put beside it the mergekit recipe, the task's files
        (lineage.json, the model card) and, when asked, the merged model (``merged/``). The
        directory is assembled under a temporary name and appears whole."""
        import shutil
        import tempfile
        from pathlib import Path

        from engine.export import merge_with_mergekit, write_mergekit_recipe
        from engine.losses import validation_loss
        from engine.rundir import atomic_write_text

        name = f"ind_{task.id}"
        out = Path(task.out_dir)
        tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
        merged = None
        try:
            self._add(name, task.genome, task.adapter)
            self.model.set_adapter(name)
            loss, _ = validation_loss(
                self.model, self.val_split, self.profile.data.eval_batch_size, self.device
            )
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(str(tmp), selected_adapters=[name])
            saved = tmp / name if (tmp / name).is_dir() else tmp  # PEFT nests non-default adapters
            dtype = self.profile.student.dtype
            write_mergekit_recipe(
                self.base_path, saved, saved / "merge.yaml", dtype=dtype, base_ref=task.base_ref
            )
            for file_name, text in task.files.items():
                atomic_write_text(saved / file_name, text)
            if task.merge:
                # merge.yaml names the base as it will be seen from the export directory; this
                # worker merges with the paths as they are here and now.
                with tempfile.TemporaryDirectory(prefix="genesis-recipe-") as d:
                    local = write_mergekit_recipe(
                        self.base_path, saved, Path(d) / "merge.yaml", dtype
                    )
                    merge_with_mergekit(
                        local, saved / "merged", cuda=self.device.startswith("cuda")
                    )
                merged = str(out / "merged")
            old = out.parent / f".{out.name}.old"
            if out.exists():
                os.replace(out, old)
            os.replace(saved, out)
            shutil.rmtree(old, ignore_errors=True)
            return ExportDone(self.worker, task.job, task.id, str(out), loss, merged)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._remove(name)
