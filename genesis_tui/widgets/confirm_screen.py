"""Modal questions: cull an individual (yes/no); on quit, stop the run or detach from it.

Keyboard first: each choice has its key, esc cancels, and the safe choice has the focus, so
Enter alone never stops a run or culls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


@dataclass(frozen=True)
class Choice:
    key: str  # one key that picks it (shown on its button)
    label: str
    value: Any
    variant: str = "default"  # Button variant: "error" for the destructive one


class ChoiceScreen(ModalScreen[Any]):
    """Dismisses with the chosen ``Choice.value``, or ``cancel_value`` on esc."""

    BINDINGS = [
        Binding("escape", "cancel", "cancel", show=False),
        Binding("left", "app.focus_previous", show=False),
        Binding("right", "app.focus_next", show=False),
    ]

    def __init__(
        self,
        title: str,
        body: str,
        choices: list[Choice],
        *,
        focus: int = -1,
        cancel_value: Any = None,
    ) -> None:
        super().__init__()
        self.title_, self.body, self.choices = title, body, choices
        self.focus_index, self.cancel_value = focus, cancel_value

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog") as box:
            box.border_title = self.title_
            yield Static(Text(self.body), id="confirm-body")
            with Horizontal(id="confirm-buttons"):
                for k, c in enumerate(self.choices):
                    yield Button(
                        f"{c.label} ({c.key})", variant=c.variant, compact=True, id=f"choice-{k}"
                    )

    def on_mount(self) -> None:
        self.query_one(f"#choice-{self.focus_index % len(self.choices)}", Button).focus()

    def on_key(self, event) -> None:
        for c in self.choices:
            if event.key == c.key:
                event.stop()
                self.dismiss(c.value)
                return

    def action_cancel(self) -> None:
        self.dismiss(self.cancel_value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        k = int((event.button.id or "choice-0").split("-")[1])
        self.dismiss(self.choices[k].value)


class ConfirmScreen(ChoiceScreen):
    """Yes/no: dismisses with True (the action) or False (cancel: n, esc, or Enter on Cancel)."""

    def __init__(self, title: str, body: str, yes: str, no: str = "Cancel") -> None:
        super().__init__(
            title,
            body,
            [Choice("y", yes, True, "error"), Choice("n", no, False)],
            focus=1,
            cancel_value=False,
        )
        self.yes, self.no = yes, no
