"""The worker pool: spawns the teacher and coliseum processes and turns their messages into awaitables.

The orchestrator awaits ``pool.run(role, make_task)``; it never blocks on a queue. One reader
thread moves worker messages onto the event loop; a monitor notices a dead process within half a
second, fails its job (which is retried on a live worker) and restarts it.

Each worker process has channels of its own — a pipe for its messages, a queue for its tasks, an
event for the engine's pause — made anew when it is restarted. A process killed (SIGKILL, the OOM
killer) while it held the lock of a channel shared with the others would leave that lock taken
forever and hang every other worker; a channel of its own dies with it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import GenesisError
from engine.events import Event, Log, WorkerState
from engine.workers import messages as m
from engine.workers.common import run_worker
from engine.workers.lifeline import record

MAX_RESTARTS = 3
MAX_ATTEMPTS = 3
MONITOR_INTERVAL = 0.5


class WorkerDied(Exception):
    """The process running a job exited before answering."""


class JobError(Exception):
    """The job failed in its worker (``kind`` "oom" for an out-of-memory error); the worker lives."""

    def __init__(self, reason: str, kind: str = "error", worker: str = "") -> None:
        super().__init__(reason)
        self.reason, self.kind, self.worker = reason, kind, worker


class JobCancelled(Exception):
    """The job was no longer wanted when a worker became free (paused, culled, or the run stopping)."""


class WorkerStartError(GenesisError):
    """A worker could not load its model or data."""


class WorkerDoubleBooked(RuntimeError):
    """A worker was about to be handed a job while it still held one: a bug in the pool's
    bookkeeping, raised rather than leaving the first job's future unresolved forever."""


@dataclass(eq=False)
class _Worker:
    name: str
    role: str
    device: str
    factory: Callable[..., Any]  # the worker class the process builds (Coliseum or Teacher)
    threads: int
    process: Any = None
    tasks: Any = None
    conn: Any = None  # the read end of this incarnation's message pipe
    go: Any = None  # this incarnation's pause event (set: work; cleared: hold)
    ready: asyncio.Future | None = None
    incarnation: int = 0
    restarts: int = 0
    job: int | None = None
    job_label: str = ""  # what the job in flight is, for the log when the worker dies under it
    gone: bool = False
    seen_dead: bool = False
    jobs_done: int = field(default=0)


def _loaded(w: _Worker) -> bool:
    """Its current process has said Ready (a restarted one has not, until it loads again)."""
    return (
        w.ready is not None
        and w.ready.done()
        and not w.ready.cancelled()
        and w.ready.exception() is None
    )


