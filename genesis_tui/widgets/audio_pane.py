"""The Audio pane: the selected individual's latest TTS sample, its waveform, and playback.

The engine's TTS track writes a WAV per sample and announces it with an ``AudioSample`` event.
The pane keeps the latest sample per individual (``apply``), shows the one for the leaderboard's
selection (``show_for``; falling back to the run's latest), draws its waveform with plain text
blocks at the pane's width, and plays it with ``sounddevice`` when PortAudio is there. The WAV's
full path is always shown, so a user over SSH can copy the file and listen elsewhere.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from rich.text import Text
from textual.binding import Binding
from textual.events import Resize
from textual.timer import Timer
from textual.widgets import Static

from engine.events import AudioSample, Event

EMPTY_TEXT = "no audio yet — the TTS track writes samples here"
WAVE_ROWS = 6  # rows of the waveform; each row holds two half-block levels
WAVE_STYLE = "cyan"
FALLBACK_WIDTH = 60  # before the first layout, or while the pane's tab is hidden
CACHE_SIZE = 8  # decoded WAVs kept in memory


def probe_audio() -> str | None:
    """None when ``sounddevice`` (PortAudio) can be imported, else a readable reason."""
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:  # "PortAudio library not found"
        return f"playback unavailable: {exc} (install the system package libportaudio2)"
    except Exception as exc:  # ImportError and anything a broken install raises
        return f"playback unavailable: sounddevice cannot be imported ({exc})"
    return None


# --- playback -----------------------------------------------------------------------------------


class Player(Protocol):
    """What the pane plays through: non-blocking ``play`` and ``stop``."""

    def play(self, data: Any, samplerate: int) -> None: ...

    def stop(self) -> None: ...


class SoundDevicePlayer:
    """The default player: ``sounddevice``, imported only when first used (importing it raises
    OSError when the PortAudio library is missing; ``play`` raises ``PortAudioError`` when there
    is no output device). ``sd.play`` returns at once and plays in the background."""

    def play(self, data: Any, samplerate: int) -> None:
        import sounddevice as sd

        try:
            sd.play(data, samplerate)
        except sd.PortAudioError as exc:
            raise OSError(str(exc) or "PortAudio error") from exc

    def stop(self) -> None:
        try:
            import sounddevice as sd
        except Exception:  # never imported, so nothing is playing
            return
        sd.stop()


# --- reading and drawing ------------------------------------------------------------------------


@dataclass
class Clip:
    """A decoded WAV: ``data`` as read (frames, or frames × channels) for playback, ``mono`` for
    drawing, and the per-width envelope last drawn."""

    path: str
    data: np.ndarray
    samplerate: int
    mono: np.ndarray
    peak: float
    _envelope: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.data)

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0

    def envelope(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-column (min, max) of the mono signal, normalised to its peak; cached per width."""
        if width not in self._envelope:
            n = len(self.mono)
            cols = max(1, min(width, n))
            starts = np.linspace(0, n, cols + 1).astype(np.int64)[:-1]
            lo = np.minimum.reduceat(self.mono, starts)
            hi = np.maximum.reduceat(self.mono, starts)
            if self.peak > 0:
                lo, hi = lo / self.peak, hi / self.peak
            self._envelope.clear()  # only the current width matters
            self._envelope[width] = (lo, hi)
        return self._envelope[width]


def read_clip(path: str) -> Clip:
    """Read a WAV with soundfile; raises ValueError with a one-line reason when it cannot."""
    import soundfile as sf

    if not os.path.exists(path):
        raise ValueError("file not found")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=False)
    except Exception as exc:  # LibsndfileError, RuntimeError, OSError …
        reason = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
        raise ValueError(" ".join(str(reason).split())) from exc
    if len(data) == 0:
        raise ValueError("the file holds no audio frames")
    mono = data.mean(axis=1) if data.ndim == 2 else data
    mono = np.nan_to_num(np.asarray(mono, dtype=np.float32))
    peak = float(np.max(np.abs(mono)))
    return Clip(path, data, int(rate), mono, peak)


