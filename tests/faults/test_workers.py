"""Worker faults on the real engine (tiny lab, real spawned worker processes): a worker killed
in the middle of a job, and out-of-memory errors in training and evaluation."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import events as ev
from engine.orchestrator import Orchestrator
from engine.profile import load_profile
from engine.rundir import RunDir
from engine.workers.pool import WorkerPool

pytestmark = pytest.mark.slow


def make(tiny_profile, **over) -> Orchestrator:
    profile = load_profile(tiny_profile(**over))
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    return Orchestrator(profile, run)


def logs(events, level=None) -> list[str]:
    return [
        e.message for e in events if isinstance(e, ev.Log) and (level is None or e.level == level)
    ]


@pytest.fixture
def oom(monkeypatch):
    """Coliseums whose forward passes run out of memory past the given limits (injected.py)."""
    import injected

    def limit(spec: str) -> None:
        monkeypatch.setattr("engine.workers.coliseum.Coliseum", injected.OomColiseum)
        monkeypatch.setenv("GENESIS_TEST_OOM", spec)

    return limit


def worker_pid(orch: Orchestrator, name: str) -> int:
    return next(w.process.pid for w in orch.pool.workers if w.name == name)


def assert_whole(orch: Orchestrator, done: ev.RunFinished) -> None:
    """The run completed: every generation checkpointed, every individual scored."""
    assert done.status == "completed", done.reason
    gens = orch.profile.evolution.generations
    assert orch.run_dir.checkpoints() == list(range(gens))
    assert all(i.fitness is not None for i in orch.population)


async def test_a_coliseum_worker_killed_mid_training_is_restarted_and_the_individual_retrained(
    tiny_profile,
):
    orch = make(tiny_profile, training__steps_per_generation=40, teacher__enabled=False)
    seen: list[ev.Event] = []
    killed: dict = {}

    def on(e):
        seen.append(e)
        if isinstance(e, ev.TrainProgress) and not killed:  # in the middle of training
            killed.update(id=e.id, at=time.monotonic(), pid=worker_pid(orch, "coliseum-0"))
            os.kill(killed["pid"], signal.SIGKILL)
        if (
            isinstance(e, ev.WorkerState)
            and e.state == "dead"
            and killed
            and "noticed" not in killed
        ):
            killed["noticed"] = time.monotonic() - killed["at"]

    orch.subscribe(on)
    done = await orch.run()
    assert_whole(orch, done)
    assert killed["noticed"] < 3.0  # the monitor looks twice a second
    [warning] = [m for m in logs(seen, "warning") if "died" in m]
    assert (
        f"worker coliseum-0 (pid {killed['pid']}, cpu) died while training {killed['id']}"
        in warning
    )
    assert "killed by SIGKILL" in warning and "restarting it (restart 1 of 3)" in warning
    assert "its job runs again" in warning
    ready = [e for e in seen if isinstance(e, ev.WorkerState) and e.state == "ready"]
    assert len(ready) == 2 and ready[0].pid != ready[1].pid  # a new process
    # the interrupted individual was trained again, in full, by the new worker
    finished = [e for e in seen if isinstance(e, ev.TrainFinished) and e.id == killed["id"]]
    assert len(finished) == 1 and finished[0].steps == 40
    # and the event log on disk tells the same story
    on_disk = orch.run_dir.read_events()
    assert warning in logs(on_disk)


async def test_a_teacher_killed_while_it_scores_is_restarted_and_the_run_completes(tiny_profile):
    # Online distillation: the teacher scores every individual's rows, one job each.
    orch = make(
        tiny_profile,
        distill__mode="logits",
        distill__cache=False,
        training__steps_per_generation=10,
    )
    seen: list[ev.Event] = []
    killed: dict = {}

    def on(e):
        seen.append(e)
        if (
            isinstance(e, ev.WorkerState)
            and e.worker == "teacher"
            and e.state == "busy"
            and orch.generation == 0
            and not killed
        ):
            killed["pid"] = e.pid
            os.kill(e.pid, signal.SIGKILL)

    orch.subscribe(on)
    done = await orch.run()
    assert_whole(orch, done)
    [warning] = [m for m in logs(seen) if "died" in m]
    assert f"worker teacher (pid {killed['pid']}, cpu) died while running teacher logits" in warning
    assert "restarting it" in warning
    # every individual of every generation was taught: one teacher answer per training
    trained = [e.id for e in seen if isinstance(e, ev.TrainFinished)]
    taught = [e.id for e in seen if isinstance(e, ev.TeacherLogits)]
    assert sorted(trained) == sorted(taught)


async def test_out_of_memory_in_training_backs_off_and_the_run_goes_on(tiny_profile, oom):
    oom("train_rows=4")
    orch = make(
        tiny_profile,
        data__batch_size=8,
        data__eval_rows_per_pass=8,
        teacher__enabled=False,
    )
    seen: list[ev.Event] = []
    orch.subscribe(seen.append)
    done = await orch.run()
    assert_whole(orch, done)
    retries = [m for m in logs(seen, "warning") if "ran out of memory training" in m]
    trained = [e.id for e in seen if isinstance(e, ev.TrainFinished)]
    assert len(retries) == len(trained) > 0  # each one once: 8 rows failed, 4 rows fit
    assert "CUDA out of memory" in retries[0]
    assert "retrying with 4 rows per forward pass (2 pieces per micro-batch of 8" in retries[0]


async def test_out_of_memory_without_retries_marks_the_individual_failed_with_the_reason(
    tiny_profile, oom
):
    oom("train_rows=4,min_rank=4")  # rank 4 does not fit
    orch = make(
        tiny_profile,
        data__batch_size=8,
        data__eval_rows_per_pass=8,
        training__oom_retries=0,
        teacher__enabled=False,
        population__size=6,
        evolution__generations=1,
    )
    seen: list[ev.Event] = []
    orch.subscribe(seen.append)
    done = await orch.run()
    assert done.status == "completed", done.reason
    final = {e.id: e for e in seen if isinstance(e, ev.IndividualUpdate)}
    failed = [u for u in final.values() if u.status == "failed"]
    scored = [u for u in final.values() if u.status == "evaluated"]
    assert failed and scored, "the seed should draw both ranks"
    assert all(u.rank == 4 for u in failed) and all(u.rank == 2 for u in scored)
    assert all(u.reason.startswith("OutOfMemoryError: CUDA out of memory") for u in failed)
    assert any("failed in training: OutOfMemoryError" in m for m in logs(seen, "error"))


async def test_out_of_memory_in_evaluation_backs_off_to_fewer_rows_per_pass(tiny_profile, oom):
    oom("eval_rows=8")
    orch = make(
        tiny_profile,
        data__eval_batch_size=8,
        data__eval_rows_per_pass=32,
        training__oom_retries=3,
        teacher__enabled=False,
    )
    seen: list[ev.Event] = []
    orch.subscribe(seen.append)
    done = await orch.run()
    assert_whole(orch, done)
    retries = [m for m in logs(seen, "warning") if "evaluation of" in m]
    assert any("retrying with 16 rows per forward pass" in m for m in retries)
    assert any("retrying with 8 rows per forward pass" in m for m in retries)


# --- the pool alone, with real processes -------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    job: int


@dataclass(frozen=True)
class Pong:
    job: int
    pid: int


def _wait_for_file(path: Path, bound: float = 600.0) -> None:
    deadline = time.monotonic() + bound
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


class GatedWorker:
    """A worker process that the test paces (a spawned worker imports this module by name): the
    first process loads at once, a restarted one only once the file ``gate`` exists (it "loads
    its model" as long as the test wants); a job is answered once ``release`` exists."""

    def __init__(self, worker: str, device: str, profile: str, results, go) -> None:
        self.dir = Path(profile)
        if (self.dir / "loaded-once").exists():
            _wait_for_file(self.dir / "gate")
        (self.dir / "loaded-once").touch()
        self.ready_detail = "gated"

    def handle(self, task: Ping) -> Pong:
        _wait_for_file(self.dir / "release")
        return Pong(task.job, os.getpid())


async def until(condition, what: str, bound: float = 180.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"waited {bound:g} s for {what}"
        await asyncio.sleep(0.05)


async def test_a_worker_killed_while_idle_gets_no_job_until_it_is_ready_again_and_loses_none(
    tmp_path,
):
    # The chaos benchmark's hang: the restarted process of a coliseum killed while idle was sent
    # a job while it still loaded, and a second on its Ready; the pool remembered only the second,
    # and when the worker was killed again the first job's future never ended.
    seen: list[ev.Event] = []
    pool = WorkerPool(
        str(tmp_path),
        seen.append,
        with_teacher=False,
        log_dir=tmp_path / "logs",
        specs=[("coliseum-0", "coliseum", "cpu", GatedWorker, 1)],
    )

    def states(state: str, pid: int) -> list[ev.WorkerState]:
        return [
            e for e in seen if isinstance(e, ev.WorkerState) and (e.state, e.pid) == (state, pid)
        ]

    jobs: list[asyncio.Task] = []
    try:
        await asyncio.wait_for(pool.start(), 300)
        w = pool.workers[0]
        first = w.process.pid
        os.kill(first, signal.SIGKILL)  # idle: no job in flight
        await until(lambda: w.process.pid != first, "the monitor to restart the killed worker")
        second = w.process.pid  # loading until the gate opens
        jobs = [asyncio.create_task(pool.run("coliseum", Ping)) for _ in range(2)]
        idle = pool._idle["coliseum"]
        await until(
            lambda: idle.waiting() + len(states("busy", second)) == 2, "both jobs to be placed"
        )
        assert not states("busy", second), "a job was sent to a worker still loading its model"
        (tmp_path / "gate").touch()
        await until(lambda: states("busy", second), "the restarted worker to take a job")
        os.kill(second, signal.SIGKILL)  # in the middle of that job (it waits for "release")
        await until(lambda: w.process.pid != second, "the second restart")
        (tmp_path / "release").touch()
        done = await asyncio.wait_for(asyncio.gather(*jobs), 300)  # none is lost
    finally:
        (tmp_path / "gate").touch()
        (tmp_path / "release").touch()
        for job in jobs:
            job.cancel()
        await pool.close()
    third = w.process.pid
    assert sorted(d.job for d in done) == sorted({d.job for d in done}) and len(done) == 2
    assert {d.pid for d in done} == {third}  # the job lost with the second process ran again
    assert w.restarts == 2
    # No worker took a job before its Ready, nor a second one before it was idle again.
    loaded: set[int] = set()
    holding = False
    for e in seen:
        if not isinstance(e, ev.WorkerState):
            continue
        if e.state == "ready":
            loaded.add(e.pid)
        elif e.state == "busy":
            assert e.pid in loaded, f"pid {e.pid} was given a job before its Ready"
            assert not holding, f"pid {e.pid} was given a second job"
            holding = True
        elif e.state in ("idle", "dead"):
            holding = False
    died = [m for m in logs(seen, "warning") if "died" in m]
    assert len(died) == 2
    assert f"(pid {first}, cpu) died while idle: killed by SIGKILL" in died[0]
    assert f"(pid {second}, cpu) died while running ping: killed by SIGKILL" in died[1]
    assert "its job runs again" in died[1]
