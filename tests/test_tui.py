"""The terminal UI at 80×24, driven by Textual's Pilot: every key and every pane state against the
scripted fake engine, and one end-to-end run of the real engine on the tiny lab."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fakes import FakeEngine, FakeNvml
from rich.console import Console

from engine import events as ev
from engine.telemetry import NvmlSource, TelemetrySampler
from genesis_tui.app import GenesisApp
from genesis_tui.widgets import audio_pane
from genesis_tui.widgets.confirm_screen import ChoiceScreen, ConfirmScreen
from genesis_tui.widgets.details_screen import DetailsScreen
from genesis_tui.widgets.event_log import EventLog
from genesis_tui.widgets.gpu_row import GpuRow
from genesis_tui.widgets.help_screen import HelpScreen
from genesis_tui.widgets.leaderboard import Leaderboard
from genesis_tui.widgets.loss_pane import LossPane
from genesis_tui.widgets.run_header import RunHeader
from genesis_tui.widgets.telemetry_pane import TelemetryPane

SIZE = (80, 24)


class ManualSampler(TelemetrySampler):
    """No thread: the test says when a sample is taken."""

    def start(self) -> None:
        pass


def sampler(nvml: FakeNvml | None = None) -> ManualSampler:
    return ManualSampler(NvmlSource(nvml or FakeNvml(fail_init="NVML Shared Library Not Found")))


def make(**kw) -> tuple[GenesisApp, FakeEngine]:
    nvml = kw.pop("nvml", None)
    fake = FakeEngine(**kw)
    return GenesisApp(fake, sampler=sampler(nvml)), fake


async def until(pilot, cond: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.03)


def plain(renderable) -> str:
    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def header(app: GenesisApp) -> str:
    return str(app.query_one(RunHeader).render())


def log_text(app: GenesisApp) -> str:
    return "\n".join(app.query_one(EventLog).plain)


def enabled(app: GenesisApp, key: str) -> bool | None:
    """The footer's view of a key: True enabled, False greyed out, None not shown at all."""
    b = app.screen.active_bindings.get(key)
    return None if b is None else b.enabled


def notes(app: GenesisApp) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


async def gen0_scored(pilot, app: GenesisApp) -> None:
    await until(pilot, lambda: app.query_one(LossPane).generations, what="generation 0 scored")


# --- the whole run --------------------------------------------------------------------------


async def test_a_run_to_the_end_fills_every_pane(monkeypatch):
    monkeypatch.setattr(
        audio_pane, "probe_audio", lambda: "playback unavailable: PortAudio library not found"
    )
    app, fake = make(generations=2, kd=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None, what="RunFinished")
        await pilot.pause(0.15)
        assert app.finished.status == "completed"
        assert "completed" in header(app) and "gen 1 (2 of 2)" in header(app)
        board = app.query_one(Leaderboard)
        assert board.row_count == 7  # 4 in generation 0, 3 children in generation 1
        assert {e.status for e in board.entries.values()} >= {"elite", "evaluated", "culled"}
        top = board.selected
        assert top is not None and top.id == app.finished.champion  # the cursor follows the top
        loss = app.query_one(LossPane)
        assert len(loss.generations) == 2 and set(loss.series()) == {"loss", "ce", "kd"}
        assert loss.references == {"student": 5.2, "teacher": 3.9}
        assert "run completed: champion" in log_text(app)
        workers = app.query_one(TelemetryPane).worker_info
        assert {w.state for w in workers.values()} == {"stopped"}
        # Finished: nothing applies but help, sort and quit.
        for key in ("space", "p", "P", "x", "e"):
            assert enabled(app, key) is False, key
        await pilot.press("4")
        text = str(app.query_one(audio_pane.AudioPane).content)
        assert "no audio yet — the TTS track writes samples here" in text
        assert "PortAudio library not found" in text
        await pilot.press("q")  # the run is over: no question asked
        await pilot.pause()
    assert app.return_value == 0
    assert "run completed" in app.farewell


