"""Events round-trip through JSON; the run directory writes atomically and survives corruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import events as ev
from engine.errors import RunDirError
from engine.rundir import RunDir, atomic_write_text


def test_events_and_commands_round_trip():
    samples = [
        ev.RunStarted("/r", "demo", 1, 4, 8),
        ev.IndividualUpdate(
            "g0-001", 0, "evaluated", 8, 16.0, 1e-3, ["a", "b"], "slerp", -2.0, 2.0, 7.39
        ),
        ev.TrainProgress("g0-001", 3, 10, 2.5, {"ce": 2.5}),
        ev.GenerationFinished(1, -2.0, -2.5, -3.0, "g1-009", 12.0),
        ev.CommandAck({"kind": "promote", "id": "x"}, True, "ok"),
    ]
    for e in samples:
        back = ev.event_from_dict(json.loads(e.to_json()))
        assert back == e
    for c in [
        ev.PauseEngine(True),
        ev.Promote("x"),
        ev.Cull("y"),
        ev.PauseIndividual("z", False),
        ev.StopRun(),
    ]:
        assert ev.command_from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        ev.event_from_dict({"kind": "nope"})


def test_event_log_is_append_only_and_skips_a_torn_last_line(tmp_path):
    run = RunDir.create(tmp_path, "t", "[run]\n")
    run.append_event(ev.Log("info", "one"))
    run.append_event(ev.Log("info", "two"))
    run.close()
    with open(run.events_path, "a") as f:
        f.write('{"kind":"log","level":"in')  # a crash in the middle of a write
    assert [e.message for e in run.read_events()] == ["one", "two"]


def test_checkpoint_is_whole_or_absent_and_corruption_falls_back(tmp_path):
    import torch
    from safetensors.torch import save

    run = RunDir.create(tmp_path, "t", "[run]\n")
    blob = save({"w": torch.ones(2, 2)})
    state = {"generation": 0, "population": [{"id": "a", "trained": True}]}
    run.save_checkpoint(0, state, {"a": blob})
    run.save_checkpoint(1, {**state, "generation": 1}, {"a": blob})
    assert run.checkpoints() == [0, 1]
    gen, st, tensors = run.latest_checkpoint()
    assert gen == 1 and torch.equal(tensors["a"]["w"], torch.ones(2, 2))
    # corrupt generation 1's adapter: resume falls back to generation 0
    (run.checkpoint_path(1) / "adapters" / "a.safetensors").write_bytes(b"garbage")
    gen, st, _ = run.latest_checkpoint()
    assert gen == 0
    with pytest.raises(RunDirError, match="a.safetensors"):
        run.load_checkpoint(1)
    # no leftovers from temporary directories
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")]


def test_failed_checkpoint_write_leaves_previous_intact(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save

    run = RunDir.create(tmp_path, "t", "[run]\n")
    blob = save({"w": torch.ones(1)})
    run.save_checkpoint(0, {"generation": 0, "population": []}, {"a": blob})

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("engine.rundir._fsync_tree", disk_full)
    with pytest.raises(RunDirError, match="No space left on device.*gen_0000 is intact"):
        run.save_checkpoint(0, {"generation": 0, "population": [], "x": 1}, {"a": blob})
    st, _ = run.load_checkpoint(0)
    assert "x" not in st
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_replaces_whole(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_open_rejects_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="no profile.toml"):
        RunDir.open(tmp_path)
    with pytest.raises(RunDirError, match="no such run directory"):
        RunDir.open(tmp_path / "missing")


def test_engine_never_imports_textual():
    code = (
        "import sys, engine, engine.orchestrator, engine.workers.pool, engine.workers.coliseum, "
        "engine.workers.teacher, engine.rundir, engine.models, engine.profile, engine.data\n"
        "bad = [m for m in sys.modules if m == 'textual' or m.startswith('textual.') or m.startswith('genesis_tui')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
