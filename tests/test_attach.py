"""The control socket and the links: attach, detach, two windows on one run, read-only browsing.

Most tests serve the scripted engine (tests/fakes.py) through the real ``ControlServer`` on a real
Unix socket; the last one runs the real engine as a background process, as ``genesis-tui
--profile`` does, and attaches the UI to it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes import FakeEngine, FakeNvml

from engine import events as ev
from engine.control import ControlServer, engine_listening, socket_path
from engine.errors import RunDirError
from engine.rundir import RunDir
from engine.telemetry import NvmlSource, TelemetrySampler
from genesis_tui.app import GenesisApp
from genesis_tui.link import Disconnected, ReplayLink, SocketLink, spawn_engine
from genesis_tui.widgets.confirm_screen import ChoiceScreen
from genesis_tui.widgets.event_log import EventLog
from genesis_tui.widgets.leaderboard import Leaderboard
from genesis_tui.widgets.run_header import RunHeader

SIZE = (80, 24)


class ManualSampler(TelemetrySampler):
    def start(self) -> None:
        pass


def sampler() -> ManualSampler:
    return ManualSampler(NvmlSource(FakeNvml(fail_init="NVML Shared Library Not Found")))


async def until(cond, timeout: float = 120.0, what: str = "", pilot=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await (pilot.pause(0.03) if pilot is not None else asyncio.sleep(0.03))


def header(app: GenesisApp) -> str:
    return str(app.query_one(RunHeader).render())


def log_text(app: GenesisApp) -> str:
    return "\n".join(app.query_one(EventLog).plain)


class Served:
    """The scripted engine behind a real control server, running in the test's loop."""

    def __init__(self, run_dir: Path, **kw) -> None:
        self.hold = asyncio.Event()
        self.engine = FakeEngine(run_dir=run_dir, hold_before_finish=self.hold, **kw)
        self.server = ControlServer(self.engine, run_dir, [])
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Served:
        await self.server.start()
        self.task = asyncio.ensure_future(self.engine.run())
        return self

    async def __aexit__(self, *exc) -> None:
        self.hold.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)
        await self.server.close()


async def read_messages(reader: asyncio.StreamReader, n: int) -> list[dict]:
    return [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in range(n)]


# --- the server ------------------------------------------------------------------------------


async def test_socket_is_0600_replays_the_history_then_streams_and_takes_commands(tmp_path):
    async with Served(tmp_path, generations=1) as s:
        path = socket_path(tmp_path)
        assert path == tmp_path / "control.sock"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        await until(lambda: any(isinstance(e, ev.GenerationFinished) for e in s.engine.events))
        reader, writer = await asyncio.open_unix_connection(str(path))
        hello, *history = await read_messages(reader, 1 + len(s.engine.events))
        assert hello["type"] == "hello" and hello["pid"] == os.getpid()
        assert [m["event"] for m in history] == [e.to_dict() for e in s.engine.events]
        target = s.engine.population[0].id
        writer.write(
            (
                json.dumps({"type": "command", "command": ev.Promote(target).to_dict()}) + "\n"
            ).encode()
        )
        seen = []
        while not any(m.get("event", {}).get("kind") == "command_ack" for m in seen):
            seen += await read_messages(reader, 1)
        ack = next(m["event"] for m in seen if m["event"]["kind"] == "command_ack")
        assert ack["command"] == {"kind": "promote", "id": target} and ack["ok"] is True
        assert s.engine.commands == [ev.Promote(target)]
        writer.write(b'{"type": "command", "command": {"kind": "format_disk"}}\nnot json\n')
        errors = await read_messages(reader, 2)
        assert [m["type"] for m in errors] == ["error", "error"]
        assert "unknown command kind 'format_disk'" in errors[0]["message"]
        writer.close()
    assert not path.exists()  # removed when the engine stops


async def test_a_command_that_fails_in_the_engine_is_an_error_not_a_dropped_client(tmp_path):
    async with Served(tmp_path, generations=1) as s:

        def broken(command):
            raise RuntimeError("the pool is closing")

        s.engine.submit = broken
        reader, writer = await asyncio.open_unix_connection(str(s.server.path))
        await read_messages(reader, 1)  # hello
        line = json.dumps({"type": "command", "command": ev.PauseEngine(True).to_dict()}) + "\n"
        writer.write(line.encode())
        seen = []
        while not any(m["type"] == "error" for m in seen):
            seen += await read_messages(reader, 1)
        error = next(m for m in seen if m["type"] == "error")
        assert "command failed" in error["message"] and "the pool is closing" in error["message"]
        assert len(s.server.clients) == 1  # still attached, still served
        writer.close()