# --- the engine -----------------------------------------------------------------------------


async def test_space_pauses_then_resumes_the_engine():
    # the engine's EnginePaused is held until the test lets it go: a fixed latency ran out on a
    # loaded machine before the header was read
    app, fake = make(generations=1, steps=200, step_delay=0.01, pause_latency=None)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.started and app.query_one(Leaderboard).row_count)
        assert app.check_action("resume_engine", ()) is False  # hidden while running
        await pilot.press("space")
        await pilot.pause()
        assert "pausing…" in header(app)  # until the engine's EnginePaused
        assert enabled(app, "space") is False  # greyed out meanwhile
        fake.release_pause()
        await until(pilot, lambda: "paused" in header(app) and "pausing" not in header(app))
        assert enabled(app, "space") is True
        assert app.screen.active_bindings["space"].binding.action == "resume_engine"
        steps = len(fake.events)
        await pilot.pause(0.2)
        assert not any(isinstance(e, ev.TrainProgress) for e in fake.events[steps:])
        await pilot.press("space")
        await pilot.pause()
        assert "resuming…" in header(app)
        fake.release_pause()
        await until(pilot, lambda: "running" in header(app))
        assert fake.commands == [ev.PauseEngine(True), ev.PauseEngine(False)]
        await until(pilot, lambda: "command pause_engine paused=False: ok" in log_text(app))
        assert "engine paused" in log_text(app) and "engine resumed" in log_text(app)


# --- the selected individual ----------------------------------------------------------------


async def test_individual_keys_pause_promote_export():
    hold = asyncio.Event()
    app, fake = make(generations=1, hold_before_finish=hold)
    async with app.run_test(size=SIZE) as pilot:
        await gen0_scored(pilot, app)
        board = app.query_one(Leaderboard)
        await pilot.press("down")  # pin the selection on the second row
        target = board.selected
        assert target is not None and board.pinned
        await pilot.press("p")
        await until(pilot, lambda: board.entries[target.id].status == "paused")
        assert board.selected.id == target.id  # re-sorting kept the selection
        assert app.screen.active_bindings["p"].binding.action == "resume_individual"
        assert enabled(app, "x") is False  # a paused individual cannot be culled
        await pilot.press("p")
        await until(pilot, lambda: board.entries[target.id].status == "evaluated")
        await pilot.press("P")
        await until(pilot, lambda: board.entries[target.id].status == "promoted")
        assert enabled(app, "P") is False  # already promoted
        await pilot.press("e")
        await until(pilot, lambda: any(n.startswith("exported") for n in notes(app)))
        kinds = [type(c).__name__ for c in fake.commands]
        assert kinds == ["PauseIndividual", "PauseIndividual", "Promote", "ExportIndividual"]
        for kind in ("pause_individual", "promote", "export"):
            assert f"command {kind} id={target.id}" in log_text(app)
        assert f"exported {target.id} → " in log_text(app)
        hold.set()


async def test_cull_asks_first():
    hold = asyncio.Event()
    app, fake = make(generations=1, hold_before_finish=hold)
    async with app.run_test(size=SIZE) as pilot:
        await gen0_scored(pilot, app)
        board = app.query_one(Leaderboard)
        victim = board.selected.id
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen) and victim in app.screen.title_
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen) and fake.commands == []
        await pilot.press("x")
        await pilot.press("escape")
        assert fake.commands == []
        await pilot.press("x")
        await pilot.press("enter")  # the focus is on Cancel: Enter alone never culls
        assert fake.commands == []
        await pilot.press("x", "y")
        await until(pilot, lambda: board.entries[victim].status == "culled")
        assert fake.commands == [ev.Cull(victim)]
        assert f"{victim} culled by the operator" in log_text(app)
        hold.set()


