"""A Sparkline on a fixed 0–100 scale (utilisation, memory): 7 % must not look like 100 %."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Sparkline

BARS = " ▁▂▃▄▅▆▇█"


def _style(v: float) -> str:
    return "red" if v >= 90 else "yellow" if v >= 70 else "green"


class PercentSparkline(Sparkline):
    """Textual's Sparkline with the scale pinned to 0–100 and the newest sample on the right;
    missing samples (None, shown N/A elsewhere) leave a gap."""

    DEFAULT_CSS = "PercentSparkline { height: 1; }"

    def render(self) -> Text:
        width, height = max(1, self.size.width), max(1, self.size.height)
        data = list(self.data or [])[-width:]
        data = [None] * (width - len(data)) + data
        levels = len(BARS) - 1
        lines = []
        for row in reversed(range(height)):
            line = Text()
            for v in data:
                if v is None:
                    line.append(" ")
                    continue
                pct = min(100.0, max(0.0, float(v)))
                filled = pct / 100.0 * height * levels - row * levels
                idx = int(min(levels, max(0, round(filled))))
                if row == 0 and idx == 0:
                    idx = 1  # a floor line, so an idle series is still visible
                line.append(BARS[idx], style=_style(pct))
            lines.append(line)
        return Text("\n").join(lines)
