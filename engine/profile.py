"""The run profile: a TOML file describing one evolution run, validated into frozen pydantic models.

    load_profile(path)            read and validate a profile file
    parse_profile(text, source=)  the same from text (``source`` names the file in messages and is
                                  the directory relative paths are resolved against)
    schema_help()                 every section and field, generated from the models
    Profile.to_toml()             the resolved profile as canonical TOML (stored in the run directory)

Every problem becomes a :class:`~engine.errors.ProfileError` whose message is one paragraph naming
the file, the line, the section, the key and the value, what is wrong and what is allowed, e.g.::

    profiles/bad.toml, line 14, [evolution] elitism = 8: must be less than [population] size (8) — …

pydantic's own messages are never shown: :func:`_convert` turns each validation error into such a
sentence, using the models' field metadata (type, range, choices, description).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from engine.errors import ProfileError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "DataConfig",
    "DevicesConfig",
    "EvolutionConfig",
    "ModelSpec",
    "PopulationConfig",
    "Profile",
    "ProfileError",
    "RunConfig",
    "TeacherSpec",
    "TTSConfig",
    "TrainingConfig",
    "load_profile",
    "parse_profile",
    "schema_help",
]

Dtype = Literal["float32", "bfloat16", "float16"]
DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_DEVICE_KEYS = ("device", "devices", "device_map", "device_placement")


# ---------------------------------------------------------------------------------------------------
# Problems raised inside validators carry their own location and sentence
# ---------------------------------------------------------------------------------------------------


class _Problem(ValueError):
    """A problem found by a validator: ``key`` (and optionally ``section``) locate it precisely."""

    def __init__(self, message: str, *, key: str | None = None, section: str | None = None) -> None:
        super().__init__(message)
        self.message, self.key, self.section = message, key, section


class _Problems(ValueError):
    """Several cross-field problems at once."""

    def __init__(self, problems: list[_Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True)


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir") or Path.cwd())


def _resolve(value: Any, info: ValidationInfo) -> Any:
    """A path string → an absolute Path, relative ones taken from the profile file's directory."""
    if isinstance(value, (str, Path)):
        if isinstance(value, str) and not value.strip():
            raise _Problem("must not be empty: give a path")
        return (_base_dir(info) / Path(value).expanduser()).resolve()
    return value  # wrong type: reported by the field's own (strict) validation


def _looks_local(model: str, base: Path) -> bool:
    return model.startswith((".", "/", "~")) or (base / Path(model).expanduser()).exists()


# ---------------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------------


class RunConfig(BaseModel):
    """[run]"""

    model_config = _CONFIG

    name: str = Field(
        ...,
        pattern=NAME_PATTERN,
        description="the run's name; its run directory is <output_dir>/<name>-<date>-<time>",
    )
    seed: int = Field(
        0,
        ge=0,
        description="seed of every random choice; the same profile and seed give the same run",
    )
    output_dir: Path = Field(
        Path("runs"), description="directory under which run directories are created"
    )

    @field_validator("output_dir", mode="before")
    @classmethod
    def _path(cls, v: Any, info: ValidationInfo) -> Any:
        return _resolve(v, info)


class ModelSpec(BaseModel):
    """[student] (and [teacher], which adds ``enabled``): a model and how to load it; never its device."""

    model_config = _CONFIG

    model: str = Field(
        ...,
        min_length=1,
        description='a local model directory or a Hugging Face hub id such as "BioMistral/BioMistral-7B"',
    )
    revision: str | None = Field(
        None, description="hub branch, tag or commit to load (unset: the default branch)"
    )
    dtype: Dtype = Field("float32", description="dtype the weights are loaded in")
    load_in_4bit: bool = Field(
        False, description="load the weights 4-bit quantized with bitsandbytes (cpu or cuda only)"
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit quantization type, when load_in_4bit = true"
    )
    compute_dtype: Dtype = Field(
        "bfloat16", description="dtype of the computations of a 4-bit model"
    )
    trust_remote_code: bool = Field(
        False, description="allow Python code shipped with a hub model to run"
    )
    config: Path | None = Field(
        None,
        description="a directory holding the model's config.json (or that file itself), read only "
        "by --check's memory estimate and vocabulary check when the model's own config is not on "
        "disk — a hub id not downloaded yet; the shipped assets/configs/ hold the rig profiles' "
        "models (unset: the model's own config, when it is there)",
    )

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, v: Any, info: ValidationInfo) -> Any:
        path = _resolve(v, info)
        if isinstance(path, Path) and not (
            path.is_file() or (path.is_dir() and (path / "config.json").is_file())
        ):
            what = "is a directory without a config.json in it" if path.is_dir() else "is missing"
            raise _Problem(
                f"the model config {path} {what} — give a directory holding the model's "
                "config.json, or the config.json file (relative paths are resolved from the "
                "profile's directory)"
            )
        return path

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, str) or not v.strip():
            return v  # type / emptiness reported by the field itself
        base = _base_dir(info)
        if _looks_local(v, base):
            return str((base / Path(v).expanduser()).resolve())
        if not HUB_ID_RE.match(v):
            raise _Problem(
                "is neither an existing local directory nor a Hugging Face hub id (owner/name, e.g. "
                '"BioMistral/BioMistral-7B"); local directories are written as paths starting with '
                "'.', '/' or '~'"
            )
        return v

    @model_validator(mode="after")
    def _exists(self) -> ModelSpec:
        if (
            getattr(self, "enabled", True)
            and self.model.startswith("/")
            and not Path(self.model).is_dir()
        ):
            what = "is a file, not a model directory" if Path(self.model).exists() else "is missing"
            raise _Problem(
                f"the local model directory {self.model} {what} — a model written as a path "
                "(starting with '.', '/' or '~') must be an existing directory; otherwise give a "
                'Hugging Face hub id such as "BioMistral/BioMistral-7B"',
                key="model",
            )
        return self


class TeacherSpec(ModelSpec):
    """[teacher]: a model spec that can be switched off."""

    enabled: bool = Field(True, description="false keeps the section but runs without a teacher")


