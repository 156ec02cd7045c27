"""Timings of the TTS foundations: ``python -m engine.tts.bench`` (figures in docs/TTS.md).

Synthesis time per second of audio, MCD time per pair of two-second utterances, Griffin-Lim time
per second of audio and its round-trip MCD; medians over repeats, after one warm-up call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from engine.tts import audio, mcd
from engine.tts.espeak import Style, synthesize

SENTENCES = (
    "The patient has a mild fever today.",  # about 2 s in en-us at 175 words per minute
    "Blood pressure is stable and the cough is improving.",
    "Continue aspirin seventy five milligrams daily, review in two weeks.",
)
STYLE_A = Style(variant="f3")
STYLE_B = Style(variant="m3", pitch=35, rate=190)


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.tts.bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=20, help="timed repeats of each step")
    args = parser.parse_args(argv)

    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "unset"
    print(f"{os.cpu_count()} CPUs, OPENBLAS/OMP threads {blas}, median of {args.repeat} runs")

    audio_s = sum(synthesize(t, STYLE_A).duration_s for t in SENTENCES)
    t = _median_seconds(lambda: [synthesize(s, STYLE_A) for s in SENTENCES], args.repeat)
    print(
        f"espeak-ng synthesis: {1000 * t / audio_s:.2f} ms per second of audio "
        f"({len(SENTENCES)} sentences, {audio_s:.2f} s of audio, library reloaded per call)"
    )

    a, b = synthesize(SENTENCES[0], STYLE_A).samples, synthesize(SENTENCES[0], STYLE_B).samples
    t = _median_seconds(lambda: mcd.mel_cepstral_distortion(a, b), args.repeat)
    t_cep = _median_seconds(lambda: mcd.mel_cepstrum(a), args.repeat)
    ca, cb = mcd.mel_cepstrum(a), mcd.mel_cepstrum(b)
    t_dtw = _median_seconds(lambda: mcd.mcd_from_cepstra(ca, cb), args.repeat)
    ref = mcd.MCDReference(a)
    t_ref = _median_seconds(lambda: ref.score(b), args.repeat)
    print(
        f"MCD, {len(a) / 22050:.2f} s vs {len(b) / 22050:.2f} s: {1000 * t:.1f} ms per pair "
        f"(analysis {1000 * t_cep:.1f} ms per utterance, DTW + distance {1000 * t_dtw:.1f} ms; "
        f"against a pre-analysed reference {1000 * t_ref:.1f} ms) = {mcd.mel_cepstral_distortion(a, b):.2f} dB"
    )

    mel = audio.mel_spectrogram(a)
    t_mel = _median_seconds(lambda: audio.mel_spectrogram(a), args.repeat)
    seconds = len(a) / audio.MEL.sample_rate
    t_gl = _median_seconds(lambda: audio.griffin_lim(mel, length=len(a)), max(3, args.repeat // 4))
    y = audio.griffin_lim(mel, length=len(a))
    print(
        f"log-mel: {1000 * t_mel / seconds:.2f} ms per second of audio; Griffin-Lim (32 iterations): "
        f"{1000 * t_gl / seconds:.0f} ms per second of audio; round-trip MCD "
        f"{mcd.mel_cepstral_distortion(a, y):.2f} dB"
    )

    # The student: real-time factor for one style and for a population's batch of 50 styles, and
    # the population's throughput (samples scored per second: forward + Griffin-Lim + MCD).
    import numpy as np

    from engine.tts.student import load_student, mels_to_audio, real_time_factor

    student = load_student()
    text = SENTENCES[0]
    for batch in (1, 50):
        r = real_time_factor(student, text, batch)
        print(
            f"student, batch {batch}: real-time factor {r['total']:.4f} (model {r['model']:.4f} "
            f"+ Griffin-Lim {r['vocoder']:.4f}) over {r['audio_s']:.1f} s of audio"
        )
    import torch

    ids = student.vocab.encode_text(text)
    w = torch.softmax(
        torch.randn(50, student.model.n_tokens, generator=torch.Generator().manual_seed(0)) * 2, -1
    )
    t0 = time.perf_counter()
    mels, lengths = student.model.synthesize_mel(ids, w)
    wavs = mels_to_audio(mels, lengths)
    ref.score_many([np.asarray(x, dtype=np.float32) for x in wavs])
    dt = time.perf_counter() - t0
    print(f"population of 50 styles scored in {dt:.2f} s: {50 / dt:.1f} samples per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
