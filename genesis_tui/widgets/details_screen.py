"""A modal over the leaderboard with one individual's details (Enter on a row)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer

from genesis_tui.widgets.details import IndividualDetails
from genesis_tui.widgets.leaderboard import Entry


class DetailsScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "close"),
        Binding("enter", "dismiss", "close", show=False),
        Binding("q", "dismiss", "close", show=False),
    ]

    def __init__(
        self,
        entry: Entry,
        lineage: list[tuple[int, Entry | str]],
        genome: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.entry, self.lineage_, self.genome = entry, lineage, genome

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="details-dialog") as box:
            box.border_title = f"Individual {self.entry.id}"
            box.border_subtitle = "esc close"
            yield IndividualDetails(id="details-modal")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_details(self.entry, self.lineage_, self.genome)

    def refresh_details(
        self, entry: Entry, lineage: list[tuple[int, Entry | str]], genome: dict[str, Any] | None
    ) -> None:
        self.entry = entry
        self.query_one(IndividualDetails).show(entry, lineage, genome)
