"""The command line as a user meets it: help, rig profiles on this machine, and broken inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import cli, events, only_run

ROOT = Path(__file__).resolve().parents[1]


def test_help_and_help_profile():
    r = cli("--help")
    assert r.returncode == 0 and "--profile" in r.stdout and "--resume" in r.stdout
    r = cli("--help-profile")
    assert r.returncode == 0
    for section in (
        "[run]",
        "[student]",
        "[teacher]",
        "[data]",
        "[population]",
        "[evolution]",
        "[training]",
        "[devices]",
    ):
        assert section in r.stdout


def test_nothing_to_do_is_a_usage_error():
    r = cli()
    assert r.returncode == 2 and "nothing to do" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("profile", ["medical-dual-gpu.toml", "tinyllama.toml"])
def test_rig_profiles_stop_early_with_a_clear_message_here(profile):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    r = cli("--profile", f"profiles/{profile}", "--headless")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "cuda" in r.stderr and "not in the local Hugging Face cache" in r.stderr
    assert "hf download" in r.stderr
    assert r.stderr.count("\n") == 1  # one paragraph


def test_bad_profile_value_names_file_line_and_key(tiny_profile):
    r = cli("--profile", str(tiny_profile(evolution__elitism=4)), "--headless")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tiny.toml, line" in r.stderr and "elitism" in r.stderr


def test_a_worker_that_cannot_load_its_model_fails_the_run_clearly(
    tiny_lab, tiny_profile, tmp_path
):
    broken = tmp_path / "broken_student"
    shutil.copytree(tiny_lab["student"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    r = cli("--profile", str(tiny_profile(student__model=str(broken))), "--headless", timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "coliseum-0" in r.stderr and "could not start" in r.stderr
    assert "events.jsonl" in r.stderr


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    r = cli("--resume", str(tmp_path), "--headless")
    assert r.returncode == 2 and "not a Genesis Lab run directory" in r.stderr


def test_merge_flag_writes_a_merged_champion_that_transformers_loads(tiny_profile, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    r = cli("--profile", str(tiny_profile(evolution__generations=1)), "--headless", "--merge")
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    merged_dir = run / "champion" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert merged.config.num_hidden_layers == 2
    # the run says where the merged model went and what it is, as it happens and at the end
    out = "".join(r.stdout.split())  # rich wraps long lines, paths included

    def said(text: str) -> bool:
        return "".join(text.split()) in out

    assert said(f"into its base → {merged_dir}: a plain transformers checkpoint")
    assert said(f"champion merged into its base: {merged_dir}")
    (exported,) = [e for e in events(run) if e["kind"] == "exported"]
    assert exported["merged"] == str(merged_dir)
    assert events(run)[-1]["merged_dir"] == str(merged_dir)
    lineage = json.loads((run / "champion" / "lineage.json").read_text())
    assert lineage["merge"]["merged"] == "merged"
    assert (
        "`genesis-tui --merge` already wrote `merged/` here"
        in (run / "champion" / "README.md").read_text()
    )


# Reproduces, on any CPU, what bitsandbytes does on one with AVX512-BF16 and no network: as it is
# imported it asks the Hub, through `kernels`, for an optional CPU kernel, and logs the failure.
BNB_AS_ON_AVX512_BF16 = """
import importlib.abc, importlib.util, sys

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())

import kernels._internals.hf_hub as _hub

class _NoNetwork:
    def get_organization_overview(self, *args, **kwargs):
        raise ConnectionError("no network")

