"""The memory estimate of --check (engine/memory.py): parameter counts from configs on the meta
device, the activation formula against what autograd really keeps, the devices' memory (measured
or from the profile), and the verdicts on the shipped rig profiles."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import memory
from engine.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "assets" / "configs"
PROFILES = ROOT / "profiles"


def spec(model: str, config: Path | None = None, **kw):
    """A [student]/[teacher] spec as engine.profile makes it (only the fields memory reads)."""
    return SimpleNamespace(
        model=model,
        revision=None,
        config=config,
        trust_remote_code=False,
        dtype=kw.get("dtype", "bfloat16"),
        load_in_4bit=kw.get("load_in_4bit", False),
    )


def arch_of(name: str) -> memory.Architecture:
    config, _ = memory.model_config(spec("org/not-downloaded", CONFIGS / name))
    return memory.architecture(config)


def test_shipped_configs_count_the_published_parameters():
    mistral = arch_of("biomistral-7b")
    assert mistral.params == 7_241_732_096 and mistral.blocks == 32 and mistral.vocab == 32000
    # 4-bit packs every nn.Linear of the blocks; the embeddings and lm_head stay 16-bit.
    assert mistral.params - mistral.packed == 2 * 32000 * 4096 + 65 * 4096
    llama = arch_of("llama-3-70b-instruct")
    assert llama.params == 70_553_706_496 and llama.vocab == 128256
    mixtral = arch_of("mixtral-8x7b-instruct")
    assert mixtral.params == 46_702_792_704 and mixtral.vocab == 32000
    # LoRA on q and v of one Mistral block: q 4096→4096, v 4096→1024.
    assert mistral.lora(["q_proj", "v_proj"], 8, blocks=1) == 8 * (4096 + 4096 + 4096 + 1024)


def test_70b_in_4bit_is_40_gb_of_weights():
    llama = arch_of("llama-3-70b-instruct")
    total, parts, _ = memory.teacher_load(
        llama,
        dtype="bfloat16",
        four_bit=True,
        rows=8,
        seq=512,
        mode="off",
        max_new_tokens=128,
        cuda=True,
    )
    weights = parts[0][1]
    assert 38 < weights < 42  # 68.5B packed at 4.5 bits, 2.1B at 16 bits
    assert total > 32


def test_training_activations_match_what_autograd_keeps():
    """The formula's decoder part against the bytes autograd's saved-tensor hooks see for a small
    Mistral with LoRA on q and v, in bfloat16 (no grouped-query attention here: on CUDA a padded
    batch repeats the key/value heads, which the formula assumes)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig

    from engine.losses import cross_entropy

    cfg = MistralConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=896,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(1000, (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        cross_entropy(logits, {"labels": ids})
    measured = sum(kept.values()) - 2 * 63 * 1000 * 4  # less the saved float32 log-softmax
    s = memory.StudentSettings(
        dtype="bfloat16",
        load_in_4bit=False,
        batch_size=2,
        max_seq_len=64,
        eval_batch_size=2,
        eval_rows_per_pass=2,
        resident=1,
        max_rank=8,
        targets=("q_proj", "v_proj"),
        kd_logits=False,
        top_k=32,
        prune_layers=0.0,
        prune_heads=0.0,
        prune_width=0.0,
        cuda=False,
    )
    blocks, _ = memory.training_activations(memory.architecture(cfg), s)
    assert measured == pytest.approx(blocks, rel=0.05)


def _rig(tmp_path: Path, name: str) -> Path:
    """A shipped rig profile in a tmp tree, beside a copy of the configs it points at."""
    (tmp_path / "profiles").mkdir()
    shutil.copytree(ROOT / "assets" / "configs", tmp_path / "assets" / "configs")
    shutil.copytree(ROOT / "assets" / "data", tmp_path / "assets" / "data")
    dst = tmp_path / "profiles" / name
    shutil.copy(PROFILES / name, dst)
    return dst


def test_the_rig_profile_fits_two_32_gb_cards(tmp_path):
    check = memory.estimate(load_profile(_rig(tmp_path, "medical-dual-gpu.toml")))
    by_name = {d.name: d for d in check.devices}
    assert set(by_name) == {"cuda:0", "cuda:1"}
    for dev in by_name.values():
        assert dev.capacity == 32 and dev.fits is True, dev
    assert [x.role for x in by_name["cuda:0"].loads] == ["teacher"]
    assert [x.role for x in by_name["cuda:1"].loads] == ["student"]
    assert by_name["cuda:1"].pruning is not None  # phase A prunes on the student's card first
    assert check.problems() == []


def test_the_70b_variant_fits_its_cards_and_needs_host_ram_for_the_teacher(tmp_path):
    p = load_profile(_rig(tmp_path, "medical-70b-teacher.toml"))
    assert p.distill.mode == "sequence" and p.devices.teacher == "cpu"
    check = memory.estimate(p)
    by_name = {d.name: d for d in check.devices}
    assert by_name["cuda:0"].fits and by_name["cuda:1"].fits
    teacher = by_name["cpu"].loads[0]
    assert teacher.role == "teacher" and 40 < teacher.total < 50


def test_a_card_present_here_is_measured_rather_than_taken_from_the_profile(tmp_path, monkeypatch):
    import torch

    p = load_profile(_rig(tmp_path, "medical-dual-gpu.toml"))
    props = SimpleNamespace(total_memory=24 * 2**30, name="NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    check = memory.estimate(p)
    by_name = {d.name: d for d in check.devices}
    assert by_name["cuda:0"].capacity == 24 and "measured" in by_name["cuda:0"].source
    assert by_name["cuda:0"].fits  # the 16 GB teacher
    assert by_name["cuda:1"].capacity == 32 and "gpu_memory_gb" in by_name["cuda:1"].source


def test_a_student_that_does_not_fit_gets_what_would(tmp_path):
    p = load_profile(_rig(tmp_path, "medical-dual-gpu.toml"))
    p = p.model_copy(
        update={
            "devices": p.devices.model_copy(update={"gpu_memory_gb": 20.0}),
            "data": p.data.model_copy(update={"batch_size": 8}),
        }
    )
    check = memory.estimate(p)
    (dev,) = [d for d in check.devices if d.name == "cuda:1"]
    assert dev.fits is False
    assert dev.suggestions and "batch_size = " in dev.suggestions[0]
    (problem,) = check.problems()
    assert "will not fit on cuda:1" in problem and "has 20 GB" in problem


def test_a_config_file_alone_is_enough_and_its_absence_is_said(tmp_path):
    only = tmp_path / "only-config"
    only.mkdir()
    (only / "config.json").write_text((CONFIGS / "biomistral-7b" / "config.json").read_text())
    config, where = memory.model_config(spec(str(only)))
    assert memory.architecture(config).params == 7_241_732_096 and where.endswith("config.json")
    with pytest.raises(memory.Skipped, match="not in the local Hugging Face cache"):
        memory.model_config(spec("org/never-downloaded"))
    (only / "config.json").write_text("{not json")
    with pytest.raises(memory.Skipped, match="cannot be read as JSON"):
        memory.model_config(spec(str(only)))
    (only / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(memory.Skipped, match="no model_type"):
        memory.model_config(spec(str(only)))


def test_kept_blocks_rounds_as_the_pruner_does():
    assert memory.kept_blocks(32, 0.2) == 26
    assert memory.kept_blocks(8, 0.25) == 6
    assert memory.kept_blocks(4, 0.01) == 3  # at least one block goes
    assert memory.kept_blocks(32, 0.0) == 32


def test_vocabularies_of_two_tokenizers_differ_beyond_padding():
    assert memory.different_vocabularies(128256, 32000)
    assert not memory.different_vocabularies(32000, 32064)  # one tokenizer, padded
    assert not memory.different_vocabularies(32000, 32000)


def test_student_settings_alternatives_are_cheaper():
    mistral = arch_of("biomistral-7b")
    s = memory.StudentSettings(
        dtype="bfloat16",
        load_in_4bit=False,
        batch_size=4,
        max_seq_len=512,
        eval_batch_size=8,
        eval_rows_per_pass=64,
        resident=16,
        max_rank=32,
        targets=("q_proj", "v_proj"),
        kd_logits=True,
        top_k=32,
        prune_layers=0.0,
        prune_heads=0.0,
        prune_width=0.0,
        cuda=True,
    )
    full = memory.student_load(mistral, s)[0]
    for alt in (
        replace(s, load_in_4bit=True),
        replace(s, batch_size=2),
        replace(s, prune_layers=0.2),
        replace(s, eval_rows_per_pass=16, batch_size=1),
    ):
        assert memory.student_load(mistral, alt)[0] < full
