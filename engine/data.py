"""Reading the three data formats a profile accepts, and turning examples into training tensors.

Formats (one example per line, UTF-8):

* ``text``: plain lines; prompt ``"<s>"``, response ``line + "</s>"`` (loss on every token).
* ``alpaca``: JSONL objects with ``instruction`` (required), ``input`` (optional, may be empty) and
  ``output`` (required); prompt ``"<s>### Instruction:\\n{instruction}\\n\\n"`` (+ ``"### Input:\\n{input}\\n\\n"``
  when the input is not empty) + ``"### Response:\\n"``, response ``output + "</s>"``.
* ``mistral-inst``: JSONL objects with ``text`` = ``"<s>[INST] question [/INST] answer</s>"``; several
  ``[INST] … [/INST]`` turns are allowed: everything up to and including the last ``[/INST]`` is the
  prompt, the rest (which must end with ``</s>``) is the response.

Every problem with a file becomes a ``DataError`` naming the file, the 1-based line, what was found
and what was expected; no raw ``JSONDecodeError``/``UnicodeDecodeError`` ever leaves this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import DataError

if TYPE_CHECKING:
    import torch

Format = Literal["text", "alpaca", "mistral-inst"]
FORMATS: tuple[str, ...] = ("text", "alpaca", "mistral-inst")

BOS, EOS = "<s>", "</s>"
INST, END_INST = "[INST]", "[/INST]"

_EXPECTED = {
    "text": "one example per line of plain UTF-8 text",
    "alpaca": 'one JSON object per line with the string keys "instruction", "output" and optionally "input"',
    "mistral-inst": 'one JSON object per line with a string key "text" of the form "<s>[INST] question [/INST] answer</s>"',
}


@dataclass(frozen=True)
class Example:
    """Exactly what the model sees: loss is taken on the response tokens only."""

    prompt: str
    response: str


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the format's own key
    prompt = f"{BOS}### Instruction:\n{instruction}\n\n"
    if input:
        prompt += f"### Input:\n{input}\n\n"
    return prompt + "### Response:\n"


def _short(s: str, n: int = 80) -> str:
    s = s.strip()
    return repr(s if len(s) <= n else s[: n - 1] + "…")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _lines(path: Path, fmt: str):
    """Yield (line number, text) for the non-empty lines of ``path``, decoding each line strictly."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"The data file {path} does not exist. Expected a file in the {fmt} format ({_EXPECTED[fmt]}); "
            "check the path in the profile."
        ) from None
    except IsADirectoryError:
        raise DataError(
            f"The data path {path} is a directory, not a file. Expected a file in the {fmt} format ({_EXPECTED[fmt]})."
        ) from None
    except OSError as exc:
        raise DataError(f"The data file {path} cannot be read ({exc.strerror or exc}).") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}, line {number}: found bytes that are not valid UTF-8 "
                f"(byte 0x{chunk[exc.start]:02x} at byte {exc.start + 1} of the line). Expected a UTF-8 file in the {fmt} format "
                f"({_EXPECTED[fmt]}); re-save the file as UTF-8."
            ) from None
        if line.strip():
            yield number, line.rstrip("\r")


def _json_object(path: Path, number: int, line: str, fmt: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {number}: this line is not valid JSON ({exc.msg} at column {exc.colno}): "
            f"found {_short(line)}. Expected {_EXPECTED[fmt]}."
        ) from None
    except RecursionError:
        raise DataError(
            f"{path}, line {number}: this line's JSON is nested too deeply. Expected {_EXPECTED[fmt]}."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}, line {number}: found {_json_type(obj)} ({_short(line)}) where a JSON object was "
            f"expected. Expected {_EXPECTED[fmt]}."
        )
    return obj


def _string(
    path: Path, number: int, obj: dict[str, Any], key: str, fmt: str, *, required: bool
) -> str:
    if key not in obj or (not required and obj[key] is None):
        if not required:
            return ""
        found = ", ".join(f'"{k}"' for k in obj) or "none"
        raise DataError(
            f'{path}, line {number}: the object has no "{key}" key (keys found: {found}). '
            f"Expected {_EXPECTED[fmt]}."
        )
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(
            f'{path}, line {number}: "{key}" is {_json_type(value)} ({_short(json.dumps(value))}), '
            f"but it must be a string. Expected {_EXPECTED[fmt]}."
        )
    return value


