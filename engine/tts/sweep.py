"""The channel-pruning sweep: how much of the TTS student's body can go before the voice does.

For each pruning ratio (0, 0.1, …, 0.7 by default) a fresh copy of the student is pruned with
Torch-Pruning — ``tp.pruner.MetaPruner``, ``GroupMagnitudeImportance(p=2)`` (the L2 norm of each
channel group, the same setting as tests/test_tts_model.py), ``pruning_ratio=ratio``, the layers of
:func:`engine.tts.model.prunable_ignored_layers` kept whole, the model's own forward
``(ids, weights)`` as the example input — then healed (``heal_steps``, 200 by default; 0 skips
it): distilled from the unpruned student on sentences of the training templates in random styles
(:func:`heal`; no audio is needed, the unpruned student is the teacher), about 30 s a ratio on 2
CPU cores — and then measured:

* **parameters** — all, and those of the inference path (the reference encoder left out);
* **MCD** (engine/tts/mcd.py) of the student speaking each sentence through Griffin-Lim against
  espeak-ng speaking it in the target style (an :class:`~engine.tts.mcd.MCDReference` each), in one
  **fixed** style for every ratio: the reference encoder's token weights read off those target
  references by the *unpruned* model (mean over the sentences; the reference encoder is never
  pruned). The sweep measures the quality of the body against its speed, so the style must not
  move between ratios; and the reference-encoder style is the student's best guess at the target
  (3.3 dB against 7.4 dB for the neutral style on the shipped student), so pruning damage is not
  drowned in style mismatch. ``weights=`` overrides it;
* **real-time factor** (:func:`engine.tts.student.real_time_factor`): seconds of compute per second
  of audio, of the model alone and with Griffin-Lim, for one sentence in a batch of ``rtf_batch``
  styles (the evolution scores a population per forward pass), median of ``rtf_repeat`` runs.
  That is per second of the audio the pruned model makes, and a pruned duration predictor makes
  less of it (shorter phonemes), so the sweep also times the forward pass on the *same* frames —
  the unpruned model's durations forced — as ``rtf_model_same_frames``: the body's speed alone.
  The sweet-spot rule uses ``rtf_model``.

**The sweet spot** (:func:`choose`): the point with the lowest model RTF among those whose MCD is
at most ``max_mcd_increase_db`` (default 0.5 dB) above the MCD at ratio 0 (the first point when no
ratio is 0). Ratio 0 always qualifies, so there is always a choice.

:func:`write_outputs` writes, each atomically (temporary file, then rename), ``sweep.json`` (every
point, the rule, the chosen ratio), ``sweep.md`` (a markdown table) and ``sweep.svg`` (MCD and
model RTF against the ratio; the SVG is written by hand, matplotlib is not a dependency), and the
chosen pruned student into ``student/`` with :func:`engine.tts.student.save_student`, loadable with
:func:`~engine.tts.student.load_student`.

CLI: ``python -m engine.tts.sweep [--out DIR] [--ratios 0,0.1,...] [--max-mcd-increase 0.5]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

DEFAULT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_MAX_MCD_INCREASE_DB = 0.5
DEFAULT_HEAL_STEPS = 200  # the [tts] prune_heal_steps default too
RULE = (
    "the lowest model real-time factor among the ratios whose MCD is at most "
    "max_mcd_increase_db above the MCD at ratio 0"
)


@dataclass(frozen=True)
class SweepPoint:
    """One pruning ratio's figures."""

    ratio: float
    params: int
    params_inference: int
    encoder_filters: tuple[int, ...]
    decoder_filters: tuple[int, ...]
    duration_filters: tuple[int, ...]
    mcd: float  # dB, mean over the sentences
    mcd_per_sentence: tuple[float, ...]
    rtf_model: float
    rtf_vocoder: float
    rtf_total: float
    rtf_audio_s: float  # seconds of audio the timed batch produced (the RTF's denominator)
    rtf_model_same_frames: float  # the forward pass with the unpruned model's durations
    prune_seconds: float
    mcd_unhealed: float | None = None  # dB, before the healing distillation (None: not healed)
    heal_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def prune(model: Any, ids: Sequence[int], ratio: float) -> Any:
    """A pruned copy of ``model`` (the original is untouched); ratio 0 gives a plain copy."""
    import torch
    import torch_pruning as tp

    from engine.tts.model import prunable_ignored_layers

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"a pruning ratio is in [0, 1), not {ratio}")
    pruned = copy.deepcopy(model).eval()
    if ratio == 0:
        return pruned
    for p in pruned.parameters():  # the dependency graph is traced through autograd
        p.requires_grad_(True)
    example = torch.as_tensor([list(ids)], dtype=torch.long, device=pruned.mel_mean.device)
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs=(example, pruned.neutral_weights(1)),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=prunable_ignored_layers(pruned),
        )
    with torch.enable_grad():
        pruner.step()
    for p in pruned.parameters():
        p.requires_grad_(False)
    return pruned.eval()


