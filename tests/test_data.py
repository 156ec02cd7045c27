"""engine.data: the three formats, prompt masking, truncation, padding, and every DataError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data import Example, TokenizedSplit, alpaca_prompt, data_hash, read_examples, tokenize
from engine.errors import DataError

WORDS = [
    "### Instruction:\nWhat is the first-line treatment for migraine?\n\n### Response:\nSumatriptan 50 mg.",
    "<s>[INST] Write a note.\n40-year-old man [/INST] Assessment: sciatica. Plan: naproxen.</s>",
    "Comment on these vital signs. BP 120/80, HR 70 normal high low fast slow",
]


@pytest.fixture(scope="module")
def tok():
    from engine.embedded.build import train_tokenizer

    return train_tokenizer(WORDS * 20, 400)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def jl(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


# --- reading ---------------------------------------------------------------------------------------


def test_text_format(tmp_path):
    p = write(tmp_path, "a.txt", "first line\n\n   \r\nsecond line\r\n")
    assert read_examples(p, "text") == [
        Example("<s>", "first line</s>"),
        Example("<s>", "second line</s>"),
    ]
    assert read_examples(p, "text", limit=1) == [Example("<s>", "first line</s>")]


def test_alpaca_format_with_and_without_input(tmp_path):
    p = write(
        tmp_path,
        "a.jsonl",
        jl(
            {"instruction": "Do X.", "input": "ctx", "output": "Done."},
            {"instruction": "Do Y.", "input": "", "output": "Yes."},
            {"instruction": "Do Z.", "output": "Zed."},
            {"instruction": "Do W.", "input": None, "output": "W."},
        ),
    )
    ex = read_examples(p, "alpaca")
    assert ex[0] == Example(
        "<s>### Instruction:\nDo X.\n\n### Input:\nctx\n\n### Response:\n", "Done.</s>"
    )
    assert ex[1] == Example("<s>### Instruction:\nDo Y.\n\n### Response:\n", "Yes.</s>")
    assert ex[2].prompt == alpaca_prompt("Do Z.") and ex[3].prompt == alpaca_prompt("Do W.")


def test_mistral_format_single_and_multi_turn(tmp_path):
    p = write(
        tmp_path,
        "m.jsonl",
        jl(
            {"text": "<s>[INST] Q1 [/INST] A1</s>"},
            {"text": "<s>[INST] Q1 [/INST] A1</s>[INST] Q2 [/INST] A2 </s>\n"},
            {"text": "[INST] no bos [/INST] ok</s>"},
        ),
    )
    a, b, c = read_examples(p, "mistral-inst")
    assert a == Example("<s>[INST] Q1 [/INST]", " A1</s>")
    assert b == Example("<s>[INST] Q1 [/INST] A1</s>[INST] Q2 [/INST]", " A2 </s>")
    assert c.prompt.startswith("<s>[INST]") and c.response == " ok</s>"


def test_bom_is_ignored(tmp_path):
    p = write(tmp_path, "b.txt", "\ufeffhello\n".encode())
    assert read_examples(p, "text") == [Example("<s>", "hello</s>")]


def test_shipped_files_round_trip():
    """The shipped data files are exactly what the corpus generator renders, and read back intact."""
    from engine.embedded import BUILD_INFO, DATA_DIR
    from engine.embedded.corpus import EXTENSIONS, SIZES, make_splits, render_file

    assert BUILD_INFO.is_file(), "run: python -m engine.embedded.build"
    info = json.loads(BUILD_INFO.read_text())
    sizes = {k: info["examples"].get(k, v) for k, v in SIZES.items()}
    splits = make_splits(info["seed"], sizes)
    for split in ("general", "domain_train", "domain_val"):
        recs = splits[split]
        for fmt, ext in EXTENSIONS.items():
            path = DATA_DIR / f"{split}{ext}"
            assert path.read_text(encoding="utf-8") == render_file(recs, fmt), path
            ex = read_examples(path, fmt)
            assert len(ex) == len(recs)
            for r, e in zip(recs[:200], ex[:200], strict=True):
                assert e.response.endswith("</s>") and r.output in e.response
                if fmt == "alpaca":
                    assert e == Example(alpaca_prompt(r.instruction, r.input), r.output + "</s>")
                elif fmt == "mistral-inst":
                    assert r.instruction in e.prompt and e.prompt.endswith("[/INST]")


# --- tokenizing ------------------------------------------------------------------------------------


def test_prompt_is_masked_and_response_is_labelled(tok):
    ex = [
        Example(
            alpaca_prompt("What is the first-line treatment for migraine?"),
            "Sumatriptan 50 mg.</s>",
        )
    ]
    t = tokenize(ex, tok, 128)
    p = tok(ex[0].prompt, add_special_tokens=False)["input_ids"]
    r = tok(ex[0].response, add_special_tokens=False)["input_ids"]
    n = len(p) + len(r)
    assert t.input_ids[0, :n].tolist() == p + r
    assert (t.labels[0, : len(p)] == -100).all()
    assert t.labels[0, len(p) : n].tolist() == r
    assert tok.decode(t.labels[0, len(p) : n].tolist()) == "Sumatriptan 50 mg.</s>"
    assert t.n_tokens == len(r) and len(t) == 1
    assert t.input_ids[0, 0].item() == tok.bos_token_id  # "<s>" in the text is the special token


def test_text_format_labels_every_token_after_bos(tok, tmp_path):
    ex = read_examples(write(tmp_path, "a.txt", "BP 120/80, HR 70 normal\n"), "text")
    t = tokenize(ex, tok, 64)
    n = int(t.attention_mask[0].sum())
    assert t.labels[0, 0].item() == -100 and t.input_ids[0, 0].item() == tok.bos_token_id
    assert t.labels[0, 1:n].tolist() == t.input_ids[0, 1:n].tolist()
    assert t.input_ids[0, n - 1].item() == tok.eos_token_id


def test_mistral_labels_start_after_last_inst(tok):
    ex = [Example("<s>[INST] Q1 [/INST] A1</s>[INST] Q2 [/INST]", " A2</s>")]
    t = tokenize(ex, tok, 64)
    ids = t.input_ids[0].tolist()
    last = max(i for i, x in enumerate(ids) if x == tok.convert_tokens_to_ids("[/INST]"))
    assert (t.labels[0, : last + 1] == -100).all() and t.labels[0, last + 1].item() != -100
    assert tok.decode([x for x in t.labels[0].tolist() if x != -100]) == " A2</s>"


def test_padding_is_right_and_masked(tok):
    ex = [
        Example("<s>", "short</s>"),
        Example("<s>", "a somewhat longer response than the first</s>"),
    ]
    t = tokenize(ex, tok, 40)
    assert isinstance(
        t, TokenizedSplit
    ) and t.input_ids.shape == t.labels.shape == t.attention_mask.shape == (2, 40)
    n0 = int(t.attention_mask[0].sum())
    assert t.attention_mask[0, :n0].all() and not t.attention_mask[0, n0:].any()
    assert (t.input_ids[0, n0:] == tok.pad_token_id).all()
    assert (t.labels[0, n0:] == -100).all()
    assert t.n_tokens == int((t.labels != -100).sum())


def test_truncation(tok):
    ex = [
        Example(
            alpaca_prompt("What is the first-line treatment for migraine?"),
            "Sumatriptan 50 mg daily.</s>",
        )
    ]
    full = tokenize(ex, tok, 256)
    n = int(full.attention_mask.sum())
    p = len(tok(ex[0].prompt, add_special_tokens=False)["input_ids"])
    cut = tokenize(ex, tok, p + 2)
    assert cut.input_ids.shape == (1, p + 2) and cut.attention_mask.all()
    assert cut.input_ids[0].tolist() == full.input_ids[0, : p + 2].tolist()
    assert cut.n_tokens == 2 < full.n_tokens == n - p
    short = tokenize(ex, tok, 3)  # the prompt alone overflows: no label survives
    assert short.n_tokens == 0 and short.input_ids.shape == (1, 3)


def test_empty_example_list(tok):
    t = tokenize([], tok, 16)
    assert len(t) == 0 and t.n_tokens == 0 and t.input_ids.shape == (0, 16)


def test_data_hash(tmp_path):
    a = write(tmp_path, "a.txt", "one\n")
    h = data_hash(a)
    assert len(h) == 16 and int(h, 16) >= 0 and h == data_hash(a)
    write(tmp_path, "a.txt", "two\n")
    assert data_hash(a) != h
    with pytest.raises(DataError, match="does not exist"):
        data_hash(tmp_path / "nope.txt")


# --- errors ----------------------------------------------------------------------------------------

OBJ = {"instruction": "Do X.", "input": "", "output": "Done."}

ERRORS = [
    # (name, format, content, line, fragment that must appear in the message)
    ("empty", "text", "", None, "no examples"),
    ("blank", "alpaca", "\n  \n\n", None, "no examples"),
    ("utf8", "text", b"ok\nfine\nbad \xff byte\n", 3, "not valid UTF-8"),
    (
        "utf8-json",
        "alpaca",
        jl(OBJ).encode() + b'{"instruction": "\xc3\x28"}\n',
        2,
        "not valid UTF-8",
    ),
    ("json", "alpaca", jl(OBJ, '{"instruction": "x", "output": '), 2, "not valid JSON"),
    ("json-mistral", "mistral-inst", jl("{'text': 'single quotes'}"), 1, "not valid JSON"),
    ("list", "alpaca", jl(OBJ, OBJ, [1, 2]), 3, "a list"),
    ("string", "mistral-inst", jl('"just a string"'), 1, "a string"),
    ("no-instruction", "alpaca", jl({"input": "", "output": "x"}), 1, '"instruction"'),
    ("no-output", "alpaca", jl(OBJ, {"instruction": "x", "response": "y"}), 2, '"output"'),
    ("output-number", "alpaca", jl({"instruction": "x", "output": 3}), 1, "a number"),
    (
        "input-list",
        "alpaca",
        jl({"instruction": "x", "input": ["a"], "output": "y"}),
        1,
        '"input" is a list',
    ),
    ("no-text", "mistral-inst", jl({"prompt": "<s>[INST] q [/INST] a</s>"}), 1, '"text"'),
    ("text-null", "mistral-inst", jl({"text": None}), 1, "null"),
    ("no-inst", "mistral-inst", jl({"text": "<s>question [/INST] a</s>"}), 1, "[INST]"),
    ("no-end-inst", "mistral-inst", jl({"text": "<s>[INST] question a</s>"}), 1, "[/INST]"),
    (
        "no-response",
        "mistral-inst",
        jl({"text": "<s>[INST] q [/INST] a</s>"}, {"text": "<s>[INST] q [/INST]  "}),
        2,
        "no response",
    ),
    ("only-eos", "mistral-inst", jl({"text": "<s>[INST] q [/INST] </s>"}), 1, "no response"),
    (
        "no-eos",
        "mistral-inst",
        jl({"text": "<s>[INST] q [/INST] an answer"}),
        1,
        "does not end with </s>",
    ),
    ("order", "mistral-inst", jl({"text": "<s>[/INST] q [INST] a</s>"}), 1, "before"),
]


@pytest.mark.parametrize("name,fmt,content,line,fragment", ERRORS, ids=[e[0] for e in ERRORS])
def test_data_errors_name_file_and_line(tmp_path, name, fmt, content, line, fragment):
    path = write(tmp_path, f"{name}.data", content)
    with pytest.raises(DataError) as info:
        read_examples(path, fmt)
    exc = info.value
    msg = str(exc)
    assert str(path) in msg
    if line is not None:
        assert f"line {line}:" in msg
    assert fragment in msg
    assert "\n" not in msg and "Traceback" not in msg
    assert "Expected" in msg or "expected" in msg
    # no raw decoding error leaks, not even as the exception's context
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    assert not isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError))


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as info:
        read_examples(tmp_path / "absent.jsonl", "alpaca")
    assert str(tmp_path / "absent.jsonl") in str(info.value) and "does not exist" in str(info.value)


def test_directory_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="directory"):
        read_examples(tmp_path, "text")
    p = write(tmp_path, "a.txt", "x\n")
    with pytest.raises(DataError, match="Unknown data format"):
        read_examples(p, "csv")  # type: ignore[arg-type]


def test_limit_stops_before_later_errors(tmp_path):
    p = write(tmp_path, "a.jsonl", jl(OBJ, OBJ, "not json"))
    assert len(read_examples(p, "alpaca", limit=2)) == 2
    with pytest.raises(DataError, match="line 3"):
        read_examples(p, "alpaca")
