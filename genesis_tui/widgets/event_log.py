"""The Log pane: engine events in words, warnings and errors, every command acknowledgement."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from rich.text import Text
from textual.widgets import RichLog

from engine.events import (
    CheckpointWritten,
    CommandAck,
    EnginePaused,
    EvaluationFinished,
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
    TeacherAnswers,
    TeacherLogits,
    TestReport,
    TrainFinished,
    WorkerState,
)
from genesis_tui.link import Disconnected

LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}


def describe(e: Event, metric: str = "val loss", track: str = "llm") -> tuple[str, str] | None:
    """(level, line) for an event worth a log line, else None (steps go to the Loss pane).

    ``metric`` names −fitness and ``track`` the run's track, both as its RunStarted says."""
    if isinstance(e, Disconnected):
        return "error", f"engine link lost: {e.reason}"
    if isinstance(e, (PruneReport, TeacherAnswers)):
        return "info", e.summary
    if isinstance(e, TeacherLogits):
        if e.id is not None:
            return None  # online: one per individual, visible as the teacher's busy time
        if e.hit:
            return "info", f"teacher logit cache reused ({e.rows} rows): {e.path}"
        return "info", f"teacher logit cache built: {e.rows} rows in {e.seconds:.1f}s → {e.path}"
    if isinstance(e, RunStarted):
        what = (
            f"resumed after generation {e.resumed_from}"
            if e.resumed_from is not None
            else "started"
        )
        text = (
            f"run {e.profile} {what}: {e.generations} generations × {e.population_size} "
            f"individuals, seed {e.seed} — {e.run_dir}"
        )
        if e.remote_code:
            return "warning", text + " — " + remote_code_note(e.remote_code)
        return "info", text
    if isinstance(e, RunFinished):
        level = {"completed": "info", "stopped": "warning"}.get(e.status, "error")
        text = f"run {e.status}"
        if e.champion:
            text += f": champion {e.champion} ({metric} {-(e.champion_fitness or 0):.4f})"
        if e.export_dir:
            text += f" → {e.export_dir}"
        if e.reason:
            text += f" — {e.reason}"
        return level, text
    if isinstance(e, EnginePaused):
        return "info", "engine paused" if e.paused else "engine resumed"
    if isinstance(e, Log):
        return e.level, e.message
    if isinstance(e, WorkerState):
        if e.state in ("busy", "idle"):
            return None
        level = "error" if e.state == "dead" else "info"
        pid = f" pid {e.pid}" if e.pid else ""
        return level, f"worker {e.worker} ({e.role}) on {e.device}{pid}: {e.state}" + (
            f" — {e.detail}" if e.detail else ""
        )
    if isinstance(e, ReferenceReport):
        who = "untrained student" if e.model == "student" else "teacher"
        return (
            "info",
            f"{who}: val loss {e.val_loss:.4f} (ppl {e.perplexity:.2f}) in {e.seconds:.1f}s",
        )
    if isinstance(e, GenerationStarted):
        verb = "scoring" if track == "tts" else "training"  # style genomes are not trained
        return "info", f"generation {e.generation}: {verb} {len(e.to_train)} individuals"
    if isinstance(e, IndividualUpdate):
        if e.status == "failed":
            return "error", f"{e.id} failed: {e.reason}"
        if e.status == "culled" and e.reason == "culled by the operator":
            return "warning", f"{e.id} culled by the operator"
        return None
    if isinstance(e, TrainFinished):
        rate = e.tokens / max(e.seconds, 1e-9)
        return (
            "info",
            f"  trained {e.id} on {e.worker}: {e.steps} steps, loss {e.loss:.4f}, {rate:.0f} tok/s",
        )
    if isinstance(e, EvaluationFinished):
        return "info", f"  evaluated {len(e.ids)} on {e.worker} in {e.seconds:.1f}s"
    if isinstance(e, GenerationFinished):
        return "info", (
            f"generation {e.generation} done in {e.seconds:.1f}s: {metric} best {-e.best:.4f} · "
            f"mean {-e.mean:.4f} · worst {-e.worst:.4f} · champion {e.champion}"
        )
    if isinstance(e, CheckpointWritten):
        return "info", f"  checkpoint: {e.path}"
    if isinstance(e, TestReport):
        return "info", e.summary
    if isinstance(e, Exported):
        loss = "" if e.val_loss is None else f" (val loss {e.val_loss:.4f})"
        merged = (
            f"; merged into its base → {e.merged} (a plain transformers checkpoint)"
            if e.merged
            else ""
        )
        return "info", f"exported {e.id} → {e.path}{loss}{merged}"
    if isinstance(e, CommandAck):
        what = " ".join(
            [str(e.command.get("kind"))] + [f"{k}={v}" for k, v in e.command.items() if k != "kind"]
        )
        return (
            "info" if e.ok else "error"
        ), f"command {what}: {'ok' if e.ok else 'refused'} — {e.detail}"
    return None


