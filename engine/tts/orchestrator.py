"""The TTS track's generation loop: style genomes scored by the style coliseum, selected, bred.

The same shape as ``engine.orchestrator.Orchestrator`` (asyncio, never blocks on a worker; the
same events, run directory and control-socket protocol), so the headless progress, the TUI's
leaderboard and its audio pane work unchanged. Each generation:

1. breed (from generation 1 on): the ``elitism`` best survive and are not re-scored, tournament
   winners make the rest by blending and mutating logits (``engine.tts.evolution``);
2. score every unscored genome on the style-coliseum workers: the population is shared out among
   them, each share one ``StyleEvalTask`` (one batched forward pass per sentence);
3. checkpoint the generation (``state.json``: every genome's logits and scores; no tensors);
4. render the champion's sample on a worker and write ``audio/<gen>-<id>.wav``; publish it.

Individual 0 of generation 0 is the neutral style (uniform weights): the run's baseline, also
written as ``audio/neutral.wav``; espeak-ng's target is ``audio/target.wav``. Leaderboard fields:
``fitness`` = −mean MCD, ``val_loss`` = mean MCD (dB); rank, alpha and learning rate are 0.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from typing import Any

from engine import genetics
from engine.events import (
    AudioSample,
    CheckpointWritten,
    Command,
    GenerationFinished,
    GenerationStarted,
    IndividualUpdate,
    Log,
    PauseEngine,
    RunFinished,
    StopRun,
)
from engine.runcontrol import RunControl
from engine.rundir import RunDir, atomic_write_bytes
from engine.tts.evolution import StyleIndividual, initial_logits, next_generation
from engine.workers import messages as m
from engine.workers.pool import JobError, make_pool

STATE_VERSION = 1
ROLE = "style"
K_DEFAULT = 10


def wav_bytes(samples: Any, sample_rate: int) -> bytes:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(
        buf, np.asarray(samples, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16"
    )
    return buf.getvalue()


class StyleOrchestrator(RunControl):
    track = "tts"

    def __init__(self, profile: Any, run: RunDir) -> None:
        super().__init__(profile, run)
        self.population: list[StyleIndividual] = []
        self.neutral_mcd: float | None = None
        self.pool: Any = None  # a WorkerPool or a RayPool ([devices] executor)
        self.champion: StyleIndividual | None = None
        self.k = K_DEFAULT
        # kept for the headless summary, which reads these of either orchestrator
        self.student_loss: float | None = None
        self.teacher_loss: float | None = None

    # --- events and commands --------------------------------------------------------------------

    def _update(self, ind: StyleIndividual) -> None:
        self.publish(
            IndividualUpdate(
                ind.id,
                ind.generation,
                ind.status,
                0,
                0.0,
                0.0,
                list(ind.parents),
                ind.operator,
                ind.fitness,
                ind.mcd,
                None,
                "",
                ind.genome_dict(),
            )
        )

    def _apply(self, cmd: Command) -> tuple[bool, str]:
        if isinstance(cmd, (PauseEngine, StopRun)):
            return super()._apply(cmd)
        return False, f"{cmd.kind} is not available in the TTS track (pause and stop are)"

    def fitness_metric(self) -> str:
        return "MCD+tempo" if self.profile.tts.tempo_weight else "MCD"

    # --- population -----------------------------------------------------------------------------

    def initial_population(self) -> list[StyleIndividual]:
        tts = self.profile.tts
        out = []
        for n, logits in enumerate(
            initial_logits(tts.population, self.k, tts.init_scale, self.rng)
        ):
            out.append(
                StyleIndividual(self._new_id(0), 0, logits, [], "neutral" if n == 0 else "random")
            )
        return out

    def leaderboard(self) -> list[StyleIndividual]:
        return genetics.ranked(self.population)

    # --- work -----------------------------------------------------------------------------------

    async def _evaluate(self, inds: list[StyleIndividual]) -> None:
        """Share the genomes out among the workers; each share is one task (batched passes)."""
        assert self.pool is not None
        await self._gate()
        if not inds or self.stop_requested:
            return
        for i in inds:
            i.status = "evaluating"
            self._update(i)
        n = max(1, self.pool.count(ROLE))
        shares = [inds[k::n] for k in range(n) if inds[k::n]]

        async def one(share: list[StyleIndividual]) -> None:
            items = [(i.id, list(i.logits)) for i in share]
            try:
                done: m.StyleEvalDone = await self.pool.run(  # type: ignore[union-attr]
                    ROLE, lambda job: m.StyleEvalTask(job, items)
                )
            except JobError as exc:
                for i in share:
                    i.status = "failed"
                    self._update(i)
                self.publish(Log("error", f"style evaluation failed: {exc.reason}"))
                return
            weight = self.profile.tts.tempo_weight
            for i in share:
                scores, rates = done.mcd[i.id], done.tempo.get(i.id, [])
                i.mcd = sum(scores) / len(scores)
                if rates:
                    i.tempo_error = sum(abs(r) for r in rates) / len(rates)
                    i.duration_ratio = math.exp(sum(rates) / len(rates))
                i.fitness = -(i.mcd + weight * (i.tempo_error or 0.0))
                i.status = "evaluated"
                self._update(i)

        await asyncio.gather(*(one(s) for s in shares))

    async def _render(self, ind: StyleIndividual, name: str, generation: int) -> None:
        """The genome's sample on a worker, written atomically to ``audio/<name>.wav``."""
        import numpy as np

        assert self.pool is not None
        try:
            done: m.StyleRenderDone = await self.pool.run(
                ROLE, lambda job: m.StyleRenderTask(job, ind.id, list(ind.logits))
            )
        except JobError as exc:
            self.publish(
                Log("warning", f"the sample of {ind.id} could not be rendered: {exc.reason}")
            )
            return
        samples = np.frombuffer(done.samples, dtype="<f4")
        path = self.run_dir.path / "audio" / f"{name}.wav"
        await asyncio.to_thread(atomic_write_bytes, path, wav_bytes(samples, done.sample_rate))
        self.publish(
            AudioSample(
                ind.id,
                generation,
                str(path),
                done.sample_rate,
                len(samples) / done.sample_rate,
                done.text,
            )
        )

    async def _target_reference(self) -> None:
        """espeak-ng's target-style audio of the first sentence, for comparison (once per run)."""
        from engine.tts.espeak import SAMPLE_RATE, synthesize
        from engine.tts.student import _read_config
        from engine.tts.worker import scored_sentences

        path = self.run_dir.path / "audio" / "target.wav"
        if path.exists():
            return
        tts = self.profile.tts
        config = _read_config(tts.assets_dir())
        text = scored_sentences(self.profile, config)[0]
        syn = await asyncio.to_thread(synthesize, text, tts.style())
        await asyncio.to_thread(atomic_write_bytes, path, wav_bytes(syn.samples, SAMPLE_RATE))
        self.publish(AudioSample("target", -1, str(path), SAMPLE_RATE, syn.duration_s, text))

    # --- state ----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "track": "tts",
            "generation": self.generation,
            "population": [i.to_state() for i in self.population],
            "rng": [version, list(internal), gauss],
            "next_id": self.next_id,
            "history": self.history,
            "neutral_mcd": self.neutral_mcd,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.population = [StyleIndividual.from_state(d) for d in state["population"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.next_id = state["next_id"]
        self.history = state["history"]
        self.neutral_mcd = state.get("neutral_mcd")

    def _finish_generation(self, gen: int, seconds: float) -> StyleIndividual | None:
        scored = [i for i in self.population if i.fitness is not None]
        best, mean, worst = genetics.summarize([i.fitness for i in scored])  # type: ignore[misc]
        champ = genetics.ranked(scored)[0] if scored else None
        self.history.append({"generation": gen, "best": best, "mean": mean, "worst": worst})
        path = self.run_dir.save_checkpoint(gen, self._state(), {})
        self.run_dir.write_leaderboard(
            {
                "place": pos,
                "id": i.id,
                "generation": i.generation,
                "status": i.status,
                "fitness": "" if i.fitness is None else f"{i.fitness:.6f}",
                "mcd": "" if i.mcd is None else f"{i.mcd:.4f}",
                "duration_ratio": "" if i.duration_ratio is None else f"{i.duration_ratio:.4f}",
                "parents": " ".join(i.parents),
                "operator": i.operator,
                "weights": " ".join(f"{w:.3f}" for w in i.weights),
            }
            for pos, i in enumerate(self.leaderboard(), 1)
        )
        self.publish(GenerationFinished(gen, best, mean, worst, champ.id if champ else "", seconds))
        self.publish(CheckpointWritten(gen, str(path)))
        return champ

    # --- the loop -------------------------------------------------------------------------------

    def _specs(self) -> list[tuple[str, str, str, Any, int]]:
        import os

        from engine.tts.worker import StyleColiseum

        devices = list(self.profile.tts.devices)
        cpu = sum(1 for d in devices if d == "cpu")
        threads = self.profile.devices.threads_per_worker or max(
            1, (os.cpu_count() or 1) // max(1, cpu)
        )
        return [
            (f"style-{i}", ROLE, d, StyleColiseum, threads if d == "cpu" else 1)
            for i, d in enumerate(devices)
        ]

    async def _prune_sweep(self) -> Any:
        """[tts] prune_sweep: sweep the pruning ratios in a spawned process (engine/tts/sweep.py;
        outputs in RUN/sweep/), publish the table's summary, and return the profile with the
        chosen pruned student (RUN/sweep/student) as its assets, which the style workers load.
        A resumed run whose sweep (same ratios and bound) finished reuses it."""
        import json
        import os

        from engine.tts.student import _read_config
        from engine.tts.sweep import sweep_job
        from engine.tts.worker import scored_sentences
        from engine.workers.lifeline import one_off_pool

        prof, tts = self.profile, self.profile.tts
        out = self.run_dir.path / "sweep"
        ratios = [float(r) for r in tts.prune_sweep]
        previous = None
        try:
            previous = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        if (
            previous is not None
            and [p["ratio"] for p in previous.get("points", [])] == [round(r, 4) for r in ratios]
            and previous.get("max_mcd_increase_db") == tts.max_mcd_increase_db
            and previous.get("heal_steps", 0) == tts.prune_heal_steps
            and (out / "student" / "config.json").is_file()
        ):
            self.publish(Log("info", f"reusing the pruning sweep in {out}: {previous['summary']}"))
        else:
            self.publish(
                Log(
                    "info",
                    f"pruning sweep over ratios {', '.join(f'{r:g}' for r in ratios)} "
                    f"(each pruned copy healed by {tts.prune_heal_steps} distillation steps; "
                    f"sweet spot: the fastest within +{tts.max_mcd_increase_db:g} dB MCD)",
                )
            )
            sentences = scored_sentences(prof, _read_config(tts.assets_dir()))
            style = tts.style()
            style_dict = {
                "voice": style.voice,
                "variant": style.variant,
                "pitch": style.pitch,
                "rate": style.rate,
                "pitch_range": style.pitch_range,
            }
            threads = prof.devices.threads_per_worker or (os.cpu_count() or 1)
            pool = one_off_pool(self.run_dir.path, "prune-sweep")  # dies with this engine
            try:
                res = await asyncio.get_running_loop().run_in_executor(
                    pool,
                    sweep_job,
                    str(tts.assets_dir()),
                    str(out),
                    ratios,
                    tts.max_mcd_increase_db,
                    sentences,
                    style_dict,
                    threads,
                    tts.griffin_lim_iters,
                    tts.prune_heal_steps,
                )
            finally:
                await asyncio.to_thread(pool.shutdown)
            self.publish(Log("info", f"{res['summary']}; table in {out / 'sweep.md'}"))
        new_tts = tts.model_copy(update={"assets": out / "student"})
        return prof.model_copy(update={"tts": new_tts})

    def _resume(self, generation: int, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self._restore(state)  # style genomes live in the state; there are no tensors

    async def run(self, *, resume: bool = False) -> RunFinished:
        prof = self.profile
        self._begin(prof.tts.population, resume)
        if prof.tts.prune_sweep:
            try:
                prof = self.profile = await self._prune_sweep()
            except Exception as exc:
                from engine.workers.common import describe

                self.publish(Log("error", f"the pruning sweep failed: {describe(exc)}"))
                finished = RunFinished("failed", None, None, None, describe(exc))
                self.publish(finished)
                self.run_dir.close()
                return finished
        self.pool = make_pool(
            prof,
            self.publish,
            with_teacher=False,
            log_dir=self.run_dir.path / "logs",
            specs=self._specs(),
        )
        status, reason = "completed", ""
        try:
            await self.pool.start()
            await self._target_reference()
            for gen in range(self.generation + 1, prof.evolution.generations):
                await self._gate()
                if self.stop_requested:
                    break
                t0 = time.perf_counter()
                if gen == 0:
                    self.population = self.initial_population()
                else:
                    elites, children = next_generation(
                        self.population,
                        gen,
                        prof.tts.population,
                        prof.evolution,
                        self.rng,
                        self._new_id,
                    )
                    for ind in self.population:
                        if ind not in elites:
                            ind.status = "culled"
                            self._update(ind)
                    for e in elites:
                        e.status = "elite"
                    self.population = [*elites, *children]
                self.generation = gen
                for ind in self.population:
                    self._update(ind)
                todo = [i for i in self.population if i.fitness is None]
                self.publish(GenerationStarted(gen, [i.id for i in todo]))
                await self._evaluate(todo)
                if self.stop_requested:
                    break
                if gen == 0 and self.population[0].operator == "neutral":
                    self.neutral_mcd = self.population[0].mcd
                    ratio = self.population[0].duration_ratio
                    self.publish(
                        Log(
                            "info",
                            f"neutral style: MCD {self.neutral_mcd:.3f} dB"
                            + ("" if ratio is None else f", {ratio:.2f}× the target's duration"),
                        )
                    )
                    await self._render(self.population[0], "neutral", 0)
                champ = self._finish_generation(gen, time.perf_counter() - t0)
                self._check_log()
                if champ is not None:
                    await self._render(champ, f"{gen:04d}-{champ.id}", gen)
            if self.stop_requested:
                status, reason = "stopped", "stopped by the operator"
        except asyncio.CancelledError:
            status, reason = "stopped", "interrupted"
        except Exception as exc:
            from engine.workers.common import describe

            status, reason = "failed", describe(exc)
            self.publish(Log("error", reason))
        finally:
            await self.pool.close()
        scored = [i for i in self.population if i.fitness is not None]
        self.champion = genetics.ranked(scored)[0] if scored else None
        champ = self.champion
        finished = RunFinished(
            status, champ.id if champ else None, champ.fitness if champ else None, None, reason
        )
        self.publish(finished)
        self.run_dir.close()
        return finished