async def test_keys_that_do_not_apply_are_greyed_and_say_why():
    hold = asyncio.Event()
    app, fake = make(generations=1, fail=("g0-002",), hold_before_finish=hold)
    async with app.run_test(size=SIZE) as pilot:
        await gen0_scored(pilot, app)
        board = app.query_one(Leaderboard)
        await pilot.press("end")  # the failed individual sorts last
        assert board.selected.status == "failed"
        for key in ("P", "x", "e", "p"):
            assert enabled(app, key) is False, key
        await pilot.press("P")
        assert fake.commands == []  # nothing sent
        await until(pilot, lambda: any("g0-002 is failed" in n for n in notes(app)))
        assert enabled(app, "space") is True and enabled(app, "question_mark") is True
        hold.set()


async def test_tts_track_greys_the_individual_keys_and_logs_mcd_and_scoring():
    hold = asyncio.Event()
    app, fake = make(generations=2, track="tts", hold_before_finish=hold)
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot,
            lambda: "generation 1 done" in log_text(app),
            15,
            what="generation 1 scored",
        )
        assert app.query_one(Leaderboard).selected is not None
        for key in ("P", "x", "e", "p"):
            assert enabled(app, key) is False, key  # greyed: style genomes are only scored
        assert enabled(app, "space") is True
        await pilot.press("x")  # no confirmation asked for a cull that would be refused
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("e", "P", "p")
        assert fake.commands == []
        await until(pilot, lambda: any("TTS track only scores" in n for n in notes(app)))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Export the selected individual" not in titles
        text = log_text(app)
        assert "generation 0: scoring 4 individuals" in text and "training" not in text
        assert "generation 0 done in 0.1s: MCD+tempo best" in text and "val loss" not in text
        hold.set()
        await until(pilot, lambda: app.finished is not None, 120)
        await pilot.pause(0.15)
        assert "run completed: champion" in log_text(app)
        assert "val loss" not in log_text(app) and "(MCD+tempo " in log_text(app)


async def test_a_failed_individual_shows_in_the_table_the_log_and_the_tab():
    app, fake = make(generations=1, fail=("g0-002",))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None)
        await pilot.pause(0.15)
        entry = app.query_one(Leaderboard).entries["g0-002"]
        assert entry.status == "failed" and "fake failure" in entry.reason
        assert log_text(app).count("g0-002 failed") == 1  # status and Log line: once
        assert "●1" in str(app.query_one("#tabs").get_tab("log").label)
        assert any(n.startswith("g0-002 failed") for n in notes(app))
        await pilot.press("5")
        assert app.query_one("#tabs").active == "log"
        assert "●" not in str(app.query_one("#tabs").get_tab("log").label)


# --- views ----------------------------------------------------------------------------------


async def test_log_lines_that_arrive_under_another_tab_wrap_to_the_log_width():
    app, fake = make(generations=1, steps=40, step_delay=0.01)
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one(EventLog)
        await pilot.press("5")  # laid out once: RichLog now knows a size…
        await pilot.pause(0.1)
        await pilot.press("1")  # …and has none while the Leaderboard is shown
        await until(pilot, lambda: app.finished is not None, 120)
        await pilot.pause(0.15)
        await pilot.press("5")
        await pilot.pause(0.2)

        def whole(width: int) -> list[str]:
            """The lines short enough for ``width`` that were not written on one row."""
            rows = [strip.text for strip in log.lines]
            return [p for p in log.plain if len(p) + 9 <= width and not any(p in r for r in rows)]

        width = log.scrollable_content_region.width
        assert width > 60
        assert any("teacher (teacher) on cpu" in p and "stopped" in p for p in log.plain)
        assert whole(width) == []  # not cut at 20 columns
        await pilot.resize_terminal(60, 24)  # every line wrapped again to the new width
        await pilot.pause(0.3)
        narrow = log.scrollable_content_region.width
        assert 0 < narrow < width
        assert max(len(strip.text.rstrip()) for strip in log.lines) <= narrow
        assert whole(narrow) == []


