"""The trained TTS student on disk: its files, loading them, and text → waveform.

``assets/tts/`` (written by ``python -m engine.tts.build``) holds ``model.safetensors`` (the
weights; safetensors only) and ``config.json`` (architecture, phoneme vocabulary, mel features,
the style evolution's target style and sentences, training figures). :func:`load_student` reads
both back into a :class:`LoadedStudent` (the model and its :class:`PhonemeVocabulary`) and says
which file is missing or wrong and what was expected; :func:`render` speaks a text in a style
through Griffin-Lim (engine/tts/audio.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import ModelError
from engine.tts.audio import MEL, griffin_lim
from engine.tts.espeak import SAMPLE_RATE, Style, phonemize

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets" / "tts"
"""Where the shipped student lives."""
WEIGHTS_FILE, CONFIG_FILE, BUILD_INFO_FILE = "model.safetensors", "config.json", "BUILD_INFO.json"
FORMAT = "genesis-tts-student"
FORMAT_VERSION = 1
PHONEMIZER_STYLE = Style()
"""The style text is phonemised in: the symbols of en-us do not depend on variant, pitch or rate."""


class StudentLoadError(ModelError):
    """The TTS student's files are missing, unreadable or do not match each other."""


class PhonemeVocabulary:
    """espeak-ng phoneme symbols ↔ ids; 0 is padding, 1 stands for a symbol not in the table (a
    symbol known only with another stress mark takes that one's id)."""

    def __init__(self, symbols: Sequence[str]) -> None:
        from engine.tts.model import PAD, UNK

        symbols = list(symbols)
        if symbols[:2] != [PAD, UNK]:
            raise ValueError(
                f"a phoneme vocabulary starts with {PAD!r}, {UNK!r}; got {symbols[:2]}"
            )
        if len(set(symbols)) != len(symbols):
            raise ValueError("a phoneme vocabulary lists each symbol once")
        self.symbols = tuple(symbols)
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_corpus(cls, sequences: Sequence[Sequence[str]]) -> PhonemeVocabulary:
        """Pad, unk, then every symbol of the corpus in order of first appearance."""
        from engine.tts.model import PAD, UNK

        seen: dict[str, None] = {}
        for seq in sequences:
            for s in seq:
                seen.setdefault(s, None)
        return cls([PAD, UNK, *seen])

    def __len__(self) -> int:
        return len(self.symbols)

    def _id(self, symbol: str) -> int:
        """The symbol's id; else the same phoneme with another stress mark (``,aU`` → ``aU``,
        ``'aU``); else unk."""
        if symbol in self._ids:
            return self._ids[symbol]
        bare = symbol.lstrip("',")
        for alt in (bare, "'" + bare, "," + bare):
            if alt in self._ids:
                return self._ids[alt]
        return 1

    def encode(self, symbols: Sequence[str]) -> list[int]:
        return [self._id(s) for s in symbols]

    def unknown(self, symbols: Sequence[str]) -> list[str]:
        """The symbols this vocabulary cannot speak, even with another stress mark (→ unk)."""
        return [s for s in symbols if self._id(s) == 1]

    def encode_text(self, text: str) -> list[int]:
        """Phoneme ids of ``text`` (espeak-ng en-us symbols). Empty text is refused."""
        ids = self.encode(phonemize(text, PHONEMIZER_STYLE))
        if not ids:
            raise ValueError(f"{text!r} has no phonemes to speak")
        return ids


class LoadedStudent(NamedTuple):
    """The student model (eval mode) and its vocabulary, plus the rest of ``config.json``."""

    model: Any  # engine.tts.model.TTSStudent
    vocab: PhonemeVocabulary
    config: dict[str, Any]


