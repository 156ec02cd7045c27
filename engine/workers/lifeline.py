"""Workers die with their engine, whatever kills it; a resumed run finds none left of its last one.

A spawned process does not die with its parent: SIGKILLed (the OOM killer, ``kill -9``), the
engine cannot shut its workers down, and an idle worker — waiting on a task queue whose write end
it holds itself — waits forever, holding its model's memory (a 460 MB teacher was seen 16 minutes
later, beside the second one its resumed run had loaded). Two guards, both set up first thing in
each worker by ``bind_to_parent``:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker when the *thread*
  that spawned it ends — so workers are spawned from the event loop's thread, which outlives the
  pool (a worker spawned from a short-lived thread would be killed when that thread ends);
- a parent watch, a daemon thread that ends the process once its parent is gone (its parent pid
  changed: it was re-parented), for systems without prctl or where the call fails.

multiprocessing's resource tracker, a process the engine starts, has neither: it exits when the
last holder of its pipe closes it, and every spawned worker holds a copy — once the workers are
gone, it goes by itself.

Each worker of a run is also recorded in ``RUN/workers.jsonl`` (pid, start time, command line);
``sweep`` — called when a run is resumed — kills any of them still alive, a pid reused by an
unrelated process since excepted (its start time or command line differ).

Processes the engine does not start itself cannot be bound this way: a private Ray instance's.
For those, ``start_reaper`` starts a small process that remembers the engine's descendants and
kills them once the engine is gone (``reap``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REGISTRY = "workers.jsonl"
WATCH_INTERVAL = 0.5
PR_SET_PDEATHSIG = 1
# psutil's start times of one process agree to the clock tick (10 ms); a reused pid started later.
SAME_START = 0.05


def set_pdeathsig() -> bool:
    """Ask the kernel (Linux) to SIGKILL this process when its parent thread ends; False where
    that cannot be done (another system, no ``prctl`` in libc, the call refused)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_gone(parent_pid: int, parent: Any) -> bool:
    if os.getppid() != parent_pid:  # re-parented (POSIX): the parent has exited
        return True
    try:  # Windows keeps the dead parent's pid: ask whether that very process still runs
        return parent is not None and not parent.is_running()
    except Exception:  # noqa: BLE001 - psutil cannot tell: trust getppid alone
        return False


def _watch(parent_pid: int, parent: Any, exit_code: int) -> None:
    while not _parent_gone(parent_pid, parent):
        time.sleep(WATCH_INTERVAL)
    os._exit(exit_code)


def bind_to_parent(parent_pid: int, *, pdeathsig: bool = True, exit_code: int = 1) -> str:
    """Make this process (a worker) end with ``parent_pid`` (the engine): the kernel's death
    signal where it can (``pdeathsig``), and a watching thread in any case. Ends the process at
    once when the parent is already gone. Returns how it is bound, for the worker's log."""
    bound = pdeathsig and set_pdeathsig()
    try:
        import psutil

        parent = psutil.Process(parent_pid)
    except Exception:  # noqa: BLE001 - gone already (or no psutil): getppid decides
        parent = None
    if _parent_gone(parent_pid, parent):  # it died before the death signal was asked for
        os._exit(exit_code)
    threading.Thread(
        target=_watch,
        args=(parent_pid, parent, exit_code),
        name="genesis-parent-watch",
        daemon=True,
    ).start()
    return "PR_SET_PDEATHSIG and a parent watch" if bound else "a parent watch"


# --- the run's record of its worker processes ----------------------------------------------------


def _identity(pid: int) -> tuple[float, list[str]] | None:
    """(start time, command line) of a live process; None when there is none (or it is a
    zombie: it runs nothing and holds no memory)."""
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = p.cmdline()
            while cmdline and not cmdline[-1]:  # a retitled process (Ray's) pads with blanks
                cmdline.pop()
            return p.create_time(), cmdline
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def record(run_dir: Path | None, name: str, pid: int | None) -> None:
    """Note a worker process of this run in ``RUN/workers.jsonl``: one line, appended (the engine
    and a one-off child may both write; each line is one ``write``)."""
    if run_dir is None or pid is None:
        return
    who = _identity(pid)
    if who is None:  # already gone
        return
    engine = os.getppid() if pid == os.getpid() else os.getpid()  # a child records itself
    line = {
        "name": name,
        "pid": pid,
        "started": who[0],
        "cmdline": who[1],
        "engine": engine,
        "engine_started": (_identity(engine) or (0.0,))[0],
    }
    data = (json.dumps(line) + "\n").encode()
    with contextlib.suppress(OSError):  # a full disk: the run goes on, unswept
        fd = os.open(Path(run_dir) / REGISTRY, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def recorded(run_dir: Path) -> list[dict[str, Any]]:
    """The registry's entries; a line cut short by a kill is skipped."""
    try:
        text = (Path(run_dir) / REGISTRY).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("pid"), int):
            out.append(entry)
    return out


def _same(entry_started: Any, started: float) -> bool:
    try:
        return abs(started - float(entry_started)) <= SAME_START
    except (TypeError, ValueError):
        return False


def _same_program(recorded_cmdline: Any, cmdline: list[str]) -> bool:
    """The same command line — or, for a Ray worker (which retitles itself after each call:
    ``ray::ActorWorker``, ``ray::ActorWorker.handle``), the same actor class."""
    if recorded_cmdline == cmdline:
        return True
    if not (isinstance(recorded_cmdline, list) and recorded_cmdline and cmdline):
        return False

    def actor(c: list[str]) -> str | None:
        title = str(c[0]).split()[0] if str(c[0]).split() else ""
        return title.split(".")[0] if title.startswith("ray::") else None

    return actor(recorded_cmdline) is not None and actor(recorded_cmdline) == actor(cmdline)


