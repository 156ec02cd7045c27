"""The engine process itself killed (SIGKILL: the OOM killer, a power cut of the process) in the
middle of a generation, on the real CLI: ``--resume`` finishes the run as if nothing happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, board, cli, only_run

pytestmark = pytest.mark.slow


def test_sigkill_mid_generation_then_resume_matches_uninterrupted(tiny_profile, tmp_path):
    prof = tiny_profile(evolution__generations=3, training__steps_per_generation=25)
    assert cli("--profile", str(prof), "--headless").returncode == 0
    reference = board(only_run(tmp_path / "runs"))
    os.rename(only_run(tmp_path / "runs"), tmp_path / "reference")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(prof), "--headless"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    run = None
    while time.time() < deadline:  # wait until generation 1 is under way, then kill everything
        runs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
        if runs and (runs[0] / "gen_0000").exists():
            run = runs[0]
            log = (run / "events.jsonl").read_text()
            if '"generation_started"' in log.split('"kind":"checkpoint"')[-1]:
                break
        time.sleep(0.2)
    assert run is not None, "the run never reached generation 1"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "gen_0002").exists()

    r = cli("--resume", str(run), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed after generation" in r.stdout
    assert board(run) == reference
