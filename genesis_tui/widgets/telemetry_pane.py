"""The Telemetry pane: GPUs (or why there are none), the host, and each worker process."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from engine.events import Event, WorkerState
from engine.telemetry import TelemetrySnapshot, na
from genesis_tui.widgets.gpu_row import GpuRow
from genesis_tui.widgets.percent_sparkline import PercentSparkline

WORKER_STATE_STYLE = {
    "starting": "yellow",
    "ready": "green",
    "idle": "green",
    "busy": "bold cyan",
    "dead": "bold red",
    "stopped": "bright_black",
}


@dataclass
class WorkerInfo:
    name: str
    role: str
    device: str
    state: str
    pid: int | None
    detail: str = ""


def _gib(n: int | None) -> str:
    return "N/A" if n is None else f"{n / 2**30:.1f}"


class TelemetryPane(VerticalScroll):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.worker_info: dict[str, WorkerInfo] = {}
        self.gpu_count = -1
        self.snapshot: TelemetrySnapshot | None = None
        self.ready = False  # children composed (events can arrive before, and during teardown)

    def compose(self) -> ComposeResult:
        yield Static(Text("GPUs", style="bold"), classes="section")
        yield Static(Text("probing NVML…", style="bright_black"), id="gpu-status")
        yield Vertical(id="gpu-rows")
        yield Static(Text("Host", style="bold"), classes="section")
        yield Static(Text("sampling…", style="bright_black"), id="host-line")
        with Horizontal(classes="spark-pair"):
            yield Static("cpu", classes="spark-label")
            yield PercentSparkline([], id="host-cpu", classes="spark")
            yield Static("ram", classes="spark-label")
            yield PercentSparkline([], id="host-ram", classes="spark")
        yield Static(Text("Workers", style="bold"), classes="section")
        table = DataTable(id="workers", cursor_type="none", show_cursor=False)
        table.can_focus = False
        yield table

    def on_mount(self) -> None:
        table = self.query_one("#workers", DataTable)
        for key in ("worker", "role", "device", "state", "pid", "rss", "cpu"):
            table.add_column(
                key if key not in ("rss", "cpu") else key.upper() if key == "rss" else "CPU%",
                key=key,
            )
        self.ready = True

    def on_unmount(self) -> None:
        self.ready = False

    # --- engine events ------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> bool:
        changed = False
        for e in events:
            if isinstance(e, WorkerState):
                old = self.worker_info.get(e.worker)
                pid = (
                    e.pid if e.pid is not None else (old.pid if old and e.state != "dead" else None)
                )
                self.worker_info[e.worker] = WorkerInfo(
                    e.worker, e.role, e.device, e.state, pid, e.detail
                )
                changed = True
        if changed:
            self._write_workers()
        return changed

    def worker_pids(self) -> list[int]:
        return [
            w.pid for w in self.worker_info.values() if w.pid and w.state not in ("dead", "stopped")
        ]

    def _write_workers(self) -> None:
        if not self.ready:  # kept in worker_info; written on the next sample
            return
        table = self.query_one("#workers", DataTable)
        procs = self.snapshot.processes if self.snapshot else {}
        for w in self.worker_info.values():
            p = procs.get(w.pid) if w.pid else None
            alive = p is not None and p.alive
            cells = [
                w.name,
                w.role,
                w.device,
                Text(w.state, style=WORKER_STATE_STYLE.get(w.state, "")),
                Text(str(w.pid) if w.pid else "—", justify="right"),
                Text(f"{_gib(p.rss)} GiB" if alive else "N/A", justify="right"),
                Text(na(p.cpu_percent, "{:.0f}") if alive else "N/A", justify="right"),
            ]
            if w.name in table.rows:
                for key, value in zip(
                    ("worker", "role", "device", "state", "pid", "rss", "cpu"), cells, strict=True
                ):
                    table.update_cell(w.name, key, value, update_width=True)
            else:
                table.add_row(*cells, key=w.name)

    # --- telemetry ----------------------------------------------------------------------------

    def show(self, snap: TelemetrySnapshot, history: dict) -> None:
        self.snapshot = snap
        if not self.ready:
            return
        status = self.query_one("#gpu-status", Static)
        rows = self.query_one("#gpu-rows", Vertical)
        if not snap.gpu_available:
            status.update(Text(snap.gpu_status, style="yellow"))
        elif snap.gpu_status.startswith("NVML query failed"):
            status.update(
                Text(snap.gpu_status + " — figures show N/A until NVML answers again", style="red")
            )
        else:
            status.update(Text(snap.gpu_status, style="green"))
        if len(snap.gpus) != self.gpu_count:
            self.gpu_count = len(snap.gpus)
            rows.remove_children()
            rows.mount_all([GpuRow(g.index) for g in snap.gpus])
        self._show_gpus(snap, history)
        h = snap.host
        cores = f" of {h.cpu_count} cores" if h.cpu_count else ""
        self.query_one("#host-line", Static).update(
            Text.assemble(
                ("CPU ", "bright_black"),
                (na(h.cpu_percent, "{:.0f}%"), "bold"),
                (cores + "   ", "bright_black"),
                ("RAM ", "bright_black"),
                (f"{_gib(h.memory_used)}/{_gib(h.memory_total)} GiB", "bold"),
                (f" ({na(h.memory_percent, '{:.0f}%')})", "bright_black"),
            )
        )
        self.query_one("#host-cpu", PercentSparkline).data = history.get("cpu", [])
        self.query_one("#host-ram", PercentSparkline).data = history.get("ram", [])
        if self.worker_info:
            self._write_workers()

    def _show_gpus(self, snap: TelemetrySnapshot, history: dict) -> None:
        for row in self.query(GpuRow):
            g = next((g for g in snap.gpus if g.index == row.index), None)
            if g is not None:
                row.show(
                    g,
                    history.get("gpu_util", {}).get(g.index, []),
                    history.get("gpu_memory", {}).get(g.index, []),
                )