class DataConfig(BaseModel):
    """[data]"""

    model_config = _CONFIG

    format: Literal["text", "alpaca", "mistral-inst"] = Field(
        ...,
        description="how the files are read: text (one example a line), alpaca or mistral-inst (JSONL)",
    )
    train: Path = Field(..., description="training data file")
    validation: Path = Field(..., description="held-out data file every individual is scored on")
    max_seq_len: int = Field(
        128, ge=8, le=32768, description="examples are truncated to this many tokens"
    )
    batch_size: int = Field(8, ge=1, le=4096, description="training micro-batch, in sequences")
    eval_batch_size: int = Field(
        16,
        ge=1,
        le=4096,
        description="validation sequences per individual per evaluation forward pass",
    )
    eval_rows_per_pass: int = Field(
        64,
        ge=1,
        le=65536,
        description="rows of one mixed-adapter evaluation pass: several individuals share a pass "
        "(rows ÷ eval_batch_size of them); a GPU wants hundreds, a CPU about 16",
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="use at most this many training examples (unset: all)"
    )
    max_val_examples: int | None = Field(
        None, ge=1, description="use at most this many validation examples (unset: all)"
    )
    test: Path | None = Field(
        None,
        description="held-out data file for the report only: the champion, the untrained student "
        "and the teacher are scored on it at the end; selection never sees it (unset: the "
        "validation file's rows after the first max_val_examples, when it has more)",
    )
    max_test_examples: int | None = Field(
        None, ge=1, description="use at most this many test examples (unset: all)"
    )

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _file(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        path = _resolve(v, info)
        if isinstance(path, Path) and not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "is missing"
            raise _Problem(
                f"the data file {path} {what} (relative paths are resolved from the profile's directory)"
            )
        return path


class PopulationConfig(BaseModel):
    """[population]"""

    model_config = _CONFIG

    size: int = Field(8, ge=2, le=4096, description="individuals (LoRA adapters) per generation")
    ranks: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [4, 8, 16],
        min_length=1,
        description="LoRA ranks an individual may have (each 1..4096, no duplicates)",
    )
    alpha_rule: Literal["ratio", "fixed"] = Field(
        "ratio",
        description="ratio: alpha = alpha_ratio × rank; fixed: alpha = alpha for every rank",
    )
    alpha_ratio: float = Field(
        2.0, gt=0, description='LoRA alpha per unit of rank, when alpha_rule = "ratio"'
    )
    alpha: float = Field(
        16.0, gt=0, description='LoRA alpha of every individual, when alpha_rule = "fixed"'
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[Annotated[str, Field(min_length=1)]] = Field(
        ["q_proj", "v_proj"],
        min_length=1,
        description="names of the student's modules that get LoRA adapters",
    )
    learning_rate_spread: float = Field(
        1.0,
        ge=1,
        description="an individual's learning rate is drawn log-uniformly in [lr/spread, lr×spread] around [training] learning_rate",
    )
    kd_alphas: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(
        None,
        min_length=1,
        description="distillation's cross-entropy weight as a gene: each random individual draws "
        "one of these values, a child takes a parent's and may move to a neighbouring value "
        "(mutation_rate); unset: every individual uses [distill] alpha, as the compute-matched "
        'fine-tune does (needs [distill] mode = "logits")',
    )
    weight_decays: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(
        None,
        min_length=1,
        description="AdamW's weight decay as a gene: each random individual draws one of these "
        "values, a child or continuation takes its parent's and may move to a neighbouring value "
        "(mutation_rate); unset: every individual uses [training] weight_decay, as the "
        "compute-matched fine-tune does",
    )

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, v: list[int]) -> list[int]:
        return sorted(_once(v, "rank", str))

    @field_validator("kd_alphas", "weight_decays")
    @classmethod
    def _values(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else sorted(_once(v, "value", str))

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        return _once(v, "module", repr)


def _once(v: list[Any], what: str, show: Callable[[Any], str]) -> list[Any]:
    """``v`` when no entry repeats; else the problem, naming the repeated entries."""
    dupes = sorted({x for x in v if v.count(x) > 1})
    if dupes:
        raise _Problem(
            f"lists {', '.join(show(x) for x in dupes)} more than once — each {what} may appear "
            "only once"
        )
    return v


class EvolutionConfig(BaseModel):
    """[evolution]"""

    model_config = _CONFIG

    generations: int = Field(
        4, ge=1, le=100000, description="generations to run (generation 0 is the random start)"
    )
    elitism: int = Field(
        2, ge=0, description="best individuals carried over unchanged; less than [population] size"
    )
    tournament_size: int = Field(
        3, ge=1, description="individuals per selection tournament; at most [population] size"
    )
    crossover: Literal["linear", "slerp", "ties", "dare"] = Field(
        "slerp", description="how two parents' adapters are merged into a child"
    )
    crossover_rate: float = Field(
        0.9,
        ge=0,
        le=1,
        description="probability a child comes from two parents rather than a copy of one",
    )
    density: float = Field(
        0.5, gt=0, le=1, description="fraction of each tensor kept by ties and dare crossover"
    )
    mutation_rate: float = Field(
        0.1, ge=0, le=1, description="probability that each tensor of a child gets noise"
    )
    mutation_scale: float = Field(
        0.05, ge=0, description="noise std, relative to each tensor's own RMS"
    )
    rank_mutation_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="probability a child's rank moves to a neighbouring value of [population] ranks",
    )
    continue_elites: bool = Field(
        False,
        description="each elite also gets a continuation child: its own adapter and AdamW state "
        "trained steps_per_generation more on new batches (learning rate perturbed by "
        "lr_perturbation), while the elite stays as it was — elites keep training, and a "
        "continuation that overfits loses to its parent (early stopping by selection)",
    )
    inherit_optimizer: bool = Field(
        True,
        description="a child copied from one parent (no crossover) at the parent's rank continues "
        "from its parent's AdamW state (PBT's exploit) instead of a cold optimizer",
    )
    lr_perturbation: float = Field(
        0.0,
        ge=0,
        le=10,
        description="PBT's explore: each child's learning rate is multiplied by 1 + this or "
        "divided by it, at random (0 = off: only mutation_rate's log-normal step, and only where "
        "[population] learning_rate_spread > 1)",
    )
    patience: int = Field(
        0,
        ge=0,
        le=1000,
        description="early stopping of lineages, with continue_elites: an elite whose "
        "continuations scored no better than it this many times gets no more continuations, and "
        "its place goes to a child bred by crossover or mutation (0 = off: elites always "
        "continue)",
    )
    soup: int = Field(
        0,
        ge=0,
        le=64,
        description="at the end, a greedy soup of up to this many of the best adapters: each next "
        "one joins the uniform average of their ΔW only if the average scores better on "
        "validation, and the soup is the champion if it beats the best individual (0 or 1 = off)",
    )
    sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None,
        description="the population's size in each generation, one entry per generation, e.g. "
        "[8, 4, 2, 2]: breadth early, depth late (successive halving); a generation smaller "
        "than the last keeps its best; unset: [population] size every generation",
    )


class TrainingConfig(BaseModel):
    """[training]"""

    model_config = _CONFIG

    steps_per_generation: int = Field(
        20,
        ge=1,
        le=10_000_000,
        description="optimizer steps each new individual trains per generation",
    )
    learning_rate: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="AdamW learning rate (the centre of [population] learning_rate_spread)",
    )
    gradient_accumulation: int = Field(
        1, ge=1, le=4096, description="micro-batches accumulated per optimizer step"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 = off)")
    oom_retries: int = Field(
        2,
        ge=0,
        le=16,
        description="after an out-of-memory error, retry an individual's training (or an "
        "evaluation) this many times, each with half the rows per forward pass — the same rows "
        "and effective batch, gradients accumulated; 0 = mark it failed at once",
    )
    loss: Literal["ce"] = Field(
        "ce", description="training loss: ce = cross-entropy on the response tokens"
    )


class DistillConfig(BaseModel):
    """[distill]"""

    model_config = _CONFIG

    mode: Literal["off", "logits", "sequence"] = Field(
        "off",
        description="off = cross-entropy on the labels only; logits = learn the teacher's "
        "temperature-softened next-token distribution (KL) plus alpha × cross-entropy — needs "
        "[teacher] with the student's tokenizer; sequence = the teacher answers every training "
        "prompt once (greedy, cached) and the students learn its answers with cross-entropy — "
        "works across tokenizers, needs a [data] format with prompts (alpaca or mistral-inst)",
    )
    temperature: float = Field(
        2.0, gt=0, le=100, description="softening temperature T of both distributions (loss × T²)"
    )
    alpha: float = Field(
        0.5, ge=0, le=100, description="weight of the cross-entropy term beside the KL term"
    )
    top_k: int = Field(
        32,
        ge=1,
        le=1_000_000,
        description="teacher probabilities kept per position (the rest is one tail bucket)",
    )
    max_new_tokens: int = Field(
        128,
        ge=1,
        le=8192,
        description="sequence mode: the most tokens the teacher generates per training prompt",
    )
    cache: bool = Field(
        True,
        description="true = the teacher scores the training split once and every generation "
        "(and a resumed run) reads the cache; false = online: the teacher scores each "
        "individual's batches as it trains (logits mode; sequence mode always caches)",
    )
    cache_dir: Path | None = Field(
        None,
        description="where logit caches are kept, keyed by teacher, tokenizer, data, T and top_k "
        "(default: .cache/logits under [run] output_dir)",
    )

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _path(cls, v: Any, info: ValidationInfo) -> Any:
        return _resolve(v, info)


