"""The one Mel-Cepstral Distortion of this project: the TTS track's fitness (lower is better).

Pinned in :data:`MCD` (an :class:`MCDConfig`; every number is argued in docs/TTS.md):

* 22 050 Hz mono float waveforms; frames of 1024 samples, Hann window, hop 256 (11.6 ms — the
  mel features' hop), centred with zero padding;
* per frame the power spectrum plus a floor of 1e-5 (white noise at about -76 dBFS through this
  window: anything quieter, espeak's digital-zero pauses included, counts as silence), its log,
  the real cepstrum, then frequency warping by an all-pass constant α = 0.455
  (``pysptk.util.mcepalpha(22050)``) to order 24 — SPTK's ``sp2mc``, computed here as one
  precomputed linear map (log spectrum → mel-cepstrum) for all frames at once;
* c0 (energy) excluded: coefficients c1..c24 only;
* alignment by DTW on those cepstra: Euclidean frame cost, steps (1,0), (0,1), (1,1) unweighted;
* MCD = (10 / ln 10) · sqrt(2 · Σ_{d=1..24} (c_d − c'_d)²), in dB, averaged over the DTW path.

Identical inputs give 0. The cross-check against pysptk and librosa is tests/test_tts_mcd.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial.distance import cdist

from engine.tts.espeak import SAMPLE_RATE

MCD_CONSTANT = 10.0 / math.log(10.0) * math.sqrt(2.0)
"""(10 / ln 10) · √2 ≈ 6.1419: from cepstral Euclidean distance to dB of log spectrum."""


@dataclass(frozen=True)
class MCDConfig:
    """The pinned MCD parameters."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    window: str = "hann"
    order: int = 24
    alpha: float = 0.455
    power_floor: float = 1e-5

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length


MCD = MCDConfig()


def freqt_matrix(n_in: int, order: int, alpha: float) -> np.ndarray:
    """SPTK's ``freqt`` (cepstrum → mel-cepstrum by all-pass warping) as an (n_in, order+1) matrix.

    ``freqt`` is linear in its input, so running its recursion once on the identity gives the
    matrix; ``c @ freqt_matrix(len(c), order, alpha)`` equals ``pysptk.freqt(c, order, alpha)``.
    """
    beta = 1.0 - alpha * alpha
    eye = np.eye(n_in)
    out = np.zeros((order + 1, n_in))
    for m in range(n_in - 1, -1, -1):  # the input's highest quefrency first, as SPTK does
        prev = out.copy()
        out[0] = eye[m] + alpha * prev[0]
        if order >= 1:
            out[1] = beta * prev[0] + alpha * prev[1]
        for j in range(2, order + 1):
            out[j] = prev[j - 1] + alpha * (prev[j] - out[j - 1])
    return out.T


@lru_cache(maxsize=4)
def _log_spectrum_to_mcep(cfg: MCDConfig) -> np.ndarray:
    """(n_fft // 2 + 1, order + 1): log power spectrum → mel-cepstrum, as pysptk's sp2mc does it
    (real cepstrum by inverse FFT, c0 halved, then freqt of all n_fft coefficients)."""
    n_bins = cfg.n_fft // 2 + 1
    cep = np.fft.irfft(np.eye(n_bins), n=cfg.n_fft, axis=1)  # row k: the cepstrum of bin k
    cep[:, 0] /= 2.0
    return cep @ freqt_matrix(cfg.n_fft, cfg.order, cfg.alpha)


@lru_cache(maxsize=4)
def _window(cfg: MCDConfig) -> np.ndarray:
    from scipy.signal import get_window

    return get_window(cfg.window, cfg.n_fft, fftbins=True)


def _as_signal(samples: np.ndarray, cfg: MCDConfig) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("MCD of an empty waveform is undefined")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"expected float samples in [-1, 1] at {cfg.sample_rate} Hz, got {x.dtype}"
        )
    return x.astype(np.float64, copy=False)


