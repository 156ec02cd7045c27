"""How much memory each model of a profile needs on its device, from the models' configs alone.

    estimate(profile)        a MemoryCheck: per device, each model's estimate against the device
    MemoryCheck.lines()      the report ``--check`` prints, one line per device and per model
    MemoryCheck.problems()   one sentence per device that will not fit, with what would
    model_config(spec)       (config, where it was read) of a [student]/[teacher] spec, offline

Nothing is downloaded and no weight is read: a model's ``config.json`` is enough — in its local
directory (a directory holding only config.json will do), in the local Hugging Face cache for a hub
id, or where the model spec's ``config`` key points (the shipped ``assets/configs/``). The model is
built from it on PyTorch's meta device (``AutoModelForCausalLM.from_config`` under
``torch.device("meta")``: shapes without storage, as accelerate's ``estimate-memory`` does), and its
parameters are counted by kind. What is assumed, in GB of 2^30 bytes (how torch and nvidia-smi
count a card's memory: a "32 GB" card is 32 GiB):

* **Weights**: every parameter in the spec's ``dtype`` (float32 4 bytes, bfloat16/float16 2). With
  ``load_in_4bit``, the weights bitsandbytes packs — those of plain ``nn.Linear`` layers outside
  transformers' skip list (the output embedding, tied weights, ``_keep_in_fp32_modules``), the rule
  of transformers' ``replace_with_bnb_linear`` — take 0.5 byte plus one float32 absmax per 64
  weights (no double quantization: the profile does not ask for it); everything else (input
  embeddings, lm_head, norms, and the fused 3-D expert tensors of a mixture-of-experts model, which
  are not ``nn.Linear`` under transformers 5) stays in ``dtype``.
* **The student** (each [devices] coliseum entry is one worker holding one copy): the weights after
  the [prune] fractions (``round(layers × blocks)`` whole blocks; ``heads`` of the query and output
  projections; ``width`` of the MLP — approximately), then the larger of the training and the
  evaluation peak. Training: one individual at a time per worker, its LoRA tensors in float32 (PEFT
  casts adapters of a 16-bit model to float32) with their gradients and AdamW's two moments (16
  bytes per adapter parameter, at the largest rank); the activations autograd keeps for one
  micro-batch of ``batch_size × max_seq_len`` tokens (rows are padded to ``max_seq_len``; no gradient
  checkpointing, as the coliseum trains): per token and block the two norms' float32 inputs (8 × h
  bytes), query, key, value (repeated to every head: a padded batch has a mask, so SDPA does not
  use grouped-query kernels on CUDA) and attention output (4 × h in dtype), the float32 input of
  every LoRA-targeted projection, and three MLP intermediates (× experts per token); plus the
  logits' bf16, float32 and gradient copies (14 bytes per vocabulary entry per token, 8 more for
  the KD term's softmax). Measured with autograd's saved-tensor hooks on a small Mistral, this
  formula came within 1 % of what autograd kept. Evaluation: the adapters of every individual a
  worker scores at once (a generation's unscored individuals, shared over the workers) in float32,
  and one mixed-adapter pass of up to ``eval_rows_per_pass`` rows: the logits, their float32 copy
  and log-softmax (10 bytes per entry) beside the residual stream.
* **The teacher** (one process): its weights and one forward pass of ``eval_batch_size`` rows with
  no gradient — the validation reference, the top-k of logit distillation (14 bytes per logit:
  the float32 copy, the temperature and the softmax), or for sequence distillation the KV cache
  of ``eval_batch_size × (max_seq_len + max_new_tokens)`` tokens.
* **Pruning** (with [prune]): the whole unpruned student in ``dtype`` on the first coliseum device,
  alone, before any worker starts: the residual stream entering every block for one calibration
  batch of ``eval_batch_size`` rows, and with Taylor importance a gradient for every weight and
  the activations of a full backward pass.
* **Each process** on a CUDA device: 1 GB for the CUDA context, cuBLAS workspaces and the caching
  allocator's slack; on the CPU, 0.6 GB for Python, torch and transformers.

The device's memory: a CUDA card that is present here is measured (torch); otherwise, and under Ray
(the cluster's cards), ``[devices] gpu_memory_gb`` of the profile gives it; the CPU is this
machine's RAM. Without either, the estimate is shown and no verdict is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GiB = float(1 << 30)
CUDA_PROCESS_GB = 1.0  # CUDA context, cuBLAS workspaces, the caching allocator's slack
CPU_PROCESS_GB = 0.6  # Python, torch and transformers in a worker process
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_NF4_BYTES = 0.5 + 4 / 64  # 4 bits a weight + one float32 absmax per block of 64
_LORA_TRAIN_BYTES = 16  # float32 weight, gradient, AdamW exp_avg and exp_avg_sq
_LORA_BYTES = 4  # float32 weight, resident for evaluation


class Skipped(Exception):
    """An estimate that cannot be made, and why (a sentence)."""


# ---------------------------------------------------------------------------------------------------
# A model's shape, from its config
# ---------------------------------------------------------------------------------------------------


def _config_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    if (path / "config.json").is_file():
        return path / "config.json"
    return None


def model_config(spec: Any, role: str = "student") -> tuple[Any, str]:
    """The transformers config of a [student]/[teacher] spec and where it was read, without the
    network: the model's own config.json (local directory or local Hugging Face cache), else the
    spec's ``config``. Raises :class:`Skipped` saying why when there is none."""
    found: Path | None = None
    model = spec.model
    if model.startswith("/") or Path(model).expanduser().is_dir():
        found = _config_file(Path(model).expanduser())
        why = f"'{model}' has no config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json", revision=spec.revision)
        except Exception:  # noqa: BLE001 - a malformed cache is "not cached" here
            cached = None
        found = Path(cached) if isinstance(cached, str) else None
        why = f"'{model}' is not in the local Hugging Face cache"
    config_key = getattr(spec, "config", None)
    if found is None and config_key is not None:
        found = _config_file(Path(config_key))
        why = f"[{role}] config {config_key} holds no config.json"
    if found is None:
        hint = (
            ""
            if config_key is not None
            else f" and [{role}] config is not set (point it at a directory holding the model's "
            "config.json, such as the shipped assets/configs/)"
        )
        raise Skipped(f"{why}{hint}")
    try:
        raw = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Skipped(f"{found} cannot be read as JSON ({exc})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise Skipped(f"{found} is not a transformers config (no model_type)")
    try:
        with _quiet():
            from transformers import AutoConfig

            if spec.trust_remote_code or "auto_map" in raw:
                config = AutoConfig.from_pretrained(
                    str(found.parent),
                    trust_remote_code=spec.trust_remote_code,
                    local_files_only=True,
                )
            else:
                kwargs = {k: v for k, v in raw.items() if k != "model_type"}
                config = AutoConfig.for_model(raw["model_type"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - an unknown architecture is a skipped estimate
        raise Skipped(f"transformers cannot read {found} ({type(exc).__name__}: {exc})") from None
    return config, _shown(found)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers' warnings and log lines off while configs are read and models built on the
    meta device: --check's error paragraph stays the only thing on stderr."""
    import logging
    import warnings

    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs of a model: parameter counts by kind and the activation shapes."""

    params: int
    packed: int  # parameters bitsandbytes 4-bit would pack (plain nn.Linear weights, not skipped)
    blocks: int
    block_params: int  # one decoder block (the first)
    block_heads: int  # the block's query and output projections (what [prune] heads shrinks)
    block_mlp: int  # the block's MLP (what [prune] width shrinks)
    hidden: int
    attention: int  # query heads × head dim
    kv: int  # key/value heads × head dim
    intermediate: int  # MLP width, times the experts each token goes through
    vocab: int
    lora_in: dict[str, int]  # per block, per target: the sum of in_features of modules so named
    lora_io: dict[str, int]  # per block, per target: the sum of in + out features
    lora_outside: dict[str, int]  # in + out of modules so named outside the blocks

    def lora(self, targets: list[str], rank: int, blocks: int | None = None) -> int:
        """LoRA parameters of one adapter of ``rank`` on ``targets`` over ``blocks`` blocks."""
        n = self.blocks if blocks is None else blocks
        return rank * sum(self.lora_io.get(t, 0) * n + self.lora_outside.get(t, 0) for t in targets)


_ARCH_CACHE: dict[str, Architecture] = {}


def architecture(config: Any) -> Architecture:
    """Count ``config``'s model built on the meta device (no memory, no weights)."""
    key = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else None
    if key is not None and key in _ARCH_CACHE:
        return _ARCH_CACHE[key]
    import torch
    from torch import nn

    try:
        with _quiet(), torch.device("meta"):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(
                config, trust_remote_code=bool(getattr(config, "auto_map", None))
            )
    except Exception as exc:  # noqa: BLE001 - not a causal LM transformers can build
        raise Skipped(
            f"transformers cannot build a causal LM from it ({type(exc).__name__}: {exc})"
        ) from None
    skip = _not_packed(model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    blocks_list = _blocks(model, int(getattr(text, "num_hidden_layers", 0) or 0))
    block_prefix = ""
    if blocks_list is not None:
        block_prefix = next(n for n, m in model.named_modules() if m is blocks_list) + "."
    params = packed = 0
    block_params = heads = mlp = 0
    seen: set[int] = set()  # tied weights (embeddings and lm_head) count once
    lora_in: dict[str, int] = {}
    lora_io: dict[str, int] = {}
    lora_outside: dict[str, int] = {}
    first = block_prefix + "0."
    for name, module in model.named_modules():
        mine = [q for q in module.parameters(recurse=False) if id(q) not in seen]
        seen.update(id(q) for q in mine)
        own = sum(q.numel() for q in mine)
        plain_linear = (
            type(module) is nn.Linear
            and not _skipped(name, skip)
            and any(q is module.weight for q in mine)
        )
        in_block = bool(block_prefix) and name.startswith(first)
        params += own
        if plain_linear:
            packed += module.weight.numel()
        short = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear):
            io = module.in_features + module.out_features
            if in_block:
                lora_in[short] = lora_in.get(short, 0) + module.in_features
                lora_io[short] = lora_io.get(short, 0) + io
            elif not (block_prefix and name.startswith(block_prefix)):
                lora_outside[short] = lora_outside.get(short, 0) + io
        if in_block:
            block_params += own
            if short in ("q_proj", "o_proj"):
                heads += own
            if ".mlp." in name[len(first) - 1 :] or ".block_sparse_moe." in name[len(first) - 1 :]:
                mlp += own
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    n_heads = int(getattr(text, "num_attention_heads", 0) or 0)
    head_dim = int(getattr(text, "head_dim", 0) or 0) or (hidden // n_heads if n_heads else 0)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or 0) or n_heads
    inter = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 0)
    inter = inter or 4 * hidden
    experts = int(getattr(text, "num_experts_per_tok", 0) or 1)
    arch = Architecture(
        params=params,
        packed=packed,
        blocks=len(blocks_list) if blocks_list is not None else 0,
        block_params=block_params,
        block_heads=heads,
        block_mlp=mlp,
        hidden=hidden,
        attention=n_heads * head_dim or hidden,
        kv=kv_heads * head_dim or hidden,
        intermediate=inter * experts,
        vocab=int(getattr(text, "vocab_size", 0) or 0),
        lora_in=lora_in,
        lora_io=lora_io,
        lora_outside=lora_outside,
    )
    if key is not None:
        _ARCH_CACHE[key] = arch
    return arch


def _blocks(model: Any, n: int) -> Any:
    """The model's ModuleList of decoder blocks (the longest, preferring ``n`` entries)."""
    from torch import nn

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    exact = [m for m in lists if len(m) == n]
    pool = exact or lists
    return max(pool, key=len) if pool else None


def _not_packed(model: Any) -> list[str]:
    """The module names bitsandbytes leaves unquantized (transformers' own rule where available)."""
    skip: list[str] = []
    try:
        from transformers.quantizers.base import get_keys_to_not_convert

        skip = list(get_keys_to_not_convert(model))
    except Exception:  # noqa: BLE001 - older/newer transformers: the output embedding at least
        out = model.get_output_embeddings()
        skip = [n for n, m in model.named_modules() if out is not None and m is out]
    skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return skip


def _skipped(name: str, patterns: list[str]) -> bool:
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module

        return not should_convert_module(name, patterns)
    except Exception:  # noqa: BLE001
        return any(name == p or name.startswith(p + ".") or name.endswith(p) for p in patterns)


# ---------------------------------------------------------------------------------------------------
# Estimates of one process's memory
# ---------------------------------------------------------------------------------------------------


Part = tuple[str, float, str]  # (what, GB, how it was counted)


@dataclass(frozen=True)
class Load:
    """One model in one process on one device: what it needs, in GB, part by part."""

    role: str  # "teacher", "student", "pruning"
    model: str
    config: str  # where the config was read
    parts: tuple[Part, ...]  # summed
    detail: str = ""  # after the parts: the other peak, notes

    @property
    def total(self) -> float:
        return sum(p[1] for p in self.parts)

    def line(self) -> str:
        parts = " + ".join(
            f"{what} {gb:.1f}" + (f" ({how})" if how else "") for what, gb, how in self.parts
        )
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.role} {self.model}: {self.total:.1f} GB = {parts}{extra}"


@dataclass(frozen=True)
class StudentSettings:
    """What a student's memory depends on, so alternatives can be estimated by changing one."""

    dtype: str
    load_in_4bit: bool
    batch_size: int
    max_seq_len: int
    eval_batch_size: int
    eval_rows_per_pass: int
    resident: int  # adapters a worker holds at once for evaluation
    max_rank: int
    targets: tuple[str, ...]
    kd_logits: bool
    top_k: int
    prune_layers: float
    prune_heads: float
    prune_width: float
    cuda: bool


def _weights(arch: Architecture, dtype: str, four_bit: bool, scale: float = 1.0) -> float:
    """Bytes of the weights (``scale``: the fraction of the parameters pruning leaves)."""
    b = _BYTES[dtype]
    if not four_bit:
        return arch.params * scale * b
    packed = arch.packed * scale
    return packed * _NF4_BYTES + (arch.params * scale - packed) * b


def kept_blocks(blocks: int, fraction: float) -> int:
    """Blocks left by [prune] layers = ``fraction`` (engine.prune's rounding)."""
    if fraction <= 0 or blocks < 2:
        return blocks
    return blocks - min(blocks - 1, max(1, round(fraction * blocks)))


def training_activations(arch: Architecture, s: StudentSettings) -> tuple[float, float]:
    """Bytes autograd keeps for one training micro-batch: (the decoder blocks and final norm,
    the logits and their copies)."""
    d = _BYTES[s.dtype]
    kept = kept_blocks(arch.blocks, s.prune_layers)
    h, attn = arch.hidden, arch.attention * (1.0 - s.prune_heads)
    inter = arch.intermediate * (1.0 - s.prune_width)
    lora_in = sum(arch.lora_in.get(t, 0) for t in s.targets)
    per_block = 8 * h + d * 4 * attn + 4 * lora_in + d * 3 * inter
    if s.load_in_4bit:  # bitsandbytes keeps the inputs of its frozen 4-bit matmuls for backward
        per_block += d * (3 * h + inter)
    tokens = s.batch_size * s.max_seq_len
    logit_bytes = 14 + (8 + 12 * s.top_k / max(1, arch.vocab) if s.kd_logits else 0)
    return tokens * (kept * per_block + 4 * h), tokens * arch.vocab * logit_bytes


def student_load(arch: Architecture, s: StudentSettings) -> tuple[float, list[Part], str]:
    """(total GB, parts, detail) of one coliseum worker."""
    d, h = _BYTES[s.dtype], arch.hidden
    kept = kept_blocks(arch.blocks, s.prune_layers)
    shrink = s.prune_heads * arch.block_heads + s.prune_width * arch.block_mlp
    removed = (arch.blocks - kept) * arch.block_params + kept * shrink
    scale = 1.0 - removed / arch.params if arch.params else 1.0
    weights = _weights(arch, s.dtype, s.load_in_4bit, scale)
    train_act = sum(training_activations(arch, s))
    train_adapter = (
        arch.lora(list(s.targets), s.max_rank, kept) + arch.lora(list(s.targets), 1, kept)
    ) * _LORA_TRAIN_BYTES
    n = max(1, min(s.eval_batch_size, s.eval_rows_per_pass))
    rows = max(1, min(s.eval_rows_per_pass // n, s.resident)) * n
    eval_act = rows * s.max_seq_len * (arch.vocab * 10 + d * 2 * h)
    eval_adapter = s.resident * arch.lora(list(s.targets), s.max_rank, kept) * _LORA_BYTES
    train, evaluate = train_adapter + train_act, eval_adapter + eval_act
    pruned = (
        f" after pruning {arch.blocks - kept} of {arch.blocks} blocks" if kept < arch.blocks else ""
    )
    parts: list[Part] = [
        (
            "weights",
            weights / GiB,
            f"{_b(arch.params * scale)} params{pruned}, {_how(s.dtype, s.load_in_4bit)}",
        )
    ]
    if train >= evaluate:
        parts += [
            ("adapter", train_adapter / GiB, f"rank {s.max_rank}, float32, gradients, AdamW"),
            ("training activations", train_act / GiB, f"{s.batch_size} × {s.max_seq_len} tokens"),
        ]
        other = (
            f"scoring needs {evaluate / GiB:.1f} GB in their place ({s.resident} adapters, "
            f"{rows} rows a pass)"
        )
    else:
        parts += [
            ("adapters", eval_adapter / GiB, f"{s.resident} scored at once, float32"),
            ("evaluation", eval_act / GiB, f"{rows} rows × {s.max_seq_len} tokens a pass"),
        ]
        other = (
            f"training needs {train / GiB:.1f} GB in their place ({s.batch_size} × "
            f"{s.max_seq_len} tokens)"
        )
    parts.append(_process(s.cuda))
    return sum(p[1] for p in parts), parts, other


def teacher_load(
    arch: Architecture,
    *,
    dtype: str,
    four_bit: bool,
    rows: int,
    seq: int,
    mode: str,
    max_new_tokens: int,
    cuda: bool,
) -> tuple[float, list[Part], str]:
    d = _BYTES[dtype]
    weights = _weights(arch, dtype, four_bit)
    per_logit = 14 if mode == "logits" else 10
    forward = rows * seq * (arch.vocab * per_logit + d * 2 * arch.hidden)
    what = ("forward pass", f"{rows} rows × {seq} tokens, no gradient")
    if mode == "sequence":
        cache = rows * (seq + max_new_tokens) * arch.blocks * 2 * arch.kv * d
        prefill = rows * seq * d * (2 * arch.hidden + 3 * arch.intermediate)
        if cache + prefill > forward:
            forward = cache + prefill
            what = ("generation", f"{rows} rows × {seq} + {max_new_tokens} tokens, KV cache")
    parts: list[Part] = [
        ("weights", weights / GiB, f"{_b(arch.params)} params, {_how(dtype, four_bit, arch)}"),
        (what[0], forward / GiB, what[1]),
        _process(cuda),
    ]
    notes = []
    if four_bit and arch.params - arch.packed > 0.2 * arch.params:
        notes.append(
            f"{_b(arch.params - arch.packed)} of its parameters are not in nn.Linear layers "
            f"(fused mixture-of-experts tensors, embeddings) and stay {dtype}: bitsandbytes packs "
            "only nn.Linear weights"
        )
    return sum(p[1] for p in parts), parts, "; ".join(notes)


def pruning_load(
    arch: Architecture, *, dtype: str, rows: int, seq: int, taylor: bool, cuda: bool
) -> tuple[float, list[Part], str]:
    d = _BYTES[dtype]
    weights = arch.params * d
    states = (arch.blocks + 1) * rows * seq * arch.hidden * d
    forward = rows * seq * (arch.vocab * 10 + d * 2 * arch.hidden)
    parts: list[Part] = [
        ("weights", weights / GiB, f"the unpruned student, {_b(arch.params)} params, {dtype}"),
        ("calibration", max(states, forward) / GiB, f"{rows} rows × {seq} tokens"),
    ]
    if taylor:
        per_block = 8 * arch.hidden + d * (
            4 * arch.attention + 4 * arch.hidden + 4 * arch.intermediate
        )
        act = rows * seq * (arch.blocks * per_block) + rows * seq * arch.vocab * 14
        parts.append(
            ("Taylor importance", (weights + act) / GiB, "a gradient per weight, backward")
        )
    parts.append(_process(cuda))
    return sum(p[1] for p in parts), parts, ""


def _gb(x: float) -> str:
    """A device's memory as the user wrote it (32) or as measured (31.4)."""
    return f"{x:.0f}" if abs(x - round(x)) < 0.05 else f"{x:.1f}"


def _how(dtype: str, four_bit: bool, arch: Architecture | None = None) -> str:
    if not four_bit:
        return dtype
    if arch is None:
        return f"nn.Linear weights 4-bit, the rest {dtype}"
    return f"{_b(arch.packed)} in 4-bit, the rest {dtype}"


def _process(cuda: bool) -> Part:
    if cuda:
        return ("CUDA context", CUDA_PROCESS_GB, "")
    return ("process", CPU_PROCESS_GB, "Python, torch, transformers")


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


# ---------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------


@dataclass
class Device:
    name: str  # as the report shows it
    cuda: bool
    capacity: float | None = None  # GB
    source: str = ""  # where capacity came from
    loads: list[Load] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pruning: Load | None = None  # before the workers start, alone on the device
    suggestions: list[str] = field(default_factory=list)

    @property
    def need(self) -> float:
        steady = sum(x.total for x in self.loads)
        return max(steady, self.pruning.total if self.pruning else 0.0)

    @property
    def fits(self) -> bool | None:
        if self.capacity is None or self.skipped:
            return None
        return self.need <= self.capacity


def _capacity(device: str, profile: Any) -> tuple[float | None, str]:
    """The memory of ``device`` in GB and where the figure came from."""
    d = profile.devices
    on_ray = d.executor == "ray"
    if device == "cpu":
        if on_ray:
            return None, "a CPU of the Ray cluster"
        try:
            import psutil

            return psutil.virtual_memory().total / GiB, "this machine's RAM"
        except Exception:  # noqa: BLE001
            return None, "this machine's RAM could not be read"
    if device.startswith("cuda") and not on_ray:
        index = int(device.split(":")[1]) if ":" in device else 0
        try:
            import torch

            if torch.cuda.is_available() and index < torch.cuda.device_count():
                props = torch.cuda.get_device_properties(index)
                return props.total_memory / GiB, f"measured: {props.name}"
        except Exception:  # noqa: BLE001 - a broken driver: fall back on the profile's figure
            pass
    figure = d.gpu_memory_gb
    if isinstance(figure, dict):
        figure = figure.get(device, figure.get(_local(device)) if not on_ray else None)
    if figure is not None and device != "cpu":
        here = "the Ray cluster's cards" if on_ray else "no such card here"
        return float(figure), f"[devices] gpu_memory_gb: {here}"
    return None, (
        "no such card here, and [devices] gpu_memory_gb does not give it"
        if not on_ray
        else "the Ray cluster's cards: [devices] gpu_memory_gb does not give it"
    )


def _local(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


# ---------------------------------------------------------------------------------------------------
# The whole profile
# ---------------------------------------------------------------------------------------------------


@dataclass
class MemoryCheck:
    devices: list[Device]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = ["memory, estimated from the models' configs (GB = 2^30 bytes):"]
        for dev in self.devices:
            if dev.capacity is not None:
                head = f"  {dev.name} — {_gb(dev.capacity)} GB ({dev.source}): "
            else:
                head = f"  {dev.name} — memory unknown ({dev.source}): "
            out.append(head + self._verdict(dev))
            for load in dev.loads:
                out.append(f"    {load.line()} [config: {load.config}]")
            if dev.pruning is not None:
                out.append(f"    before the workers start, alone: {dev.pruning.line()}")
            for s in dev.skipped:
                out.append(f"    {s}")
        out += [f"  {n}" for n in self.notes]
        return out

    @staticmethod
    def _verdict(dev: Device) -> str:
        if dev.skipped:
            return "cannot tell (an estimate was skipped)" + (
                f"; the rest needs {dev.need:.1f} GB" if dev.loads else ""
            )
        if dev.capacity is None:
            return f"needs {dev.need:.1f} GB"
        if dev.fits:
            return f"fits — needs {dev.need:.1f} GB, {dev.capacity - dev.need:.1f} GB to spare"
        tries = f" — try: {'; or '.join(dev.suggestions)}" if dev.suggestions else ""
        return f"will not fit — needs {dev.need:.1f} GB, has {_gb(dev.capacity)} GB{tries}"

    def problems(self) -> list[str]:
        """One sentence per device that will not fit."""
        out = []
        for dev in self.devices:
            if dev.fits is False:
                who = ", ".join(f"the {x.role} {x.model} ({x.total:.1f} GB)" for x in dev.loads)
                if dev.pruning is not None and dev.pruning.total > sum(x.total for x in dev.loads):
                    who = f"pruning the student ({dev.pruning.total:.1f} GB)"
                out.append(
                    f"memory: {who} will not fit on {dev.name}: needs {dev.need:.1f} GB, has "
                    f"{_gb(dev.capacity or 0)} GB ({dev.source})"
                    + (f" — try: {'; or '.join(dev.suggestions)}" if dev.suggestions else "")
                    + " (`genesis-tui --profile P --check` shows the estimate part by part)"
                )
        return out


def estimate(profile: Any) -> MemoryCheck | None:
    """The memory check of an LLM profile (None for a TTS run). Never raises for a model it cannot
    estimate: that model's line says why it was skipped."""
    if getattr(profile, "is_tts", False) or profile.student is None:
        return None
    d = profile.devices
    on_ray = d.executor == "ray"
    devices: dict[str, Device] = {}

    def device(name: str, key: str) -> Device:
        if key not in devices:
            cap, src = _capacity(name, profile)
            devices[key] = Device(name=key, cuda=name.startswith("cuda"), capacity=cap, source=src)
        return devices[key]

    student_arch, student_where, student_skip = _counted(profile.student, "student")
    teacher = profile.teacher if profile.teacher is not None and profile.teacher.enabled else None
    teacher_arch: Architecture | None = None
    teacher_where = teacher_skip = ""
    if teacher is not None:
        teacher_arch, teacher_where, teacher_skip = _counted(teacher, "teacher")

    workers = max(1, len(d.coliseum))
    pop, data, p = profile.population, profile.data, profile.prune
    settings = StudentSettings(
        dtype=profile.student.dtype,
        load_in_4bit=profile.student.load_in_4bit,
        batch_size=data.batch_size,
        max_seq_len=data.max_seq_len,
        eval_batch_size=data.eval_batch_size,
        eval_rows_per_pass=data.eval_rows_per_pass,
        resident=math.ceil(pop.size / workers),
        max_rank=max(pop.ranks),
        targets=tuple(pop.target_modules),
        kd_logits=profile.distill.mode == "logits",
        top_k=profile.distill.top_k,
        prune_layers=p.layers,
        prune_heads=p.heads,
        prune_width=p.width,
        cuda=False,
    )

    # Under Ray every entry is a whole GPU of its own (any node); locally, entries naming the same
    # device share it, and "cuda" is cuda:0.
    if teacher is not None:
        key = f"{d.teacher} (the teacher's)" if on_ray else _local(d.teacher)
        dev = device(d.teacher, key)
        if teacher_arch is None:
            dev.skipped.append(teacher_skip)
        else:
            four_bit = teacher.load_in_4bit and not _falls_back(teacher, d.teacher)
            total, parts, detail = teacher_load(
                teacher_arch,
                dtype=teacher.dtype,
                four_bit=four_bit,
                rows=data.eval_batch_size,
                seq=data.max_seq_len,
                mode=profile.distill.mode,
                max_new_tokens=profile.distill.max_new_tokens,
                cuda=dev.cuda,
            )
            dev.loads.append(Load("teacher", teacher.model, teacher_where, tuple(parts), detail))
    for i, name in enumerate(d.coliseum):
        key = f"{name} (coliseum-{i}'s)" if on_ray else _local(name)
        dev = device(name, key)
        if student_arch is None:
            if student_skip not in dev.skipped:
                dev.skipped.append(student_skip)
            continue
        s = replace(settings, cuda=dev.cuda)
        total, parts, detail = student_load(student_arch, s)
        role = "student" if workers == 1 else f"student (coliseum-{i})"
        dev.loads.append(Load(role, profile.student.model, student_where, tuple(parts), detail))
        if i == 0 and p.active:
            taylor = p.importance == "taylor" and (p.heads > 0 or p.width > 0)
            ptotal, pparts, _ = pruning_load(
                student_arch,
                dtype=profile.student.dtype,
                rows=data.eval_batch_size,
                seq=data.max_seq_len,
                taylor=taylor,
                cuda=dev.cuda,
            )
            dev.pruning = Load("pruning", profile.student.model, student_where, tuple(pparts))
    check = MemoryCheck(list(devices.values()))
    for dev in check.devices:
        if dev.fits is False:
            dev.suggestions = _suggestions(dev, profile, student_arch, settings, teacher_arch)
    return check


def _counted(spec: Any, role: str) -> tuple[Architecture | None, str, str]:
    """(architecture, where its config was read, why it was skipped) of one model spec."""
    try:
        config, where = model_config(spec, role)
        return architecture(config), where, ""
    except Skipped as exc:
        why = str(exc)
    except Exception as exc:  # noqa: BLE001 - an odd config is a skipped estimate, not a traceback
        why = f"its config could not be counted ({type(exc).__name__}: {exc})"
    return None, "", f"{role} {spec.model}: estimate skipped — {why}"


def _falls_back(spec: Any, device: str) -> bool:
    from engine.models import quantization_fallback

    return quantization_fallback(spec, device) is not None


def _suggestions(
    dev: Device,
    profile: Any,
    arch: Architecture | None,
    s: StudentSettings,
    tarch: Architecture | None,
) -> list[str]:
    """What would fit on ``dev``: each change tried on the estimate."""
    cap = dev.capacity or 0.0
    out: list[str] = []
    teacher_gb = sum(x.total for x in dev.loads if x.role == "teacher")
    students = [x for x in dev.loads if x.role.startswith("student")]
    student_gb = sum(x.total for x in students)
    s = replace(s, cuda=dev.cuda)
    if dev.pruning is not None and dev.pruning.total > cap:
        out.append(
            f"for the pruning pass ({dev.pruning.total:.1f} GB), a smaller [data] eval_batch_size "
            '(its calibration batch) or [prune] importance = "magnitude"'
        )
    if students and arch is not None and teacher_gb + student_gb > cap:
        per = (cap - teacher_gb) / len(students)
        tries: list[tuple[str, StudentSettings]] = []
        b = s.batch_size
        while b > 1:
            b //= 2
            tries.append(
                (
                    f"[data] batch_size = {b} with [training] gradient_accumulation × "
                    f"{s.batch_size // b} (the same effective batch)",
                    replace(s, batch_size=b),
                )
            )
        r = s.eval_rows_per_pass
        while r > max(1, s.eval_batch_size):
            r //= 2
            tries.append((f"[data] eval_rows_per_pass = {r}", replace(s, eval_rows_per_pass=r)))
        if not s.load_in_4bit:
            tries.append(("[student] load_in_4bit = true", replace(s, load_in_4bit=True)))
        if s.prune_layers < 0.5:
            tries.append(("[prune] layers = 0.5", replace(s, prune_layers=0.5)))
        for what, alt in tries:
            gb = student_load(arch, alt)[0]
            if gb <= per:
                out.append(f"{what} ({gb:.1f} GB a worker)")
                break
        if len(students) > 1:
            out.append("fewer [devices] coliseum workers on this device")
    if teacher_gb and tarch is not None:
        t, d = profile.teacher, profile.data
        if students and teacher_gb <= cap:
            out.append("the teacher on a device of its own ([devices] teacher)")

        def load(four_bit: bool, mode: str, cuda: bool) -> float:
            return teacher_load(
                tarch,
                dtype=t.dtype,
                four_bit=four_bit,
                rows=d.eval_batch_size,
                seq=d.max_seq_len,
                mode=mode,
                max_new_tokens=profile.distill.max_new_tokens,
                cuda=cuda,
            )[0]

        if not t.load_in_4bit and load(True, profile.distill.mode, dev.cuda) <= cap - student_gb:
            gb = load(True, profile.distill.mode, dev.cuda)
            out.append(f"[teacher] load_in_4bit = true ({gb:.1f} GB)")
        elif teacher_gb > cap:
            gpu = load(t.load_in_4bit, profile.distill.mode, True)
            if dev.cuda:
                host = load(True, profile.distill.mode, False)
                out.append(
                    f'[devices] teacher = "cpu" (offload: the 4-bit teacher in about '
                    f"{math.ceil(host)} GB of host RAM; slow, but its logits or answers are "
                    "computed once and cached)"
                )
            else:
                out.append(f"a machine with at least {math.ceil(teacher_gb)} GB of RAM")
            out.append(f"a card of at least {math.ceil(gpu)} GB for the teacher")
            same = (
                " that shares the student's tokenizer" if profile.distill.mode == "logits" else ""
            )
            out.append(f"a smaller teacher{same}")
    return out


# ---------------------------------------------------------------------------------------------------
# Vocabularies, from configs
# ---------------------------------------------------------------------------------------------------


def vocab_sizes(profile: Any) -> tuple[int, int, str, str] | None:
    """(student vocab, teacher vocab, where each was read) from their configs, or None."""
    try:
        s_cfg, s_where = model_config(profile.student, "student")
        t_cfg, t_where = model_config(profile.teacher, "teacher")
    except Skipped:
        return None
    sv = _vocab(s_cfg)
    tv = _vocab(t_cfg)
    if not sv or not tv:
        return None
    return sv, tv, s_where, t_where


def _vocab(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "vocab_size", 0) or 0)


def different_vocabularies(a: int, b: int) -> bool:
    """Two vocabulary sizes no padding of one tokenizer explains (more than 1 % apart)."""
    return abs(a - b) > 0.01 * max(a, b)
