"""What both tracks' orchestrators share: the event stream, the operator's pause and stop, the
safe point that honours a pause, and individual ids.

``engine.orchestrator.Orchestrator`` (LoRA adapters) and ``engine.tts.orchestrator
.StyleOrchestrator`` (style genomes) derive from ``RunControl``; each adds its own commands on top
of ``_apply`` (promote, cull, export are the LLM track's).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from engine.events import Command, CommandAck, EnginePaused, Event, PauseEngine, StopRun
from engine.rundir import RunDir


class RunControl:
    track = "llm"  # RunStarted.track; the TTS track's orchestrator says "tts"

    def __init__(self, profile: Any, run: RunDir) -> None:
        self.profile = profile
        self.run_dir = run
        self.subscribers: list[Callable[[Event], None]] = []
        self.population: list[Any] = []
        self.rng = random.Random(profile.run.seed)
        self.next_id = 1
        self.generation = -1
        self.history: list[dict[str, float]] = []
        self.paused = False
        self.stop_requested = False
        self.pool: Any = None  # the WorkerPool, once the run starts
        self._resume_gate: asyncio.Event | None = None
        # Said (as warnings) right after RunStarted: what the caller changed in the profile it
        # hands over, e.g. paths re-resolved for a copied run directory (RunDir.load_profile).
        self.start_notes: list[str] = []

    # --- events and commands --------------------------------------------------------------------

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self.subscribers.append(fn)

    def publish(self, event: Event) -> None:
        self.run_dir.append_event(event)
        for fn in list(self.subscribers):
            fn(event)

    def submit(self, command: Command) -> CommandAck:
        """Apply an operator command now (call from the event loop's thread); always acknowledged."""
        ok, detail = self._apply(command)
        ack = CommandAck(command.to_dict(), ok, detail)
        self.publish(ack)
        return ack

    def _apply(self, cmd: Command) -> tuple[bool, str]:
        """Pause/resume and stop; a track's orchestrator handles its other commands first or
        after (``super()._apply``)."""
        if isinstance(cmd, PauseEngine):
            if cmd.paused == self.paused:
                return True, "already " + ("paused" if cmd.paused else "running")
            self.paused = cmd.paused
            if self.pool is not None:
                self.pool.pause(cmd.paused)
            if self._resume_gate is not None:
                (self._resume_gate.clear if cmd.paused else self._resume_gate.set)()
            self.publish(EnginePaused(cmd.paused))
            return True, "paused: workers stop at their next step" if cmd.paused else "resumed"
        if isinstance(cmd, StopRun):
            self.stop_requested = True
            if self.paused:
                self._apply(PauseEngine(False))
            return (
                True,
                "stopping after the work in flight; the last complete generation stays resumable",
            )
        return False, f"unknown command {cmd.kind}"

    def fitness_metric(self) -> str:
        """What −fitness is called (RunStarted.metric): validation loss, unless a track says."""
        return "val loss"

    async def _gate(self) -> None:
        """A safe point: waits while the engine is paused."""
        if self._resume_gate is not None:
            await self._resume_gate.wait()

    def _begin(
        self, population_size: int, resume: bool, remote_code: list[str] | None = None
    ) -> None:
        """Open the run: the pause gate; when resuming, the newest checkpoint that loads whole
        (handed to ``_resume``); then RunStarted, and a warning naming each newer checkpoint
        that was corrupt or cut short and so skipped."""
        from engine.events import Log, RunStarted

        self._resume_gate = asyncio.Event()
        self._resume_gate.set()
        resumed_from = None
        skipped: list[str] = []
        stale: list[str] = []
        if resume:
            # Workers of an engine that was killed (they die with it; an older version's did not,
            # nor would a worker of a system where neither guard held): they hold a model's memory.
            from engine.workers.lifeline import sweep

            sweep(self.run_dir.path, stale.append)
            latest = self.run_dir.latest_checkpoint(skipped.append)
            if latest is not None:
                resumed_from, state, tensors = latest
                self._resume(resumed_from, state, tensors)
        prof = self.profile
        self.publish(
            RunStarted(
                str(self.run_dir.path),
                prof.run.name,
                prof.run.seed,
                self.planned_generations,
                population_size,
                resumed_from,
                list(remote_code or []),
                self.track,
                self.fitness_metric(),
            )
        )
        for note in self.start_notes:
            self.publish(Log("warning", note))
        for reason in skipped:
            self.publish(Log("warning", f"{reason} Resuming from an earlier generation."))
        for message in stale:
            self.publish(Log("warning", message))

    def _resume(self, generation: int, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Take up a checkpoint's state (each track's orchestrator knows its own)."""
        raise NotImplementedError

    def _check_log(self) -> None:
        """At a safe point: an event log that could not be written (a full disk) stops the run."""
        if self.run_dir.log_error is not None:
            raise self.run_dir.log_error

    @property
    def planned_generations(self) -> int:
        """How many generations (a baseline: evaluation rounds) the run will count."""
        return self.profile.evolution.generations

    def _new_id(self, generation: int) -> str:
        ind_id = f"g{generation}-{self.next_id:03d}"
        self.next_id += 1
        return ind_id
