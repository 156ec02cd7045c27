"""What an exported adapter says about itself: ``lineage.json`` and a Hugging Face model card.

An export directory (``champion/``, ``exports/<id>/``) holds the PEFT adapter and its mergekit
recipe; these two files say where it came from. :func:`lineage` gathers the individual, every
ancestor back to generation 0 (each with its operator, validation loss and genome, read from the
run's checkpoints), the run (its directory, profile file and hash, seed), the base model and the
teacher; :func:`model_card` renders that as ``README.md`` with the YAML front matter the Hugging
Face Hub reads (``base_model``, ``library_name: peft``, ``tags``), the metrics, a lineage summary,
and how to load and merge the adapter. Both are pure: the orchestrator collects the inputs, the
coliseum writes the files with the adapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

FORMAT = "genesis-lab lineage 1"
CARD_ANCESTORS = 12  # the model card's table stops here; lineage.json has them all


def record(d: dict[str, Any]) -> dict[str, Any]:
    """An individual's state (Individual.to_state) as lineage.json shows it."""
    return {
        "id": d["id"],
        "generation": d["generation"],
        "operator": d.get("operator", ""),
        "parents": list(d.get("parents", [])),
        "val_loss": d.get("val_loss"),
        "perplexity": d.get("perplexity"),
        "genome": d.get("genome"),
    }