def exit_reason(code: int | None) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` (multiprocessing's negative exit codes)."""
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def describe_task(task: Any) -> str:
    """A job in words: ``training g1-004``, ``evaluating 4 individuals``, ``teacher logits``."""
    name = type(task).__name__
    if name == "TrainTask":
        return f"training {task.id}"
    if name == "EvalTask":
        return f"evaluating {len(task.items)} individual(s)"
    if name == "ExportTask":
        return f"exporting {task.id}"
    words = name.removesuffix("Task")
    return "running " + "".join(" " + c.lower() if c.isupper() else c for c in words).strip()


def profile_workers(
    profile: Any, with_teacher: bool
) -> list[tuple[str, str, str, Callable[..., Any], int]]:
    """(name, role, device, worker class, threads) of the LLM track's workers: the teacher (when
    there is one) and one coliseum per ``[devices] coliseum`` entry — for either executor."""
    from engine.workers.coliseum import Coliseum
    from engine.workers.teacher import Teacher

    specs: list[tuple[str, str, str, Callable[..., Any], int]] = []
    if with_teacher:
        dev = profile.devices.teacher
        specs.append(("teacher", "teacher", dev, Teacher, auto_threads(profile, dev, "teacher")))
    for i, dev in enumerate(profile.devices.coliseum):
        specs.append(
            (f"coliseum-{i}", "coliseum", dev, Coliseum, auto_threads(profile, dev, "coliseum"))
        )
    return specs


def auto_threads(profile: Any, device: str, role: str) -> int:
    """Threads for one worker: the profile's setting, else the CPU cores shared by the CPU coliseums."""
    if profile.devices.threads_per_worker:
        return profile.devices.threads_per_worker
    if device != "cpu":
        return 1
    cores = os.cpu_count() or 1
    cpu_coliseums = sum(1 for d in profile.devices.coliseum if d == "cpu")
    return cores if role == "teacher" else max(1, cores // max(1, cpu_coliseums))


class IdleWorkers:
    """The free workers of one role, and the jobs waiting for one.

    A free worker goes to the longest-waiting *urgent* job first (an operator's export), then to
    the longest-waiting ordinary one: an urgent job waits for the job in flight on a worker, never
    for the trainings queued behind it. An exception put here (every worker of the role is gone)
    wakes waiters the same way a worker does."""

    def __init__(self) -> None:
        self._free: collections.deque[Any] = collections.deque()
        self._waiting: dict[bool, collections.deque[asyncio.Future]] = {
            True: collections.deque(),
            False: collections.deque(),
        }

    def put_nowait(self, item: Any) -> None:
        for urgent in (True, False):
            waiters = self._waiting[urgent]
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(item)
                    return
        self._free.append(item)

    def discard(self, item: Any) -> None:
        """Take ``item`` out of the free ones (a worker that died while free)."""
        while item in self._free:
            self._free.remove(item)

    def waiting(self, urgent: bool | None = None) -> int:
        """Jobs waiting for a worker (``urgent`` only, ordinary only, or all)."""
        kinds = (True, False) if urgent is None else (urgent,)
        return sum(1 for k in kinds for f in self._waiting[k] if not f.done())

    async def get(self, urgent: bool = False) -> Any:
        if self._free:
            return self._free.popleft()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[urgent].append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a worker as it was cancelled
                self.put_nowait(fut.result())
            raise


class PoolBase:
    """What every executor's pool shares: its workers (each with a ``role`` and ``gone``)."""

    workers: list[Any]

    def roles(self) -> set[str]:
        return {w.role for w in self.workers}

    def count(self, role: str) -> int:
        """Workers of ``role`` still in service."""
        return sum(1 for w in self.workers if w.role == role and not w.gone)


class WorkerPool(PoolBase):
    def __init__(
        self,
        profile: Any,
        publish: Callable[[Event], None],
        *,
        with_teacher: bool,
        log_dir: Path | None = None,
        specs: list[tuple[str, str, str, Callable[..., Any], int]] | None = None,
    ) -> None:
        """``specs`` (name, role, device, worker class, threads) replaces the profile's teacher and
        coliseum workers: the TTS track's style coliseums are declared that way."""
        import torch.multiprocessing as tmp

        self.profile, self.publish = profile, publish
        self.log_dir = log_dir
        self.run_dir = log_dir.parent if log_dir is not None else None  # its workers.jsonl
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = tmp.get_context("spawn")
        self.paused = False
        self._conns: list[tuple[Any, _Worker]] = []  # replaced (never mutated) on each spawn
        self.workers: list[_Worker] = [_Worker(*spec) for spec in specs or ()]
        if specs is None:
            self._profile_workers(profile, with_teacher)
        self._futures: dict[int, asyncio.Future] = {}
        self._idle: dict[str, IdleWorkers] = {}
        self._jobs = itertools.count(1)
        self._closing = False
        self._reader: threading.Thread | None = None
        self._monitor: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _profile_workers(self, profile: Any, with_teacher: bool) -> None:
        self.workers.extend(_Worker(*spec) for spec in profile_workers(profile, with_teacher))

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker and wait until each has loaded its model (or one fails to)."""
        self._loop = asyncio.get_running_loop()
        self._idle = {role: IdleWorkers() for role in self.roles()}
        self._reader = threading.Thread(
            target=self._read_results, name="genesis-results", daemon=True
        )
        self._reader.start()
        for w in self.workers:
            self._spawn(w)
        self._monitor = asyncio.create_task(self._watch())
        await asyncio.gather(*(w.ready for w in self.workers))

    def _spawn(self, w: _Worker) -> None:
        # Called on the event loop's thread only (start, the monitor): a worker's death signal
        # (PR_SET_PDEATHSIG) fires when the thread that spawned it ends, and that thread outlives
        # the pool.
        assert self._loop is not None
        w.incarnation += 1
        w.tasks = self.ctx.Queue()
        w.go = self.ctx.Event()
        if not self.paused:
            w.go.set()
        reader, writer = self.ctx.Pipe(duplex=False)
        w.ready = self._loop.create_future()
        process = self.ctx.Process(
            target=run_worker,
            args=(
                w.factory,
                w.name,
                w.device,
                self.profile,
                w.threads,
                w.tasks,
                writer,
                w.go,
                self._log_path(w),
                os.getpid(),  # the worker dies with this process (engine.workers.lifeline)
            ),
            name=f"genesis-{w.name}",
            daemon=True,
        )
        try:
            process.start()  # may raise (no spawn possible): w.process stays the last one started
        finally:
            writer.close()  # the child holds the only write end: its death reads as end-of-file
        w.process = process
        w.conn = reader
        record(self.run_dir, w.name, process.pid)  # for a resume to find, should we be killed
        self._conns = [(c, x) for c, x in self._conns if x is not w] + [(reader, w)]
        self.publish(
            WorkerState(w.name, w.role, w.device, "starting", w.process.pid, f"{w.threads} threads")
        )

    def _log_path(self, w: _Worker) -> str | None:
        return str(self.log_dir / f"{w.name}.log") if self.log_dir is not None else None

    async def close(self) -> None:
        self._closing = True
        for w in self.workers:
            if w.go is not None:
                w.go.set()
        if self._monitor:
            self._monitor.cancel()
        for w in self.workers:
            if w.process is not None and w.process.is_alive():
                try:
                    w.tasks.put(m.Shutdown())
                except (OSError, ValueError):
                    pass
        for w in self.workers:
            if w.process is None or w.process.pid is None:  # never started
                continue
            await asyncio.to_thread(w.process.join, 10)
            if w.process.is_alive():
                w.process.kill()
                await asyncio.to_thread(w.process.join, 5)
            self.publish(WorkerState(w.name, w.role, w.device, "stopped", w.process.pid))
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(WorkerDied("the pool was closed"))
        if self._reader:
            self._reader.join(timeout=2)
        for w in self.workers:
            if w.conn is not None:
                w.conn.close()

    def share(self, blob: bytes) -> bytes:
        """A payload every worker reads (the Ray executor puts it in its object store once; here
        the bytes go with each task)."""
        return blob

    def pause(self, paused: bool) -> None:
        """Hold (or release) every worker at its next step; a held worker does no work."""
        self.paused = paused
        for w in self.workers:
            if w.go is not None:
                (w.go.clear if paused else w.go.set)()

    # --- messages -------------------------------------------------------------------------------

    def _read_results(self) -> None:
        """Wait on every worker's pipe at once; a pipe at end-of-file (its process died, or was
        replaced) is dropped — the monitor handles the death itself."""
        from multiprocessing.connection import wait

        closed: set[int] = set()
        while not self._closing:
            conns = {id(c): c for c, _ in self._conns if id(c) not in closed}
            if not conns:
                threading.Event().wait(0.1)
                continue
            try:
                ready = wait(list(conns.values()), timeout=0.2)
            except (OSError, ValueError):  # a pipe closed under us: look again
                closed.update(k for k, c in conns.items() if c.closed)
                continue
            for conn in ready:
                try:
                    msg = conn.recv()
                except Exception:  # noqa: BLE001 - EOF or a message cut short by a kill
                    closed.add(id(conn))
                    continue
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(self._dispatch, msg)

    def _worker(self, name: str) -> _Worker:
        return next(w for w in self.workers if w.name == name)

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, m.Ready):
            w = self._worker(msg.worker)
            if w.ready is None or w.ready.done() or msg.pid != w.process.pid:
                return  # from a process since replaced, or said twice: it frees no worker
            w.ready.set_result(msg)
            self.publish(WorkerState(w.name, w.role, w.device, "ready", msg.pid, msg.detail))
            self._idle[w.role].put_nowait(w)  # a (re)started worker takes jobs from here on
        elif isinstance(msg, m.WorkerFatal):
            w = self._worker(msg.worker)
            w.gone = True
            self.publish(WorkerState(w.name, w.role, w.device, "dead", None, msg.reason))
            err = WorkerStartError(
                f"the {w.name} worker on {w.device} could not start: {msg.reason}"
            )
            if w.ready is not None and not w.ready.done():
                w.ready.set_exception(err)
            self._check_role(w.role, err)
        elif isinstance(msg, m.Progress):
            from engine.events import TrainProgress

            self.publish(TrainProgress(msg.id, msg.step, msg.steps, msg.loss, dict(msg.terms)))
        else:
            job = getattr(msg, "job", -1)
            fut = self._futures.pop(job, None)
            if fut is None or fut.done():
                # Nobody awaits this answer (its run() was cancelled): the worker that held the
                # job is free only now, not when the job was given up.
                holder = next((w for w in self.workers if w.job is not None and w.job == job), None)
                if holder is not None:
                    self._release(holder)
                return
            if isinstance(msg, m.JobFailed):
                fut.set_exception(JobError(msg.reason, msg.kind, msg.worker))
            else:
                fut.set_result(msg)

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(MONITOR_INTERVAL)
            for w in self.workers:
                if w.gone or w.process is None or w.process.is_alive() or self._closing:
                    w.seen_dead = False
                    continue
                if not w.seen_dead:
                    # Its last message (a WorkerFatal with the reason, a result) may still be on
                    # its way through the reader thread: judge the death on the next tick.
                    w.seen_dead = True
                    continue
                self._on_death(w)

    def _on_death(self, w: _Worker) -> None:
        code = w.process.exitcode
        # Free when it died, it is free no longer: the process that replaces it enters the free
        # ones on its Ready, not before (a job sent now would wait behind its loading, and a second
        # one sent on the Ready would make the pool forget the first).
        self._idle[w.role].discard(w)
        # Its task queue has no reader now: a task still in the feeder thread would block that
        # thread, and the exit of this process with it, forever.
        w.tasks.cancel_join_thread()
        w.tasks.close()
        self.publish(
            WorkerState(w.name, w.role, w.device, "dead", w.process.pid, f"exit code {code}")
        )
        doing = f" while {w.job_label}" if w.job is not None else " while idle"
        if w.ready is not None and not w.ready.done():
            doing = " while starting"
        will_restart = (
            not (w.ready is not None and not w.ready.done()) and w.restarts < MAX_RESTARTS
        )
        then = (
            f"; restarting it (restart {w.restarts + 1} of {MAX_RESTARTS})"
            + ("; its job runs again on the first free worker" if w.job is not None else "")
            if will_restart
            else ""
        )
        self.publish(
            Log(
                "warning" if will_restart else "error",
                f"worker {w.name} (pid {w.process.pid}, {w.device}) died{doing}: {exit_reason(code)}{then}",
            )
        )
        if w.job is not None:
            fut = self._futures.pop(w.job, None)
            if fut is not None and not fut.done():
                fut.set_exception(WorkerDied(f"{w.name} exited with code {code}"))
            w.job = None
        if w.ready is not None and not w.ready.done():
            log = f"; its output is in {self._log_path(w)}" if self.log_dir is not None else ""
            w.ready.set_exception(
                WorkerStartError(
                    f"the {w.name} worker on {w.device} could not start: it exited with code {code}{log}"
                )
            )
            w.gone = True
        elif w.restarts < MAX_RESTARTS:
            w.restarts += 1
            self._spawn(w)
            return
        else:
            w.gone = True
        self._check_role(
            w.role,
            WorkerStartError(f"every {w.role} worker is gone (last: {w.name}, exit code {code})"),
        )

    def _check_role(self, role: str, err: Exception) -> None:
        if self.count(role) == 0:
            for _ in range(8):
                self._idle[role].put_nowait(err)  # wakes whoever waits for a worker of this role

    # --- jobs -----------------------------------------------------------------------------------

    async def run(
        self,
        role: str,
        make_task: Callable[[int], Any],
        still_wanted: Callable[[], bool] = lambda: True,
        *,
        urgent: bool = False,
    ) -> Any:
        """Run one job on a free worker of ``role``; a job lost to a dead worker is retried elsewhere.

        ``still_wanted`` is asked again once a worker is free: a job queued behind others may have
        been paused, culled or stopped meanwhile, and then raises ``JobCancelled`` instead of running.
        An ``urgent`` job (an operator's export) takes the first worker that comes free, ahead of
        the ordinary jobs already waiting.
        """
        last: Exception | None = None
        for _ in range(MAX_ATTEMPTS):
            w = await self._take(role, urgent)
            if not still_wanted():
                self._idle[role].put_nowait(w)
                raise JobCancelled()
            job = next(self._jobs)
            assert self._loop is not None
            fut = self._loop.create_future()
            self._futures[job] = fut
            w.job, inc = job, w.incarnation
            task = make_task(job)
            w.job_label = describe_task(task)
            self.publish(WorkerState(w.name, w.role, w.device, "busy", w.process.pid))
            w.tasks.put(task)
            try:
                return await fut
            except WorkerDied as exc:
                last = exc
                continue
            finally:
                # Given up (cancelled) while the worker still runs it, the job keeps the worker
                # until its answer comes (_dispatch frees it then).
                if w.incarnation == inc and w.job == job and not fut.cancelled():
                    self._release(w)
        raise JobError(f"the job was lost {MAX_ATTEMPTS} times to dying workers ({last})")

    async def _take(self, role: str, urgent: bool) -> _Worker:
        """The next free worker of ``role`` that can take a job now: loaded (its Ready came),
        alive, and holding no job. One that died after it was freed is passed over: its restart
        frees it again on its Ready."""
        while True:
            w = await self._idle[role].get(urgent)
            if isinstance(w, Exception):
                self._idle[role].put_nowait(w)
                raise w
            if w.gone or not _loaded(w) or not w.process.is_alive():
                continue
            if w.job is not None:
                raise WorkerDoubleBooked(
                    f"the pool was about to give {w.name} (pid {w.process.pid}) a second job "
                    f"while it runs job {w.job} ({w.job_label})"
                )
            return w

    def _release(self, w: _Worker) -> None:
        """``w`` has finished its job: it takes the next one (unless it died meanwhile: then the
        monitor restarts it, and the new process is freed on its Ready)."""
        if w.gone or not w.process.is_alive():
            return
        w.job = None
        w.jobs_done += 1
        self.publish(WorkerState(w.name, w.role, w.device, "idle", w.process.pid))
        self._idle[w.role].put_nowait(w)


def make_pool(profile: Any, publish: Callable[[Event], None], **kw: Any) -> Any:
    """The pool ``[devices] executor`` names: local processes, or Ray actors."""
    if profile.devices.executor == "ray":
        from engine.workers.raypool import RayPool

        return RayPool(profile, publish, **kw)
    return WorkerPool(profile, publish, **kw)
