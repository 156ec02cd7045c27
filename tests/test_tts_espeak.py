"""The espeak-ng reference voice: styles, synthesis into memory, phoneme timings, determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import GenesisError
from engine.tts import espeak
from engine.tts.espeak import (
    SAMPLE_RATE,
    EspeakUnavailableError,
    Style,
    UnknownVoiceError,
    available_variants,
    available_voices,
    phonemize,
    synthesize,
)

SENTENCE = "The patient has a mild fever today and reports a cough."


def _f0_median(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Median F0 (Hz) of the voiced frames, by autocorrelation: a frame is voiced when it is loud
    enough and its normalised autocorrelation peaks above 0.5 between 60 and 500 Hz."""
    n, hop, lo, hi = 1024, 256, sr // 500, sr // 60
    f0 = []
    for s in range(0, len(x) - n, hop):
        frame = x[s : s + n].astype(np.float64)
        frame -= frame.mean()
        if np.sqrt((frame**2).mean()) < 0.02:
            continue
        ac = np.fft.irfft(np.abs(np.fft.rfft(frame, 2 * n)) ** 2)[:n]
        ac /= ac[0]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5:
            f0.append(sr / lag)
    assert len(f0) > 20, "too few voiced frames to estimate F0"
    return float(np.median(f0))


def _digest(samples: np.ndarray) -> str:
    return hashlib.sha256(samples.tobytes()).hexdigest()


# --- styles -----------------------------------------------------------------------------------


def test_style_defaults_and_names():
    s = Style()
    assert (s.voice, s.variant, s.pitch, s.rate, s.pitch_range) == ("en-us", "", 50, 175, 50)
    assert s.espeak_name == "en-us"
    assert Style(variant="f3").espeak_name == "en-us+f3"
    assert Style(variant="f3", pitch=70, rate=200).label == "en-us+f3 p70 g50 r200"
    assert Style(pitch=np.int64(30)).pitch == 30  # numpy integers are integers


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"pitch": 101}, "pitch"),
        ({"pitch": -1}, "pitch"),
        ({"pitch": 50.5}, "pitch"),
        ({"pitch": True}, "pitch"),
        ({"pitch_range": 200}, "pitch_range"),
        ({"rate": 79}, "rate"),
        ({"rate": 451}, "rate"),
        ({"voice": ""}, "voice"),
        ({"voice": "en-us+f3"}, "voice"),
        ({"voice": "en;rm -rf"}, "voice"),
        ({"variant": "../f3"}, "variant"),
        ({"variant": 3}, "variant"),
    ],
)
def test_style_rejects_bad_values_clearly(kwargs, field):
    with pytest.raises(ValueError, match=f"Style.{field}"):
        Style(**kwargs)


# --- synthesis --------------------------------------------------------------------------------


def test_synthesis_is_audio_with_phonemes_that_tile_it():
    syn = synthesize("The patient has a fever.", Style(variant="f3"))
    x = syn.samples
    assert x.dtype == np.float32 and x.ndim == 1 and syn.sample_rate == SAMPLE_RATE == 22050
    assert 0.8 < syn.duration_s < 2.0
    assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.05
    assert not x.flags.writeable
    # what espeak-ng 1.52 (espeakng-loader 0.2.4) says for this sentence: 18 phonemes
    assert syn.symbols == [
        "D", "@2", "p", "'eI", "S", "@", "n", "t", "h", "a#", "z", "a#", "f", "'i:", "v", "3",
        "_:", "_",
    ]  # fmt: skip
    ph = syn.phonemes
    assert 0 <= ph[0].start < 0.05 * SAMPLE_RATE  # only a few ms before the first phoneme
    for a, b in zip(ph, ph[1:], strict=False):
        assert a.start <= a.end == b.start
    assert ph[-1].end == len(x)
    assert sum(p.end - p.start for p in ph) == len(x) - ph[0].start
    # the same symbols as phonemize, which durations will be supervised against
    assert phonemize("The patient has a fever.", Style(variant="f3")) == syn.symbols


def test_phonemes_tile_several_sentences():
    syn = synthesize("First sentence here. And a second one! Dr. Smith paid $3.50 at 10:30?")
    ph = syn.phonemes
    assert [p.symbol for p in ph].count("_:") >= 3  # a pause closes each sentence (and "Dr.")
    assert all(a.end == b.start and a.start <= a.end for a, b in zip(ph, ph[1:], strict=False))
    assert ph[-1].end == len(syn.samples) and syn.duration_s > 4