# --- writing ------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically (temporary file, then rename)."""
    _atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_student(
    model: Any,
    vocab: PhonemeVocabulary,
    out: Path,
    extra: dict[str, Any] | None = None,
    *,
    weights_dtype: str = "float16",
) -> int:
    """Write ``model.safetensors`` (float tensors as ``weights_dtype``; the mel statistics stay
    float32) and ``config.json`` into ``out``, each atomically. Returns the bytes written."""
    import torch
    from safetensors.torch import save

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        weights_dtype
    ]
    keep32 = {"mel_mean", "mel_std", "log_floor"}
    tensors = {
        k: (v.detach().to("cpu", dtype if k not in keep32 else torch.float32)).contiguous()
        for k, v in model.state_dict().items()
    }
    cfg = model.current_config()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": cfg.to_dict(),
        "vocabulary": list(vocab.symbols),
        "phonemizer": {"voice": PHONEMIZER_STYLE.voice, "note": "espeak-ng phoneme mnemonics"},
        "mel": asdict(MEL),
        "style": {
            "n_tokens": cfg.n_tokens,
            "neutral": "uniform weights 1/K",
            "weights": "style = sum_k w_k * token_k; the reference encoder gives softmax weights",
        },
        "weights_dtype": weights_dtype,
        **(extra or {}),
    }
    out = Path(out)
    _atomic_write(out / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT}))
    write_json(out / CONFIG_FILE, config)
    return (out / WEIGHTS_FILE).stat().st_size + (out / CONFIG_FILE).stat().st_size


