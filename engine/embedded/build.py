"""Build the embedded default from nothing: corpus, data files, tokenizer, teacher and student.

    python -m engine.embedded.build            # the shipped assets (about 12-14 minutes on 2 CPU cores)
    python -m engine.embedded.build --quick --out /tmp/assets   # a tiny smoke build (under 2 minutes)

Everything is deterministic from ``--seed``: the corpus (seeded ``random.Random``), the tokenizer
(trained on that corpus) and both models (``torch.manual_seed`` before initialisation and for the
data order). The teacher learns general + cardiology; the student learns general only, so the
teacher is clearly better on the cardiology validation split: that gap is the lab's demo task.
Bit-for-bit identical outputs need the same machine type and thread count (float reductions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Threads that wait at OpenMP barriers sleep instead of spinning: when another process shares the
# cores (a lab run, a test suite), spinning threads made training ~15x slower here; sleeping costs
# little when the machine is free. Must be set before torch is first imported (torch loads lazily).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.embedded import ASSETS_DIR  # noqa: E402
from engine.embedded.corpus import EXTENSIONS, QUICK_SIZES, SIZES, Record, make_splits, render_file

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]"]
DATA_SPLITS = ("general", "domain_train", "domain_val")
FORMATS = ("text", "alpaca", "mistral-inst")
SEQ_LEN = 128


@dataclass(frozen=True)
class Arch:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


TEACHER = Arch(hidden=256, intermediate=704, layers=8, heads=4, kv_heads=4)
STUDENT = Arch(hidden=192, intermediate=512, layers=8, heads=4, kv_heads=2)


@dataclass(frozen=True)
class Plan:
    sizes: dict[str, int]
    vocab: int
    teacher_tokens: int
    student_tokens: int
    batch: int
    teacher_lr: float
    student_lr: float
    domain_share: float  # share of the teacher's training tokens that are cardiology
    smoothing: float = 0.1  # label smoothing of both pretrainings (see train)


FULL = Plan(SIZES, 2048, 1_200_000, 1_100_000, 16, 2e-3, 3e-3, 0.4)
QUICK = Plan(QUICK_SIZES, 1024, 60_000, 60_000, 8, 3e-3, 3e-3, 0.4)


def log(msg: str) -> None:
    print(msg, flush=True)


# --- data ---------------------------------------------------------------------------------------


def split_path(data_dir: Path, split: str, fmt: str) -> Path:
    return data_dir / f"{split}{EXTENSIONS[fmt]}"


def write_data(splits: dict[str, list[Record]], data_dir: Path) -> dict[str, int]:
    data_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split in DATA_SPLITS:
        for fmt in FORMATS:
            path = split_path(data_dir, split, fmt)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(render_file(splits[split], fmt), encoding="utf-8")
            os.replace(tmp, path)
            sizes[path.name] = path.stat().st_size
    return sizes


def read_all(data_dir: Path, split: str) -> dict[str, list]:
    """The examples of ``split`` in each format, read back through engine.data (the lab's reader)."""
    from engine.data import read_examples

    return {fmt: read_examples(split_path(data_dir, split, fmt), fmt) for fmt in FORMATS}


def in_memory(records: list[Record]) -> dict[str, list]:
    """Examples for a split that is not written to disk (general_val), via the same reader."""
    import tempfile

    from engine.data import read_examples

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            p = Path(tmp) / f"x{EXTENSIONS[fmt]}"
            p.write_text(render_file(records, fmt), encoding="utf-8")
            out[fmt] = read_examples(p, fmt)
    return out


# --- tokenizer ----------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    return fast


# --- training -----------------------------------------------------------------------------------


def pack(examples: list, tokenizer: Any, seq_len: int) -> tuple[Any, Any, Any, int]:
    """Greedily fill rows of ``seq_len`` tokens with whole examples (each starts with ``<s>``); the
    rest of a row is padding. Loss is on every real token: this is the models' pretraining."""
    import torch

    from engine.data import tokenize

    t = tokenize(examples, tokenizer, seq_len)
    lengths = t.attention_mask.sum(1).tolist()
    rows: list[list[int]] = []
    cur: list[int] = []
    for i, n in enumerate(lengths):
        if cur and len(cur) + n > seq_len:
            rows.append(cur)
            cur = []
        cur.extend(t.input_ids[i, :n].tolist())
    if cur:
        rows.append(cur)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, labels, mask, int(mask.sum())


def take_tokens(examples: list, tokenizer: Any, budget: int, rng: Any) -> list:
    """Shuffled examples (cycled when the pool is smaller than the budget) holding about ``budget`` tokens."""
    lengths = [
        len(x)
        for x in tokenizer([e.prompt + e.response for e in examples], add_special_tokens=False)[
            "input_ids"
        ]
    ]
    out, total = [], 0
    while total < budget:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in order:
            out.append(examples[i])
            total += min(lengths[i], SEQ_LEN)
            if total >= budget:
                break
    return out


def make_model(arch: Arch, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def train(
    name: str,
    model: Any,
    ids: Any,
    labels: Any,
    mask: Any,
    *,
    batch: int,
    lr: float,
    seed: int,
    smoothing: float = 0.0,
) -> dict:
    """Full training with AdamW and a cosine schedule. ``smoothing`` (label smoothing) keeps the
    models from becoming certain on a templated corpus, so that text they have never seen costs a
    bounded, sane loss instead of tens of nats per token."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(ids.shape[0], generator=g)
    steps = max(1, math.ceil(ids.shape[0] / batch))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    sched = get_cosine_schedule_with_warmup(
        opt, num_warmup_steps=max(1, steps // 20), num_training_steps=steps
    )
    model.train()
    t0 = time.perf_counter()
    seen, ema = 0, None
    every = max(1, steps // 25)
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        logits = model(input_ids=ids[idx], attention_mask=mask[idx]).logits[:, :-1]
        target = labels[idx][:, 1:]
        loss_t = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=-100,
            label_smoothing=smoothing,
        )
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        seen += int(mask[idx].sum())
        loss = float(loss_t.detach())
        ema = loss if ema is None else 0.9 * ema + 0.1 * loss
        if (step + 1) % every == 0 or step + 1 == steps:
            dt = time.perf_counter() - t0
            log(
                f"[{name}] step {step + 1}/{steps}  loss {ema:.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{seen / dt:,.0f} tok/s  {dt:.0f}s"
            )
    model.eval()
    return {
        "steps": steps,
        "train_tokens": seen,
        "final_train_loss": round(ema or 0.0, 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def evaluate(model: Any, split: Any, batch: int = 32) -> float:
    """Mean cross-entropy per response token (the loss the lab measures), batches trimmed to their longest row."""
    import torch

    lengths = split.attention_mask.sum(1)
    order = torch.argsort(lengths)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(split), batch):
            idx = order[s : s + batch]
            L = int(lengths[idx].max())
            ids, lab, m = (
                split.input_ids[idx, :L],
                split.labels[idx, :L],
                split.attention_mask[idx, :L],
            )
            logits = model(input_ids=ids, attention_mask=m).logits[:, :-1].float()
            tgt = lab[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                tgt.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((tgt != -100).sum())
    return total / max(count, 1)


def save(model: Any, tokenizer: Any, out: Path) -> int:
    import torch

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    # name the class every transformers version knows (v5 writes its internal "TokenizersBackend")
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes its file owner-only
    return sum(f.stat().st_size for f in out.iterdir())


# --- main ---------------------------------------------------------------------------------------


def build(out: Path, seed: int, plan: Plan) -> dict:
    import random

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import tokenize

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    info: dict[str, Any] = {"seed": seed, "quick": plan is QUICK}

    def stage(name: str, t0: float) -> None:
        stages[name] = round(time.perf_counter() - t0, 1)
        log(f"== {name} done in {stages[name]}s")

    # 1. corpus and data files
    t0 = time.perf_counter()
    log(f"== corpus (seed {seed}): {plan.sizes}")
    splits = make_splits(seed, plan.sizes)
    data_dir = out / "data"
    info["data_files"] = write_data(splits, data_dir)
    info["examples"] = {k: len(v) for k, v in splits.items()}
    ex = {s: read_all(data_dir, s) for s in DATA_SPLITS}
    ex["general_val"] = in_memory(splits["general_val"])
    stage("corpus", t0)

    # 2. tokenizer
    t0 = time.perf_counter()
    # General + domain text: a tokenizer learned from general text alone spells cardiology words
    # nearly letter by letter (this corpus is too narrow for generic sub-word pieces), which
    # pushed ~40% of domain examples past 128 tokens. The domain-only tokens this creates are never
    # seen by the student; label smoothing in training (see train) keeps their cost bounded.
    texts = [
        e.prompt + e.response
        for s in ("general", "domain_train")
        for fmt in FORMATS
        for e in ex[s][fmt]
    ]
    tokenizer = train_tokenizer(texts, plan.vocab)
    log(f"== tokenizer: {len(tokenizer)} tokens")
    info["vocab_size"] = len(tokenizer)
    stage("tokenizer", t0)

    # token statistics of the written splits
    info["tokens"] = {}
    for s in (*DATA_SPLITS, "general_val"):
        lens = {}
        for fmt in FORMATS:
            t = tokenize(ex[s][fmt], tokenizer, 10_000)
            n = t.attention_mask.sum(1)
            lens[fmt] = {
                "total": int(n.sum()),
                "response": t.n_tokens,
                "mean": round(float(n.float().mean()), 1),
                "max": int(n.max()),
                "over_128": int((n > SEQ_LEN).sum()),
            }
        info["tokens"][s] = lens
        log(
            f"   {s}: "
            + ", ".join(
                f"{f} mean {v['mean']} max {v['max']} >128: {v['over_128']}"
                for f, v in lens.items()
            )
        )

    rng = random.Random(seed * 1_000_003 + 11)
    models_dir = out / "models"
    results: dict[str, Any] = {}
    for name, arch, pools, budget, lr in (
        ("student", STUDENT, {"general": 1.0}, plan.student_tokens, plan.student_lr),
        (
            "teacher",
            TEACHER,
            {"general": 1.0 - plan.domain_share, "domain_train": plan.domain_share},
            plan.teacher_tokens,
            plan.teacher_lr,
        ),
    ):
        t0 = time.perf_counter()
        stream = []
        for s, share in pools.items():
            pool = [e for fmt in FORMATS for e in ex[s][fmt]]
            stream += take_tokens(pool, tokenizer, int(budget * share), rng)
        rng.shuffle(stream)
        ids, labels, mask, n = pack(stream, tokenizer, SEQ_LEN)
        model = make_model(arch, tokenizer, seed * 1_000_003 + (1 if name == "student" else 2))
        params = n_params(model)
        log(
            f"== {name}: {params:,} parameters, {len(stream):,} examples packed into {ids.shape[0]:,} rows ({n:,} tokens)"
        )
        torch.manual_seed(seed * 1_000_003 + 7)
        stats = train(
            name,
            model,
            ids,
            labels,
            mask,
            batch=plan.batch,
            lr=lr,
            seed=seed * 1_000_003 + 13,
            smoothing=plan.smoothing,
        )
        size = save(model, tokenizer, models_dir / name)
        results[name] = {
            "params": params,
            "arch": arch.__dict__,
            "lr": lr,
            "label_smoothing": plan.smoothing,
            "bytes_on_disk": size,
            "trained_on": list(pools),
            **stats,
        }
        del model
        stage(f"train_{name}", t0)

    # 3. evaluation of the saved checkpoints, loaded the way the lab loads them
    t0 = time.perf_counter()
    losses: dict[str, dict[str, Any]] = {}
    for name in ("student", "teacher"):
        model = AutoModelForCausalLM.from_pretrained(models_dir / name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(models_dir / name)
        losses[name] = {}
        for s in ("domain_val", "general_val"):
            per = {
                fmt: round(evaluate(model, tokenize(ex[s][fmt], tok, SEQ_LEN)), 4)
                for fmt in FORMATS
            }
            per["mean"] = round(sum(per.values()) / len(FORMATS), 4)
            losses[name][s] = per
            log(f"   {name} on {s}: {per}")
    info["val_loss"] = losses
    stage("evaluate", t0)

    info["models"] = results
    info["stages_s"] = stages
    info["total_s"] = round(time.perf_counter() - t_start, 1)
    info["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }
    info["assets_bytes"] = sum(
        f.stat().st_size for f in out.rglob("*") if f.is_file() and ".build" not in f.parts
    )
    (out / "BUILD_INFO.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log(f"== total {info['total_s']}s; assets {info['assets_bytes'] / 1e6:.1f} MB")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engine.embedded.build", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help="a tiny smoke build (under 2 minutes)")
    ap.add_argument(
        "--out",
        type=Path,
        default=ASSETS_DIR,
        help="where to write data/, models/ and BUILD_INFO.json",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    info = build(args.out, args.seed, QUICK if args.quick else FULL)
    s, t = info["val_loss"]["student"], info["val_loss"]["teacher"]
    log(
        f"domain_val loss: student {s['domain_val']['mean']:.3f}, teacher {t['domain_val']['mean']:.3f}; "
        f"general_val: student {s['general_val']['mean']:.3f}, teacher {t['general_val']['mean']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
