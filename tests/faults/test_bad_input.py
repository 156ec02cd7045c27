"""Bad input, as a user types it: every malformed profile, data file or run directory is one
paragraph on stderr naming the file, line or key and what was expected; exit code 2; no traceback;
and nothing is written — no new run directory, and an existing one is left byte for byte as it was.

Each case runs the real ``genesis-tui`` entry point (``genesis_tui.cli.main``) in this process (an
uncaught exception fails the test with its traceback); a few run it as a subprocess as well.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tiny_profile_text

from genesis_tui.cli import main

ROOT = Path(__file__).resolve().parents[2]


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with the sha256 of its bytes (directories as such)."""
    if not path.exists():
        return {}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    name: str
    # (tmp dir, the tiny lab, a function writing a profile with overrides) -> argv
    make: Callable[..., list[str]]
    expect: tuple[str, ...]  # fragments the message must hold (case-insensitive)


def profile_with(**over):
    def make(tmp, lab, write):
        return ["--profile", str(write(**over)), "--headless"]

    return make


def profile_text(text_fn):
    """A profile whose text is ``text_fn(valid profile text)``."""

    def make(tmp, lab, write):
        p = write()
        p.write_bytes(text_fn(p.read_text()) if callable(text_fn) else text_fn)
        return ["--profile", str(p), "--headless"]

    return make


def as_bytes(fn):
    return lambda text: fn(text).encode("utf-8")


def data_file(content: bytes, fmt: str = "text", split: str = "train", **over):
    """The profile with its ``split`` data file replaced by ``content`` in format ``fmt``."""

    def make(tmp, lab, write):
        f = tmp / f"bad_{split}.{'txt' if fmt == 'text' else 'jsonl'}"
        f.write_bytes(content)
        other = "validation" if split == "train" else "train"
        keys = {f"data__{split}": str(f), "data__format": fmt}
        if fmt != "text":  # the other split must be readable in that format too
            other_file = tmp / f"ok_{other}.jsonl"
            line = (
                {"instruction": "say hi", "output": "hi"}
                if fmt == "alpaca"
                else {"text": "<s>[INST] hi [/INST] hello</s>"}
            )
            other_file.write_text(json.dumps(line) + "\n")
            keys[f"data__{other}"] = str(other_file)
        return ["--profile", str(write(**keys, **over)), "--headless"]

    return make


ALPACA_OK = b'{"instruction": "say hi", "output": "hi"}\n'