async def test_a_peer_of_another_uid_is_refused_and_the_refusal_logged(tmp_path):
    async with Served(tmp_path, generations=1) as s:
        s.server._uid = os.getuid() + 1  # as if the engine ran as someone else
        reader, writer = await asyncio.open_unix_connection(str(s.server.path))
        (msg,) = await read_messages(reader, 1)
        assert msg["type"] == "error" and f"refused: uid {os.getuid()}" in msg["message"]
        assert await reader.readline() == b""  # closed
        logs = [e for e in s.engine.events if isinstance(e, ev.Log)]
        assert any("refused a connection" in e.message for e in logs)
        writer.close()


async def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path):
    stale = socket_path(tmp_path)
    import socket as so

    dead = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    dead.bind(str(stale))  # a socket file nobody listens on: an engine that was killed
    dead.close()
    assert stale.exists() and not engine_listening(stale)
    async with Served(tmp_path, generations=1):
        assert engine_listening(stale)
        with pytest.raises(RunDirError, match="another engine is already running this run"):
            await ControlServer(FakeEngine(run_dir=tmp_path), tmp_path, []).start()


def test_a_run_directory_too_deep_for_a_socket_address_gets_a_private_one(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = socket_path(deep)
    assert path.parent.name == f"genesis-{os.getuid()}" and path.suffix == ".sock"
    assert len(os.fsencode(path)) < 100 and socket_path(deep) == path  # the same for both sides


def test_a_temporary_directory_too_deep_as_well_falls_back_to_tmp(tmp_path, monkeypatch):
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / ("t" * 90)))
    path = socket_path(deep)
    assert path.parent == Path("/tmp") / f"genesis-{os.getuid()}"
    assert len(os.fsencode(path)) < 100


async def test_a_deep_run_directory_still_serves(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    async with Served(deep, generations=1) as s:
        assert stat.S_IMODE(os.stat(s.server.path.parent).st_mode) == 0o700
        link = SocketLink(deep, connect_timeout=2)
        got: list[ev.Event] = []
        link.subscribe(got.append)
        task = asyncio.ensure_future(link.run())
        await until(lambda: any(isinstance(e, ev.GenerationFinished) for e in got))
        link.detach()
        await asyncio.wait_for(task, 5)


# --- the UI through the socket ---------------------------------------------------------------


async def test_two_windows_see_the_same_state_and_detaching_leaves_the_run_going(tmp_path):
    async with Served(tmp_path, generations=1, steps=3) as s:
        other = SocketLink(tmp_path)  # a second attached client
        other_events: list[ev.Event] = []
        other.subscribe(other_events.append)
        other_task = asyncio.ensure_future(other.run())
        app = GenesisApp(SocketLink(tmp_path), sampler=sampler())
        async with app.run_test(size=SIZE) as pilot:
            board = app.query_one(Leaderboard)
            await until(lambda: board.row_count >= 4 and board.selected, 120, "rows", pilot)
            assert "[attached]" in header(app)
            await until(
                lambda: any(e.fitness is not None for e in board.entries.values()),
                5,
                "scores",
                pilot,
            )
            await pilot.press("down")
            target = board.selected
            await pilot.press("P")
            await until(
                lambda: f"command promote id={target.id}" in log_text(app), 5, "the ack", pilot
            )
            assert s.engine.commands == [ev.Promote(target.id)]
            assert board.entries[target.id].status == "promoted"
            assert any(
                isinstance(e, ev.CommandAck) and e.command == {"kind": "promote", "id": target.id}
                for e in other_events
            )  # the other window saw the operator's decision too
            assert board.entries[target.id].genome["rank"] == target.rank  # genome in events
            await pilot.press("q")  # attached, not owned: quitting detaches at once
            await until(lambda: not app.is_running, 120, "exit", pilot)
        assert app.return_value == 0 and app.detached
        assert "attach again with: genesis-tui attach" in app.farewell
        assert not s.engine.stop_requested and not s.task.done()  # the run goes on
        s.hold.set()
        await until(lambda: any(isinstance(e, ev.RunFinished) for e in other_events), 120)
        other.detach()
        await asyncio.wait_for(other_task, 5)
        assert not any(isinstance(e, Disconnected) for e in other_events)


async def test_an_engine_that_goes_away_shows_as_disconnected(tmp_path):
    s = Served(tmp_path, generations=3, steps=50, step_delay=0.01)
    await s.__aenter__()
    app = GenesisApp(SocketLink(tmp_path), sampler=sampler())
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.started, 120, "start", pilot)
        s.task.cancel()  # the engine process is killed: its socket closes
        await s.server.close()
        await until(lambda: app.disconnected is not None, 120, "disconnect", pilot)
        await pilot.pause(0.15)
        assert "disconnected" in header(app)
        assert "engine link lost: the engine closed the connection" in log_text(app)
        assert "--resume" in app.disconnected
        await pilot.press("space")  # nothing to command: says why
        assert any("not connected to the engine" in n.message for n in app._notifications)
        await pilot.press("q")
    assert app.return_value == 1


