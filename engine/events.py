"""The language both sides speak: events (engine → UI, run log) and commands (UI → engine).

Every event and command is a small frozen dataclass that round-trips through JSON, so the same
objects go to ``events.jsonl``, to a headless progress display, to the TUI, and (later) over the
control socket to an attached TUI.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

_EVENT_TYPES: dict[str, type[Event]] = {}
_COMMAND_TYPES: dict[str, type[Command]] = {}


def _register(registry: dict, cls: type) -> type:
    registry[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class Event:
    """Base of all events. ``kind`` names the type in JSON; ``ts`` is the wall-clock time."""

    kind: ClassVar[str] = "event"
    ts: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(_EVENT_TYPES, cls)


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form; unknown fields are ignored so old logs stay readable."""
    kind = data.get("kind")
    cls = _EVENT_TYPES.get(kind or "")
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# --- run lifecycle ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    profile: str
    seed: int
    generations: int
    population_size: int
    resumed_from: int | None = None  # generation resumed after, when resuming
    # The models loaded with trust_remote_code (their repository's Python runs in the workers):
    # "student", "teacher"; the UI keeps this in sight for the whole run.
    remote_code: list[str] = field(default_factory=list)
    # "llm" (LoRA adapters: pause, promote, cull, export apply) or "tts" (style genomes, scored
    # only: the engine's pause and stop are the operator's commands); logs without it are "llm".
    track: str = "llm"
    # What −fitness is, for displays: "val loss" (llm), "MCD" or "MCD+tempo" (tts).
    metric: str = "val loss"


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    status: str  # completed | stopped | failed
    champion: str | None = None
    champion_fitness: float | None = None
    export_dir: str | None = None
    reason: str = ""
    merged_dir: str | None = None  # the champion merged into its base (--merge)


@dataclass(frozen=True)
class EnginePaused(Event):
    kind: ClassVar[str] = "engine_paused"
    paused: bool  # True: paused, False: running again


@dataclass(frozen=True)
class Log(Event):
    kind: ClassVar[str] = "log"
    level: str  # info | warning | error
    message: str


# --- workers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerState(Event):
    kind: ClassVar[str] = "worker_state"
    worker: str  # e.g. "teacher", "coliseum-0"
    role: str  # teacher | coliseum
    device: str
    state: str  # starting | ready | busy | idle | dead | stopped
    pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class ReferenceReport(Event):
    """A reference score on the validation split: the untrained student (the floor every
    individual should beat) or the teacher (the target of the specialisation)."""

    kind: ClassVar[str] = "reference"
    model: str  # student | teacher
    val_loss: float
    perplexity: float
    seconds: float


# --- generations and individuals --------------------------------------------------------------


@dataclass(frozen=True)
class GenerationStarted(Event):
    kind: ClassVar[str] = "generation_started"
    generation: int
    to_train: list[str]


@dataclass(frozen=True)
class IndividualUpdate(Event):
    """A snapshot of one individual whenever its status or scores change."""

    kind: ClassVar[str] = "individual"
    id: str
    generation: int
    status: str  # queued | training | evaluating | evaluated | paused | elite | promoted | culled | failed
    rank: int
    alpha: float
    learning_rate: float
    parents: list[str]
    operator: str
    fitness: float | None = None
    val_loss: float | None = None
    perplexity: float | None = None
    reason: str = ""
    genome: dict[str, Any] = field(default_factory=dict)  # the whole genome (to_dict)


@dataclass(frozen=True)
class TrainProgress(Event):
    kind: ClassVar[str] = "train_progress"
    id: str
    step: int
    steps: int
    loss: float
    terms: dict[str, float] = field(
        default_factory=dict
    )  # e.g. {"ce": 2.1}; distillation adds "kd"


@dataclass(frozen=True)
class TrainFinished(Event):
    kind: ClassVar[str] = "train_finished"
    id: str
    worker: str
    steps: int
    loss: float
    tokens: int
    seconds: float


@dataclass(frozen=True)
class EvaluationFinished(Event):
    kind: ClassVar[str] = "evaluation_finished"
    worker: str
    ids: list[str]
    tokens: int
    seconds: float


@dataclass(frozen=True)
class GenerationFinished(Event):
    kind: ClassVar[str] = "generation_finished"
    generation: int
    best: float
    mean: float
    worst: float
    champion: str
    seconds: float
    # The run's compute so far: train_steps, train_tokens, eval_tokens, teacher_rows, teacher_tokens
    compute: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TestReport(Event):
    """The held-out test split, scored once at the end (selection never saw it): the champion,
    the untrained student and the teacher, where each could be scored."""

    kind: ClassVar[str] = "test_report"
    champion: str
    rows: int
    champion_loss: float
    student_loss: float | None = None
    teacher_loss: float | None = None

    @property
    def summary(self) -> str:
        import math

        text = (
            f"test split ({self.rows} rows, never used for selection): champion {self.champion} "
            f"loss {self.champion_loss:.4f} (perplexity {math.exp(min(self.champion_loss, 50.0)):.2f})"
        )
        if self.student_loss is not None:
            text += f" · untrained student {self.student_loss:.4f}"
        if self.teacher_loss is not None:
            text += f" · teacher {self.teacher_loss:.4f}"
            if self.student_loss is not None and self.student_loss > self.teacher_loss:
                closed = (self.student_loss - self.champion_loss) / (
                    self.student_loss - self.teacher_loss
                )
                text += f" · closes {100 * closed:.0f}% of the gap"
        return text


