"""Pruning: blocks by Block Influence or angular distance, attention heads (GQA and MHA), MLP width,
Wanda sparsity — the surgery on a real (tiny, random) Llama, the checkpoints reloading with
from_pretrained to the same logits, and a run that prunes its student before evolving it."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from engine import events as ev
from engine.prune import (
    angular_distances,
    block_influence,
    decoder_layers,
    decoder_linears,
    heads_to_remove,
    prune_attention_heads,
    prune_layers,
    remove_blocks,
    wanda_prune,
)


def tiny_llama(layers: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def word_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(
            models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0")
        )
    )


def prune(model, split, out, **kw):
    """prune_layers on the tiny model with the test split as calibration and validation."""
    kw.setdefault("fraction", 0.0)
    return prune_layers(
        model,
        word_tokenizer(),
        None,
        out,
        calibration=split,
        validation=split,
        calibration_rows=6,
        batch_size=4,
        device="cpu",
        **kw,
    )


def same_logits(loaded, model, split) -> bool:
    ids, mask = split.input_ids[:3], split.attention_mask[:3]  # row 0 is padded
    with torch.no_grad():
        a = loaded(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=ids, attention_mask=mask).logits
    return torch.allclose(a, b, atol=1e-5)


class Split:
    def __init__(self, n: int = 6, length: int = 12) -> None:
        g = torch.Generator().manual_seed(1)
        self.input_ids = torch.randint(3, 64, (n, length), generator=g)
        self.attention_mask = torch.ones(n, length, dtype=torch.long)
        self.attention_mask[0, 8:] = 0  # padding is not counted
        self.labels = self.input_ids.clone()
        self.labels[self.attention_mask == 0] = -100

    def __len__(self) -> int:
        return len(self.input_ids)


def test_block_influence_is_one_minus_cosine_of_each_blocks_input_and_output():
    model, split = tiny_llama(), Split()
    bi = block_influence(model, split, rows=6, batch_size=4, device="cpu")
    assert len(bi) == 4 and all(0 <= b <= 2 for b in bi)
    with torch.no_grad():
        hs = model(
            input_ids=split.input_ids,
            attention_mask=split.attention_mask,
            output_hidden_states=True,
        ).hidden_states
    keep = split.attention_mask.bool()
    for i in range(4):
        cos = torch.nn.functional.cosine_similarity(hs[i][keep], hs[i + 1][keep], dim=-1)
        assert bi[i] == pytest.approx(1 - float(cos.mean()), abs=1e-5)


def test_removing_blocks_keeps_a_working_model_and_a_consistent_config():
    model = tiny_llama(4)
    remove_blocks(model, [1, 2])
    assert model.config.num_hidden_layers == 2 and len(decoder_layers(model)) == 2
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == [0, 1]
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)  # the KV cache works with the renumbered blocks
    with pytest.raises(ValueError, match="every decoder block"):
        remove_blocks(model, [0, 1])


def test_prune_layers_removes_the_least_influential_and_saves_a_loadable_checkpoint(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(
            models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0")
        )
    )
    model, split = tiny_llama(4), Split()
    scores = block_influence(model, split, rows=6, batch_size=4, device="cpu")
    report = prune_layers(
        model,
        tok,
        None,
        tmp_path / "pruned",
        fraction=0.25,
        calibration=split,
        validation=split,
        calibration_rows=6,
        batch_size=4,
        device="cpu",
    )
    assert report["removed"] == [min(range(4), key=lambda i: scores[i])]
    assert report["blocks_after"] == 3 and report["params_after"] < report["params_before"]
    assert report["perplexity_before"] > 0 and report["tokens_per_s_after"] > 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert loaded.config.num_hidden_layers == 3
    saved = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert saved["removed"] == report["removed"]
    assert not list(tmp_path.glob(".pruned*"))  # written whole, no temporary left


@pytest.mark.slow
def test_a_run_prunes_its_student_first_and_a_resume_reuses_it(tiny_profile):
    from engine.orchestrator import Orchestrator
    from engine.profile import load_profile
    from engine.rundir import RunDir

    profile = load_profile(tiny_profile(prune__layers=0.5, prune__calibration_rows=16))
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    finished = asyncio.run(Orchestrator(profile, run).run())
    assert finished.status == "completed", finished.reason
    reports = [e for e in run.read_events() if isinstance(e, ev.PruneReport)]
    assert len(reports) == 1 and not reports[0].reused
    r = reports[0]
    assert (r.blocks_before, r.blocks_after) == (2, 1) and r.path == str(run.path / "pruned")
    recipe = (run.path / "champion" / "merge.yaml").read_text()
    assert "../pruned+." in recipe  # the champion adapts the pruned student, in its run dir

    again = asyncio.run(Orchestrator(profile, RunDir.open(run.path)).run(resume=True))
    assert again.status == "completed"
    reused = [e for e in RunDir.open(run.path).read_events() if isinstance(e, ev.PruneReport)]
    assert len(reused) == 2 and reused[-1].reused and reused[-1].removed == r.removed


@pytest.mark.slow
def test_a_prune_the_student_cannot_take_fails_the_run_with_the_reason(tiny_profile):
    """Pruning runs in its own process: its error comes back whole, the run ends "failed" with
    the reason, and nothing is left half-written in pruned/."""
    from engine.orchestrator import Orchestrator
    from engine.profile import load_profile
    from engine.rundir import RunDir

    # The tiny student has 4 query heads over 2 key/value heads: a quarter cannot be honoured.
    profile = load_profile(tiny_profile(prune__heads=0.25, prune__calibration_rows=8))
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    finished = asyncio.run(Orchestrator(profile, run).run())
    assert finished.status == "failed"
    assert (
        finished.reason.startswith("pruning failed:") and "[prune] heads = 0.25" in finished.reason
    )
    assert not (run.path / "pruned" / "prune_report.json").exists()
    assert (run.path / "logs" / "prune.log").exists()


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_width_pruning_removes_mlp_channels_with_torch_pruning(tmp_path, importance):
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(
            models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0")
        )
    )
    model, split = tiny_llama(4), Split()
    report = prune_layers(
        model,
        tok,
        None,
        tmp_path / "pruned",
        fraction=0.25,
        width=0.5,
        importance=importance,
        calibration=split,
        validation=split,
        calibration_rows=6,
        batch_size=4,
        device="cpu",
    )
    assert (report["mlp_width_before"], report["mlp_width_after"]) == (64, 32)
    assert report["blocks_after"] == 3 and importance in report["method"]
    for layer in decoder_layers(model):
        mlp = layer.mlp
        assert mlp.gate_proj.weight.shape == (32, 32) and mlp.down_proj.weight.shape == (32, 32)
        assert layer.self_attn.q_proj.weight.shape == (32, 32)  # attention left whole
    assert all(p.grad is None for p in model.parameters())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert loaded.config.intermediate_size == 32 and loaded.config.num_hidden_layers == 3
    with torch.no_grad():
        ids = split.input_ids[:2]
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def _identity_blocks(model, blocks) -> None:
    """Make ``blocks`` pass their input through unchanged (their attention and MLP write zeros)."""
    with torch.no_grad():
        for i in blocks:
            decoder_layers(model)[i].self_attn.o_proj.weight.zero_()
            decoder_layers(model)[i].mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("start", [1, 4])
def test_angular_distance_removes_the_contiguous_run_that_changes_its_input_least(tmp_path, start):
    import math

    from transformers import AutoModelForCausalLM

    model, split = tiny_llama(6), Split()
    _identity_blocks(model, [start, start + 1])
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.2, 3.0)  # the final norm is not part of any block
        out = model(
            input_ids=split.input_ids,
            attention_mask=split.attention_mask,
            output_hidden_states=True,
        )
    d = angular_distances(model, split, 2, rows=6, batch_size=4, device="cpu")
    assert len(d) == 5 and d[start] < 1e-3
    assert all(d[i] > 0.01 for i in range(5) if i != start)
    keep = split.attention_mask.bool()
    hs = out.hidden_states
    for i in range(4):  # runs that end before the last block: against transformers' hidden states
        cos = torch.nn.functional.cosine_similarity(hs[i][keep], hs[i + 2][keep], dim=-1)
        ref = float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean())
        assert d[i] == pytest.approx(ref, abs=1e-4)

    report = prune(model, split, tmp_path / "pruned", fraction=2 / 6, layer_score="angular")
    assert report["removed"] == [start, start + 1] and report["blocks_after"] == 4
    assert report["layer_score"] == "angular" and report["method"] == "angular_distance"
    assert report["angular_distance"] == pytest.approx(d) and report["block_influence"] is None
    with torch.no_grad():  # the blocks removed were identities: nothing changes
        after = model(input_ids=split.input_ids, attention_mask=split.attention_mask).logits
    assert torch.allclose(after, out.logits, atol=1e-5)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert loaded.config.num_hidden_layers == 4 and same_logits(loaded, model, split)


def _masked_heads(model, removed):
    """A copy of ``model`` whose ``removed`` heads write nothing (their o_proj columns zeroed):
    the function a correct head pruning must compute."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, drop in zip(decoder_layers(ref), removed, strict=True):
            hd = layer.self_attn.head_dim
            for h in drop:
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
    return ref