def waveform(lo: np.ndarray, hi: np.ndarray, rows: int = WAVE_ROWS) -> list[str]:
    """Draw per-column (min, max) in [-1, 1] as ``rows`` lines of half blocks (▀ ▄ █): each
    column is filled from its max down to its min, mirrored about the centre line, which always
    shows (one cell tall, across the middle two rows), even in silence."""
    levels = 2 * rows  # half-rows, top to bottom; the centre is between levels/2 - 1 and levels/2
    half = levels // 2
    hi = np.clip(hi, 0.0, 1.0)
    lo = np.clip(lo, -1.0, 0.0)
    top = np.minimum(np.floor(half - hi * half), half - 1).astype(np.int64)
    bottom = np.maximum(np.ceil(half - lo * half) - 1, half).astype(np.int64)
    lines = []
    for r in range(rows):
        upper, lower = 2 * r, 2 * r + 1
        has_upper = (top <= upper) & (bottom >= upper)
        has_lower = (top <= lower) & (bottom >= lower)
        glyphs = np.where(
            has_upper & has_lower,
            "█",
            np.where(has_upper, "▀", np.where(has_lower, "▄", " ")),
        )
        lines.append("".join(glyphs.tolist()))
    return lines


# --- the pane -----------------------------------------------------------------------------------