def test_frame_durations_cover_the_mel_frames():
    syn = synthesize(SENTENCE)
    for hop in (256, 110):
        d = syn.frame_durations(hop)
        assert len(d) == len(syn.phonemes) and (d >= 0).all()
        assert d.sum() == 1 + len(syn.samples) // hop
    assert synthesize("").frame_durations(256).size == 0


def test_repeated_calls_give_identical_audio():
    style = Style(variant="f3")
    first = synthesize(SENTENCE, style)
    synthesize("Something else entirely, to disturb any state.", Style(variant="m3", pitch=80))
    again = synthesize(SENTENCE, style)
    assert np.array_equal(first.samples, again.samples)
    assert first.phonemes == again.phonemes


def test_audio_is_the_same_in_another_process():
    code = (
        "import hashlib; from engine.tts.espeak import synthesize, Style; "
        f"s = synthesize({SENTENCE!r}, Style(variant='f3')); "
        "print(hashlib.sha256(s.samples.tobytes()).hexdigest())"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == _digest(synthesize(SENTENCE, Style(variant="f3")).samples)


def test_empty_and_blank_text_give_empty_synthesis():
    for text in ("", "   \n\t"):
        syn = synthesize(text)
        assert syn.samples.shape == (0,) and syn.samples.dtype == np.float32
        assert syn.phonemes == () and syn.duration_s == 0.0
        assert phonemize(text) == []


def test_non_ascii_text():
    syn = synthesize("Café naïve, résumé — 37,5 °C", Style())
    assert syn.duration_s > 1.0 and len(syn.phonemes) > 10
    assert all(p.symbol.isascii() and p.symbol for p in syn.phonemes)  # espeak's ASCII mnemonics
    assert len(synthesize("東京", Style()).samples) > 0  # read out as letter names, not a crash
    with pytest.raises(ValueError, match="NUL"):
        synthesize("a\0b")
    with pytest.raises(TypeError):
        synthesize(b"bytes")  # type: ignore[arg-type]


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(UnknownVoiceError) as e:
        synthesize("hello", Style(voice="xx-nope"))
    msg = str(e.value)
    assert "'xx-nope'" in msg and "available_voices()" in msg and "--voices" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, GenesisError)


def test_unknown_variant_lists_the_available_ones():
    with pytest.raises(UnknownVoiceError, match=r"variant 'nope'.*f3"):
        synthesize("hello", Style(variant="nope"))


def test_voices_by_name_file_or_language():
    assert any("en-us" in v.languages for v in available_voices())
    assert {"f3", "m3", "klatt"} <= set(available_variants())
    gb = synthesize("Hello there.", Style(voice="en-gb")).samples
    assert np.array_equal(gb, synthesize("Hello there.", Style(voice="gmw/en")).samples)
    assert not np.array_equal(gb, synthesize("Hello there.", Style(voice="en-us")).samples)
    # a variant applies to a voice found by language too
    gb_f3 = synthesize("Hello there.", Style(voice="en-gb", variant="f3")).samples
    assert not np.array_equal(gb, gb_f3)


def test_rate_changes_duration():
    slow = synthesize(SENTENCE, Style(rate=100))
    fast = synthesize(SENTENCE, Style(rate=300))
    assert slow.duration_s > 2.5 * fast.duration_s  # measured: 5.55 s against 1.84 s
    assert slow.symbols == fast.symbols


def test_pitch_changes_f0():
    low = _f0_median(synthesize(SENTENCE, Style(pitch=10)).samples)
    high = _f0_median(synthesize(SENTENCE, Style(pitch=90)).samples)
    assert 60 < low < 120 and high > 1.6 * low  # measured: 78 Hz against 154 Hz
    female = _f0_median(synthesize(SENTENCE, Style(variant="f3")).samples)
    assert female > 1.5 * _f0_median(synthesize(SENTENCE, Style()).samples)


# --- when espeak-ng is missing ----------------------------------------------------------------


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    with pytest.raises(EspeakUnavailableError, match="pip install espeakng-loader") as e:
        espeak._Engine().paths()
    assert isinstance(e.value, GenesisError)


def test_missing_library_file_says_how_to_install(monkeypatch, tmp_path):
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "nope.so"))
    with pytest.raises(EspeakUnavailableError, match="espeakng-loader"):
        espeak._Engine().paths()


def test_engine_tts_never_imports_textual():
    code = (
        "import sys, engine.tts.espeak, engine.tts.audio, engine.tts.mcd, engine.tts.bench\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'genesis_tui')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