async def test_enter_opens_the_details_with_lineage_and_loss_history():
    app, fake = make(generations=2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None)
        await pilot.pause(0.15)
        board = app.query_one(Leaderboard)
        child = next(e for e in board.entries.values() if e.generation == 1 and e.parents)
        board.move_cursor(row=board.get_row_index(child.id))
        await pilot.press("enter")
        assert isinstance(app.screen, DetailsScreen)
        text = plain(app.screen.query_one("#details-text").content)
        assert child.id in text and f"↑ {child.parents[0]}" in text
        assert "rank" in text and "targets  q_proj, v_proj" in text
        assert f"step 4/4 ({len(child.losses)} readings)" in text and "kd: last" in text
        assert app.screen.query_one("#details-loss").data
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailsScreen)


async def test_s_cycles_the_sort_column_and_home_follows_the_top():
    app, fake = make(generations=2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None)
        await pilot.pause(0.15)
        board = app.query_one(Leaderboard)

        def ids() -> list[str]:
            return [
                board.coordinate_to_cell_key((r, 0)).row_key.value for r in range(board.row_count)
            ]

        assert board.sort_column == "fitness"
        live = [i for i in ids() if not board.entries[i].gone]
        fits = [board.entries[i].fitness for i in live]
        assert fits == sorted(fits, reverse=True)
        await pilot.press("s")
        assert board.sort_column == "gen"
        gens = [board.entries[i].generation for i in ids() if not board.entries[i].gone]
        assert gens == sorted(gens, reverse=True)
        assert "sorted by gen" in board.border_subtitle
        await pilot.press("s", "s", "s", "s")
        assert board.sort_column == "fitness"
        await pilot.press("down", "down")
        assert board.pinned and board.cursor_row == 2
        await pilot.press("home")
        assert not board.pinned and board.cursor_row == 0


async def test_s_sorts_only_where_the_leaderboard_is_shown():
    app, fake = make(generations=1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None, 120)
        board = app.query_one(Leaderboard)
        assert enabled(app, "s") is None or app.check_action("sort", ()) is True
        await pilot.press("4")  # the Audio tab
        assert app.check_action("sort", ()) is False
        await pilot.press("s")
        assert board.sort_column == "fitness"  # unchanged
        await until(pilot, lambda: any("show it first (1)" in n for n in notes(app)))
        assert "Sort the leaderboard by the next column" not in [
            c.title for c in app.get_system_commands(app.screen)
        ]
        await pilot.press("1", "s")
        assert board.sort_column == "gen"


def board_rows(board: Leaderboard) -> list[str]:
    """The board's rows as they are on the screen (the header first)."""
    return [board.render_line(y).text for y in range(board.scrollable_content_region.height)]


async def test_at_80_columns_the_leaderboard_fits_and_shows_the_operator_whole():
    app, fake = make(generations=3, population=6)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None, 120)
        await pilot.pause(0.15)
        board = app.query_one(Leaderboard)
        # no sideways scrolling: every column is in sight
        assert board.virtual_size.width <= board.scrollable_content_region.width
        rows = board_rows(board)
        assert "operator" in rows[0] and "val loss" in rows[0]
        assert "fitness" not in rows[0]  # −val loss; gen is in the id, ppl is exp(val loss)
        shown = 0
        for e in board.entries.values():
            row = next((r for r in rows if r.lstrip().startswith(e.id)), None)
            if row is not None:
                assert e.operator in row and "+".join(e.parents) in row, (e.operator, row)
                shown += 1
        assert shown > 8
        assert any("slerp 0.42 +mut12 r4→8" in r and "+" in r.split()[4] for r in rows[1:])
        await pilot.resize_terminal(160, 40)  # wide (beside the details column): every column
        await pilot.pause(0.3)
        header_row = board_rows(board)[0]
        assert all(c in header_row for c in ("gen", "fitness", "ppl", "rank", "operator"))