def sweep(run_dir: Path, warn: Callable[[str], None]) -> list[int]:
    """Kill every recorded worker of this run still alive (with its own children), ``warn`` once
    for each by name; then start the registry afresh. Left alone: a recorded pid now used by
    another process (another start time or command line), this process or its parent, and a
    worker whose engine still runs (it is no stale one). Returns the pids killed."""
    import psutil

    me = {os.getpid(), os.getppid()}
    stale: list[tuple[dict[str, Any], Any]] = []
    for entry in recorded(run_dir):
        pid = entry["pid"]
        who = _identity(pid)
        if pid in me or who is None:
            continue
        started, cmdline = who
        if not _same(entry.get("started"), started) or not _same_program(
            entry.get("cmdline"), cmdline
        ):
            continue  # the pid was reused by another process since
        engine = entry.get("engine")
        engine_now = _identity(engine) if isinstance(engine, int) else None
        if engine_now is not None and _same(entry.get("engine_started"), engine_now[0]):
            continue  # its engine is alive: a live run's worker, not a stale one
        try:
            stale.append((entry, psutil.Process(pid)))
        except psutil.NoSuchProcess:
            continue
    killed: list[int] = []
    for entry, proc in stale:
        try:
            family = proc.children(recursive=True) + [proc]
        except psutil.NoSuchProcess:
            continue
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        _, alive = psutil.wait_procs(family, timeout=5)
        when = time.strftime("%H:%M:%S", time.localtime(float(entry["started"])))
        what = (
            f"worker {entry.get('name', '?')} (pid {proc.pid}, started {when}) of an earlier "
            f"engine of this run (pid {entry.get('engine', '?')}) was still running, holding its "
            "model's memory; "
        )
        if proc in alive:
            warn(what + f"it could not be killed: stop it yourself (kill -9 {proc.pid})")
        else:
            killed.append(proc.pid)
            warn(what + "it was killed before this run's workers start")
    with contextlib.suppress(OSError):
        (Path(run_dir) / REGISTRY).unlink()
    return killed


# --- the reaper: for processes that are not the engine's to bind (a private Ray instance) ------


def reap(engine_pid: int, interval: float = WATCH_INTERVAL) -> None:
    """The reaper's body: remember every descendant of the engine while it runs; once it is gone
    (its pipe on our stdin at end-of-file, or the process itself gone), kill those still alive.

    Ray starts its own processes: with the engine SIGKILLed, the GCS, the raylet and the actors
    die with it (Ray binds them), but its dashboard and runtime-env agents — the raylet's children
    — each wait 60 s to report the raylet's death to a GCS that is gone before they exit (seen
    with Ray 2.60). multiprocessing's resource tracker is left to exit by itself: it does once its
    last pipe holder is gone, after unlinking what the dead left behind."""
    import select
    import signal

    import psutil

    for sig in (signal.SIGINT, signal.SIGTERM):  # the engine's signals (Ctrl-C) are not ours
        signal.signal(sig, signal.SIG_IGN)
    try:
        engine = psutil.Process(engine_pid)
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    seen: dict[int, Any] = {}
    while True:
        try:
            if engine.status() == psutil.STATUS_ZOMBIE:
                break
            for p in engine.children(recursive=True):
                if p.pid != me and p.pid not in seen:
                    seen[p.pid] = p
        except psutil.NoSuchProcess:
            break
        ready, _, _ = select.select([sys.stdin], [], [], interval)
        if ready and not os.read(sys.stdin.fileno(), 4096):  # end-of-file: the engine is done
            break
    for p in seen.values():
        try:  # psutil checks the start time: a pid reused since is no longer this process
            if "multiprocessing.resource_tracker" not in " ".join(p.cmdline()):
                p.kill()
        except psutil.Error:
            pass


def start_reaper(log_path: Path | None = None) -> Any:
    """Start the reaper for this engine (a small process of its own session: the terminal's
    signals do not reach it); ``stop_reaper`` ends it when the engine closes what it watched.
    None when it could not be started (the engine runs on without it)."""
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        f"from engine.workers.lifeline import reap; reap({os.getpid()})"
    )
    out: Any = subprocess.DEVNULL
    try:
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")  # noqa: SIM115 - the child's copy outlives this block
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return None
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


def stop_reaper(reaper: Any, timeout: float = 5.0) -> None:
    """End-of-file on the reaper's stdin: it kills what is left of what it watched, and exits."""
    import subprocess

    if reaper is None:
        return
    with contextlib.suppress(OSError):
        reaper.stdin.close()
    try:
        reaper.wait(timeout)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def one_off_start(parent_pid: int, run_dir: str | None, name: str) -> None:
    """The initializer of a one-off process pool's child (pruning, the TTS sweep): bound to the
    engine and recorded as a worker of the run like the pool's workers."""
    bind_to_parent(parent_pid)
    record(Path(run_dir) if run_dir else None, name, os.getpid())


def one_off_pool(run_dir: Path | None, name: str) -> Any:
    """A one-process ``ProcessPoolExecutor`` (spawned) whose child dies with this engine. Submit to
    it from the event loop's thread: its child is spawned by the thread that submits."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=one_off_start,
        initargs=(os.getpid(), str(run_dir) if run_dir is not None else None, name),
    )
