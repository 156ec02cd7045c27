"""Build the TTS student from nothing: sentences, espeak-ng reference audio, training, evaluation.

    python -m engine.tts.build                 # the shipped assets/tts/ (about 10 minutes on 2 CPU cores)
    python -m engine.tts.build --quick --out /tmp/tts   # a tiny smoke build (well under a minute)

Everything is deterministic from ``--seed``: the sentences (a seeded ``random.Random`` over fixed
templates), which styles speak which sentence, the references the style encoder sees, the
initialisation and the batch order (``torch.manual_seed``). espeak-ng's audio is a pure function
of (text, style) (engine/tts/espeak.py). Bit-identical weights need the same machine type and
thread count (float reductions).

The data: short clinical sentences (about 1–3 s), each spoken by espeak-ng in several styles of a
grid over voice variants, pitch and rate; the model learns log-mels and phoneme durations
(espeak-ng's own timings). The style evolution's target style is a point inside that grid that
training never hears (``TARGET_STYLE``); the build reports how close the student gets to it with
the neutral style and with the style its reference encoder reads off the target's audio.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Threads that wait at OpenMP barriers sleep instead of spinning (see engine/embedded/build.py);
# must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from engine.tts.espeak import Style  # noqa: E402
from engine.tts.student import ASSETS_DIR, BUILD_INFO_FILE, write_json  # noqa: E402

TARGET_STYLE = Style(variant="f3", pitch=70, rate=200)
"""The style the style evolution is to reach: between the grid's pitches and rates, never trained."""


@dataclass(frozen=True)
class Plan:
    sentences: int  # training sentences
    eval_sentences: int  # held-out sentences (never trained on)
    styles_per_sentence: int
    variants: tuple[str, ...]
    pitches: tuple[int, ...]
    rates: tuple[int, ...]
    steps: int
    batch_frames: int  # frames (padded) per training batch
    lr: float
    duration_weight: float = 1.0  # of the duration loss beside the mel loss
    arch: dict[str, Any] = field(default_factory=dict)
    eval_train_styles: int = 3  # training styles re-checked on held-out sentences
    rtf_repeat: int = 3  # timed repeats of the real-time factor (0: not measured)


FULL = Plan(
    sentences=600,
    eval_sentences=6,
    styles_per_sentence=8,
    variants=("", "m3", "f1", "f2", "f3"),
    pitches=(25, 50, 80),
    rates=(140, 175, 220),
    steps=1200,
    batch_frames=2400,
    lr=2e-3,
)
QUICK = Plan(
    sentences=24,
    eval_sentences=2,
    styles_per_sentence=2,
    variants=("", "f3"),
    pitches=(50,),
    rates=(175,),
    steps=12,
    batch_frames=800,
    lr=2e-3,
    arch={
        "hidden": 32,
        "encoder_filters": (32,),
        "decoder_filters": (32, 32),
        "duration_filters": (16, 16),
        "n_tokens": 4,
        "token_dim": 16,
        "reference_filters": (16,),
    },
    eval_train_styles=1,
    rtf_repeat=0,
)


def log(msg: str) -> None:
    print(msg, flush=True)


# --- sentences ----------------------------------------------------------------------------

# fmt: off
_WHO = ("The patient", "She", "He", "The child", "My father", "Her mother", "The old man",
        "The young woman", "Your son", "The nurse")
_ADJ = ("a mild", "a severe", "a slight", "a sudden", "a dull", "a sharp", "a new", "a bad")
_SYMPTOM = ("fever", "cough", "headache", "rash", "sore throat", "back pain", "chest pain",
            "earache", "stomach ache", "toothache", "nosebleed", "wheeze")
_WHEN = ("today", "since Monday", "this morning", "at night", "for two days", "again",
         "after lunch", "since last week", "every evening", "on and off")
_DRUG = ("aspirin", "ibuprofen", "paracetamol", "amoxicillin", "insulin", "the tablets",
         "the syrup", "vitamin D", "the inhaler", "iron tablets")
_FREQ = ("twice a day", "every morning", "after meals", "at bedtime", "with water",
         "three times daily", "for five days", "once a week")
_VITAL = ("Blood pressure", "Her pulse", "His temperature", "The heart rate", "Oxygen level",
          "Blood sugar", "The breathing rate")
