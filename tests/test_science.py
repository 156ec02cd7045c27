"""Honest measurement in the lab itself (issue 15): a test split selection never sees, compute
accounting in report.json, continued training with the optimizer's state (elites that train on,
PBT's exploit), a population that narrows by generation, and the compute-matched baselines."""

from __future__ import annotations

import json

import pytest
from conftest import cli, events, only_run

pytestmark = pytest.mark.slow


def _report(run):
    return json.loads((run / "report.json").read_text())


def test_a_run_reports_test_loss_and_its_compute(tiny_profile, tmp_path):
    prof = tiny_profile(data__max_val_examples=24)  # the other 24 validation rows are the test
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    rep = _report(run)
    assert rep["status"] == "completed" and rep["kind"] == "evolution"
    champ = rep["champion"]
    assert champ["test_loss"] is not None and champ["test_loss"] != champ["val_loss"]
    assert rep["references"]["student"]["test_loss"] is not None
    assert rep["references"]["teacher"]["test_loss"] is not None
    # 4 new individuals in generation 0, 3 children in generation 1 (elitism 1), 3 steps each
    assert rep["compute"]["train_steps"] == rep["planned_train_steps"] == 3 * (4 + 3)
    assert sum(g["train_steps"] for g in rep["compute_per_generation"]) == 21
    assert rep["compute"]["train_tokens"] > 0 and rep["compute"]["eval_tokens"] > 0
    assert champ["lineage"][0]["id"] == champ["id"]
    test = [e for e in events(run) if e["kind"] == "test_report"]
    assert len(test) == 1 and test[0]["rows"] == 24
    assert "test loss" in r.stdout and "report.json" in r.stdout


def test_no_test_split_is_said_not_invented(tiny_profile, tmp_path):
    r = cli("--profile", str(tiny_profile()), "--headless")  # every validation row is scored
    assert r.returncode == 0, r.stdout + r.stderr
    rep = _report(only_run(tmp_path / "runs"))
    assert rep["champion"]["test_loss"] is None
    assert "no test split" in r.stdout


def test_elites_train_on_with_their_optimizer_and_the_population_narrows(tiny_profile, tmp_path):
    prof = tiny_profile(
        evolution__generations=3,
        evolution__sizes=[4, 2, 2],
        evolution__elites_train=True,
        evolution__crossover_rate=0.0,
        evolution__inherit_optimizer=True,
        evolution__lr_perturbation=0.25,
    )
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    rep = _report(run)
    assert rep["compute"]["train_steps"] == rep["planned_train_steps"] == 3 * (4 + 2 + 2)
    state = json.loads((run / "gen_0002" / "state.json").read_text())
    assert len(state["population"]) == 2
    # the elite of generation 0 is still there, trained in all three generations
    survivor = [i for i in state["population"] if i["generation"] == 0]
    assert survivor and survivor[0]["steps_trained"] == 9 and survivor[0]["stretches"] == 3
    assert (run / "gen_0002" / "optimizers" / f"{survivor[0]['id']}.safetensors").is_file()
    # a copy continues its parent's lineage of steps
    child = [i for i in state["population"] if i["generation"] > 0]
    assert child and child[0]["steps_trained"] > 3


def test_optimizer_state_round_trips_and_refuses_another_shape():
    import torch

    from engine.workers.optim import pack, unpack

    def model(rank):
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, rank, bias=False)
        return [("m.lora_A.ind_a.weight", lin.weight)]

    named = model(2)
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-2)
    named[0][1].sum().backward()
    opt.step()
    blob = pack(opt, named, "ind_a")
    other = model(2)
    opt2 = torch.optim.AdamW([p for _, p in other], lr=5e-3)
    assert unpack(blob, opt2, [("m.lora_A.ind_b.weight", other[0][1])], "ind_b")
    st = opt2.state[other[0][1]]
    assert torch.equal(st["exp_avg"], opt.state[named[0][1]]["exp_avg"])
    assert opt2.param_groups[0]["lr"] == 5e-3  # a perturbed copy keeps its own learning rate
    wrong = model(3)
    opt3 = torch.optim.AdamW([p for _, p in wrong], lr=1e-2)
    assert not unpack(blob, opt3, [("m.lora_A.ind_c.weight", wrong[0][1])], "ind_c")
    assert not opt3.state
