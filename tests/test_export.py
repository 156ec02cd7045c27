"""Champion export: a PEFT adapter dir that PEFT reloads, and a mergekit recipe that merges it."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from engine.export import (
    MERGE_COMMAND,
    export_peft_adapter,
    merge_with_mergekit,
    recipe_ref,
    write_mergekit_recipe,
)
from engine.genomes import lora as L

TARGETS = ["q_proj", "v_proj"]
RANK, ALPHA = 16, 32.0


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    path = tmp_path_factory.mktemp("tiny-llama") / "base"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture
def base(base_dir) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(base_dir).eval()


@pytest.fixture(scope="session")
def champion(base_dir) -> dict[str, torch.Tensor]:
    """A rank-16 child of two trained-looking adapters of ranks 8 and 32."""
    model = LlamaForCausalLM.from_pretrained(base_dir)
    parents = []
    for r, seed in ((8, 1), (32, 2)):
        torch.manual_seed(seed)
        cfg = peft.LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False
        )
        parents.append(
            peft.get_peft_model_state_dict(peft.get_peft_model(copy.deepcopy(model), cfg))
        )
    child, _ = L.crossover(
        "slerp",
        parents[0],
        2.0,
        parents[1],
        2.0,
        child_rank=RANK,
        child_scaling=ALPHA / RANK,
        generator=torch.Generator().manual_seed(0),
    )
    return child


def in_memory_logits(base_model, tensors, ids) -> torch.Tensor:
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS)
    pm = peft.get_peft_model(copy.deepcopy(base_model), cfg)
    assert not peft.set_peft_model_state_dict(pm, tensors).unexpected_keys
    with torch.no_grad():
        return pm.eval()(input_ids=ids).logits


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))


def export(base_model, tensors, out_dir: Path, base_dir: Path, **kw) -> Path:
    args = dict(
        rank=RANK,
        alpha=ALPHA,
        dropout=0.05,
        target_modules=TARGETS,
        base_model_name_or_path=str(base_dir),
        out_dir=out_dir,
    )
    args.update(kw)
    return export_peft_adapter(base_model, tensors, **args)


def test_export_reloads_with_peft_and_leaves_base_untouched(base, base_dir, champion, tmp_path):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    for p in base.model.embed_tokens.parameters():
        p.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    with torch.no_grad():
        base_logits = base(input_ids=IDS).logits
    want = in_memory_logits(base, champion, IDS)

    out = export(base, champion, tmp_path / "champion", base_dir)
    assert out == tmp_path / "champion"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".champion*"))  # no staging leftovers
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == RANK and cfg["lora_alpha"] == ALPHA and cfg["lora_dropout"] == 0.05
    assert sorted(cfg["target_modules"]) == TARGETS and not cfg.get("use_rslora")
    assert cfg["base_model_name_or_path"] == str(base_dir)

    # the base model is exactly as it was
    assert isinstance(base.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert not any("lora" in n for n, _ in base.named_modules())
    assert not hasattr(base, "peft_config")
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=IDS).logits, base_logits, rtol=0, atol=0)

    loaded = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), out).eval()
    with torch.no_grad():
        got = loaded(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - base_logits).abs().max() > 1e-3  # the adapter does something


def test_export_replaces_an_existing_dir(base, base_dir, champion, tmp_path):
    out = export(base, champion, tmp_path / "champion", base_dir)
    (out / "stale.txt").write_text("old")
    doubled = {k: v * 2 if k.endswith("lora_B.weight") else v for k, v in champion.items()}
    export(base, doubled, out, base_dir)
    assert not (out / "stale.txt").exists()
    loaded = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), out).eval()
    with torch.no_grad():
        got = loaded(input_ids=IDS).logits
    torch.testing.assert_close(got, in_memory_logits(base, doubled, IDS), rtol=0, atol=1e-5)
    assert not list(tmp_path.glob(".champion*"))


def test_export_rejects_mismatched_tensors_and_restores_base(base, base_dir, champion, tmp_path):
    q_only = {k: v for k, v in champion.items() if "q_proj" in k}
    with pytest.raises(ValueError, match="do not match"):
        export(base, q_only, tmp_path / "bad", base_dir)
    with pytest.raises(ValueError, match="ranks"):
        export(base, champion, tmp_path / "bad", base_dir, rank=8)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    assert not any("lora" in n for n, _ in base.named_modules()) and not hasattr(
        base, "peft_config"
    )
    assert all(p.requires_grad for p in base.parameters())


def test_mergekit_recipe_merges_base_plus_adapter(base, base_dir, champion, tmp_path):
    adapter = export(base, champion, tmp_path / "champion", base_dir)
    recipe = write_mergekit_recipe(str(base_dir), adapter, tmp_path / "recipe" / "merge.yaml")
    parsed = yaml.safe_load(recipe.read_text())
    assert parsed["merge_method"] == "passthrough" and parsed["dtype"] == "float32"
    assert parsed["models"] == [{"model": f"{base_dir.resolve()}+{adapter.resolve()}"}]
    assert MERGE_COMMAND in recipe.read_text()  # how to run it, at the top of the file

    merged_dir = merge_with_mergekit(recipe, tmp_path / "merged")
    merged = LlamaForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        got = merged(input_ids=IDS).logits
    torch.testing.assert_close(got, in_memory_logits(base, champion, IDS), rtol=0, atol=1e-4)

    # a re-export at the same paths merges afresh (no stale mergekit caches)
    doubled = {k: v * 2 if k.endswith("lora_B.weight") else v for k, v in champion.items()}
    export(base, doubled, adapter, base_dir)
    merge_with_mergekit(recipe, tmp_path / "merged")
    with torch.no_grad():
        got2 = LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()(input_ids=IDS).logits
    torch.testing.assert_close(got2, in_memory_logits(base, doubled, IDS), rtol=0, atol=1e-4)


def test_merge_refuses_non_local_models(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"merge_method": "passthrough", "models": [{"model": "someone/some-model+x/y"}]}
        )
    )
    with pytest.raises(FileNotFoundError):
        merge_with_mergekit(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_recipe_names_what_lies_in_the_run_dir_relatively_and_the_rest_absolutely(tmp_path):
    run = tmp_path / "run"
    (run / "pruned").mkdir(parents=True)
    outside = tmp_path / "models" / "student"
    outside.mkdir(parents=True)
    assert recipe_ref(run / "pruned", run / "champion", run) == "../pruned"
    assert recipe_ref(run / "pruned", run / "exports" / "g1-002", run) == "../../pruned"
    assert recipe_ref(outside, run / "champion", run) == str(outside)
    assert recipe_ref("someone/model", run / "champion", run) == "someone/model"
    assert recipe_ref("someone/model", run / "champion", run, "abc123") == "someone/model@abc123"
    # a path mergekit's short form would split ("+" between model and LoRA, "@" before a
    # revision) is written in the structured form
    odd = tmp_path / "odd+base@x"
    odd.mkdir()
    recipe = write_mergekit_recipe(str(odd), run / "champion", run / "champion" / "merge.yaml")
    parsed = yaml.safe_load(recipe.read_text())
    assert parsed["models"] == [{"model": {"model": {"path": str(odd)}, "lora": {"path": "."}}}]


def test_the_documented_merge_command_runs_from_a_copied_run_directory(
    base, base_dir, champion, tmp_path, monkeypatch
):
    """An export in a run directory whose base model is in that run directory too (the pruned
    student): copied elsewhere, the original gone, mergekit's own CLI runs the recipe with the
    command the recipe itself documents, and the merge is the adapter folded into the base."""
    run = tmp_path / "runs" / "demo-1"
    shutil.copytree(base_dir, run / "pruned")
    out = run / "champion"
    adapter = export(base, champion, out, run / "pruned")
    write_mergekit_recipe(
        str(run / "pruned"),
        adapter,
        out / "merge.yaml",
        base_ref=recipe_ref(run / "pruned", out, run),
    )
    text = (out / "merge.yaml").read_text()
    assert str(tmp_path) not in text  # nothing names where the run directory was

    copy_dir = tmp_path / "elsewhere" / "demo-1"
    shutil.copytree(run, copy_dir)
    os.rename(tmp_path / "runs", tmp_path / "runs-gone")  # the original is no longer there

    command = next(
        line.strip("# ").strip() for line in text.splitlines() if "mergekit-yaml" in line
    )
    assert command == MERGE_COMMAND
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(
        ["bash", "-c", f"cd {copy_dir / 'champion'} && {command}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    want = in_memory_logits(base, champion, IDS)
    merged = LlamaForCausalLM.from_pretrained(copy_dir / "champion" / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, want, rtol=0, atol=1e-4)

    # the Python API takes the recipe's relative paths from its directory, whatever the cwd
    monkeypatch.chdir(tmp_path)
    merge_with_mergekit(copy_dir / "champion" / "merge.yaml", tmp_path / "merged-api")
    again = LlamaForCausalLM.from_pretrained(tmp_path / "merged-api").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, want, rtol=0, atol=1e-4)
    assert not (tmp_path / "runs").exists()
