"""The Audio pane alone: samples per individual, the waveform, and playback through a fake player."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soundfile as sf
from textual.app import App, ComposeResult

from engine.events import AudioSample, Log
from genesis_tui.widgets import audio_pane
from genesis_tui.widgets.audio_pane import AudioPane, SoundDevicePlayer

RATE = 22050
NO_PORTAUDIO = "playback unavailable: PortAudio library not found"
BLOCKS = set(" ▀▄█")


class PaneApp(App):
    def __init__(self, player=None) -> None:
        super().__init__()
        self.player = player

    def compose(self) -> ComposeResult:
        yield AudioPane(player=self.player, id="audio-pane")


class FakePlayer:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple] = []

    def play(self, data, samplerate) -> None:
        self.calls.append(("play", samplerate, len(data), np.shape(data)))
        if self.fail is not None:
            raise self.fail

    def stop(self) -> None:
        self.calls.append(("stop",))


@pytest.fixture(autouse=True)
def no_probe(monkeypatch):
    """Whatever this machine has, the pane believes sounddevice is importable."""
    monkeypatch.setattr(audio_pane, "probe_audio", lambda: None)


def write_wav(path, seconds=0.5, rate=RATE, stereo=False):
    """A 440 Hz sine fading in from silence, so the waveform grows from left to right."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t) * np.linspace(0.0, 1.0, len(t))
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1) if stereo else tone, rate)
    return str(path)


def sample(ind_id, path, gen=0, seconds=0.5, text=""):
    return AudioSample(
        id=ind_id, generation=gen, path=str(path), sample_rate=RATE, seconds=seconds, text=text
    )


def pane_of(app) -> AudioPane:
    return app.query_one(AudioPane)


def text_of(app) -> str:
    return str(pane_of(app).content)


def wave_lines(app) -> list[str]:
    return [line for line in text_of(app).splitlines() if line and set(line) <= BLOCKS]


async def test_empty_state_says_where_samples_come_from(monkeypatch):
    monkeypatch.setattr(audio_pane, "probe_audio", lambda: NO_PORTAUDIO)
    app = PaneApp()
    async with app.run_test(size=(80, 24)):
        pane = pane_of(app)
        assert "no audio yet — the TTS track writes samples here" in text_of(app)
        assert NO_PORTAUDIO in text_of(app)
        assert pane.apply([]) is False
        assert pane.apply([Log(level="info", message="not audio")]) is False
        assert pane.shown is None and not wave_lines(app)
        assert pane.check_action("toggle_play", ()) is False


