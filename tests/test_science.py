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


def test_elites_train_on_in_continuations_and_the_population_narrows(tiny_profile, tmp_path):
    prof = tiny_profile(
        evolution__generations=3,
        evolution__sizes=[4, 2, 2],
        evolution__continue_elites=True,
        evolution__crossover_rate=0.0,
        evolution__inherit_optimizer=True,
        evolution__lr_perturbation=0.25,
    )
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    rep = _report(run)
    # 4 in generation 0, then 1 elite + 1 continuation a generation: 3 steps each
    assert rep["compute"]["train_steps"] == rep["planned_train_steps"] == 3 * (4 + 1 + 1)
    state = json.loads((run / "gen_0002" / "state.json").read_text())
    assert len(state["population"]) == 2
    conts = [i for i in state["population"] if i["operator"].startswith("continue")]
    assert conts, [i["operator"] for i in state["population"]]
    c = conts[0]
    parent = next(
        e for e in events(run) if e["kind"] == "individual" and e["id"] == c["parents"][0]
    )
    assert c["steps_trained"] >= 6 and c["stretches"] >= 2  # its parent's steps, then its own
    assert c["genome"]["learning_rate"] != parent["genome"]["learning_rate"]  # explored
    assert (run / "gen_0002" / "optimizers" / f"{c['id']}.safetensors").is_file()


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