_STATE = ("stable", "high", "low", "normal", "better", "rising", "falling", "fine", "steady")
_ACTION = ("check the pulse", "call the nurse", "rest in bed", "drink more water", "book a scan",
           "wash your hands", "open your mouth", "lie on your back", "sit up slowly",
           "bring your notes", "roll up your sleeve", "keep your arm still")
_TEST = ("chest X-ray", "blood test", "scan", "heart tracing", "urine sample", "skin swab",
         "eye exam", "hearing test")
_RESULT = ("normal", "clear", "fine", "abnormal", "delayed", "reassuring", "unclear", "ready")
_FEEL = ("tired", "dizzy", "much better", "a little weak", "sick", "anxious", "sleepy", "hungry",
         "cold", "thirsty")
_NUM = ("two", "three", "four", "five", "six", "ten", "twelve")
_UNIT = ("days", "weeks", "months", "hours")
_BODY = ("knee", "wrist", "ankle", "shoulder", "elbow", "hip", "neck", "foot")
_TEMPLATES = (
    "{who} has {adj} {symptom} {when}.",
    "{who} should take {drug} {freq}.",
    "{vital} is {state} {when}.",
    "Please {action}.",
    "Please {action} {when}.",
    "The {test} was {result}.",
    "The {test} is {result} {when}.",
    "Is the {symptom} better now?",
    "Does your {body} hurt {when}?",
    "{who} feels {feel} {when}.",
    "Come back in {num} {unit}.",
    "Take {drug} {freq}.",
    "{who} hurt a {body} {when}.",
    "We will repeat the {test} in {num} {unit}.",
    "Stop the {drug} if the {symptom} gets worse.",
)
# fmt: on


