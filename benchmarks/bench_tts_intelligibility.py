"""Is the evolved voice intelligible? Transcribe it with an independent recogniser and count words.

    pip install pocketsphinx                                   # CMU's recogniser + its en-us model (29 MB)
    python benchmarks/bench_tts_intelligibility.py RUN_DIR [RUN_DIR ...]

For each TTS run directory: the champion of its newest checkpoint, the neutral style, and espeak-ng
in the run's target style (the voice the champion imitates) each speak every held-out sentence of
the student (never trained on); pocketsphinx — CMU's HMM recogniser, with its own US-English
acoustic model, pronunciation dictionary and general 3-gram language model, nothing tuned to these
sentences — transcribes each WAV at 16 kHz. Printed: every transcript, and the word error rate
(WER: word-level edit distance over reference words) and words recognised per voice. The
champion's WAVs are also written under RUN_DIR/intelligibility/ to be listened to.

pocketsphinx is not a dependency of the project: it is only this measurement's judge.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def hits(ref: list[str], hyp: list[str]) -> int:
    """Reference words matched in order (longest common subsequence)."""
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, 1):
        for j, h in enumerate(hyp, 1):
            table[i][j] = (
                table[i - 1][j - 1] + 1 if r == h else max(table[i - 1][j], table[i][j - 1])
            )
    return table[-1][-1]


class Recogniser:
    def __init__(self) -> None:
        from pocketsphinx import Decoder

        t0 = time.perf_counter()
        self.decoder = Decoder(samprate=16000, loglevel="FATAL")
        self.load_s = time.perf_counter() - t0

    def __call__(self, samples: np.ndarray, sample_rate: int) -> str:
        import librosa

        x = librosa.resample(np.asarray(samples, np.float32), orig_sr=sample_rate, target_sr=16000)
        pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def champion(run: Path) -> tuple[str, list[float]]:
    gens = sorted(run.glob("gen_*/state.json"))
    if not gens:
        sys.exit(f"{run}: no checkpoint (gen_*/state.json) — is it a TTS run directory?")
    state = json.loads(gens[-1].read_text())
    scored = [i for i in state["population"] if i.get("fitness") is not None]
    best = max(scored, key=lambda i: i["fitness"])
    return best["id"], best["logits"]


def speakers(tts, student, cid: str, weights) -> dict:
    """Name → speak(sentence) → (samples, sample rate), for the four voices compared."""
    from engine.tts.espeak import SAMPLE_RATE, Style, synthesize
    from engine.tts.student import render

    return {
        f"espeak-ng target ({tts.voice}+{tts.variant}, pitch {tts.pitch}, rate {tts.rate})": (
            lambda s: (synthesize(s, tts.style()).samples, SAMPLE_RATE)
        ),
        "espeak-ng default (en-us)": lambda s: (synthesize(s, Style()).samples, SAMPLE_RATE),
        "student, neutral style": lambda s: render(student, s, None),
        f"student, champion {cid}": lambda s: render(student, s, weights),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="TTS run directories")
    args = ap.parse_args()

    import soundfile as sf
    import torch

    from engine.profile import load_profile
    from engine.tts.student import load_student

    torch.set_num_threads(2)
    asr = Recogniser()
    print(f"pocketsphinx decoder loaded in {asr.load_s:.1f}s")
    for run in args.runs:
        profile = load_profile(run / "profile.toml")
        tts = profile.tts
        student = load_student(tts.assets_dir())
        sentences = list(student.config["eval_sentences"])
        cid, logits = champion(run)
        weights = torch.softmax(torch.tensor(logits), -1).numpy()
        out = run / "intelligibility"
        out.mkdir(exist_ok=True)
        voices = speakers(tts, student, cid, weights)
        print(f"\n{run} — tempo_weight {tts.tempo_weight:g}, champion {cid}")
        summary = []
        for name, speak in voices.items():
            errors = found = total = 0
            seconds = 0.0
            print(f"  {name}")
            for n, s in enumerate(sentences):
                samples, sr = speak(s)
                seconds += len(samples) / sr
                if name.startswith("student, champion"):
                    sf.write(
                        out / f"{n}.wav", np.asarray(samples, np.float32), sr, subtype="PCM_16"
                    )
                hyp = asr(samples, sr)
                ref = words(s)
                errors += edit_distance(ref, words(hyp))
                found += hits(ref, words(hyp))
                total += len(ref)
                print(f"    {s!r:52} → {hyp!r}")
            summary.append((name, errors / total, found, total, seconds))
        print(f"  {'voice':62} {'WER':>6} {'words':>7} {'audio s':>8}")
        for name, wer, found, total, seconds in summary:
            print(f"  {name:62} {wer:6.1%} {found:3d}/{total:<3d} {seconds:8.2f}")


if __name__ == "__main__":
    main()
