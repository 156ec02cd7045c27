"""Layer pruning by Block Influence: the block surgery on a real Llama, and a run that prunes its
student before evolving it (the checkpoint loads with from_pretrained; a resume reuses it)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from engine import events as ev
from engine.prune import block_influence, decoder_layers, prune_layers, remove_blocks


def tiny_llama(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


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
    assert str(run.path / "pruned") in recipe  # the champion adapts the pruned student

    again = asyncio.run(Orchestrator(profile, RunDir.open(run.path)).run(resume=True))
    assert again.status == "completed"
    reused = [e for e in RunDir.open(run.path).read_events() if isinstance(e, ev.PruneReport)]
    assert len(reused) == 2 and reused[-1].reused and reused[-1].removed == r.removed


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
