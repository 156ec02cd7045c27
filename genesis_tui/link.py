"""How the UI reaches an engine: one interface, three kinds of link.

- ``SocketLink``: an engine running in another process (a headless run, or the one this window
  started in the background), through its control socket. The normal case: closing the window,
  or losing the SSH session, leaves the run going.
- ``LocalLink``: an engine object in this process (the UI tests' scripted engine; embedding).
- ``ReplayLink``: a finished or stopped run, read back from its event log; nothing to command.

Every link delivers engine events to its subscribers on the UI's event loop and takes commands;
the engine acknowledges each with a ``CommandAck`` event, so the UI never waits on a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from engine.control import socket_path
from engine.events import Command, CommandAck, Event, Log, RunFinished, event_from_dict


@dataclass(frozen=True)
class Disconnected(Event):
    """UI-side only (never in a run's log): the link to the engine is gone."""

    kind: ClassVar[str] = "ui_disconnected"
    reason: str


Subscriber = Callable[[Event], None]


class Link:
    owns_run = False  # this window started the run: quitting asks stop or detach
    can_detach = False  # the run can go on without this window
    read_only = False  # nothing can be commanded
    mode = ""  # shown in the header: "attached", "read-only", ""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.subscribers: list[Subscriber] = []

    @property
    def paused(self) -> bool:
        """Whether the engine is paused as the link starts (later, EnginePaused events say)."""
        return False

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def _publish(self, event: Event) -> None:
        for fn in list(self.subscribers):
            fn(event)

    def _refuse(self, command: Command, why: str) -> None:
        self._publish(CommandAck(command.to_dict(), False, why))

    def submit(self, command: Command) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        """Let go of the engine (it goes on running where it can)."""


class LocalLink(Link):
    """An engine object in this process: its ``run()`` is this window's to drive."""

    owns_run = True

    def __init__(self, engine: Any, *, resume: bool = False) -> None:
        super().__init__(getattr(engine.run_dir, "path", engine.run_dir))
        self.engine = engine
        self.resume = resume
        engine.subscribe(self._publish)

    @property
    def paused(self) -> bool:
        return bool(getattr(self.engine, "paused", False))

    def submit(self, command: Command) -> None:
        self.engine.submit(command)

    async def run(self) -> None:
        await self.engine.run(resume=self.resume)


class ReplayLink(Link):
    """A run read back from its event log (``genesis-tui open RUN_DIR``)."""

    read_only = True
    mode = "read-only"

    def submit(self, command: Command) -> None:
        self._refuse(command, "this run is open read-only (genesis-tui open)")

    async def run(self) -> None:
        from engine.rundir import RunDir

        run = RunDir.open(self.run_dir)
        for event in run.read_events():
            self._publish(event)
            await asyncio.sleep(0)
        note = baselines_note(run.path)
        if note:
            from engine.events import Log

            self._publish(Log("info", note))


def baselines_note(run_dir: Path) -> str:
    """The run's champion against the compute-matched baselines recorded in its report.json
    (genesis-tui baseline RUN_DIR), on the test split; "" when none was run."""
    import json

    from engine.baseline import ranked_note

    try:
        report = json.loads((Path(run_dir) / "report.json").read_text())
    except (OSError, ValueError):
        return ""
    note = ranked_note(report)
    return f"baselines at this run's compute, test loss: {note}" if note else ""


class SocketLink(Link):
    """An engine in another process, through its control socket.

    ``process``: the engine process this window started (it then owns the run: quitting asks
    whether to stop it or detach); while it starts, connecting is retried until it listens or
    exits (then its log's last lines say why).
    """

    can_detach = True
    mode = "attached"

    def __init__(
        self,
        run_dir: Path | str,
        *,
        process: subprocess.Popen | None = None,
        connect_timeout: float = 180.0,
    ) -> None:
        super().__init__(run_dir)
        self.path = socket_path(self.run_dir)
        self.process = process
        self.owns_run = process is not None
        self.mode = "" if self.owns_run else "attached"
        self.connect_timeout = connect_timeout
        self.hello: dict[str, Any] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._finished = False
        self._detached = False

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def submit(self, command: Command) -> None:
        if self._writer is None or self._writer.is_closing():
            self._refuse(command, "not connected to the engine")
            return
        line = json.dumps({"type": "command", "command": command.to_dict()}) + "\n"
        self._writer.write(line.encode())

    def detach(self) -> None:
        self._detached = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        deadline = time.monotonic() + self.connect_timeout
        last = ""
        while True:
            try:
                return await asyncio.open_unix_connection(os.fspath(self.path), limit=2**24)
            except OSError as exc:
                last = exc.strerror or str(exc)
            if self.process is None:
                self._publish(
                    Disconnected(
                        f"no engine answers on {self.path} ({last}); open the run read-only with "
                        f"genesis-tui open {self.run_dir}, or continue it with "
                        f"genesis-tui --resume {self.run_dir}"
                    )
                )
                return None
            code = self.process.poll()
            if code is not None:
                self._publish(Disconnected(self._exit_reason(code)))
                return None
            if time.monotonic() > deadline:
                self._publish(
                    Disconnected(
                        f"the engine (pid {self.process.pid}) did not open its control socket "
                        f"within {self.connect_timeout:.0f} s; see {self.log_path}"
                    )
                )
                return None
            await asyncio.sleep(0.1)

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / "engine.log"

    def _exit_reason(self, code: int) -> str:
        tail = ""
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            tail = " — " + " ".join(line.strip() for line in lines[-3:])
        return f"the engine process exited (code {code}){tail}; its log: {self.log_path}"

    async def run(self) -> None:
        pair = await self._connect()
        if pair is None:
            return
        reader, self._writer = pair
        try:
            while line := await reader.readline():
                self._receive(line)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._detached or self._finished:
            return
        if self.process is not None:
            # The engine closed the socket; give its process a moment to finish exiting.
            for _ in range(20):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        self._publish(
            Disconnected(
                "the engine closed the connection before the run finished; "
                f"see {self.log_path}; continue it with genesis-tui --resume {self.run_dir}"
            )
        )

    def _receive(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        kind = msg.get("type")
        if kind == "event":
            try:
                event = event_from_dict(msg["event"])
            except (ValueError, TypeError, KeyError):
                return  # an event this version does not know
            if isinstance(event, RunFinished):
                self._finished = True
            self._publish(event)
        elif kind == "hello":
            self.hello = msg
        elif kind == "error":
            self._publish(Log("error", f"engine: {msg.get('message', '')}"))


def spawn_engine(run_dir: Path, *, merge: bool = False) -> subprocess.Popen:
    """Start the run's engine as a headless process of its own, detached from this terminal (its
    own session: a lost SSH connection does not reach it), writing to ``logs/engine.log``."""
    run_dir = Path(run_dir).absolute()
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "genesis_tui.cli", "--resume", str(run_dir), "--headless"]
    if merge:
        cmd.append("--merge")
    with open(logs / "engine.log", "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