class PruneConfig(BaseModel):
    """[prune]"""

    model_config = _CONFIG

    layers: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the student's decoder blocks to remove before evolution, chosen "
        "by layer_score (0 = no blocks removed; 0.25 of 8 blocks removes 2)",
    )
    layer_score: Literal["influence", "angular"] = Field(
        "influence",
        description="how the blocks to remove are chosen: influence = the blocks of lowest Block "
        "Influence (1 - cosine of each block's input and output), anywhere in the stack; angular "
        "= the contiguous run of blocks whose input and output hidden states are closest in "
        "angular distance (Gromov et al. 2024)",
    )
    heads: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of every block's attention (query) heads to remove, those of lowest "
        "importance (see importance; 0 = none). With grouped-query attention the same number of "
        "query heads goes from every key/value group, so the heads removed must be a multiple of "
        "the key/value heads (4 heads / 2 key/value heads: 0.5); a fraction that removes no "
        "head, every head, or that the groups cannot honour stops the run before any worker "
        "starts",
    )
    width: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of every remaining block's MLP channels to remove (Torch-Pruning; "
        "0 = none), ranked by importance; the residual width stays whole",
    )
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude",
        description="how MLP channels and attention heads are ranked: weight magnitude, or Taylor "
        "(|w · dL/dw| on the calibration rows)",
    )
    sparsity: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Wanda unstructured pruning, applied last: the fraction of the weights zeroed "
        "in every output row of every linear layer of the decoder blocks, those of lowest "
        "|weight| × input-activation norm (0 = off); saved dense with the zeros, so the file "
        "size and speed do not change",
    )
    calibration_rows: int = Field(
        64,
        ge=1,
        le=1_000_000,
        description="training rows the block scores, Taylor importance and Wanda's activation "
        "norms are measured on",
    )

    @property
    def active(self) -> bool:
        return self.layers > 0 or self.heads > 0 or self.width > 0 or self.sparsity > 0


class DevicesConfig(BaseModel):
    """[devices]"""

    model_config = _CONFIG

    executor: Literal["local", "ray"] = Field(
        "local",
        description="where workers run: local = processes on this machine (torch.multiprocessing); "
        "ray = Ray actors on any node of a Ray cluster (needs the ray extra: "
        "pip install 'genesis-tui[ray]'); the orchestrator, run directory and UI stay here",
    )
    ray_address: str = Field(
        "",
        description='with executor = "ray": the cluster to join — "" starts a private Ray instance '
        'on this machine for the run, "auto" joins the cluster this machine is part of (ray start), '
        '"ray://host:10001" a remote head through Ray Client',
    )
    teacher: str = Field("cpu", description="device of the teacher: cpu, cuda, cuda:N or mps")
    coliseum: list[str] = Field(
        ["cpu"],
        min_length=1,
        description="devices of the student workers, one worker process per entry",
    )
    threads_per_worker: int = Field(
        0, ge=0, le=256, description="CPU threads per worker (0 = auto: the cores shared out)"
    )
    gpu_memory_gb: float | dict[str, float] | None = Field(
        None,
        description="the memory of the profile's GPUs in GB (2^30 bytes, as nvidia-smi counts), "
        "for --check's memory estimate where the cards are not present — on another machine, or "
        'under Ray: a number (every GPU) or a table such as {"cuda:0" = 32, "cuda:1" = 32}; a '
        "card present here is measured instead (unset: cards that are not here get no verdict)",
    )

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise _Problem(
                'is not a device name — expected "cpu", "cuda", "cuda:N" (N = 0, 1, …) or "mps"'
            )
        return v

    @field_validator("gpu_memory_gb", mode="before")
    @classmethod
    def _gpu_memory(cls, v: Any) -> Any:
        def gb(x: Any, what: str) -> float:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise _Problem(f"{what} must be a number of GB, got {_got(x)}")
            if not 0 < x <= 100_000:
                raise _Problem(
                    f"{what} must be greater than 0 and at most 100000 GB, got {_num(x)}"
                )
            return float(x)

        if v is None:
            return v
        if isinstance(v, dict):
            out = {}
            for key, x in v.items():
                if not re.match(r"^(cuda(:\d+)?|mps)$", str(key)):
                    raise _Problem(
                        f"the table's key {_fmt(key)} is not a GPU device name — expected "
                        '"cuda:N" (N = 0, 1, …), "cuda" or "mps", each as a quoted key: '
                        '{"cuda:0" = 32, "cuda:1" = 32}'
                    )
                out[str(key)] = gb(x, f'the memory of "{key}"')
            return out
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return gb(v, "it")
        hint = (
            f" (write it without quotes: gpu_memory_gb = {v.strip()})"
            if isinstance(v, str) and _is_number(v, "a number")
            else ""
        )
        raise _Problem(
            f'expected a number of GB (every GPU) or a table such as {{"cuda:0" = 32, "cuda:1" = '
            f"32}}, got {_got(v)}{hint}"
        )

    @field_validator("coliseum")
    @classmethod
    def _coliseum(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if not DEVICE_RE.match(d)]
        if bad:
            raise _Problem(
                f'{_fmt(bad[0])} is not a device name — expected "cpu", "cuda", "cuda:N" (N = 0, 1, …) or "mps"'
            )
        return v