async def test_a_finished_run_shows_its_champion_on_the_leaderboard():
    hold = asyncio.Event()
    app, fake = make(generations=3, population=8, hold_before_finish=hold)
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot, lambda: app.generation == 2 and app.query_one(Leaderboard).row_count, 120
        )
        await until(pilot, lambda: "generation 2 done" in log_text(app), 120)
        board = app.query_one(Leaderboard)
        await pilot.press("end")  # an old selection, scrolled to the bottom
        await pilot.pause(0.1)
        assert board.pinned and board.scroll_y > 0
        await pilot.press("5")
        hold.set()
        await until(pilot, lambda: app.finished is not None, 120)
        await pilot.pause(0.15)
        await pilot.press("1")
        await pilot.pause(0.15)
        assert board.selected is not None and board.selected.id == app.finished.champion
        row = board.get_row_index(app.finished.champion)
        top = round(board.scroll_y)
        assert top <= row < top + board.scrollable_content_region.height - 1  # in sight
        assert any(r.lstrip().startswith(app.finished.champion) for r in board_rows(board))


async def test_help_screen_lists_every_key_and_the_panes_keep_updating_under_it():
    app, fake = make(generations=1, steps=100, step_delay=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.applied)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = plain(app.screen.query_one("Static").content)
        for key, what in (
            ("space", "pause the engine"),
            ("p", "pause the selected individual"),
            ("P", "promote"),
            ("x", "cull"),
            ("e", "export"),
            ("s", "sort"),
            ("q", "quit"),
            ("enter", "details"),
            ("ctrl+p", "command palette"),
        ):
            assert key in text and what in text, key
        applied = app.applied
        await until(pilot, lambda: app.applied > applied, what="events applied under the modal")
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_offers_what_applies_now():
    hold = asyncio.Event()
    app, fake = make(generations=1, hold_before_finish=hold)
    async with app.run_test(size=SIZE) as pilot:
        await gen0_scored(pilot, app)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for t in (
            "Pause the engine",
            "Promote the selected individual",
            "Cull the selected individual",
            "Quit",
            "Show Log",
        ):
            assert t in titles, t
        assert "Resume the engine" not in titles
        assert titles.count("Quit") == 1  # ours, which asks first
        cmd = next(c for c in app.get_system_commands(app.screen) if c.title == "Pause the engine")
        cmd.callback()
        assert fake.commands == [ev.PauseEngine(True)]
        await pilot.press("ctrl+p")
        assert type(app.screen).__name__ == "CommandPalette"
        await pilot.press("escape")
        hold.set()


async def test_quit_asks_then_stops_the_run():
    # the individual in flight lasts ≥ 4 s (400 steps × 10 ms): "stopping…" is still there when
    # the header is read, even on a loaded machine (100 steps were sometimes over by then)
    app, fake = make(generations=3, steps=400, step_delay=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.started)
        await pilot.press("q")
        assert isinstance(app.screen, ChoiceScreen) and app.screen.title_ == "Quit"
        body = str(app.screen.query_one("#confirm-body").content)
        assert "runs the engine itself: quitting stops the run" in body
        assert [c.value for c in app.screen.choices] == ["stop", None]  # no detach in-process
        await pilot.press("n")
        assert fake.commands == [] and app.is_running
        await pilot.press("q", "s")
        assert fake.commands == [ev.StopRun()]
        assert "stopping…" in header(app)
        assert enabled(app, "space") is False and enabled(app, "P") is False
        await pilot.press("q")  # while stopping: offers to quit at once
        assert isinstance(app.screen, ConfirmScreen) and app.screen.title_ == "Quit now?"
        await pilot.press("n")
        await until(
            pilot, lambda: not app.is_running, 120, what="the app to exit after the run stops"
        )
    assert app.return_value == 130
    assert "resume with: genesis-tui --resume" in app.farewell


