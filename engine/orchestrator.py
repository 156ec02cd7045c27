"""The generation loop: the one place where a run's population is trained, scored, selected and bred.

Asyncio; never blocks on a worker. Each generation:

1. breed (from generation 1 on): elites and promoted individuals survive unchanged, paused ones
   keep their place, the rest are children of tournament winners by crossover and mutation;
2. train every untrained individual on the coliseum workers (concurrently, one per worker);
3. evaluate every unscored individual in mixed-adapter batches (elites are not re-evaluated);
4. checkpoint the generation whole, then the leaderboard.

Operator commands (pause, promote, cull, export, stop) are applied between awaits, acknowledged
and written to the event log; a resumed run replays those that came after its checkpoint.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from engine import genetics
from engine.events import (
    CheckpointWritten,
    Command,
    CommandAck,
    Cull,
    EvaluationFinished,
    Exported,
    ExportIndividual,
    GenerationFinished,
    GenerationStarted,
    IndividualUpdate,
    Log,
    PauseEngine,
    PauseIndividual,
    Promote,
    PruneReport,
    ReferenceReport,
    RunFinished,
    StopRun,
    TeacherAnswers,
    TeacherLogits,
    TrainFinished,
    command_from_dict,
)
from engine.individual import Individual, LoraGenome, LoraTensors
from engine.runcontrol import RunControl
from engine.rundir import RunDir
from engine.workers import messages as m
from engine.workers.pool import JobCancelled, JobError, make_pool

STATE_VERSION = 1


def _to_bytes(tensors: LoraTensors) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _from_bytes(blob: bytes) -> LoraTensors:
    from safetensors.torch import load

    return load(blob)


def _failure(exc: JobError) -> str:
    """A failed job's reason, saying "out of memory" where the error's own words do not."""
    named = "out of memory" in exc.reason.lower()  # torch's CUDA message says so itself
    return f"out of memory: {exc.reason}" if exc.kind == "oom" and not named else exc.reason


class Orchestrator(RunControl):
    def __init__(self, profile: Any, run: RunDir, *, merge_champion: bool = False) -> None:
        super().__init__(profile, run)
        self.merge_champion = merge_champion
        self.population: list[Individual] = []
        self.teacher_loss: float | None = None
        self.student_loss: float | None = None
        self.pool: Any = None  # a WorkerPool or a RayPool (make_pool)
        self._culled: set[str] = set()
        self.champion: Individual | None = None
        self.kd_path: str | None = None  # the teacher's logit cache (distillation, cache mode)
        self.kd_shared: Any = None  # … or, under Ray, its bytes in the object store
        self.answers_path: str | None = None  # the teacher's answers (sequence distillation)
        self.answers_shared: Any = None  # … and, under Ray, their bytes in the object store

    # --- events and commands --------------------------------------------------------------------

    def _update(self, ind: Individual) -> None:
        g = ind.genome
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
                g.to_dict(),
            )
        )

    def find(self, ind_id: str) -> Individual | None:
        return next((i for i in self.population if i.id == ind_id), None)

    def _apply(self, cmd: Command) -> tuple[bool, str]:
        if isinstance(cmd, (PauseEngine, StopRun)):
            return super()._apply(cmd)
        ind = self.find(getattr(cmd, "id", ""))
        if ind is None:
            return False, f"no individual {getattr(cmd, 'id', '?')!r} in the current population"
        if isinstance(cmd, PauseIndividual):
            ind.paused = cmd.paused
            if cmd.paused:
                ind.status = "paused"
            else:
                ind.status = (
                    "evaluated"
                    if ind.fitness is not None
                    else ("queued" if not ind.trained else "trained")
                )
            self._update(ind)
            return True, f"{ind.id} {'paused' if cmd.paused else 'resumed'}"
        if isinstance(cmd, Promote):
            if ind.status in ("culled", "failed"):
                return False, f"{ind.id} is {ind.status}"
            if ind.paused:  # a paused individual is outside selection: promotion would not apply
                return False, f"{ind.id} is paused; resume it before promoting"
            ind.promoted = True
            ind.status = "promoted"
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
            if ind.tensors is None:
                return False, f"{ind.id} has no trained adapter yet"
            asyncio.get_running_loop().create_task(
                self._export(ind, self.run_dir.path / "exports" / ind.id)
            )
            return True, f"exporting {ind.id} (after the coliseum's job in flight)"
        return False, f"unknown command {cmd.kind}"

    # --- population -----------------------------------------------------------------------------

    def _alpha(self, rank: int) -> float:
        pop = self.profile.population
        return pop.alpha_ratio * rank if pop.alpha_rule == "ratio" else pop.alpha

    def _lr_bounds(self) -> tuple[float, float]:
        lr, spread = (
            self.profile.training.learning_rate,
            self.profile.population.learning_rate_spread,
        )
        return lr / spread, lr * spread

    def initial_population(self) -> list[Individual]:
        pop = self.profile.population
        lo, hi = self._lr_bounds()
        out = []
        for _ in range(pop.size):
            rank = self.rng.choice(list(pop.ranks))
            lr = math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
            genome = LoraGenome(
                rank,
                self._alpha(rank),
                tuple(pop.target_modules),
                pop.dropout,
                lr,
                self.rng.randrange(2**31),
            )
            out.append(Individual(self._new_id(0), 0, genome, [], "random"))
        return out

    def _make_child(self, generation: int, a: Individual, b: Individual | None) -> Individual:
        import torch

        from engine.genomes.lora import change_rank, crossover, mutate

        evo, pop = self.profile.evolution, self.profile.population
        rank = a.genome.rank if b is None else self.rng.choice([a.genome.rank, b.genome.rank])
        new_rank = genetics.mutate_choice(rank, pop.ranks, evo.rank_mutation_rate, self.rng)
        lr = (
            a.genome.learning_rate
            if b is None
            else math.sqrt(a.genome.learning_rate * b.genome.learning_rate)
        )
        lo, hi = self._lr_bounds()
        if hi > lo and self.rng.random() < evo.mutation_rate:
            lr = min(hi, max(lo, lr * math.exp(self.rng.gauss(0.0, 0.3))))
        targets = tuple(
            sorted(set(a.genome.target_modules) | set(b.genome.target_modules if b else ()))
        )
        genome = LoraGenome(
            new_rank, self._alpha(new_rank), targets, pop.dropout, lr, self.rng.randrange(2**31)
        )
        gen = torch.Generator().manual_seed(genome.seed)
        assert a.tensors is not None
        if b is not None:
            assert b.tensors is not None
            weight = self.rng.uniform(0.3, 0.7)
            tensors, _ = crossover(
                evo.crossover,
                a.tensors,
                a.genome.scaling,
                b.tensors,
                b.genome.scaling,
                child_rank=new_rank,
                child_scaling=genome.scaling,
                weight=weight,
                density=evo.density,
                generator=gen,
            )
            op, parents = f"{evo.crossover} {weight:.2f}", [a.id, b.id]
        else:
            tensors = {k: v.clone() for k, v in a.tensors.items()}
            if new_rank != a.genome.rank:
                tensors = change_rank(tensors, a.genome.scaling, new_rank, genome.scaling, gen)
            op, parents = "copy", [a.id]
        tensors, n_mut = mutate(
            tensors, rate=evo.mutation_rate, scale=evo.mutation_scale, generator=gen
        )
        if n_mut:
            op += f" +mut{n_mut}"
        if new_rank != rank:
            op += f" r{rank}→{new_rank}"
        child = Individual(self._new_id(generation), generation, genome, parents, op)
        child.tensors = tensors
        return child

    def next_population(self, generation: int) -> list[Individual]:
        """Elites (and promoted) survive unscored-again, paused keep their place, children fill the rest."""
        evo, size = self.profile.evolution, self.profile.population.size
        scored = [i for i in self.population if i.fitness is not None and not i.paused]
        waiting = [
            i for i in self.population if i.paused or (i.fitness is None and i.status != "failed")
        ]
        promoted = {i.id for i in scored if i.promoted}
        elites = genetics.select_elites(scored, evo.elitism, promoted)
        for e in elites:
            e.status = "promoted" if e.promoted else "elite"
            e.promoted = False  # a promotion carries an individual over once
        n_children = max(0, size - len(elites) - len(waiting))
        children = []
        if scored:
            children = genetics.breed(
                scored,
                n_children,
                evo.tournament_size,
                self.rng,
                lambda a, b: self._make_child(generation, a, b),
                evo.crossover_rate,
            )
        for ind in self.population:
            if ind not in elites and ind not in waiting and ind.status != "failed":
                ind.status = "culled"
                ind.reason = "not selected"
                self._update(ind)
        return [*elites, *waiting, *children]  # type: ignore[list-item]

    # --- work -----------------------------------------------------------------------------------

    async def _train(self, ind: Individual) -> None:
        assert self.pool is not None
        genome = ind.genome.to_dict()
        adapter = _to_bytes(ind.tensors) if ind.tensors is not None else None
        steps = self.profile.training.steps_per_generation

        kd_blob: bytes | None = None
        splits = 1  # pieces per drawn micro-batch: doubled after each out-of-memory error

        def task(job: int) -> m.TrainTask:
            ind.status = "training"
            self._update(ind)
            return m.TrainTask(
                job,
                ind.id,
                genome,
                adapter,
                steps,
                self.kd_path,
                kd_blob if kd_blob is not None else self.kd_shared,
                self.answers_path,
                splits,
                self.answers_shared,
            )

        def wanted() -> bool:
            return not (ind.paused or ind.id in self._culled or self.stop_requested)

        await self._gate()
        if not wanted():
            return
        batch, retries = self.profile.data.batch_size, self.profile.training.oom_retries
        try:
            if self.profile.distilling_logits and not self.profile.distill.cache:
                # Online distillation: the teacher scores exactly the rows this individual draws.
                logits: m.LogitsDone = await self.pool.run(
                    "teacher",
                    lambda job: m.TeacherLogitsTask(job, seed=genome["seed"], steps=steps),
                    wanted,
                )
                kd_blob = logits.blob
                self.publish(TeacherLogits(logits.rows, logits.seconds, id=ind.id))
            while True:
                try:
                    done: m.TrainDone = await self.pool.run("coliseum", task, wanted)
                    break
                except JobError as exc:
                    if exc.kind != "oom" or retries == 0 or splits >= batch:
                        raise
                    retries -= 1
                    splits *= 2
                    self.publish(
                        Log(
                            "warning",
                            f"{ind.id} ran out of memory training on {exc.worker} ({exc.reason}); "
                            f"retrying with {math.ceil(batch / splits)} rows per forward pass "
                            f"({splits} pieces per micro-batch of {batch}, the same effective batch)",
                        )
                    )
        except JobCancelled:
            return
        except JobError as exc:
            ind.status, ind.reason = "failed", _failure(exc)
            if exc.kind == "oom" and splits > 1:
                ind.reason += f" (also at {math.ceil(batch / splits)} rows per forward pass)"
            self._update(ind)
            self.publish(Log("error", f"{ind.id} failed in training: {ind.reason}"))
            return
        ind.tensors = _from_bytes(done.adapter)
        ind.trained = True
        ind.loss_history.extend(done.losses)
        self.publish(
            TrainFinished(
                ind.id, done.worker, len(done.losses), done.losses[-1], done.tokens, done.seconds
            )
        )
        if ind.id in self._culled:
            return
        ind.status = "paused" if ind.paused else "trained"
        self._update(ind)

    async def _evaluate(self, inds: list[Individual]) -> None:
        assert self.pool is not None
        await self._gate()
        inds = [i for i in inds if not i.paused and i.id not in self._culled]
        if not inds or self.stop_requested:
            return
        for i in inds:
            i.status = "evaluating"
            self._update(i)
        n = max(1, self.pool.count("coliseum"))
        chunks = [inds[k::n] for k in range(n) if inds[k::n]]

        async def one(chunk: list[Individual]) -> None:
            items = [(i.id, i.genome.to_dict(), _to_bytes(i.tensors)) for i in chunk]  # type: ignore[arg-type]
            rows: int | None = None  # rows per forward pass: halved after each out-of-memory error
            retries = self.profile.training.oom_retries
            while True:
                try:
                    done: m.EvalDone = await self.pool.run(
                        "coliseum",
                        lambda job, rows=rows: m.EvalTask(job, items, rows),
                        lambda: not self.stop_requested,
                    )
                    break
                except JobCancelled:
                    return
                except JobError as exc:
                    before = rows or self.profile.data.eval_rows_per_pass
                    if exc.kind == "oom" and retries > 0 and before > 1:
                        retries -= 1
                        rows = before // 2
                        self.publish(
                            Log(
                                "warning",
                                f"evaluation of {', '.join(i.id for i in chunk)} ran out of memory "
                                f"on {exc.worker} ({exc.reason}); retrying with {rows} rows per "
                                "forward pass",
                            )
                        )
                        continue
                    for i in chunk:
                        i.status, i.reason = "failed", f"evaluation failed: {_failure(exc)}"
                        self._update(i)
                    self.publish(
                        Log("error", f"evaluation of {len(chunk)} individuals failed: {exc.reason}")
                    )
                    return
            self.publish(
                EvaluationFinished(done.worker, [i.id for i in chunk], done.tokens, done.seconds)
            )
            for i in chunk:
                loss, _ = done.scores[i.id]
                i.val_loss, i.perplexity, i.fitness = loss, math.exp(min(loss, 50.0)), -loss
                if i.id in self._culled:
                    continue
                i.status = "paused" if i.paused else ("promoted" if i.promoted else "evaluated")
                self._update(i)

        await asyncio.gather(*(one(c) for c in chunks))

    async def _teacher_reference(self) -> None:
        assert self.pool is not None
        try:
            done: m.TeacherDone = await self.pool.run("teacher", lambda job: m.TeacherEvalTask(job))
        except JobError as exc:
            self.publish(
                Log("warning", f"the teacher could not score the validation split: {exc.reason}")
            )
            return
        self.teacher_loss = done.val_loss
        self.publish(
            ReferenceReport(
                "teacher", done.val_loss, math.exp(min(done.val_loss, 50.0)), done.seconds
            )
        )

    async def _prune(self) -> Any:
        """Prune the student once per run (a resumed run reuses ``pruned/``); returns the profile
        whose student is the pruned checkpoint, for every worker to load."""
        import json

        out = self.run_dir.path / "pruned"
        report_file = out / "prune_report.json"
        reused = report_file.exists()
        if reused:
            report = json.loads(report_file.read_text())
        else:
            p = self.profile.prune
            self.publish(
                Log(
                    "info",
                    f"pruning the student: {p.layers:.0%} of its blocks (by {p.layer_score}), "
                    f"{p.heads:.0%} of its attention heads, {p.width:.0%} of its MLP channels, "
                    f"then {p.sparsity:.0%} of its weights (Wanda)",
                )
            )
            report = await self._prune_in_process(out)
        self.publish(
            PruneReport(
                str(out),
                list(report["removed"]),
                report["blocks_before"],
                report["blocks_after"],
                report["params_before"],
                report["params_after"],
                report["perplexity_before"],
                report["perplexity_after"],
                report["tokens_per_s_before"],
                report["tokens_per_s_after"],
                reused,
                report.get("mlp_width_before"),
                report.get("mlp_width_after"),
                report.get("layer_score"),
                report.get("heads_before"),
                report.get("heads_after"),
                report.get("kv_heads_after"),
                report.get("sparsity_after"),
            )
        )
        student = self.profile.student.model_copy(update={"model": str(out), "revision": None})
        return self.profile.model_copy(update={"student": student})

    async def _prune_in_process(self, out: Path) -> dict[str, Any]:
        """Prune in a spawned process (engine.workers.pruner); the event loop only waits."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from engine.workers.pool import auto_threads
        from engine.workers.pruner import prune_job

        prof = self.profile
        logs = self.run_dir.path / "logs"
        logs.mkdir(exist_ok=True)
        threads = auto_threads(prof, prof.devices.coliseum[0], "coliseum")
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, prune_job, prof, str(out), threads, str(logs / "prune.log")
            )
        finally:
            await asyncio.to_thread(pool.shutdown)

    async def _logit_cache(self) -> None:
        """Distillation, cache mode: the teacher scores the training split once (or finds the
        cache a previous run or session left); after this the teacher is idle."""
        assert self.pool is not None
        cache_dir = str(self.profile.logit_cache_dir())
        done: m.LogitsDone = await self.pool.run(
            "teacher", lambda job: m.TeacherLogitsTask(job, cache_dir=cache_dir)
        )
        if done.blob is not None:  # Ray: the file is on the teacher's node; its bytes, shared once
            self.kd_shared = self.pool.share(done.blob)
        else:
            self.kd_path = done.path
        if done.note:
            self.publish(Log("warning", done.note))
        self.publish(TeacherLogits(done.rows, done.seconds, done.hit, done.path))

    async def _teacher_answers(self) -> None:
        """Sequence-level distillation: the teacher answers every training prompt once (or the
        answers a previous run left are reused); after this the teacher is idle."""
        assert self.pool is not None
        cache_dir = str(self.profile.logit_cache_dir())
        done: m.AnswersDone = await self.pool.run(
            "teacher", lambda job: m.TeacherAnswersTask(job, cache_dir=cache_dir)
        )
        self.answers_path = done.path
        if done.blob is not None:  # Ray: the file is on the teacher's node; its bytes, shared once
            self.answers_shared = self.pool.share(done.blob)
        if done.note:
            self.publish(Log("warning", done.note))
        self.publish(TeacherAnswers(done.rows, done.seconds, done.hit, done.path))

    async def _student_reference(self) -> None:
        """The untrained student's validation loss, scored by the coliseum like any individual."""
        assert self.pool is not None
        try:
            done: m.EvalDone = await self.pool.run(
                "coliseum", lambda job: m.EvalTask(job, [("base", None, None)])
            )
        except JobError as exc:
            self.publish(Log("warning", f"the untrained student could not be scored: {exc.reason}"))
            return
        self.student_loss = done.scores["base"][0]
        self.publish(
            ReferenceReport(
                "student", self.student_loss, math.exp(min(self.student_loss, 50.0)), done.seconds
            )
        )

    async def _export(self, ind: Individual, out_dir: Path) -> Path | None:
        """The individual's adapter as a PEFT directory plus a mergekit recipe (in the coliseum)."""
        assert self.pool is not None and ind.tensors is not None
        blob = _to_bytes(ind.tensors)
        try:
            done: m.ExportDone = await self.pool.run(
                "coliseum",
                lambda job: m.ExportTask(
                    job,
                    ind.id,
                    ind.genome.to_dict(),
                    blob,
                    str(out_dir),
                    self.merge_champion and out_dir.name == "champion",
                ),
                # Ahead of the queued trainings: the acknowledgement promises it right after the
                # coliseum's job in flight.
                urgent=True,
            )
        except JobError as exc:
            self.publish(Log("error", f"export of {ind.id} failed: {exc.reason}"))
            return None
        self.publish(Exported(ind.id, done.path, done.val_loss))
        return Path(done.path)

    # --- state ----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "generation": self.generation,
            "population": [i.to_state() for i in self.population],
            "rng": [version, list(internal), gauss],
            "next_id": self.next_id,
            "history": self.history,
            "teacher_loss": self.teacher_loss,
            "student_loss": self.student_loss,
            "culled": sorted(self._culled),
        }

    def _restore(self, state: dict[str, Any], tensors: dict[str, LoraTensors]) -> None:
        self.generation = state["generation"]
        self.population = [Individual.from_state(d) for d in state["population"]]
        for ind in self.population:
            ind.tensors = tensors.get(ind.id)
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.next_id = state["next_id"]
        self.history = state["history"]
        self.teacher_loss = state.get("teacher_loss")
        self.student_loss = state.get("student_loss")
        self._culled = set(state.get("culled", []))

    def _resume(self, generation: int, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self._restore(state, tensors)
        self._replay_commands(generation)

    def _replay_commands(self, after_generation: int) -> None:
        """Re-apply operator commands logged after the checkpoint we resume from."""
        events = self.run_dir.read_events()
        start = 0
        for k, e in enumerate(events):
            if isinstance(e, CheckpointWritten) and e.generation == after_generation:
                start = k + 1
        for e in events[start:]:
            if (
                isinstance(e, CommandAck)
                and e.ok
                and e.command.get("kind") in ("pause_individual", "promote", "cull")
            ):
                cmd = command_from_dict(e.command)
                if self.find(getattr(cmd, "id", "")) is not None:
                    self._apply(cmd)

    def leaderboard(self) -> list[Individual]:
        return genetics.ranked(self.population)

    def _leaderboard_rows(self) -> list[dict[str, Any]]:
        rows = []
        for pos, i in enumerate(self.leaderboard(), 1):
            rows.append(
                {
                    "place": pos,
                    "id": i.id,
                    "generation": i.generation,
                    "status": i.status,
                    "fitness": "" if i.fitness is None else f"{i.fitness:.6f}",
                    "val_loss": "" if i.val_loss is None else f"{i.val_loss:.6f}",
                    "perplexity": "" if i.perplexity is None else f"{i.perplexity:.4f}",
                    "rank": i.genome.rank,
                    "alpha": i.genome.alpha,
                    "learning_rate": f"{i.genome.learning_rate:.3g}",
                    "parents": " ".join(i.parents),
                    "operator": i.operator,
                }
            )
        return rows

    # --- the loop -------------------------------------------------------------------------------

    async def run(self, *, resume: bool = False) -> RunFinished:
        prof = self.profile
        self._begin(prof.population.size, resume, prof.remote_code)
        if prof.prune.active:
            try:
                prof = self.profile = await self._prune()
            except Exception as exc:  # a model that cannot be pruned: say why, start nothing
                from engine.workers.common import describe

                failed = RunFinished("failed", reason=f"pruning failed: {describe(exc)}")
                self.publish(Log("error", failed.reason))
                self.publish(failed)
                self.run_dir.close()
                return failed
        with_teacher = prof.teacher is not None and prof.teacher.enabled
        if with_teacher:
            from engine.models import quantization_fallback

            note = quantization_fallback(prof.teacher, prof.devices.teacher)
            if note:  # the teacher worker loads it in full precision (load_causal_lm(fallback))
                self.publish(Log("warning", f"teacher: {note}"))
        self.pool = make_pool(
            prof, self.publish, with_teacher=with_teacher, log_dir=self.run_dir.path / "logs"
        )
        status, reason = "completed", ""
        try:
            await self.pool.start()
            # One after the other: on a CPU both workers use every core, and two busy
            # OpenMP pools on the same cores slow each other down many times over.
            if self.student_loss is None:
                await self._student_reference()
            if with_teacher and self.teacher_loss is None:
                await self._teacher_reference()
            if prof.distilling_logits and prof.distill.cache:
                await self._logit_cache()
            if prof.distilling_sequences:
                await self._teacher_answers()
            for gen in range(self.generation + 1, prof.evolution.generations):
                await self._gate()
                if self.stop_requested:
                    break
                t0 = time.perf_counter()
                self.population = (
                    self.initial_population() if gen == 0 else self.next_population(gen)
                )
                self.generation = gen
                for ind in self.population:
                    if ind.generation == gen or ind.status in ("elite", "promoted"):
                        self._update(ind)
                to_train = [i for i in self.population if not i.trained and not i.paused]
                self.publish(GenerationStarted(gen, [i.id for i in to_train]))
                await asyncio.gather(*(self._train(i) for i in to_train))
                if self.stop_requested:
                    break
                await self._evaluate(
                    [i for i in self.population if i.trained and i.fitness is None]
                )
                if self.stop_requested:
                    break
                self.population = [i for i in self.population if i.id not in self._culled]
                self._finish_generation(gen, time.perf_counter() - t0)
                self._check_log()
            if self.stop_requested:
                status, reason = "stopped", "stopped by the operator"
        except asyncio.CancelledError:
            status, reason = "stopped", "interrupted"
        except Exception as exc:
            from engine.workers.common import describe

            status, reason = "failed", describe(exc)
            self.publish(Log("error", reason))
        champion_dir = None
        try:
            scored = [i for i in self.population if i.fitness is not None]
            if status == "completed" and scored:
                self.champion = genetics.ranked(scored)[0]
                path = await self._export(self.champion, self.run_dir.path / "champion")
                champion_dir = str(path) if path else None
        finally:
            await self.pool.close()
        champ = self.champion
        finished = RunFinished(
            status,
            champ.id if champ else None,
            champ.fitness if champ else None,
            champion_dir,
            reason,
        )
        self.publish(finished)
        self.run_dir.close()
        return finished

    def _finish_generation(self, gen: int, seconds: float) -> None:
        scored = [i for i in self.population if i.fitness is not None]
        best, mean, worst = genetics.summarize([i.fitness for i in scored])  # type: ignore[misc]
        champion = genetics.ranked(scored)[0].id if scored else ""
        self.history.append({"generation": gen, "best": best, "mean": mean, "worst": worst})
        adapters = {
            i.id: _to_bytes(i.tensors)
            for i in self.population
            if i.trained and i.tensors is not None
        }
        path = self.run_dir.save_checkpoint(gen, self._state(), adapters)
        self.run_dir.write_leaderboard(self._leaderboard_rows())
        self.publish(GenerationFinished(gen, best, mean, worst, champion, seconds))
        self.publish(CheckpointWritten(gen, str(path)))