class TTSConfig(BaseModel):
    """[tts]: the style-evolution track — its presence makes the run a TTS run."""

    model_config = _CONFIG

    assets: Path | None = Field(
        None,
        description="the TTS student's directory (config.json + model.safetensors); unset: the "
        "shipped assets/tts",
    )
    voice: str = Field(
        "en-us", description="target style: espeak-ng voice or language (en-us, en-gb …)"
    )
    variant: str = Field(
        "f3", description='target style: espeak-ng voice variant (f3, m3, klatt …) or ""'
    )
    pitch: int = Field(70, ge=0, le=100, description="target style: base pitch, 0–100")
    rate: int = Field(
        200, ge=80, le=450, description="target style: speaking rate, words per minute"
    )
    pitch_range: int = Field(50, ge=0, le=100, description="target style: intonation range, 0–100")
    sentences: list[str] = Field(
        [],
        max_length=8,
        description="sentences every genome speaks and is scored on (mean MCD); empty: the first "
        "of the student's held-out evaluation sentences",
    )
    population: int = Field(
        50, ge=2, le=10000, description="style genomes per generation (individual 0 is neutral)"
    )
    init_scale: float = Field(
        1.0, ge=0, description="std of the random initial logits around neutral (all zeros)"
    )
    griffin_lim_iters: int = Field(
        32, ge=1, le=512, description="Griffin-Lim iterations per rendered genome"
    )
    tempo_weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description="dB added to a genome's MCD per unit of |ln(its duration / the target's)|, "
        "mean over the sentences: the MCD aligns the two by DTW and so barely hears the speaking "
        "rate; 0: fitness is −MCD alone; 10: speaking 10% too slow or fast costs about 1 dB",
    )
    devices: list[str] = Field(
        ["cpu"],
        min_length=1,
        description="devices of the style-coliseum workers, one worker process per entry; the "
        "population is shared out among them",
    )
    prune_sweep: list[float] = Field(
        [],
        max_length=20,
        description="channel-pruning ratios (each in [0, 1), e.g. [0, 0.1, 0.2, 0.3]) to sweep "
        "before the evolution (engine/tts/sweep.py: MCD and real-time factor at each, written to "
        "RUN/sweep/); the evolution then uses the sweet spot's pruned student; empty: no sweep",
    )
    prune_heal_steps: int = Field(
        200,
        ge=0,
        le=100000,
        description="the sweep distils each pruned copy from the unpruned student for this many "
        "Adam steps (8 sentences in random styles each; ~0.15 s a step on 2 CPU cores) before "
        "measuring it; 0: pruning alone, which costs 1–5 dB of MCD at ratios 0.2–0.5",
    )
    max_mcd_increase_db: float = Field(
        0.5,
        ge=0,
        description="the sweep's sweet spot: the fastest ratio whose MCD is at most this many dB "
        "above the unpruned student's",
    )

    @field_validator("assets", mode="before")
    @classmethod
    def _path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else _resolve(v, info)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if not DEVICE_RE.match(d)]
        if bad:
            raise _Problem(
                f'{_fmt(bad[0])} is not a device name — expected "cpu", "cuda", "cuda:N" (N = 0, 1, …) or "mps"'
            )
        return v

    @field_validator("prune_sweep")
    @classmethod
    def _prune_sweep(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0 <= r < 1]
        if bad:
            raise _Problem(f"has the ratio {bad[0]} — a pruning ratio is at least 0 and below 1")
        return v

    @field_validator("sentences")
    @classmethod
    def _sentences(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise _Problem("has an empty sentence — every sentence must have words to speak")
        return v

    @model_validator(mode="after")
    def _style(self) -> TTSConfig:
        from engine.tts.espeak import EspeakError, synthesize

        try:
            style = self.style()
        except ValueError as exc:
            raise _Problem(
                f"is not a valid target style: {exc}", key=_style_key(str(exc))
            ) from None
        try:  # unknown voices and variants are only found by espeak-ng itself (~5 ms)
            synthesize("a", style)
        except EspeakError as exc:
            key = "variant" if "variant" in str(exc).lower() and self.variant else "voice"
            raise _Problem(
                f"is not a usable target style: {exc.message.rstrip('.')}", key=key
            ) from None
        if self.assets is not None and not (self.assets / "config.json").is_file():
            raise _Problem(
                f"{self.assets} is not a TTS student directory (no config.json) — build one with "
                "`python -m engine.tts.build`, or leave assets unset for the shipped one",
                key="assets",
            )
        return self

    def style(self) -> Any:
        """The target style as an ``engine.tts.espeak.Style``."""
        from engine.tts.espeak import Style

        return Style(self.voice, self.variant, self.pitch, self.rate, self.pitch_range)

    def assets_dir(self) -> Path:
        from engine.tts.student import ASSETS_DIR

        return self.assets or ASSETS_DIR


def _style_key(message: str) -> str:
    for key in ("pitch_range", "pitch", "rate", "variant", "voice"):
        if f"Style.{key}" in message or message.startswith(key) or f" {key} " in message:
            return key
    return "voice"


_SECTION_DOC = {
    "run": "the run's identity: name, seed and where run directories go",
    "student": "the model whose LoRA adapters are evolved",
    "teacher": "the reference model, scored on the validation data; no section, or enabled = false, means no teacher",
    "data": "training and validation data",
    "population": "the individuals: how many, and the LoRA hyper-parameters they are drawn from",
    "evolution": "selection, crossover and mutation between generations",
    "training": "how each new individual is trained every generation",
    "devices": "where the teacher and the student workers (the coliseum) run; the only place devices are set",
    "distill": "knowledge distillation from the teacher: the training loss and the teacher's logit cache",
    "tts": "the TTS track: evolve the style-token weights of the TTS student towards a target espeak-ng style (fitness = −MCD); with [tts], [student], [teacher] and [data] are not used",
    "prune": "make the student lean before evolution — decoder blocks, attention heads, MLP channels, then single weights (Wanda) removed — and let the population heal it",
}


class Profile(BaseModel):
    """A validated run profile; relative paths already resolved against the profile file's directory."""

    model_config = _CONFIG

    run: RunConfig = Field(..., description=_SECTION_DOC["run"])
    student: ModelSpec | None = Field(None, description=_SECTION_DOC["student"])
    teacher: TeacherSpec | None = Field(None, description=_SECTION_DOC["teacher"])
    data: DataConfig | None = Field(None, description=_SECTION_DOC["data"])
    population: PopulationConfig = Field(
        default_factory=PopulationConfig, description=_SECTION_DOC["population"]
    )
    evolution: EvolutionConfig = Field(
        default_factory=EvolutionConfig, description=_SECTION_DOC["evolution"]
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description=_SECTION_DOC["training"]
    )
    devices: DevicesConfig = Field(
        default_factory=DevicesConfig, description=_SECTION_DOC["devices"]
    )
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description=_SECTION_DOC["distill"]
    )
    prune: PruneConfig = Field(default_factory=PruneConfig, description=_SECTION_DOC["prune"])
    tts: TTSConfig | None = Field(None, description=_SECTION_DOC["tts"])
    source: Path = Field(Path("profile.toml"), description="the profile file (not a TOML key)")

    def generation_sizes(self) -> list[int]:
        """The population's size in each generation ([evolution] sizes, or the constant size)."""
        evo = self.evolution
        return list(evo.sizes) if evo.sizes else [self.population.size] * evo.generations

    def planned_train_steps(self) -> int:
        """The optimizer steps a run of this profile spends, if nothing fails or is paused: what a
        compute-matched baseline gets (genesis-tui baseline)."""
        steps, evo = self.training.steps_per_generation, self.evolution
        sizes = self.generation_sizes()
        new = sizes[0] + sum(max(0, n - min(evo.elitism, n)) for n in sizes[1:])
        return steps * new

    def _ray_problems(self) -> list[_Problem]:
        import importlib.util

        out = []
        if importlib.util.find_spec("ray") is None:
            out.append(
                _Problem(
                    '"ray" runs the workers as Ray actors, but Ray is not installed here — install '
                    "the extra with: pip install 'genesis-tui[ray]' (or set executor = \"local\")",
                    section="devices",
                    key="executor",
                )
            )
        return out

    @model_validator(mode="after")
    def _combinations(self) -> Profile:
        problems: list[_Problem] = []
        if self.tts is not None:
            return self._tts_combinations()
        for name in ("student", "data"):
            if getattr(self, name) is None:
                problems.append(
                    _Problem(
                        f"missing required section [{name}] — {_SECTION_DOC[name]}; it needs at least "
                        f"{_MISSING_EXAMPLE[name]} (a TTS run has a [tts] section instead; "
                        "`genesis-tui --help-profile` lists every field)",
                        section=name,
                    )
                )
        if problems:
            raise _Problems(problems)
        size, evo = self.population.size, self.evolution
        if evo.elitism >= size:
            problems.append(
                _Problem(
                    f"must be less than [population] size ({size}) — elitism keeps the best individuals unchanged, "
                    "so at least one place must be left for children",
                    section="evolution",
                    key="elitism",
                )
            )
        if evo.tournament_size > size:
            problems.append(
                _Problem(
                    f"must be at most [population] size ({size}) — a tournament draws its contestants from the population",
                    section="evolution",
                    key="tournament_size",
                )
            )
        if evo.sizes is not None:
            if len(evo.sizes) != evo.generations:
                problems.append(
                    _Problem(
                        f"has {len(evo.sizes)} entries but [evolution] generations = "
                        f"{evo.generations} — give one population size per generation",
                        section="evolution",
                        key="sizes",
                    )
                )
            elif evo.sizes[0] != size:
                problems.append(
                    _Problem(
                        f"starts at {evo.sizes[0]} but [population] size = {size} — the first "
                        "entry is generation 0's size, the population's",
                        section="evolution",
                        key="sizes",
                    )
                )
        if self.data.test is not None and self.data.test == self.data.validation:
            problems.append(
                _Problem(
                    f"names the validation file ({self.data.test}) — the test split must be rows "
                    "selection never scored; leave it unset to use the validation file's rows "
                    "after max_val_examples",
                    section="data",
                    key="test",
                )
            )
        mps_students = [d for d in self.devices.coliseum if d == "mps"]
        if self.student.load_in_4bit and mps_students:
            problems.append(
                _Problem(
                    f'4-bit loading uses bitsandbytes, which serves cpu and cuda devices but not Apple "mps", and '
                    f"[devices] coliseum = {_fmt(self.devices.coliseum)} puts the student on mps — set load_in_4bit = false "
                    "or run the coliseum on cpu or cuda",
                    section="student",
                    key="load_in_4bit",
                )
            )
        if self.devices.executor == "ray":
            problems.extend(self._ray_problems())
        t = self.teacher
        # A 4-bit teacher on a device bitsandbytes cannot serve is not an error: the teacher
        # worker loads it in full precision and the run says so (a warning event).
        if self.distill.mode == "sequence" and self.data.format == "text":
            problems.append(
                _Problem(
                    '"sequence" has the teacher answer each training prompt, and [data] format = '
                    '"text" has no prompts (every token is the answer) — use format = "alpaca" or '
                    '"mistral-inst", or mode = "logits"',
                    section="distill",
                    key="mode",
                )
            )
        if self.population.kd_alphas is not None and self.distill.mode != "logits":
            problems.append(
                _Problem(
                    f"makes distillation's cross-entropy weight a gene, and [distill] mode = "
                    f'"{self.distill.mode}" has no such weight — set mode = "logits" or remove '
                    "kd_alphas",
                    section="population",
                    key="kd_alphas",
                )
            )
        if self.distill.mode != "off" and (t is None or not t.enabled):
            problems.append(
                _Problem(
                    f'"{self.distill.mode}" distills from the teacher, and this profile has no teacher '
                    '([teacher] is missing or enabled = false) — add a [teacher] or set mode = "off"',
                    section="distill",
                    key="mode",
                )
            )
        if problems:
            raise _Problems(problems)
        return self

    def _tts_combinations(self) -> Profile:
        """A TTS profile: [tts] population sizes the population; the LLM sections do not apply."""
        problems: list[_Problem] = []
        size, evo = self.tts.population, self.evolution  # type: ignore[union-attr]
        if self.devices.executor == "ray":
            problems.extend(self._ray_problems())
        if evo.elitism >= size:
            problems.append(
                _Problem(
                    f"must be less than [tts] population ({size}) — elitism keeps the best genomes "
                    "unchanged, so at least one place must be left for children",
                    section="evolution",
                    key="elitism",
                )
            )
        if evo.tournament_size > size:
            problems.append(
                _Problem(
                    f"must be at most [tts] population ({size}) — a tournament draws its contestants "
                    "from the population",
                    section="evolution",
                    key="tournament_size",
                )
            )
        for name in ("student", "teacher", "data"):
            if getattr(self, name) is not None:
                problems.append(
                    _Problem(
                        f"[{name}] does not apply to a TTS run ([tts] evolves the TTS student's style "
                        f"tokens; its model is [tts] assets) — remove [{name}], or remove [tts] for an "
                        "LLM run",
                        section=name,
                    )
                )
        if self.distill.mode != "off" or self.prune.active:
            which = "distill" if self.distill.mode != "off" else "prune"
            problems.append(
                _Problem(
                    f"[{which}] does not apply to a TTS run — remove it, or remove [tts] for an LLM run",
                    section=which,
                )
            )
        if problems:
            raise _Problems(problems)
        return self

    @property
    def remote_code(self) -> list[str]:
        """The models this profile loads with ``trust_remote_code`` ("student", "teacher")."""
        out = []
        if self.student is not None and self.student.trust_remote_code:
            out.append("student")
        if self.teacher is not None and self.teacher.enabled and self.teacher.trust_remote_code:
            out.append("teacher")
        return out

    @property
    def is_tts(self) -> bool:
        return self.tts is not None

    @property
    def distilling(self) -> bool:
        return self.distill.mode != "off"

    @property
    def distilling_logits(self) -> bool:
        return self.distill.mode == "logits"

    @property
    def distilling_sequences(self) -> bool:
        return self.distill.mode == "sequence"

    def logit_cache_dir(self) -> Path:
        return self.distill.cache_dir or self.run.output_dir / ".cache" / "logits"

    # --- canonical TOML ----------------------------------------------------------------------------

    def to_toml(self) -> str:
        """The resolved profile as TOML; ``parse_profile(p.to_toml(), source=p.source) == p``."""
        out = [
            "# Genesis Lab profile, resolved: every value explicit, every path absolute.",
            f"# Written from {self.source}.",
        ]
        for name in _SECTIONS:
            section = getattr(self, name)
            if section is None:
                continue
            out += ["", f"[{name}]"]
            for key in type(section).model_fields:
                value = getattr(section, key)
                if value is not None:
                    out.append(f"{key} = {_toml_value(value)}")
        return "\n".join(out) + "\n"


