"""Operator commands against the real engine (tiny lab, real worker processes)."""

from __future__ import annotations

import csv
import json

import pytest

from engine import events as ev
from engine.orchestrator import Orchestrator
from engine.profile import load_profile
from engine.rundir import RunDir

pytestmark = pytest.mark.slow


def make(tiny_profile, **over) -> Orchestrator:
    profile = load_profile(tiny_profile(**over))
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    return Orchestrator(profile, run)


async def test_stop_takes_effect_after_the_job_in_flight(tiny_profile):
    orch = make(tiny_profile, training__steps_per_generation=10)
    seen: list[ev.Event] = []

    def on(e):
        seen.append(e)
        if (
            isinstance(e, ev.TrainFinished)
            and len([x for x in seen if isinstance(x, ev.TrainFinished)]) == 1
        ):
            orch.submit(ev.StopRun())

    orch.subscribe(on)
    done = await orch.run()
    assert done.status == "stopped"
    assert (
        len([x for x in seen if isinstance(x, ev.TrainFinished)]) == 1
    )  # queued jobs never started
    assert not orch.run_dir.checkpoints()  # no half generation was checkpointed


async def test_paused_individual_is_skipped_kept_and_promoted_one_survives(tiny_profile):
    orch = make(tiny_profile, evolution__generations=2, evolution__elitism=1)
    state = {"paused": None, "promoted": None}

    def on(e):
        if isinstance(e, ev.GenerationStarted) and e.generation == 0:
            state["paused"] = e.to_train[-1]
            orch.submit(ev.PauseIndividual(e.to_train[-1]))
        if isinstance(e, ev.GenerationFinished) and e.generation == 0:
            worst = [i for i in orch.leaderboard() if i.fitness is not None][-1]
            state["promoted"] = worst.id
            ack = orch.submit(ev.Promote(worst.id))
            assert ack.ok

    orch.subscribe(on)
    done = await orch.run()
    assert done.status == "completed"
    ids = {i.id: i for i in orch.population}
    paused = ids[state["paused"]]
    assert (
        paused.paused and not paused.trained and paused.fitness is None
    )  # never trained, kept its place
    assert state["promoted"] in ids  # survived selection though it was the worst
    assert ids[state["promoted"]].status == "promoted"
    logged = orch.run_dir.read_events()
    acks = [e for e in logged if isinstance(e, ev.CommandAck)]
    assert [a.command["kind"] for a in acks] == ["pause_individual", "promote"]
    # it kept its place to the end, and the run says so: a warning, and the leaderboard
    warnings = [e.message for e in logged if isinstance(e, ev.Log) and e.level == "warning"]
    assert (
        f"{paused.id} was paused at generation 0 and never resumed: it was not trained, scored "
        "or selected after that (it has no score)" in " ".join(warnings)
    )
    with open(orch.run_dir.path / "leaderboard.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert rows[paused.id]["status"] == "paused"
    assert [e for e in logged if isinstance(e, ev.IndividualUpdate) and e.id == paused.id][
        -1
    ].status == "paused"  # what the TUI's leaderboard shows


async def test_an_operator_export_describes_itself(tiny_profile):
    """exports/<id>/ (the operator's `e`) holds what champion/ holds: lineage.json, a model card."""
    orch = make(tiny_profile, evolution__generations=2)
    exported: dict = {}

    def on(e):
        if isinstance(e, ev.GenerationStarted) and e.generation == 1:
            target = next(i for i in orch.population if i.generation == 1 and i.tensors is not None)
            exported["id"] = target.id
            assert orch.submit(ev.ExportIndividual(target.id)).ok
        if isinstance(e, ev.Exported) and e.id == exported.get("id"):
            exported.setdefault("event", e)  # the first: the champion may be the same one

    orch.subscribe(on)
    done = await orch.run()
    assert done.status == "completed", done.reason
    out = orch.run_dir.path / "exports" / exported["id"]
    assert exported["event"].path == str(out)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["id"] == exported["id"] and lineage["role"] == "export"
    assert lineage["val_loss"] is None  # exported before it was scored, and says so
    assert lineage["parents"] and {a["generation"] for a in lineage["ancestors"]} == {0}
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card
    assert "It had not been scored when it was exported." in card


async def test_cull_and_unknown_ids_are_acknowledged(tiny_profile):
    orch = make(tiny_profile, evolution__generations=1)
    acks = {}

    def on(e):
        if isinstance(e, ev.GenerationStarted):
            acks["cull"] = orch.submit(ev.Cull(e.to_train[0]))
            acks["nobody"] = orch.submit(ev.Promote("g9-999"))

    orch.subscribe(on)
    await orch.run()
    assert acks["cull"].ok and not acks["nobody"].ok
    assert "g9-999" in acks["nobody"].detail
    assert all(i.id != acks["cull"].command["id"] for i in orch.population)
    assert len(orch.population) == 3


async def test_engine_pause_holds_work_until_resumed(tiny_profile):
    import asyncio

    orch = make(tiny_profile, evolution__generations=1, training__steps_per_generation=30)
    trained_while_paused = []
    paused = {"on": False, "once": False}

    def on(e):
        if isinstance(e, ev.TrainProgress) and not paused["once"] and e.step < e.steps:
            paused["on"] = paused["once"] = True
            orch.submit(ev.PauseEngine(True))
            asyncio.get_running_loop().call_later(
                1.5, lambda: (paused.update(on=False), orch.submit(ev.PauseEngine(False)))
            )
        elif isinstance(e, ev.TrainFinished) and paused["on"]:
            trained_while_paused.append(e.id)

    orch.subscribe(on)
    done = await orch.run()
    assert done.status == "completed"
    assert not trained_while_paused
    kinds = [e.paused for e in orch.run_dir.read_events() if isinstance(e, ev.EnginePaused)]
    assert kinds == [True, False]


async def test_an_export_runs_after_the_job_in_flight_not_after_the_queued_trainings(
    tiny_profile,
):
    # One coliseum, four trainings queued at once: an export asked for when the first finishes
    # waits for the second (then in flight), never for the third and fourth.
    orch = make(tiny_profile, evolution__generations=1)
    order: list[str] = []
    acks = []

    def on(e):
        if isinstance(e, ev.TrainFinished):
            order.append(f"trained {e.id}")
            if len(order) == 1:
                acks.append(orch.submit(ev.ExportIndividual(e.id)))
        elif isinstance(e, ev.Exported) and "exports" in e.path:
            order.append(f"exported {e.id}")

    orch.subscribe(on)
    done = await orch.run()
    assert done.status == "completed"
    assert acks[0].ok and "after the coliseum's job in flight" in acks[0].detail
    assert order.index(f"exported {order[0].split()[1]}") == 2, order
    assert (orch.run_dir.path / "exports" / order[0].split()[1]).is_dir()
