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
    TestReport,
    TrainFinished,
    command_from_dict,
)
from engine.individual import Individual, LoraGenome, LoraTensors
from engine.runcontrol import RunControl
from engine.rundir import RunDir
from engine.workers import messages as m
from engine.workers.pool import JobCancelled, JobError, make_pool

STATE_VERSION = 1
COMPUTE_KEYS = ("train_steps", "train_tokens", "eval_tokens", "teacher_rows", "teacher_tokens")


def _to_bytes(tensors: LoraTensors) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _from_bytes(blob: bytes) -> LoraTensors:
    from safetensors.torch import load

    return load(blob)


# How a continuation's operator names a gene it moved ("continue lr×1.25 kd 0.25→0")
_GENE_LABEL = {"kd_alpha": "kd", "weight_decay": "wd"}


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
        # Compute spent, in total and per generation (report.json, GenerationFinished)
        self.compute: dict[str, int] = dict.fromkeys(COMPUTE_KEYS, 0)
        self.compute_per_generation: list[dict[str, Any]] = []
        self._gen_compute: dict[str, int] = dict.fromkeys(COMPUTE_KEYS, 0)
        self.phases: dict[str, float] = {}  # wall seconds per phase (report.json)
        self.test: dict[str, float | None] = {}  # test-split losses: champion, student, teacher
        self._started = time.time()
        # The soup's candidates: the best adapters scored so far in the whole run, whichever
        # generation they were in (an elite's earlier self, a culled near-miss)
        self.hall: list[Individual] = []
        self.unpruned_student: Any = None  # the profile's student, when pruning replaces it
        self.merged_dir: str | None = None  # the champion merged into its base (--merge)

    @property
    def _keeps_optimizers(self) -> bool:
        evo = self.profile.evolution
        return evo.continue_elites or (evo.inherit_optimizer and evo.crossover_rate < 1)

    def _count(self, key: str, n: int) -> None:
        self.compute[key] += n
        self._gen_compute[key] += n

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
                if ind.paused_at is None:  # pausing a paused one again keeps the first generation
                    ind.paused_at = max(self.generation, ind.generation)
            else:
                ind.paused_at = None
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
            seed = self.rng.randrange(2**31)
            # Drawn only when a gene is on, so runs of profiles without them replay unchanged
            genes = {name: self.rng.choice(values) for name, values, _ in self._choice_genes()}
            genome = LoraGenome(
                rank, self._alpha(rank), tuple(pop.target_modules), pop.dropout, lr, seed, **genes
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
        if evo.lr_perturbation > 0:  # PBT's explore (drawn only when on: older runs replay)
            lr, _ = self._perturb_lr(lr)
        targets = tuple(
            sorted(set(a.genome.target_modules) | set(b.genome.target_modules if b else ()))
        )
        seed = self.rng.randrange(2**31)
        genes = {}
        for name, values, default in self._choice_genes():  # a parent's value, perhaps moved
            v = getattr(a.genome, name)
            if b is not None:
                v = self.rng.choice([v, getattr(b.genome, name)])
            v = default if v is None else v  # a parent from before the gene (an older run)
            genes[name] = genetics.mutate_choice(v, values, evo.mutation_rate, self.rng)
        genome = LoraGenome(
            new_rank, self._alpha(new_rank), targets, pop.dropout, lr, seed, **genes
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
        inherit = b is None and new_rank == a.genome.rank and evo.inherit_optimizer
        tensors, n_mut = mutate(
            tensors, rate=evo.mutation_rate, scale=evo.mutation_scale, generator=gen
        )
        if n_mut:
            op += f" +mut{n_mut}"
        if new_rank != rank:
            op += f" r{rank}→{new_rank}"
        child = Individual(self._new_id(generation), generation, genome, parents, op)
        child.tensors = tensors
        child.steps_trained = max(a.steps_trained, b.steps_trained if b else 0)
        if inherit:  # PBT's exploit: the parent's weights and its optimizer's moments
            child.optimizer, child.stretches = a.optimizer, a.stretches
        return child

    async def _soup(self, k: int) -> None:
        """Greedy soup (Wortsman et al., 2022) of the best ``k`` adapters scored in the whole run
        (the hall: earlier states of today's elites too, as in latest-weight averaging): walking
        down their ranking, an adapter joins when the uniform average of the members' ΔW scores better
        on validation than the soup without it. The average is exact: the soup's rank is the sum
        of its members' ranks (engine.genomes.lora's linear crossover keeps every direction)."""
        import dataclasses

        import torch

        from engine.genomes.lora import crossover

        current = [i for i in self.population if i.fitness is not None]
        pool = {i.id: i for i in [*self.hall, *current]}
        ranked = genetics.ranked(list(pool.values()))[:k]
        if len(ranked) < 2:
            return
        members = [ranked[0]]
        best_fitness = ranked[0].fitness
        tensors, rank, scaling = ranked[0].tensors, ranked[0].genome.rank, ranked[0].genome.scaling
        soup: Individual | None = None
        gen = torch.Generator().manual_seed(ranked[0].genome.seed)
        for cand in ranked[1:]:
            assert tensors is not None and cand.tensors is not None
            n = len(members) + 1
            new_rank = rank + cand.genome.rank
            mixed, _ = crossover(
                "linear",
                tensors,
                scaling,
                cand.tensors,
                cand.genome.scaling,
                child_rank=new_rank,
                child_scaling=1.0,
                weight=(n - 1) / n,
                generator=gen,
            )
            genome = dataclasses.replace(ranked[0].genome, rank=new_rank, alpha=float(new_rank))
            names = ", ".join(i.id for i in [*members, cand])
            trial = Individual(
                f"soup-{len(members) + 1}-{self.generation}",
                self.generation,
                genome,
                [i.id for i in [*members, cand]],
                f"soup of {n}",
                trained=True,
                steps_trained=max(i.steps_trained for i in [*members, cand]),
            )
            trial.tensors = mixed
            await self._evaluate([trial])
            if self.stop_requested or trial.fitness is None:
                return
            if trial.fitness > best_fitness:  # type: ignore[operator]
                members.append(cand)
                tensors, rank, scaling, best_fitness = mixed, new_rank, 1.0, trial.fitness
                if soup is not None:
                    soup.status, soup.reason = "culled", f"superseded by {trial.id}"
                    self._update(soup)
                soup = trial
                self.publish(
                    Log("info", f"soup: {names} average to {trial.val_loss:.4f} on validation")
                )
            else:
                trial.status, trial.reason = "culled", f"{cand.id} did not improve the soup"
                self._update(trial)
        if soup is not None:
            self.population.append(soup)
            self.run_dir.write_leaderboard(self._leaderboard_rows())
        else:
            self.publish(
                Log("info", f"soup: no average of the best {k} beat {ranked[0].id} on validation")
            )

    def _choice_genes(self) -> list[tuple[str, list[float], float]]:
        """The genes this profile draws from a list of values: (genome field, the values, what
        an individual without the gene uses), in a fixed order (the RNG draws follow it)."""
        pop, prof = self.profile.population, self.profile
        return [
            (name, values, default)
            for name, values, default in (
                ("kd_alpha", pop.kd_alphas, prof.distill.alpha),
                ("weight_decay", pop.weight_decays, prof.training.weight_decay),
            )
            if values
        ]

    def _perturb_lr(self, lr: float) -> tuple[float, bool]:
        """PBT's explore: ``lr`` × or ÷ (1 + lr_perturbation) at random, within the spread's
        bounds when there are any; (new lr, whether it went up)."""
        f = 1.0 + self.profile.evolution.lr_perturbation
        up = self.rng.random() < 0.5
        lr = lr * f if up else lr / f
        lo, hi = self._lr_bounds()
        return (min(hi, max(lo, lr)) if hi > lo else lr), up

    def _continuation(self, generation: int, e: Individual) -> Individual:
        """``e`` training on: its adapter, optimizer state and batch stream, no crossover or
        noise; only the learning rate may move (PBT's explore)."""
        import dataclasses

        lr, evo = e.genome.learning_rate, self.profile.evolution
        op = "continue"
        if evo.lr_perturbation > 0:
            lr, up = self._perturb_lr(lr)
            f = 1.0 + evo.lr_perturbation
            op += f" lr×{f:g}" if up else f" lr÷{f:g}"
        # A seed of its own: two continuations of one elite at one learning rate would otherwise
        # draw the same batches and train the same adapter twice (the seed only picks batches
        # and dropout here; the adapter is the elite's)
        seed = self.rng.randrange(2**31)
        genes = {}
        for name, values, default in self._choice_genes():  # PBT explores every gene it has
            was = getattr(e.genome, name)
            was = default if was is None else was
            genes[name] = genetics.mutate_choice(was, values, evo.mutation_rate, self.rng)
            if genes[name] != was:
                op += f" {_GENE_LABEL[name]} {was:g}→{genes[name]:g}"
        genome = dataclasses.replace(e.genome, learning_rate=lr, seed=seed, **genes)
        child = Individual(self._new_id(generation), generation, genome, [e.id], op)
        assert e.tensors is not None
        child.tensors = {k: v.clone() for k, v in e.tensors.items()}
        child.optimizer, child.stretches = e.optimizer, e.stretches
        child.steps_trained = e.steps_trained
        return child

    def next_population(self, generation: int) -> list[Individual]:
        """Elites (and promoted) survive unscored-again, paused keep their place, children fill the rest."""
        evo = self.profile.evolution
        size = self.profile.generation_sizes()[generation]
        scored = [i for i in self.population if i.fitness is not None and not i.paused]
        waiting = [
            i for i in self.population if i.paused or (i.fitness is None and i.status != "failed")
        ]
        promoted = {i.id for i in scored if i.promoted}
        if evo.patience:  # a continuation that lost to its parent makes the parent staler
            by_id = {i.id: i for i in scored}
            for c in scored:
                p = by_id.get(c.parents[0]) if c.parents else None
                if (
                    p is not None
                    and c.generation == generation - 1
                    and c.operator.startswith("continue")
                    and c.fitness <= p.fitness  # type: ignore[operator]
                ):
                    p.stale += 1
        elites = genetics.select_elites(scored, min(evo.elitism, size), promoted)
        for e in elites:
            e.status = "promoted" if e.promoted else "elite"
            e.promoted = False  # a promotion carries an individual over once
        n_children = max(0, size - len(elites) - len(waiting))
        children = []
        if evo.continue_elites:  # elites keep training, in a child: the elite stays as it was
            # Early stopping of a lineage: an elite whose continuations lost to it `patience`
            # times has stopped improving; its place goes to a bred child (exploration)
            going = [e for e in elites if not evo.patience or e.stale < evo.patience]
            for e in going[:n_children]:
                children.append(self._continuation(generation, e))
            n_children -= len(children)
        if scored and n_children > 0:
            children += genetics.breed(
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

    async def _train(self, ind: Individual, steps: int | None = None) -> None:
        """Train ``ind`` for ``steps`` (the profile's steps per generation) on a coliseum."""
        assert self.pool is not None
        genome = ind.genome.to_dict()
        adapter = _to_bytes(ind.tensors) if ind.tensors is not None else None
        steps = steps or self.profile.training.steps_per_generation

        kd_blob: bytes | None = None
        splits = 1  # pieces per drawn micro-batch: doubled after each out-of-memory error

        # A first stretch draws its batches from the genome's seed; a later one (an individual
        # that trains on, or a copy that continues its parent's optimizer) from a new stream.
        draw_seed = (
            genome["seed"]
            if ind.stretches == 0
            else (genome["seed"] + 1_000_003 * ind.stretches) % 2**31
        )

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
                ind.optimizer,
                draw_seed,
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
                    lambda job: m.TeacherLogitsTask(job, seed=draw_seed, steps=steps),
                    wanted,
                )
                kd_blob = logits.blob
                self._count("teacher_rows", logits.rows)
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
        ind.optimizer = done.optimizer if self._keeps_optimizers else None
        ind.trained = True
        ind.steps_trained += len(done.losses)
        ind.stretches += 1
        ind.loss_history.extend(done.losses)
        self._count("train_steps", len(done.losses))
        self._count("train_tokens", done.tokens)
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
            self._count("eval_tokens", done.tokens)
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
        from engine.workers.lifeline import one_off_pool
        from engine.workers.pool import auto_threads
        from engine.workers.pruner import prune_job

        prof = self.profile
        logs = self.run_dir.path / "logs"
        logs.mkdir(exist_ok=True)
        threads = auto_threads(prof, prof.devices.coliseum[0], "coliseum")
        pool = one_off_pool(self.run_dir.path, "pruner")  # dies with this engine
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
        """The individual's adapter as a PEFT directory plus a mergekit recipe, its lineage.json
        and model card (in the coliseum; the champion merged into the base too, with --merge)."""
        from engine.export import recipe_ref

        assert self.pool is not None and ind.tensors is not None
        blob = _to_bytes(ind.tensors)
        merge = self.merge_champion and out_dir.name == "champion"
        student = self.profile.student
        base_ref = recipe_ref(student.model, out_dir, self.run_dir.path, student.revision)
        # the population as it is now (commands may change it while the thread reads checkpoints)
        current = {i.id: i.to_state() for i in self.population}
        files = await asyncio.to_thread(
            self._describe, ind.to_state(), current, out_dir, base_ref, merge
        )
        try:
            done: m.ExportDone = await self.pool.run(
                "coliseum",
                lambda job: m.ExportTask(
                    job, ind.id, ind.genome.to_dict(), blob, str(out_dir), merge, base_ref, files
                ),
                # Ahead of the queued trainings: the acknowledgement promises it right after the
                # coliseum's job in flight.
                urgent=True,
            )
        except JobError as exc:
            self.publish(Log("error", f"export of {ind.id} failed: {exc.reason}"))
            return None
        self.publish(Exported(ind.id, done.path, done.val_loss, done.merged))
        if done.merged and out_dir.name == "champion":
            self.merged_dir = done.merged
        return Path(done.path)

    async def _test_report(self, champ: Individual, with_teacher: bool) -> None:
        """Score the champion, the untrained student and the teacher on the test split, once: the
        figure selection never saw (report.json, TestReport)."""
        from engine.workers.common import test_examples

        assert self.pool is not None and champ.tensors is not None
        rows = len(test_examples(self.profile))
        if not rows:
            self.publish(
                Log(
                    "info",
                    "no test split ([data] test, or validation rows after max_val_examples): "
                    "the champion is reported on validation only",
                )
            )
            return
        items = [("base", None, None), (champ.id, champ.genome.to_dict(), _to_bytes(champ.tensors))]
        try:
            done: m.EvalDone = await self.pool.run(
                "coliseum", lambda job: m.EvalTask(job, items, split="test")
            )
            teacher = None
            if with_teacher:
                t: m.TeacherDone = await self.pool.run(
                    "teacher", lambda job: m.TeacherEvalTask(job, split="test")
                )
                teacher = t.val_loss
                self._count("teacher_tokens", t.tokens)
        except JobError as exc:
            self.publish(Log("warning", f"the test split could not be scored: {exc.reason}"))
            return
        self.test = {
            "champion": done.scores[champ.id][0],
            "student": done.scores["base"][0],
            "teacher": teacher,
        }
        self.publish(
            TestReport(champ.id, rows, self.test["champion"], self.test["student"], teacher)  # type: ignore[arg-type]
        )
        self.run_dir.write_leaderboard(self._leaderboard_rows())

    def _lineage(self, ind: Individual) -> list[dict[str, Any]]:
        """``ind`` and its ancestry (engine.lineage's, over the checkpoints, the population and
        the soup's hall), newest generation first."""
        from engine.lineage import ancestry, record

        known = {
            **self.run_dir.individual_records(),
            **{i.id: i.to_state() for i in [*self.hall, *self.population]},
        }
        state = ind.to_state()
        return [record(state), *ancestry(state, known)[0]]

    def report(self, status: str) -> dict[str, Any]:
        """report.json's content: what a benchmark or a tracker reads instead of the event log."""
        import hashlib

        from engine import __version__ as version

        prof = self.profile
        scored = [i for i in self.population if i.fitness is not None]
        champ = self.champion or (genetics.ranked(scored)[0] if scored else None)

        def gap(loss: float | None, student: float | None, teacher: float | None) -> float | None:
            if None in (loss, student, teacher) or student == teacher:
                return None
            return (student - loss) / (student - teacher)  # type: ignore[operator]

        test = self.test
        out: dict[str, Any] = {
            "kind": self.report_kind,
            "status": status,
            "genesis_lab": version,
            "run_dir": str(self.run_dir.path),
            "profile": str(prof.source),
            "profile_sha256": hashlib.sha256(self.run_dir.profile_path.read_bytes()).hexdigest()
            if self.run_dir.profile_path.exists()
            else None,
            "seed": prof.run.seed,
            "generations_done": self.generation + 1,
            "planned_train_steps": prof.planned_train_steps(),
            "compute": dict(self.compute),
            "compute_per_generation": list(self.compute_per_generation),
            "wall_seconds": {**self.phases, "total": round(time.time() - self._started, 3)},
            "references": {
                "student": {"val_loss": self.student_loss, "test_loss": test.get("student")},
                "teacher": {"val_loss": self.teacher_loss, "test_loss": test.get("teacher")},
            },
            "history": list(self.history),
            "champion": None,
        }
        if champ is not None:
            out["champion"] = {
                "id": champ.id,
                "generation": champ.generation,
                "parents": list(champ.parents),
                "operator": champ.operator,
                "genome": champ.genome.to_dict(),
                "steps_trained": champ.steps_trained,
                "val_loss": champ.val_loss,
                "val_perplexity": champ.perplexity,
                "test_loss": test.get("champion"),
                "test_perplexity": (
                    math.exp(min(test["champion"], 50.0)) if test.get("champion") else None  # type: ignore[arg-type]
                ),
                "gap_closed_val": gap(champ.val_loss, self.student_loss, self.teacher_loss),
                "gap_closed_test": gap(
                    test.get("champion"), test.get("student"), test.get("teacher")
                ),
                "lineage": self._lineage(champ),
            }
        return out

    report_kind = "evolution"

    def _write_report(self, status: str) -> None:
        try:
            self.run_dir.write_report(self.report(status))
        except Exception as exc:  # a report is never worth the run: say so and go on
            from engine.workers.common import describe

            self.publish(Log("warning", f"report.json could not be written: {describe(exc)}"))

    def _describe(
        self,
        ind: dict[str, Any],
        current: dict[str, dict[str, Any]],
        out_dir: Path,
        base_ref: str,
        merged: bool,
    ) -> dict[str, str]:
        """lineage.json and README.md (the model card) of an export of individual ``ind`` (its
        state); its ancestors are found in ``current`` (the population) and the checkpoints."""
        import hashlib
        import json

        from engine.export import MERGE_COMMAND
        from engine.lineage import lineage, model_card

        prof = self.profile
        known = {**self.run_dir.individual_records(), **current}
        try:
            digest = hashlib.sha256(self.run_dir.profile_path.read_bytes()).hexdigest()
        except OSError:
            digest = ""
        student, original = prof.student, self.unpruned_student
        hub = None if Path(student.model).is_absolute() else student.model  # local: resolved
        teacher = prof.teacher
        doc = lineage(
            ind,
            known,
            role="champion" if out_dir.name == "champion" else "export",
            run={
                "name": prof.run.name,
                "dir": str(self.run_dir.path),
                "profile": str(self.run_dir.profile_path),
                "profile_sha256": digest,
                "profile_source": str(prof.source),
                "seed": prof.run.seed,
                "generations": prof.evolution.generations,
                "generation": self.generation,
            },
            base_model={
                "model": student.model,
                "revision": student.revision,
                "hub_id": hub,
                "in_recipe": base_ref,
                "dtype": student.dtype,
                "pruned_from": (
                    {"model": original.model, "revision": original.revision}
                    if original is not None and original.model != student.model
                    else None
                ),
            },
            teacher=(
                {"model": teacher.model, "revision": teacher.revision, "distill": prof.distill.mode}
                if teacher is not None and teacher.enabled
                else None
            ),
            data={
                "format": prof.data.format,
                "train": str(prof.data.train),
                "validation": str(prof.data.validation),
            },
            references={
                "untrained_student_val_loss": self.student_loss,
                "teacher_val_loss": self.teacher_loss,
            },
            merge_command=MERGE_COMMAND,
            merged=merged,
        )
        return {"lineage.json": json.dumps(doc, indent=1) + "\n", "README.md": model_card(doc)}

    def _paused_to_the_end(self) -> None:
        """A completed run says which individuals the operator paused and never resumed: they
        kept their places in silence, outside training, scoring and selection."""
        for ind in self.population:
            if not ind.paused:
                continue
            when = f" at generation {ind.paused_at}" if ind.paused_at is not None else ""
            had = (
                f"its validation loss {ind.val_loss:.4f} is from before the pause"
                if ind.val_loss is not None
                else "it has no score"
            )
            self.publish(
                Log(
                    "warning",
                    f"{ind.id} was paused{when} and never resumed: it was not trained, scored "
                    f"or selected after that ({had}); the leaderboard lists it as paused",
                )
            )

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
            "hall": [i.to_state() for i in self.hall],
            "compute": self.compute,
            "compute_per_generation": self.compute_per_generation,
            "phases": self.phases,
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
        self.hall = [Individual.from_state(d) for d in state.get("hall", [])]
        for ind in self.hall:
            ind.tensors = tensors.get(ind.id)
        self.compute = {**dict.fromkeys(COMPUTE_KEYS, 0), **state.get("compute", {})}
        self.compute_per_generation = list(state.get("compute_per_generation", []))
        self.phases = dict(state.get("phases", {}))

    def _resume(self, generation: int, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self._restore(state, tensors)
        for ind_id, blob in self.run_dir.load_optimizers(generation).items():
            ind = self.find(ind_id)
            if ind is not None:
                ind.optimizer = blob
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
                    # the test split is scored once, for the champion only, at the end
                    "test_loss": f"{self.test['champion']:.6f}"
                    if self.champion is i and self.test.get("champion") is not None
                    else "",
                }
            )
        return rows

    # --- the loop -------------------------------------------------------------------------------

    async def run(self, *, resume: bool = False) -> RunFinished:
        prof = self.profile
        self._begin(prof.population.size, resume, prof.remote_code)
        if prof.prune.active:
            try:
                t0 = time.perf_counter()
                self.unpruned_student = prof.student
                prof = self.profile = await self._prune()
                self.phases.setdefault("prune", round(time.perf_counter() - t0, 3))
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
            t0 = time.perf_counter()
            await self.pool.start()
            self.phases["workers_start"] = round(time.perf_counter() - t0, 3)
            # One after the other: on a CPU both workers use every core, and two busy
            # OpenMP pools on the same cores slow each other down many times over.
            t0 = time.perf_counter()
            if self.student_loss is None:
                await self._student_reference()
            if with_teacher and self.teacher_loss is None:
                await self._teacher_reference()
            self.phases.setdefault("references", round(time.perf_counter() - t0, 3))
            t0 = time.perf_counter()
            if prof.distilling_logits and prof.distill.cache:
                await self._logit_cache()
            if prof.distilling_sequences:
                await self._teacher_answers()
            self.phases["teacher"] = round(time.perf_counter() - t0, 3)
            await self._evolve(prof)
            if prof.evolution.soup > 1 and not self.stop_requested:
                await self._soup(prof.evolution.soup)
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
            if status == "completed":
                self._paused_to_the_end()
            if status == "completed" and scored:
                self.champion = genetics.ranked(scored)[0]
                t0 = time.perf_counter()
                await self._test_report(self.champion, with_teacher)
                self.phases["test"] = round(time.perf_counter() - t0, 3)
                t0 = time.perf_counter()
                path = await self._export(self.champion, self.run_dir.path / "champion")
                self.phases["export"] = round(time.perf_counter() - t0, 3)
                champion_dir = str(path) if path else None
        finally:
            await self.pool.close()
        self._write_report(status)
        champ = self.champion
        finished = RunFinished(
            status,
            champ.id if champ else None,
            champ.fitness if champ else None,
            champion_dir,
            reason,
            self.merged_dir,
        )
        self.publish(finished)
        self.run_dir.close()
        return finished

    async def _evolve(self, prof: Any) -> None:
        """The generations: breed, train, score, checkpoint (a baseline replaces only this)."""
        for gen in range(self.generation + 1, prof.evolution.generations):
            await self._gate()
            if self.stop_requested:
                return
            t0 = time.perf_counter()
            self.population = self.initial_population() if gen == 0 else self.next_population(gen)
            self.generation = gen
            for ind in self.population:
                if ind.generation == gen or ind.status in ("elite", "promoted"):
                    self._update(ind)
            to_train = [i for i in self.population if not i.trained and not i.paused]
            self.publish(GenerationStarted(gen, [i.id for i in to_train]))
            await asyncio.gather(*(self._train(i) for i in to_train))
            if self.stop_requested:
                return
            await self._evaluate([i for i in self.population if i.trained and i.fitness is None])
            if self.stop_requested:
                return
            self.population = [i for i in self.population if i.id not in self._culled]
            self._finish_generation(gen, time.perf_counter() - t0)
            self._check_log()

    def _remember(self) -> None:
        """Keep the best ``[evolution] soup`` adapters scored so far (the soup's candidates)."""
        k = self.profile.evolution.soup
        if k < 2:
            return
        pool = {i.id: i for i in [*self.hall, *self.population] if i.fitness is not None}
        self.hall = genetics.ranked(list(pool.values()))[:k]

    def _finish_generation(self, gen: int, seconds: float) -> None:
        self._remember()
        scored = [i for i in self.population if i.fitness is not None]
        best, mean, worst = genetics.summarize([i.fitness for i in scored])  # type: ignore[misc]
        champion = genetics.ranked(scored)[0].id if scored else ""
        self.history.append({"generation": gen, "best": best, "mean": mean, "worst": worst})
        adapters = {
            i.id: _to_bytes(i.tensors)
            for i in [*self.population, *self.hall]
            if i.trained and i.tensors is not None
        }
        optimizers = {
            i.id: i.optimizer for i in self.population if i.trained and i.optimizer is not None
        }
        spent = {"generation": gen, **self._gen_compute, "seconds": round(seconds, 3)}
        self.compute_per_generation.append(spent)
        self._gen_compute = dict.fromkeys(COMPUTE_KEYS, 0)
        path = self.run_dir.save_checkpoint(gen, self._state(), adapters, optimizers)
        self.run_dir.write_leaderboard(self._leaderboard_rows())
        self._write_report("running")  # with the checkpoint's files, before it is announced
        self.publish(
            GenerationFinished(gen, best, mean, worst, champion, seconds, dict(self.compute))
        )
        self.publish(CheckpointWritten(gen, str(path)))