_SECTIONS: dict[str, type[BaseModel]] = {
    "run": RunConfig,
    "student": ModelSpec,
    "teacher": TeacherSpec,
    "data": DataConfig,
    "population": PopulationConfig,
    "evolution": EvolutionConfig,
    "training": TrainingConfig,
    "devices": DevicesConfig,
    "distill": DistillConfig,
    "prune": PruneConfig,
    "tts": TTSConfig,
}

_MISSING_EXAMPLE = {
    "student": 'model = "…"',
    "data": 'format = "text", train = "…", validation = "…"',
}


# ---------------------------------------------------------------------------------------------------
# TOML writing
# ---------------------------------------------------------------------------------------------------

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (str, Path)):
        return _toml_str(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    return k if re.match(r"^[A-Za-z0-9_-]+$", k) else _toml_str(k)


def _fmt(v: Any) -> str:
    """A value as the user wrote it (TOML syntax), shortened."""
    try:
        s = _toml_value(v)
    except TypeError:
        s = repr(v)
    return s if len(s) <= 80 else s[:77] + "…"


# ---------------------------------------------------------------------------------------------------
# Loading and error messages
# ---------------------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        absolute = path if path.is_absolute() else Path.cwd() / path
        return str(absolute.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def load_profile(path: str | Path) -> Profile:
    """Read and validate the profile at ``path``; every problem raises one-paragraph ProfileError."""
    path = Path(path).expanduser()
    shown = _display(path)
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob("*.toml"))
            if found:
                hint = f" (profiles in {_display(path.parent)}: {', '.join(found)})"
        raise ProfileError(
            f"{shown}: no such profile file{hint}; `genesis-tui --help-profile` describes the format."
        )
    if path.is_dir():
        raise ProfileError(f"{shown}: is a directory, not a profile file (give a .toml file).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"{shown}: not UTF-8 text (byte {exc.start}): a profile is a UTF-8 TOML file."
        ) from None
    except OSError as exc:
        raise ProfileError(f"{shown}: cannot be read ({exc.strerror or exc}).") from None
    return parse_profile(text, source=path)


# The paths of a run's profile.toml that follow the run directory when it is copied or moved
# (relocate_run_profile).
_RUN_PATHS = frozenset(
    {
        ("run", "output_dir"),
        ("student", "model"),
        ("teacher", "model"),
        ("data", "train"),
        ("data", "validation"),
        ("tts", "assets"),
        ("distill", "cache_dir"),
    }
)


def relocate_run_profile(text: str, started_at: Path, now_at: Path) -> tuple[str, list[str]]:
    """A run's ``profile.toml`` text with its paths re-resolved for a run directory that started
    at ``started_at`` and is now at ``now_at`` (copied or moved); the changes, as sentences.

    ``[run] output_dir`` becomes the directory's parent (where it now lives; the logit cache
    ``<output_dir>/.cache/logits`` follows it), and ``[distill] cache_dir`` moves with it when it
    lay under the old one. A model, data file or asset directory that lay beside the run
    directory (sharing an ancestor below the filesystem root: the same clone of the project, say)
    is taken from the same place relative to the new location when that exists there, and kept
    otherwise. Lines are rewritten one for one, so error messages keep their line numbers.
    """
    import os

    old, new = Path(os.path.abspath(started_at)), Path(os.path.abspath(now_at))
    if old == new:
        return text, []
    old_out, new_out = old.parent, new.parent
    changes: list[str] = []
    out, section = [], ""
    for line in text.splitlines(keepends=True):
        head = re.match(r"\s*\[([A-Za-z_]+)\]\s*$", line)
        if head:
            section = head.group(1)
            out.append(line)
            continue
        m = re.match(r"\s*([A-Za-z_]+)\s*=", line)
        key = (section, m.group(1)) if m else None
        if key not in _RUN_PATHS:
            out.append(line)
            continue
        try:
            value = tomllib.loads(line)[key[1]]
        except (tomllib.TOMLDecodeError, KeyError):
            out.append(line)
            continue
        if not isinstance(value, str) or not Path(value).is_absolute():
            out.append(line)  # a hub id, or not a path written by to_toml
            continue
        path = Path(os.path.normpath(value))
        moved: Path | None = None
        if key == ("run", "output_dir"):
            moved = new_out
        elif key == ("distill", "cache_dir"):
            if path.is_relative_to(old_out):
                moved = new_out / path.relative_to(old_out)
        elif Path(os.path.commonpath([path, old])) != Path(path.anchor):
            there = Path(os.path.normpath(new / os.path.relpath(path, old)))
            if there.exists():
                moved = there
        if moved is None or moved == path:
            out.append(line)
            continue
        changes.append(f"[{key[0]}] {key[1]} {path} → {moved}")
        end = "\n" if line.endswith("\n") else ""
        out.append(f"{key[1]} = {_toml_value(str(moved))}{end}")
    return "".join(out), changes


def parse_profile(text: str, *, source: Path) -> Profile:
    """Validate profile ``text``; ``source`` is the file it came from (messages, relative paths)."""
    source = Path(source).expanduser()
    source = (source if source.is_absolute() else Path.cwd() / source).resolve()
    shown = _display(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(_toml_syntax_message(exc, text, shown)) from None
    if not raw:
        raise ProfileError(
            f"{shown}: the profile is empty (no sections, no keys); a run needs at least [run] name, "
            "[student] model and [data] train and validation (or a [tts] section) — start from a "
            "copy of profiles/demo.toml; `genesis-tui --help-profile` lists every field."
        )

    locator = _Locator(text)
    problems: list[tuple[int | None, int, str]] = []  # (line, order, sentence)
    data = dict(raw)
    if "source" in data:  # a model field, but not a TOML key
        problems.append(_unknown_top(shown, locator, "source", data.pop("source"), len(problems)))
    data["source"] = source
    try:
        profile = Profile.model_validate(data, context={"base_dir": source.parent})
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.extend(_convert(err, raw, shown, locator, len(problems)))
    else:
        if not problems:
            return profile
    problems.sort(key=lambda p: (p[0] if p[0] is not None else 10**9, p[1]))
    first = problems[0][2]
    more = len(problems) - 1
    if more:
        first = first.rstrip(".") + f" (and {more} more problem{'s' if more > 1 else ''})."
    raise ProfileError(first)


def _toml_syntax_message(exc: Exception, text: str, shown: str) -> str:
    msg = str(exc)
    line = getattr(exc, "lineno", None)
    col = getattr(exc, "colno", None)
    reason = getattr(exc, "msg", None)
    m = re.match(r"^(.*?)\s*\(at line (\d+), column (\d+)\)\s*$", msg, re.S)
    if m:
        reason, line, col = m.group(1), int(m.group(2)), int(m.group(3))
    else:
        m2 = re.match(r"^(.*?)\s*\(at end of document\)\s*$", msg, re.S)
        if m2:
            reason = m2.group(1)
            line = None
            msg = reason + " at the end of the file"
    reason = (reason or msg).strip().rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    if "end of the file" in msg or line is None:
        where = f"{shown}, at the end of the file"
        reason = reason.replace(" at the end of the file", "")
        tail = " (an unclosed [ ], { } or string?)"
    else:
        where = f"{shown}, line {line}, column {col}"
        lines = text.splitlines()
        tail = ""
        if 1 <= line <= len(lines) and lines[line - 1].strip():
            tail = f" (the line reads: {lines[line - 1].strip()[:80]})"
        declared = re.match(r"^cannot declare \((.*)\) twice$", reason)
        if declared:
            name = ".".join(
                part.strip().strip("'\"") for part in declared.group(1).split(",") if part.strip()
            )
            reason = f"the section [{name}] appears twice (merge the two into one)"
        elif reason.startswith("cannot overwrite a value"):
            reason = "this key is set twice (a TOML key may be given only once per section)"
    return f"{where}: invalid TOML — {reason}{tail}."


class _Locator:
    """Line numbers of sections and keys in the profile text (tomllib reports none)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    @staticmethod
    def _norm(name: str) -> str:
        return ".".join(part.strip().strip("\"'") for part in name.split("."))

    @staticmethod
    def _key_re(key: str) -> str:
        k = re.escape(key)
        return rf"(?:{k}|\"{k}\"|'{k}')"

    def section(self, section: str) -> int | None:
        key_re = re.compile(rf"^\s*{self._key_re(section)}\s*[=.]")
        current = ""
        for n, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m and not line.lstrip().startswith("[["):
                current = self._norm(m.group(1))
                if current == section or current.startswith(section + "."):
                    return n
            elif current == "" and key_re.match(line):  # dotted or inline form at the top
                return n
        return None

    def key(self, section: str | None, key: str) -> int | None:
        if section is None:
            return self.section(key)
        plain = re.compile(rf"^\s*{self._key_re(key)}\s*=")
        dotted = re.compile(rf"^\s*{self._key_re(section)}\s*\.\s*{self._key_re(key)}\s*=")
        inline = re.compile(
            rf"^\s*{self._key_re(section)}\s*=\s*\{{.*[{{,]\s*{self._key_re(key)}\s*="
        )
        current = ""
        for n, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m and not line.lstrip().startswith("[["):
                current = self._norm(m.group(1))
                if current == f"{section}.{key}":  # [section.key] sub-table
                    return n
                continue
            if current == section and plain.match(line):
                return n
            if current == "" and (dotted.match(line) or inline.match(line)):
                return n
        return self.section(section)


# --- pydantic error → sentence -------------------------------------------------------------------


def _strip_optional(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _unannotate(ann: Any) -> tuple[Any, list[Any]]:
    """(base type, constraint metadata) of ``Annotated[...]`` or a plain type."""
    meta: list[Any] = []
    while typing.get_origin(ann) is Annotated:
        args = typing.get_args(ann)
        ann = args[0]
        for a in args[1:]:
            meta.extend(a.metadata if isinstance(a, FieldInfo) else [a])
    return ann, meta


def _type_words(ann: Any) -> str:
    ann, _ = _unannotate(_strip_optional(ann))
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_words(a) for a in typing.get_args(ann) if a is not type(None))
    if origin is dict:
        return f"a table of {_type_words(typing.get_args(ann)[1]).removeprefix('a ')}s"
    if origin is Literal:
        return "one of " + ", ".join(_fmt(a) for a in typing.get_args(ann))
    if origin is list:
        (item,) = typing.get_args(ann)
        return {"an integer": "a list of integers", "a string": "a list of strings"}.get(
            _type_words(item), f"a list of {_type_words(item)}"
        )
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "a table (a [section])"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path string",
    }.get(ann, str(ann))


def _is_number(text: str, expected: str) -> bool:
    try:
        int(text.strip()) if expected == "an integer" else float(text.strip())
    except ValueError:
        return False
    return True


def _got(v: Any) -> str:
    if isinstance(v, bool):
        return f"the boolean {_fmt(v)}"
    if isinstance(v, int):
        return f"the integer {v}"
    if isinstance(v, float):
        return f"the number {_fmt(v)}"
    if isinstance(v, str):
        return f"the string {_fmt(v)}"
    if isinstance(v, list):
        return f"the list {_fmt(v)}"
    if isinstance(v, dict):
        return "a table"
    return f"a {type(v).__name__}"


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return _fmt(x)


def _range_words(ann: Any, meta: list[Any]) -> str:
    """'2 to 4096', 'at least 0', 'greater than 0 and at most 1', '' from constraint metadata."""
    c: dict[str, Any] = {}
    for m in meta:
        for attr in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(m, attr, None) is not None:
                c[attr] = getattr(m, attr)
    lo = (
        f"at least {_num(c['ge'])}"
        if "ge" in c
        else f"greater than {_num(c['gt'])}"
        if "gt" in c
        else ""
    )
    hi = (
        f"at most {_num(c['le'])}"
        if "le" in c
        else f"less than {_num(c['lt'])}"
        if "lt" in c
        else ""
    )
    if "ge" in c and "le" in c:
        return f"{_num(c['ge'])} to {_num(c['le'])}"
    return " and ".join(p for p in (lo, hi) if p)


def _field(section: str | None, key: str) -> FieldInfo | None:
    if section is None:
        return Profile.model_fields.get(key)
    model = _SECTIONS.get(section)
    return model.model_fields.get(key) if model else None


def _lookup(raw: dict, section: str | None, key: str | None) -> tuple[bool, Any]:
    node: Any = raw
    for part in (section, key):
        if part is None:
            continue
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _where(
    shown: str,
    line: int | None,
    section: str | None,
    key: str | None,
    raw: dict,
    *,
    show_value: bool = True,
) -> str:
    parts = [shown]
    if line is not None:
        parts.append(f"line {line}")
    if section is not None:
        head = f"[{section}]"
        if key is not None:
            head += f" {key}"
            found, value = _lookup(raw, section, key)
            if show_value and found and not isinstance(value, dict):
                head += f" = {_fmt(value)}"
        parts.append(head)
    return ", ".join(parts)


def _unknown_top(
    shown: str, loc: _Locator, name: str, value: Any, order: int
) -> tuple[int | None, int, str]:
    line = loc.section(name)
    valid = list(_SECTIONS)
    if isinstance(value, dict):
        guess = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean [{guess[0]}]? " if guess else ""
        text = (
            f"{shown}{f', line {line}' if line else ''}: unknown section [{name}] — {hint}"
            f"{'T' if hint else 't'}he sections are {', '.join(f'[{s}]' for s in valid)}."
        )
    else:
        homes = [s for s, m in _SECTIONS.items() if name in m.model_fields]
        hint = f"did you mean [{homes[0]}] {name}? " if homes else ""
        text = (
            f"{shown}{f', line {line}' if line else ''}, {name} = {_fmt(value)}: a key outside any section — "
            f"{hint}every key belongs under a section header such as [run] "
            f"(the sections are {', '.join(f'[{s}]' for s in valid)})."
        )
    return line, order, text


def _convert(
    err: dict, raw: dict, shown: str, loc: _Locator, order: int
) -> list[tuple[int | None, int, str]]:
    path = [p for p in err["loc"]]
    etype = err["type"]
    ctx = err.get("ctx") or {}
    exc = ctx.get("error")

    if isinstance(exc, _Problems):
        out = []
        for i, p in enumerate(exc.problems):
            line = (
                loc.key(p.section, p.key)
                if p.key
                else loc.section(p.section)
                if p.section
                else None
            )
            out.append(
                (line, order + i, f"{_where(shown, line, p.section, p.key, raw)}: {p.message}.")
            )
        return out

    if isinstance(exc, _Problem) and path:  # a validator's own sentence, located by the validator
        section = str(path[0])
        key = exc.key or (str(path[1]) if len(path) > 1 else None)
        line = loc.key(section, key) if key else loc.section(section)
        return [(line, order, f"{_where(shown, line, section, key, raw)}: {exc.message}.")]

    # Top level: unknown section, missing section, section that is not a table.
    if len(path) == 1:
        name = str(path[0])
        if etype == "extra_forbidden":
            return [_unknown_top(shown, loc, name, err.get("input"), order)]
        if etype == "missing":
            example = {
                "run": 'name = "my-run"',
                "student": 'model = "…"',
                "data": 'format = "text", train = "…", validation = "…"',
            }
            return [
                (
                    None,
                    order,
                    f"{shown}: missing required section [{name}] — {_SECTION_DOC[name]}; it needs at least {example.get(name, '…')} "
                    "(`genesis-tui --help-profile` lists every field).",
                )
            ]
        line = loc.section(name)
        return [
            (
                line,
                order,
                f"{_where(shown, line, None, None, raw)}, {name} = {_fmt(err.get('input'))}: [{name}] must be a section "
                f"(a table written as a [{name}] header followed by key = value lines), got {_got(err.get('input'))}.",
            )
        ]

    section = str(path[0])
    key = str(path[1]) if len(path) > 1 else None
    index = path[2] if len(path) > 2 and isinstance(path[2], int) else None
    line = loc.key(section, key) if key else loc.section(section)
    fi = _field(section, key) if key else None
    where = _where(shown, line, section, key, raw)
    item = f"item {index + 1} ({_fmt(err.get('input'))}) " if index is not None else ""

    if etype == "extra_forbidden":
        model = _SECTIONS[section]
        valid = list(model.model_fields)
        if key in _DEVICE_KEYS and section in ("student", "teacher"):
            _, dev = _lookup(raw, "devices", None)
            dev = dev if isinstance(dev, dict) else {}
            t = dev.get("teacher", DevicesConfig.model_fields["teacher"].default)
            c = dev.get("coliseum", DevicesConfig.model_fields["coliseum"].default)
            return [
                (
                    line,
                    order,
                    f"{where}: unknown key — device placement is set in [devices] (teacher = {_fmt(t)}, "
                    f"coliseum = {_fmt(c)}): the teacher runs on [devices] teacher and every [devices] "
                    "coliseum entry runs one student worker; move the device there.",
                )
            ]
        homes = [s for s, m in _SECTIONS.items() if key in m.model_fields and s != section]
        guess = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        if key in _SECTIONS:
            hint = f"[{key}] is a section of its own: write its keys under a [{key}] header. "
        elif homes:
            hint = f"'{key}' belongs in [{homes[0]}], not [{section}]. "
        elif guess:
            hint = f"did you mean '{guess[0]}'? "
        else:
            hint = ""
        return [
            (
                line,
                order,
                f"{where}: unknown key in [{section}] — {hint}{'T' if hint else 't'}he keys of [{section}] "
                f"are {', '.join(valid)}.",
            )
        ]

    if etype == "missing":
        line = loc.section(section)
        desc = fi.description if fi else ""
        return [
            (
                line,
                order,
                f"{_where(shown, line, section, None, raw)}: missing required key '{key}' — {desc} "
                f"(expected {_type_words(fi.annotation) if fi else 'a value'}).",
            )
        ]

    if fi is None:  # e.g. a section given as something else than a table
        return [(line, order, f"{where}: {err.get('msg', 'invalid value')}.")]

    ann = _strip_optional(fi.annotation)
    item_ann = None
    if index is not None and typing.get_origin(_unannotate(ann)[0]) is list:
        item_ann = typing.get_args(_unannotate(ann)[0])[0]
    target_ann = item_ann if item_ann is not None else ann
    base, item_meta = _unannotate(target_ann)
    meta = item_meta if item_ann is not None else list(fi.metadata)
    value = err.get("input")

    if etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = ctx.get(
            {
                "greater_than": "gt",
                "greater_than_equal": "ge",
                "less_than": "lt",
                "less_than_equal": "le",
            }[etype]
        )
        verb = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }[etype]
        allowed = _range_words(base, meta)
        return [
            (
                line,
                order,
                f"{where}: {item}must be {verb} {_num(bound)} (allowed: {allowed}) — {fi.description}.",
            )
        ]
    if etype == "literal_error":
        choices = ", ".join(_fmt(a) for a in typing.get_args(_unannotate(target_ann)[0]))
        extra = ""
        if isinstance(value, str):
            guess = difflib.get_close_matches(
                value,
                [str(a) for a in typing.get_args(_unannotate(target_ann)[0])],
                n=1,
                cutoff=0.6,
            )
            extra = f"did you mean {_fmt(guess[0])}? " if guess else ""
        return [
            (
                line,
                order,
                f"{where}: {item}is not one of the allowed values — {extra}choose one of {choices} ({fi.description}).",
            )
        ]
    if etype == "too_short":
        return [(line, order, f"{where}: {item}must not be empty — {fi.description}.")]
    if etype == "string_pattern_mismatch":
        return [
            (
                line,
                order,
                f"{where}: {item}may contain only letters, digits, '_', '.' and '-', and must start with a "
                "letter or digit (it names the run directory).",
            )
        ]
    if etype.endswith("_type") or etype in (
        "is_instance_of",
        "int_from_float",
        "model_attributes_type",
    ):
        expected = _type_words(target_ann)
        hint = ""
        if (
            isinstance(value, str)
            and expected in ("an integer", "a number")
            and _is_number(value, expected)
        ):
            hint = f" (write it without quotes: {key} = {value.strip()})"
        elif (
            isinstance(value, str)
            and expected == "true or false"
            and value.strip().lower() in ("true", "false")
        ):
            hint = f" (write it without quotes: {key} = {value.strip().lower()})"
        elif isinstance(value, str) and expected.startswith("a list"):
            hint = f" (write a list in brackets, e.g. {key} = [{_fmt(value)}])"
        return [(line, order, f"{where}: {item}expected {expected}, got {_got(value)}{hint}.")]
    return [(line, order, f"{where}: {item}{err.get('msg', 'invalid value')}.")]


# ---------------------------------------------------------------------------------------------------
# --help-profile
# ---------------------------------------------------------------------------------------------------


def _default_words(fi: FieldInfo) -> str:
    if fi.is_required():
        return "required"
    default = fi.get_default(call_default_factory=True)
    if default is None:
        return "default: unset"
    if isinstance(default, Path):
        return f"default: {_toml_str(str(default))} (relative to the profile file)"
    return f"default: {_toml_value(default)}"


def _field_line(key: str, fi: FieldInfo) -> list[str]:
    ann = _strip_optional(fi.annotation)
    base, meta = _unannotate(ann)
    meta = meta + list(fi.metadata)
    kind = _type_words(ann)
    bits = [kind]
    rng = _range_words(base, [m for m in meta if not hasattr(m, "min_length")])
    if rng and typing.get_origin(base) is not list:
        bits.append(rng)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        item_rng = _range_words(*_unannotate(item))
        if item_rng:
            bits.append(f"each {item_rng}")
        if any(getattr(m, "min_length", None) for m in fi.metadata):
            bits.append("not empty")
    pattern = next((getattr(m, "pattern", None) for m in meta if getattr(m, "pattern", None)), None)
    if pattern:
        bits.append(f"pattern {pattern}")
    bits.append(_default_words(fi))
    head = f"  {key:<22} {'; '.join(bits)}"
    return [head, f"  {'':<22} {fi.description}"]


def schema_help() -> str:
    """Every section and field of a profile: type, default, allowed range or choices, meaning."""
    out = [
        "Genesis Lab profile (TOML): one run's models, data, population, evolution, training and devices.",
        "Relative paths are resolved against the profile file's directory. Every key is optional unless",
        "marked required; a section that is absent takes all its defaults. Example: profiles/demo.toml.",
        "Check a profile with: genesis-tui --profile PROFILE.toml --check",
    ]
    for name, model in _SECTIONS.items():
        section_field = Profile.model_fields[name]
        need = "required" if section_field.is_required() else "optional"
        if name in _MISSING_EXAMPLE:
            need = "required, except in a TTS run"
        out += ["", f"[{name}]  ({need}) {section_field.description}"]
        if name == "teacher":
            out.append("  same keys as [student], plus enabled")
        for key, fi in model.model_fields.items():
            out += _field_line(key, fi)
    out += [
        "",
        "Rules across sections:",
        "  [evolution] elitism must be less than [population] size; tournament_size at most [population] size.",
        "  load_in_4bit needs a cpu or cuda device (bitsandbytes does not serve mps).",
        '  [distill] mode = "logits" needs an enabled [teacher] whose tokenizer is the student\'s',
        "  (checked when the run starts: a KL across two vocabularies is never computed; --check also",
        "  compares the two configs' vocabulary sizes before any weight is downloaded).",
        "  Memory: --check estimates every model's memory on its device from its config.json (the",
        "  model's own, else [student]/[teacher] config) against the card — measured when it is here,",
        "  else [devices] gpu_memory_gb — and a device that will not fit stops the run before it starts",
        "  (for a run on CPUs only, --check alone looks).",
        "  A profile with [tts] is a TTS run (style evolution): it needs no [student] or [data], uses",
        "  [run], [evolution] (elitism below [tts] population) and [tts]; without [tts], [student] and",
        "  [data] are required.",
        "  Device names ([devices], [tts] devices): cpu, cuda, cuda:N, mps.",
        "  A model written as a path (starting with '.', '/' or '~') must be an existing directory;",
        "  anything else is a Hugging Face hub id, looked up in the local cache when the run starts.",
    ]
    return "\n".join(out)