CASES = [
    # --- the profile's TOML ------------------------------------------------------------------
    Case("toml syntax", profile_text(as_bytes(lambda t: t + '\n[extra\nkey = "x"\n')), ("line",)),
    Case(
        "unterminated string",
        profile_text(as_bytes(lambda t: t.replace('name = "tiny"', 'name = "tiny'))),
        ("line 2",),
    ),
    Case(
        "key given twice",
        profile_text(as_bytes(lambda t: t.replace("[run]\n", "[run]\nseed = 1\n"))),
        ("seed",),
    ),
    Case("empty profile", profile_text(b"# nothing yet\n"), ("empty", "[student]")),
    Case(
        "non-UTF-8 profile",
        profile_text(lambda t: t.encode("utf-8").replace(b"tiny", b"t\xe9iny", 1)),
        ("utf-8",),
    ),
    Case(
        "profile missing", lambda tmp, lab, w: ["--profile", str(tmp / "nope.toml")], ("nope.toml",)
    ),
    Case("profile is a directory", lambda tmp, lab, w: ["--profile", str(tmp)], ("directory",)),
    # --- the schema ----------------------------------------------------------------------------
    Case(
        "unknown key", profile_with(training__lerning_rate=0.1), ("lerning_rate", "learning_rate")
    ),
    Case(
        "unknown section",
        profile_text(as_bytes(lambda t: t + "\n[evolutoin]\ngenerations = 2\n")),
        ("evolutoin", "evolution"),
    ),
    Case(
        "missing section", profile_text(as_bytes(lambda t: t.split("[student]")[0])), ("student",)
    ),
    Case("missing key", profile_with(student__model=None), ("model",)),
    Case(
        "wrong type: string for integer",
        profile_with(population__size="eight"),
        ("size", "integer"),
    ),
    Case("wrong type: float for integer", profile_with(data__batch_size=2.5), ("batch_size",)),
    Case("wrong type: string for list", profile_with(population__ranks="4"), ("ranks",)),
    Case("negative size", profile_with(data__batch_size=-4), ("batch_size",)),
    Case("zero population", profile_with(population__size=0), ("size",)),
    Case(
        "negative learning rate", profile_with(training__learning_rate=-0.001), ("learning_rate",)
    ),
    Case("probability above one", profile_with(evolution__mutation_rate=1.5), ("mutation_rate",)),
    Case("elitism >= population", profile_with(evolution__elitism=4), ("elitism",)),
    Case(
        "tournament > population", profile_with(evolution__tournament_size=9), ("tournament_size",)
    ),
    Case("empty rank list", profile_with(population__ranks=[]), ("ranks",)),
    Case("bad choice", profile_with(evolution__crossover="average"), ("crossover", "slerp")),
    Case("bad device name", profile_with(devices__coliseum=["gpu0"]), ("gpu0",)),
    Case(
        "cuda device on a machine without one",
        profile_with(devices__coliseum=["cuda:0"]),
        ("cuda",),
    ),
    Case(
        "missing model directory", profile_with(student__model="/nonexistent/student"), ("student",)
    ),
    Case(
        "model config for the estimate missing",
        profile_with(student__config="/nonexistent/config"),
        ("[student] config", "/nonexistent/config", "is missing"),
    ),
    Case(
        "card memory given as words",
        profile_with(devices__gpu_memory_gb="lots"),
        ("[devices] gpu_memory_gb", "a number of GB"),
    ),
    Case(
        "card memory table keyed by something else than a GPU",
        profile_text(
            as_bytes(
                lambda t: t.replace(
                    "threads_per_worker = 1", "threads_per_worker = 1\ngpu_memory_gb = { gpu0 = 8 }"
                )
            )
        ),
        ("gpu_memory_gb", '"gpu0"', "cuda:N"),
    ),
    Case(
        "a student that will not fit its card",
        profile_with(devices__coliseum=["cuda:0"], devices__gpu_memory_gb=0.5),
        ("memory:", "will not fit on cuda:0", "has 0.5 GB", "gpu_memory_gb"),
    ),
    Case(
        "LoRA target the model lacks",
        profile_with(population__target_modules=["q_proj", "qkv_proj"]),
        ("target_modules", "qkv_proj", "v_proj"),
    ),
    Case("missing data file", profile_with(data__train="/nonexistent/train.txt"), ("train.txt",)),
    Case("wrong data format field", profile_with(data__format="jsonl"), ("format", "alpaca")),
    Case(
        "sequence distillation of plain text",
        profile_with(distill__mode="sequence"),
        ("sequence",),
    ),
    # --- data files ----------------------------------------------------------------------------
    Case("empty dataset", data_file(b""), ("bad_train.txt", "no examples")),
    Case("only blank lines", data_file(b"\n  \n\n"), ("bad_train.txt", "no examples")),
    Case("empty validation split", data_file(b"", split="validation"), ("bad_validation.txt",)),
    Case(
        "non-UTF-8 text",
        data_file(b"a good line\nle patient a de la fi\xe8vre\n"),
        ("bad_train.txt", "line 2", "utf-8"),
    ),
    Case(
        "malformed JSONL line",
        data_file(ALPACA_OK * 2 + b'{"instruction": "x", "output": \n', fmt="alpaca"),
        ("bad_train.jsonl", "line 3", "not valid json"),
    ),
    Case(
        "JSONL key missing",
        data_file(ALPACA_OK + b'{"instruction": "x"}\n', fmt="alpaca"),
        ("line 2", '"output"'),
    ),
    Case(
        "JSONL value of the wrong type",
        data_file(b'{"instruction": "x", "output": 42}\n', fmt="alpaca"),
        ("line 1", "a number"),
    ),
    Case(
        "JSON array, not an object", data_file(b'["x", "y"]\n', fmt="alpaca"), ("a list", "object")
    ),
    Case(
        "plain text given as JSONL",
        data_file(b"the patient has a fever\n", fmt="alpaca"),
        ("line 1", "not valid json"),
    ),
    Case(
        "mistral line without [/INST]",
        data_file(b'{"text": "<s>[INST] hi hello</s>"}\n', fmt="mistral-inst"),
        ("line 1", "[/INST]"),
    ),
    Case(
        "data path is a directory",
        lambda tmp, lab, write: ["--profile", str(write(data__train=str(tmp))), "--headless"],
        ("directory",),
    ),
    # --- command line and run directories --------------------------------------------------------
    Case(
        "profile and resume together",
        lambda tmp, lab, w: ["--profile", str(w()), "--resume", str(tmp)],
        ("not both",),
    ),
    Case(
        "resume of a missing directory",
        lambda tmp, lab, w: ["--resume", str(tmp / "gone")],
        ("gone",),
    ),
    Case(
        "resume of a directory that is not a run",
        lambda tmp, lab, w: ["--resume", str(tmp)],
        ("profile.toml",),
    ),
]


