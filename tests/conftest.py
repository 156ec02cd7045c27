"""Shared fixtures: a tiny but real Llama checkpoint, tokenizer and data, built once per session.

Real architectures at tiny sizes (as mergekit's tests do), so the whole engine — worker processes,
PEFT adapters, mergekit — runs on a CPU in seconds without the shipped assets.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

WORDS = (
    "patient reports chest pain fever cough dyspnea nausea headache rash fatigue dizziness "
    "blood pressure heart rate temperature oxygen saturation stable improving worse plan start stop "
    "continue review follow up in two weeks mg daily twice aspirin metoprolol amoxicillin ibuprofen"
).split()


def _lines(rng: random.Random, n: int, domain: bool) -> list[str]:
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        if domain:  # a learnable regularity only the domain split has
            words += ["assessment", "angina", "plan", "aspirin", "75", "mg"]
        out.append(" ".join(words))
    return out


# --- running the real CLI, reading its run directories ------------------------------------------


def cli(*args, timeout=600, env=None, **kw):
    """``genesis-tui ARGS`` as a subprocess from the project root (output captured as text);
    ``env``: variables set (or, as None, unset) on top of this process's environment."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "genesis_tui.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        **kw,
    )


def only_run(runs: Path) -> Path:
    """The one run directory under ``runs`` (``.cache``, the teacher's logit cache, is not one)."""
    dirs = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def board(run: Path) -> list[tuple[str, str, str]]:
    """The run's leaderboard.csv as (id, val_loss, operator) rows."""
    import csv

    with open(run / "leaderboard.csv") as f:
        return [(r["id"], r["val_loss"], r["operator"]) for r in csv.DictReader(f)]


def events(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def alpaca_from_text(src: Path, dst: Path) -> Path:
    """The tiny lab's text lines as alpaca records: the first word is the instruction."""
    import json

    rows = []
    for line in src.read_text().splitlines():
        head, _, tail = line.partition(" ")
        rows.append(json.dumps({"instruction": head, "input": "", "output": tail}))
    dst.write_text("\n".join(rows) + "\n")
    return dst


def build_tiny_lab(root: Path, seed: int = 0) -> dict[str, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.embedded.build import train_tokenizer

    rng = random.Random(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    train, val = _lines(rng, 240, True), _lines(rng, 48, True)
    (data / "train.txt").write_text("\n".join(train) + "\n")
    (data / "val.txt").write_text("\n".join(val) + "\n")

    fast = train_tokenizer(train + val, 320)
    paths = {"data": data}
    for name, layers, s in (("student", 2, 1), ("teacher", 3, 2)):
        torch.manual_seed(s)
        cfg = LlamaConfig(
            vocab_size=len(fast),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=fast.bos_token_id,
            eos_token_id=fast.eos_token_id,
            pad_token_id=fast.pad_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg)
        out = root / name
        model.save_pretrained(out, safe_serialization=True)
        fast.save_pretrained(out)
        paths[name] = out
    return paths


def demo_profile_text(out: Path, **over) -> str:
    """The shipped demo profile (the embedded default), resolved to absolute paths, writing its
    runs under ``out``; keyword ``section__key=value`` overrides single values."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from engine.profile import load_profile

    root = Path(__file__).resolve().parents[1]
    sections = tomllib.loads(load_profile(root / "profiles" / "demo.toml").to_toml())
    sections["run"]["output_dir"] = str(out)
    return _profile_text(sections, over)


def tiny_profile_text(lab: dict[str, Path], out: Path, **over) -> str:
    """A profile for the tiny lab; keyword ``section__key=value`` overrides single values."""
    sections = {
        "run": {"name": "tiny", "seed": 7, "output_dir": str(out)},
        "student": {"model": str(lab["student"])},
        "teacher": {"model": str(lab["teacher"])},
        "data": {
            "format": "text",
            "train": str(lab["data"] / "train.txt"),
            "validation": str(lab["data"] / "val.txt"),
            "max_seq_len": 32,
            "batch_size": 4,
            "eval_batch_size": 8,
        },
        "population": {"size": 4, "ranks": [2, 4], "target_modules": ["q_proj", "v_proj"]},
        "evolution": {"generations": 2, "elitism": 1, "tournament_size": 2, "crossover": "slerp"},
        "training": {"steps_per_generation": 3, "learning_rate": 5e-3},
        "devices": {"teacher": "cpu", "coliseum": ["cpu"], "threads_per_worker": 1},
    }
    return _profile_text(sections, over)


def _profile_text(sections: dict, over: dict) -> str:
    for key, value in over.items():
        sec, name = key.split("__")
        if value is None:
            sections[sec].pop(name, None)
        else:
            sections.setdefault(sec, {})[name] = value
    lines = []
    for sec, kv in sections.items():
        lines.append(f"[{sec}]")
        for k, v in kv.items():
            if v is not None:
                lines.append(f"{k} = {_toml(v)}")
        lines.append("")
    return "\n".join(lines)


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="session")
def tiny_lab(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_lab(tmp_path_factory.mktemp("tiny_lab"))


@pytest.fixture
def tiny_profile(tiny_lab, tmp_path):
    """Write a tiny profile (overrides as keyword arguments) and return its path."""

    def make(**over) -> Path:
        p = tmp_path / "tiny.toml"
        p.write_text(tiny_profile_text(tiny_lab, tmp_path / "runs", **over))
        return p

    return make


# A TTS student small enough to build and prune in a test (engine.tts.model.StudentConfig fields).
TINY_TTS = {
    "hidden": 32,
    "encoder_filters": (48, 40),
    "decoder_filters": (48, 40),
    "duration_filters": (24, 16),
    "n_tokens": 6,
    "token_dim": 16,
    "reference_filters": (24, 24),
}


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (small models run faster, and a busy CI stays fair)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