def make_sentences(seed: int, n: int, avoid: frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct sentences from the templates, deterministic from ``seed``, none in ``avoid``."""
    rng = random.Random(seed * 7919 + 5)
    slots = {
        "who": _WHO, "adj": _ADJ, "symptom": _SYMPTOM, "when": _WHEN, "drug": _DRUG,
        "freq": _FREQ, "vital": _VITAL, "state": _STATE, "action": _ACTION, "test": _TEST,
        "result": _RESULT, "feel": _FEEL, "num": _NUM, "unit": _UNIT, "body": _BODY,
    }  # fmt: skip
    out: list[str] = []
    seen = set(avoid)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * n + 10_000:
            raise ValueError(f"the templates cannot make {n} distinct sentences")
        template = rng.choice(_TEMPLATES)
        text = template.format(**{k: rng.choice(v) for k, v in slots.items()})
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def style_grid(plan: Plan) -> list[Style]:
    return [
        Style(variant=v, pitch=p, rate=r)
        for v in plan.variants
        for p in plan.pitches
        for r in plan.rates
        if Style(variant=v, pitch=p, rate=r) != TARGET_STYLE
    ]


def style_dict(style: Style) -> dict[str, Any]:
    return asdict(style)


# --- data ---------------------------------------------------------------------------------


@dataclass
class Utterance:
    sentence: int
    style: int
    symbols: list[str]
    mel: np.ndarray  # (n_mels, frames) float32
    durations: np.ndarray  # (phonemes,) int64, sums to frames


def _synthesize_chunk(
    sentences: list[str], styles: list[Style], pairs: list[tuple[int, int]]
) -> list[Utterance]:
    from engine.tts.audio import MEL, mel_spectrogram
    from engine.tts.espeak import synthesize

    out = []
    for si, yi in pairs:
        syn = synthesize(sentences[si], styles[yi])
        mel = mel_spectrogram(syn.samples)
        d = syn.frame_durations(MEL.hop_length)
        if int(d.sum()) != mel.shape[1]:
            raise RuntimeError(f"durations of {sentences[si]!r} do not cover its frames")
        out.append(Utterance(si, yi, syn.symbols, mel, d))
    return out


def synthesize_corpus(
    sentences: list[str], styles: list[Style], pairs: list[tuple[int, int]], workers: int = 1
) -> list[Utterance]:
    """espeak-ng audio → log-mel and frames per phoneme for each (sentence, style) pair, in order.
    ``workers`` > 1 splits the pairs over that many processes (espeak-ng is one per process);
    the result is the same, since each synthesis is a pure function of its text and style."""
    if workers <= 1 or len(pairs) < 200:
        return _synthesize_chunk(sentences, styles, pairs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    n = math.ceil(len(pairs) / (4 * workers))
    chunks = [pairs[i : i + n] for i in range(0, len(pairs), n)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        parts = pool.map(
            _synthesize_chunk, *zip(*[(sentences, styles, c) for c in chunks], strict=True)
        )
        return [u for part in parts for u in part]


def make_pairs(n_sentences: int, n_styles: int, per: int, seed: int) -> list[tuple[int, int]]:
    """Each sentence in ``per`` styles; styles dealt round-robin from shuffled decks so every style
    gets about the same number of utterances."""
    rng = random.Random(seed * 104_729 + 3)
    deck: list[int] = []
    pairs = []
    for s in range(n_sentences):
        chosen: list[int] = []
        while len(chosen) < min(per, n_styles):
            if not deck:
                deck = list(range(n_styles))
                rng.shuffle(deck)
            y = deck.pop()
            if y in chosen:
                deck.insert(0, y)
                if len(set(deck) - set(chosen)) == 0:
                    deck = []
                continue
            chosen.append(y)
        pairs += [(s, y) for y in chosen]
    return pairs


# --- training -----------------------------------------------------------------------------


def make_batches(frames: list[int], batch_frames: int) -> list[list[int]]:
    """Indices grouped by length: each batch's rows × longest row ≤ ``batch_frames``."""
    order = sorted(range(len(frames)), key=lambda i: (frames[i], i))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * frames[i] > batch_frames:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def collate(utts: list[Utterance], idx: list[int], vocab: Any, mean: Any, std: Any) -> dict:
    import torch

    rows = [utts[i] for i in idx]
    t_ph = max(len(u.symbols) for u in rows)
    t_fr = max(u.mel.shape[1] for u in rows)
    ids = torch.zeros(len(rows), t_ph, dtype=torch.long)
    dur = torch.zeros(len(rows), t_ph, dtype=torch.long)
    mel = torch.zeros(len(rows), mean.shape[0], t_fr)
    for r, u in enumerate(rows):
        ids[r, : len(u.symbols)] = torch.tensor(vocab.encode(u.symbols))
        dur[r, : len(u.durations)] = torch.from_numpy(u.durations)
        mel[r, :, : u.mel.shape[1]] = (torch.from_numpy(u.mel) - mean[:, None]) / std[:, None]
    return {
        "ids": ids,
        "id_lengths": torch.tensor([len(u.symbols) for u in rows]),
        "durations": dur,
        "mel": mel,  # normalised, zero past each row's end
        "mel_lengths": torch.tensor([u.mel.shape[1] for u in rows]),
    }


def reference_batch(
    utts: list[Utterance],
    idx: list[int],
    by_style: dict[int, list[int]],
    rng: random.Random,
    mean: Any,
    std: Any,
) -> tuple[Any, Any, Any]:
    """For each row, the log-mel of another utterance in the same style (another sentence when
    the style has one), normalised, its frames and its phoneme count; the style encoder must read
    the style, not the content."""
    import torch

    refs = []
    for i in idx:
        pool = by_style[utts[i].style]
        others = [j for j in pool if utts[j].sentence != utts[i].sentence] or pool
        refs.append(utts[others[rng.randrange(len(others))]])
    t = max(u.mel.shape[1] for u in refs)
    out = torch.zeros(len(refs), mean.shape[0], t)
    for r, u in enumerate(refs):
        out[r, :, : u.mel.shape[1]] = (torch.from_numpy(u.mel) - mean[:, None]) / std[:, None]
    lengths = torch.tensor([u.mel.shape[1] for u in refs])
    return out, lengths, torch.tensor([len(u.symbols) for u in refs])


def mel_and_duration_losses(
    out: Any, mel: Any, mel_lengths: Any, log_durations: Any, id_lengths: Any
) -> tuple[Any, Any]:
    """The student's two losses against targets: L1 + L2 between ``out``'s normalised log-mels and
    ``mel`` over each row's valid frames (``mel_lengths``), and the MSE between ``out``'s
    log(1 + frames) per phoneme and ``log_durations`` over each row's phonemes (``id_lengths``).
    Training (``losses``) and the pruning sweep's healing distillation (engine/tts/sweep.py) share
    this one definition."""
    import torch

    pred = out.extra["normalised"]
    dev = pred.device
    fmask = (torch.arange(pred.shape[-1], device=dev)[None] < mel_lengths[:, None]).float()[:, None]
    n = fmask.sum() * pred.shape[1]
    diff = (pred - mel) * fmask
    mel_loss = diff.abs().sum() / n + (diff**2).sum() / n
    t = log_durations.shape[1]
    pmask = (torch.arange(t, device=dev)[None] < id_lengths[:, None]).float()
    dur_loss = (((out.log_durations - log_durations) * pmask) ** 2).sum() / pmask.sum()
    return mel_loss, dur_loss


def losses(model: Any, batch: dict, ref: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """(mel L1 + L2 on normalised log-mels over valid frames, duration MSE on log(1 + frames),
    the token weights)."""
    import torch

    weights = torch.softmax(model.reference(*ref), dim=-1)
    out = model.run(batch["ids"], batch["id_lengths"], weights, batch["durations"])
    mel_loss, dur_loss = mel_and_duration_losses(
        out,
        batch["mel"],
        batch["mel_lengths"],
        torch.log1p(batch["durations"].float()),
        batch["id_lengths"],
    )
    return mel_loss, dur_loss, weights


def train(
    model: Any, utts: list[Utterance], vocab: Any, plan: Plan, seed: int, mean: Any, std: Any
) -> dict[str, Any]:
    import torch

    frames = [u.mel.shape[1] for u in utts]
    batches = make_batches(frames, plan.batch_frames)
    by_style: dict[int, list[int]] = {}
    for i, u in enumerate(utts):
        by_style.setdefault(u.style, []).append(i)
    rng = random.Random(seed * 31 + 17)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=plan.lr,
        betas=(0.9, 0.98),
    )
    warm = max(1, plan.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return (
            0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, plan.steps - warm))) * 0.98 + 0.02
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0 = time.perf_counter()
    order: list[int] = []
    ema_m = ema_d = None
    every = max(1, plan.steps // 25)
    history = []
    seen_frames = 0
    for step in range(plan.steps):
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        idx = batches[order.pop()]
        batch = collate(utts, idx, vocab, mean, std)
        ref = reference_batch(utts, idx, by_style, rng, mean, std)
        mel_loss, dur_loss, _ = losses(model, batch, ref)
        loss = mel_loss + plan.duration_weight * dur_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        seen_frames += int(batch["mel_lengths"].sum())
        m, d = float(mel_loss.detach()), float(dur_loss.detach())
        ema_m = m if ema_m is None else 0.95 * ema_m + 0.05 * m
        ema_d = d if ema_d is None else 0.95 * ema_d + 0.05 * d
        if (step + 1) % every == 0 or step + 1 == plan.steps:
            dt = time.perf_counter() - t0
            history.append({"step": step + 1, "mel": round(ema_m, 4), "duration": round(ema_d, 4)})
            log(
                f"[student] step {step + 1}/{plan.steps}  mel {ema_m:.4f}  dur {ema_d:.4f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {seen_frames / dt:,.0f} frames/s  {dt:.0f}s"
            )
    model.eval()
    return {
        "steps": plan.steps,
        "batches_per_epoch": len(batches),
        "epochs": round(plan.steps / len(batches), 2),
        "frames_seen": seen_frames,
        "final_mel_loss": round(ema_m or 0.0, 4),
        "final_duration_loss": round(ema_d or 0.0, 4),
        "history": history,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def validation_loss(
    model: Any, utts: list[Utterance], vocab: Any, mean: Any, std: Any, seed: int
) -> dict[str, float]:
    """Teacher-forced losses (true durations, a reference of another sentence in the style)."""
    import torch

    by_style: dict[int, list[int]] = {}
    for i, u in enumerate(utts):
        by_style.setdefault(u.style, []).append(i)
    rng = random.Random(seed)
    tot_m = tot_d = 0.0
    n = 0
    with torch.no_grad():
        for idx in make_batches([u.mel.shape[1] for u in utts], 4000):
            batch = collate(utts, idx, vocab, mean, std)
            ref = reference_batch(utts, idx, by_style, rng, mean, std)
            m, d, _ = losses(model, batch, ref)
            tot_m += float(m) * len(idx)
            tot_d += float(d) * len(idx)
            n += len(idx)
    return {"mel": round(tot_m / n, 4), "duration": round(tot_d / n, 4)}


# --- evaluation ---------------------------------------------------------------------------


def _mcd_mean(refs: list[np.ndarray], syns: list[np.ndarray]) -> float:
    from engine.tts.mcd import mel_cepstral_distortion

    return float(np.mean([mel_cepstral_distortion(r, s) for r, s in zip(refs, syns, strict=True)]))


def evaluate(
    student: Any,
    sentences: list[str],
    train_styles: list[Style],
    train_refs: dict[int, tuple[Any, int]],
    plan: Plan,
    wav_dir: Path | None,
) -> dict[str, Any]:
    """MCD of the student (through Griffin-Lim) against espeak-ng on held-out sentences."""
    import torch

    from engine.tts.audio import griffin_lim, mel_spectrogram
    from engine.tts.espeak import synthesize
    from engine.tts.student import real_time_factor, render_batch

    model = student.model
    k = model.n_tokens
    res: dict[str, Any] = {"sentences": sentences}

    # the target: espeak-ng's audio, its vocoder floor, neutral, reference-encoder weights, tokens
    target_syn = [synthesize(s, TARGET_STYLE) for s in sentences]
    target = [syn.samples for syn in target_syn]
    target_mels = [torch.from_numpy(mel_spectrogram(x)) for x in target]
    res["vocoder_floor"] = round(
        _mcd_mean(
            target,
            [
                griffin_lim(m.numpy(), length=len(x))
                for m, x in zip(target_mels, target, strict=True)
            ],
        ),
        3,
    )
    with torch.no_grad():
        w_ref = torch.stack(
            [
                model.reference_weights(m, len(syn.phonemes))[0]
                for m, syn in zip(target_mels, target_syn, strict=True)
            ]
        ).mean(0)
    candidates = {"neutral": model.neutral_weights(1)[0], "reference_encoder": w_ref}
    for i in range(k):
        candidates[f"token_{i}"] = torch.nn.functional.one_hot(torch.tensor(i), k).float()
    names = list(candidates)
    W = torch.stack([candidates[n] for n in names])
    audio: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in sentences:
        wavs, _ = render_batch(student, s, W)
        for n, wav in zip(names, wavs, strict=True):
            audio[n].append(wav)
    mcd = {n: round(_mcd_mean(target, audio[n]), 3) for n in names}
    res["target"] = {
        "style": style_dict(TARGET_STYLE),
        "label": TARGET_STYLE.label,
        "mcd_neutral": mcd["neutral"],
        "mcd_reference_encoder": mcd["reference_encoder"],
        "reference_encoder_weights": [round(float(x), 4) for x in w_ref],
        "mcd_one_hot_tokens": [mcd[f"token_{i}"] for i in range(k)],
        "improvement_reference_vs_neutral": round(1 - mcd["reference_encoder"] / mcd["neutral"], 3),
    }
    log(
        f"   target {TARGET_STYLE.label}: MCD neutral {mcd['neutral']:.2f} dB, reference-encoder "
        f"weights {mcd['reference_encoder']:.2f} dB, best one-hot token "
        f"{min(mcd[f'token_{i}'] for i in range(k)):.2f} dB (vocoder floor {res['vocoder_floor']:.2f})"
    )
    # training styles on held-out sentences, with the weights the encoder reads off their audio
    per_style = {}
    picks = np.linspace(0, len(train_styles) - 1, plan.eval_train_styles).round().astype(int)
    # espeak-ng's own distances from the target, for scale
    res["espeak_distances_to_target"] = {
        st.label: round(_mcd_mean(target, [synthesize(s, st).samples for s in sentences]), 3)
        for st in [train_styles[int(i)] for i in picks] + [Style()]
    }
    for yi in picks:
        st = train_styles[int(yi)]
        with torch.no_grad():
            w = model.reference_weights(*train_refs[int(yi)])[0]
        refs = [synthesize(s, st).samples for s in sentences]
        syn = [render_batch(student, s, w[None])[0][0] for s in sentences]
        neutral = [render_batch(student, s, None)[0][0] for s in sentences]
        per_style[st.label] = {
            "mcd_reference_encoder": round(_mcd_mean(refs, syn), 3),
            "mcd_neutral": round(_mcd_mean(refs, neutral), 3),
        }
        log(
            f"   trained style {st.label}: MCD {per_style[st.label]['mcd_reference_encoder']:.2f} dB "
            f"(neutral {per_style[st.label]['mcd_neutral']:.2f})"
        )
        if wav_dir is not None:
            _write_wav(wav_dir / f"style_{st.label.replace(' ', '_')}_student.wav", syn[0])
            _write_wav(wav_dir / f"style_{st.label.replace(' ', '_')}_espeak.wav", refs[0])
    res["trained_styles"] = per_style
    if wav_dir is not None:
        _write_wav(wav_dir / "target_espeak.wav", target[0])
        _write_wav(wav_dir / "target_student_neutral.wav", audio["neutral"][0])
        _write_wav(wav_dir / "target_student_reference.wav", audio["reference_encoder"][0])

    # real-time factor on this CPU
    if plan.rtf_repeat:
        res["rtf"] = {"threads": torch.get_num_threads()}
        for b in (1, 50):
            r = real_time_factor(student, sentences[0], b, repeat=plan.rtf_repeat)
            res["rtf"][f"batch_{b}"] = {k2: round(v, 4) for k2, v in r.items()}
        log(f"   real-time factor: {res['rtf']}")
    return res


def _write_wav(path: Path, samples: np.ndarray) -> None:
    import soundfile

    from engine.tts.espeak import SAMPLE_RATE

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, SAMPLE_RATE)


# --- main ---------------------------------------------------------------------------------


def build(out: Path, seed: int, plan: Plan, wav_dir: Path | None = None) -> dict[str, Any]:
    import torch

    from engine.tts.model import StudentConfig, TTSStudent, count_parameters
    from engine.tts.student import PhonemeVocabulary, load_student, save_student

    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    info: dict[str, Any] = {"seed": seed, "quick": plan is QUICK}

    def stage(name: str, t0: float) -> None:
        stages[name] = round(time.perf_counter() - t0, 1)
        log(f"== {name} done in {stages[name]}s")

    # 1. sentences, styles, espeak-ng audio and features
    t0 = time.perf_counter()
    train_sentences = make_sentences(seed, plan.sentences)
    eval_sentences = make_sentences(seed + 1, plan.eval_sentences, frozenset(train_sentences))
    styles = style_grid(plan)
    pairs = make_pairs(len(train_sentences), len(styles), plan.styles_per_sentence, seed)
    log(
        f"== data (seed {seed}): {len(train_sentences)} sentences × {plan.styles_per_sentence} of "
        f"{len(styles)} styles = {len(pairs)} utterances; target {TARGET_STYLE.label} held out"
    )
    utts = synthesize_corpus(train_sentences, styles, pairs, workers=min(2, os.cpu_count() or 1))
    vocab = PhonemeVocabulary.from_corpus([u.symbols for u in utts])
    frames = np.array([u.mel.shape[1] for u in utts])
    from engine.tts.audio import MEL

    audio_s = float(frames.sum() - len(frames)) * MEL.hop_length / MEL.sample_rate
    all_mels = np.concatenate([u.mel for u in utts], axis=1)
    mean = torch.from_numpy(all_mels.mean(1))
    std = torch.from_numpy(all_mels.std(1)).clamp(min=1e-3)
    del all_mels
    info["data"] = {
        "train_sentences": len(train_sentences),
        "eval_sentences": eval_sentences,
        "styles": [s.label for s in styles],
        "utterances": len(utts),
        "audio_seconds": round(audio_s, 1),
        "frames": int(frames.sum()),
        "utterance_seconds": {
            "min": round(float(frames.min()) * MEL.hop_length / MEL.sample_rate, 2),
            "mean": round(float(frames.mean()) * MEL.hop_length / MEL.sample_rate, 2),
            "max": round(float(frames.max()) * MEL.hop_length / MEL.sample_rate, 2),
        },
        "phoneme_symbols": len(vocab) - 2,
    }
    log(
        f"   {audio_s / 60:.1f} min of audio, {int(frames.sum()):,} frames, {len(vocab) - 2} phoneme "
        f"symbols, utterances {info['data']['utterance_seconds']} s"
    )
    stage("data", t0)

    # 2. training
    t0 = time.perf_counter()
    cfg = StudentConfig(n_symbols=len(vocab), **plan.arch)
    torch.manual_seed(seed * 1_000_003 + 1)
    model = TTSStudent(cfg)
    model.mel_mean.copy_(mean)
    model.mel_std.copy_(std)
    params = count_parameters(model)
    log(
        f"== student: {params:,} parameters ({count_parameters(model, inference_only=True):,} "
        f"at inference), {cfg}"
    )
    torch.manual_seed(seed * 1_000_003 + 7)
    stats = train(model, utts, vocab, plan, seed, mean, std)
    stage("train", t0)

    # 3. save, then evaluate what was saved, loaded the way the lab loads it
    t0 = time.perf_counter()
    eval_utts = synthesize_corpus(
        eval_sentences,
        styles,
        [(s, y) for s in range(len(eval_sentences)) for y in range(len(styles))],
    )
    extra = {
        "target_style": style_dict(TARGET_STYLE),
        "eval_sentences": eval_sentences,
        "training_styles": [style_dict(s) for s in styles],
        "train_sentences_sample": train_sentences[:5],
    }
    save_student(model, vocab, out, extra)
    student = load_student(out)
    val = validation_loss(student.model, eval_utts, vocab, mean, std, seed)
    log(f"   held-out sentences, all styles (teacher-forced durations): {val}")
    train_refs = {}
    for yi in range(len(styles)):
        j = next(i for i, u in enumerate(utts) if u.style == yi)
        train_refs[yi] = (torch.from_numpy(utts[j].mel), len(utts[j].symbols))
    figures = evaluate(student, eval_sentences, styles, train_refs, plan, wav_dir)
    stage("evaluate", t0)

    info["model"] = {
        "params": params,
        "params_inference": count_parameters(model, inference_only=True),
        "architecture": cfg.to_dict(),
        "lr": plan.lr,
        "batch_frames": plan.batch_frames,
        **{k: v for k, v in stats.items() if k != "history"},
    }
    info["loss_history"] = stats["history"]
    info["validation_loss"] = val
    info["evaluation"] = figures
    info["stages_s"] = stages
    info["total_s"] = round(time.perf_counter() - t_start, 1)
    import librosa

    info["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    training = {
        "seed": seed,
        "params": params,
        "final_mel_loss": stats["final_mel_loss"],
        "final_duration_loss": stats["final_duration_loss"],
        "validation_loss": val,
        "mcd_target_neutral": figures["target"]["mcd_neutral"],
        "mcd_target_reference_encoder": figures["target"]["mcd_reference_encoder"],
        "build_seconds": info["total_s"],
    }
    save_student(student.model, vocab, out, {**extra, "training": training})
    info["assets_bytes"] = sum(
        f.stat().st_size for f in Path(out).iterdir() if f.is_file() and f.name != BUILD_INFO_FILE
    )
    write_json(Path(out) / BUILD_INFO_FILE, info)
    log(f"== total {info['total_s']}s; assets {info['assets_bytes'] / 1e6:.2f} MB in {out}")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engine.tts.build", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help="a tiny smoke build (well under a minute)")
    ap.add_argument("--out", type=Path, default=ASSETS_DIR, help="where to write the student")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wavs", type=Path, default=None, help="also write sample WAVs here")
    args = ap.parse_args(argv)
    info = build(args.out, args.seed, QUICK if args.quick else FULL, args.wavs)
    t = info["evaluation"]["target"]
    log(
        f"target {t['label']}: MCD neutral {t['mcd_neutral']:.2f} dB, reference encoder "
        f"{t['mcd_reference_encoder']:.2f} dB ({100 * t['improvement_reference_vs_neutral']:.0f}% lower)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
