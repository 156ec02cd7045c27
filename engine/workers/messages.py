"""Typed messages between the orchestrator and its worker processes.

Adapters travel as safetensors bytes (``safetensors.torch.save``), not as shared-memory tensors:
bytes pickle through any queue or object store (the Ray executor moves the same messages), and
no file descriptors are held open per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- tasks: orchestrator → worker -------------------------------------------------------------


@dataclass(frozen=True)
class TrainTask:
    job: int
    id: str
    genome: dict[str, Any]
    adapter: bytes | None  # None: fresh PEFT initialisation seeded by the genome's seed
    steps: int
    # Distillation (one of): the teacher's logit cache file, or (online) the teacher's top-k for
    # exactly the rows this individual trains on, as safetensors bytes.
    kd_path: str | None = None
    kd_blob: bytes | None = None
    # Sequence-level distillation: the teacher's answers to the training prompts (a JSON file);
    # the student learns them, tokenized with its own tokenizer, instead of the data's answers.
    answers_path: str | None = None
    # After an out-of-memory error the orchestrator retries with each drawn micro-batch split into
    # this many pieces (gradients accumulated): the same rows and the same effective batch, less
    # activation memory at once.
    splits: int = 1
    # Under Ray, the teacher's answers file as bytes (an object-store reference until the actor
    # fetches it); the actor writes it on its node and points answers_path there.
    answers_blob: Any = None
    # Continued training (an individual that keeps training across generations, or a copy of
    # one): AdamW's state as safetensors bytes (engine.workers.optim), None for a fresh optimizer;
    # and the seed of this stretch's batch draws (None: the genome's seed), so a stretch that
    # follows another sees new batches.
    optimizer: bytes | None = None
    draw_seed: int | None = None


@dataclass(frozen=True)
class EvalTask:
    job: int
    items: list[
        tuple[str, dict[str, Any] | None, bytes | None]
    ]  # (id, genome, adapter); None, None: the bare base
    # After an out-of-memory error: fewer rows in one forward pass than [data] eval_rows_per_pass
    # (fewer adapters share a pass, and a batch is cut when one adapter's is larger).
    rows_per_pass: int | None = None
    # The split scored: "validation" (what selection sees) or "test" (reported, never selected on)
    split: str = "validation"


@dataclass(frozen=True)
class ExportTask:
    job: int
    id: str
    genome: dict[str, Any]
    adapter: bytes
    out_dir: str
    merge: bool = False  # also merge it into the base with mergekit, into <out_dir>/merged
    # How merge.yaml names the base model, relative to out_dir where it lies in the run directory
    # (engine.export.recipe_ref, on the head: the same recipe whatever node exports); None: the
    # worker's own base path, absolute.
    base_ref: str | None = None
    # More files written into the export directory before it appears (name -> text): the
    # orchestrator's lineage.json and model card README.md (it replaces PEFT's template).
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherEvalTask:
    job: int
    split: str = "validation"  # or "test"


@dataclass(frozen=True)
class TeacherLogitsTask:
    """The teacher's top-k log-probabilities on the training split: the whole split into the cache
    directory (reused when a cache with the same key is already there), or — online, with
    ``seed`` and ``steps`` — only the rows that one individual's training draws."""

    job: int
    cache_dir: str | None = None
    seed: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class TeacherAnswersTask:
    """Sequence-level distillation: the teacher answers every training prompt (greedy) into a
    JSON file in ``cache_dir``, reused when one with the same key is already there."""

    job: int
    cache_dir: str


@dataclass(frozen=True)
class Shutdown:
    pass


# --- results: worker → orchestrator -----------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    worker: str
    pid: int
    device: str
    detail: str = ""


@dataclass(frozen=True)
class Progress:
    worker: str
    job: int
    id: str
    step: int
    steps: int
    loss: float
    terms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainDone:
    worker: str
    job: int
    id: str
    adapter: bytes
    losses: list[float]
    tokens: int
    seconds: float
    optimizer: bytes | None = None  # AdamW's state after the last step (engine.workers.optim)


@dataclass(frozen=True)
class EvalDone:
    worker: str
    job: int
    scores: dict[str, tuple[float, int]]  # id -> (mean token loss, tokens scored)
    tokens: int
    seconds: float


@dataclass(frozen=True)
class ExportDone:
    worker: str
    job: int
    id: str
    path: str
    val_loss: float  # the exported adapter's validation loss, measured through the plain PEFT path
    merged: str | None = None  # the merged model's directory (ExportTask.merge)


@dataclass(frozen=True)
class TeacherDone:
    worker: str
    job: int
    val_loss: float
    tokens: int
    seconds: float


@dataclass(frozen=True)
class LogitsDone:
    worker: str
    job: int
    path: str | None  # the cache file (cache mode)
    blob: bytes | None  # the rows' top-k as safetensors bytes (online mode)
    rows: int
    seconds: float
    hit: bool  # an existing cache was reused: the teacher ran no forward pass
    note: str = ""  # why an existing cache was not reused (unreadable: computed again)


@dataclass(frozen=True)
class AnswersDone:
    worker: str
    job: int
    path: str
    rows: int
    seconds: float
    hit: bool  # an existing file was reused: the teacher generated nothing
    note: str = ""  # why an existing file was not reused (unreadable: generated again)
    blob: bytes | None = None  # under Ray: the file's bytes (it lives on the teacher's node)


@dataclass(frozen=True)
class JobFailed:
    worker: str
    job: int
    reason: str
    kind: str = "error"  # error | oom


@dataclass(frozen=True)
class WorkerFatal:
    """The worker could not start (its model or data could not be loaded); it has exited."""

    worker: str
    reason: str


# --- the TTS track: style genomes (engine/tts/worker.py) ----------------------------------------


@dataclass(frozen=True)
class StyleEvalTask:
    """Score style genomes: ``items`` are (id, K logits); one batched forward pass per sentence."""

    job: int
    items: list[tuple[str, list[float]]]


@dataclass(frozen=True)
class StyleEvalDone:
    worker: str
    job: int
    mcd: dict[str, list[float]]  # id -> MCD (dB) per sentence, against espeak-ng's target audio
    seconds: float
    # id -> ln(the genome's duration / espeak-ng's) per sentence: > 0 speaks slower than the target
    tempo: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StyleRenderTask:
    """Speak ``text`` (None: the first scored sentence) in one genome's style, through Griffin-Lim."""

    job: int
    id: str
    logits: list[float]
    text: str | None = None


@dataclass(frozen=True)
class StyleRenderDone:
    worker: str
    job: int
    id: str
    samples: bytes  # float32 little-endian
    sample_rate: int
    text: str
