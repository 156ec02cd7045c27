"""The leaderboard: every individual seen in the run, live ones first, sortable by a key."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import DataTable

from engine.events import Event, IndividualUpdate, RunFinished, TrainFinished, TrainProgress

STATUS_STYLE = {
    "queued": "bright_black",
    "training": "bold cyan",
    "evaluating": "bold blue",
    "trained": "cyan",
    "evaluated": "default",
    "paused": "bold yellow",
    "elite": "bold green",
    "promoted": "bold magenta",
    "culled": "bright_black strike",
    "failed": "bold red",
}
# Lifecycle order, for sorting by status: work in progress first, the dead last.
STATUS_ORDER = {
    s: k
    for k, s in enumerate(
        (
            "training",
            "evaluating",
            "paused",
            "promoted",
            "elite",
            "evaluated",
            "trained",
            "queued",
            "failed",
            "culled",
        )
    )
}
GONE = ("culled", "failed")
# The status column is as wide as the longest status from the start: sized to its content, it
# grew and shrank with every change (queued, training, trained, evaluated…), and now and then
# was left one cell short ("evaluate").
STATUS_WIDTH = max(len(s) for s in STATUS_STYLE)

COLUMNS = (
    ("id", "id"),
    ("gen", "gen"),
    ("status", "status"),
    ("fitness", "fitness"),
    ("val_loss", "val loss"),
    ("ppl", "ppl"),
    ("rank", "rank"),
    ("parents", "parents"),
    ("operator", "operator"),
)
SORTS = ("fitness", "gen", "id", "status", "rank")
# Below this width (the board's, border included) the columns that repeat another are left out,
# so that the operator fits at 80 columns: the id names the generation (g2-014), and in the LLM
# track fitness is −val loss and ppl exp(val loss). The details (enter) show every figure. Every
# column, with two parents and an operator such as "slerp 0.42 +mut12 r4→8", takes about 100.
NARROW_BELOW = 102


def column_keys(style: bool, narrow: bool) -> list[str]:
    """The columns shown: a style genome (TTS track) has no perplexity and no rank."""
    drop = {"ppl", "rank"} if style else set()
    if narrow:
        drop |= {"gen"} if style else {"gen", "fitness", "ppl"}
    return [key for key, _ in COLUMNS if key not in drop]


@dataclass
class Entry:
    """What the UI knows about one individual, from its events."""

    id: str
    generation: int
    status: str
    rank: int
    alpha: float
    learning_rate: float
    parents: list[str]
    operator: str
    fitness: float | None = None
    val_loss: float | None = None
    perplexity: float | None = None
    reason: str = ""
    trained: bool = False
    losses: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)
    genome: dict = field(default_factory=dict)
    step: tuple[int, int] = (0, 0)  # the last training step reported, of how many

    @property
    def gone(self) -> bool:
        return self.status in GONE


def _num(value: float | None, fmt: str) -> Text:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Text("—", style="bright_black", justify="right")
    return Text(fmt.format(value), justify="right")


class Leaderboard(DataTable):
    """A DataTable of individuals keyed by id; ``apply(events)`` updates only changed rows."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.entries: dict[str, Entry] = {}
        self.sort_index = 0
        self.border_title = "Leaderboard"
        # Until the operator moves the cursor it stays on the top row (the best so far); once
        # moved, it stays on the chosen individual however the rows are re-sorted.
        self.pinned = False
        self.hint = "starting the engine…"
        # The TTS track's individuals are style genomes scored by MCD, not adapters scored by
        # validation loss: the columns say so once the first one arrives.
        self.style_track = False
        self.narrow = False
        self.shown_columns: list[str] = []

    def on_mount(self) -> None:
        self._build_columns()
        self._update_title()

    def on_resize(self, event) -> None:
        if event.size.width:  # 0 while another tab is shown: keep the columns as they are
            narrow = event.size.width < NARROW_BELOW
            if narrow != self.narrow:
                self.narrow = narrow
                self._build_columns()

    def _build_columns(self) -> None:
        """(Re)make the columns for the track and the width, and every row under them."""
        keys = column_keys(self.style_track, self.narrow)
        if keys == self.shown_columns:
            return
        current = self.selected
        self.clear(columns=True)
        labels = dict(COLUMNS) | ({"val_loss": "MCD dB"} if self.style_track else {})
        for key in keys:
            self.add_column(labels[key], key=key, width=STATUS_WIDTH if key == "status" else None)
        self.shown_columns = keys
        for ind_id in sorted(self.entries):
            cells = self._cells(self.entries[ind_id])
            self.add_row(*(cells[k] for k in keys), key=ind_id)
        self._resort(current.id if current else None)

    # --- reading ------------------------------------------------------------------------------

    @property
    def sort_column(self) -> str:
        return SORTS[self.sort_index]

    @property
    def selected(self) -> Entry | None:
        """The individual under the cursor, if any."""
        if not self.row_count or not self.is_valid_row_index(self.cursor_row):
            return None
        key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value
        return self.entries.get(key or "")

    def lineage(self, ind_id: str, depth: int = 3) -> list[tuple[int, Entry | str]]:
        """Ancestors breadth-first up to ``depth`` generations: (level, entry or bare id)."""
        out: list[tuple[int, Entry | str]] = []
        frontier, seen = [ind_id], {ind_id}
        for level in range(1, depth + 1):
            nxt = []
            for i in frontier:
                e = self.entries.get(i)
                for p in e.parents if e else []:
                    if p in seen:
                        continue
                    seen.add(p)
                    out.append((level, self.entries.get(p, p)))
                    nxt.append(p)
            frontier = nxt
        return out

    # --- updating -----------------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> set[str]:
        """Fold events into the entries and the table; return the ids whose row changed."""
        changed: set[str] = set()
        champion: str | None = None
        for e in events:
            if isinstance(e, RunFinished):
                champion = e.champion
            elif isinstance(e, IndividualUpdate):
                old = self.entries.get(e.id)
                entry = Entry(
                    e.id,
                    e.generation,
                    e.status,
                    e.rank,
                    e.alpha,
                    e.learning_rate,
                    list(e.parents),
                    e.operator,
                    e.fitness,
                    e.val_loss,
                    e.perplexity,
                    e.reason,
                    trained=(old.trained if old else False) or e.fitness is not None,
                    losses=old.losses if old else [],
                    terms=old.terms if old else {},
                    genome=dict(e.genome) or (old.genome if old else {}),
                    step=old.step if old else (0, 0),
                )
                self.entries[e.id] = entry
                changed.add(e.id)
                if entry.genome.get("kind") == "style" and not self.style_track:
                    self._style_columns()
            elif isinstance(e, TrainProgress):
                entry = self.entries.get(e.id)
                if entry is not None:
                    entry.losses.append(e.loss)
                    entry.step = (e.step, e.steps)
                    for k, v in e.terms.items():
                        entry.terms.setdefault(k, []).append(v)
            elif isinstance(e, TrainFinished):
                entry = self.entries.get(e.id)
                if entry is not None:
                    entry.trained = True
        if changed:
            self._write_rows(changed)
        if champion is not None:
            self.show(champion)
        return changed

    def show(self, ind_id: str) -> None:
        """Put the cursor on ``ind_id`` and scroll to it (the run's champion, at its end)."""
        if ind_id not in self.rows:
            return
        row = self.get_row_index(ind_id)
        self.pinned = row != 0  # on the top row it goes on following the top
        self.move_cursor(row=row, animate=False, scroll=True)
        self._update_title()

    def _style_columns(self) -> None:
        self.style_track = True  # "MCD dB" for val loss; no perplexity, no rank
        self._build_columns()

    def _cells(self, e: Entry) -> dict[str, Text | str]:
        parents = "+".join(e.parents) if e.parents else "—"
        return {
            "id": e.id,  # plain: the sort key function receives it
            "gen": Text(str(e.generation), justify="right"),
            "status": Text(e.status, style=STATUS_STYLE.get(e.status, "")),
            "fitness": _num(e.fitness, "{:.4f}"),
            "val_loss": _num(e.val_loss, "{:.4f}"),
            "ppl": _num(e.perplexity, "{:.1f}"),
            "rank": Text(str(e.rank), justify="right"),
            "parents": Text(parents, style="bright_black" if not e.parents else ""),
            "operator": e.operator,
        }

    def _write_rows(self, ids: set[str]) -> None:
        current = self.selected
        for ind_id in sorted(ids):
            cells = self._cells(self.entries[ind_id])
            if ind_id in self.rows:
                for key in self.shown_columns:
                    self.update_cell(ind_id, key, cells[key], update_width=True)
            else:
                self.add_row(*(cells[k] for k in self.shown_columns), key=ind_id)
        self._resort(current.id if current else None)
        self._update_title()

    def _sort_key(self, ind_id: str) -> tuple:
        e = self.entries[ind_id]
        col = self.sort_column
        fit = -math.inf if e.fitness is None or math.isnan(e.fitness) else e.fitness
        if col == "fitness":
            k: tuple = (-fit,)
        elif col == "gen":
            k = (-e.generation, -fit)
        elif col == "status":
            k = (STATUS_ORDER.get(e.status, 99), -fit)
        elif col == "rank":
            k = (-e.rank, -fit)
        else:
            k = ()
        # The live population always comes before the culled and failed.
        return (e.gone, *k, e.id)

    def _resort(self, keep: str | None) -> None:
        if not self.row_count:
            return
        self.sort("id", key=self._sort_key)
        if self.pinned and keep is not None and keep in self.rows:
            self.move_cursor(row=self.get_row_index(keep), animate=False)
        elif not self.pinned:
            self.move_cursor(row=0, animate=False)

    # Cursor keys and clicks pin the selection; Home (back to the top) unpins it.
    def _pin(self) -> None:
        if not self.pinned:
            self.pinned = True
            self._update_title()

    def action_cursor_up(self) -> None:
        self._pin()
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._pin()
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self._pin()
        super().action_page_up()

    def action_page_down(self) -> None:
        self._pin()
        super().action_page_down()

    def action_scroll_bottom(self) -> None:
        self._pin()
        super().action_scroll_bottom()

    def action_scroll_top(self) -> None:
        self.pinned = False
        super().action_scroll_top()
        self._update_title()

    # Home and End move between the top and the bottom row (← → still scroll sideways).
    action_scroll_home = action_scroll_top
    action_scroll_end = action_scroll_bottom

    async def _on_click(self, event) -> None:
        self._pin()
        await super()._on_click(event)

    def cycle_sort(self) -> str:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        current = self.selected
        self._resort(current.id if current else None)
        self._update_title()
        return self.sort_column

    def sort_by(self, column: str) -> None:
        if column in SORTS:
            self.sort_index = SORTS.index(column)
            current = self.selected
            self._resort(current.id if current else None)
            self._update_title()

    def set_hint(self, hint: str) -> None:
        """What the engine is doing while the table is still empty."""
        self.hint = hint
        self._update_title()

    def _update_title(self) -> None:
        live = sum(1 for e in self.entries.values() if not e.gone)
        if not self.entries and self.hint:
            self.border_title = f"Leaderboard · {self.hint}"
        else:
            self.border_title = f"Leaderboard · {live} live / {len(self.entries)} seen"
        follow = "selection pinned (home: follow the top)" if self.pinned else "following the top"
        self.border_subtitle = f"{follow} · sorted by {self.sort_column} (s)"

    def refresh_title(self) -> None:
        self._update_title()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))
        event.stop()