def test_head_pruning_with_gqa_removes_query_heads_evenly_per_group_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    model, split = tiny_llama(4, kv_heads=2), Split()  # 4 query heads of dim 8, 2 per KV head
    expected = []
    for layer in decoder_layers(model):
        a = layer.self_attn
        q = a.q_proj.weight.detach().view(4, 8, 32).pow(2).sum((1, 2))
        o = a.o_proj.weight.detach().view(32, 4, 8).pow(2).sum((0, 2))
        imp = q + o  # magnitude; k/v are shared by the group and stay
        expected.append([int(imp[:2].argmin()), 2 + int(imp[2:].argmin())])
    reference = _masked_heads(model, expected)
    params = sum(p.numel() for p in model.parameters())

    report = prune(model, split, tmp_path / "pruned", heads=0.5)
    assert report["heads_removed"] == expected
    assert (report["heads_before"], report["heads_after"]) == (4, 2)
    assert (report["kv_heads_before"], report["kv_heads_after"]) == (2, 2)
    assert report["method"] == "attention heads (magnitude)" and report["blocks_after"] == 4
    assert report["params_after"] == params - 4 * 2 * (16 * 32)  # q rows and o columns of 2 heads
    for layer in decoder_layers(model):
        a = layer.self_attn
        assert a.q_proj.weight.shape == (16, 32) and a.o_proj.weight.shape == (32, 16)
        assert a.k_proj.weight.shape == (16, 32) and a.v_proj.weight.shape == (16, 32)
    assert same_logits(model, reference, split)  # the kept heads still meet their own KV heads

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    cfg = loaded.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, 8)
    assert cfg.hidden_size == 32 and same_logits(loaded, model, split)
    out = loaded.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)  # the KV cache works with the new head counts


