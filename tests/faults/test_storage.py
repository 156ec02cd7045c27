"""Storage faults on the real engine: a disk that fills up while a generation is checkpointed, and
checkpoints that are cut short or corrupt when a run is resumed. Nothing written before is lost."""

from __future__ import annotations

import errno
import json
import os

import pytest

from engine import events as ev
from engine.orchestrator import Orchestrator
from engine.profile import load_profile
from engine.rundir import RunDir

pytestmark = pytest.mark.slow


def board(run: RunDir) -> list[tuple[str, str, str]]:
    import csv

    with open(run.path / "leaderboard.csv") as f:
        return [(r["id"], r["val_loss"], r["operator"]) for r in csv.DictReader(f)]


async def run_to_end(profile, path=None, *, resume=False, listen=None) -> Orchestrator:
    run = (
        RunDir.open(path)
        if path
        else RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    )
    orch = Orchestrator(profile, run)
    if listen is not None:
        orch.subscribe(listen)
    orch.finished = await orch.run(resume=resume)
    return orch


class FullDisk:
    """``os`` for engine.rundir, with a disk that fills up on demand: once ``full``, every
    fsync fails with ENOSPC — where a full disk shows itself (the data sat in the page cache)."""

    def __init__(self) -> None:
        self.full = False

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


async def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_resume_completes(
    tiny_profile, monkeypatch
):
    profile = load_profile(tiny_profile(evolution__generations=3, teacher__enabled=False))
    reference = board((await run_to_end(profile)).run_dir)

    disk = FullDisk()
    monkeypatch.setattr("engine.rundir.os", disk)

    def fill_after_generation_0(e):
        if isinstance(e, ev.CheckpointWritten) and e.generation == 0:
            disk.full = True

    orch = await run_to_end(profile, listen=fill_after_generation_0)
    run = orch.run_dir
    assert orch.finished.status == "failed"
    reason = orch.finished.reason
    assert "gen_0001" in reason and "No space left on device" in reason
    assert "gen_0000 is intact" in reason and "--resume" in reason
    # what was written before the disk filled is whole
    assert run.checkpoints() == [0]
    state, tensors = run.load_checkpoint(0)
    assert state["generation"] == 0 and tensors
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")]  # no temporaries
    lines = run.events_path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no torn line
    assert json.loads(lines[-1])["kind"] == "checkpoint"  # the last event before the disk filled

    disk.full = False  # space is freed; the run resumes where it stopped
    resumed = await run_to_end(profile, run.path, resume=True)
    assert resumed.finished.status == "completed", resumed.finished.reason
    assert board(resumed.run_dir) == reference


def cut_adapter(gen_dir):
    f = sorted((gen_dir / "adapters").glob("*.safetensors"))[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f"{f}: unreadable adapter file"


def garble_state(gen_dir):
    (gen_dir / "state.json").write_text('{"generation": 2, "population": [')
    return f"{gen_dir / 'state.json'}: unreadable checkpoint state"


@pytest.mark.parametrize("damage", [cut_adapter, garble_state], ids=["adapter cut", "state"])
async def test_a_corrupt_last_checkpoint_is_named_and_resume_falls_back_to_the_one_before(
    tiny_profile, damage
):
    profile = load_profile(tiny_profile(evolution__generations=3, teacher__enabled=False))
    first = await run_to_end(profile)
    reference = board(first.run_dir)
    run = first.run_dir
    message = damage(run.checkpoint_path(2))

    seen: list[ev.Event] = []
    resumed = await run_to_end(profile, run.path, resume=True, listen=seen.append)
    assert resumed.finished.status == "completed", resumed.finished.reason
    started = [e for e in seen if isinstance(e, ev.RunStarted)][-1]
    assert started.resumed_from == 1
    [warning] = [e.message for e in seen if isinstance(e, ev.Log) and e.level == "warning"]
    assert message in warning and "Resuming from an earlier generation" in warning
    assert board(resumed.run_dir) == reference  # generation 2 again, the same as the first time
    run.load_checkpoint(2)  # and whole again


async def test_no_checkpoint_left_whole_is_a_clear_error_and_nothing_is_touched(tiny_profile):
    from engine.errors import RunDirError

    profile = load_profile(
        tiny_profile(evolution__generations=1, teacher__enabled=False, population__size=3)
    )
    run = (await run_to_end(profile)).run_dir
    cut_adapter(run.checkpoint_path(0))
    before = run.events_path.read_bytes()
    with pytest.raises(RunDirError) as err:  # the CLI prints it as one paragraph, exit code 2
        await run_to_end(profile, run.path, resume=True)
    assert "unreadable adapter file" in err.value.message
    assert "No complete generation is left to resume from" in err.value.message
    assert run.events_path.read_bytes() == before


async def test_a_corrupt_teacher_cache_is_named_and_built_again(tiny_profile):
    profile = load_profile(tiny_profile(distill__mode="logits", evolution__generations=1))
    first = await run_to_end(profile)
    [cache] = (profile.run.output_dir / ".cache" / "logits").glob("*.safetensors")
    cache.write_bytes(cache.read_bytes()[:100])  # cut short, as by a crash of another tool

    seen: list[ev.Event] = []
    again = await run_to_end(profile, listen=seen.append)
    assert again.finished.status == "completed", again.finished.reason
    [warning] = [e.message for e in seen if isinstance(e, ev.Log) and e.level == "warning"]
    assert f"The teacher cache {cache} cannot be read" in warning and "recomputed" in warning
    [built] = [e for e in seen if isinstance(e, ev.TeacherLogits)]
    assert not built.hit
    assert board(again.run_dir) == board(first.run_dir)  # the same teacher, the same run
