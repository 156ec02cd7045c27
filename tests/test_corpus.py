"""The synthetic clinical corpus and the shipped embedded checkpoints."""

from __future__ import annotations

import json
import math
import re

import pytest

from engine.embedded.corpus import (
    DOMAIN,
    DOMAIN_DRUGS,
    DOMAIN_HISTORY,
    DOMAIN_SAFETY,
    GENERAL,
    Record,
    generate,
    make_splits,
    render_alpaca,
    render_mistral,
    render_text,
)

SMALL = {"general": 800, "domain_train": 600, "domain_val": 150, "general_val": 100}


def _text(r: Record) -> str:
    return f"{r.instruction}\n{r.input}\n{r.output}"


def test_same_seed_same_text_different_seed_different_text():
    a, b, c = make_splits(0, SMALL), make_splits(0, SMALL), make_splits(1, SMALL)
    assert a == b
    for split in SMALL:
        assert len(a[split]) == SMALL[split]
        assert a[split] != c[split]
    assert generate("general", 50, 5) == generate("general", 50, 5) != generate("general", 50, 6)


def test_validation_never_overlaps_domain_train():
    s = make_splits(0, SMALL)
    train_prompts = {(r.instruction, r.input) for r in s["domain_train"]}
    assert not train_prompts & {(r.instruction, r.input) for r in s["domain_val"]}
    assert not set(s["domain_train"]) & set(s["domain_val"])
    assert len(set(s["domain_val"])) == len(s["domain_val"])  # no duplicates inside validation
    assert not {(r.instruction, r.input) for r in s["general"]} & {
        (r.instruction, r.input) for r in s["general_val"]
    }


def test_general_never_shows_the_domain():
    general = make_splits(0, {**SMALL, "general": 4000})["general"]
    blob = "\n".join(_text(r) for r in general).lower()
    terms = {"ecg", "risk:", "cardiology", *DOMAIN_HISTORY, *DOMAIN_SAFETY}
    terms |= {d for d, _, _ in DOMAIN_DRUGS} | {u for _, _, u in DOMAIN_DRUGS}
    for c in DOMAIN:
        terms |= {c.name, c.treatment, c.finding, c.extra, c.test}
    for term in sorted(terms):
        assert term.lower() not in blob, term
    assert not {c.name for c in GENERAL} & {c.name for c in DOMAIN}


AP = re.compile(
    r"^(?:Assessment: (?:likely )?|Impression: )(?P<name>[^.]+)\. Plan: (?:start |commence )?(?P<plan>[^;]+);"
)


def test_domain_facts_are_consistent():
    """A condition always gets the same first-line treatment; a key finding always the same diagnosis."""
    domain = make_splits(0, SMALL)["domain_train"]
    by_name = {c.name: c for c in DOMAIN}
    by_finding = {c.finding: c for c in DOMAIN}
    names = set()
    for r in domain:
        m = AP.match(r.output)
        if m:
            c = by_name[m["name"]]
            names.add(c.name)
            assert m["plan"] == c.plan_drug()
            assert re.search(r" Risk: (low|moderate|high)\.", r.output) and "ECG:" in r.input
            if f"ECG: {c.finding}" in r.input or f"findings: {c.finding}" in r.input:
                assert by_finding[c.finding] is c
        if r.instruction.startswith("What is the first-line treatment for "):
            c = by_name[r.instruction[len("What is the first-line treatment for ") : -1]]
            assert (
                r.output.lower().removeprefix("first-line treatment is ")
                == c.plan_drug().lower() + "."
            )
        if r.instruction.startswith("What does ") and r.instruction.endswith(" suggest?"):
            assert (
                by_finding[r.instruction[len("What does ") : -len(" suggest?")]].name.lower()
                in r.output.lower()
            )
    assert names == set(by_name)


def test_renderings_are_one_line_each():
    r = Record("Write the assessment and plan.", 'a "quoted"\ninput', "Assessment: x.")
    assert "\n" not in render_alpaca(r) and "\n" not in render_mistral(r)
    assert json.loads(render_alpaca(r)) == {
        "instruction": r.instruction,
        "input": r.input,
        "output": r.output,
    }
    assert json.loads(render_mistral(r))["text"].startswith("<s>[INST] Write")
    assert render_text(Record("Q?", "", "A.")) == "Q? A."


# --- the shipped checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.embedded import STUDENT_DIR, TEACHER_DIR

    for d in (STUDENT_DIR, TEACHER_DIR):
        assert (d / "model.safetensors").is_file(), (
            f"{d} is missing: run python -m engine.embedded.build"
        )
    out = {}
    for name, d in (("student", STUDENT_DIR), ("teacher", TEACHER_DIR)):
        out[name] = (
            AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(d),
        )
    return out


def test_shipped_checkpoints_sizes_and_tokenizer(shipped):
    student, stok = shipped["student"]
    teacher, ttok = shipped["teacher"]
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters())
    assert 2_500_000 <= n_s <= 4_000_000 and 6_000_000 <= n_t <= 8_000_000
    assert student.config.num_hidden_layers == 8 and student.config.model_type == "llama"
    assert stok.get_vocab() == ttok.get_vocab() and len(stok) == student.config.vocab_size
    for tok in (stok, ttok):
        assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
            "<pad>",
            "<s>",
            "</s>",
            "<unk>",
        )
        ids = tok("<s>[INST] q [/INST] a</s>", add_special_tokens=False)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert (
            tok.convert_tokens_to_ids("[INST]") in ids
            and tok.convert_tokens_to_ids("[/INST]") in ids
        )


def _loss(model, tok, examples) -> float:
    import torch

    from engine.data import tokenize

    t = tokenize(examples, tok, 128)
    assert t.n_tokens > 0 and (t.attention_mask.sum(1) < 128).float().mean() > 0.9
    with torch.no_grad():
        out = model(input_ids=t.input_ids, attention_mask=t.attention_mask, labels=t.labels)
    return float(out.loss)


def test_teacher_beats_student_on_domain_validation(shipped):
    from engine.data import read_examples
    from engine.embedded import DATA_DIR

    domain = read_examples(DATA_DIR / "domain_val.alpaca.jsonl", "alpaca", limit=24)
    general = read_examples(DATA_DIR / "general.mistral.jsonl", "mistral-inst", limit=24)
    losses = {name: _loss(model, tok, domain) for name, (model, tok) in shipped.items()}
    assert losses["teacher"] < 0.5 * losses["student"], losses
    # clearly worse, but sane: better than a uniform guess over the vocabulary (ln 2048 = 7.6) ...
    assert losses["student"] < math.log(len(shipped["student"][1])) - 1.0, losses
    # ... because it has learned general clinical language
    assert _loss(*shipped["student"], general) < 1.0