def test_head_pruning_without_gqa_removes_key_and_value_heads_too(tmp_path):
    from transformers import AutoModelForCausalLM

    model, split = tiny_llama(3, kv_heads=4), Split()
    report = prune(model, split, tmp_path / "pruned", heads=0.5, importance="taylor")
    assert (report["heads_after"], report["kv_heads_after"]) == (2, 2)
    assert all(len(drop) == 2 for drop in report["heads_removed"])
    assert "attention heads (taylor)" in report["method"]
    assert all(p.grad is None for p in model.parameters())
    for layer in decoder_layers(model):
        a = layer.self_attn
        assert a.q_proj.weight.shape == a.k_proj.weight.shape == (16, 32)
        assert a.o_proj.weight.shape == (32, 16)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    cfg = loaded.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, 8)
    assert same_logits(loaded, model, split)


def test_the_removed_heads_are_exactly_the_ones_masked_out():
    model, split = tiny_llama(2, kv_heads=4), Split()
    copy_of = _masked_heads(model, [[], []])  # unchanged copy
    r = prune_attention_heads(
        model,
        split,
        0.75,
        importance="magnitude",
        calibration_rows=6,
        batch_size=4,
        device="cpu",
    )
    reference = _masked_heads(copy_of, r["heads_removed"])
    assert same_logits(model, reference, split)


@pytest.mark.parametrize(
    "kv, fraction, words",
    [
        (2, 0.25, "must be a multiple of 2"),
        (2, 0.75, "possible fractions: 0.5"),
        (2, 0.1, "smallest fraction it can honour is 0.5"),
        (4, 0.1, "smallest fraction that removes one is 0.25"),
        (4, 0.9, "would remove all 4 attention heads"),
        (4, 0.25, "leaves 3 attention heads of dim 8 (3 key/value heads), a shape LlamaConfig"),
    ],
)
def test_head_fractions_the_model_cannot_honour_are_refused_before_any_work(
    tmp_path, kv, fraction, words
):
    model, split = tiny_llama(2, kv_heads=kv), Split()
    with pytest.raises(ValueError) as err:
        prune(model, split, tmp_path / "pruned", heads=fraction)
    assert str(err.value).startswith(f"[prune] heads = {fraction:g}: ") and words in str(err.value)
    assert not (tmp_path / "pruned").exists()
    assert decoder_layers(model)[0].self_attn.q_proj.out_features == 32  # untouched
    assert heads_to_remove(0.5, 4, kv) == 2
    with pytest.raises(ValueError, match="layer_score"):
        prune(model, split, tmp_path / "pruned", fraction=0.5, layer_score="cosine")


