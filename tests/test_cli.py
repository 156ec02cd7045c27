"""The command line as a user meets it: help, rig profiles on this machine, and broken inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import cli

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
    merged = AutoModelForCausalLM.from_pretrained(run / "champion" / "merged", dtype=torch.float32)
    assert merged.config.num_hidden_layers == 2


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
