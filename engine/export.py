"""Export of the champion: a standard PEFT adapter directory, and a mergekit recipe that merges it.

- :func:`export_peft_adapter` writes ``adapter_config.json`` + ``adapter_model.safetensors``
  through PEFT itself (``LoraConfig`` + ``get_peft_model`` + ``set_peft_model_state_dict`` +
  ``save_pretrained``), so anything PEFT can load, it wrote. The directory appears atomically.
- :func:`write_mergekit_recipe` writes a mergekit YAML that folds the adapter into the base:
  one input, the ``base+adapter`` model reference (mergekit merges a LoRA into its base with
  ``PeftModel.from_pretrained(...).merge_and_unload()`` when it loads such a reference), and
  ``merge_method: passthrough``. In an export the adapter is ``.`` and a base inside the run
  directory a relative path (:func:`recipe_ref`), so a copied run directory merges as it is:
  :data:`MERGE_COMMAND`, run from the export directory.
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

__all__ = [
    "MERGE_COMMAND",
    "export_peft_adapter",
    "merge_with_mergekit",
    "recipe_ref",
    "write_mergekit_recipe",
]

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


MERGE_COMMAND = "mergekit-yaml merge.yaml merged --lora-merge-cache .lora-cache"
"""How an exported recipe is run: from the export directory (its paths are relative to it).

mergekit 0.1.5 folds a LoRA into its base only with a cache directory for the folded copy
(``RuntimeError: Need to specify cache dir to merge adapters`` without one); ``.lora-cache`` holds
a full copy of the merged weights and can be deleted afterwards."""


def recipe_ref(
    model: str | Path, recipe_dir: Path, run_dir: Path | None, revision: str | None = None
) -> str:
    """How a recipe in ``recipe_dir`` names ``model``: a local path inside ``run_dir`` relative to
    ``recipe_dir`` (a copied or moved run directory keeps working), any other local path
    absolute, a hub id as given (``id@revision`` when a revision is pinned)."""
    path = Path(model).expanduser()
    if not (path.is_absolute() or path.exists()):
        return f"{model}@{revision}" if revision else str(model)
    path = path.resolve()
    if run_dir is not None and path.is_relative_to(Path(run_dir).resolve()):
        return os.path.relpath(path, Path(recipe_dir).resolve())
    return str(path)


def _model_ref(path: str, lora: str | None = None) -> object:
    """A mergekit model reference: the short ``model+lora`` string, or the structured form when a
    path holds a character mergekit's string form splits on (``+``, ``@``)."""
    if not any(c in p for p in (path, lora or "") for c in "+@"):
        return f"{path}+{lora}" if lora else path
    ref: dict[str, object] = {"model": {"path": path}}
    if lora:
        ref["lora"] = {"path": lora}
    return ref


def write_mergekit_recipe(
    base_model_path: str,
    adapter_dir: Path,
    out_yaml: Path,
    dtype: str = "float32",
    *,
    base_ref: str | None = None,
) -> Path:
    """Write (atomically) a mergekit recipe that merges ``adapter_dir`` into ``base_model_path``.

    The adapter is named relative to the recipe's directory when it lies there (``.`` for the
    recipe beside the adapter, as in an export), absolutely otherwise; the base by ``base_ref``
    verbatim when given (the caller's :func:`recipe_ref`, relative to where the recipe will end
    up), else as an absolute local path or a hub id. mergekit resolves relative paths against the
    working directory, so a recipe with relative paths is run from its own directory
    (:data:`MERGE_COMMAND`, also written at the top of the file); :func:`merge_with_mergekit`
    resolves them against the recipe's directory itself. ``passthrough`` takes exactly one input
    and copies it.
    """
    out_yaml = Path(out_yaml)
    here = out_yaml.parent.resolve()
    adapter = Path(adapter_dir).resolve()
    lora = os.path.relpath(adapter, here) if adapter.is_relative_to(here) else str(adapter)
    base = base_ref if base_ref is not None else recipe_ref(base_model_path, here, None)
    recipe = {
        "merge_method": "passthrough",
        "dtype": dtype,
        "models": [{"model": _model_ref(base, lora)}],
    }
    # Validate with mergekit before writing, so a bad recipe never lands on disk.
    from mergekit.config import MergeConfiguration

    MergeConfiguration.model_validate(recipe)
    relative = not (Path(base).is_absolute() and Path(lora).is_absolute())
    header = (
        "# mergekit recipe: folds the LoRA adapter into its base model (merge_method passthrough).\n"
        + (
            "# Its paths are relative to this directory: run it from here, e.g.\n"
            if relative
            else "# Run it with, e.g.\n"
        )
        + f"#   {MERGE_COMMAND}\n"
    )
    _atomic_write_text(out_yaml, header + yaml.safe_dump(recipe, sort_keys=False))
    return out_yaml


def _rebased(ref: object, base_dir: Path) -> object:
    """A recipe's model reference with its relative local paths made absolute from ``base_dir``."""
    from mergekit.common import ModelReference

    parsed = ModelReference.model_validate(ref)
    parts: dict[str, object] = {}
    for key in ("model", "lora"):
        mp = getattr(parsed, key)
        if mp is None:
            continue
        path = mp.path
        if not Path(path).is_absolute() and (base_dir / path).exists():
            path = str((base_dir / path).resolve())
        parts[key] = {"path": path, **({"revision": mp.revision} if mp.revision else {})}
    if parsed.override_architecture:
        parts["override_architecture"] = parsed.override_architecture
    return parts


def _rebase_recipe(raw: dict, base_dir: Path) -> dict:
    """``base_model``, ``models[].model`` and ``slices[].sources[].model`` rebased."""
    raw = dict(raw)
    if raw.get("base_model") is not None:
        raw["base_model"] = _rebased(raw["base_model"], base_dir)
    if isinstance(raw.get("models"), list):
        raw["models"] = [
            {**m, "model": _rebased(m["model"], base_dir)}
            if isinstance(m, dict) and "model" in m
            else m
            for m in raw["models"]
        ]
    if isinstance(raw.get("slices"), list):
        raw["slices"] = [
            {
                **s,
                "sources": [
                    {**src, "model": _rebased(src["model"], base_dir)}
                    if isinstance(src, dict) and "model" in src
                    else src
                    for src in s.get("sources", [])
                ],
            }
            if isinstance(s, dict)
            else s
            for s in raw["slices"]
        ]
    return raw


def merge_with_mergekit(recipe_yaml: Path, out_dir: Path, *, cuda: bool = False) -> Path:
    """Run a mergekit recipe with mergekit's Python API into ``out_dir`` (written atomically).

    Offline and local only: every model and LoRA path in the recipe must be an existing local
    directory (nothing is fetched from a hub); relative ones are taken from the recipe's own
    directory, as :data:`MERGE_COMMAND` run there takes them. The LoRA is folded in inside a private temp
    cache, and mergekit's process-wide loader cache is cleared of this recipe's models
    afterwards, so a later merge of changed files at the same paths never sees stale weights.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe_yaml = Path(recipe_yaml)
    raw = yaml.safe_load(recipe_yaml.read_text("utf-8"))
    config = MergeConfiguration.model_validate(_rebase_recipe(raw, recipe_yaml.parent.resolve()))
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
                run_merge(config, str(tmp), options=options)
        finally:
            cache = LoaderCache()
            for ref in refs:
                loader = cache.loaders.pop(ref, None)
                if loader is not None:
                    loader.flush()
    return out_dir
