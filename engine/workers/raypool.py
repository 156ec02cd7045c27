"""The Ray executor (``[devices] executor = "ray"``): the teacher and the coliseum workers as Ray
actors, on whatever nodes of a Ray cluster have the resources they ask for.

``RayPool`` has ``WorkerPool``'s interface (start, run, pause, count, close) and runs the same
worker classes on the same messages, so the orchestrator cannot tell the two apart; it, the run
directory and the UI stay on this (the head) node. What crosses between nodes crosses as objects
in Ray's object store, never as paths: adapters and online teacher logits ride in the messages
as bytes; the teacher's whole logit cache is put in the store once (``share``) and each node
fetches it once; an export is written by the actor into a private temporary directory and sent
back as files, which the head writes into the run directory.

A lost actor — its process killed, its node gone — fails the job it was running with the same
``WorkerDied`` as a dead local process: the job runs again on the first free actor and the lost
one is replaced (3 times at most), each step in the event log.

Progress messages, which a local worker pushes through its pipe, are buffered in the actor and
collected twice a second while a job runs (the actor is threaded: ``drain`` and ``pause`` run
beside the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.events import Event, Log, TrainProgress, WorkerState
from engine.workers import messages as m
from engine.workers.lifeline import record
from engine.workers.pool import (
    MAX_ATTEMPTS,
    MAX_RESTARTS,
    IdleWorkers,
    JobCancelled,
    JobError,
    PoolBase,
    WorkerStartError,
    describe_task,
    profile_workers,
)

POLL_INTERVAL = 0.5
LOG_CHUNK = 1 << 20  # the most of an actor's printed output one drain carries to the head


class ActorWorker:
    """What runs inside each Ray actor: the engine's worker object (``Coliseum``, ``Teacher``),
    given this object as its message sink (``put``) and a pause event the pool sets."""

    def __init__(
        self,
        factory: Any,
        name: str,
        device: str,
        profile: Any,
        threads: int,
        shipped: dict[str, Any] | None = None,
    ) -> None:
        from engine.workers.common import setup_process

        # What the actor prints (native libraries too: file descriptors 1 and 2) goes to a file on
        # its node, which ``drain`` sends to the head a piece at a time: the head writes it into
        # RUN/logs/<name>.log, where a local worker's output is.
        log_dir = Path(tempfile.gettempdir()) / "genesis-ray-logs"
        log_dir.mkdir(exist_ok=True)
        self.log_path = log_dir / f"{name}-{os.getpid()}.log"
        self._log_offset = 0
        setup_process(threads, str(self.log_path))
        self.name = name
        for role, ref in (shipped or {}).items():
            profile = self._land(profile, role, ref)
        self._lock = threading.Lock()
        self._messages: list[Any] = []
        self.go = threading.Event()
        self.go.set()
        self.obj = factory(name, device, profile, self, self.go)

    def _land(self, profile: Any, role: str, ref: Any) -> Any:
        """Write a model shipped through the object store (the pruned student: it exists only in
        the head's run directory) into this node's temporary directory, once per content, and
        point the profile at it."""
        import hashlib

        import ray

        digest, files = ray.get(ref)
        root = Path(tempfile.gettempdir()) / f"genesis-model-{digest}"
        if not (root / ".complete").exists():
            part = Path(tempfile.mkdtemp(prefix=f".genesis-model-{digest}-"))
            for rel, data in files.items():
                (part / rel).parent.mkdir(parents=True, exist_ok=True)
                (part / rel).write_bytes(data)
            (part / ".complete").write_text(hashlib.sha256(digest.encode()).hexdigest())
            try:
                os.replace(part, root)
            except OSError:  # another actor on this node landed it first
                shutil.rmtree(part, ignore_errors=True)
        spec, key = getattr(profile, role), MODEL_FIELD[role]
        return profile.model_copy(
            update={role: spec.model_copy(update={key: type(getattr(spec, key))(root)})}
        )

    @staticmethod
    def _land_file(data: bytes) -> str:
        """A shared file's bytes written once per content on this node; its path here."""
        import hashlib

        path = (
            Path(tempfile.gettempdir()) / f"genesis-shared-{hashlib.sha256(data).hexdigest()[:16]}"
        )
        if not path.exists():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return str(path)

    # the worker object's results channel
    def put(self, msg: Any) -> None:
        with self._lock:
            self._messages.append(msg)

    def ready(self) -> tuple[int, str, str]:
        """pid, where (host and Ray node: several nodes can share a host), what it loaded."""
        import ray

        node = ray.get_runtime_context().get_node_id()[:8]
        return os.getpid(), f"{socket.gethostname()} (Ray node {node})", self.obj.ready_detail

    def drain(self) -> tuple[list[Any], bytes]:
        """The messages put since the last call, and what the actor printed since then."""
        with self._lock:
            out, self._messages = self._messages, []
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(self._log_offset)
                    printed = f.read(LOG_CHUNK)
            except OSError:
                printed = b""
            self._log_offset += len(printed)
        return out, printed

    def pause(self, paused: bool) -> None:
        (self.go.clear if paused else self.go.set)()

    def last_words(self) -> tuple[list[Any], bytes]:
        """The final drain before the pool kills this actor; its log file on the node goes."""
        out = self.drain()
        with contextlib.suppress(OSError):
            self.log_path.unlink()
        return out

    def handle(self, task: Any) -> Any:
        """Run one task; a failure is a JobFailed (the actor lives on), as in a local worker."""
        import ray

        from engine.workers.common import describe, is_oom, release_memory

        # ObjectRefs inside the task (the shared logit cache) are fetched here, once per node.
        refs = {
            f.name: getattr(task, f.name)
            for f in dataclasses.fields(task)
            if isinstance(getattr(task, f.name), ray.ObjectRef)
        }
        if refs:
            task = dataclasses.replace(
                task, **dict(zip(refs, ray.get(list(refs.values())), strict=True))
            )
        tmp = None
        try:
            if isinstance(task, m.ExportTask):  # into a private directory, sent back as files
                tmp = Path(tempfile.mkdtemp(prefix="genesis-export-"))
                done = self.obj.handle(dataclasses.replace(task, out_dir=str(tmp / "out")))
                files = {
                    str(p.relative_to(tmp / "out")): p.read_bytes()
                    for p in (tmp / "out").rglob("*")
                    if p.is_file()
                }
                return ExportFiles(done, files)
            if isinstance(task, m.TrainTask) and task.answers_blob is not None:
                task = dataclasses.replace(
                    task, answers_path=self._land_file(task.answers_blob), answers_blob=None
                )
            done = self.obj.handle(task)
            if isinstance(done, m.AnswersDone):
                done = dataclasses.replace(done, blob=Path(done.path).read_bytes())
            if isinstance(done, m.LogitsDone) and done.path is not None:
                # The cache file lives on this node: its bytes go to the head, into the store.
                done = dataclasses.replace(done, blob=Path(done.path).read_bytes())
            return done
        except BaseException as exc:  # noqa: BLE001 - the job fails, the actor lives on
            oom = is_oom(exc)
            reason = describe(exc)
            del exc
            if oom:
                release_memory()
            return m.JobFailed(self.name, task.job, reason, "oom" if oom else "error")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class ExportFiles:
    done: m.ExportDone
    files: dict[str, bytes]


@dataclasses.dataclass(eq=False)
class _Actor:
    name: str
    role: str
    device: str  # as the profile names it
    factory: Any
    threads: int
    handle: Any = None
    pid: int | None = None
    node: str = ""
    restarts: int = 0
    gone: bool = False
    job_label: str = ""


def ray_resources(device: str, threads: int) -> dict[str, float]:
    """An actor's demand: a whole GPU for a CUDA device (Ray then shows it only that one, as
    ``cuda:0``), its threads as CPUs otherwise."""
    if device.startswith("cuda"):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": max(1, threads), "num_gpus": 0}


def actor_device(device: str) -> str:
    return "cuda" if device.startswith("cuda") else device


class RayPool(PoolBase):
    def __init__(
        self,
        profile: Any,
        publish: Callable[[Event], None],
        *,
        with_teacher: bool,
        log_dir: Path | None = None,
        specs: list[tuple[str, str, str, Callable[..., Any], int]] | None = None,
    ) -> None:
        self.profile, self.publish = profile, publish
        self.workers = [_Actor(*spec) for spec in specs or profile_workers(profile, with_teacher)]
        self.run_dir = log_dir.parent if log_dir is not None else None
        self._shipped: dict[str, Any] = {}
        self.paused = False
        self._idle: dict[str, IdleWorkers] = {}
        self._started_ray = False
        self._reaper: Any = None  # engine.workers.lifeline's, for a private Ray instance
        self._closing = False
        self._jobs = itertools.count(1)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        import ray

        self._idle = {role: IdleWorkers() for role in self.roles()}
        address = self.profile.devices.ray_address
        demand = [ray_resources(w.device, w.threads) for w in self.workers]
        if not ray.is_initialized():
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
            }
            if address:
                await asyncio.to_thread(ray.init, address=address, **kw)
            else:  # a private instance on this machine, sized for this run's actors
                import torch

                from engine.workers.lifeline import start_reaper

                # Killed with the engine, Ray's own processes mostly die with it (it binds them
                # to the thread that calls ray.init: one of asyncio's executor threads, which
                # live as long as the event loop); the reaper ends those that do not.
                logs = self.run_dir / "logs" if self.run_dir is not None else None
                self._reaper = start_reaper(logs / "reaper.log" if logs is not None else None)
                if self._reaper is None:
                    self.publish(
                        Log(
                            "warning",
                            "the reaper of the private Ray instance could not be started: "
                            "should this engine be killed, Ray's agents outlive it by a minute",
                        )
                    )

                # Logical CPUs enough for every actor (their threads share the real cores, as
                # local workers do); GPUs only those this machine has.
                cpus = max(os.cpu_count() or 1, int(sum(d["num_cpus"] for d in demand)))
                gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
                # address="local": a new instance even where another Ray cluster runs on this
                # machine (without it ray.init joins the newest one it finds, and refuses the
                # num_cpus it is given: "When connecting to an existing cluster, num_cpus and
                # num_gpus must not be provided" — seen with a test's cluster beside a run)
                await asyncio.to_thread(
                    ray.init, address="local", num_cpus=cpus, num_gpus=gpus, **kw
                )
            self._started_ray = True
        self._check_capacity(ray.cluster_resources(), demand, address)
        self._shipped = await asyncio.to_thread(self._ship_models)
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    def _ship_models(self) -> dict[str, Any]:
        """Models that exist only in this run's directory (the pruned student) go to the other
        nodes through the object store; models the profile names are on every node already."""
        import hashlib

        import ray

        out = {}
        for role, key in MODEL_FIELD.items():
            spec = getattr(self.profile, role, None)
            if spec is None or getattr(spec, key) is None or self.run_dir is None:
                continue
            path = Path(getattr(spec, key)).expanduser()
            if not (path.is_dir() and path.resolve().is_relative_to(self.run_dir.resolve())):
                continue
            files = {
                str(p.relative_to(path)): p.read_bytes()
                for p in sorted(path.rglob("*"))
                if p.is_file()
            }
            h = hashlib.sha256()
            for rel, data in files.items():
                h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            out[role] = ray.put((h.hexdigest()[:16], files))
        return out

    def _check_capacity(
        self, offered: dict[str, float], demand: list[dict[str, float]], address: str
    ) -> None:
        where_asked = (
            "[tts] devices" if self.profile.tts is not None else "[devices] teacher and coliseum"
        )
        need_gpus = sum(d["num_gpus"] for d in demand)
        need_cpus = sum(d["num_cpus"] for d in demand)
        have_gpus, have_cpus = offered.get("GPU", 0.0), offered.get("CPU", 0.0)
        if need_gpus > have_gpus or need_cpus > have_cpus:
            where = f"the Ray cluster at {address!r}" if address else "the local Ray instance"
            raise WorkerStartError(
                f"{where} cannot place this run's actors: they ask for {need_gpus:g} GPU(s) and "
                f"{need_cpus:g} CPU(s) ({where_asked}, threads_per_worker), the "
                f"cluster offers {have_gpus:g} GPU(s) and {have_cpus:g} CPU(s) — add nodes "
                "(ray start --address …) or ask for fewer workers"
            )

    async def _spawn(self, w: _Actor) -> None:
        import ray

        cls = ray.remote(max_concurrency=4, **ray_resources(w.device, w.threads))(ActorWorker)
        shipped = {r: ref for r, ref in self._shipped.items() if r == _model_role(w.role)}
        w.handle = cls.remote(
            w.factory, w.name, actor_device(w.device), self.profile, w.threads, shipped
        )
        self.publish(WorkerState(w.name, w.role, w.device, "starting", None, "Ray actor"))
        try:
            pid, node, detail = await w.handle.ready.remote()
        except Exception as exc:  # noqa: BLE001 - the actor's constructor raised: why, in full
            w.gone = True
            reason = _actor_error(exc)
            self.publish(WorkerState(w.name, w.role, w.device, "dead", None, reason))
            raise WorkerStartError(
                f"the {w.name} Ray actor ({w.device}) could not start: {reason}"
            ) from None
        w.pid, w.node = pid, node
        if node.split(" ")[0] == socket.gethostname():  # on this machine: for a resume to find
            record(self.run_dir, w.name, pid)
        self._write_log(
            w, f"--- Ray actor {w.name}, pid {pid} on {node} ({w.device}) ---\n".encode()
        )
        await self._drain(w)  # what it printed while loading its model
        if self.paused:
            w.handle.pause.remote(True)
        self.publish(WorkerState(w.name, w.role, w.device, "ready", pid, f"{detail} on {node}"))
        self._idle[w.role].put_nowait(w)

    async def close(self) -> None:
        import ray

        self._closing = True
        live = [w for w in self.workers if w.handle is not None and not w.gone]
        with contextlib.suppress(Exception):  # the last of what each live actor printed
            await asyncio.wait_for(asyncio.gather(*(self._drain(w, last=True) for w in live)), 5)
        for w in self.workers:
            if w.handle is not None:
                with contextlib.suppress(Exception):
                    ray.kill(w.handle, no_restart=True)
                self.publish(WorkerState(w.name, w.role, w.device, "stopped", w.pid))
        if self._started_ray:
            await asyncio.to_thread(ray.shutdown)
        if self._reaper is not None:
            from engine.workers.lifeline import stop_reaper

            await asyncio.to_thread(stop_reaper, self._reaper)
            self._reaper = None

    def pause(self, paused: bool) -> None:
        self.paused = paused
        if self._closing:  # the actors are gone or going; a replacement starts unpaused anyway
            return
        for w in self.workers:
            if w.handle is not None and not w.gone:
                # A lost actor cannot take the call; its replacement is told at its start.
                with contextlib.suppress(Exception):
                    w.handle.pause.remote(paused)

    def share(self, blob: bytes) -> Any:
        """Put a payload every actor reads (the teacher's logit cache) in the object store once."""
        import ray

        return ray.put(blob)

    def _log_path(self, w: _Actor) -> Path | None:
        return self.run_dir / "logs" / f"{w.name}.log" if self.run_dir is not None else None

    def _write_log(self, w: _Actor, data: bytes) -> None:
        """Append what an actor printed to RUN/logs/<name>.log (the head's copy of it)."""
        path = self._log_path(w)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(data)
        except OSError as exc:  # a full disk: the run's own checkpoint write reports it
            self.publish(Log("warning", f"could not write {path}: {exc}"))

    # --- jobs -----------------------------------------------------------------------------------

    async def _poll(self, w: _Actor) -> None:
        """Collect a running job's progress messages and publish them, as a local pipe would."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self._drain(w)

    async def _drain(self, w: _Actor, last: bool = False) -> None:
        try:
            call = w.handle.last_words if last else w.handle.drain
            messages, printed = await call.remote()
        except Exception:  # noqa: BLE001 - the actor is gone; run() handles that
            return
        if printed:
            self._write_log(w, printed)
        for msg in messages:
            if isinstance(msg, m.Progress):
                self.publish(TrainProgress(msg.id, msg.step, msg.steps, msg.loss, dict(msg.terms)))

    async def run(
        self,
        role: str,
        make_task: Callable[[int], Any],
        still_wanted: Callable[[], bool] = lambda: True,
        *,
        urgent: bool = False,
    ) -> Any:
        """Run one job on a free actor of ``role``; a job lost with its actor runs again elsewhere.
        An ``urgent`` job takes the first actor that comes free, ahead of the jobs waiting."""
        from ray.exceptions import RayActorError

        last: Exception | None = None
        for _ in range(MAX_ATTEMPTS):
            w = await self._idle[role].get(urgent)
            if isinstance(w, Exception):
                self._idle[role].put_nowait(w)
                raise w
            if w.gone:
                continue
            if not still_wanted():
                self._idle[role].put_nowait(w)
                raise JobCancelled()
            task = make_task(next(self._jobs))
            w.job_label = describe_task(task)
            self.publish(WorkerState(w.name, w.role, w.device, "busy", w.pid))
            poller = asyncio.create_task(self._poll(w))
            try:
                result = await w.handle.handle.remote(task)
            except RayActorError as exc:
                last = exc
                poller.cancel()
                await self._on_lost(w, exc)
                continue
            poller.cancel()
            await self._drain(w)  # the last progress before the result
            self.publish(WorkerState(w.name, w.role, w.device, "idle", w.pid))
            self._idle[role].put_nowait(w)
            if isinstance(result, m.JobFailed):
                raise JobError(result.reason, result.kind, result.worker)
            if isinstance(result, ExportFiles):
                return await asyncio.to_thread(_write_export, result, task.out_dir)
            return result
        raise JobError(f"the job was lost {MAX_ATTEMPTS} times with its Ray actor ({last})")

    async def _on_lost(self, w: _Actor, exc: Exception) -> None:
        reason = _actor_error(exc)
        self.publish(WorkerState(w.name, w.role, w.device, "dead", w.pid, reason))
        again = w.restarts < MAX_RESTARTS and not self._closing
        self.publish(
            Log(
                "warning" if again else "error",
                f"Ray actor {w.name} (pid {w.pid} on {w.node}, {w.device}) was lost while "
                f"{w.job_label}: {reason}"
                + (
                    f"; replacing it (restart {w.restarts + 1} of {MAX_RESTARTS}); its job runs "
                    "again on the first free actor"
                    if again
                    else ""
                ),
            )
        )
        if again:
            w.restarts += 1
            try:
                await self._spawn(w)
                return
            except WorkerStartError as err:
                self.publish(Log("error", err.message))
        w.gone = True
        if self.count(w.role) == 0:
            err = WorkerStartError(f"every {w.role} Ray actor is gone (last: {w.name}: {reason})")
            for _ in range(8):
                self._idle[w.role].put_nowait(err)


# The profile section of each model a worker may hold, and its field naming the model's directory.
MODEL_FIELD = {"student": "model", "teacher": "model", "tts": "assets"}


def _model_role(worker_role: str) -> str:
    """The profile section of the model a worker holds: the style coliseum's is [tts]."""
    return {"teacher": "teacher", "style": "tts"}.get(worker_role, "student")


def _actor_error(exc: BaseException) -> str:
    """A Ray error in one line (its message runs to a page of context)."""
    text = str(exc).strip().splitlines()
    cause = getattr(exc, "cause", None)
    if cause is not None and str(cause).strip():
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _write_export(result: ExportFiles, out_dir: str) -> m.ExportDone:
    """Write an actor's export into the run directory whole (temporary directory, then rename).
    Its mergekit recipe names no path of the actor's node: the adapter is ``.``, the base as the
    head named it (``ExportTask.base_ref``)."""
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel, data in result.files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        old = out.parent / f".{out.name}.old"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    merged = str(out / "merged") if result.done.merged else None
    return dataclasses.replace(result.done, path=str(out), merged=merged)
