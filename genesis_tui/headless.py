"""Headless runs: rich progress on a terminal, plain timestamped lines when redirected to a file."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from engine.events import (
    AudioSample,
    CheckpointWritten,
    CommandAck,
    EnginePaused,
    Event,
    Exported,
    GenerationFinished,
    GenerationStarted,
    IndividualUpdate,
    Log,
    PruneReport,
    ReferenceReport,
    RunFinished,
    RunStarted,
    StopRun,
    TeacherAnswers,
    TeacherLogits,
    TestReport,
    TrainFinished,
    WorkerState,
)
from engine.orchestrator import Orchestrator

MERGED_NOTE = (
    "a plain transformers checkpoint with the adapter folded in "
    "(AutoModelForCausalLM.from_pretrained loads it, no PEFT needed)"
)


class HeadlessView:
    """Turns engine events into progress bars (on a terminal) or log lines (in a file)."""

    def __init__(self, console: Console, generations: int, metric: str = "val loss") -> None:
        self.console = console
        # what −fitness is: "val loss" (LLM track), "MCD" or "MCD+tempo" (TTS track)
        self.metric = metric
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self.run_task = self.progress.add_task("run", total=generations, info="")
        self.gen_task = None
        self.t0 = time.time()
        self.best: float | None = None

    def line(self, text: str) -> None:
        if self.live:
            self.progress.console.print(text)
        else:
            elapsed = time.time() - self.t0
            self.console.print(
                f"[{elapsed:7.1f}s] {text}", markup=False, highlight=False, soft_wrap=True
            )

    def __call__(self, e: Event) -> None:
        if isinstance(e, RunStarted):
            what = (
                f"resumed after generation {e.resumed_from}"
                if e.resumed_from is not None
                else "started"
            )
            self.line(f"run {what}: {e.run_dir}")
            if e.remote_code:
                from genesis_tui.widgets.event_log import remote_code_note

                self.line(f"warning: {remote_code_note(e.remote_code)}")
            if e.resumed_from is not None:
                self.progress.update(self.run_task, completed=e.resumed_from + 1)
        elif isinstance(e, WorkerState) and e.state in ("ready", "dead"):
            self.line(
                f"worker {e.worker} on {e.device}: {e.state}{' — ' + e.detail if e.detail else ''}"
            )
        elif isinstance(e, ReferenceReport):
            who = "untrained student" if e.model == "student" else "teacher"
            self.line(f"{who}: validation loss {e.val_loss:.4f} (perplexity {e.perplexity:.2f})")
        elif isinstance(e, GenerationStarted):
            if self.gen_task is not None:
                self.progress.remove_task(self.gen_task)
            self.gen_task = self.progress.add_task(
                f"generation {e.generation}", total=len(e.to_train) + 1, info=""
            )
            verb = "scoring" if self.metric.startswith("MCD") else "training"
            self.line(f"generation {e.generation}: {verb} {len(e.to_train)} individuals")
        elif isinstance(e, TrainFinished):
            if self.gen_task is not None:
                self.progress.advance(self.gen_task)
                self.progress.update(self.gen_task, info=f"{e.id} loss {e.loss:.3f}")
            if not self.live:
                self.line(
                    f"  trained {e.id}: {e.steps} steps, loss {e.loss:.4f}, {e.tokens / max(e.seconds, 1e-9):.0f} tok/s"
                )
        elif isinstance(e, IndividualUpdate) and e.status == "failed":
            self.line(f"  {e.id} failed: {e.reason}")
        elif isinstance(e, GenerationFinished):
            if self.gen_task is not None:
                self.progress.advance(self.gen_task)
            self.progress.advance(self.run_task)
            self.best = e.best
            self.progress.update(self.run_task, info=f"best {self.metric} {-e.best:.4f}")
            self.line(
                f"generation {e.generation} done in {e.seconds:.1f}s: {self.metric} best {-e.best:.4f} · "
                f"mean {-e.mean:.4f} · worst {-e.worst:.4f} · champion {e.champion}"
            )
        elif isinstance(e, TestReport):
            self.line(e.summary)
        elif isinstance(e, AudioSample):
            self.line(f"  audio {e.id} ({e.seconds:.2f}s): {e.path}")
        elif isinstance(e, (PruneReport, TeacherAnswers)):
            self.line(e.summary)
        elif isinstance(e, TeacherLogits) and e.id is None:
            if e.hit:
                self.line(f"teacher logit cache reused ({e.rows} rows): {e.path}")
            else:
                self.line(
                    f"teacher logit cache built: {e.rows} rows in {e.seconds:.1f}s → {e.path}"
                )
        elif isinstance(e, CheckpointWritten):
            if not self.live:
                self.line(f"  checkpoint: {e.path}")
        elif isinstance(e, Exported):
            loss = "" if e.val_loss is None else f" (validation loss {e.val_loss:.4f})"
            self.line(
                f"exported {e.id} → {e.path}{loss}: PEFT adapter, merge.yaml, lineage.json, README.md"
            )
            if e.merged:
                self.line(f"merged {e.id} into its base → {e.merged}: {MERGED_NOTE}")
        elif isinstance(e, EnginePaused):
            self.line("engine paused" if e.paused else "engine resumed")
        elif isinstance(e, CommandAck):
            self.line(f"command {e.command.get('kind')}: {e.detail}")
        elif isinstance(e, Log) and e.level == "info":
            # the engine's own milestones (pruning, the TTS sweep and its choice, the neutral
            # style's score); operator commands are acknowledged in CommandAck, not here
            self.line(e.message)
        elif isinstance(e, Log) and e.level in ("warning", "error"):
            self.line(f"{e.level}: {e.message}")


def leaderboard_table(orch: Orchestrator, limit: int = 20) -> Table:
    if getattr(orch, "track", "lora") == "tts":
        return _style_table(orch, limit)
    table = Table(title="Leaderboard", title_justify="left")
    for col in ("#", "id", "gen", "status", "val loss", "ppl", "rank", "lr", "operator"):
        table.add_column(
            col, justify="right" if col in ("#", "gen", "val loss", "ppl", "rank", "lr") else "left"
        )
    for pos, i in enumerate(orch.leaderboard()[:limit], 1):
        table.add_row(
            str(pos),
            i.id,
            str(i.generation),
            i.status,
            "—" if i.val_loss is None else f"{i.val_loss:.4f}",
            "—" if i.perplexity is None else f"{i.perplexity:.2f}",
            str(i.genome.rank),
            f"{i.genome.learning_rate:.2g}",
            i.operator,
        )
    return table


def _style_table(orch, limit: int) -> Table:
    ranked_by = "MCD + tempo penalty" if orch.profile.tts.tempo_weight else "MCD"
    table = Table(title=f"Leaderboard (style genomes, ranked by {ranked_by})", title_justify="left")
    # one line per genome at 80 columns: only the operator is cut short (the CSV has it whole)
    for col in ("#", "id", "gen", "status", "MCD dB", "dur ×", "operator", "top tokens"):
        table.add_column(
            col,
            justify="right" if col in ("#", "gen", "MCD dB", "dur ×") else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=10 if col == "operator" else None,
        )
    for pos, i in enumerate(orch.leaderboard()[:limit], 1):
        top = sorted(enumerate(i.weights), key=lambda kw: -kw[1])[:2]
        table.add_row(
            str(pos),
            i.id,
            str(i.generation),
            i.status,
            "—" if i.mcd is None else f"{i.mcd:.3f}",
            "—" if i.duration_ratio is None else f"{i.duration_ratio:.2f}",
            i.operator,
            " ".join(f"t{k} {w:.2f}".replace(" 0.", " .") for k, w in top),
        )
    return table


def champion_summary(orch: Orchestrator, finished: RunFinished) -> str:
    """The champion against the references: the untrained student and, if any, the teacher."""
    if finished.champion_fitness is None:
        return "no champion: no individual was scored"
    if getattr(orch, "track", "lora") == "tts":
        champ = orch.champion
        mcd = (
            champ.mcd if champ is not None and champ.mcd is not None else -finished.champion_fitness
        )
        text = f"champion [bold]{finished.champion}[/] MCD {mcd:.3f} dB to the target style"
        neutral = orch.neutral_mcd
        if neutral:
            text += (
                f" · neutral style {neutral:.3f} dB · {100 * (neutral - mcd) / neutral:.1f}% lower"
            )
        if champ is not None and champ.duration_ratio is not None:
            text += f" · speaks {champ.duration_ratio:.2f}× the target's duration"
        return text
    loss = -finished.champion_fitness
    text = f"champion [bold]{finished.champion}[/] validation loss {loss:.4f}"
    student, teacher = orch.student_loss, orch.teacher_loss
    if student is not None:
        text += f" · untrained student {student:.4f}"
    if teacher is not None:
        text += f" · teacher {teacher:.4f}"
        if loss <= teacher:
            text += " · better than the teacher"
        elif student is not None and student > teacher:
            text += f" · closes {100 * (student - loss) / (student - teacher):.0f}% of the student–teacher gap"
    return text


def compute_summary(compute: dict) -> str:
    return (
        f"compute: {compute.get('train_steps', 0)} training steps, "
        f"{compute.get('train_tokens', 0):,} training tokens, "
        f"{compute.get('eval_tokens', 0):,} evaluation tokens"
    )


async def _run(orch: Orchestrator, view: HeadlessView, resume: bool) -> RunFinished:
    from engine.control import ControlServer

    # Listening before the engine publishes anything: an attached TUI replays the whole run.
    server = ControlServer(orch, orch.run_dir.path, orch.run_dir.read_events())
    await server.start()
    view.line(f"terminal UI: genesis-tui attach {orch.run_dir.path}")
    try:
        return await _run_engine(orch, view, resume)
    finally:
        await server.close()


async def _run_engine(orch: Orchestrator, view: HeadlessView, resume: bool) -> RunFinished:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupts = 0

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            view.line("stopping after the work in flight (press Ctrl-C again to abort now)…")
            orch.submit(StopRun())
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    task = asyncio.ensure_future(orch.run(resume=resume))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        return await task


def run_headless(
    orch: Orchestrator, *, resume: bool = False, console: Console | None = None
) -> int:
    """Run to the end, print the leaderboard; exit code 0 when completed, 1 when failed, 130 when stopped."""
    console = console or Console(stderr=False)
    tts = getattr(orch, "track", "lora") == "tts"
    metric = "val loss"
    if tts:
        metric = orch.fitness_metric()
    view = HeadlessView(console, orch.planned_generations, metric)
    orch.subscribe(view)
    with view.progress:
        finished = asyncio.run(_run(orch, view, resume))
    if orch.population:
        console.print(leaderboard_table(orch))
    run_path = orch.run_dir.path
    if finished.status == "completed":
        console.print(champion_summary(orch, finished))
        if not tts:
            test = getattr(orch, "test", {})
            if test.get("champion") is not None:
                loss = test["champion"]
                console.print(
                    f"champion test loss {loss:.4f} (perplexity {math.exp(min(loss, 50.0)):.2f}) "
                    "on rows selection never saw"
                )
            console.print(compute_summary(orch.compute))
            console.print(f"report: {run_path / 'report.json'}")
        if finished.export_dir:
            console.print(f"champion adapter: {finished.export_dir}")
        if finished.merged_dir:
            console.print(
                f"champion merged into its base: {finished.merged_dir}",
                markup=False,
                highlight=False,
            )
        console.print(f"run directory: {run_path}")
        return 0
    resume_hint = f"resume with: genesis-tui --resume {run_path} --headless"
    if finished.status == "stopped":
        console.print(f"run stopped ({finished.reason}); {resume_hint}")
        return 130
    print(
        f"genesis-tui: the run failed: {finished.reason} — the event log is {run_path / 'events.jsonl'}; {resume_hint}",
        file=sys.stderr,
    )
    return 1