def test_wanda_zeroes_the_lowest_weight_times_input_norm_in_every_row():
    model, split = tiny_llama(2), Split()
    layer = decoder_layers(model)[1].mlp.down_proj  # 64 inputs: the MLP's intermediate channels
    inputs = []
    hook = layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    with torch.no_grad():
        for s in (0, 4):  # the calibration rows, batch by batch
            model(
                input_ids=split.input_ids[s : s + 4], attention_mask=split.attention_mask[s : s + 4]
            )
    hook.remove()
    keep = split.attention_mask.bool()
    x = torch.cat([inputs[0][keep[:4]], inputs[1][keep[4:]]]).double()  # non-padding tokens only
    w0 = layer.weight.detach().clone()
    metric = w0.abs() * x.pow(2).sum(0).sqrt().float()
    expected = w0.clone()
    for i in range(len(w0)):
        expected[i, metric[i].argsort(stable=True)[:32]] = 0
    embed, head = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()

    before, after = wanda_prune(model, split, 0.5, calibration_rows=6, batch_size=4, device="cpu")
    assert before == 0 and after == pytest.approx(0.5)
    assert torch.equal(layer.weight, expected)
    for name, lin in decoder_linears(model).items():
        zeros = (lin.weight == 0).sum(1)
        assert bool((zeros == lin.in_features // 2).all()), name  # per row, not per layer
    assert torch.equal(model.model.embed_tokens.weight, embed)  # embeddings and head untouched
    assert torch.equal(model.lm_head.weight, head)


def test_wanda_in_prune_layers_reports_the_sparsity_and_saves_the_zeros_dense(tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.prune import linear_sparsity

    model, split = tiny_llama(2), Split()
    report = prune(model, split, tmp_path / "pruned", sparsity=0.5)
    assert report["method"] == "wanda (0.5)" and report["sparsity_target"] == 0.5
    assert report["sparsity_before"] == 0 and report["sparsity_after"] == pytest.approx(0.5)
    assert report["params_after"] == report["params_before"]  # dense: the same tensors
    assert report["nonzero_params_after"] < report["nonzero_params_before"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert linear_sparsity(loaded) == pytest.approx(0.5) and same_logits(loaded, model, split)


def test_every_method_together_runs_in_order_and_reports_each_stage(tmp_path):
    from transformers import AutoModelForCausalLM

    model, split = tiny_llama(4), Split()
    report = prune(
        model,
        split,
        tmp_path / "pruned",
        fraction=0.25,
        layer_score="angular",
        heads=0.5,
        width=0.5,
        sparsity=0.5,
    )
    stages = report["stages"]
    assert [s["method"] for s in stages] == [
        "angular_distance",
        "attention heads (magnitude)",
        "mlp width (magnitude)",
        "wanda (0.5)",
    ]
    assert report["method"] == " + ".join(s["method"] for s in stages)
    assert all(s["perplexity_after"] > 0 for s in stages)
    assert stages[-1]["perplexity_after"] == report["perplexity_after"]
    params = [report["params_before"]] + [s["params_after"] for s in stages]
    assert params[0] > params[1] > params[2] > params[3] == params[4] == report["params_after"]
    assert stages[3]["nonzero_params_after"] < stages[2]["nonzero_params_after"]
    assert (report["blocks_after"], report["heads_after"], report["mlp_width_after"]) == (3, 2, 32)
    assert report["sparsity_after"] == pytest.approx(0.5)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    cfg = loaded.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (3, 2, 32)
    assert same_logits(loaded, model, split)


def test_the_prune_section_validates_the_new_keys(tiny_profile):
    import pydantic

    from engine.errors import ProfileError
    from engine.profile import PruneConfig, load_profile

    p = load_profile(
        tiny_profile(prune__layer_score="angular", prune__heads=0.5, prune__sparsity=0.5)
    ).prune
    assert (p.layer_score, p.heads, p.sparsity) == ("angular", 0.5, 0.5) and p.active
    assert PruneConfig(heads=0.5).active and PruneConfig(sparsity=0.2).active
    assert (
        not PruneConfig(layer_score="angular").active and PruneConfig().layer_score == "influence"
    )
    for bad in ({"heads": 1.0}, {"sparsity": -0.1}, {"sparsity": 1.0}, {"layer_score": "cos"}):
        with pytest.raises(pydantic.ValidationError):
            PruneConfig(**bad)
    with pytest.raises(ProfileError, match="heads"):
        load_profile(tiny_profile(prune__heads=1.0))
    for name in ("layer_score", "heads", "sparsity"):
        assert len(PruneConfig.model_fields[name].description or "") > 40