# --- loading ------------------------------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise StudentLoadError(
            f"The TTS student in {path} has no {CONFIG_FILE} (expected the architecture and "
            f"phoneme vocabulary written by `python -m engine.tts.build`): rebuild it with "
            f"`python -m engine.tts.build --out {path}`."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StudentLoadError(f"{file} is not readable JSON ({e}): rebuild the student.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise StudentLoadError(
            f'{file} is not a TTS student config (expected "format": "{FORMAT}").'
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise StudentLoadError(
            f"{file} has format_version {config.get('format_version')!r}; this code reads "
            f"version {FORMAT_VERSION}: rebuild the student."
        )
    for key in ("architecture", "vocabulary"):
        if key not in config:
            raise StudentLoadError(f"{file} lacks {key!r}: rebuild the student.")
    return config


def load_student(
    path: str | Path = ASSETS_DIR, device: str = "cpu", dtype: Any = None
) -> LoadedStudent:
    """Load the student in ``path`` (a directory with model.safetensors and config.json) onto
    ``device`` as ``dtype`` (default float32), in eval mode. Raises StudentLoadError (a
    ModelError) naming the file and what was expected when anything is missing or inconsistent."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.tts.model import StudentConfig, TTSStudent

    path = Path(path)
    if not path.is_dir():
        raise StudentLoadError(
            f"There is no TTS student at {path} (expected a directory with {WEIGHTS_FILE} and "
            f"{CONFIG_FILE}): build one with `python -m engine.tts.build --out {path}`."
        )
    config = _read_config(path)
    try:
        cfg = StudentConfig.from_dict(config["architecture"])
        vocab = PhonemeVocabulary(config["vocabulary"])
    except (TypeError, ValueError) as e:
        raise StudentLoadError(
            f"{path / CONFIG_FILE} has a bad architecture or vocabulary: {e}."
        ) from None
    if len(vocab) != cfg.n_symbols:
        raise StudentLoadError(
            f"{path / CONFIG_FILE}: the vocabulary has {len(vocab)} symbols but the architecture "
            f"expects n_symbols = {cfg.n_symbols}."
        )
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise StudentLoadError(
            f"The TTS student in {path} has no {WEIGHTS_FILE} (expected its weights in "
            f"safetensors format beside {CONFIG_FILE}): rebuild it with "
            f"`python -m engine.tts.build --out {path}`."
        )
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise StudentLoadError(
            f"{weights} is not a readable safetensors file ({e}): rebuild the student."
        ) from None
    model = TTSStudent(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(
                f"unexpected tensors {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
            )
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:5]) + (" …" if len(wrong) > 5 else ""))
        raise StudentLoadError(
            f"{weights} does not match the architecture in {CONFIG_FILE} ({', '.join(parts)}): "
            f"the two files come from different builds; rebuild the student."
        )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedStudent(model, vocab, config)


# --- speaking -----------------------------------------------------------------------------


def _weights(student: LoadedStudent, weights: Any) -> Any:
    import torch

    model = student.model
    if weights is None:
        return model.neutral_weights(1)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=model.mel_mean.device)
    return w[None] if w.ndim == 1 else w


def mels_to_audio(mels: Any, lengths: Any, *, n_iter: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Griffin-Lim of each row's valid frames: float32 waveforms at 22 050 Hz."""
    out = []
    for m, n in zip(mels, lengths, strict=True):
        mel = m[:, : int(n)].detach().float().cpu().numpy()
        out.append(griffin_lim(mel, n_iter=n_iter, seed=seed))
    return out


def render_batch(
    student: LoadedStudent, text: str, weights: Any, *, n_iter: int = 32, seed: int = 0
) -> tuple[list[np.ndarray], int]:
    """``text`` in B styles, weights (B, K): one forward pass, then Griffin-Lim per row."""
    ids = student.vocab.encode_text(text)
    mels, lengths = student.model.synthesize_mel(ids, _weights(student, weights))
    return mels_to_audio(mels, lengths, n_iter=n_iter, seed=seed), SAMPLE_RATE


def render(
    student: LoadedStudent, text: str, weights: Any = None, *, n_iter: int = 32, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Speak ``text`` in the style of token ``weights`` (K,) — the neutral style when None —
    through Griffin-Lim: (float32 samples in [-1, 1], sample rate)."""
    w = _weights(student, weights)
    if w.shape[0] != 1:
        raise ValueError(f"render takes one style (K,) weights; use render_batch for {w.shape[0]}")
    audio, sr = render_batch(student, text, w, n_iter=n_iter, seed=seed)
    return audio[0], sr


def real_time_factor(
    student: LoadedStudent, text: str, batch: int, *, repeat: int = 3, vocoder: bool = True
) -> dict[str, float]:
    """Seconds of compute per second of audio for ``text`` in ``batch`` styles (random softmax
    weights, fixed seed; the neutral style for a batch of 1): the student's forward pass, and with
    ``vocoder`` Griffin-Lim on every row too. Medians of ``repeat`` runs after a warm-up (the
    vocoder of a batch > 1 is timed once)."""
    import torch

    ids = student.vocab.encode_text(text)
    g = torch.Generator().manual_seed(0)
    k = student.model.n_tokens
    w = torch.softmax(torch.randn(batch, k, generator=g) * 2, dim=-1)
    if batch == 1:
        w = student.model.neutral_weights(1).cpu()
    w = w.to(student.model.mel_mean.device)
    student.model.synthesize_mel(ids, w)  # warm-up
    model_t, voc_t, audio_s = [], [], 0.0
    for i in range(repeat):
        t0 = time.perf_counter()
        mels, lengths = student.model.synthesize_mel(ids, w)
        model_t.append(time.perf_counter() - t0)
        audio_s = float((lengths - 1).clamp(min=1).sum()) * MEL.hop_length / SAMPLE_RATE
        if vocoder and (i == 0 or batch == 1):  # a batch's Griffin-Lim once: it is per row anyway
            t0 = time.perf_counter()
            mels_to_audio(mels, lengths)
            voc_t.append(time.perf_counter() - t0)
    out = {
        "batch": batch,
        "audio_s": round(audio_s, 3),
        "model": float(np.median(model_t)) / audio_s,
    }
    if vocoder:
        out["vocoder"] = float(np.median(voc_t)) / audio_s
        out["total"] = out["model"] + out["vocoder"]
    return out