class AudioPane(Static):
    """The latest sample per individual; ``a`` plays or stops the one shown."""

    can_focus = True
    BINDINGS = [Binding("a", "toggle_play", "play/stop", tooltip="play or stop the sample shown")]

    def __init__(self, player: Player | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.player: Player = player if player is not None else SoundDevicePlayer()
        self.problem: str | None = None  # from probe_audio(), on mount
        self.samples: dict[str, AudioSample] = {}  # latest per individual id
        self.latest: AudioSample | None = None  # the run's latest, any individual
        self.wanted: str | None = None  # the id asked for by show_for
        self.shown: AudioSample | None = None  # the sample on screen
        self.note: str | None = None  # the fallback explanation, when there is one
        self.playing: AudioSample | None = None  # the sample playing now
        self.play_problem: str | None = None  # why the last play failed
        self.wave_width = 0  # the width the waveform was last drawn at
        self._clips: OrderedDict[str, Clip | str] = OrderedDict()  # path → clip or error
        self._play_timer: Timer | None = None

    def on_mount(self) -> None:
        self.problem = probe_audio()
        self._render_view()

    def on_unmount(self) -> None:
        if self.playing is not None:
            self._stop_player()

    def on_resize(self, event: Resize) -> None:
        if self.shown is not None and self._width() != self.wave_width:
            self._render_view()

    # --- updating -------------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> bool:
        """Keep the latest ``AudioSample`` per individual; True when the pane changed."""
        changed = False
        for e in events:
            if isinstance(e, AudioSample):
                self.samples[e.id] = e
                self.latest = e
                self._clips.pop(e.path, None)  # a rewritten file is read again
                changed = True
        if changed:
            self._choose()
        return changed

    def show_for(self, ind_id: str | None) -> None:
        """Show ``ind_id``'s latest sample, or the run's latest when it has none."""
        if ind_id != self.wanted:
            self.wanted = ind_id
            self._choose()

    def _choose(self) -> None:
        sample = self.samples.get(self.wanted) if self.wanted else None
        note = None
        if sample is None:
            sample = self.latest
            if sample is not None and self.wanted:
                note = f"no sample for {self.wanted} yet; showing the latest: {sample.id}"
        if sample is not self.shown or note != self.note:
            self.shown, self.note = sample, note
            self.play_problem = None
            self._render_view()
            self.refresh_bindings()

    # --- playback -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "toggle_play":
            return self.shown is not None or self.playing is not None
        return super().check_action(action, parameters)

    def action_toggle_play(self) -> None:
        if self.playing is not None:
            self.stop()
        else:
            self.play()

    def play(self) -> bool:
        """Play the sample shown; False (with the reason on screen) when it cannot."""
        sample = self.shown
        if sample is None:
            return False
        if self.playing is not None:
            self._stop_player()
        clip = self._clip(sample.path)
        if isinstance(clip, str):
            self.play_problem = f"cannot read the WAV ({clip})"
            self._set_stopped()
            return False
        try:
            self.player.play(clip.data, clip.samplerate)
        except Exception as exc:  # OSError (no PortAudio), PortAudioError (no device) …
            self.play_problem = " ".join(str(exc).split()) or type(exc).__name__
            self._set_stopped()
            return False
        self.play_problem = None
        self.playing = sample
        if self._play_timer is not None:
            self._play_timer.stop()
        self._play_timer = self.set_timer(clip.seconds + 0.05, self._finished)
        self._render_view()
        self.refresh_bindings()
        return True

    def stop(self) -> None:
        """Stop playback, if any."""
        if self.playing is not None:
            self._stop_player()
        self._set_stopped()

    def _stop_player(self) -> None:
        try:
            self.player.stop()
        except Exception:  # stopping must never take the UI down
            pass

    def _finished(self) -> None:
        self._play_timer = None
        self._set_stopped()

    def _set_stopped(self) -> None:
        if self._play_timer is not None:
            self._play_timer.stop()
            self._play_timer = None
        self.playing = None
        self._render_view()
        self.refresh_bindings()

    # --- drawing --------------------------------------------------------------------------------

    def _clip(self, path: str) -> Clip | str:
        """The decoded WAV at ``path`` or a one-line error; each path is read once."""
        if path in self._clips:
            self._clips.move_to_end(path)
            return self._clips[path]
        try:
            clip: Clip | str = read_clip(path)
        except Exception as exc:
            clip = str(exc) or type(exc).__name__
        self._clips[path] = clip
        while len(self._clips) > CACHE_SIZE:
            self._clips.popitem(last=False)
        return clip

    def _width(self) -> int:
        return self.size.width if self.size.width > 0 else FALLBACK_WIDTH

    def _render_view(self) -> None:
        sample = self.shown
        if sample is None:
            text = Text(EMPTY_TEXT, style="bold")
            if self.problem:
                text.append(f"\n\n{self.problem}", style="yellow")
            else:
                text.append("\n\nplayback: ready (sounddevice)", style="bright_black")
            self.wave_width = 0
            self.update(text)
            return
        clip = self._clip(sample.path)
        parts: list[Text] = []
        if self.note:
            parts.append(Text(self.note, style="dim"))
        head = Text.assemble(
            (sample.id, "bold"),
            f"  generation {sample.generation}  ·  {sample.seconds:.2f} s  ·  "
            f"{sample.sample_rate} Hz",
        )
        if isinstance(clip, Clip) and clip.samplerate != sample.sample_rate:
            head.append(f" (file: {clip.samplerate} Hz)", style="yellow")
        if sample.text:
            head.append(f"  ·  “{sample.text}”", style="italic")
        parts.append(head)
        parts.append(Text.assemble(("wav ", "bold"), sample.path))
        if isinstance(clip, str):
            parts.append(Text(f"cannot read {sample.path}: {clip}", style="bold red"))
            self.wave_width = 0
        else:
            width = self._width()
            lo, hi = clip.envelope(width)
            wave = Text("\n".join(waveform(lo, hi)), style=WAVE_STYLE, no_wrap=True)
            parts.append(Text())
            parts.append(wave)
            self.wave_width = width
        parts.append(Text())
        parts.append(self._state_line(sample))
        self.update(Text("\n").join(parts))

    def _state_line(self, sample: AudioSample) -> Text:
        if self.playing is not None:
            who = "" if self.playing is sample else f" {self.playing.id}"
            return Text.assemble(("▶ playing" + who, "bold green"), ("   a: stop", "dim"))
        line = Text.assemble(("■ stopped", "bold"), ("   a: play", "dim"))
        if self.play_problem:
            line.append(
                f"\nplayback unavailable: {self.play_problem} — the WAV is at {sample.path}",
                style="yellow",
            )
        elif self.problem:
            line.append(f"\n{self.problem} — the WAV is at {sample.path}", style="yellow")
        return line
