"""Loading models the way the profile says: device, dtype and 4-bit all come from the profile.

``preflight`` checks everything that can be checked before any process starts (devices exist,
weights are on disk, bitsandbytes can serve the device) and reports every problem in one
paragraph, so a rig profile run on a laptop stops with an explanation instead of a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(?::(\d+))?)$")


def is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine, or None when it can."""
    import torch

    m = _DEVICE_RE.match(device)
    if m is None:
        return f"'{device}' is not a device name (expected cpu, cuda, cuda:N or mps)"
    if device == "cpu":
        return None
    if device == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if ok else "'mps' was asked for but this machine has no Apple GPU"
    if not torch.cuda.is_available():
        return (
            f"'{device}' was asked for but this machine has no usable CUDA GPU "
            f"(torch {torch.__version__}, {'a CPU-only build' if torch.version.cuda is None else 'no device visible'})"
        )
    index = int(m.group(2) or 0)
    if index >= torch.cuda.device_count():
        return f"'{device}' was asked for but only {torch.cuda.device_count()} CUDA device(s) are visible"
    return None


def weights_problem(model: str, revision: str | None = None) -> str | None:
    """Why the weights of ``model`` are not available, or None when they are.

    Genesis Lab never downloads weights at run time: a hub id must already be in the local
    Hugging Face cache (the rig's usual state after ``hf download``).
    """
    if is_local(model):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            return f"'{model}' is not a model directory (no config.json in it)"
        if not any(path.glob("*.safetensors")):
            pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(
                p.name for p in path.glob("*.pt*")
            )
            found = f" (it has {', '.join(pickles)}: pickle files)" if pickles else ""
            return (
                f"'{model}' has no safetensors weights{found}; Genesis Lab never loads pickle "
                "checkpoints, which can run code when loaded — convert them once where you trust "
                "them: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)"
            )
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    if isinstance(cached, str):
        return None
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub"
    )
    return (
        f"'{model}' is not in the local Hugging Face cache ({cache}) and Genesis Lab does not "
        f"download weights at run time; fetch it first with `hf download {model}` on a machine "
        f"with network access, or point the profile at a local directory"
    )


def quantization_problem(device: str) -> str | None:
    """Why 4-bit loading cannot work on ``device``, or None when bitsandbytes can serve it."""
    if device.startswith("mps"):
        return "bitsandbytes 4-bit loading does not support Apple 'mps' devices"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError or a broken native library
        return f"bitsandbytes cannot be imported ({type(exc).__name__}: {exc})"
    return None


def preflight(profile: Any, memory: Any = None) -> None:
    """Check devices, weights and quantization for every model of the profile before starting,
    and that each device's models fit in its memory (``memory``: an ``engine.memory`` check
    already made, as --check makes; else one is made here when the profile names a GPU — a run
    on CPUs alone, such as the embedded demo, is not worth the seconds of building its models on
    the meta device)."""
    problems: list[str] = []
    seen: set[str] = set()
    roles: list[tuple[str, Any, list[str]]] = [
        ("student", profile.student, list(profile.devices.coliseum))
    ]
    if profile.teacher is not None and profile.teacher.enabled:
        roles.append(("teacher", profile.teacher, [profile.devices.teacher]))
    # Under Ray the devices are the cluster's, not this machine's: RayPool checks the cluster.
    on_ray = getattr(profile.devices, "executor", "local") == "ray"
    for role, spec, devices in roles:
        where = "[devices] coliseum" if role == "student" else "[devices] teacher"
        for device in [] if on_ray else devices:
            problem = device_problem(device)
            if problem and device not in seen:
                problems.append(f"{where}: {problem}")
                seen.add(device)
            # A teacher is only read: where 4-bit is unavailable it is loaded in full precision
            # with a warning (quantization_fallback); a student trains, so 4-bit must hold.
            if spec.load_in_4bit and not problem and role == "student":
                q = quantization_problem(device)
                if q:
                    problems.append(f"[{role}] load_in_4bit = true on {device}: {q}")
        w = weights_problem(spec.model, spec.revision)
        if w:
            problems.append(f"[{role}] model: {w}")
    if getattr(profile, "distilling_logits", False):
        # The tokenizers are compared when every file is here; otherwise the configs' vocabulary
        # sizes still tell two different tokenizers apart (not two of one size).
        t = tokenizer_problem(profile) if not problems else vocabulary_problem(profile)
        if t:
            problems.append(t)
    devices = [profile.devices.teacher, *profile.devices.coliseum]
    if memory is None and any(d != "cpu" for d in devices):
        from engine.memory import estimate

        memory = estimate(profile)
    if memory is not None:
        problems.extend(memory.problems())
    if problems:
        source = getattr(profile, "source", "the profile")
        numbered = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise ModelError(
            f"{source}: this profile cannot run on this machine — {numbered}. "
            "The profile itself is valid against the schema; "
            "run it on the machine it names, or copy it and change the devices and models."
        )
    t = target_modules_problem(profile)
    if t:
        source = getattr(profile, "source", "the profile")
        raise ModelError(f"{source}: {t}. Change the list in the profile to some of those names.")


def model_dir(model: str, revision: str | None = None) -> Path | None:
    """The local directory holding ``model``'s files (a hub id: its snapshot in the local cache)."""
    if is_local(model):
        return Path(model).expanduser()
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def weight_shapes(model: str, revision: str | None = None) -> dict[str, list[int]]:
    """Every tensor name of the model's safetensors files with its shape, from their headers
    alone (no weight is read)."""
    from safetensors import safe_open

    root = model_dir(model, revision)
    shapes: dict[str, list[int]] = {}
    for f in sorted(root.glob("*.safetensors")) if root is not None else []:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shapes[name] = list(st.get_slice(name).get_shape())
        except Exception:  # noqa: BLE001 - an unreadable file is the workers' error, in full
            return {}
    return shapes