_hub._get_hf_api = lambda *args, **kwargs: _NoNetwork()
"""


def test_a_headless_start_does_not_print_the_bitsandbytes_kernel_warning(tiny_profile, tmp_path):
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BNB_AS_ON_AVX512_BF16)
    online = {"PYTHONPATH": str(hook), "HF_HUB_OFFLINE": "0"}  # the reported variant

    def python(code: str, **env) -> str:
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=ROOT,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout + r.stderr

    # the hook reproduces it, online and offline, as bitsandbytes is imported (by PEFT up to
    # 0.21, by any version's 4-bit loading) …
    assert "could not verify publisher trust" in python("import bitsandbytes", **online)
    offline = python("import bitsandbytes", **{**online, "HF_HUB_OFFLINE": "1"})
    assert "Skipping publisher trust check" in offline and "gemm_4bit_forward" in offline
    # … and once engine is imported, neither variant is printed
    offline = python("import engine, peft, bitsandbytes", **{**online, "HF_HUB_OFFLINE": "1"})
    assert "publisher trust" not in offline and "gemm_4bit_forward" not in offline

    r = cli("--profile", str(tiny_profile(evolution__generations=1)), "--headless", env=online)
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    printed = [r.stdout + r.stderr] + [p.read_text() for p in (run / "logs").glob("*.log")]
    assert len(printed) >= 3  # the CLI, the coliseum and the teacher
    for text in printed:
        assert "publisher trust" not in text and "gemm_4bit_forward" not in text


def test_only_that_bitsandbytes_message_is_silenced(caplog):
    import logging

    import engine  # noqa: F401 - installs the filters

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
            "you already `pip install kernels` and the kernels >= 0.11.1",
            "Kernel repository 'kernels-community/quantization-bitsandbytes' could not verify "
            "publisher trust status.",
        )
        log.warning("another bitsandbytes warning")
        logging.getLogger("kernels._internals.hf_hub").warning(
            "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in "
            "offline mode."
        )
    assert [r.getMessage() for r in caplog.records] == [
        "another bitsandbytes warning",
        "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in "
        "offline mode.",
    ]


def test_attach_and_open_say_what_is_wrong_in_one_paragraph(tmp_path):
    r = cli("attach")
    assert r.returncode == 2 and "attach needs a run directory" in r.stderr
    r = cli("open", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such run directory" in r.stderr
    r = cli("attach", str(tmp_path))
    assert r.returncode == 2 and "it has no profile.toml" in r.stderr
    (tmp_path / "profile.toml").write_text("")
    r = cli("attach", str(tmp_path))
    assert r.returncode == 2 and "no engine is running this run" in r.stderr
    assert f"genesis-tui open {tmp_path}" in r.stderr and f"--resume {tmp_path}" in r.stderr
    r = cli("open", str(tmp_path))  # stdout is a pipe here, not a terminal
    assert r.returncode == 2 and "the terminal UI needs a terminal" in r.stderr
    r = cli("--profile", str(ROOT / "profiles" / "demo.toml"))
    assert r.returncode == 2 and "needs a terminal" in r.stderr and "--headless" in r.stderr
    for r in [cli("attach", str(tmp_path), "--headless"), cli("extra-arg")]:
        assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "events.jsonl").exists()  # nothing written into the run directory


# --- the memory estimate of --check (engine/memory.py) --------------------------------------------

CONFIGS = ROOT / "assets" / "configs"


def _seed_rig(tmp_path: Path, *, teacher_config: bool = True, extra: str = "") -> Path:
    """The seed's first rig profile: Llama-3-70B-Instruct in 4-bit as the teacher on one 32 GB
    card, BioMistral-7B on the other, with the shipped configs standing in for the weights."""
    data = ROOT / "assets" / "data"
    config = f'config = "{CONFIGS / "llama-3-70b-instruct"}"\n' if teacher_config else ""
    p = tmp_path / "seed-rig.toml"
    p.write_text(
        '[run]\nname = "seed-rig"\noutput_dir = "runs"\n\n'
        f'[student]\nmodel = "BioMistral/BioMistral-7B"\ndtype = "bfloat16"\n'
        f'config = "{CONFIGS / "biomistral-7b"}"\n\n'
        '[teacher]\nmodel = "meta-llama/Meta-Llama-3-70B-Instruct"\ndtype = "bfloat16"\n'
        f'load_in_4bit = true\nquant_type = "nf4"\n{config}\n'
        f'[data]\nformat = "alpaca"\ntrain = "{data / "domain_train.alpaca.jsonl"}"\n'
        f'validation = "{data / "domain_val.alpaca.jsonl"}"\nmax_seq_len = 512\nbatch_size = 4\n'
        "eval_batch_size = 8\n\n"
        "[population]\nsize = 10\nranks = [8, 16, 32]\n\n"
        '[devices]\nteacher = "cuda:0"\ncoliseum = ["cuda:1"]\ngpu_memory_gb = 32\n' + extra
    )
    return p


def _no_gpu_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: its cards are measured, not the profile's")


def test_check_says_a_70b_teacher_in_4bit_will_not_fit_one_32_gb_card(tmp_path):
    _no_gpu_here()
    r = cli("--profile", str(_seed_rig(tmp_path)), "--check")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    teacher_card = next(line for line in r.stdout.splitlines() if line.startswith("  cuda:0"))
    assert "32 GB ([devices] gpu_memory_gb" in teacher_card
    assert "will not fit — needs" in teacher_card and "has 32 GB" in teacher_card
    assert 'teacher = "cpu"' in teacher_card and "a card of at least" in teacher_card
    assert "teacher meta-llama/Meta-Llama-3-70B-Instruct:" in r.stdout and "in 4-bit" in r.stdout
    student_card = next(line for line in r.stdout.splitlines() if line.startswith("  cuda:1"))
    assert "fits" in student_card
    # The stop: one paragraph naming the memory beside the missing GPUs and weights.
    assert r.stderr.count("\n") == 1
    assert "memory: the teacher meta-llama/Meta-Llama-3-70B-Instruct" in r.stderr
    assert "will not fit on cuda:0" in r.stderr and "has 32 GB" in r.stderr


def test_check_of_the_rig_profile_shows_both_cards_fit_even_here():
    _no_gpu_here()
    r = cli("--profile", "profiles/medical-dual-gpu.toml", "--check")
    assert r.returncode == 2 and "Traceback" not in r.stderr  # no GPU, no weights here
    cards = [line for line in r.stdout.splitlines() if line.startswith("  cuda:")]
    assert len(cards) == 2, r.stdout
    assert all("32 GB ([devices] gpu_memory_gb" in c and "fits — needs" in c for c in cards)
    assert "teacher BioMistral/BioMistral-7B-DARE" in r.stdout
    assert "after pruning 6 of 32 blocks" in r.stdout
    assert r.stderr.count("\n") == 1 and "memory:" not in r.stderr
    assert "vocabulary" not in r.stderr  # one tokenizer: logit distillation is valid


def test_logit_distillation_across_two_vocabularies_is_found_from_the_configs(tmp_path):
    r = cli(
        "--profile", str(_seed_rig(tmp_path, extra='\n[distill]\nmode = "logits"\n')), "--check"
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert '[distill] mode = "logits"' in r.stderr
    assert "vocabulary of 128256 tokens" in r.stderr and "one of 32000" in r.stderr
    assert 'mode = "sequence"' in r.stderr


def test_check_says_why_a_model_was_not_estimated(tmp_path):
    r = cli("--profile", str(_seed_rig(tmp_path, teacher_config=False)), "--check")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "teacher meta-llama/Meta-Llama-3-70B-Instruct: estimate skipped" in r.stdout
    assert "[teacher] config is not set" in r.stdout and "cannot tell" in r.stdout