def heal_sentences(student: Any, n: int = 256, seed: int = 11) -> list[str]:
    """Sentences of the student's own training templates (engine/tts/build.py), none of its
    held-out evaluation sentences: the inputs a pruned copy is distilled on (no audio needed)."""
    from engine.tts.build import make_sentences

    return make_sentences(seed, n, frozenset(student.config.get("eval_sentences", [])))


def heal(
    model: Any,
    teacher: Any,
    vocab: Any,
    steps: int,
    sentences: Sequence[str],
    *,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Distil the unpruned student (``teacher``) into its pruned copy ``model``, in place.

    Knowledge distillation needs only inputs: each step draws ``batch`` of ``sentences`` and as
    many random styles (softmax of gaussian logits, std 1.5 — the kind of weights the evolution
    tries), the teacher speaks them (predicted durations), and the pruned model learns the
    teacher's normalised log-mels with the teacher's durations forced (L1 + L2, the build's mel
    loss) and the teacher's log-durations (MSE). The style tokens and the reference encoder stay
    as they are, so a genome means the same to the healed model as to the unpruned one. Adam,
    gradient norm clipped at 1. Returns the first and last losses and the seconds taken.
    """
    import random

    import torch

    from engine.tts.build import mel_and_duration_losses

    if steps <= 0:
        return {"steps": 0, "first_loss": 0.0, "last_loss": 0.0, "seconds": 0.0}
    t0 = time.perf_counter()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = model.mel_mean.device
    encoded = [vocab.encode_text(s) for s in sentences]
    frozen = ("style_tokens.", "reference.")
    params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    teacher.eval()
    k = model.style_tokens.in_features
    first = last = 0.0
    for step in range(steps):
        rows = [encoded[rng.randrange(len(encoded))] for _ in range(batch)]
        lengths = torch.tensor([len(r) for r in rows], device=dev)
        ids = torch.zeros(batch, int(lengths.max()), dtype=torch.long, device=dev)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, device=dev)
        weights = torch.softmax(torch.randn(batch, k, generator=gen) * 1.5, dim=-1).to(dev)
        with torch.no_grad():
            ref = teacher.run(ids, lengths, weights)
        out = model.run(ids, lengths, weights, ref.durations)
        mel_loss, dur_loss = mel_and_duration_losses(
            out, ref.extra["normalised"], ref.mel_lengths, ref.log_durations, lengths
        )
        loss = mel_loss + dur_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        last = float(loss.detach())
        if step == 0:
            first = last
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return {
        "steps": steps,
        "first_loss": first,
        "last_loss": last,
        "seconds": time.perf_counter() - t0,
    }


def target_weights(student: Any, sentences: Sequence[str], target_refs: Sequence[Any]) -> Any:
    """The reference encoder's token weights (K,) for the target: mean over the sentences of what
    it reads off espeak-ng's target-style audio (``Synthesis`` objects) of each."""
    import torch

    from engine.tts.audio import mel_spectrogram

    model = student.model
    with torch.no_grad():
        ws = [
            model.reference_weights(torch.from_numpy(mel_spectrogram(r.samples)), len(r.phonemes))[
                0
            ]
            for r in target_refs
        ]
    return torch.stack(ws).mean(0).cpu()


def sweep(
    student: Any,
    ratios: Sequence[float],
    sentences: Sequence[str],
    target_style: Any,
    *,
    weights: Any = None,
    rtf_batch: int = 16,
    rtf_repeat: int = 7,
    n_iter: int = 32,
    heal_steps: int = 0,
    keep: dict[float, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[SweepPoint]:
    """Prune a fresh copy of ``student`` (a LoadedStudent) at each ratio and measure it; see the
    module docstring. ``weights`` (K,) is the fixed style (default: :func:`target_weights`).
    ``heal_steps`` > 0: each pruned copy is distilled from the unpruned student (:func:`heal`)
    before it is measured, and its MCD before healing is kept too. ``keep``: filled with each
    ratio's (healed) model."""
    import torch

    from engine.tts.audio import MEL
    from engine.tts.espeak import SAMPLE_RATE, synthesize
    from engine.tts.mcd import MCDReference
    from engine.tts.model import count_parameters
    from engine.tts.student import LoadedStudent, mels_to_audio, real_time_factor

    if not sentences:
        raise ValueError("the sweep needs at least one sentence")
    if not ratios:
        raise ValueError("the sweep needs at least one ratio")
    refs = [synthesize(s, target_style) for s in sentences]
    scorers = [MCDReference(r.samples) for r in refs]
    if weights is None:
        weights = target_weights(student, sentences, refs)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32)).reshape(1, -1)
    ids = [student.vocab.encode_text(s) for s in sentences]
    # the same work for every ratio: sentence 0 in rtf_batch copies of the style, with the
    # unpruned model's durations (a pruned duration predictor changes how much audio there is)
    dev = student.model.mel_mean.device
    ids_b = torch.as_tensor([ids[0]] * rtf_batch, dtype=torch.long, device=dev)
    len_b = torch.full((rtf_batch,), len(ids[0]), device=dev)
    w_b = w.to(dev).expand(rtf_batch, -1)
    with torch.no_grad():
        base_out = student.model.run(ids_b, len_b, w_b)
    durations_b = base_out.durations
    frames_s = float(base_out.mel_lengths.sum()) * MEL.hop_length / SAMPLE_RATE
    heal_on = heal_sentences(student) if heal_steps > 0 else []

    def mcd_of(model: Any) -> list[float]:
        wd = w.to(model.mel_mean.device)
        out = []
        for sid, scorer in zip(ids, scorers, strict=True):
            with torch.no_grad():
                mels, lengths = model.synthesize_mel(sid, wd)
            (wav,) = mels_to_audio(mels, lengths, n_iter=n_iter)
            if len(wav) == 0:  # a badly pruned duration predictor can say nothing: silence
                wav = np.zeros(1, dtype=np.float32)
            out.append(scorer.score(wav))
        return out

    points = []
    for ratio in ratios:
        t0 = time.perf_counter()
        model = prune(student.model, ids[0], float(ratio))
        prune_s = time.perf_counter() - t0
        unhealed, heal_s = None, 0.0
        if heal_steps > 0 and ratio > 0:
            unhealed = float(np.mean(mcd_of(model)))
            heal_s = heal(model, student.model, student.vocab, heal_steps, heal_on)["seconds"]
        mcds = mcd_of(model)
        if keep is not None:
            keep[round(float(ratio), 4)] = model
        same = []
        with torch.no_grad():
            for _ in range(rtf_repeat + 1):  # the first is a warm-up
                t1 = time.perf_counter()
                model.run(ids_b, len_b, w_b, durations_b)
                same.append(time.perf_counter() - t1)
        rtf = real_time_factor(
            LoadedStudent(model, student.vocab, student.config),
            sentences[0],
            rtf_batch,
            repeat=rtf_repeat,
        )
        cfg = model.current_config()
        point = SweepPoint(
            ratio=round(float(ratio), 4),
            params=count_parameters(model),
            params_inference=count_parameters(model, inference_only=True),
            encoder_filters=cfg.encoder_filters,
            decoder_filters=cfg.decoder_filters,
            duration_filters=cfg.duration_filters,
            mcd=float(np.mean(mcds)),
            mcd_per_sentence=tuple(float(x) for x in mcds),
            rtf_model=float(rtf["model"]),
            rtf_vocoder=float(rtf["vocoder"]),
            rtf_total=float(rtf["total"]),
            rtf_audio_s=float(rtf["audio_s"]),
            rtf_model_same_frames=float(np.median(same[1:])) / frames_s,
            prune_seconds=prune_s,
            mcd_unhealed=unhealed,
            heal_seconds=heal_s,
        )
        points.append(point)
        if log:
            log(
                f"ratio {point.ratio:.2f}: {point.params_inference / 1e6:.3f}M params, "
                f"MCD {point.mcd:.3f} dB"
                + ("" if unhealed is None else f" ({unhealed:.3f} before healing, {heal_s:.1f}s)")
                + f", RTF model {point.rtf_model:.4f} total {point.rtf_total:.4f}"
            )
    return points


def choose(points: Sequence[SweepPoint], max_mcd_increase_db: float) -> SweepPoint:
    """The sweet spot: the lowest ``rtf_model`` among the points whose MCD is at most
    ``max_mcd_increase_db`` above the baseline's (ratio 0, else the first point)."""
    if not points:
        raise ValueError("no sweep points to choose from")
    base = next((p for p in points if p.ratio == 0), points[0])
    ok = [p for p in points if p.mcd <= base.mcd + max_mcd_increase_db]
    return min(ok, key=lambda p: (p.rtf_model, p.ratio))


# --- outputs ------------------------------------------------------------------------------


def table(points: Sequence[SweepPoint], chosen: SweepPoint | None = None) -> str:
    """The points as a markdown table; the chosen ratio marked with ◀."""
    base = next((p for p in points if p.ratio == 0), points[0])
    healed = any(p.mcd_unhealed is not None for p in points)
    rows = [
        "| ratio | params (inference) | enc / dec / dur widths | MCD (dB) | ΔMCD "
        + ("| MCD before healing " if healed else "")
        + "| RTF model | speed-up | RTF model, same frames | audio (s) | RTF with Griffin-Lim | |",
        "|---:|---:|:---|---:|---:|"
        + ("---:|" if healed else "")
        + "---:|---:|---:|---:|---:|:---|",
    ]
    for p in points:
        widths = (
            f"{'/'.join(map(str, p.encoder_filters))} · {'/'.join(map(str, p.decoder_filters))}"
            f" · {'/'.join(map(str, p.duration_filters))}"
        )
        rows.append(
            f"| {p.ratio:.2f} | {p.params_inference / 1e6:.3f}M | {widths} | {p.mcd:.3f} "
            f"| {p.mcd - base.mcd:+.3f} "
            + (f"| {'—' if p.mcd_unhealed is None else f'{p.mcd_unhealed:.3f}'} " if healed else "")
            + f"| {p.rtf_model:.4f} | {base.rtf_model / p.rtf_model:.2f}× "
            f"| {p.rtf_model_same_frames:.4f} | {p.rtf_audio_s:.1f} | {p.rtf_total:.4f} | {'◀ chosen' if chosen is not None and p is chosen else ''} |"
        )
    return "\n".join(rows) + "\n"


def svg(points: Sequence[SweepPoint], chosen: SweepPoint | None = None) -> str:
    """MCD (left axis, blue) and model RTF (right axis, orange) against the ratio, hand-written
    SVG (matplotlib is not a dependency); the chosen ratio is a dashed vertical line."""
    w, h, left, right, top, bottom = 640, 360, 70, 70, 30, 50
    pw, ph = w - left - right, h - top - bottom
    xs = [p.ratio for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def scale(vals: list[float]) -> Callable[[float], float]:
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
        return lambda v: top + ph * (1 - (v - lo) / (hi - lo))

    def px(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle">'
        f"{escape('Channel-pruning sweep: MCD and real-time factor')}</text>",
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">pruning ratio</text>',
    ]
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:.2f}</text>')
    series = [
        ("MCD (dB)", [p.mcd for p in points], "#1f77b4", left - 8, "end"),
        ("RTF model", [p.rtf_model for p in points], "#ff7f0e", left + pw + 8, "start"),
    ]
    for label, vals, colour, tx, anchor in series:
        sy = scale(vals)
        pts = " ".join(f"{px(x):.1f},{sy(v):.1f}" for x, v in zip(xs, vals, strict=True))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, v in zip(xs, vals, strict=True):
            out.append(f'<circle cx="{px(x):.1f}" cy="{sy(v):.1f}" r="3" fill="{colour}"/>')
        for v in (min(vals), max(vals)):
            out.append(
                f'<text x="{tx}" y="{sy(v) + 4:.1f}" text-anchor="{anchor}" fill="{colour}">'
                f"{v:.3g}</text>"
            )
        ly = top + 14 if colour == "#1f77b4" else top + 30
        out.append(f'<text x="{left + 8}" y="{ly}" fill="{colour}">{escape(label)}</text>')
    if chosen is not None:
        cx = px(chosen.ratio)
        out.append(
            f'<line x1="{cx:.1f}" y1="{top}" x2="{cx:.1f}" y2="{top + ph}" stroke="#2ca02c" '
            f'stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="{cx + 4:.1f}" y="{top + ph - 6}" fill="#2ca02c">chosen {chosen.ratio:.2f}'
            "</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def summary(points: Sequence[SweepPoint], chosen: SweepPoint, max_mcd_increase_db: float) -> str:
    """One line: the chosen ratio and what it buys."""
    base = next((p for p in points if p.ratio == 0), points[0])
    return (
        f"pruning sweep over {len(points)} ratios: chosen {chosen.ratio:.2f} "
        f"({chosen.params_inference / 1e6:.3f}M params vs {base.params_inference / 1e6:.3f}M, "
        f"MCD {chosen.mcd:.2f} dB vs {base.mcd:.2f} (bound +{max_mcd_increase_db:g}), "
        f"model RTF {chosen.rtf_model:.4f} vs {base.rtf_model:.4f}, "
        f"{base.rtf_model / chosen.rtf_model:.2f}× faster)"
    )


def write_outputs(
    out: Path,
    points: Sequence[SweepPoint],
    chosen: SweepPoint,
    max_mcd_increase_db: float,
    *,
    student: Any = None,
    model: Any = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``sweep.json``, ``sweep.md`` and ``sweep.svg`` into ``out``, and, given the (unpruned)
    ``student``, the chosen pruned student into ``out/student/``. All atomic. Returns the paths."""
    from engine.tts.student import _atomic_write, save_student, write_json

    out = Path(out)
    paths = {"json": out / "sweep.json", "md": out / "sweep.md", "svg": out / "sweep.svg"}
    write_json(
        paths["json"],
        {
            "rule": RULE,
            "max_mcd_increase_db": max_mcd_increase_db,
            "chosen_ratio": chosen.ratio,
            "summary": summary(points, chosen, max_mcd_increase_db),
            **(meta or {}),
            "points": [p.to_dict() for p in points],
        },
    )
    md = (
        "# Channel-pruning sweep\n\n"
        f"Rule: {RULE} (max_mcd_increase_db = {max_mcd_increase_db:g}). "
        f"Chosen ratio: **{chosen.ratio:.2f}**.\n\n" + table(points, chosen)
    )
    _atomic_write(paths["md"], md.encode("utf-8"))
    _atomic_write(paths["svg"], svg(points, chosen).encode("utf-8"))
    if student is not None:
        if model is None:  # the sweep's own (healed) model of the chosen ratio, else prune again
            sentence = (meta or {}).get("sentences", ["The patient has a mild fever."])[0]
            model = prune(student.model, student.vocab.encode_text(sentence), chosen.ratio)
        heal_steps = int((meta or {}).get("heal_steps", 0))
        extra = {
            k: v
            for k, v in student.config.items()
            if k not in {"format", "format_version", "architecture", "vocabulary", "mel", "style"}
        }
        extra["pruning"] = {
            "ratio": chosen.ratio,
            "method": "torch-pruning MetaPruner, GroupMagnitudeImportance(p=2), "
            + (
                f"then {heal_steps} steps distilled from the unpruned student"
                if heal_steps and chosen.ratio > 0
                else "no fine-tuning"
            ),
            "rule": RULE,
            "max_mcd_increase_db": max_mcd_increase_db,
        }
        save_student(model, student.vocab, out / "student", extra)
        paths["student"] = out / "student"
    return paths


def run_sweep(
    out: Path,
    *,
    assets: Path | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    max_mcd_increase_db: float = DEFAULT_MAX_MCD_INCREASE_DB,
    sentences: Sequence[str] | None = None,
    target_style: Any = None,
    rtf_batch: int = 16,
    rtf_repeat: int = 7,
    n_iter: int = 32,
    heal_steps: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load the student, sweep, choose, write everything into ``out``. Returns a dict with the
    points, the chosen point, the summary line, the markdown table and the output paths."""
    import torch

    from engine.tts.espeak import Style
    from engine.tts.student import ASSETS_DIR, load_student

    student = load_student(assets or ASSETS_DIR)
    sentences = list(sentences or student.config["eval_sentences"][:3])
    if target_style is None:
        target_style = Style(**student.config["target_style"])
    t0 = time.perf_counter()
    models: dict[float, Any] = {}
    points = sweep(
        student,
        ratios,
        sentences,
        target_style,
        rtf_batch=rtf_batch,
        rtf_repeat=rtf_repeat,
        n_iter=n_iter,
        heal_steps=heal_steps,
        keep=models,
        log=log,
    )
    chosen = choose(points, max_mcd_increase_db)
    meta = {
        "sentences": sentences,
        "target_style": asdict(target_style),
        "style": "reference-encoder weights of the unpruned student on the target references",
        "rtf_batch": rtf_batch,
        "rtf_repeat": rtf_repeat,
        "griffin_lim_iters": n_iter,
        "torch_threads": torch.get_num_threads(),
        "fine_tuning": (
            f"{heal_steps} steps distilled from the unpruned student (engine/tts/sweep.py heal)"
            if heal_steps
            else "none"
        ),
        "heal_steps": heal_steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    paths = write_outputs(
        out,
        points,
        chosen,
        max_mcd_increase_db,
        student=student,
        model=models.get(chosen.ratio),
        meta=meta,
    )
    return {
        "points": points,
        "chosen": chosen,
        "summary": summary(points, chosen, max_mcd_increase_db),
        "table": table(points, chosen),
        "paths": paths,
    }


def sweep_job(
    assets: str,
    out: str,
    ratios: Sequence[float],
    max_mcd_increase_db: float,
    sentences: Sequence[str],
    style: dict[str, Any],
    threads: int,
    n_iter: int = 32,
    heal_steps: int = 0,
) -> dict[str, Any]:
    """The sweep of a TTS run, in a spawned process (engine/tts/orchestrator.py): plain arguments
    in, plain results out (the chosen ratio, the summary line, the table, the student's path)."""
    import torch

    from engine.tts.espeak import Style

    torch.set_num_threads(max(1, threads))
    res = run_sweep(
        Path(out),
        assets=Path(assets),
        ratios=ratios,
        max_mcd_increase_db=max_mcd_increase_db,
        sentences=sentences,
        target_style=Style(**style),
        n_iter=n_iter,
        heal_steps=heal_steps,
    )
    return {
        "chosen_ratio": res["chosen"].ratio,
        "summary": res["summary"],
        "table": res["table"],
        "student": str(res["paths"]["student"]),
    }


def _ratios(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ratios takes numbers like 0,0.1,0.2, not {text!r}"
        ) from None
    if not vals or any(not 0 <= v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--ratios takes values in [0, 1), got {text!r}")
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.tts.sweep", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/tts-sweep"))
    parser.add_argument("--assets", type=Path, default=None, help="the student (assets/tts)")
    parser.add_argument("--ratios", type=_ratios, default=list(DEFAULT_RATIOS))
    parser.add_argument(
        "--max-mcd-increase", type=float, default=DEFAULT_MAX_MCD_INCREASE_DB, help="dB"
    )
    parser.add_argument("--sentences", type=int, default=3, help="held-out sentences scored")
    parser.add_argument("--rtf-batch", type=int, default=16)
    parser.add_argument("--rtf-repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--heal-steps",
        type=int,
        default=DEFAULT_HEAL_STEPS,
        help="distil each pruned copy from the unpruned student for this many steps before "
        "measuring it (0: pruning alone)",
    )
    args = parser.parse_args(argv)

    import torch

    from engine.tts.student import ASSETS_DIR

    torch.set_num_threads(args.threads)
    cfg = json.loads(((args.assets or ASSETS_DIR) / "config.json").read_text(encoding="utf-8"))
    res = run_sweep(
        args.out,
        assets=args.assets,
        ratios=args.ratios,
        max_mcd_increase_db=args.max_mcd_increase,
        sentences=cfg.get("eval_sentences", [])[: args.sentences] or None,
        rtf_batch=args.rtf_batch,
        rtf_repeat=args.rtf_repeat,
        heal_steps=args.heal_steps,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(res["table"], end="")
    print(res["summary"])
    print(f"wrote {', '.join(str(p) for p in res['paths'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