def target_modules_problem(profile: Any) -> str | None:
    """Which of ``[population] target_modules`` the student does not have, and the names it does.

    PEFT matches a target against the end of a module's dotted name (``q_proj`` matches
    ``model.layers.0.self_attn.q_proj``); without this check a misspelt target makes every
    coliseum worker fail to start, after the run directory exists. The module names come from the
    tensor names in the student's safetensors headers: no model is built, no weight read.
    """
    spec = profile.student
    shapes = weight_shapes(spec.model, spec.revision)
    if not shapes:
        return None
    modules = {name.rsplit(".", 1)[0] for name in shapes}
    missing = [
        t
        for t in profile.population.target_modules
        if not any(n == t or n.endswith("." + t) for n in modules)
    ]
    if not missing:
        return None
    matrices = sorted(
        {
            n.rsplit(".", 2)[-2]
            for n, shape in shapes.items()
            if n.endswith(".weight") and len(shape) == 2
        }
    )
    return (
        f"[population] target_modules: {', '.join(repr(t) for t in missing)} "
        f"{'is not a module' if len(missing) == 1 else 'are not modules'} of the student "
        f"{spec.model}; its layers with weight matrices are {', '.join(matrices)}"
    )


def load_tokenizer(spec: Any) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = str(Path(spec.model).expanduser()) if is_local(spec.model) else spec.model
    try:
        return AutoTokenizer.from_pretrained(
            path,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {spec.model}: {exc}") from exc


def tokenizer_problem(profile: Any) -> str | None:
    """Logit distillation compares the two models' next-token distributions token by token: it
    needs one tokenizer. Two different vocabularies are a start-up error, never a KL."""
    from engine.distill import same_tokenizer

    student, teacher = load_tokenizer(profile.student), load_tokenizer(profile.teacher)
    if same_tokenizer(student, teacher):
        return None
    return (
        f'[distill] mode = "{profile.distill.mode}": the teacher\'s tokenizer ({profile.teacher.model}, '
        f"{len(teacher)} tokens) is not the student's ({profile.student.model}, {len(student)} "
        "tokens), and logit distillation compares the two models token by token — use a teacher "
        'that shares the student\'s tokenizer, set [distill] mode = "sequence" (the students learn '
        'the teacher\'s generated answers, as text) or mode = "off"'
    )


def vocabulary_problem(profile: Any) -> str | None:
    """Logit distillation between two models whose configs give vocabularies of different sizes
    (more than padding explains): two tokenizers, found before any weight or tokenizer file is on
    disk. Equal sizes tell nothing; the tokenizers themselves are compared when the run starts."""
    from engine.memory import different_vocabularies, vocab_sizes

    got = vocab_sizes(profile)
    if got is None:
        return None
    sv, tv, s_where, t_where = got
    if not different_vocabularies(sv, tv):
        return None
    return (
        f'[distill] mode = "{profile.distill.mode}": the teacher {profile.teacher.model} has a '
        f"vocabulary of {tv} tokens and the student {profile.student.model} one of {sv} (their "
        f"configs: {t_where}, {s_where}) — two different tokenizers, and logit distillation "
        "compares the two models token by token; use a teacher that shares the student's "
        'tokenizer, set [distill] mode = "sequence" (the students learn the teacher\'s generated '
        'answers, as text) or mode = "off"'
    )


def quantization_fallback(spec: Any, device: str) -> str | None:
    """Why a model asked in 4-bit will be loaded in full precision on ``device`` instead (the
    teacher's rule), or None when 4-bit is not asked or bitsandbytes can serve the device."""
    if not spec.load_in_4bit:
        return None
    problem = quantization_problem(device)
    if problem is None:
        return None
    return (
        f"{spec.model}: load_in_4bit = true, but {problem} on {device} — loaded in "
        f"{spec.dtype} instead (about {_BYTES[spec.dtype] * 2}× the 4-bit memory)"
    )


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(
    spec: Any, device: str, *, fallback: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer onto ``device`` as ``spec`` (a profile model spec) says.

    With ``fallback`` (the teacher), a 4-bit model on a device bitsandbytes cannot serve is loaded
    in ``spec.dtype`` instead of failing; ``quantization_fallback`` says why, for the run's log."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problem = device_problem(device) or weights_problem(spec.model, spec.revision)
    if problem:
        raise ModelError(f"cannot load {spec.model}: {problem}")
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(spec.dtype),
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": True,
        # Weights are read from safetensors only: a pickle checkpoint (pytorch_model.bin) can run
        # code when it is loaded, and never is (weights_problem says so before any process starts).
        "use_safetensors": True,
    }
    quantize = spec.load_in_4bit and not (fallback and quantization_fallback(spec, device))
    if quantize:
        problem = quantization_problem(device)
        if problem:
            raise ModelError(f"cannot load {spec.model} in 4-bit on {device}: {problem}")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quant_type,
            bnb_4bit_compute_dtype=torch_dtype(spec.compute_dtype),
        )
        kwargs["device_map"] = {"": device if device != "cuda" else "cuda:0"}
    path = str(Path(spec.model).expanduser()) if is_local(spec.model) else spec.model
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            path,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {spec.model}: {exc}") from exc
    if not quantize:
        model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