def test_the_finetune_baseline_matches_the_runs_compute_and_is_recorded(tiny_profile, tmp_path):
    prof = tiny_profile(data__max_val_examples=24)
    assert cli("--profile", str(prof), "--headless").returncode == 0
    run = only_run(tmp_path / "runs")
    r = cli("baseline", str(run), "--kind", "finetune", "--eval-every", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    base = only_run(run / "baselines")
    rep = _report(base)
    assert rep["kind"] == "baseline-finetune"
    assert rep["compute"]["train_steps"] == _report(run)["compute"]["train_steps"] == 21
    infos = sorted((base / "epochs").glob("epoch_*/epoch_info.json"))
    assert len(infos) == 5  # 21 steps scored every 5: 5, 10, 15, 20, 21
    steps = [json.loads(p.read_text())["step"] for p in infos]
    assert steps == [5, 10, 15, 20, 21]
    best = min((json.loads(p.read_text()) for p in infos), key=lambda i: i["val_loss"])
    assert rep["champion"]["val_loss"] == pytest.approx(best["val_loss"])
    assert rep["champion"]["test_loss"] is not None
    assert (base / "champion" / "adapter_model.safetensors").is_file()
    recorded = _report(run)["baselines"]["finetune-lr1x"]
    assert recorded["test_loss"] == rep["champion"]["test_loss"]
    assert "against its baselines" in r.stdout
    from genesis_tui.link import baselines_note  # what genesis-tui open shows in the Log

    assert "finetune-lr1x" in baselines_note(run) and "champion" in baselines_note(run)
    # a baseline's directory is not an evolution to resume
    again = cli("--resume", str(base), "--headless")
    assert again.returncode == 2 and "baseline" in again.stderr


def test_the_finetune_baseline_takes_the_kd_weight_a_champion_evolved(tiny_profile, tmp_path):
    kd = tiny_profile(distill__mode="logits", distill__top_k=8)
    r = cli("baseline", "--profile", str(kd), "--kd-alpha", "0", "--steps", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    base = only_run(tmp_path / "runs")
    assert base.name.startswith("finetune-lr1x-kd0-")
    assert _report(base)["champion"]["genome"]["kd_alpha"] == 0.0
    # Without logit distillation there is no such weight; a random search has no single one
    for prof, kind in ((tiny_profile(), "finetune"), (kd, "random")):
        r = cli("baseline", "--profile", str(prof), "--kind", kind, "--kd-alpha", "0")
        assert r.returncode == 2 and "--kd-alpha" in r.stderr and "Traceback" not in r.stderr


def test_the_random_baseline_shares_the_budget(tiny_profile, tmp_path):
    prof = tiny_profile()
    r = cli("baseline", "--profile", str(prof), "--kind", "random", "--steps", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = _report(only_run(tmp_path / "runs"))
    assert rep["kind"] == "baseline-random" and rep["compute"]["train_steps"] == 10
    assert len(rep["compute_per_generation"]) == 1


def test_a_profile_whose_test_split_is_its_validation_split_is_refused(tiny_profile, tiny_lab):
    prof = tiny_profile(data__test=str(tiny_lab["data"] / "val.txt"))
    r = cli("--profile", str(prof), "--check")
    assert r.returncode == 2 and "[data] test" in r.stderr and "Traceback" not in r.stderr


def test_sizes_must_give_one_entry_per_generation(tiny_profile):
    r = cli("--profile", str(tiny_profile(evolution__sizes=[4, 2, 2])), "--check")
    assert r.returncode == 2 and "sizes" in r.stderr and "Traceback" not in r.stderr


def test_a_greedy_soup_joins_only_what_helps_and_is_exact(tiny_profile, tmp_path):
    prof = tiny_profile(
        evolution__soup=3, evolution__crossover_rate=0.0, training__steps_per_generation=10
    )
    r = cli("--profile", str(prof), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path / "runs")
    ev = events(run)
    trials = {e["id"]: e for e in ev if e["kind"] == "individual" and e["id"].startswith("soup-")}
    assert trials, "no soup was tried"
    final = [e for e in trials.values() if e["status"] != "culled"]
    scored = {
        e["id"]: e["val_loss"]
        for e in ev
        if e["kind"] == "individual" and e["val_loss"] is not None and e["id"] in trials
    }
    best_other = min(
        e["val_loss"]
        for e in ev
        if e["kind"] == "individual"
        and e["val_loss"] is not None
        and not e["id"].startswith("soup")
    )
    if final:  # a soup that stays beat the best individual, and is the champion
        soup = final[-1]
        assert scored[soup["id"]] < best_other
        assert _report(run)["champion"]["id"] == soup["id"]
        parents = [e for e in ev if e["kind"] == "individual" and e["id"] in soup["parents"]]
        ranks = {e["id"]: e["genome"]["rank"] for e in parents}
        assert soup["genome"]["rank"] == sum(ranks.values())
    else:
        assert "no average of the best 3" in r.stdout
        assert all(v >= best_other for v in scored.values())


def _breeder(tiny_profile, **over):
    """An orchestrator of a tiny profile whose generation 0 is scored by hand (no workers)."""
    import torch

    from engine.orchestrator import Orchestrator
    from engine.profile import load_profile
    from engine.rundir import RunDir

    profile = load_profile(
        tiny_profile(
            evolution__generations=4,
            evolution__sizes=[4, 2, 2, 2],
            evolution__elitism=1,
            evolution__continue_elites=True,
            evolution__crossover_rate=0.0,
            evolution__rank_mutation_rate=0.0,
            **over,
        )
    )
    orch = Orchestrator(profile, RunDir.create(profile.run.output_dir, "t", profile.to_toml()))
    orch.population = orch.initial_population()
    for k, ind in enumerate(orch.population):
        r = ind.genome.rank
        ind.tensors = {"m.lora_A.weight": torch.ones(r, 8), "m.lora_B.weight": torch.ones(8, r)}
        ind.fitness, ind.trained = -3.0 - k, True
    return orch


def _score(orch, gen, fitness_of_new):
    orch.population = orch.next_population(gen)
    for ind in orch.population:
        if ind.fitness is None:
            ind.fitness, ind.trained = fitness_of_new, True
    return orch.population


def test_a_lineage_that_stops_improving_gives_its_place_to_a_bred_child(tiny_profile):
    orch = _breeder(tiny_profile, evolution__patience=2)
    elite = orch.population[0]
    ops = []
    for gen in (1, 2, 3):  # every continuation scores worse than the elite
        pop = _score(orch, gen, -9.0)
        assert pop[0] is elite
        ops.append(pop[1].operator)
    # Two lost continuations: the third place goes to a child bred from the population
    assert ops[0].startswith("continue") and ops[1].startswith("continue"), ops
    assert ops[2].startswith("copy"), ops
    assert elite.stale == 2


def test_a_lineage_that_improves_keeps_training_and_patience_0_never_stops(tiny_profile):
    orch = _breeder(tiny_profile, evolution__patience=1)
    for gen in (1, 2, 3):  # each continuation beats its parent: it becomes the elite
        pop = _score(orch, gen, -2.0 + gen)
        assert pop[1].operator.startswith("continue") and pop[1].parents == [pop[0].id]
    orch = _breeder(tiny_profile)
    for gen in (1, 2, 3):
        assert _score(orch, gen, -9.0)[1].operator.startswith("continue")


def test_continuations_explore_the_kd_weight_gene(tiny_profile):
    orch = _breeder(
        tiny_profile,
        distill__mode="logits",
        population__kd_alphas=[0.0, 0.5],
        evolution__mutation_rate=1.0,
    )
    before = orch.population[0].genome.kd_alpha
    child = _score(orch, 1, -9.0)[1]
    assert child.operator.startswith("continue") and " kd " in child.operator
    assert child.genome.kd_alpha == ({0.0, 0.5} - {before}).pop()


def test_weight_decay_is_a_gene_random_genomes_draw_and_continuations_explore(tiny_profile):
    orch = _breeder(
        tiny_profile, population__weight_decays=[0.0, 0.5], evolution__mutation_rate=1.0
    )
    assert {i.genome.weight_decay for i in orch.population} <= {0.0, 0.5}
    before = orch.population[0].genome.weight_decay
    child = _score(orch, 1, -9.0)[1]
    assert " wd " in child.operator and child.genome.weight_decay == ({0.0, 0.5} - {before}).pop()
    # without the gene, genomes leave it to [training] weight_decay
    assert all(i.genome.weight_decay is None for i in _breeder(tiny_profile).population)