async def test_an_engine_process_that_dies_while_starting_says_why(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "engine.log").write_text("genesis-tui: out of disk while loading\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    app = GenesisApp(SocketLink(tmp_path, process=proc), sampler=sampler())
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.disconnected is not None, 120, "disconnect", pilot)
        assert "the engine process exited (code 2)" in app.disconnected
        assert "out of disk while loading" in app.disconnected
        await pilot.press("q")
    assert app.return_value == 1 and "out of disk" in app.farewell


async def test_open_browses_a_finished_run_read_only(tmp_path):
    engine = FakeEngine(run_dir=tmp_path, generations=2)
    (tmp_path / "profile.toml").write_text("# the fake engine's run\n")
    run = RunDir(tmp_path)
    engine.subscribe(run.append_event)
    await engine.run()
    run.close()
    app = GenesisApp(ReplayLink(tmp_path), sampler=sampler())
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.finished is not None, 120, "replay", pilot)
        await pilot.pause(0.15)
        board = app.query_one(Leaderboard)
        assert "[read-only]" in header(app) and "completed" in header(app)
        assert board.selected.id == app.finished.champion
        await pilot.press("P")
        assert any("read-only" in n.message for n in app._notifications)
        await pilot.press("q")
    assert app.return_value == 0


# --- the real engine, in its own process ------------------------------------------------------


def train_steps(run: RunDir) -> int:
    return sum(1 for e in run.read_events() if isinstance(e, ev.TrainProgress))


@pytest.mark.slow
async def test_the_real_engine_on_the_demo_profile_pause_promote_detach_attach(tmp_path):
    """The embedded default, cut to 4 individuals × 2 generations: the real engine process as
    ``genesis-tui --profile`` starts it, steered from the UI, detached from and re-attached."""
    from conftest import demo_profile_text

    from engine.profile import load_profile

    path = tmp_path / "demo.toml"
    path.write_text(
        demo_profile_text(
            tmp_path / "runs",
            population__size=4,
            evolution__elitism=1,
            evolution__generations=2,
            evolution__sizes=None,
            training__steps_per_generation=16,
            data__max_val_examples=32,
        )
    )
    profile = load_profile(path)
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    proc = spawn_engine(run.path)
    try:
        app = GenesisApp(SocketLink(run.path, process=proc), sampler=sampler())
        async with app.run_test(size=SIZE) as pilot:
            board = app.query_one(Leaderboard)
            await until(
                lambda: any(e.status == "training" for e in board.entries.values()),
                120,
                "training to start",
                pilot,
            )
            await pilot.press("end")  # the last row: promote it, whatever its fitness
            target = board.selected.id
            await pilot.press("P")
            await until(lambda: board.entries[target].status == "promoted", 120, "promote", pilot)

            await pilot.press("space")
            await until(lambda: "paused" in header(app) and "pausing" not in header(app), 120)
            at_pause = train_steps(run)
            await pilot.pause(2.0)
            held = train_steps(run)
            assert held - at_pause <= 1, "pause must stop training within one step"
            await pilot.pause(1.5)
            assert train_steps(run) == held, "a paused engine trains nothing"
            await pilot.press("space")
            await until(lambda: "running" in header(app), 120, "resumed", pilot)

            await pilot.press("q")
            assert isinstance(app.screen, ChoiceScreen)
            assert [c.value for c in app.screen.choices] == ["stop", "detach", None]
            await pilot.press("d")
            await until(lambda: not app.is_running, 120, "exit", pilot)
        assert app.return_value == 0 and app.detached
        assert proc.poll() is None, "detaching must leave the engine running"

        again = GenesisApp(SocketLink(run.path), sampler=sampler())
        async with again.run_test(size=SIZE) as pilot:
            await until(lambda: again.finished is not None, 240, "the run to finish", pilot)
            await pilot.pause(0.15)
            assert again.finished.status == "completed", again.finished.reason
            board = again.query_one(Leaderboard)
            assert board.row_count >= profile.population.size
            assert board.selected.id == again.finished.champion
            assert board.entries[target].status == "promoted"  # survived selection
            assert "engine paused" in log_text(again)  # the history before this window
            await pilot.press("q")
        assert again.return_value == 0
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    final = (run.path / "leaderboard.csv").read_text()
    assert target in final  # in the last generation's population
    kinds = [e.kind for e in run.read_events()]
    assert kinds.count("engine_paused") == 2 and kinds[-1] == "run_finished"
    assert not socket_path(run.path).exists()
    assert "terminal UI: genesis-tui attach" in (run.path / "logs" / "engine.log").read_text()


