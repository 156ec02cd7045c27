"""Pruning the student before evolution, in this order: whole decoder blocks, attention heads,
MLP channels, then (optionally) unstructured Wanda sparsity.

Blocks. Block Influence (BI, as in "ShortGPT", Men et al. 2024) of block i is 1 − the mean cosine
similarity between its input and output hidden states over the calibration tokens: a block that
barely changes its input contributes little and is the first to go; the blocks of lowest BI are
removed, wherever they are. The alternative, angular distance ("The Unreasonable Ineffectiveness of
the Deeper Layers", Gromov et al. 2024), removes the contiguous run of n blocks whose input and
output are closest: arccos(cos(h_l, h_{l+n}))/π, minimised over the start l. Either way the layer
indices of the rest are renumbered, ``num_hidden_layers`` (and ``layer_types``, where the config has
it) updated. Block removal is written here rather than taken from a library: Torch-Pruning prunes
channels inside layers, not whole blocks, and the block surgery is a few lines on
``model.model.layers``.

Heads. Whole query heads are cut from ``q_proj``'s rows and ``o_proj``'s columns with
Torch-Pruning's layer pruners, following its LLM example's policy for grouped-query attention
(``prune_num_heads`` with GQA: the same number of query heads removed inside every key/value group,
the key/value projections left whole; with plain multi-head attention the key and value heads go
with their query heads). Torch-Pruning's dependency graph itself is not used for attention: on a
GQA Llama of transformers 5 its group search does not terminate (Torch-Pruning 1.6.1 here, cycling
between the rotary embedding's slices; issue #527 reports the same hang on Qwen3), so the heads are
ranked and chosen here and the config (``num_attention_heads``, ``num_key_value_heads``, an
explicit ``head_dim``) updated to match.

Width uses Torch-Pruning's dependency graph (gate/up/down projections of each MLP pruned together).

Wanda ("A Simple and Effective Pruning Approach for Large Language Models", Sun et al. 2024) zeroes
weights by |W_ij|·‖X_j‖₂, per output row; written by hand (a few lines, below) since Torch-Pruning
is structured only and the libraries that have it are far larger than the method.

The result is saved as a standard transformers checkpoint that ``from_pretrained`` loads; then the
LoRA population heals it. Every figure of the report — parameters, file size, validation
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
    """BI of every decoder block on the first ``rows`` rows of ``split`` (padding excluded): 1 −
    the mean cosine between the residual stream entering and leaving the block (taken from the
    blocks themselves, so the last block is not judged by the final norm's output)."""
    n = len(decoder_layers(model))
    sims = torch.zeros(n, dtype=torch.float64)
    count = 0
    for states, keep in _residual_states(model, split, rows, batch_size, device):
        for i in range(n):
            a, b = states[i][keep].float(), states[i + 1][keep].float()
            sims[i] += torch.nn.functional.cosine_similarity(a, b, dim=-1).double().sum().cpu()
        count += int(keep.sum())
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


def _batches(split: Any, rows: int, batch_size: int, device: str):
    """(input_ids, attention_mask, labels) of the first ``rows`` rows of ``split``, in batches."""
    for start in range(0, min(rows, len(split)), batch_size):
        stop = min(start + batch_size, rows, len(split))
        labels = getattr(split, "labels", None)
        yield (
            split.input_ids[start:stop].to(device),
            split.attention_mask[start:stop].to(device),
            labels[start:stop].to(device) if labels is not None else None,
        )


def _residual_states(model: Any, split: Any, rows: int, batch_size: int, device: str):
    """For each calibration batch: (the residual stream entering every decoder block and leaving
    the last one — blocks + 1 tensors [B, L, H] —, the non-padding mask). Taken with hooks on the
    blocks, not from ``hidden_states``, whose last entry transformers takes after the final norm."""
    layers = decoder_layers(model)
    states: list[Any] = [None] * (len(layers) + 1)

    def entering(i: int):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            states[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def leaving(module: Any, args: tuple, output: Any) -> None:
        states[-1] = output[0] if isinstance(output, (tuple, list)) else output

    handles = [
        layer.register_forward_pre_hook(entering(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    handles.append(layers[-1].register_forward_hook(leaving))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids, mask, _ in _batches(split, rows, batch_size, device):
                model(input_ids=ids, attention_mask=mask, use_cache=False)
                yield list(states), mask.bool()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def angular_distances(
    model: Any, split: Any, n: int, rows: int, batch_size: int, device: str
) -> list[float]:
    """For every start l, the mean angular distance arccos(cos(h_l, h_{l+n}))/π between the hidden
    state entering block l and the one leaving block l+n-1, averaged over every non-padding token
    of the first ``rows`` rows (Gromov et al. use the last token of each sequence only; here every
    non-padding token counts, as in Block Influence). The states are taken with hooks on the
    blocks themselves, so the last block's output is the raw residual stream, not the one after
    the model's final norm (transformers' ``hidden_states[-1]``). Returns one distance per start
    l = 0 … blocks − n."""
    layers = decoder_layers(model)
    count_blocks = len(layers)
    if not 1 <= n < count_blocks:
        raise ValueError(f"cannot score runs of {n} blocks in a model of {count_blocks}")
    sums = torch.zeros(count_blocks - n + 1, dtype=torch.float64)
    count = 0
    for states, keep in _residual_states(model, split, rows, batch_size, device):
        for start in range(count_blocks - n + 1):
            a = states[start][keep].float()
            b = states[start + n][keep].float()
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
            sums[start] += (torch.arccos(cos) / math.pi).double().sum().cpu()
        count += int(keep.sum())
    return [float(s / max(count, 1)) for s in sums]


def _calibration_gradients(
    model: Any, calibration: Any, rows: int, batch_size: int, device: str
) -> None:
    """Leave in every ``.grad`` the gradient of the mean token loss over the calibration batches
    (each batch's mean, summed), for Taylor importance |w · ∂L/∂w|."""
    from engine.losses import token_losses

    model.zero_grad(set_to_none=True)
    for ids, mask, labels in _batches(calibration, rows, batch_size, device):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        sums, counts = token_losses(logits, labels)
        (sums.sum() / counts.sum().clamp(min=1)).backward()


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
        _calibration_gradients(model, calibration, calibration_rows, batch_size, device)
    pruner.step()
    model.zero_grad(set_to_none=True)
    after = int(layers[0].mlp.gate_proj.out_features)
    if any(int(layer.mlp.gate_proj.out_features) != after for layer in layers):
        raise ValueError("width pruning left blocks of different MLP widths")  # config needs one
    model.config.intermediate_size = after
    return before, after


def attention_shape(model: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the decoder blocks, read off the projections."""
    attn = decoder_layers(model)[0].self_attn
    head_dim = int(attn.head_dim)
    return attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim, head_dim


def heads_to_remove(fraction: float, heads: int, kv_heads: int) -> int:
    """How many query heads ``[prune] heads = fraction`` removes from every block: round(fraction
    × heads). Refused (ValueError naming the key) when that is no head, every head, or — with
    grouped-query attention — not the same number from every key/value group."""
    key = f"[prune] heads = {fraction:g}"
    k = round(fraction * heads)
    group = heads // kv_heads
    if k < 1 and group == 1:
        raise ValueError(
            f"{key}: removes no attention head — the student has {heads} heads per block, so the "
            f"smallest fraction that removes one is {1 / heads:g}"
        )
    if k < 1:
        raise ValueError(
            f"{key}: removes no attention head — the student has {heads} query heads per block in "
            f"{kv_heads} key/value groups, so the smallest fraction it can honour is "
            f"{kv_heads / heads:g} (one query head from every group)"
        )
    if k >= heads:
        raise ValueError(
            f"{key}: would remove all {heads} attention heads of every block — at least one must "
            "stay"
        )
    if group > 1 and (k % kv_heads or k // kv_heads >= group):
        step = kv_heads / heads
        choices = ", ".join(f"{step * i:g}" for i in range(1, group))
        raise ValueError(
            f"{key}: removes {k} of {heads} query heads, but the student uses grouped-query "
            f"attention ({kv_heads} key/value heads, {group} query heads each), so heads are "
            f"removed evenly inside every key/value group: the number removed must be a multiple "
            f"of {kv_heads} and leave one head per group — possible fractions: {choices}"
        )
    return k


def planned_heads(model: Any, fraction: float) -> tuple[int, int, int]:
    """(query heads removed per block, query heads left, key/value heads left) for ``[prune] heads
    = fraction`` on ``model``; ValueError when :func:`heads_to_remove` refuses the fraction or the
    model's config class refuses the shape it leaves (transformers' LlamaConfig, for one, wants
    the hidden size to be a multiple of the head count, even with an explicit ``head_dim``) — so a
    checkpoint that would not reload is never written."""
    heads, kv_heads, head_dim = attention_shape(model)
    k = heads_to_remove(fraction, heads, kv_heads)
    heads_after = heads - k
    kv_after = heads_after if kv_heads == heads else kv_heads
    cfg = model.config
    shape = {"num_attention_heads": heads_after, "num_key_value_heads": kv_after}
    try:
        type(cfg).from_dict({**cfg.to_dict(), **shape, "head_dim": head_dim})
    except Exception as exc:  # the config class's own validation, whatever it raises
        raise ValueError(
            f"[prune] heads = {fraction:g}: leaves {heads_after} attention heads of dim {head_dim} "
            f"({kv_after} key/value heads), a shape {type(cfg).__name__} refuses: "
            f"{str(exc.__cause__ or exc).strip()} — choose another fraction"
        ) from exc
    return k, heads_after, kv_after


def prune_attention_heads(
    model: Any,
    calibration: Any,
    fraction: float,
    *,
    importance: str,
    calibration_rows: int,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """Remove ``fraction`` of every block's query heads (see :func:`heads_to_remove` for the
    fractions allowed). A head's importance is the sum over its weights — its rows of ``q_proj``
    (and of ``k_proj``/``v_proj`` without GQA) and its columns of ``o_proj`` — of w² (magnitude)
    or |w · ∂L/∂w| (Taylor, on the calibration rows); the lowest go, chosen per block and, with
    GQA, per key/value group. Torch-Pruning's linear-layer pruners cut the weights; the config
    gets the new ``num_attention_heads`` / ``num_key_value_heads`` and an explicit ``head_dim``
    (hidden / heads no longer gives it); a shape the config class refuses is refused first
    (:func:`planned_heads`). Returns the heads before/after, key/value heads
    before/after and the removed head indices of every block."""
    import torch_pruning as tp

    layers = decoder_layers(model)
    heads, kv_heads, head_dim = attention_shape(model)
    k, heads_after, kv_after = planned_heads(model, fraction)
    group = heads // kv_heads
    if importance == "taylor":
        _calibration_gradients(model, calibration, calibration_rows, batch_size, device)

    def score(w: torch.Tensor) -> torch.Tensor:  # per weight
        if importance == "taylor":
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            return (w.detach().float() * g.float()).abs()
        return w.detach().float().pow(2)

    removed: list[list[int]] = []
    with torch.no_grad():
        for layer in layers:
            attn = layer.self_attn
            q = score(attn.q_proj.weight).view(heads, head_dim, -1).sum((1, 2))
            o = score(attn.o_proj.weight).view(-1, heads, head_dim).sum((0, 2))
            imp = q + o
            if group == 1:  # multi-head attention: key and value heads go with their query heads
                imp += score(attn.k_proj.weight).view(heads, head_dim, -1).sum((1, 2))
                imp += score(attn.v_proj.weight).view(heads, head_dim, -1).sum((1, 2))
                drop = sorted(torch.argsort(imp, stable=True)[:k].tolist())
            else:  # GQA: the same number of query heads from every key/value group
                per_group = k // kv_heads
                order = torch.argsort(imp.view(kv_heads, group), dim=1, stable=True)[:, :per_group]
                drop = sorted((order + torch.arange(kv_heads)[:, None] * group).flatten().tolist())
            channels = [h * head_dim + d for h in drop for d in range(head_dim)]
            tp.prune_linear_out_channels(attn.q_proj, channels)
            tp.prune_linear_in_channels(attn.o_proj, channels)
            if group == 1:
                tp.prune_linear_out_channels(attn.k_proj, channels)
                tp.prune_linear_out_channels(attn.v_proj, channels)
            removed.append(drop)
    model.zero_grad(set_to_none=True)
    for layer in layers:
        layer.self_attn.num_key_value_groups = heads_after // kv_after  # read by the attention
    cfg = model.config
    cfg.head_dim = head_dim
    cfg.num_attention_heads = heads_after
    cfg.num_key_value_heads = kv_after
    return {
        "heads_before": heads,
        "heads_after": heads_after,
        "kv_heads_before": kv_heads,
        "kv_heads_after": kv_after,
        "heads_removed": removed,
    }


def decoder_linears(model: Any) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear inside the decoder blocks (not the embeddings, not the LM head)."""
    return {
        f"layers.{name}": mod
        for name, mod in decoder_layers(model).named_modules()
        if isinstance(mod, torch.nn.Linear)
    }


def linear_sparsity(model: Any) -> float:
    """The fraction of zero weights over the linear layers of the decoder blocks."""
    linears = decoder_linears(model).values()
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return zeros / max(sum(m.weight.numel() for m in linears), 1)


@torch.no_grad()
def input_norms(
    model: Any, calibration: Any, rows: int, batch_size: int, device: str
) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of every input feature j of every linear layer of the decoder blocks: the L2 norm of
    the layer's inputs over the non-padding tokens of the first ``rows`` calibration rows,
    collected with forward pre-hooks in one pass of the model as it is."""
    linears = decoder_linears(model)
    sq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}
    keep: list[torch.Tensor] = []

    def hook(name: str):
        def collect(module: Any, args: tuple) -> None:
            x = args[0]
            x = x[keep[0]] if x.dim() == 3 and x.shape[:2] == keep[0].shape else x
            sq[name] += x.reshape(-1, x.shape[-1]).float().pow(2).sum(0).double().cpu()

        return collect

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    was_training = model.training
    model.eval()
    try:
        for ids, mask, _ in _batches(calibration, rows, batch_size, device):
            keep[:] = [mask.bool()]
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: v.sqrt() for name, v in sq.items()}


@torch.no_grad()
def wanda_prune(
    model: Any,
    calibration: Any,
    sparsity: float,
    *,
    calibration_rows: int,
    batch_size: int,
    device: str,
) -> tuple[float, float]:
    """Wanda (Sun et al. 2024), written here by hand — Torch-Pruning is structured only and the
    libraries that have it (llm-compressor, …) are far larger than these lines. Every linear layer
    of the decoder blocks scores its weights |W_ij| · ‖X_j‖₂ (:func:`input_norms`) and, in every
    output row i, the ``int(sparsity × in_features)`` of lowest score are set to zero (ties: the
    lower column first). The activations are collected in one pass of the unpruned model, not
    block by block on the already-pruned blocks as the paper's code does. The weights stay
    dense. Returns the sparsity of those layers before and after."""
    before = linear_sparsity(model)
    norms = input_norms(model, calibration, calibration_rows, batch_size, device)
    for name, layer in decoder_linears(model).items():
        w = layer.weight
        k = int(w.shape[1] * sparsity)
        if k == 0:
            continue
        metric = w.detach().abs().float() * norms[name].to(w.device, torch.float32)[None, :]
        lowest = torch.sort(metric, dim=-1, stable=True)[1][:, :k]
        w.scatter_(1, lowest, 0)
    return before, linear_sparsity(model)


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


def _nonzero(model: Any) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def prune_layers(
    model: Any,
    tokenizer: Any,
    source_dir: Path | None,
    out_dir: Path,
    *,
    fraction: float,
    width: float = 0.0,
    importance: str = "magnitude",
    layer_score: str = "influence",
    heads: float = 0.0,
    sparsity: float = 0.0,
    calibration: Any,
    validation: Any,
    calibration_rows: int,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """Prune ``model`` in place, in this order: ``round(fraction × blocks)`` decoder blocks (none
    when ``fraction`` is 0) — those of lowest Block Influence (``layer_score="influence"``) or the
    contiguous run of least angular distance (``"angular"``); then ``heads`` of every block's
    attention heads; then ``width`` of every block's MLP channels; then Wanda to ``sparsity``.
    Save it to ``out_dir`` (written whole: a temporary directory, then a rename) and report
    before/after: the whole (params, size, perplexity, tokens/s) and each method's own figures
    (blocks, heads, MLP width, sparsity), with ``stages`` giving parameters and, where more than one
    method ran, perplexity after each. A head fraction the model cannot honour is refused
    (ValueError) before anything is measured."""
    from engine.losses import validation_loss

    if layer_score not in ("influence", "angular"):
        raise ValueError(
            f'[prune] layer_score = "{layer_score}": expected "influence" or "angular"'
        )
    n = len(decoder_layers(model))
    k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0
    if heads > 0:
        planned_heads(model, heads)  # refuse early, before any work
    params_before = sum(p.numel() for p in model.parameters())
    nonzero_before = _nonzero(model)
    loss_before, _ = validation_loss(model, validation, batch_size, device)
    tps_before = tokens_per_second(model, validation, batch_size, device)
    common = {"calibration_rows": calibration_rows, "batch_size": batch_size, "device": device}
    scores: list[float] | None = None
    angular: list[float] | None = None
    drop: list[int] = []
    head_report: dict[str, Any] = {}
    mlp: tuple[int | None, int | None] = (None, None)
    wanda: tuple[float | None, float | None] = (None, None)

    def blocks() -> None:
        nonlocal scores, angular, drop
        if layer_score == "angular":
            angular = angular_distances(model, calibration, k, calibration_rows, batch_size, device)
            first = min(range(len(angular)), key=lambda i: (angular[i], i))  # type: ignore[index]
            drop = list(range(first, first + k))
        else:
            scores = block_influence(model, calibration, calibration_rows, batch_size, device)
            drop = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:k])  # type: ignore[index]
        if drop:
            remove_blocks(model, drop)

    def attention() -> None:
        head_report.update(
            prune_attention_heads(model, calibration, heads, importance=importance, **common)
        )

    def mlp_width() -> None:
        nonlocal mlp
        mlp = prune_mlp_width(model, calibration, width, importance=importance, **common)

    def unstructured() -> None:
        nonlocal wanda
        wanda = wanda_prune(model, calibration, sparsity, **common)

    score_name = "angular_distance" if layer_score == "angular" else "block_influence"
    steps: list[tuple[str, Any]] = []
    if k > 0 or layer_score == "influence":  # Block Influence is reported even with no removal
        steps.append((score_name, blocks))
    if heads > 0:
        steps.append((f"attention heads ({importance})", attention))
    if width > 0:
        steps.append((f"mlp width ({importance})", mlp_width))
    if sparsity > 0:
        steps.append((f"wanda ({sparsity:g})", unstructured))
    active = [name for name, _ in steps if name != score_name or k > 0]
    stages: list[dict[str, Any]] = []
    seconds = 0.0
    for name, run in steps:
        t0 = time.perf_counter()
        run()
        seconds += time.perf_counter() - t0
        if name not in active:
            continue
        stage: dict[str, Any] = {
            "method": name,
            "params_after": sum(p.numel() for p in model.parameters()),
            "nonzero_params_after": _nonzero(model),
        }
        if len(active) > 1 and name != active[-1]:  # the last one is the report's "after"
            loss, _ = validation_loss(model, validation, batch_size, device)
            stage["val_loss_after"] = loss
            stage["perplexity_after"] = math.exp(min(loss, 50.0))
        stages.append(stage)
    loss_after, _ = validation_loss(model, validation, batch_size, device)
    tps_after = tokens_per_second(model, validation, batch_size, device)
    if stages:
        stages[-1]["val_loss_after"] = loss_after
        stages[-1]["perplexity_after"] = math.exp(min(loss_after, 50.0))
    params_after = sum(p.numel() for p in model.parameters())
    nonzero_after = _nonzero(model)

    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    stored = _stored_dtype(source_dir)
    if stored is not None:  # saved as the source was (the profile may load bf16 as float32)
        model.to(stored)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    report = {
        "method": " + ".join(active) if active else score_name,
        "mlp_width_before": mlp[0],
        "mlp_width_after": mlp[1],
        "blocks_before": n,
        "blocks_after": n - k,
        "removed": drop,
        "block_influence": scores,
        "params_before": params_before,
        "params_after": params_after,
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
        # added with angular distance, head pruning and Wanda (older reports lack them)
        "layer_score": layer_score,
        "angular_distance": angular,
        "heads_before": head_report.get("heads_before"),
        "heads_after": head_report.get("heads_after"),
        "kv_heads_before": head_report.get("kv_heads_before"),
        "kv_heads_after": head_report.get("kv_heads_after"),
        "heads_removed": head_report.get("heads_removed"),
        "sparsity_target": sparsity if sparsity > 0 else None,
        "sparsity_before": wanda[0],
        "sparsity_after": wanda[1],
        "nonzero_params_before": nonzero_before,
        "nonzero_params_after": nonzero_after,
        "stages": stages,
    }
    (tmp / "prune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return report
