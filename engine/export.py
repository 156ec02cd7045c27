"""Export of the champion: a standard PEFT adapter directory, and a mergekit recipe that merges it.

- :func:`export_peft_adapter` writes ``adapter_config.json`` + ``adapter_model.safetensors``
  through PEFT itself (``LoraConfig`` + ``get_peft_model`` + ``set_peft_model_state_dict`` +
  ``save_pretrained``), so anything PEFT can load, it wrote. The directory appears atomically.
- :func:`write_mergekit_recipe` writes a mergekit YAML that folds the adapter into the base:
  one input, the ``base+adapter`` model reference (mergekit merges a LoRA into its base with
  ``PeftModel.from_pretrained(...).merge_and_unload()`` when it loads such a reference), and
  ``merge_method: passthrough``.
- :func:`merge_with_mergekit` runs such a recipe through mergekit's Python API, offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from engine.genomes.lora import LoraTensors, modules

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["export_peft_adapter", "write_mergekit_recipe", "merge_with_mergekit"]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@contextmanager
def _staging_dir(final: Path) -> Iterator[Path]:
    """A temp dir beside ``final`` (same filesystem) that replaces ``final`` on success.

    The rename is atomic when ``final`` does not exist, so a reader never sees a half-written
    directory. An existing ``final`` is first renamed aside and deleted after the swap: readers
    see the complete old or the complete new directory (or, for an instant, none), never a mix.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_peft_adapter(
    base_model: PreTrainedModel,
    tensors: LoraTensors,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    base_model_name_or_path: str,
    out_dir: Path,
) -> Path:
    """Write ``tensors`` as a standard PEFT LoRA adapter directory at ``out_dir``; return it.

    The adapter is injected into ``base_model`` itself (no copy of its weights), loaded with
    ``set_peft_model_state_dict`` (every LoRA key must match, none may be left over), saved with
    ``save_pretrained`` into a temp dir that is then renamed into place, and finally unloaded:
    the model's modules, ``peft_config`` attribute, ``requires_grad`` flags, ``pretraining_tp``
    and input-grad hook are restored whether or not the export succeeds. ``base_model`` must be a plain model, not one that
    already carries PEFT layers.
    """
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(base_model, peft.PeftModel) or any(
        isinstance(m, BaseTunerLayer) for m in base_model.modules()
    ):
        raise ValueError("export_peft_adapter needs a plain base model, without PEFT layers")
    found = modules(tensors)  # validates the keys and the A/B pairing
    ranks = {a.shape[0] for a, _ in found.values()}
    if ranks != {rank}:
        raise ValueError(f"tensors have ranks {sorted(ranks)}, expected {rank}")

    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        use_rslora=False,
        task_type="CAUSAL_LM",
    )
    requires_grad = {name: p.requires_grad for name, p in base_model.named_parameters()}
    had_peft_config = hasattr(base_model, "peft_config")
    # PeftModel's constructor also touches the base: it forces config.pretraining_tp = 1 and,
    # with gradient checkpointing on, registers an input-requires-grad hook. Undo both.
    config_obj = getattr(base_model, "config", None)
    had_tp = config_obj is not None and hasattr(config_obj, "pretraining_tp")
    old_tp = getattr(config_obj, "pretraining_tp", None)
    had_grad_hook = hasattr(base_model, "_require_grads_hook")
    out_dir = Path(out_dir)
    peft_model = peft.get_peft_model(base_model, config, adapter_name="default")
    try:
        peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
        expected = set(peft.get_peft_model_state_dict(peft_model, adapter_name="default"))
        if expected != set(tensors):
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(
                f"adapter keys do not match target_modules {target_modules}: "
                f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}, "
                f"unexpected {extra[:4]}{'…' if len(extra) > 4 else ''}"
            )
        result = peft.set_peft_model_state_dict(peft_model, tensors, adapter_name="default")
        if result.unexpected_keys:
            raise ValueError(f"PEFT did not use keys: {result.unexpected_keys[:4]}")
        with _staging_dir(out_dir) as tmp:
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            for name in ADAPTER_FILES:
                if not (tmp / name).is_file():
                    raise RuntimeError(f"PEFT's save_pretrained did not write {name}")
    finally:
        peft_model.base_model.unload()  # puts the original Linear modules back
        if not had_peft_config and hasattr(base_model, "peft_config"):
            del base_model.peft_config
        for name, p in base_model.named_parameters():
            if name in requires_grad:
                p.requires_grad_(requires_grad[name])
        if had_tp:
            config_obj.pretraining_tp = old_tp
        if not had_grad_hook and hasattr(base_model, "_require_grads_hook"):
            base_model.disable_input_require_grads()
    return out_dir


def write_mergekit_recipe(
    base_model_path: str, adapter_dir: Path, out_yaml: Path, dtype: str = "float32"
) -> Path:
    """Write (atomically) a mergekit recipe that merges ``adapter_dir`` into ``base_model_path``.

    mergekit 0.1.5 parses a model reference ``"<model>+<lora>"`` into
    ``ModelReference(model=..., lora=...)``; the structured form is written instead when a path
    itself contains a ``+``. ``passthrough`` takes exactly one input and copies it.
    """
    base = (
        str(Path(base_model_path).resolve())
        if Path(base_model_path).exists()
        else str(base_model_path)
    )
    adapter = str(Path(adapter_dir).resolve())
    if "+" in base or "+" in adapter:
        ref: object = {"model": {"path": base}, "lora": {"path": adapter}}
    else:
        ref = f"{base}+{adapter}"
    recipe = {
        "merge_method": "passthrough",
        "dtype": dtype,
        "models": [{"model": ref}],
    }
    # Validate with mergekit before writing, so a bad recipe never lands on disk.
    from mergekit.config import MergeConfiguration

    MergeConfiguration.model_validate(recipe)
    out_yaml = Path(out_yaml)
    _atomic_write_text(out_yaml, yaml.safe_dump(recipe, sort_keys=False))
    return out_yaml


def merge_with_mergekit(recipe_yaml: Path, out_dir: Path, *, cuda: bool = False) -> Path:
    """Run a mergekit recipe with mergekit's Python API into ``out_dir`` (written atomically).

    Offline and local only: every model and LoRA path in the recipe must be an existing local
    directory (nothing is fetched from a hub). The LoRA is folded in inside a private temp
    cache, and mergekit's process-wide loader cache is cleared of this recipe's models
    afterwards, so a later merge of changed files at the same paths never sees stale weights.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe_yaml = Path(recipe_yaml)
    config = MergeConfiguration.model_validate(yaml.safe_load(recipe_yaml.read_text("utf-8")))
    refs = config.referenced_models()
    for ref in refs:
        for mp in (ref.model, ref.lora):
            if mp is not None and not Path(mp.path).is_dir():
                raise FileNotFoundError(f"recipe names a model that is not a local dir: {mp.path}")
    copy_tokenizer = any(
        (Path(ref.model.path) / name).exists()
        for ref in refs
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    )
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mergekit-lora-") as lora_cache:
        options = MergeOptions(
            cuda=cuda,
            lora_merge_cache=lora_cache,
            lora_merge_dtype=config.dtype,
            copy_tokenizer=copy_tokenizer,
            write_model_card=False,
            quiet=True,
        )
        try:
            with _staging_dir(out_dir) as tmp:
                run_merge(config, str(tmp), options=options, config_source=recipe_yaml.read_text())
        finally:
            cache = LoaderCache()
            for ref in refs:
                loader = cache.loaders.pop(ref, None)
                if loader is not None:
                    loader.flush()
    return out_dir
