"""Pruning the student before evolution: whole decoder blocks ranked by Block Influence, then
(optionally) MLP channels with Torch-Pruning.

Block Influence (BI, as in "ShortGPT", Men et al. 2024) of block i is 1 − the mean cosine similarity
between its input and output hidden states over the calibration tokens: a block that barely
changes its input contributes little and is the first to go. The blocks with the lowest BI are
removed, the layer indices of the rest renumbered, ``num_hidden_layers`` (and ``layer_types``,
where the config has it) updated, and the result saved as a standard transformers checkpoint that
``from_pretrained`` loads. Then the LoRA population heals it.

Width pruning uses Torch-Pruning's dependency graph (gate/up/down projections of each MLP pruned
together). Block removal is written here rather than taken from a library: Torch-Pruning prunes
channels inside layers, not whole blocks, and the block surgery is a few lines on
``model.model.layers``. Every figure of the report — parameters, file size, validation
perplexity, tokens per second — is measured before and after on the same data.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__}: no decoder blocks at model.layers — layer pruning supports "
            "Llama-style causal LMs (Llama, Mistral, Qwen2, …)"
        )
    return layers


@torch.no_grad()
def block_influence(model: Any, split: Any, rows: int, batch_size: int, device: str) -> list[float]:
    """BI of every decoder block on the first ``rows`` rows of ``split`` (padding excluded)."""
    n = len(decoder_layers(model))
    sims = torch.zeros(n, dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, min(rows, len(split)), batch_size):
            stop = min(start + batch_size, rows, len(split))
            ids = split.input_ids[start:stop].to(device)
            mask = split.attention_mask[start:stop].to(device)
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            keep = mask.bool()
            for i in range(n):
                a, b = hs[i][keep].float(), hs[i + 1][keep].float()
                sims[i] += torch.nn.functional.cosine_similarity(a, b, dim=-1).double().sum().cpu()
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return [float(1.0 - s / max(count, 1)) for s in sims]


def remove_blocks(model: Any, drop: list[int]) -> None:
    """Remove decoder blocks ``drop`` in place and make the config and layer indices agree."""
    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    if not kept:
        raise ValueError("cannot remove every decoder block")
    model.model.layers = torch.nn.ModuleList(kept)
    for new_idx, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by it
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and len(types) == len(layers):
        cfg.layer_types = [t for i, t in enumerate(types) if i not in set(drop)]
    cfg.num_hidden_layers = len(kept)


def prune_mlp_width(
    model: Any,
    calibration: Any,
    fraction: float,
    *,
    importance: str,
    calibration_rows: int,
    batch_size: int,
    device: str,
) -> tuple[int, int]:
    """Remove ``fraction`` of every block's MLP channels (the intermediate dimension shared by
    gate/up/down projections) with Torch-Pruning's dependency graph; importance by weight
    magnitude or by Taylor (|w·∂L/∂w| on calibration batches). The residual width, the attention
    and the embeddings are left whole, so the config changes only in ``intermediate_size``.
    Returns (intermediate size before, after)."""
    import torch_pruning as tp

    layers = decoder_layers(model)
    before = int(layers[0].mlp.gate_proj.out_features)
    ignored: list[torch.nn.Module] = [model.get_output_embeddings()]
    norms: list[tuple[torch.nn.Parameter, int]] = []
    for layer in layers:
        attn = layer.self_attn
        ignored += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, layer.mlp.down_proj]
        norms += [(layer.input_layernorm.weight, 0), (layer.post_attention_layernorm.weight, 0)]
    norms.append((model.model.norm.weight, 0))
    example = {
        "input_ids": calibration.input_ids[: min(2, len(calibration))].to(device),
        "attention_mask": calibration.attention_mask[: min(2, len(calibration))].to(device),
    }
    if importance == "taylor":
        imp: Any = tp.importance.GroupTaylorImportance()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=example,
        forward_fn=lambda m, inputs: m(**inputs, use_cache=False).logits,
        importance=imp,
        pruning_ratio=fraction,
        ignored_layers=ignored,
        unwrapped_parameters=norms,
        root_module_types=[torch.nn.Linear],
    )
    if importance == "taylor":
        from engine.losses import token_losses

        model.zero_grad(set_to_none=True)
        for start in range(0, min(calibration_rows, len(calibration)), batch_size):
            stop = min(start + batch_size, calibration_rows, len(calibration))
            logits = model(
                input_ids=calibration.input_ids[start:stop].to(device),
                attention_mask=calibration.attention_mask[start:stop].to(device),
                use_cache=False,
            ).logits
            sums, counts = token_losses(logits, calibration.labels[start:stop].to(device))
            (sums.sum() / counts.sum().clamp(min=1)).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    after = int(layers[0].mlp.gate_proj.out_features)
    if any(int(layer.mlp.gate_proj.out_features) != after for layer in layers):
        raise ValueError("width pruning left blocks of different MLP widths")  # config needs one
    model.config.intermediate_size = after
    return before, after


def _stored_dtype(source_dir: Path | None) -> torch.dtype | None:
    """The dtype a local checkpoint's weights are stored in (its config.json says)."""
    if source_dir is None or not (Path(source_dir) / "config.json").is_file():
        return None
    cfg = json.loads((Path(source_dir) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        str(name)
    )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors"))


@torch.no_grad()
def tokens_per_second(
    model: Any, split: Any, batch_size: int, device: str, rows: int = 32
) -> float:
    """Forward-pass throughput on ``rows`` rows (one warm-up pass not counted)."""
    ids = split.input_ids[: min(rows, len(split))].to(device)
    mask = split.attention_mask[: len(ids)].to(device)
    model(input_ids=ids[:batch_size], attention_mask=mask[:batch_size])
    t0 = time.perf_counter()
    for s in range(0, len(ids), batch_size):
        model(input_ids=ids[s : s + batch_size], attention_mask=mask[s : s + batch_size])
    return float(mask.sum()) / max(time.perf_counter() - t0, 1e-9)


def prune_layers(
    model: Any,
    tokenizer: Any,
    source_dir: Path | None,
    out_dir: Path,
    *,
    fraction: float,
    width: float = 0.0,
    importance: str = "magnitude",
    calibration: Any,
    validation: Any,
    calibration_rows: int,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """Remove ``round(fraction × blocks)`` blocks of lowest BI from ``model`` (in place; none when
    ``fraction`` is 0), then ``width`` of every remaining block's MLP channels; save it to
    ``out_dir`` (written whole: a temporary directory, then a rename) and report before/after."""
    from engine.losses import validation_loss

    n = len(decoder_layers(model))
    k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0
    params_before = sum(p.numel() for p in model.parameters())
    loss_before, _ = validation_loss(model, validation, batch_size, device)
    tps_before = tokens_per_second(model, validation, batch_size, device)
    t0 = time.perf_counter()
    scores = block_influence(model, calibration, calibration_rows, batch_size, device)
    drop = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:k])
    if drop:
        remove_blocks(model, drop)
    mlp = (None, None)
    if width > 0:
        mlp = prune_mlp_width(
            model,
            calibration,
            width,
            importance=importance,
            calibration_rows=calibration_rows,
            batch_size=batch_size,
            device=device,
        )
    seconds = time.perf_counter() - t0
    loss_after, _ = validation_loss(model, validation, batch_size, device)
    tps_after = tokens_per_second(model, validation, batch_size, device)

    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    stored = _stored_dtype(source_dir)
    if stored is not None:  # saved as the source was (the profile may load bf16 as float32)
        model.to(stored)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    report = {
        "method": "block_influence" + (f" + mlp width ({importance})" if width > 0 else ""),
        "mlp_width_before": mlp[0],
        "mlp_width_after": mlp[1],
        "blocks_before": n,
        "blocks_after": n - k,
        "removed": drop,
        "block_influence": scores,
        "params_before": params_before,
        "params_after": sum(p.numel() for p in model.parameters()),
        "bytes_before": _dir_size(source_dir) if source_dir is not None else None,
        "bytes_after": _dir_size(tmp),
        "val_loss_before": loss_before,
        "val_loss_after": loss_after,
        "perplexity_before": math.exp(min(loss_before, 50.0)),
        "perplexity_after": math.exp(min(loss_after, 50.0)),
        "tokens_per_s_before": tps_before,
        "tokens_per_s_after": tps_after,
        "seconds": seconds,
        "path": str(out_dir),
    }
    (tmp / "prune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return report
