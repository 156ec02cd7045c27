"""One GPU in the Telemetry pane: its figures on a line and its utilisation and memory history."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Static

from engine.telemetry import GpuSample, na
from genesis_tui.widgets.percent_sparkline import PercentSparkline


def _gib(n: int | None) -> str:
    return "N/A" if n is None else f"{n / 2**30:.1f}"


def _pct_style(p: float | None) -> str:
    if p is None:
        return "bright_black"
    return "red" if p >= 90 else "yellow" if p >= 70 else "green"


def gpu_line(g: GpuSample) -> Text:
    return Text.assemble(
        (f"GPU{g.index} ", "bold"),
        (f"{g.name[:22]:<22} ", ""),
        ("util ", "bright_black"),
        (f"{na(g.utilization, '{:.0f}%'):>4} ", _pct_style(g.utilization)),
        ("mem ", "bright_black"),
        (f"{_gib(g.memory_used)}/{_gib(g.memory_total)} GiB ", _pct_style(g.memory_percent)),
        ("pwr ", "bright_black"),
        (f"{na(g.power_draw, '{:.0f}')}/{na(g.power_limit, '{:.0f}')} W ", ""),
        (na(g.temperature, "{:.0f}°C"), "red" if (g.temperature or 0) >= 85 else ""),
    )


class GpuRow(Vertical):
    def __init__(self, index: int, **kwargs) -> None:
        super().__init__(classes="gpu-row", **kwargs)
        self.index = index
        self._pending: tuple[GpuSample, list[float | None], list[float | None]] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id=f"gpu-{self.index}-line", classes="gpu-line")
        with Horizontal(classes="spark-pair"):
            yield Static("util", classes="spark-label")
            yield PercentSparkline([], id=f"gpu-{self.index}-util", classes="spark")
            yield Static("mem", classes="spark-label")
            yield PercentSparkline([], id=f"gpu-{self.index}-mem", classes="spark")

    def on_mount(self) -> None:
        self.call_after_refresh(self._apply)

    def show(self, g: GpuSample, util: list[float | None], mem: list[float | None]) -> None:
        self._pending = (g, util, mem)
        self._apply()

    def _apply(self) -> None:
        if self._pending is None:
            return
        g, util, mem = self._pending
        try:
            line = self.query_one(".gpu-line", Static)
        except NoMatches:  # not composed yet: on_mount applies it
            return
        line.update(gpu_line(g))
        self.query_one(f"#gpu-{self.index}-util", PercentSparkline).data = util
        self.query_one(f"#gpu-{self.index}-mem", PercentSparkline).data = mem
