"""The control socket: a running engine's events out and operator commands in, for attached TUIs.

A headless run listens on a Unix-domain stream socket (``control.sock`` in its run directory,
mode 0600) and accepts only peers of its own uid (``SO_PEERCRED``). The protocol is one JSON
object per line:

    server → client  {"type": "hello", "protocol": 1, "pid": …, "run_dir": …, "events": N}
                     {"type": "event", "event": {…}}    the run's history first, then live
                     {"type": "error", "message": "…"}  a line the server could not take
    client → server  {"type": "command", "command": {…}} an ``engine.events.Command`` as a dict

Every command is applied by the engine (``submit``) and acknowledged by a ``CommandAck`` event,
which every attached client receives, so two TUIs always see the same state. A client that
disconnects takes nothing with it: the run goes on. A slow client never slows the engine down:
each has its own bounded queue, and one that falls too far behind is dropped (it can re-attach).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from engine.errors import RunDirError
from engine.events import Command, CommandAck, Event, Log, command_from_dict

PROTOCOL = 1
SOCKET_NAME = "control.sock"
# sun_path holds 108 bytes on Linux (104 on macOS); leave room for the terminating NUL.
MAX_SOCKET_PATH = 100
CLIENT_QUEUE = 200_000  # events a client may lag behind before it is dropped


class Controllable(Protocol):
    """What the server needs of an engine: the Orchestrator (or the UI tests' scripted engine)."""

    def subscribe(self, fn: Callable[[Event], None]) -> None: ...

    def submit(self, command: Command) -> CommandAck: ...

    def publish(self, event: Event) -> None: ...


def socket_path(run_dir: Path) -> Path:
    """Where the control socket of ``run_dir`` lives: in the run directory itself, or — where that
    path is too long for a Unix socket address — in a private per-user directory under the
    system's temporary directory, named after the run directory's absolute path."""
    run_dir = Path(run_dir).absolute()
    inside = run_dir / SOCKET_NAME
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:20]
    # the system's temporary directory, else /tmp when $TMPDIR is itself too deep for an address
    for base in (tempfile.gettempdir(), "/tmp"):
        path = Path(base) / f"genesis-{os.getuid()}" / f"{digest}.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
    raise RunDirError(
        f"no place for the control socket of {run_dir}: the run directory's path is too long for "
        f"a Unix socket address, and so is {path} — set TMPDIR to a short directory (e.g. /tmp)"
    )


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``); None
    where the platform does not say (the socket's 0600 mode is then the only guard)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def engine_listening(path: Path) -> bool:
    """True when something accepts connections on ``path`` (a live engine, not a stale file)."""
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


class _Client:
    def __init__(self, writer: asyncio.StreamWriter, uid: int | None) -> None:
        self.writer = writer
        self.uid = uid
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self.task: asyncio.Task | None = None
        self.dropped = False

    def send(self, data: bytes) -> bool:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        return True

    def finish(self) -> None:
        """Send what is queued, then close; close at once if the queue is full."""
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.dropped = True
            self.writer.close()

    async def pump(self) -> None:
        """Write queued lines until told to stop (None) or the peer goes away."""
        try:
            while (data := await self.queue.get()) is not None and not self.dropped:
                self.writer.write(data)
                if self.queue.empty():
                    await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writer.close()


class ControlServer:
    """Serves one engine on its run directory's control socket (start it before the engine runs,
    so that every event of this session reaches the history that late clients replay)."""

    def __init__(self, engine: Controllable, run_dir: Path, history: list[Event]) -> None:
        self.engine = engine
        self.run_dir = Path(run_dir).absolute()
        self.path = socket_path(self.run_dir)
        # Every event as the encoded line a client is sent: a night's run publishes hundreds of
        # thousands, and bytes take a fifth of the memory of the dicts they come from.
        self.history: list[bytes] = [
            encode({"type": "event", "event": e.to_dict()}) for e in history
        ]
        self.clients: set[_Client] = set()
        self._server: asyncio.AbstractServer | None = None
        self._uid = os.getuid()
        engine.subscribe(self._on_event)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if engine_listening(self.path):
            raise RunDirError(
                f"{self.run_dir}: another engine is already running this run (its control "
                f"socket {self.path} answers); attach to it with: genesis-tui attach {self.run_dir}"
            )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket left by an engine that was killed
        # The socket file is created 0600 from the start (umask), not chmod'ed after bind.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, path=os.fspath(self.path), limit=2**20
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in list(self.clients):
            c.finish()
        tasks = [c.task for c in self.clients if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self.clients.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.path.parent.name.startswith("genesis-"):  # the private directory: gone when empty
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    # --- events out -----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        line = encode({"type": "event", "event": event.to_dict()})
        self.history.append(line)
        for c in list(self.clients):
            if not c.send(line):  # hopelessly behind: drop it rather than hold the engine
                self.clients.discard(c)
                c.finish()

    # --- clients --------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid != self._uid:
            writer.write(
                encode(
                    {
                        "type": "error",
                        "message": f"refused: uid {uid} is not the owner of this run (uid {self._uid})",
                    }
                )
            )
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()
            self.engine.publish(
                Log("warning", f"control socket: refused a connection from uid {uid}")
            )
            return
        client = _Client(writer, uid)
        # Hello and the history are queued in the same step as the client joins the live
        # stream: no event can fall between them (the engine publishes on this thread).
        client.send(
            encode(
                {
                    "type": "hello",
                    "protocol": PROTOCOL,
                    "pid": os.getpid(),
                    "run_dir": str(self.run_dir),
                    "events": len(self.history),
                }
            )
        )
        for line in self.history:
            client.send(line)
        self.clients.add(client)
        client.task = asyncio.ensure_future(client.pump())
        try:
            while line := await reader.readline():
                self._handle(client, line)
        except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if client in self.clients:
                self.clients.discard(client)
                client.finish()

    def _handle(self, client: _Client, line: bytes) -> None:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict) or msg.get("type") != "command":
                raise ValueError(f"expected a command message, got {line[:80]!r}")
            command = command_from_dict(msg.get("command") or {})
        except (ValueError, TypeError) as exc:
            client.send(encode({"type": "error", "message": f"bad message: {exc}"}))
            return
        try:
            self.engine.submit(command)  # acknowledged by a CommandAck event to every client
        except Exception as exc:  # noqa: BLE001 - one failed command must not drop the client
            client.send(encode({"type": "error", "message": f"command failed: {exc!r}"}))
