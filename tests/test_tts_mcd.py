"""The pinned MCD, cross-checked against independent implementations on espeak-ng pairs.

1. Same definition, other code: pysptk's ``sp2mc`` (SPTK's C ``freqt``) on frames cut and
   windowed here with librosa/numpy, aligned by librosa's DTW (numba). Only floating-point
   rounding separates the two, so they must agree to 1e-6 relative (measured: 1e-14).
2. Another estimator: pysptk's ``mcep`` (SPTK's UELS iterative mel-cepstral analysis) on the same
   windowed frames, same order, α, floor and DTW. It fits the log spectrum by another criterion,
   so values differ — measured 0.85–1.17 times ours over 45 pairs — but as a fitness only the
   order matters: the two must rank the pairs alike (Spearman ≥ 0.9; measured 0.99).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from engine.tts.espeak import Style, synthesize
from engine.tts.mcd import (
    MCD,
    MCD_CONSTANT,
    MCDReference,
    dtw_path,
    freqt_matrix,
    mcd_from_cepstra,
    mel_cepstral_distortion,
    mel_cepstrum,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pysptk 1.0.1 imports the deprecated pkg_resources
    pysptk = pytest.importorskip("pysptk")

SENTENCE = "The patient has a mild fever today."
STYLES = (
    Style(),
    Style(variant="f3"),
    Style(variant="m3"),
    Style(pitch=80),
    Style(rate=260),
    Style(voice="en-gb", variant="klatt"),
)


@pytest.fixture(scope="module")
def voices() -> dict[str, np.ndarray]:
    return {s.label: synthesize(SENTENCE, s).samples for s in STYLES}


# --- the independent computations -------------------------------------------------------------


def _frames(x: np.ndarray) -> np.ndarray:
    """Centred, zero-padded 1024-sample frames every 256 samples, periodic Hann window."""
    import librosa

    padded = np.pad(x.astype(np.float64), (512, 512))
    frames = librosa.util.frame(padded, frame_length=1024, hop_length=256, axis=0)
    return frames * np.hanning(1025)[:-1]


def _sp2mc(x: np.ndarray) -> np.ndarray:
    power = np.abs(np.fft.rfft(_frames(x), axis=1)) ** 2 + 1e-5
    return np.array([pysptk.sp2mc(p, 24, 0.455) for p in power])


def _uels(x: np.ndarray) -> np.ndarray:
    return np.array([pysptk.mcep(f, 24, 0.455, etype=1, eps=1e-5) for f in _frames(x)])


def _mcd_librosa_dtw(ca: np.ndarray, cb: np.ndarray) -> float:
    import librosa

    cost = np.sqrt(((ca[:, None, 1:] - cb[None, :, 1:]) ** 2).sum(-1))
    _, wp = librosa.sequence.dtw(C=cost)
    return float(MCD_CONSTANT * cost[wp[:, 0], wp[:, 1]].mean())


# --- the definition ---------------------------------------------------------------------------


def test_pinned_parameters():
    assert (MCD.sample_rate, MCD.n_fft, MCD.hop_length, MCD.window) == (22050, 1024, 256, "hann")
    assert (MCD.order, MCD.alpha, MCD.power_floor) == (24, 0.455, 1e-5)
    assert MCD.alpha == pytest.approx(pysptk.util.mcepalpha(22050))
    assert MCD_CONSTANT == pytest.approx(10 / np.log(10) * np.sqrt(2))


def test_freqt_matrix_is_sptk_freqt():
    c = np.random.default_rng(0).normal(size=64)
    for order, alpha in ((24, 0.455), (5, -0.3), (0, 0.42)):
        ours = c @ freqt_matrix(len(c), order, alpha)
        assert np.abs(ours - pysptk.freqt(c, order, alpha)).max() < 1e-12


def test_mel_cepstrum_is_sp2mc_of_each_frame(voices):
    x = voices[STYLES[1].label]
    ours = mel_cepstrum(x)
    assert ours.shape == (1 + len(x) // 256, 25)
    assert np.abs(ours - _sp2mc(x)).max() < 1e-8


def test_cross_check_sp2mc_and_librosa_dtw(voices):
    ref = MCDReference(voices[STYLES[0].label])
    for a, b in itertools.combinations(voices, 2):
        ours = mel_cepstral_distortion(voices[a], voices[b])
        theirs = _mcd_librosa_dtw(_sp2mc(voices[a]), _sp2mc(voices[b]))
        assert ours == pytest.approx(theirs, rel=1e-6), (a, b)
        assert 1.5 < ours < 15  # dB: distinct styles, same sentence
        if a == STYLES[0].label:
            assert ref.score(voices[b]) == pytest.approx(ours, rel=1e-12)


def test_cross_check_uels_ranks_pairs_alike(voices):
    from scipy.stats import spearmanr

    uels = {k: _uels(v) for k, v in voices.items()}
    ours, theirs = [], []
    for a, b in itertools.combinations(voices, 2):
        ours.append(mel_cepstral_distortion(voices[a], voices[b]))
        theirs.append(_mcd_librosa_dtw(uels[a], uels[b]))
    ratio = np.array(theirs) / np.array(ours)
    assert ratio.min() > 0.75 and ratio.max() < 1.35, ratio
    assert spearmanr(ours, theirs).statistic >= 0.9


def test_same_style_twice_is_zero_and_mcd_is_symmetric(voices):
    a = synthesize(SENTENCE, STYLES[1]).samples
    b = synthesize(SENTENCE, STYLES[1]).samples
    assert mel_cepstral_distortion(a, b) == 0.0
    x, y = voices[STYLES[0].label], voices[STYLES[2].label]
    assert mel_cepstral_distortion(x, y) == pytest.approx(mel_cepstral_distortion(y, x), rel=1e-9)


def test_mcd_grows_with_the_difference(voices):
    x = voices[STYLES[0].label]
    near = mel_cepstral_distortion(x, synthesize(SENTENCE, Style(pitch=55)).samples)
    far = mel_cepstral_distortion(x, voices[STYLES[1].label])
    assert 0 < near < far


def test_c0_is_excluded():
    x = synthesize(SENTENCE).samples
    ca = mel_cepstrum(x)
    cb = ca.copy()
    cb[:, 0] += 3.0  # energy only
    assert mcd_from_cepstra(ca, cb).mcd == 0.0
    # twice as loud: c0 moves in every frame, c1.. only in quiet frames, shaped by the floor
    assert np.abs(mel_cepstrum(2 * x)[:, 0] - ca[:, 0]).max() > 0.5
    assert mel_cepstral_distortion(x, 2 * x) < 1.0  # measured 0.51 dB


def test_dtw_path_is_optimal_and_valid():
    rng = np.random.default_rng(1)
    for n, m in ((1, 1), (1, 5), (6, 1), (7, 9), (12, 5)):
        cost = rng.random((n, m))
        acc = np.full((n + 1, m + 1), np.inf)
        acc[0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                acc[i, j] = cost[i - 1, j - 1] + min(
                    acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
                )
        pi, pj = dtw_path(cost)
        assert (pi[0], pj[0], pi[-1], pj[-1]) == (0, 0, n - 1, m - 1)
        steps = set(zip(np.diff(pi).tolist(), np.diff(pj).tolist(), strict=True))
        assert steps <= {(1, 0), (0, 1), (1, 1)}
        assert cost[pi, pj].sum() == pytest.approx(acc[n, m], rel=1e-12)


def test_score_many_and_bad_input(voices):
    ref = MCDReference(voices[STYLES[0].label])
    cands = [voices[STYLES[1].label], voices[STYLES[2].label]]
    assert np.allclose(ref.score_many(cands), [ref.score(c) for c in cands], rtol=1e-12)
    assert ref.score_many([]).shape == (0,)
    with pytest.raises(ValueError, match="empty"):
        mel_cepstral_distortion(np.zeros(0, np.float32), cands[0])
    with pytest.raises(ValueError, match="1-D"):
        mel_cepstrum(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="float"):
        mel_cepstrum(np.zeros(100, np.int16))
