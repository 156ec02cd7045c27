"""End to end: the real CLI, real worker processes, real checkpoints, on tiny models and on the demo."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import ROOT, board, cli, events, only_run

pytestmark = pytest.mark.slow


def test_headless_run_writes_a_complete_run_directory(tiny_profile, tmp_path):
    prof = tiny_profile()
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    assert (run / "profile.toml").is_file()
    assert sorted(p.name for p in run.glob("gen_*")) == ["gen_0000", "gen_0001"]
    state = json.loads((run / "gen_0001" / "state.json").read_text())
    ids = [i["id"] for i in state["population"]]
    assert len(ids) == len(set(ids)) == 4
    children = [i for i in state["population"] if i["generation"] == 1]
    assert children and all(i["parents"] for i in children)  # lineage recorded
    kinds = [e["kind"] for e in events(run)]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert events(run)[-1]["status"] == "completed"
    assert {"reference", "generation_finished", "checkpoint", "exported", "train_progress"} <= set(
        kinds
    )
    champion = run / "champion"
    assert (champion / "adapter_config.json").is_file() and (
        champion / "adapter_model.safetensors"
    ).is_file()
    assert "merge_method" in (champion / "merge.yaml").read_text()
    assert "Leaderboard" in r.stdout and "champion" in r.stdout
    # elites are not re-evaluated: each id is scored exactly once
    scored = [
        e["id"] for e in events(run) if e["kind"] == "individual" and e["status"] == "evaluated"
    ]
    assert len(scored) == len(set(scored))


def test_same_profile_and_seed_give_the_same_leaderboard(tiny_profile, tmp_path):
    prof = tiny_profile()
    assert cli("--profile", str(prof), "--headless").returncode == 0
    first = only_run(tmp_path / "runs")
    os.rename(first, tmp_path / "first")
    assert cli("--profile", str(prof), "--headless").returncode == 0
    assert board(tmp_path / "first") == board(only_run(tmp_path / "runs"))


def test_untrained_reference_and_improvement_on_tiny_lab(tiny_profile, tmp_path):
    prof = tiny_profile(evolution__generations=2, training__steps_per_generation=20)
    assert cli("--profile", str(prof), "--headless").returncode == 0
    ev = events(only_run(tmp_path / "runs"))
    student = next(e for e in ev if e["kind"] == "reference" and e["model"] == "student")[
        "val_loss"
    ]
    best = [e for e in ev if e["kind"] == "generation_finished"]
    assert -best[-1]["best"] < student  # the champion beats the untrained student
    assert best[-1]["best"] >= best[0]["best"]  # elitism: the best never gets worse


DEMO = ROOT / "profiles" / "demo.toml"


@pytest.mark.skipif(
    not (ROOT / "assets" / "models" / "student" / "config.json").exists(), reason="assets not built"
)
def test_demo_two_generations_improves_on_generation_zero_and_the_untrained_student(tmp_path):
    from engine.profile import load_profile

    text = load_profile(DEMO).to_toml()
    text = text.replace("generations = 10", "generations = 2")
    text = re.sub(r"sizes = \[[0-9, ]*\]", "sizes = [8, 4]", text)
    # two single-threaded coliseums: on CI's 2 cores a generation takes ~0.6 of one 2-thread
    # worker's time (docs/SCALING.md), and the population is the same
    text = text.replace(
        'coliseum = ["cpu"]\nthreads_per_worker = 0',
        'coliseum = ["cpu", "cpu"]\nthreads_per_worker = 1',
    )
    text = text.replace(f'output_dir = "{ROOT / "runs"}"', f'output_dir = "{tmp_path / "runs"}"')
    assert (
        "generations = 2" in text
        and "sizes = [8, 4]" in text
        and str(tmp_path) in text
        and '["cpu", "cpu"]' in text
    )
    prof = tmp_path / "demo2.toml"
    prof.write_text(text)
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    ev = events(only_run(tmp_path / "runs"))
    student = next(e for e in ev if e["kind"] == "reference" and e["model"] == "student")[
        "val_loss"
    ]
    gens = [e for e in ev if e["kind"] == "generation_finished"]
    done = ev[-1]
    assert done["status"] == "completed"
    champion_loss = -done["champion_fitness"]
    assert champion_loss < student
    assert champion_loss < -gens[0]["best"]
