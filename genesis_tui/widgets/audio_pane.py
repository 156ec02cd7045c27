"""The Audio pane: empty until the TTS track writes samples; says whether playback can work."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def probe_audio() -> str | None:
    """None when ``sounddevice`` (PortAudio) can be imported, else a readable reason."""
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:  # "PortAudio library not found"
        return f"playback unavailable: {exc} (install the system package libportaudio2)"
    except Exception as exc:  # ImportError and anything a broken install raises
        return f"playback unavailable: sounddevice cannot be imported ({exc})"
    return None


class AudioPane(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.problem: str | None = None

    def on_mount(self) -> None:
        self.problem = probe_audio()
        text = Text("no audio yet — the TTS track writes samples here", style="bold")
        if self.problem:
            text.append(f"\n\n{self.problem}", style="yellow")
        else:
            text.append("\n\nplayback: ready (sounddevice)", style="bright_black")
        self.update(text)