def assert_one_clear_paragraph(code, err: str, expect) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("genesis-tui: "), err
    assert err.strip().count("\n") == 0, err  # one paragraph
    for fragment in expect:
        assert fragment.lower() in err.lower(), (fragment, err)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_paragraph_exit_2_and_writes_nothing(
    case, tiny_lab, tmp_path, tiny_profile, capsys
):
    argv = case.make(tmp_path, tiny_lab, tiny_profile)
    before = tree(tmp_path / "runs")
    code = main(argv)
    err = capsys.readouterr().err
    assert_one_clear_paragraph(code, err, case.expect)
    assert tree(tmp_path / "runs") == before  # no run directory was created


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.fixture(scope="module")
def _finished_run(tiny_lab, tmp_path_factory):
    """A real (one generation) run directory to resume; built once, copied per test."""
    from engine.orchestrator import Orchestrator
    from engine.profile import load_profile
    from engine.rundir import RunDir

    base = tmp_path_factory.mktemp("finished")
    p = base / "tiny.toml"
    data = base / "train.txt"
    data.write_text((tiny_lab["data"] / "train.txt").read_text())
    p.write_text(
        tiny_profile_text(tiny_lab, base / "runs", data__train=str(data), evolution__generations=1)
    )
    import asyncio

    prof = load_profile(p)
    run = RunDir.create(prof.run.output_dir, prof.run.name, prof.to_toml())
    assert asyncio.run(Orchestrator(prof, run).run()).status == "completed"
    return run.path, data


@pytest.fixture
def finished_run(_finished_run, tmp_path):
    import shutil

    run, data = _finished_run
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy, data


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda run, data: (run / "profile.toml").write_text("[run\n"), ("profile.toml", "line 1")),
        (
            lambda run, data: (run / "profile.toml").write_text(
                (run / "profile.toml").read_text().replace("size = 4", "size = -4")
            ),
            ("profile.toml", "size"),
        ),
        (lambda run, data: data.write_bytes(b"fine\n\xff\xfe broken\n"), ("train.txt", "line 2")),
        (lambda run, data: data.write_text(""), ("train.txt", "no examples")),
    ],
    ids=["broken profile", "invalid value", "data no longer UTF-8", "data emptied"],
)
def test_resume_with_bad_input_leaves_the_run_directory_untouched(
    finished_run, damage, expect, capsys
):
    run, data = finished_run
    saved = data.read_bytes()
    try:
        damage(run, data)
        before = tree(run)
        code = main(["--resume", str(run), "--headless"])
        assert_one_clear_paragraph(code, capsys.readouterr().err, expect)
        assert tree(run) == before
    finally:
        data.write_bytes(saved)


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["--profile", "profiles/nope.toml"], "nope.toml"),
        (["--resume", "profiles"], "profile.toml"),
        (["--profile", "README.md"], "README.md"),
    ],
)
def test_the_installed_entry_point_prints_no_traceback(argv, expect):
    r = subprocess.run(
        [sys.executable, "-m", "genesis_tui.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert_one_clear_paragraph(r.returncode, r.stderr, (expect,))