async def test_a_sample_shows_header_full_path_and_waveform(tmp_path):
    deep = tmp_path / ("a-rather-long-run-directory-name-" * 3) / "samples"
    deep.mkdir(parents=True)
    path = write_wav(deep / "g2-007.wav")
    app = PaneApp()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        assert pane.apply([sample("g2-007", path, gen=2, text="hello there")]) is True
        await pilot.pause()
        text = text_of(app)
        assert "no audio yet" not in text
        head = text.splitlines()[0]
        for part in ("g2-007", "generation 2", "0.50 s", "22050 Hz", "hello there"):
            assert part in head, part
        assert path in text  # whole, never shortened
        assert len(path) > 80
        lines = wave_lines(app)
        assert len(lines) == audio_pane.WAVE_ROWS
        assert all(len(line) == pane.size.width == pane.wave_width for line in lines)
        columns = ["".join(col) for col in zip(*lines, strict=True)]
        # Fading in: a thin centre line at the start, the full height at the end, and growing.
        assert columns[0] == "  ▄▀  "
        assert columns[-1] == "█" * audio_pane.WAVE_ROWS
        filled = [sum(c != " " for c in col) for col in columns]
        assert filled == sorted(filled) and filled[len(filled) // 2] < audio_pane.WAVE_ROWS
        assert "■ stopped" in text
        assert pane.check_action("toggle_play", ()) is True


async def test_show_for_an_id_without_a_sample_falls_back_to_the_latest(tmp_path):
    first = write_wav(tmp_path / "g0-001.wav")
    second = write_wav(tmp_path / "g2-007.wav")
    app = PaneApp()
    async with app.run_test(size=(80, 24)):
        pane = pane_of(app)
        pane.apply([sample("g0-001", first), sample("g2-007", second, gen=2)])
        assert pane.shown.id == "g2-007" and pane.note is None  # nothing selected: the latest
        pane.show_for("g0-001")
        assert pane.shown.id == "g0-001" and first in text_of(app)
        assert "no sample for" not in text_of(app)
        pane.show_for("g3-012")
        text = text_of(app)
        assert text.splitlines()[0] == "no sample for g3-012 yet; showing the latest: g2-007"
        assert second in text and first not in text
        # A sample for the selection arrives: it is shown at once, and the note goes.
        third = write_wav(tmp_path / "g3-012.wav")
        assert pane.apply([sample("g3-012", third, gen=3)]) is True
        assert pane.shown.id == "g3-012" and "no sample for" not in text_of(app)


async def test_a_missing_or_broken_wav_is_one_error_line(tmp_path):
    missing = str(tmp_path / "gone.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"this is not a wav file")
    player = FakePlayer()
    app = PaneApp(player)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        pane.apply([sample("g0-001", missing)])
        await pilot.pause()
        assert f"cannot read {missing}: file not found" in text_of(app)
        assert not wave_lines(app)
        assert pane.play() is False and player.calls == []  # nothing to play, no exception
        assert "playback unavailable" in text_of(app) and missing in text_of(app)
        pane.apply([sample("g0-002", broken)])
        await pilot.pause()
        errors = [line for line in text_of(app).splitlines() if "cannot read" in line]
        assert len(errors) == 1 and str(broken) in errors[0]
        assert not wave_lines(app)


async def test_a_plays_then_stops_through_the_player(tmp_path):
    path = write_wav(tmp_path / "stereo.wav", stereo=True)
    player = FakePlayer()
    app = PaneApp(player)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        pane.apply([sample("g1-003", path, gen=1)])
        pane.focus()
        await pilot.pause()
        assert len(wave_lines(app)) == audio_pane.WAVE_ROWS  # stereo is mixed down to draw
        await pilot.press("a")
        assert player.calls == [("play", RATE, int(0.5 * RATE), (int(0.5 * RATE), 2))]
        assert "▶ playing" in text_of(app) and pane.playing is not None
        await pilot.press("a")
        assert player.calls[-1] == ("stop",)
        assert "■ stopped" in text_of(app) and pane.playing is None


async def test_playback_goes_back_to_stopped_when_the_sample_ends(tmp_path):
    path = write_wav(tmp_path / "short.wav", seconds=0.1)
    player = FakePlayer()
    app = PaneApp(player)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        pane.apply([sample("g0-001", path, seconds=0.1)])
        assert pane.play() is True
        assert "▶ playing" in text_of(app)
        await pilot.pause(0.4)
        assert "■ stopped" in text_of(app) and pane.playing is None
        assert player.calls[-1][0] == "play"  # it ended by itself: no stop needed


async def test_a_player_without_portaudio_says_so_and_names_the_wav(tmp_path):
    path = write_wav(tmp_path / "g0-001.wav")
    player = FakePlayer(fail=OSError("PortAudio library not found"))
    app = PaneApp(player)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        pane.apply([sample("g0-001", path)])
        pane.focus()
        await pilot.press("a")
        text = text_of(app)
        assert f"{NO_PORTAUDIO} — the WAV is at {path}" in text
        assert "■ stopped" in text and pane.playing is None
        assert player.calls[0][0] == "play"


async def test_the_waveform_follows_the_width_and_the_wav_is_read_once(tmp_path, monkeypatch):
    reads = []
    real = audio_pane.read_clip
    monkeypatch.setattr(audio_pane, "read_clip", lambda p: reads.append(p) or real(p))
    path = write_wav(tmp_path / "g0-001.wav")
    app = PaneApp()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = pane_of(app)
        pane.apply([sample("g0-001", path)])
        await pilot.pause()
        assert {len(line) for line in wave_lines(app)} == {80}
        await pilot.resize_terminal(120, 30)
        await pilot.pause()
        assert pane.wave_width == 120
        assert {len(line) for line in wave_lines(app)} == {120}
        await pilot.resize_terminal(50, 40)  # tall enough for no scrollbar
        await pilot.pause()
        assert {len(line) for line in wave_lines(app)} == {50} and pane.wave_width == 50
        pane.show_for("g9-999")  # re-rendered with a note: still no second read
        assert reads == [path]


def test_the_default_player_turns_portaudio_errors_into_oserror(monkeypatch):
    class PortAudioError(Exception):
        pass

    def play(data, samplerate):
        raise PortAudioError("Error querying device -1")

    fake = types.SimpleNamespace(PortAudioError=PortAudioError, play=play, stop=lambda: None)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.raises(OSError, match="Error querying device -1"):
        SoundDevicePlayer().play(np.zeros(10, dtype=np.float32), RATE)
    SoundDevicePlayer().stop()  # nothing raised
