"""The style coliseum: a worker process holding the TTS student, scoring style genomes by MCD.

Declared to ``engine.workers.pool.WorkerPool`` through ``specs`` (role ``"style"``) and served by
``engine.workers.common.run_worker`` like the LLM track's coliseum. At start-up it loads the student
on its device once, has espeak-ng speak every sentence in the target style and analyses those
references for the MCD once. A ``StyleEvalTask`` is then one batched ``synthesize_mel`` per
sentence over all its genomes (softmax of their logits), Griffin-Lim per row, and the MCD of each
row against the reference.
"""

from __future__ import annotations

import math
import time
from typing import Any

from engine.workers.messages import (
    StyleEvalDone,
    StyleEvalTask,
    StyleRenderDone,
    StyleRenderTask,
)


def scored_sentences(profile: Any, config: dict[str, Any]) -> list[str]:
    """The profile's sentences, or the first of the student's held-out evaluation sentences."""
    return list(profile.tts.sentences) or list(config["eval_sentences"][:1])


class StyleColiseum:
    def __init__(self, worker: str, device: str, profile: Any, results: Any, go: Any) -> None:
        import torch

        from engine.tts.espeak import synthesize
        from engine.tts.mcd import MCDReference
        from engine.tts.student import load_student

        self.worker, self.device, self.profile, self.go = worker, device, profile, go
        self.torch = torch
        t0 = time.perf_counter()
        tts = profile.tts
        self.student = load_student(tts.assets_dir(), device=device)
        self.sentences = scored_sentences(profile, self.student.config)
        self.ids = [self.student.vocab.encode_text(s) for s in self.sentences]
        style = tts.style()
        spoken = [synthesize(s, style).samples for s in self.sentences]
        self.references = [MCDReference(x) for x in spoken]
        self.reference_lengths = [len(x) for x in spoken]
        self.n_iter = tts.griffin_lim_iters
        self.load_seconds = time.perf_counter() - t0

    @property
    def ready_detail(self) -> str:
        n = sum(p.numel() for p in self.student.model.parameters())
        return (
            f"TTS student {n / 1e6:.2f}M params, {len(self.sentences)} sentence(s), "
            f"loaded in {self.load_seconds:.1f}s"
        )

    def handle(self, task: Any) -> Any:
        if isinstance(task, StyleEvalTask):
            return self.evaluate(task)
        if isinstance(task, StyleRenderTask):
            return self.render(task)
        raise TypeError(f"the style coliseum does not take {type(task).__name__}")

    def _weights(self, logits: list[list[float]]) -> Any:
        t = self.torch.tensor(
            logits, dtype=self.torch.float32, device=self.student.model.mel_mean.device
        )
        return self.torch.softmax(t, dim=-1)

    def evaluate(self, task: StyleEvalTask) -> StyleEvalDone:
        from engine.tts.student import mels_to_audio

        t0 = time.perf_counter()
        names = [i for i, _ in task.items]
        weights = self._weights([lg for _, lg in task.items])
        per_sentence, tempo = [], []
        for ids, ref, n_ref in zip(self.ids, self.references, self.reference_lengths, strict=True):
            self.go.wait()  # the engine is paused: hold here, using nothing
            with self.torch.no_grad():
                mels, lengths = self.student.model.synthesize_mel(ids, weights)
            wavs = mels_to_audio(mels, lengths, n_iter=self.n_iter)
            per_sentence.append(ref.score_many(wavs))
            # the speaking rate, which the MCD's DTW alignment takes out: log duration ratio
            tempo.append([math.log(max(len(w), 1) / max(n_ref, 1)) for w in wavs])
        mcd = {n: [float(s[k]) for s in per_sentence] for k, n in enumerate(names)}
        rate = {n: [t[k] for t in tempo] for k, n in enumerate(names)}
        return StyleEvalDone(self.worker, task.job, mcd, time.perf_counter() - t0, rate)

    def render(self, task: StyleRenderTask) -> StyleRenderDone:
        import numpy as np

        from engine.tts.espeak import SAMPLE_RATE
        from engine.tts.student import mels_to_audio

        text = task.text or self.sentences[0]
        ids = self.student.vocab.encode_text(text)
        with self.torch.no_grad():
            mels, lengths = self.student.model.synthesize_mel(ids, self._weights([task.logits]))
        (wav,) = mels_to_audio(mels, lengths, n_iter=self.n_iter)
        return StyleRenderDone(
            self.worker,
            task.job,
            task.id,
            np.asarray(wav, dtype="<f4").tobytes(),
            SAMPLE_RATE,
            text,
        )
