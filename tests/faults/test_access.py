"""Access: what the lab reads and writes, and whose code it runs.

- weights, adapters and checkpoints are read only from safetensors and JSON: no pickle anywhere in
  the code, every ``torch.load`` (none today) with ``weights_only=True``, and a model directory
  with only pickle weights is refused before any process starts;
- ``trust_remote_code`` is off unless the profile says so, and then the run says so where the
  operator looks: the TUI's header for the whole run, the event log, the headless output;
- a run writes nothing outside its run directory and the cache.

The control socket's mode (0600) and peer-uid check are tested in tests/test_attach.py.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from engine import events as ev
from engine.profile import load_profile

SOURCES = [
    p for d in ("engine", "genesis_tui", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")
]


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = (
                getattr(f.value, "id", getattr(f.value, "attr", ""))
                if isinstance(f, ast.Attribute)
                else ""
            )
            yield owner, name, {k.arg: k.value for k in node.keywords}


def test_nothing_is_ever_unpickled():
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names):
                    problems.append(f"{rel}:{node.lineno}: imports a pickle library")
        for owner, name, kw in calls(tree):
            if owner == "torch" and name == "load":
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                if not ok:
                    problems.append(f"{rel}: torch.load without weights_only=True")
            if name == "load" and owner in ("np", "numpy") and "allow_pickle" in kw:
                problems.append(f"{rel}: numpy.load with allow_pickle")
            if "use_safetensors" in kw and getattr(kw["use_safetensors"], "value", True) is False:
                problems.append(f"{rel}: use_safetensors=False")
    assert not problems, problems


def test_a_model_with_only_pickle_weights_is_refused_before_anything_starts(
    tiny_lab, tiny_profile, tmp_path, capsys
):
    import shutil

    from genesis_tui.cli import main

    student = tmp_path / "pickled-student"
    shutil.copytree(tiny_lab["student"], student)
    for f in student.glob("*.safetensors"):
        f.unlink()
    (student / "pytorch_model.bin").write_bytes(b"\x80\x04not really")  # never opened
    code = main(["--profile", str(tiny_profile(student__model=str(student))), "--check"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no safetensors weights (it has pytorch_model.bin: pickle files)" in err


def test_trust_remote_code_is_off_unless_the_profile_says_so(tiny_profile):
    profile = load_profile(tiny_profile())
    assert not profile.student.trust_remote_code and not profile.teacher.trust_remote_code
    assert profile.remote_code == []
    on = load_profile(tiny_profile(student__trust_remote_code=True))
    assert on.remote_code == ["student"]


async def test_remote_code_stays_in_sight_in_the_tui_header_and_the_log(tmp_path):
    from engine.rundir import RunDir
    from genesis_tui.app import GenesisApp
    from genesis_tui.link import ReplayLink
    from genesis_tui.widgets.run_header import RunHeader

    run = RunDir.create(tmp_path, "remote", "[run]\n")
    for e in (
        ev.RunStarted(str(run.path), "remote", 0, 2, 4, None, ["student", "teacher"]),
        ev.GenerationStarted(0, []),
        ev.RunFinished("stopped", reason="stopped by the operator"),
    ):
        run.append_event(e)
    run.close()
    app = GenesisApp(ReplayLink(run.path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        header = str(app.query_one(RunHeader).render())
        assert "⚠ remote code: student+teacher" in header
        from genesis_tui.widgets.event_log import EventLog

        log = "\n".join(app.query_one(EventLog).plain)
        assert "trust_remote_code is on for the student and the teacher" in log
        await pilot.press("q")


@pytest.mark.slow
def test_a_run_writes_only_its_run_directory_and_the_cache(tiny_profile, tmp_path):
    """The real CLI, headless, with HOME, TMPDIR and the working directory pointed at empty
    directories: when it is done they are still empty, and the run directory holds only the
    formats the lab reads back safely (JSON, TOML, CSV, safetensors, text)."""
    home, tmp, cwd = (tmp_path / d for d in ("home", "tmp", "cwd"))
    for d in (home, tmp, cwd):
        d.mkdir()
    prof = tiny_profile(distill__mode="logits")  # the teacher's logit cache is written too
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "HF_", "TRANSFORMERS_"))
    }
    env.update(HOME=str(home), TMPDIR=str(tmp), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(prof), "--headless"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for d in (home, tmp, cwd):
        assert not list(d.rglob("*")), (d.name, list(d.rglob("*")))
    runs = tmp_path / "runs"
    allowed = {".json", ".jsonl", ".toml", ".csv", ".safetensors", ".txt", ".log", ".yaml", ".md"}
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" and ".cache" in p.parts for p in files)  # the cache
    odd = [str(p.relative_to(runs)) for p in files if p.suffix not in allowed]
    assert not odd, odd
    outside = set(tmp_path.iterdir()) - {home, tmp, cwd, runs, Path(prof)}
    assert not outside, outside