def mel_cepstrum(samples: np.ndarray, cfg: MCDConfig = MCD) -> np.ndarray:
    """Mel-cepstra c0..c_order of a waveform: (cfg.n_frames(len(samples)), order + 1), float64."""
    x = _as_signal(samples, cfg)
    half = cfg.n_fft // 2
    padded = np.pad(x, (half, half))
    n = cfg.n_frames(len(x))
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length][:n]
    power = np.abs(np.fft.rfft(frames * _window(cfg), axis=1)) ** 2
    return np.log(power + cfg.power_floor) @ _log_spectrum_to_mcep(cfg)


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimum-cost monotone path from (0, 0) to (n-1, m-1) through a cost matrix.

    Steps (1, 0), (0, 1), (1, 1), unweighted. Row by row: within a row the horizontal steps make
    D[i, j] = S[j] + min_{k ≤ j} (min(D[i-1, k-1], D[i-1, k]) − S[k-1]) with S the row's running
    sum of costs, which is one ``np.minimum.accumulate`` — no Python loop over columns.
    """
    n, m = cost.shape
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        up = acc[i - 1]
        enter = up.copy()  # best way into (i, k) from the previous row
        enter[1:] = np.minimum(up[1:], up[:-1])
        running = np.cumsum(cost[i])
        before = np.concatenate(([0.0], running[:-1]))
        acc[i] = running + np.minimum.accumulate(enter - before)
    # back from the end; prefer the diagonal on ties so equal inputs follow the diagonal
    i, j = n - 1, m - 1
    path_i, path_j = [i], [j]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if diag <= up and diag <= left:
                i, j = i - 1, j - 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
        path_i.append(i)
        path_j.append(j)
    return np.array(path_i[::-1]), np.array(path_j[::-1])


@dataclass(frozen=True)
class MCDResult:
    """An MCD in dB and what it was averaged over."""

    mcd: float
    path_length: int
    frames_ref: int
    frames_syn: int


def mcd_from_cepstra(ref: np.ndarray, syn: np.ndarray) -> MCDResult:
    """MCD between two mel-cepstrum sequences (frames, order + 1); c0 is dropped here."""
    a, b = np.asarray(ref, np.float64)[:, 1:], np.asarray(syn, np.float64)[:, 1:]
    if a.ndim != 2 or b.shape[1:] != a.shape[1:] or len(a) == 0 or len(b) == 0:
        raise ValueError(
            f"expected two non-empty (frames, order + 1) arrays, got {ref.shape}, {syn.shape}"
        )
    cost = cdist(a, b)  # Euclidean, exact (no a² + b² − 2ab cancellation), and no BLAS threads
    pi, pj = dtw_path(cost)
    return MCDResult(float(MCD_CONSTANT * cost[pi, pj].mean()), len(pi), len(a), len(b))


def mel_cepstral_distortion(ref: np.ndarray, syn: np.ndarray, cfg: MCDConfig = MCD) -> float:
    """The pinned MCD (dB) between two waveforms at cfg.sample_rate; symmetric, 0 for equal input."""
    return mcd_from_cepstra(mel_cepstrum(ref, cfg), mel_cepstrum(syn, cfg)).mcd


class MCDReference:
    """A reference waveform analysed once, to score many candidates against it (fitness)."""

    def __init__(self, samples: np.ndarray, cfg: MCDConfig = MCD) -> None:
        self.cfg = cfg
        self.cepstrum = mel_cepstrum(samples, cfg)

    def score(self, samples: np.ndarray) -> float:
        return mcd_from_cepstra(self.cepstrum, mel_cepstrum(samples, self.cfg)).mcd

    def score_many(self, candidates: Sequence[np.ndarray]) -> np.ndarray:
        """MCD of each candidate against the reference, as a float64 array."""
        return np.array([self.score(c) for c in candidates], dtype=np.float64)
