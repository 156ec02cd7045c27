"""Knowledge distillation: the teacher's top-k log-probabilities, their cache files and the KD loss.

The teacher is run once per row (offline: every training row; online: only the rows the coliseum
will draw, known in advance from ``batch_indices``). For each position it keeps the ``k`` most
likely tokens of ``log_softmax(logits / T)``; ``kd_loss`` compares the student with them, lumping
every other token into one tail bucket so the comparison stays a true KL divergence between two
distributions over ``k + 1`` outcomes (exact when ``k`` equals the vocabulary).

Caches are safetensors files (never pickle) keyed by ``cache_key``: the teacher's identity (its
files' names, sizes and mtimes, or a hub id + revision), the tokenizer, the data's token ids, the
temperature, ``k`` and the shared vocabulary size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from engine.errors import DataError

_Q_TAIL_MIN = 1e-8


def batch_indices(
    seed: int, n_rows: int, steps: int, accum: int, batch_size: int
) -> list[torch.Tensor]:
    """The row indices of every micro-batch of one individual's training, in order.

    The coliseum draws its batches with exactly this sequence, so the teacher can compute (online)
    only the rows that will be used.
    """
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(n_rows, (batch_size,), generator=gen) for _ in range(steps * accum)]


@torch.no_grad()
def teacher_topk(
    model: Any,
    split: Any,
    rows: torch.Tensor | None,
    *,
    temperature: float,
    k: int,
    vocab: int,
    batch_size: int,
    device: str,
) -> dict[str, torch.Tensor]:
    """The teacher's top-``k`` log-probabilities at temperature ``temperature`` for ``rows`` of
    ``split`` (all rows when None), over its first ``vocab`` logits.

    Returns ``{"rows": int64 [R], "logp": float16 [R, L, k], "idx": int32 [R, L, k]}`` on the CPU,
    entries sorted by decreasing probability. The model is run in eval mode (its mode is restored).
    """
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be between 1 and the vocabulary size {vocab}, not {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    n, length = split.input_ids.shape
    rows = torch.arange(n) if rows is None else torch.as_tensor(rows).reshape(-1).long().cpu()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise IndexError(f"rows must lie in [0, {n}); got {int(rows.min())}..{int(rows.max())}")
    logp_out = torch.empty((rows.numel(), length, k), dtype=torch.float16)
    idx_out = torch.empty((rows.numel(), length, k), dtype=torch.int32)
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        for start in range(0, rows.numel(), batch_size):
            sel = rows[start : start + batch_size]
            ids = split.input_ids[sel].to(device)
            mask = split.attention_mask[sel].to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if logits.size(-1) < vocab:
                raise ValueError(
                    f"the teacher returns {logits.size(-1)} logits per position, fewer than the "
                    f"shared vocabulary size {vocab}"
                )
            logp = torch.log_softmax(logits[..., :vocab].float() / temperature, dim=-1)
            values, indices = logp.topk(k, dim=-1)
            logp_out[start : start + sel.numel()] = values.cpu().to(torch.float16)
            idx_out[start : start + sel.numel()] = indices.cpu().to(torch.int32)
    finally:
        if was_training:
            model.train()
    return {"rows": rows.clone(), "logp": logp_out, "idx": idx_out}


def kd_loss(
    student_logits: torch.Tensor,
    logp: torch.Tensor,
    idx: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    vocab: int,
) -> torch.Tensor:
    """KL(teacher_T ‖ student_T) · T², averaged over the scored positions.

    Student logits at position t are compared with the teacher's entries at t, for t < L - 1,
    where ``labels[:, t + 1] != -100`` (the positions cross-entropy scores). The teacher's ``k``
    kept tokens are compared one by one and all other tokens as one tail bucket; with ``k`` equal
    to ``vocab`` this is the exact full-vocabulary KL. Differentiable w.r.t. ``student_logits``;
    ``logp``/``idx``/``labels`` may live on another device (they are moved to the student's).
    """
    if student_logits.size(-1) < vocab:
        raise ValueError(
            f"the student returns {student_logits.size(-1)} logits per position, fewer than the "
            f"shared vocabulary size {vocab}"
        )
    if logp.shape != idx.shape or logp.shape[:2] != student_logits.shape[:2]:
        raise ValueError(
            f"shape mismatch: student logits {tuple(student_logits.shape)}, teacher logp "
            f"{tuple(logp.shape)}, idx {tuple(idx.shape)}"
        )
    dev = student_logits.device
    mask = labels[:, 1:].to(dev) != -100
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    k = logp.size(-1)
    t = float(temperature)
    s = student_logits[:, :-1, :vocab][mask]  # [P, V], only the scored positions
    log_q = torch.log_softmax(s.float() / t, dim=-1)
    lp = logp[:, :-1].to(dev)[mask].float()  # [P, k]
    ix = idx[:, :-1].to(dev)[mask].long()  # [P, k]
    log_qi = log_q.gather(-1, ix)
    p = lp.exp()
    # sum p_i (log p_i - log q_i), with 0 · log 0 = 0
    kl = torch.where(p > 0, p * (lp - log_qi), torch.zeros_like(p)).sum(-1)
    if k < vocab:
        p_tail = (1.0 - p.sum(-1)).clamp(min=0.0)
        # log q_tail = logsumexp of the non-selected tokens: exact, no 1 - Σq cancellation
        rest = log_q.scatter(-1, ix, torch.finfo(log_q.dtype).min)
        log_q_tail = torch.logsumexp(rest, dim=-1).clamp(min=math.log(_Q_TAIL_MIN))
        kl = kl + torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
    return kl.mean() * (t * t)


# --- cache files ----------------------------------------------------------------------------------


def model_files(path: str) -> list[tuple[str, int, int]] | None:
    """Sorted (relative name, size, mtime_ns) of a local model directory's files; None when
    ``path`` is not a local directory (a hub id)."""
    root = Path(path)
    if not root.is_dir():
        return None
    out = []
    for f in root.rglob("*"):
        if f.is_file():
            st = f.stat()
            out.append((f.relative_to(root).as_posix(), int(st.st_size), int(st.st_mtime_ns)))
    return sorted(out)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's vocabulary map and its bos/eos/pad/unk ids."""
    h = hashlib.sha256()
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    specials = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")
    }
    h.update(json.dumps(specials, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map text to the same ids (same vocabulary and special tokens)."""
    return a is b or tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def cache_key(
    *,
    teacher: str,
    teacher_files: list[tuple[str, int, int]] | None,
    tokenizer_fingerprint: str,
    input_ids: torch.Tensor,
    temperature: float,
    k: int,
    vocab: int,
) -> str:
    """A 24-hex-digit sha256 over everything the teacher's top-k depends on."""
    h = hashlib.sha256()
    head = {
        "version": 1,
        "teacher": teacher,
        "teacher_files": [list(f) for f in teacher_files] if teacher_files is not None else None,
        "tokenizer": tokenizer_fingerprint,
        "temperature": repr(float(temperature)),
        "k": int(k),
        "vocab": int(vocab),
        "input_ids_shape": list(input_ids.shape),
    }
    h.update(json.dumps(head, sort_keys=True).encode("utf-8"))
    ids = input_ids.detach().to("cpu", torch.int64).contiguous()
    h.update(ids.numpy().tobytes())
    return h.hexdigest()[:24]


def save_cache(path: Path, cache: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write ``cache`` (with string ``meta``) to ``path`` as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in cache.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(meta))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a cache file; a missing, truncated or corrupt file raises
    ``DataError``."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise DataError(
            f"The teacher cache {path} does not exist; it will be recomputed."
        ) from None
    except Exception as exc:  # safetensors raises its own error types for bad headers/sizes
        raise DataError(
            f"The teacher cache {path} cannot be read ({type(exc).__name__}: {exc}); it is "
            "truncated or corrupt and will be recomputed."
        ) from None
    return tensors, meta


def lookup(cache: dict[str, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, idx) of ``rows`` (in that order, repeats allowed) from a cache covering the rows
    listed in its ``"rows"`` tensor; a row it does not hold raises ``KeyError``."""
    have = cache["rows"].reshape(-1).long().cpu()
    want = torch.as_tensor(rows).reshape(-1).long().cpu()
    if have.numel() == 0:
        if want.numel():
            raise KeyError(f"row {int(want[0])} is not in the teacher cache (it holds no rows)")
        pos = want
    else:
        sorted_rows, order = have.sort()
        at = torch.searchsorted(sorted_rows, want).clamp(max=have.numel() - 1)
        found = sorted_rows[at] == want
        if not bool(found.all()):
            missing = int(want[~found][0])
            raise KeyError(f"row {missing} is not in the teacher cache")
        pos = order[at]
    return cache["logp"][pos], cache["idx"][pos]


# --- sequence-level distillation ------------------------------------------------------------------
#
# Across two tokenizers the only thing both models share is text: the teacher answers every
# training prompt once (greedy decoding, so the answers are a function of the teacher and the
# prompts, and the cache key covers both), the answers are kept as JSON, and each student
# tokenizes them with its own tokenizer and learns them with cross-entropy (Kim & Rush 2016).


@torch.no_grad()
def teacher_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: str,
    progress: Any = None,
) -> list[str]:
    """The teacher's greedy continuation of every prompt, as text (special tokens kept, so an
    end-of-sequence the teacher writes stays in the answer the students learn).

    Prompts are left-padded in batches; generation stops at the tokenizer's eos token or after
    ``max_new_tokens``. ``progress(done, total)`` is called after each batch when given."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = bool(getattr(model, "training", False))
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
            width = max(1, max(len(e) for e in encoded))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, e in enumerate(encoded):
                if e:
                    ids[i, width - len(e) :] = torch.tensor(e, dtype=torch.long)
                    mask[i, width - len(e) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in out[:, width:].cpu().tolist():
                if tokenizer.eos_token_id in row:  # keep the eos, drop the padding after it
                    row = row[: row.index(tokenizer.eos_token_id) + 1]
                answers.append(tokenizer.decode(row, skip_special_tokens=False))
            if progress is not None:
                progress(len(answers), len(prompts))
    finally:
        model.train(was_training)
    return answers


def sequence_cache_key(
    *,
    teacher: str,
    teacher_files: list[tuple[str, int, int]] | None,
    prompts: list[str],
    max_new_tokens: int,
) -> str:
    """A 24-hex-digit sha256 over everything the teacher's greedy answers depend on."""
    h = hashlib.sha256()
    head = {
        "version": 1,
        "kind": "sequences",
        "teacher": teacher,
        "teacher_files": [list(f) for f in teacher_files] if teacher_files is not None else None,
        "max_new_tokens": int(max_new_tokens),
        "decoding": "greedy",
    }
    h.update(json.dumps(head, sort_keys=True).encode("utf-8"))
    h.update(json.dumps(prompts, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:24]


def save_answers(path: Path, prompts: list[str], answers: list[str], meta: dict[str, str]) -> None:
    """Write the teacher's answers (with their prompts and ``meta``) as JSON, atomically."""
    from engine.rundir import atomic_write_text

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    doc = {"meta": meta, "prompts": prompts, "answers": answers}
    atomic_write_text(Path(path), json.dumps(doc, ensure_ascii=False))


def load_answers(path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """(prompts, answers, meta) of an answers file; a missing, truncated or malformed file raises
    ``DataError``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"The teacher's answers {path} do not exist; they will be recomputed."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"The teacher's answers {path} cannot be read ({type(exc).__name__}: {exc}); the file "
            "is truncated or corrupt and will be recomputed."
        ) from None
    if not isinstance(doc, dict):
        doc = {}
    prompts, answers = doc.get("prompts"), doc.get("answers")
    if (
        not isinstance(prompts, list)
        or not isinstance(answers, list)
        or len(prompts) != len(answers)
        or not all(isinstance(x, str) for x in prompts + answers)
    ):
        raise DataError(
            f"The teacher's answers {path} are malformed (expected an object with lists of "
            "strings 'prompts' and 'answers' of equal length); they will be recomputed."
        )
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    return prompts, answers, {str(k): str(v) for k, v in meta.items()}
