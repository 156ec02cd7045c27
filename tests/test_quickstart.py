"""scripts/quickstart.sh installs what each command needs: the demo the run's dependencies, the
test command the test extras too (a demo's set-up once installed Ray, pyarrow and pandas for
nothing: a 2.3 GB environment and minutes more).

The script runs for real against a stand-in virtual environment whose ``python``, ``pip`` and
``genesis-tui`` record how they were called."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_venv(tmp: Path) -> Path:
    venv = tmp / "venv"
    bin_ = venv / "bin"
    bin_.mkdir(parents=True)
    calls = tmp / "calls.txt"
    for name, body in {
        "python": 'case "$*" in *"print(torch.__version__)"*) echo 2.13.0+cpu;; esac',
        "pip": "",
        "genesis-tui": "",
    }.items():
        f = bin_ / name
        f.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n{body}\nexit 0\n')
        f.chmod(0o755)
    (bin_ / "activate").write_text(f'PATH="{bin_}:$PATH"\n')
    return venv


def _run(tmp: Path, what: str) -> list[str]:
    venv = _fake_venv(tmp)
    env = {**os.environ, "GENESIS_VENV": str(venv), "PYTHON": str(venv / "bin" / "python")}
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh"), what],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return (tmp / "calls.txt").read_text().splitlines()


def test_the_demo_installs_the_project_without_its_test_extras(tmp_path):
    calls = _run(tmp_path, "demo")
    installs = [c for c in calls if c.startswith("pip install")]
    assert installs == ["pip install -q -e ."], calls
    assert "genesis-tui --profile profiles/demo.toml --headless" in calls


def test_the_test_command_installs_the_test_extras(tmp_path):
    calls = _run(tmp_path, "test")
    installs = [c for c in calls if c.startswith("pip install")]
    assert installs == ["pip install -q -e .[test]"], calls
    assert any(c.startswith("python -m pytest") for c in calls), calls
