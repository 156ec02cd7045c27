"""The top line: run name, generation g (n of G), best so far, and the engine state."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

STATE_STYLE = {
    "starting…": "bold yellow",
    "running": "bold green",
    "pausing…": "bold yellow",
    "paused": "bold black on yellow",
    "resuming…": "bold yellow",
    "stopping…": "bold red",
    "completed": "bold black on green",
    "stopped": "bold black on yellow",
    "failed": "bold white on red",
    "disconnected": "bold white on red",
    "log ends": "bold black on yellow",
}


class RunHeader(Widget):
    DEFAULT_CSS = "RunHeader { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name_, self.generation, self.generations = "", None, None
        self.state, self.best = "starting…", ""
        self.mode = ""  # "attached", "read-only": how this window reaches the run
        self.remote_code: list[str] = []  # models loaded with trust_remote_code: always in sight

    def show(
        self,
        name: str,
        generation: int | None,
        generations: int | None,
        state: str,
        best: str = "",
    ) -> None:
        new = (name, generation, generations, state, best)
        if new != (self.name_, self.generation, self.generations, self.state, self.best):
            self.name_, self.generation, self.generations, self.state, self.best = new
            self.refresh()

    def render(self) -> Text:
        left = Text.assemble(("Genesis Lab", "bold"), " · ", (self.name_, "bold cyan"))
        if self.mode:
            left.append(f" [{self.mode}]", style="bright_black")
        if self.remote_code:
            left.append(f" ⚠ remote code: {'+'.join(self.remote_code)}", style="bold yellow")
        if self.generations:
            g = self.generation
            left.append(
                f"  gen — of {self.generations}"
                if g is None
                else f"  gen {g} ({g + 1} of {self.generations})"
            )
        right = Text(f" {self.state} ", style=STATE_STYLE.get(self.state, "bold"))
        width = self.size.width or 80
        if self.best and left.cell_len + right.cell_len + len(self.best) + 3 <= width:
            right = Text.assemble((self.best + "  ", "bright_black"), right)
        gap = max(1, width - left.cell_len - right.cell_len)
        return Text.assemble(left, " " * gap, right)
