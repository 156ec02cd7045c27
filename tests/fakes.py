"""A scripted stand-in for the Orchestrator (same surface: subscribe, submit, run, paused,
population, leaderboard, find, profile, run_dir) and a fake NVML, for fast deterministic UI tests.

The script is the real engine's event sequence in miniature: workers start, the untrained
student is scored, then each generation queues, trains (``TrainProgress`` per step), evaluates,
selects and checkpoints. Commands are honoured as the engine does; an engine pause is
acknowledged at once and takes effect (``EnginePaused``) a little later, as at a safe point.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from engine.events import (
    CheckpointWritten,
    Command,
    CommandAck,
    Cull,
    EnginePaused,
    EvaluationFinished,
    Event,
    Exported,
    ExportIndividual,
    GenerationFinished,
    GenerationStarted,
    IndividualUpdate,
    Log,
    PauseEngine,
    PauseIndividual,
    Promote,
    ReferenceReport,
    RunFinished,
    RunStarted,
    StopRun,
    TrainFinished,
    TrainProgress,
    WorkerState,
)


@dataclass(frozen=True)
class FakeGenome:
    rank: int
    alpha: float
    learning_rate: float
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "dropout": self.dropout,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }


@dataclass
class FakeIndividual:
    id: str
    generation: int
    genome: FakeGenome
    parents: list[str] = field(default_factory=list)
    operator: str = "random"
    status: str = "queued"
    trained: bool = False
    fitness: float | None = None
    val_loss: float | None = None
    perplexity: float | None = None
    loss_history: list[float] = field(default_factory=list)
    paused: bool = False
    promoted: bool = False
    reason: str = ""


class FakeEngine:
    """A deterministic scripted engine.

    ``step_delay`` paces the script; ``fail`` names individuals whose training fails;
    ``kd`` adds a distillation term; ``hold_before_finish`` (an asyncio.Event set by the test)
    keeps the run open before ``RunFinished``; ``pause_latency`` delays ``EnginePaused``.
    ``track="tts"`` plays the TTS track instead: style genomes, scored by MCD + tempo and never
    trained, and only the engine's pause and stop as commands (as ``StyleOrchestrator``).
    """

    def __init__(
        self,
        *,
        generations: int = 2,
        population: int = 4,
        steps: int = 4,
        step_delay: float = 0.005,
        fail: tuple[str, ...] = (),
        kd: bool = True,
        pause_latency: float | None = 0.15,
        run_dir: str | Path = "/tmp/fake-run",
        name: str = "fake",
        hold_before_finish: asyncio.Event | None = None,
        with_teacher: bool = True,
        track: str = "llm",
    ) -> None:
        self.profile = SimpleNamespace(
            run=SimpleNamespace(name=name, seed=1),
            evolution=SimpleNamespace(generations=generations),
            population=SimpleNamespace(size=population),
            training=SimpleNamespace(steps_per_generation=steps),
        )
        self.run_dir = SimpleNamespace(path=Path(run_dir))
        self.subscribers: list[Callable[[Event], None]] = []
        self.population: list[FakeIndividual] = []
        self.paused = False
        self.stop_requested = False
        self.generation = -1
        self.steps, self.step_delay, self.fail, self.kd = steps, step_delay, set(fail), kd
        self.pause_latency = pause_latency
        self.held_pause: EnginePaused | None = None
        self.hold_before_finish = hold_before_finish
        self.track = track
        self.with_teacher = with_teacher and track != "tts"
        self.commands: list[Command] = []
        self.events: list[Event] = []
        self._gate: asyncio.Event | None = None
        self._next_id = 1
        self._culled: set[str] = set()

    # --- the Orchestrator's surface -----------------------------------------------------------

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self.subscribers.append(fn)

    def publish(self, event: Event) -> None:
        self.events.append(event)
        for fn in list(self.subscribers):
            fn(event)

    def find(self, ind_id: str) -> FakeIndividual | None:
        return next((i for i in self.population if i.id == ind_id), None)

    def leaderboard(self) -> list[FakeIndividual]:
        return sorted(
            self.population,
            key=lambda i: (-(i.fitness if i.fitness is not None else -math.inf), i.id),
        )

    def submit(self, command: Command) -> CommandAck:
        self.commands.append(command)
        ok, detail = self._apply(command)
        ack = CommandAck(command.to_dict(), ok, detail)
        self.publish(ack)
        return ack

    def _apply(self, cmd: Command) -> tuple[bool, str]:
        if isinstance(cmd, PauseEngine):
            if cmd.paused == self.paused:
                return True, "already " + ("paused" if cmd.paused else "running")
            self.paused = cmd.paused
            if self._gate is not None:
                (self._gate.clear if cmd.paused else self._gate.set)()
            if self.pause_latency is None:  # held until the test releases it, however slow
                self.held_pause = EnginePaused(cmd.paused)
            else:
                self._later(self.pause_latency, EnginePaused(cmd.paused))
            return True, "paused: workers stop at their next step" if cmd.paused else "resumed"
        if isinstance(cmd, StopRun):
            self.stop_requested = True
            if self.paused:
                self._apply(PauseEngine(False))
            return True, "stopping after the work in flight"
        if self.track == "tts":
            return False, f"{cmd.kind} is not available in the TTS track (pause and stop are)"
        ind = self.find(getattr(cmd, "id", ""))
        if ind is None:
            return False, f"no individual {getattr(cmd, 'id', '?')!r} in the current population"
        if isinstance(cmd, PauseIndividual):
            ind.paused = cmd.paused
            ind.status = (
                "paused" if cmd.paused else ("evaluated" if ind.fitness is not None else "queued")
            )
            self._update(ind)
            return True, f"{ind.id} {'paused' if cmd.paused else 'resumed'}"
        if isinstance(cmd, Promote):
            if ind.status in ("culled", "failed"):
                return False, f"{ind.id} is {ind.status}"
            if ind.paused:
                return False, f"{ind.id} is paused; resume it before promoting"
            ind.promoted, ind.status = True, "promoted"
            self._update(ind)
            return True, f"{ind.id} will survive into the next generation as an elite"
        if isinstance(cmd, Cull):
            if ind.paused:
                return False, f"{ind.id} is paused; resume it before culling"
            ind.status, ind.reason = "culled", "culled by the operator"
            self._culled.add(ind.id)
            self.population.remove(ind)
            self._update(ind)
            return True, f"{ind.id} culled; a child takes its place next generation"
        if isinstance(cmd, ExportIndividual):
            if not ind.trained:
                return False, f"{ind.id} has no trained adapter yet"
            path = str(self.run_dir.path / "exports" / ind.id)
            self._later(0.02, Exported(ind.id, path, ind.val_loss))
            return True, f"exporting {ind.id} (after the coliseum's job in flight)"
        return False, f"unknown command {cmd.kind}"

    def release_pause(self) -> None:
        """Publish the EnginePaused held back by ``pause_latency=None``."""
        event, self.held_pause = self.held_pause, None
        assert event is not None, "no pause or resume is being held"
        self.publish(event)

    def _later(self, delay: float, event: Event) -> None:
        try:
            asyncio.get_running_loop().call_later(delay, self.publish, event)
        except RuntimeError:  # no loop: publish now
            self.publish(event)

    def _update(self, ind: FakeIndividual) -> None:
        g = ind.genome
        genome = g.to_dict()
        if self.track == "tts":  # a style genome: 10 logits, their softmax the weights
            logits = [((g.seed * (k + 3)) % 7 - 3) / 4 for k in range(10)]
            exps = [math.exp(x) for x in logits]
            genome = {"kind": "style", "logits": logits, "weights": [x / sum(exps) for x in exps]}
        self.publish(
            IndividualUpdate(
                ind.id,
                ind.generation,
                ind.status,
                g.rank,
                g.alpha,
                g.learning_rate,
                list(ind.parents),
                ind.operator,
                ind.fitness,
                ind.val_loss,
                ind.perplexity,
                ind.reason,
                genome,
            )
        )

    # --- the script ---------------------------------------------------------------------------

    def _new(self, gen: int, parents: list[str], op: str) -> FakeIndividual:
        n = self._next_id
        self._next_id += 1
        rank = (2, 4, 8)[n % 3]
        genome = FakeGenome(rank, 2.0 * rank, 1e-3 * (1 + n % 4), seed=n)
        return FakeIndividual(f"g{gen}-{n:03d}", gen, genome, parents, op)

    async def _step(self) -> None:
        assert self._gate is not None
        await self._gate.wait()
        await asyncio.sleep(self.step_delay)

    async def run(self, *, resume: bool = False) -> RunFinished:
        self._gate = asyncio.Event()
        self._gate.set()
        gens, size = self.profile.evolution.generations, self.profile.population.size
        tts = self.track == "tts"
        self.publish(
            RunStarted(
                str(self.run_dir.path),
                self.profile.run.name,
                1,
                gens,
                size,
                track=self.track,
                metric="MCD+tempo" if tts else "val loss",
            )
        )
        pid = os.getpid()
        workers = [("style-0" if tts else "coliseum-0", "style" if tts else "coliseum")] + (
            [("teacher", "teacher")] if self.with_teacher else []
        )
        for name, role in workers:
            self.publish(WorkerState(name, role, "cpu", "starting", pid, "1 threads"))
        for name, role in workers:
            self.publish(WorkerState(name, role, "cpu", "ready", pid, "tiny model"))
        if not tts:
            self.publish(ReferenceReport("student", 5.2, math.exp(5.2), 0.01))
        if self.with_teacher:
            self.publish(ReferenceReport("teacher", 3.9, math.exp(3.9), 0.01))
        status, reason = "completed", ""
        try:
            for gen in range(gens):
                await self._step()
                if self.stop_requested:
                    break
                self.generation = gen
                self._breed(gen, size)
                to_train = [i for i in self.population if not i.trained and not i.paused]
                self.publish(GenerationStarted(gen, [i.id for i in to_train]))
                for ind in to_train:
                    await self._train(ind, gen)
                    if self.stop_requested:
                        break
                if self.stop_requested:
                    break
                self._evaluate(gen)
                scored = [i for i in self.population if i.fitness is not None]
                fits = [i.fitness for i in scored]
                best, mean, worst = (
                    (max(fits), sum(fits) / len(fits), min(fits)) if fits else (math.nan,) * 3
                )
                champ = self.leaderboard()[0].id if scored else ""
                self.publish(GenerationFinished(gen, best, mean, worst, champ, 0.1))
                self.publish(CheckpointWritten(gen, str(self.run_dir.path / f"gen_{gen:04d}")))
            if self.stop_requested:
                status, reason = "stopped", "stopped by the operator"
        except asyncio.CancelledError:
            status, reason = "stopped", "interrupted"
        if self.hold_before_finish is not None and status == "completed":
            await self.hold_before_finish.wait()
        scored = [i for i in self.population if i.fitness is not None]
        champ = self.leaderboard()[0] if scored and status == "completed" else None
        for name, role in workers:
            self.publish(WorkerState(name, role, "cpu", "stopped", pid))
        finished = RunFinished(
            status,
            champ.id if champ else None,
            champ.fitness if champ else None,
            str(self.run_dir.path / "champion") if champ and self.track != "tts" else None,
            reason,
        )
        self.publish(finished)
        return finished

    def _breed(self, gen: int, size: int) -> None:
        if gen == 0:
            self.population = [self._new(0, [], "random") for _ in range(size)]
        else:
            ranked = [i for i in self.leaderboard() if i.fitness is not None and not i.paused]
            keep = [i for i in ranked[:1]] + [i for i in ranked[1:] if i.promoted]
            waiting = [i for i in self.population if i.paused]
            for i in keep:
                i.status = "promoted" if i.promoted else "elite"
                i.promoted = False
            for i in self.population:
                if i not in keep and i not in waiting and i.status != "failed":
                    i.status, i.reason = "culled", "not selected"
                    self._update(i)
            children = []
            # the engine's operators at their longest: a crossover of two parents, with the
            # mutation count and (LLM track) a change of rank; or a mutated copy of one parent
            tts = self.track == "tts"
            cross, copy = ("blend 0.42 +mut10" if tts else "slerp 0.42 +mut12"), "copy +mut3"
            for k in range(max(0, size - len(keep) - len(waiting))):
                if not ranked:
                    children.append(self._new(gen, [], "random"))
                    continue
                a, b = ranked[k % len(ranked)], ranked[(k + 1) % len(ranked)]
                two = k % 2 == 0 and a is not b
                parents = [a.id, b.id] if two else [a.id]
                child = self._new(gen, parents, cross if two else copy)
                if two and not tts and child.genome.rank != a.genome.rank:
                    child.operator += f" r{a.genome.rank}→{child.genome.rank}"
                children.append(child)
            self.population = [*keep, *waiting, *children]
        for ind in self.population:
            self._update(ind)

    async def _train(self, ind: FakeIndividual, gen: int) -> None:
        await self._step()
        if ind.paused or ind.id in self._culled or self.stop_requested:
            return
        if self.track == "tts":  # style genomes are scored, never trained
            ind.trained = True
            return
        ind.status = "training"
        self._update(ind)
        base = 5.0 - 0.3 * gen - 0.05 * (int(ind.id[-3:]) % 5)
        for step in range(1, self.steps + 1):
            await self._step()
            ce = base - 0.6 * step / self.steps
            terms = {"ce": ce, "kd": 0.5 * ce} if self.kd else {"ce": ce}
            loss = ce + (terms.get("kd", 0.0))
            ind.loss_history.append(loss)
            self.publish(TrainProgress(ind.id, step, self.steps, loss, terms))
        if ind.id in self.fail:
            ind.status, ind.reason = "failed", "RuntimeError: fake failure in training"
            self._update(ind)
            self.publish(Log("error", f"{ind.id} failed in training: {ind.reason}"))
            return
        ind.trained = True
        self.publish(
            TrainFinished(ind.id, "coliseum-0", self.steps, ind.loss_history[-1], 512, 0.05)
        )
        if ind.id in self._culled:
            return
        ind.status = "paused" if ind.paused else "trained"
        self._update(ind)

    def _evaluate(self, gen: int) -> None:
        todo = [i for i in self.population if i.trained and i.fitness is None and not i.paused]
        for i in todo:
            i.status = "evaluating"
            self._update(i)
        if todo and self.track != "tts":
            self.publish(EvaluationFinished("coliseum-0", [i.id for i in todo], 1024, 0.02))
        for i in todo:
            if self.track == "tts":  # mean MCD in dB
                loss = 4.0 - 0.2 * gen + 0.03 * (int(i.id[-3:]) % 7)
            else:
                ce = i.loss_history[-1] / (1.5 if self.kd else 1.0)  # the last step's ce term
                loss = ce + 0.1 + 0.01 * (int(i.id[-3:]) % 7)
            i.val_loss, i.perplexity, i.fitness = loss, math.exp(loss), -loss
            if self.track == "tts":  # fitness −(MCD + tempo penalty); no perplexity
                i.perplexity, i.fitness = None, -(loss + 0.25)
            i.status = "promoted" if i.promoted else "evaluated"
            self._update(i)


class FakeNvml:
    """Enough of ``pynvml`` for ``engine.telemetry.NvmlSource``: ``gpus`` devices with fixed
    figures; ``fail_init`` makes start-up fail like a missing library; ``break_after`` makes every
    query fail after that many samples (a GPU lost mid-run)."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(
        self, gpus: int = 2, *, fail_init: str | None = None, break_after: int | None = None
    ) -> None:
        self.gpus, self.fail_init, self.break_after = gpus, fail_init, break_after
        self.samples = 0
        self.shut = False

    def _check(self) -> None:
        if self.break_after is not None and self.samples > self.break_after:
            raise self.NVMLError("GPU is lost")

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError(self.fail_init)

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return f"NVIDIA Fake H{100 + h}"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self.samples += 1 if h == 0 else 0  # one sample = one pass over the devices
        self._check()
        return SimpleNamespace(used=(20 + 5 * h) * 2**30, total=80 * 2**30, free=0)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._check()
        return SimpleNamespace(gpu=50 + 10 * h, memory=30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._check()
        return 250_000 + 1000 * h

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._check()
        return 700_000

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._check()
        return 60 + h
