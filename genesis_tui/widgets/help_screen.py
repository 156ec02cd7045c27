"""The keys, grouped, with what each does and when it applies (``?``)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HelpRows = list[tuple[str, list[tuple[str, str]]]]  # (section, [(keys, what)])


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "close"),
    ]

    def __init__(self, rows: HelpRows, note: str = "") -> None:
        super().__init__()
        self.rows, self.note = rows, note

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True, min_width=9)
        table.add_column()
        for section, keys in self.rows:
            table.add_row(Text(section, style="bold underline"), "")
            for key, what in keys:
                table.add_row(key, what)
        with VerticalScroll(id="help-dialog") as box:
            box.border_title = "Keys"
            box.border_subtitle = "esc close"
            yield Static(table)
            if self.note:
                yield Static(Text(self.note, style="dim"))