class EventLog(RichLog):
    """RichLog wraps a line once, when it is written, to the width it has then. Hidden under
    another tab it has none (RichLog then falls back to ``min_width``: lines cut at 20 columns),
    so lines are written only while the log is laid out; those that arrive meanwhile wait, and
    every line is wrapped again when the log's width changes (a resized terminal)."""

    # RichLog's default min_width (78) made lines wider than an 80-column terminal's log and cut
    # their ends; a stable gutter keeps the width the same before and after the scrollbar appears.
    DEFAULT_CSS = "EventLog { scrollbar-gutter: stable; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(
            max_lines=5000, min_width=20, wrap=True, markup=False, highlight=False, **kwargs
        )
        self.lines_by_level = {"info": 0, "warning": 0, "error": 0}
        self._failed: set[str] = set()
        self.plain: deque[str] = deque(maxlen=5000)  # the text of each line, for tests and search
        self._texts: deque[Text] = deque(maxlen=5000)  # each line as written, to wrap again
        self._unwritten = 0  # the last lines of _texts not yet written (the log had no width)
        self._wrap_width = 0  # the width the written lines were wrapped to
        self.track, self.metric = "llm", "val loss"  # as the run's RunStarted says
        self.border_title = "Log"

    def _width(self) -> int:
        """The width lines wrap to now; 0 while hidden or not yet laid out."""
        return self.scrollable_content_region.width if self._size_known else 0

    def _put(self, text: Text) -> None:
        self._texts.append(text)
        width = self._width()
        if width > 0 and width == self._wrap_width and not self._unwritten:
            self.write(text)
        else:
            self._unwritten = min(self._unwritten + 1, len(self._texts))
            self._catch_up()

    def on_resize(self) -> None:
        # After RichLog's own handler, which learns the size the first time.
        self.call_later(self._catch_up)

    def _catch_up(self) -> None:
        width = self._width()
        if width <= 0:
            return
        if width != self._wrap_width:
            self.clear()
            todo = list(self._texts)
        else:
            todo = list(self._texts)[len(self._texts) - self._unwritten :]
        self._wrap_width, self._unwritten = width, 0
        for text in todo:
            self.write(text)

    def apply(self, events: Iterable[Event]) -> int:
        """Write a line per event worth one; return how many were warnings or errors."""
        alarms = 0
        for e in events:
            if isinstance(e, RunStarted):
                self.track, self.metric = e.track, e.metric
            elif self.track != "tts" and is_style(e):  # a log from before RunStarted.track
                self.track, self.metric = "tts", "score"
            d = describe(e, self.metric, self.track)
            if d is None:
                continue
            level, line = d
            # The engine reports a failed training twice (the status, then a Log line): once here.
            if isinstance(e, IndividualUpdate) and e.status == "failed":
                self._failed.add(e.id)
            elif isinstance(e, Log) and any(line.startswith(f"{i} failed") for i in self._failed):
                continue
            self.lines_by_level[level] = self.lines_by_level.get(level, 0) + 1
            alarms += level in ("warning", "error")
            self.plain.append(line)
            stamp = time.strftime("%H:%M:%S", time.localtime(e.ts))
            tag = {"warning": "WARN ", "error": "ERROR "}.get(level, "")
            style = LEVEL_STYLE.get(level, "")
            self._put(Text.assemble((stamp + " ", "bright_black"), (tag, style), (line, style)))
        return alarms


def is_style(e: Event) -> bool:
    """An individual of the TTS track (a style genome)."""
    return isinstance(e, IndividualUpdate) and (e.genome or {}).get("kind") == "style"


def remote_code_note(models: list[str]) -> str:
    """What trust_remote_code means, said where the operator looks."""
    return (
        f"trust_remote_code is on for the {' and the '.join(models)}: Python code from the "
        "model's own repository runs in the worker processes"
    )
