"""A run directory that describes itself and works from wherever it is copied.

The champion folder says where it came from (lineage.json, a model card); its mergekit recipe runs
as documented from a copy of the run directory with the original gone; a resumed copy reads and
writes its own files, not the original's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli, events, only_run

from engine.export import MERGE_COMMAND
from engine.lineage import ancestry
from engine.profile import relocate_run_profile


def test_ancestry_follows_every_parent_back_to_generation_0():
    def ind(i, gen, parents=(), loss=1.0):
        return {
            "id": i,
            "generation": gen,
            "parents": list(parents),
            "operator": "op",
            "val_loss": loss,
            "genome": {"rank": 2},
        }

    known = {
        r["id"]: r
        for r in (
            ind("g0-1", 0),
            ind("g0-2", 0),
            ind("g1-3", 1, ["g0-1", "g0-2"]),
            ind("g1-4", 1, ["g0-2"]),
            ind("g2-5", 2, ["g1-3", "g1-4"]),  # g0-2 reached twice: listed once
        )
    }
    found, missing = ancestry({"id": "g3-6", "parents": ["g2-5", "g2-9"]}, known)
    assert [a["id"] for a in found] == ["g2-5", "g1-3", "g1-4", "g0-1", "g0-2"]
    assert missing == ["g2-9"]  # in no checkpoint any more: named, not invented
    assert found[0] == {
        "id": "g2-5",
        "generation": 2,
        "operator": "op",
        "parents": ["g1-3", "g1-4"],
        "val_loss": 1.0,
        "perplexity": None,
        "genome": {"rank": 2},
    }


def test_a_copied_run_profile_follows_the_copy(tmp_path):
    a, b = tmp_path / "clone-a", tmp_path / "clone-b"
    for clone in (a, b):
        (clone / "assets" / "student").mkdir(parents=True)
        (clone / "data").mkdir()
        (clone / "data" / "train.txt").write_text("x\n")
    (a / "data" / "val.txt").write_text("x\n")  # only the original clone has this one
    text = "\n".join(
        [
            "[run]",
            'name = "demo"',
            f'output_dir = "{a}/runs"',
            "[student]",
            f'model = "{a}/assets/student"',
            "[teacher]",
            'model = "someone/teacher"',
            "[data]",
            f'train = "{a}/data/train.txt"',
            f'validation = "{a}/data/val.txt"',
            "[distill]",
            f'cache_dir = "{a}/runs/.cache/mine"',
            "",
        ]
    )
    new, changes = relocate_run_profile(text, a / "runs" / "demo-1", b / "runs" / "demo-1")
    assert new.splitlines()[2] == f'output_dir = "{b}/runs"'
    assert new.splitlines()[4] == f'model = "{b}/assets/student"'
    assert new.splitlines()[6] == 'model = "someone/teacher"'  # a hub id stays
    assert new.splitlines()[8] == f'train = "{b}/data/train.txt"'
    assert new.splitlines()[9] == f'validation = "{a}/data/val.txt"'  # not in the copy: kept
    assert new.splitlines()[11] == f'cache_dir = "{b}/runs/.cache/mine"'
    assert len(new.splitlines()) == len(text.splitlines()) and len(changes) == 4
    assert relocate_run_profile(text, a / "runs" / "demo-1", a / "runs" / "demo-1") == (text, [])


@pytest.mark.slow
def test_champion_describes_itself_and_a_copied_run_merges_and_resumes_on_its_own(
    tiny_profile, tiny_lab, tmp_path
):
    prof = tiny_profile(
        prune__layers=0.5,
        prune__calibration_rows=16,
        distill__mode="logits",
        training__steps_per_generation=4,
    )
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    champion = run / "champion"
    finished = events(run)[-1]
    assert finished["kind"] == "run_finished" and finished["status"] == "completed"

    # --- what the champion folder says about itself ---------------------------------------------
    lineage = json.loads((champion / "lineage.json").read_text())
    states = {}
    for gen in (0, 1):
        for ind in json.loads((run / f"gen_{gen:04d}" / "state.json").read_text())["population"]:
            states[ind["id"]] = ind
    me = states[finished["champion"]]
    assert lineage["id"] == me["id"] and lineage["role"] == "champion"
    assert (lineage["generation"], lineage["parents"], lineage["operator"]) == (
        me["generation"],
        me["parents"],
        me["operator"],
    )
    assert lineage["val_loss"] == me["val_loss"] and lineage["genome"] == me["genome"]
    ancestors = {a["id"]: a for a in lineage["ancestors"]}
    todo = list(me["parents"])
    while todo:  # every ancestor is there, back to generation 0, as its checkpoint has it
        a = ancestors[todo.pop()]
        assert a["val_loss"] == states[a["id"]]["val_loss"] and a["genome"]
        assert a["operator"] == states[a["id"]]["operator"]
        todo += a["parents"]
    assert lineage["missing_ancestors"] == []
    assert (
        lineage["run"]["profile_sha256"]
        == hashlib.sha256((run / "profile.toml").read_bytes()).hexdigest()
    )
    assert lineage["run"]["seed"] == 7 and lineage["run"]["dir"] == str(run)
    assert lineage["base_model"]["in_recipe"] == "../pruned"
    assert lineage["base_model"]["pruned_from"]["model"] == str(tiny_lab["student"])
    assert lineage["teacher"]["model"] == str(tiny_lab["teacher"])
    assert lineage["teacher"]["distill"] == "logits"

    card = (champion / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    front = yaml.safe_load(front)
    assert front["base_model"] == "../pruned" and front["library_name"] == "peft"
    assert "lora" in front["tags"]
    assert f"# {me['id']}: a LoRA adapter evolved by Genesis Lab" in body
    assert f"| this adapter ({me['id']}) | {me['val_loss']:.4f} |" in body
    assert "| the teacher |" in body and "| the base model, untrained |" in body
    assert 'AutoModelForCausalLM.from_pretrained("../pruned")' in body
    assert 'PeftModel.from_pretrained(base, ".")' in body and MERGE_COMMAND in body

    # --- a copy, the original gone ----------------------------------------------------------------
    elsewhere = tmp_path / "elsewhere" / "runs"
    copy = elsewhere / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("control.sock"))
    os.rename(tmp_path / "runs", tmp_path / "runs-gone")

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    merged = subprocess.run(
        ["bash", "-c", f"cd {copy / 'champion'} && {MERGE_COMMAND}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr
    config = json.loads((copy / "champion" / "merged" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1  # the champion folded into the pruned student

    again = cli("--resume", str(copy), "--headless")
    assert again.returncode == 0, again.stdout + again.stderr
    said = "".join(again.stdout.split())
    assert "".join(f"this run directory started at {run} and is now at {copy}".split()) in said
    resumed = events(copy)
    starts = [k for k, e in enumerate(resumed) if e["kind"] == "run_started"]
    logits = [e for e in resumed[starts[-1] :] if e["kind"] == "teacher_logits"]
    assert logits and logits[-1]["path"].startswith(str(elsewhere / ".cache" / "logits"))
    assert not (tmp_path / "runs").exists()  # nothing was read or written at the old place
    recipe = (copy / "champion" / "merge.yaml").read_text()
    assert str(tmp_path) not in recipe and "../pruned+." in recipe
