"""Log-mel features and the Griffin-Lim vocoder: shapes, pinned parameters, the round trip."""

from __future__ import annotations

import numpy as np
import pytest

from engine.tts import audio
from engine.tts.audio import MEL, griffin_lim, mel_filterbank, mel_spectrogram
from engine.tts.espeak import Style, synthesize
from engine.tts.mcd import mel_cepstral_distortion

SENTENCE = "The patient has a mild fever today."


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return synthesize(SENTENCE, Style(variant="f3")).samples


def test_pinned_parameters():
    assert (MEL.sample_rate, MEL.n_fft, MEL.hop_length, MEL.win_length, MEL.n_mels) == (
        22050,
        1024,
        256,
        1024,
        80,
    )
    assert (MEL.fmin, MEL.fmax, MEL.log_floor) == (0.0, 11025.0, 1e-5)
    fb = mel_filterbank()
    assert fb.shape == (80, 513) and fb.dtype == np.float32 and (fb >= 0).all()
    assert (fb.sum(axis=1) > 0).all()  # no empty band


def test_mel_spectrogram_shape_and_range(utterance):
    m = mel_spectrogram(utterance)
    assert m.shape == (80, MEL.n_frames(len(utterance))) == (80, 1 + len(utterance) // 256)
    assert m.dtype == np.float32 and np.isfinite(m).all()
    assert m.min() >= np.log(MEL.log_floor) - 1e-6
    assert m.max() > np.log(MEL.log_floor) + 5  # speech well above the floor
    silence = mel_spectrogram(np.zeros(4096, dtype=np.float32))
    assert np.allclose(silence, np.log(MEL.log_floor))


def test_griffin_lim_round_trip_is_close(utterance):
    m = mel_spectrogram(utterance)
    y = griffin_lim(m, length=len(utterance))
    assert y.shape == utterance.shape and y.dtype == np.float32 and np.abs(y).max() <= 1.0
    # measured 1.60 dB; two espeak styles of one sentence are 4–11 dB apart
    assert mel_cepstral_distortion(utterance, y) < 2.5
    assert np.abs(mel_spectrogram(y) - m).mean() < 0.4  # measured 0.14 (natural-log units)


def test_griffin_lim_is_deterministic_per_seed(utterance):
    m = mel_spectrogram(utterance[: 22050 // 2])
    a, b = griffin_lim(m, n_iter=8), griffin_lim(m, n_iter=8)
    assert np.array_equal(a, b)
    assert len(a) == (m.shape[1] - 1) * MEL.hop_length
    assert not np.array_equal(a, griffin_lim(m, n_iter=8, seed=1))


def test_pseudo_inverse_matches_librosa_nnls(utterance):
    """The cheap mel inverse lands where librosa's NNLS does (same vocoder input, 500× faster)."""
    import librosa

    m = np.exp(mel_spectrogram(utterance[:22050]).astype(np.float64))
    ours = np.maximum(audio.mel_pseudo_inverse() @ m, 0.0)
    nnls = librosa.feature.inverse.mel_to_stft(m, sr=22050, n_fft=1024, power=1.0, fmax=11025)
    # measured 3e-8: librosa's NNLS starts from this very solution and finds nothing better
    assert np.linalg.norm(ours - nnls) / np.linalg.norm(nnls) < 1e-4
    fb = mel_filterbank().astype(np.float64)
    assert np.linalg.norm(fb @ ours - m) / np.linalg.norm(m) < 0.1  # measured 0.035


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 100), np.float32), np.zeros(100, np.int16), np.zeros(0, np.float32)],
)
def test_bad_waveforms_are_refused(bad):
    with pytest.raises(ValueError):
        mel_spectrogram(bad)


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="80"):
        griffin_lim(np.zeros((40, 10), np.float32))
    with pytest.raises(ValueError, match="n_iter"):
        griffin_lim(np.zeros((80, 10), np.float32), n_iter=0)
