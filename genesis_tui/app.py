"""The terminal UI: one Textual app that shows an engine and steers it, through a link.

The link (``genesis_tui.link``) is the engine's control socket — the engine runs in a process of
its own, so closing this window or losing the SSH session never stops a run — or an engine in
this process (tests), or a run's event log (``genesis-tui open``). Events from the link are only
buffered; a 0.1 s timer applies each batch to the panes, so the screen refreshes at most ten
times a second however fast the engine talks. Key presses become commands (``link.submit``);
the engine acknowledges each with an event that shows in the Log pane. Telemetry is sampled in
a daemon thread (``engine.telemetry``) and read here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from engine.events import (
    Command,
    CommandAck,
    Cull,
    EnginePaused,
    Event,
    Exported,
    ExportIndividual,
    GenerationFinished,
    GenerationStarted,
    IndividualUpdate,
    PauseEngine,
    PauseIndividual,
    Promote,
    RunFinished,
    RunStarted,
    StopRun,
    WorkerState,
)
from engine.telemetry import TelemetrySampler
from genesis_tui.link import Disconnected, Link, LocalLink
from genesis_tui.widgets.audio_pane import AudioPane
from genesis_tui.widgets.confirm_screen import Choice, ChoiceScreen, ConfirmScreen
from genesis_tui.widgets.details import IndividualDetails
from genesis_tui.widgets.details_screen import DetailsScreen
from genesis_tui.widgets.event_log import EventLog, is_style
from genesis_tui.widgets.help_screen import HelpScreen
from genesis_tui.widgets.leaderboard import Entry, Leaderboard
from genesis_tui.widgets.loss_pane import LossPane
from genesis_tui.widgets.run_header import RunHeader
from genesis_tui.widgets.telemetry_pane import TelemetryPane

TABS = (
    ("board", "1 Leaderboard"),
    ("loss", "2 Loss"),
    ("telemetry", "3 Telemetry"),
    ("audio", "4 Audio"),
    ("log", "5 Log"),
)
EXIT_CODES = {"completed": 0, "failed": 1, "stopped": 130}
QUIT_BODY = (
    "This window started the run.\n\n"
    "Detach: close the window and leave the run going headless; come back with "
    "genesis-tui attach {run_dir}\n\n"
    "Stop: the engine finishes the work in flight and stops; the last complete generation "
    "stays resumable (genesis-tui --resume {run_dir}). The window closes when it has stopped."
)
QUIT_BODY_LOCAL = (
    "This window runs the engine itself: quitting stops the run. The engine finishes the work "
    "in flight; the last complete generation stays resumable (genesis-tui --resume {run_dir})."
)


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with the real stderr.

    Textual swaps ``sys.stderr`` for an object whose ``fileno()`` is -1; the tracker, started
    lazily by the first worker process, passes that descriptor on and fails ("bad value(s) in
    fds_to_keep"). Started here first, with the real stream, it never looks at it again.
    """
    from multiprocessing import resource_tracker

    saved = sys.stderr
    sys.stderr = sys.__stderr__
    try:
        resource_tracker.ensure_running()
    finally:
        sys.stderr = saved


@dataclass(frozen=True)
class _LogEnd(Event):
    """UI-side only: a read-only replay has delivered the whole event log."""

    kind: ClassVar[str] = "ui_log_end"


class GenesisApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "Genesis Lab"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = [
        Binding("space", "pause_engine", "pause", tooltip="pause the engine at its next step"),
        Binding("space", "resume_engine", "resume", tooltip="resume it"),
        Binding("p", "pause_individual", "pause ind", tooltip="pause the selected individual"),
        Binding("p", "resume_individual", "resume ind", tooltip="resume it"),
        Binding("P", "promote", "promote", tooltip="promote: it survives into the next generation"),
        Binding("x", "cull", "cull", tooltip="cull it: it leaves the population (asks first)"),
        Binding("e", "export", "export", tooltip="export its adapter (PEFT + mergekit recipe)"),
        Binding(
            "s",
            "sort",
            "sort",
            show=False,
            tooltip="on the Leaderboard: sort it by the next column",
        ),
        Binding("question_mark", "help", "help", key_display="?", tooltip="this help"),
        Binding(
            "q",
            "quit_app",
            "quit",
            tooltip="quit: stop the run or detach from it (asks); ctrl+q too",
        ),
        Binding("ctrl+q", "quit_app", "quit", show=False, priority=True, tooltip="quit, as q"),
        *(
            Binding(str(k), f"show_tab('{tab}')", label.split(" ", 1)[1], show=False)
            for k, (tab, label) in enumerate(TABS, 1)
        ),
    ]
    # (keys, what) for the help screen, beside those generated from BINDINGS.
    EXTRA_KEYS = (
        ("↑ ↓ PgUp PgDn", "select an individual (the selection then stays on it)"),
        ("home", "back to the top row, which follows the best again"),
        ("enter", "its details: genome, lineage, loss history"),
        ("1 … 5", "Leaderboard, Loss, Telemetry, Audio, Log"),
        ("a", "in the Audio pane: play / stop the selected individual's sample"),
        ("tab", "move the focus (on the tab bar ← → switch)"),
        ("ctrl+p", "command palette: every action by name"),
    )

    def __init__(
        self,
        link: Any,
        *,
        resume: bool = False,
        sampler: TelemetrySampler | None = None,
        flush_interval: float = 0.1,
    ) -> None:
        """``link``: a ``genesis_tui.link`` link, or an engine object (Orchestrator, the tests'
        FakeEngine) to drive in this process (``resume`` is then passed to its ``run``)."""
        super().__init__()
        if not isinstance(link, Link):
            link = LocalLink(link, resume=resume)
        self.link: Link = link
        self.owns_run = link.owns_run
        self.sampler = sampler if sampler is not None else TelemetrySampler()
        self.flush_interval = flush_interval
        self._pending: list[Event] = []
        profile = getattr(getattr(link, "engine", None), "profile", None)
        self.run_name = str(getattr(getattr(profile, "run", None), "name", link.run_dir.name))
        self.generations: int | None = getattr(
            getattr(profile, "evolution", None), "generations", None
        )
        self.generation: int | None = None
        # The run's track and what −fitness is called, from its RunStarted: the TTS track's
        # style genomes are only scored, so the keys on a selected individual do not apply.
        self.track = "llm"
        self.metric = "val loss"
        self.started = False
        self.engine_state = "starting…"
        self.stopping = False
        self.finished: RunFinished | None = None
        self.best = ""
        self.unread_alarms = 0
        self.applied = 0  # events applied so far (tests wait on it)
        self._telemetry_seq = 0
        self._exit_on_finish = False
        self.farewell = ""
        self.disconnected: str | None = None  # why the link to the engine is gone
        self.detached = False
        link.subscribe(self._on_event)

    # --- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with TabbedContent(initial="board", id="tabs"):
            with TabPane(TABS[0][1], id="board"):
                with Horizontal(id="board-row"):
                    yield Leaderboard(id="leaderboard")
                    yield IndividualDetails(id="details-side")
            with TabPane(TABS[1][1], id="loss"):
                yield LossPane(id="loss-pane")
            with TabPane(TABS[2][1], id="telemetry"):
                yield TelemetryPane(id="telemetry-pane")
            with TabPane(TABS[3][1], id="audio"):
                yield AudioPane(id="audio-pane")
            with TabPane(TABS[4][1], id="log"):
                yield EventLog(id="event-log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # Kept here: ``self.query_one`` searches the active screen, which may be a modal.
        self.board = self.query_one(Leaderboard)
        self.loss = self.query_one(LossPane)
        self.telemetry = self.query_one(TelemetryPane)
        self.event_log = self.query_one(EventLog)
        self.audio = self.query_one(AudioPane)
        self.tabs = self.query_one(TabbedContent)
        self.run_header = self.query_one(RunHeader)
        self.side = self.query_one("#details-side", IndividualDetails)
        self.board.focus()
        self.run_header.mode = self.link.mode
        self._update_header()
        self.sampler.start()
        self.set_interval(self.flush_interval, self._flush_events)
        self._drive_link()

    def on_unmount(self) -> None:
        self.sampler.stop()

    @work(exclusive=True, group="engine", exit_on_error=False, description="the engine link")
    async def _drive_link(self) -> None:
        try:
            if isinstance(self.link, LocalLink):
                _start_resource_tracker()
            await self.link.run()
            if self.link.read_only:  # the whole log is in the buffer now
                self._on_event(_LogEnd())
        except Exception as exc:  # the engine reports its own failures; this is a crash
            if self.finished is None:
                self._on_event(RunFinished("failed", reason=f"the engine crashed: {exc!r}"))

    # --- events -----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Called by the engine for every event, on the loop's thread: buffer only."""
        self._pending.append(event)

    def _flush_events(self) -> None:
        if self._exit or not self.is_running:  # the panes are being torn down
            return
        try:
            self._apply_pending()
        except NoMatches as exc:
            # The timer fired while the app was shutting down without exit() (a terminal going
            # away, a test harness ending): Textual removes the panes' children before it stops
            # the app's timers. The panes are composed once and never removed otherwise, so a
            # missing one means teardown; the events stay unapplied, nothing is left to show them.
            self.log.warning(f"event flush during teardown: {exc}")

    def _apply_pending(self) -> None:
        events, self._pending = self._pending, []
        snap = self.sampler.latest()
        fresh = snap is not None and snap.seq != self._telemetry_seq
        if not events and not fresh:
            return
        board = self.board
        changed: set[str] = set()
        if events:
            for e in events:
                self._apply_state(e)
            changed = board.apply(events)
            self.loss.apply(events)
            self.audio.apply(events)
            telemetry = self.telemetry
            if telemetry.apply(events):
                self.sampler.watch(telemetry.worker_pids())
            alarms = self.event_log.apply(events)
            self._count_alarms(alarms)
            self._notify(events)
            self.applied += len(events)
        if fresh and snap is not None:
            self._telemetry_seq = snap.seq
            self.telemetry.show(snap, self.sampler.history())
        if events:
            self._update_header()
            board.set_hint(self._phase())
            self._show_selected(changed)
            self.refresh_bindings()
            if self.finished is not None and self._exit_on_finish:
                self._exit_on_finish = False
                self.exit(self.exit_code())

    def _apply_state(self, e: Event) -> None:
        if isinstance(e, RunStarted):
            self.started = True
            self.generations = e.generations
            self.track, self.metric = e.track, e.metric
            self.run_name = e.profile
            if e.remote_code:
                self.run_header.remote_code = list(e.remote_code)
                self.run_header.refresh()
            if e.resumed_from is not None:
                self.generation = e.resumed_from
            # A run's log holds every session: a RunStarted after a RunFinished is a resume.
            self.finished = None
            if not self.stopping:
                self.engine_state = "paused" if self.link.paused else "running"
        elif isinstance(e, GenerationStarted):
            self.generation = e.generation
        elif self.track != "tts" and is_style(e):  # a log from before RunStarted.track
            self.track, self.metric = "tts", "score"
        elif isinstance(e, GenerationFinished):
            if not math.isnan(e.best):
                self.best = f"best {-e.best:.4f} {e.champion}"
        elif isinstance(e, EnginePaused):
            if not self.stopping:
                self.engine_state = "paused" if e.paused else "running"
        elif isinstance(e, CommandAck) and e.command.get("kind") == "pause_engine":
            # The engine's answer to space: refused, or it already was in that state.
            paused = bool(e.command.get("paused", True))
            if not e.ok and self.engine_state in ("pausing…", "resuming…"):
                self.engine_state = "running" if paused else "paused"
            elif e.ok and e.detail.startswith("already") and not self.stopping:
                self.engine_state = "paused" if paused else "running"
        elif isinstance(e, RunFinished):
            self.finished = e
            self.engine_state = e.status
            self.stopping = False
            if e.champion and e.champion_fitness is not None:  # a soup may top the last generation
                self.best = f"best {-e.champion_fitness:.4f} {e.champion}"
        elif isinstance(e, _LogEnd):
            if self.finished is None:  # the log stops without the run's end: killed, or going on
                self.engine_state = "log ends"
        elif isinstance(e, Disconnected):
            self.disconnected = e.reason
            if self.finished is None:
                self.engine_state = "disconnected"
            self.stopping = False

    def _phase(self) -> str:
        """What the engine is doing before the first individual shows (for the empty table)."""
        if self.finished is not None:
            return f"the run {self.finished.status} before any individual"
        if self.disconnected is not None:
            return self.disconnected
        if not self.started:
            return "starting the engine…"
        workers = self.telemetry.worker_info.values()
        if not workers or any(w.state == "starting" for w in workers):
            return "workers loading their models…"
        return "scoring the references (untrained student, teacher)…"

    def _notify(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, CommandAck) and not e.ok:
                self.notify(e.detail, title=f"{e.command.get('kind')} refused", severity="error")
            elif isinstance(e, Exported):
                self.notify(f"{e.id} → {e.path}", title="exported")
            elif isinstance(e, IndividualUpdate) and e.status == "failed":
                self.notify(
                    e.reason or "see the Log pane", title=f"{e.id} failed", severity="error"
                )
            elif isinstance(e, WorkerState) and e.state == "dead":
                self.notify(e.detail or "", title=f"worker {e.worker} died", severity="error")
            elif isinstance(e, Disconnected):
                self.notify(e.reason, title="engine link lost", severity="error", timeout=12)
            elif isinstance(e, RunFinished):
                severity = {"completed": "information", "stopped": "warning"}.get(e.status, "error")
                text = e.reason or (f"champion {e.champion}" if e.champion else "")
                self.notify(text, title=f"run {e.status}", severity=severity, timeout=8)

    def _count_alarms(self, alarms: int) -> None:
        tabs = self.tabs
        if alarms and tabs.active != "log":
            self.unread_alarms += alarms
            tabs.get_tab("log").label = Text.assemble(
                TABS[4][1] + " ", (f"●{self.unread_alarms}", "bold red")
            )

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "log" and self.unread_alarms:
            self.unread_alarms = 0
            event.tabbed_content.get_tab("log").label = TABS[4][1]
        self.refresh_bindings()

    def _update_header(self) -> None:
        state = "stopping…" if self.stopping else self.engine_state
        self.run_header.show(self.run_name, self.generation, self.generations, state, self.best)

    # --- selection and details --------------------------------------------------------------

    @property
    def selected(self) -> Entry | None:
        board = getattr(self, "board", None)  # None until mounted (the footer asks early)
        return board.selected if board is not None else None

    def _genome(self, ind_id: str) -> dict[str, Any] | None:
        entry = self.board.entries.get(ind_id)
        return dict(entry.genome) if entry is not None and entry.genome else None

    def _details_args(self, entry: Entry) -> tuple[Entry, list, dict[str, Any] | None]:
        return entry, self.board.lineage(entry.id), self._genome(entry.id)

    def _show_selected(self, changed: set[str] | None = None) -> None:
        if not hasattr(self, "board"):
            return
        entry = self.selected
        self.audio.show_for(entry.id if entry else None)  # cheap when unchanged
        if self.size.width >= 120:  # the wide layout shows the details column
            self.side.show(*(self._details_args(entry) if entry else (None,)))
        for screen in self.screen_stack:
            if isinstance(screen, DetailsScreen) and (
                changed is None or screen.entry.id in changed
            ):
                current = self.board.entries.get(screen.entry.id)
                if current is not None:
                    screen.refresh_details(*self._details_args(current))

    @on(DataTable.RowHighlighted, "#leaderboard")
    def _row_highlighted(self) -> None:
        self._show_selected(set())
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#leaderboard")
    def _row_selected(self) -> None:
        entry = self.selected
        if entry is not None:
            self.push_screen(DetailsScreen(*self._details_args(entry)))

    def on_resize(self) -> None:
        self.call_after_refresh(self._show_selected, set())

    # --- what applies now -------------------------------------------------------------------

    @property
    def run_active(self) -> bool:
        return (
            self.started
            and self.finished is None
            and not self.stopping
            and self.disconnected is None
            and not self.link.read_only
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """True: enabled; None: shown greyed out (does not apply now); False: hidden."""
        if action == "sort":  # only where the leaderboard is in sight
            tabs = getattr(self, "tabs", None)
            return tabs is not None and tabs.active == "board" and len(self.screen_stack) == 1
        state = self.engine_state
        if action == "pause_engine":
            if self.run_active and state in ("paused", "resuming…"):
                return False  # "resume" takes the key
            return True if self.run_active and state == "running" else None
        if action == "resume_engine":
            if not self.run_active or state not in ("paused", "resuming…"):
                return False
            return True if state == "paused" else None
        if action in ("pause_individual", "resume_individual", "promote", "cull", "export"):
            e = self.selected
            paused = e is not None and e.status == "paused"
            if action == "resume_individual":
                return (True if self.run_active else None) if paused else False
            if action == "pause_individual" and paused:
                return False
            if self.track == "tts":
                return None  # style genomes: nothing to pause, promote, cull or export
            if e is None or e.gone or not self.run_active:
                return None
            if action in ("cull", "promote") and paused:
                return None
            if action == "promote":
                return True if e.status != "promoted" else None
            if action == "export":
                return True if e.trained else None
            return True
        return True

    def why_not(self, action: str) -> str:
        """Why ``action`` does not apply now, in a line (shown when its key is pressed anyway)."""
        if action == "sort":
            return "s sorts the leaderboard: show it first (1)"
        if self.link.read_only:
            return "this run is open read-only"
        if self.disconnected is not None:
            return "not connected to the engine"
        if not self.started:
            return "the engine is still starting"
        if self.finished is not None:
            return f"the run has {self.finished.status}"
        if self.stopping:
            return "the engine is stopping"
        state = self.engine_state
        if action in ("pause_engine", "resume_engine"):
            return f"{state} — wait for the engine to confirm"
        if self.track == "tts":
            return (
                "the TTS track only scores style genomes: an individual cannot be paused, "
                "promoted, culled or exported (space pauses the engine)"
            )
        e = self.selected
        if e is None:
            return "select an individual first (↑ ↓ in the leaderboard)"
        if e.gone:
            return f"{e.id} is {e.status}"
        if action == "promote":
            return f"{e.id} is already promoted"
        if action in ("cull", "promote") and e.status == "paused":
            verb = "culling" if action == "cull" else "promoting"
            return f"{e.id} is paused; resume it (p) before {verb}"
        if action == "export":
            return f"{e.id} has no trained adapter yet"
        return "not now"

    def on_key(self, event: events.Key) -> None:
        """A key whose action does not apply reaches here: say why instead of doing nothing."""
        if len(self.screen_stack) > 1:  # a modal is open: its keys are its own
            return
        actions = [
            b.action
            for b in self.BINDINGS
            if isinstance(b, Binding) and event.key in b.key.split(",")
        ]
        if actions and not any(self.check_action(a, ()) for a in actions):
            self.notify(self.why_not(actions[0]), title=f"{event.key}: not now", timeout=2.5)
            event.stop()

    # --- actions ----------------------------------------------------------------------------

    def _submit(self, command: Command) -> None:
        """To the engine; its answer comes back as a ``CommandAck`` event (shown in the log)."""
        self.link.submit(command)

    def action_pause_engine(self) -> None:
        self.engine_state = "pausing…"  # until the engine says paused (EnginePaused)
        self._update_header()
        self.refresh_bindings()
        self._submit(PauseEngine(True))

    def action_resume_engine(self) -> None:
        self.engine_state = "resuming…"
        self._update_header()
        self.refresh_bindings()
        self._submit(PauseEngine(False))

    def action_pause_individual(self) -> None:
        if (e := self.selected) is not None:
            self._submit(PauseIndividual(e.id, True))

    def action_resume_individual(self) -> None:
        if (e := self.selected) is not None:
            self._submit(PauseIndividual(e.id, False))

    def action_promote(self) -> None:
        if (e := self.selected) is not None:
            self._submit(Promote(e.id))

    def action_cull(self) -> None:
        e = self.selected
        if e is None:
            return
        body = (
            f"{e.id} (generation {e.generation}, {e.status}) leaves the population now and "
            "cannot come back; a child takes its place in the next generation."
        )

        def answer(yes: bool | None) -> None:
            if yes:
                self._submit(Cull(e.id))

        self.push_screen(ConfirmScreen(f"Cull {e.id}?", body, yes="Cull"), answer)

    def action_export(self) -> None:
        if (e := self.selected) is not None:
            self._submit(ExportIndividual(e.id))

    def action_sort(self) -> None:
        column = self.board.cycle_sort()
        self.notify(f"leaderboard sorted by {column}", timeout=1.5)

    def action_show_tab(self, tab: str) -> None:
        self.tabs.active = tab
        focus = {
            "board": "#leaderboard",
            "log": "#event-log",
            "telemetry": "#telemetry-pane",
            "audio": "#audio-pane",
        }
        if tab in focus:
            self.screen_stack[0].query_one(focus[tab]).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows(), self.help_note()))

    def help_rows(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The help screen, from BINDINGS (one row per key; alternatives joined by " / ")."""
        sections: dict[str, dict[str, list[str]]] = {
            "Run": {},
            "Selected individual": {},
            "Views": {},
        }
        where = {"pause_engine": "Run", "resume_engine": "Run", "quit_app": "Run", "sort": "Views"}
        where["help"] = "Views"
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            if not b.description or b.action.startswith("show_tab") or b.key == "ctrl+q":
                continue
            what = b.tooltip or b.description
            rows = sections[where.get(b.action, "Selected individual")]
            rows.setdefault(b.key_display or b.key, [])
            if what not in rows[b.key_display or b.key]:
                rows[b.key_display or b.key].append(what)
        out = [
            (name, [(k, " / ".join(v)) for k, v in rows.items()]) for name, rows in sections.items()
        ]
        out[2][1].extend(self.EXTRA_KEYS)
        return out

    def help_note(self) -> str:
        return (
            "Keys that do not apply now are greyed out in the footer. A pause takes effect at "
            "the workers' next step: the header says “pausing…” until the engine confirms."
        )

    def action_quit_app(self) -> None:
        run_dir = self.link.run_dir
        if self.finished is not None or self.disconnected is not None or self.link.read_only:
            self.exit(self.exit_code())
            return
        if not self.owns_run:  # attached to a run another process owns: leave it going
            self.detach()
            return
        if self.stopping:

            def abort(yes: bool | None) -> None:
                if yes:
                    self.detach() if self.link.can_detach else self.exit(self.exit_code())

            body = (
                "The engine is stopping after the work in flight; the last complete generation "
                "stays resumable."
            )
            if self.link.can_detach:
                body += " Closing the window now leaves it to finish stopping on its own."
            else:
                body += " Quitting now interrupts it."
            self.push_screen(ConfirmScreen("Quit now?", body, yes="Quit now"), abort)
            return

        def answer(choice: str | None) -> None:
            if choice == "stop":
                self.stop_run(exit_after=True)
            elif choice == "detach":
                self.detach()

        if self.link.can_detach:
            choices = [
                Choice("s", "Stop the run", "stop", "error"),
                Choice("d", "Detach", "detach", "primary"),
                Choice("n", "Cancel", None),
            ]
            body = QUIT_BODY.format(run_dir=run_dir)
        else:
            choices = [Choice("s", "Stop the run", "stop", "error"), Choice("n", "Cancel", None)]
            body = QUIT_BODY_LOCAL.format(run_dir=run_dir)
        self.push_screen(ChoiceScreen("Quit", body, choices, focus=-1), answer)

    def detach(self) -> None:
        """Close the window; the run goes on in its own process."""
        self.detached = True
        self.link.detach()
        self.exit(0)

    def stop_run(self, *, exit_after: bool = False) -> None:
        if not self.started:  # the engine has not begun: cancel its start
            process = getattr(self.link, "process", None)
            if process is not None and not getattr(self.link, "connected", False):
                process.terminate()  # still loading: nothing of the run to keep yet
            elif isinstance(self.link, LocalLink):
                self.workers.cancel_group(self, "engine")
            else:
                self._submit(StopRun())
            if exit_after:
                self.exit(self.exit_code())
            return
        self._submit(StopRun())
        self.notify(
            "after the work in flight; the window closes then (q again: quit at once)",
            title="stopping",
            timeout=6,
        )
        self.stopping = True
        self._exit_on_finish = exit_after
        self._update_header()
        self.refresh_bindings()

    def exit_code(self) -> int:
        if self.detached or (self.link.read_only and self.finished is None):
            return 0
        if self.finished is None:
            return 1 if self.disconnected is not None else 130
        return EXIT_CODES.get(self.finished.status, 1)

    def exit(self, result: int | None = None, return_code: int = 0, message: Any = None) -> None:
        self.farewell = self._farewell()
        super().exit(result, return_code, message)

    def _farewell(self) -> str:
        run_dir = self.link.run_dir
        f = self.finished
        if self.link.read_only:
            return ""
        if self.detached and f is None:
            return (
                f"detached; the run goes on ({run_dir}).\n"
                f"attach again with: genesis-tui attach {run_dir}"
            )
        if f is None:
            if self.disconnected is not None:
                return f"genesis-tui: {self.disconnected}"
            return f"run interrupted; resume with: genesis-tui --resume {run_dir}"
        if f.status == "completed":
            text = f"run completed: champion {f.champion}"
            if f.champion_fitness is not None:
                text += f" ({self.metric} {-f.champion_fitness:.4f})"
            if f.export_dir:
                text += f"\nchampion adapter: {f.export_dir}"
            return text + f"\nrun directory: {run_dir}"
        return f"run {f.status}: {f.reason}\nresume with: genesis-tui --resume {run_dir}"

    # --- command palette --------------------------------------------------------------------

    PALETTE = (
        ("pause_engine", "Pause the engine", "workers stop at their next step"),
        ("resume_engine", "Resume the engine", "workers go on"),
        ("pause_individual", "Pause the selected individual", "not trained, scored or culled"),
        ("resume_individual", "Resume the selected individual", ""),
        ("promote", "Promote the selected individual", "survives into the next generation"),
        ("cull", "Cull the selected individual", "asks first"),
        ("export", "Export the selected individual", "PEFT adapter + mergekit recipe"),
        ("sort", "Sort the leaderboard by the next column", ""),
        ("help", "Keys", "every key and what it does"),
        ("quit_app", "Quit", "stop the run or detach from it (asks)"),
    )

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for cmd in super().get_system_commands(screen):
            if cmd.title not in ("Quit", "Keys"):  # ours ask before stopping a run
                yield cmd
        for action, title, help_text in self.PALETTE:
            if self.check_action(action, ()) is True:
                yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))
        for tab, label in TABS:
            yield SystemCommand(
                f"Show {label.split(' ', 1)[1]}",
                f"key {label.split(' ', 1)[0]}",
                lambda tab=tab: self.action_show_tab(tab),
            )
