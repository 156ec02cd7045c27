"""What every worker process does the same way: threads, data loading, the main loop, error capture."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

from engine.errors import GenesisError
from engine.workers.messages import JobFailed, Ready, Shutdown, WorkerFatal


def setup_process(threads: int, log_path: str | None = None) -> None:
    """Pin torch's thread count (the profile decides) and keep library chatter off the UI's terminal.

    With ``log_path``, the process's stdout and stderr (file descriptors 1 and 2, so native
    libraries' output too) go to that file in the run directory: a worker never draws over the
    TUI or the headless progress, and what it printed is still there to read after a failure.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Idle OpenMP threads sleep instead of spinning: with the teacher, a coliseum and the
    # orchestrator sharing a few CPU cores, spinning pools slowed training ~15× (216 vs 3,385
    # tokens/s measured while another process trained). Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if threads > 0:
        torch.set_num_threads(threads)


def test_examples(profile: Any) -> list[Any]:
    """The test split's examples: ``[data] test``, or else the validation file's rows after the
    ``max_val_examples`` that selection scores (empty when there are none)."""
    from engine.data import read_examples

    d = profile.data
    if d.test is not None:
        return read_examples(d.test, d.format, limit=d.max_test_examples)
    if d.max_val_examples is None:
        return []
    rest = read_examples(d.validation, d.format)[d.max_val_examples :]
    return rest[: d.max_test_examples] if d.max_test_examples else rest


def load_split(profile: Any, which: str, tokenizer: Any) -> Any:
    """``which`` ("train", "validation" or "test") tokenized; None for a test split with no rows."""
    from engine.data import read_examples, tokenize

    d = profile.data
    if which == "test":
        examples = test_examples(profile)
        return tokenize(examples, tokenizer, d.max_seq_len) if examples else None
    path, limit = (
        (d.train, d.max_train_examples) if which == "train" else (d.validation, d.max_val_examples)
    )
    return tokenize(read_examples(path, d.format, limit=limit), tokenizer, d.max_seq_len)


def describe(exc: BaseException) -> str:
    if isinstance(exc, GenesisError):
        return exc.message
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def is_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS), a MemoryError, or the CPU allocator's failure."""
    import torch

    text = str(exc).lower()
    return (
        isinstance(exc, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text  # DefaultCPUAllocator
    )


def release_memory() -> None:
    """After an out-of-memory error: drop the failed step's tensors and hand cached blocks back,
    so the retry (with smaller batches) starts from a clean allocator."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def serve(worker: str, tasks: Any, results: Any, setup: Callable[[], Callable[[Any], Any]]) -> None:
    """Run ``setup`` (load models and data; returns the task handler), then answer tasks until Shutdown.

    A failure to start becomes ``WorkerFatal``; a failing task becomes ``JobFailed`` and the worker
    stays up for the next one.
    """
    try:
        handle = setup()
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator, then exit
        results.put(WorkerFatal(worker, describe(exc)))
        return
    while True:
        task = tasks.get()
        if isinstance(task, Shutdown):
            return
        try:
            results.put(handle(task))
        except BaseException as exc:  # noqa: BLE001 - the job fails, the worker lives on
            oom = is_oom(exc)
            reason = describe(exc)
            del exc  # its traceback holds the failed step's tensors
            if oom:
                release_memory()
            results.put(JobFailed(worker, task.job, reason, "oom" if oom else "error"))


class Channel:
    """The worker's end of its message pipe, with a queue's ``put`` (what the workers call)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def put(self, msg: Any) -> None:
        self.conn.send(msg)


def run_worker(
    make: Callable[[str, str, Any, Any, Any], Any],
    worker: str,
    device: str,
    profile: Any,
    threads: int,
    tasks: Any,
    results: Any,
    go: Any,
    log_path: str | None,
    parent_pid: int | None = None,
) -> None:
    """The body of every worker process: bound to the engine (``parent_pid``) so that it dies
    with it, set up, build the worker object with ``make`` (which loads its model), announce it
    as Ready with its ``ready_detail``, then serve tasks."""
    bound = None
    if parent_pid is not None:
        from engine.workers.lifeline import bind_to_parent

        bound = bind_to_parent(parent_pid)
    setup_process(threads, log_path)
    if bound is not None:  # in the worker's log: where the kernel's death signal was refused
        print(f"{worker}: ends with the engine (pid {parent_pid}) by {bound}", flush=True)
    results = Channel(results)

    def setup() -> Callable[[Any], Any]:
        obj = make(worker, device, profile, results, go)
        results.put(Ready(worker, os.getpid(), device, obj.ready_detail))
        return obj.handle

    serve(worker, tasks, results, setup)