def _mistral(path: Path, number: int, text: str) -> Example:
    where = f"{path}, line {number}"
    expected = f"Expected {_EXPECTED['mistral-inst']}."
    if INST not in text or END_INST not in text:
        missing = " and ".join(t for t in (INST, END_INST) if t not in text)
        raise DataError(
            f'{where}: the "text" value has no {missing} marker: found {_short(text)}. {expected}'
        )
    if text.index(INST) > text.index(END_INST):
        raise DataError(
            f'{where}: the "text" value has {END_INST} before its first {INST}: found {_short(text)}. {expected}'
        )
    cut = text.rindex(END_INST) + len(END_INST)
    prompt, response = text[:cut], text[cut:].rstrip()
    body = response[: -len(EOS)] if response.endswith(EOS) else response
    if not body.strip():
        raise DataError(
            f"{where}: there is no response after the last {END_INST} (found {_short(response) if response.strip() else 'nothing'}). {expected}"
        )
    if not response.endswith(EOS):
        raise DataError(
            f"{where}: the response after the last {END_INST} does not end with {EOS} (found {_short(response)}). {expected}"
        )
    if not prompt.lstrip().startswith(BOS):
        prompt = BOS + prompt.lstrip()
    return Example(prompt, response)


def read_examples(path: Path | str, fmt: Format, *, limit: int | None = None) -> list[Example]:
    """The examples of ``path`` in format ``fmt`` (at most ``limit``), or a ``DataError``."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(
            f"Unknown data format {fmt!r} for {path}; expected one of: {', '.join(FORMATS)}."
        )
    examples: list[Example] = []
    for number, line in _lines(path, fmt):
        if limit is not None and len(examples) >= limit:
            break
        if fmt == "text":
            examples.append(Example(BOS, line.strip() + EOS))
            continue
        obj = _json_object(path, number, line, fmt)
        if fmt == "alpaca":
            instruction = _string(path, number, obj, "instruction", fmt, required=True)
            output = _string(path, number, obj, "output", fmt, required=True)
            inp = _string(path, number, obj, "input", fmt, required=False)
            examples.append(Example(alpaca_prompt(instruction, inp), output + EOS))
        else:
            examples.append(
                _mistral(path, number, _string(path, number, obj, "text", fmt, required=True))
            )
    if not examples and limit != 0:
        raise DataError(
            f"The data file {path} holds no examples (it is empty or has only blank lines). "
            f"Expected {_EXPECTED[fmt]}."
        )
    return examples


@dataclass
class TokenizedSplit:
    input_ids: torch.LongTensor  # [N, L]
    labels: torch.LongTensor  # [N, L], -100 on the prompt and the padding
    attention_mask: torch.LongTensor  # [N, L]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        """The number of tokens that carry loss (labels != -100)."""
        return int((self.labels != -100).sum().item())

    def subset(self, index: Any) -> TokenizedSplit:
        return TokenizedSplit(self.input_ids[index], self.labels[index], self.attention_mask[index])


def tokenize(examples: list[Example], tokenizer: Any, max_len: int) -> TokenizedSplit:
    """Prompt and response are tokenized separately (no special tokens added: ``<s>``/``</s>`` are in
    the text) and joined, truncated on the right to ``max_len`` and right-padded with the pad token.
    Labels are the input ids on response tokens and -100 on prompt and padding."""
    import torch

    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, not {max_len}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError(
            "The tokenizer has neither a pad token nor an end-of-sequence token to pad with."
        )
    n = len(examples)
    input_ids = torch.full((n, max_len), pad, dtype=torch.long)
    labels = torch.full((n, max_len), -100, dtype=torch.long)
    attention_mask = torch.zeros((n, max_len), dtype=torch.long)
    if n == 0:
        return TokenizedSplit(input_ids, labels, attention_mask)
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids = (list(p) + list(r))[:max_len]
        k, np_ = len(ids), min(len(p), max_len)
        input_ids[i, :k] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, :k] = 1
        labels[i, np_:k] = input_ids[i, np_:k]
    return TokenizedSplit(input_ids, labels, attention_mask)


def data_hash(path: Path | str) -> str:
    """sha256 of the file's bytes, the first 16 hex digits (for cache keys)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise DataError(f"The data file {path} does not exist.") from None
    except OSError as exc:
        raise DataError(f"The data file {path} cannot be read ({exc.strerror or exc}).") from None
    return h.hexdigest()[:16]


def check_data(profile: Any) -> None:
    """Read the profile's training and validation splits as the workers will (the same limits), so
    a malformed or empty file is a ``DataError`` before a run directory exists, not a failed run."""
    d = profile.data
    read_examples(d.train, d.format, limit=d.max_train_examples)
    read_examples(d.validation, d.format, limit=d.max_val_examples)