async def test_resize_relays_out_with_a_details_column_when_wide():
    app, fake = make(generations=1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None)
        side = app.query_one("#details-side")
        assert not side.display or side.size.width == 0
        await pilot.resize_terminal(140, 40)
        await pilot.pause(0.2)
        assert app.screen.has_class("-wide") and side.size.width > 0
        assert app.query_one(Leaderboard).selected.id in plain(
            side.query_one("#details-text").content
        )
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.2)
        assert not app.screen.has_class("-wide")


async def test_an_engine_crash_shows_as_a_failed_run():
    class Crashing(FakeEngine):
        async def run(self, *, resume: bool = False):
            raise RuntimeError("boom")

    app = GenesisApp(Crashing(), sampler=sampler())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.finished is not None)
        await pilot.pause(0.15)
        assert "failed" in header(app) and "the engine crashed: RuntimeError('boom')" in log_text(
            app
        )
        assert "the run failed" in app.board.border_title
        await pilot.press("q")
    assert app.return_value == 1


async def test_output_flushed_while_the_app_runs_does_not_break_it():
    # Textual captures stdout/stderr while the app runs and calls App._flush(stderr=...) on a
    # flush (a logging handler flushes after every record): the app's own method must not be
    # named so.
    import logging
    import sys

    app, fake = make(generations=1)
    async with app.run_test(size=SIZE) as pilot:
        print("a line from a library", flush=True)
        sys.stderr.write("a warning\n")
        sys.stderr.flush()
        logger, handler = logging.getLogger("genesis-test"), logging.StreamHandler(sys.stderr)
        logger.addHandler(handler)
        try:
            logger.warning("logged")
        finally:
            logger.removeHandler(handler)
        await until(pilot, lambda: app.finished is not None, 120)
        assert app.is_running


# --- telemetry ------------------------------------------------------------------------------


async def test_telemetry_without_nvidia_gpu():
    app, fake = make(generations=1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        app.sampler.sample_once()
        await until(pilot, lambda: app.query_one(TelemetryPane).snapshot is not None)
        pane = app.query_one(TelemetryPane)
        status = str(pane.query_one("#gpu-status").content)
        assert status == "no NVIDIA GPU: NVML not available (NVML Shared Library Not Found)"
        assert not app.query(GpuRow)
        host = str(pane.query_one("#host-line").content)
        assert host.startswith("CPU ") and "GiB" in host and "N/A" not in host
        await until(pilot, lambda: app.finished is not None)


async def test_telemetry_with_gpus_then_nvml_failing():
    app, fake = make(
        generations=1, nvml=FakeNvml(2, break_after=1), hold_before_finish=asyncio.Event()
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: app.query_one(TelemetryPane).worker_info)
        app.sampler.sample_once()
        await until(pilot, lambda: len(app.query(GpuRow)) == 2)
        await pilot.pause(0.15)
        pane = app.query_one(TelemetryPane)
        assert str(pane.query_one("#gpu-status").content) == "2 NVIDIA GPUs"
        line = str(pane.query_one("#gpu-0-line").content)
        assert (
            "NVIDIA Fake H100" in line and "50%" in line and "250/700 W" in line and "60°C" in line
        )
        workers = pane.query_one("#workers")
        assert workers.row_count == 2
        rss = str(workers.get_cell("coliseum-0", "rss"))
        assert rss.endswith("GiB")  # the fake's workers are this process
        app.sampler.sample_once()  # NVML breaks: figures go N/A, the host stays live
        await until(pilot, lambda: "N/A" in str(pane.query_one("#gpu-0-line").content))
        line = str(pane.query_one("#gpu-0-line").content)
        assert "NVIDIA Fake H100" in line and "util  N/A" in line and "N/A/N/A W" in line
        assert "N/A" not in str(pane.query_one("#host-line").content)
        fake.hold_before_finish.set()