def ancestry(
    ind: dict[str, Any], known: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every ancestor of ``ind`` found in ``known`` (id -> state), newest generation first, and
    the ids of ancestors no checkpoint holds any more."""
    found: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    todo = list(ind.get("parents", []))
    while todo:
        pid = todo.pop()
        if pid in found or pid in missing:
            continue
        rec = known.get(pid)
        if rec is None:
            missing.append(pid)
            continue
        found[pid] = record(rec)
        todo.extend(rec.get("parents", []))
    ancestors = sorted(found.values(), key=lambda r: (-r["generation"], r["id"]))
    return ancestors, sorted(missing)


def lineage(
    ind: dict[str, Any],
    known: dict[str, dict[str, Any]],
    *,
    role: str,
    run: dict[str, Any],
    base_model: dict[str, Any],
    teacher: dict[str, Any] | None,
    data: dict[str, Any],
    references: dict[str, float | None],
    merge_command: str,
    merged: bool,
) -> dict[str, Any]:
    """The lineage.json document of individual ``ind`` (its state dict)."""
    ancestors, missing = ancestry(ind, known)
    return {
        "format": FORMAT,
        **record(ind),
        "role": role,  # "champion" (the run's best, at its end) or "export" (the operator's `e`)
        "status": ind.get("status"),
        "fitness": ind.get("fitness"),
        "ancestors": ancestors,
        "missing_ancestors": missing,
        "run": run,
        "base_model": base_model,
        "teacher": teacher,
        "data": data,
        "references": references,
        # merge.yaml is run from the export directory; merged/ is there when --merge wrote it
        "merge": {
            "recipe": "merge.yaml",
            "command": merge_command,
            "merged": "merged" if merged else None,
        },
    }


def _loss(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _ppl(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _python_str(s: str) -> str:
    return json.dumps(s)  # a valid Python string literal for any path


def model_card(doc: dict[str, Any]) -> str:
    """README.md for the export directory: Hugging Face front matter, then what it is."""
    base = doc["base_model"]
    hub_id = base.get("hub_id")
    front: dict[str, Any] = {
        "base_model": hub_id or base["in_recipe"],
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "peft", "genesis-lab", "evolved"]
        + ([f"base_model:adapter:{hub_id}"] if hub_id else []),
    }
    run, refs, genome = doc["run"], doc["references"], doc["genome"] or {}
    what = (
        f"the champion of run `{run['name']}`: the best-scored individual when the run ended"
        if doc["role"] == "champion"
        else f"individual {doc['id']} of run `{run['name']}`, exported by the operator during "
        f"generation {run['generation']}"
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {doc['id']}: a LoRA adapter evolved by Genesis Lab",
        "",
        f"This directory is {what}. It is a standard PEFT LoRA adapter "
        f"(`adapter_config.json`, `adapter_model.safetensors`) of the base model "
        f"`{base['in_recipe']}`"
        + (f" (pruned from `{base['pruned_from']['model']}`)" if base.get("pruned_from") else "")
        + ", plus `merge.yaml` (a mergekit recipe that folds it into the base) and `lineage.json` "
        "(where it came from: every ancestor, the run, the models).",
        "",
        "## Metrics",
        "",
        f"Validation loss: token-weighted mean cross-entropy on `{data_name(doc['data'])}`, "
        "lower is better.",
        "",
        "| model | validation loss | perplexity |",
        "|---|---|---|",
        f"| this adapter ({doc['id']}) | {_loss(doc['val_loss'])} | {_ppl(doc['perplexity'])} |",
    ]
    student, teacher = refs.get("untrained_student_val_loss"), refs.get("teacher_val_loss")
    if student is not None:
        lines.append(f"| the base model, untrained | {_loss(student)} | {_ppl(_exp(student))} |")
    if teacher is not None:
        lines.append(f"| the teacher | {_loss(teacher)} | {_ppl(_exp(teacher))} |")
    loss = doc["val_loss"]
    if loss is not None and student is not None and teacher is not None and student > teacher:
        lines += [
            "",
            f"It closes {100 * (student - loss) / (student - teacher):.0f}% of the gap between "
            "the untrained base and the teacher.",
        ]
    if loss is None:
        lines += ["", "It had not been scored when it was exported."]
    lines += [
        "",
        "## Genome",
        "",
        f"rank {genome.get('rank')}, alpha {genome.get('alpha')}, target modules "
        f"{', '.join(genome.get('target_modules', []))}, dropout {genome.get('dropout')}, "
        f"learning rate {genome.get('learning_rate', 0):.3g}, seed {genome.get('seed')}"
        + (
            f", distillation's cross-entropy weight {genome['kd_alpha']:g}"
            if genome.get("kd_alpha") is not None
            else ""
        )
        + (
            f", weight decay {genome['weight_decay']:g}."
            if genome.get("weight_decay") is not None
            else "."
        ),
        "",
        "## Lineage",
        "",
        _born(doc),
    ]
    ancestors = doc["ancestors"]
    if ancestors:
        oldest = min(a["generation"] for a in ancestors)
        lines += [
            "",
            f"{len(ancestors)} ancestors back to generation {oldest}"
            + (
                f"; the {CARD_ANCESTORS} youngest below, all of them in `lineage.json`"
                if len(ancestors) > CARD_ANCESTORS
                else ""
            )
            + ":",
            "",
            "| id | generation | operator | parents | validation loss |",
            "|---|---|---|---|---|",
        ]
        for a in ancestors[:CARD_ANCESTORS]:
            lines.append(
                f"| {a['id']} | {a['generation']} | {a['operator']} | "
                f"{' '.join(a['parents']) or '—'} | {_loss(a['val_loss'])} |"
            )
    if doc["missing_ancestors"]:
        lines += [
            "",
            f"Not in any checkpoint of the run any more: {', '.join(doc['missing_ancestors'])}.",
        ]
    teacher_doc = doc["teacher"]
    lines += [
        "",
        f"Run `{run['name']}`, seed {run['seed']}, {run['generations']} generations; profile "
        f"`profile.toml` of the run directory (sha256 `{run['profile_sha256'][:16]}…`)"
        + (
            f"; teacher `{teacher_doc['model']}`, distillation {teacher_doc['distill']}"
            if teacher_doc
            else "; no teacher"
        )
        + ".",
        "",
        "## Load it with PEFT",
        "",
        "From this directory:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({_from_pretrained(base)})",
        f"tokenizer = AutoTokenizer.from_pretrained({_from_pretrained(base)})",
        'model = PeftModel.from_pretrained(base, ".")',
        "```",
        "",
        "## Merge it into the base",
        "",
        "From this directory (mergekit; the paths in `merge.yaml` are relative to it):",
        "",
        "```bash",
        doc["merge"]["command"],
        "```",
        "",
        "`merged/` is then a plain transformers checkpoint (`AutoModelForCausalLM.from_pretrained"
        '("merged")`, no PEFT needed); `.lora-cache` holds a second copy of it and can be deleted.'
        + (
            " `genesis-tui --merge` already wrote `merged/` here."
            if doc["merge"]["merged"]
            else " `genesis-tui --merge` writes `merged/` for the champion when the run ends."
        ),
        "",
    ]
    return "\n".join(lines)


def data_name(data: dict[str, Any]) -> str:
    return Path(str(data.get("validation", "?"))).name


def _exp(x: float) -> float:
    return math.exp(min(x, 50.0))


def _born(doc: dict[str, Any]) -> str:
    parents = doc["parents"]
    if not parents:
        return f"Born in generation {doc['generation']} as a random initial adapter."
    how = doc["operator"]
    return f"Born in generation {doc['generation']} by `{how}` from {' and '.join(parents)}."


def _from_pretrained(base: dict[str, Any]) -> str:
    ref = base["in_recipe"]
    if base.get("hub_id"):
        rev = base.get("revision")
        return _python_str(base["hub_id"]) + (f", revision={_python_str(rev)}" if rev else "")
    return _python_str(ref)
