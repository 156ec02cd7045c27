"""Log-mel features for the TTS student, and the vocoder that turns them back into a waveform.

The features are pinned in one place, :data:`MEL` (a :class:`MelConfig`): 22 050 Hz, a 1024-point
Hann STFT with hop 256 (11.6 ms), 80 Slaney mel bands over the whole band (0–11 025 Hz), natural
log of the magnitude mel clamped at 1e-5. Whole band, not the 8 kHz that pretrained neural
vocoders expect, because nothing here is pretrained and the MCD (engine/tts/mcd.py) scores the
whole band.

The vocoder is Griffin-Lim from librosa: mel → linear magnitude by the filterbank's pseudo-inverse
clipped at zero, then ``librosa.griffinlim`` (fast Griffin-Lim, momentum 0.99, 32 iterations) from
a seeded random phase, so it is deterministic. librosa because torchaudio has no build
for this torch (2.13) and a hand-written STFT loop would be ours to maintain; a neural vocoder
would need training data and time this track does not have yet. Griffin-Lim is phasey but
training-free and faithful enough to score styles: see docs/TTS.md for its round-trip MCD.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.tts.espeak import SAMPLE_RATE


@dataclass(frozen=True)
class MelConfig:
    """The pinned feature parameters (STFT, mel bands, log floor)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    window: str = "hann"
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = SAMPLE_RATE / 2
    log_floor: float = 1e-5  # on the magnitude mel: log(1e-5) ≈ -11.5 is silence

    def n_frames(self, n_samples: int) -> int:
        """Frames of a centred STFT (padding n_fft // 2 each side) of ``n_samples`` samples."""
        return 1 + n_samples // self.hop_length


MEL = MelConfig()


@lru_cache(maxsize=4)
def mel_filterbank(cfg: MelConfig = MEL) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) Slaney-normalised mel matrix, float32, read-only."""
    import librosa

    fb = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    ).astype(np.float32)
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=4)
def mel_pseudo_inverse(cfg: MelConfig = MEL) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels): the least-squares map from mel bands back to STFT bins.

    80 bands for 513 bins is underdetermined; the minimum-norm solution, clipped at zero, is what
    librosa's NNLS (``mel_to_stft``) returns too (it starts there: the two differ by 3e-8 relative
    on espeak speech), at a five-hundredth of its cost (1 ms against 0.6 s for two seconds).
    """
    inv = np.linalg.pinv(mel_filterbank(cfg).astype(np.float64))
    inv.setflags(write=False)
    return inv


def _as_signal(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("the waveform is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def magnitude_spectrogram(samples: np.ndarray, cfg: MelConfig = MEL) -> np.ndarray:
    """|STFT| as (n_fft // 2 + 1, frames), float32, centred frames with zero padding."""
    import librosa

    x = _as_signal(samples)
    spec = librosa.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=cfg.window,
        center=True,
        pad_mode="constant",
    )
    return np.abs(spec).astype(np.float32)


def mel_spectrogram(samples: np.ndarray, cfg: MelConfig = MEL) -> np.ndarray:
    """Log-mel features of a waveform: (n_mels, cfg.n_frames(len(samples))), float32."""
    mel = mel_filterbank(cfg) @ magnitude_spectrogram(samples, cfg)
    return np.log(np.maximum(mel, cfg.log_floor)).astype(np.float32)


def griffin_lim(
    log_mel: np.ndarray,
    cfg: MelConfig = MEL,
    *,
    n_iter: int = 32,
    length: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Waveform (float32, clipped to [-1, 1]) from log-mel features, by Griffin-Lim.

    ``length`` trims or pads the output to that many samples (default: frames × hop). The same
    features and seed always give the same waveform.
    """
    import librosa

    m = np.asarray(log_mel, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != cfg.n_mels or m.shape[1] == 0:
        raise ValueError(
            f"expected log-mel features of shape ({cfg.n_mels}, frames), got {m.shape}"
        )
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, not {n_iter}")
    mel = np.exp(m.astype(np.float64))
    mel[m <= np.log(cfg.log_floor) + 1e-6] = 0.0  # the floor was silence
    magnitude = np.maximum(mel_pseudo_inverse(cfg) @ mel, 0.0)
    y = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        n_fft=cfg.n_fft,
        window=cfg.window,
        center=True,
        pad_mode="constant",
        momentum=0.99,
        init="random",
        random_state=seed,
        length=length if length is not None else (m.shape[1] - 1) * cfg.hop_length,
    )
    return np.clip(y, -1.0, 1.0).astype(np.float32)