@pytest.mark.slow
def test_a_lost_terminal_loses_nothing(tiny_profile, tmp_path):
    """``genesis-tui --profile`` in a real pseudo-terminal; the SSH session drops (SIGHUP to the
    UI): the engine goes on, and a new window attaches to it."""
    import pty
    import signal

    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color")
    ui = subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(tiny_profile())],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)

    def drain() -> None:  # the terminal: read what the UI draws, so it never blocks writing
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass

    threading.Thread(target=drain, daemon=True).start()
    runs = tmp_path / "runs"
    try:
        deadline = time.monotonic() + 60
        while not (runs.exists() and any(runs.iterdir())):
            assert time.monotonic() < deadline and ui.poll() is None
            time.sleep(0.1)
        run_dir = next(runs.iterdir())
        while not engine_listening(socket_path(run_dir)):
            assert time.monotonic() < deadline, "the engine never listened"
            time.sleep(0.1)
        os.kill(ui.pid, signal.SIGHUP)  # the SSH connection is gone
        ui.wait(10)
        time.sleep(0.5)
        assert engine_listening(socket_path(run_dir)), "the engine must outlive its window"

        async def reattach() -> list[ev.Event]:
            link = SocketLink(run_dir)
            got: list[ev.Event] = []
            link.subscribe(got.append)
            task = asyncio.ensure_future(link.run())
            await until(lambda: link.hello is not None, 120)
            await until(lambda: any(isinstance(e, ev.RunFinished) for e in got), 120)
            link.detach()
            await task
            return got

        got = asyncio.run(reattach())
        finished = [e for e in got if isinstance(e, ev.RunFinished)]
        assert finished[-1].status == "completed", finished[-1].reason
    finally:
        if ui.poll() is None:
            ui.kill()
        os.close(master)


async def test_a_resumed_run_reads_as_running_and_a_log_without_end_says_so(tmp_path):
    (tmp_path / "profile.toml").write_text("# a run stopped, then resumed, then killed\n")
    run = RunDir(tmp_path)
    for e in (
        ev.RunStarted(str(tmp_path), "demo", 0, 4, 8),
        ev.GenerationStarted(0, []),
        ev.RunFinished("stopped", reason="stopped by the operator"),
        ev.RunStarted(str(tmp_path), "demo", 0, 4, 8, resumed_from=0),
        ev.GenerationStarted(1, []),
    ):
        run.append_event(e)
    run.close()
    app = GenesisApp(ReplayLink(tmp_path), sampler=sampler())
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: "log ends" in header(app), 120, "the replay", pilot)
        assert app.finished is None and "gen 1 (2 of 4)" in header(app)
        await pilot.press("q")
    assert app.return_value == 0