@dataclass(frozen=True)
class CheckpointWritten(Event):
    kind: ClassVar[str] = "checkpoint"
    generation: int
    path: str


@dataclass(frozen=True)
class Exported(Event):
    """An adapter exported into ``path`` (PEFT adapter, merge.yaml, lineage.json, README.md);
    ``merged``: where it was also merged into its base (a plain transformers checkpoint)."""

    kind: ClassVar[str] = "exported"
    id: str
    path: str
    val_loss: float | None = None
    merged: str | None = None


@dataclass(frozen=True)
class TeacherLogits(Event):
    """The teacher's top-k log-probabilities for distillation: the whole training split into the
    logit cache (``hit``: an existing cache was reused, no forward pass), or — online — the rows
    one individual trains on."""

    kind: ClassVar[str] = "teacher_logits"
    rows: int
    seconds: float
    hit: bool = False
    path: str | None = None  # the cache file
    id: str | None = None  # the individual (online mode)


@dataclass(frozen=True)
class TeacherAnswers(Event):
    """Sequence-level distillation: the teacher's greedy answers to every training prompt, which
    the students learn instead of the data's answers (``hit``: a file with the same key was
    reused, nothing generated)."""

    kind: ClassVar[str] = "teacher_answers"
    rows: int
    seconds: float
    hit: bool
    path: str

    @property
    def summary(self) -> str:
        if self.hit:
            return f"teacher answers reused ({self.rows} prompts): {self.path}"
        return f"teacher answered {self.rows} prompts in {self.seconds:.1f}s → {self.path}"


@dataclass(frozen=True)
class PruneReport(Event):
    """The student was pruned before evolution (``prune_report.json`` in the run has every figure)."""

    kind: ClassVar[str] = "prune_report"
    path: str  # the pruned checkpoint the coliseum loads
    removed: list[int]
    blocks_before: int
    blocks_after: int
    params_before: int
    params_after: int
    perplexity_before: float
    perplexity_after: float
    tokens_per_s_before: float
    tokens_per_s_after: float
    reused: bool = False  # a resumed run found its pruned checkpoint
    mlp_width_before: int | None = None  # MLP channels per block, when width-pruned
    mlp_width_after: int | None = None
    layer_score: str | None = None  # influence | angular: how the removed blocks were chosen
    heads_before: int | None = None  # attention heads per block, when head-pruned
    heads_after: int | None = None
    kv_heads_after: int | None = None
    sparsity_after: float | None = None  # Wanda: zero fraction of the decoder's linear weights

    @property
    def summary(self) -> str:
        how = "pruning reused" if self.reused else "student pruned"
        width = (
            f"MLP width {self.mlp_width_before} → {self.mlp_width_after}, "
            if self.mlp_width_after is not None
            else ""
        )
        if self.heads_after is not None and self.heads_after != self.heads_before:
            width = (
                f"heads {self.heads_before} → {self.heads_after} (KV {self.kv_heads_after}), "
                + width
            )
        if self.sparsity_after:
            width += f"sparsity {self.sparsity_after:.0%}, "
        score = f" by {self.layer_score}" if self.layer_score and self.removed else ""
        return (
            f"{how}: blocks {self.blocks_before} → {self.blocks_after} (removed {self.removed}"
            f"{score}), {width}"
            f"params {self.params_before / 1e6:.2f}M → {self.params_after / 1e6:.2f}M, "
            f"perplexity {self.perplexity_before:.2f} → {self.perplexity_after:.2f}, "
            f"{self.tokens_per_s_before:.0f} → {self.tokens_per_s_after:.0f} tok/s"
        )


@dataclass(frozen=True)
class AudioSample(Event):
    """A sample WAV written for an individual (the TTS track writes one per generation for the
    champion); the TUI's audio pane shows and plays the selected individual's latest."""

    kind: ClassVar[str] = "audio_sample"
    id: str
    generation: int
    path: str  # a WAV file (soundfile can read it)
    sample_rate: int
    seconds: float
    text: str = ""  # what it says, when known


@dataclass(frozen=True)
class CommandAck(Event):
    """Every operator command is acknowledged (and so written to the event log)."""

    kind: ClassVar[str] = "command_ack"
    command: dict[str, Any]
    ok: bool
    detail: str = ""


# --- commands (UI → engine) -------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    kind: ClassVar[str] = "command"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(_COMMAND_TYPES, cls)


def command_from_dict(data: dict[str, Any]) -> Command:
    cls = _COMMAND_TYPES.get(data.get("kind") or "")
    if cls is None:
        raise ValueError(f"unknown command kind {data.get('kind')!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class PauseEngine(Command):
    """Pause (or, with ``paused=False``, resume) the whole engine at the next safe point."""

    kind: ClassVar[str] = "pause_engine"
    paused: bool = True


@dataclass(frozen=True)
class PauseIndividual(Command):
    """A paused individual is not trained, evaluated, selected or culled until resumed."""

    kind: ClassVar[str] = "pause_individual"
    id: str
    paused: bool = True


@dataclass(frozen=True)
class Promote(Command):
    """The individual survives into the next generation as an elite, whatever its fitness."""

    kind: ClassVar[str] = "promote"
    id: str


@dataclass(frozen=True)
class Cull(Command):
    kind: ClassVar[str] = "cull"
    id: str


@dataclass(frozen=True)
class ExportIndividual(Command):
    kind: ClassVar[str] = "export"
    id: str


@dataclass(frozen=True)
class StopRun(Command):
    """Stop after the current step; the last complete generation stays resumable."""

    kind: ClassVar[str] = "stop"
