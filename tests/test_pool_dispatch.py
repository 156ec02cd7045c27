"""Which waiting job a freed worker takes: the pools' dispatch, without worker processes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from engine.events import WorkerState
from engine.workers import messages as m
from engine.workers.pool import IdleWorkers, WorkerDoubleBooked, WorkerPool, _Worker


class Job:
    def __init__(self, name: str, job: int) -> None:
        self.name, self.job = name, job


async def spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_freed_worker_goes_to_the_urgent_waiter_first():
    idle = IdleWorkers()
    order: list[str] = []

    async def take(name: str, urgent: bool = False) -> None:
        await idle.get(urgent)
        order.append(name)

    waiters = [asyncio.create_task(take(n)) for n in ("train-1", "train-2")]
    await spin()
    waiters.append(asyncio.create_task(take("export", urgent=True)))
    await spin()
    assert idle.waiting() == 3 and idle.waiting(urgent=True) == 1
    for _ in range(3):
        idle.put_nowait(object())
        await spin()
    assert order == ["export", "train-1", "train-2"]
    await asyncio.gather(*waiters)


async def test_a_waiter_cancelled_as_it_was_handed_a_worker_hands_it_on():
    idle = IdleWorkers()
    first = asyncio.create_task(idle.get())
    second = asyncio.create_task(idle.get())
    await spin()
    worker = object()
    idle.put_nowait(worker)  # resolves first's future…
    first.cancel()  # …which is cancelled before it runs
    assert await second is worker


def _tasks(sent: list[Job]) -> SimpleNamespace:
    """A stub process's task queue: what is put on it is recorded."""
    return SimpleNamespace(put=sent.append, cancel_join_thread=lambda: None, close=lambda: None)


def _stub_pool() -> tuple[WorkerPool, list[Job]]:
    """A WorkerPool with one coliseum whose process is a stub: tasks put on it are recorded."""
    pool = WorkerPool(None, lambda e: None, with_teacher=False, specs=[])
    pool._loop = asyncio.get_running_loop()
    pool._idle = {"coliseum": IdleWorkers()}
    sent: list[Job] = []
    w = _Worker("coliseum-0", "coliseum", "cpu", None, 1)
    w.process = SimpleNamespace(is_alive=lambda: True, pid=4242)
    w.tasks = _tasks(sent)
    w.ready = pool._loop.create_future()
    w.ready.set_result(None)  # loaded
    pool.workers.append(w)
    pool._idle["coliseum"].put_nowait(w)
    return pool, sent


async def test_an_export_runs_right_after_the_job_in_flight_not_after_the_queue():
    pool, sent = _stub_pool()
    jobs = [
        asyncio.create_task(pool.run("coliseum", lambda j, n=n: Job(n, j)))
        for n in ("train-a", "train-b", "train-c")
    ]
    await spin()
    assert [t.name for t in sent] == ["train-a"]  # in flight; b and c wait
    export = asyncio.create_task(pool.run("coliseum", lambda j: Job("export", j), urgent=True))
    await spin()
    for _ in range(4):
        pool._dispatch(SimpleNamespace(job=sent[-1].job))  # the job in flight ends
        await spin()
    assert [t.name for t in sent] == ["train-a", "export", "train-b", "train-c"]
    await asyncio.gather(*jobs, export)


async def test_a_worker_that_died_while_free_gets_no_job_before_its_new_process_is_ready():
    # The chaos benchmark's hang: a coliseum killed while idle stayed among the free workers, so
    # its restarted (still loading) process was sent a job at once and a second one on its Ready;
    # the pool remembered only the second, and when the worker died again the first never ended.
    pool, sent = _stub_pool()
    seen: list = []
    pool.publish = seen.append
    w = pool.workers[0]

    def spawn(w: _Worker) -> None:  # the monitor's restart: a new process, loading its model
        w.incarnation += 1
        w.process = SimpleNamespace(is_alive=lambda: True, pid=w.process.pid + 1, exitcode=None)
        w.tasks = _tasks(sent)
        w.ready = pool._loop.create_future()
        pool.publish(WorkerState(w.name, w.role, w.device, "starting", w.process.pid))

    pool._spawn = spawn
    w.process = SimpleNamespace(is_alive=lambda: False, pid=4242, exitcode=-9)  # SIGKILLed, free
    pool._on_death(w)
    assert w.process.pid == 4243 and w.restarts == 1
    jobs = [asyncio.create_task(pool.run("coliseum", lambda j, n=n: Job(n, j))) for n in ("a", "b")]
    await spin()
    assert sent == []  # both wait while it loads
    pool._dispatch(m.Ready("coliseum-0", 4242, "cpu"))  # the dead process's: frees nothing
    await spin()
    assert sent == []
    pool._dispatch(m.Ready("coliseum-0", 4243, "cpu"))
    await spin()
    assert [t.name for t in sent] == ["a"]  # one job at a time
    for _ in range(2):
        pool._dispatch(SimpleNamespace(job=sent[-1].job))
        await spin()
    assert [t.name for t in sent] == ["a", "b"]
    await asyncio.gather(*jobs)
    states = [(e.state, e.pid) for e in seen if isinstance(e, WorkerState)]
    assert states == [
        ("dead", 4242),
        ("starting", 4243),
        ("ready", 4243),
        ("busy", 4243),
        ("idle", 4243),
        ("busy", 4243),
        ("idle", 4243),
    ]


async def test_a_worker_holding_a_job_is_never_handed_a_second_one():
    pool, sent = _stub_pool()
    first = asyncio.create_task(pool.run("coliseum", lambda j: Job("a", j)))
    await spin()
    pool._idle["coliseum"].put_nowait(pool.workers[0])  # a bookkeeping slip: freed while busy
    with pytest.raises(WorkerDoubleBooked, match="second job while it runs job"):
        await asyncio.wait_for(pool.run("coliseum", lambda j: Job("b", j)), 30)
    assert [t.name for t in sent] == ["a"]
    pool._dispatch(SimpleNamespace(job=sent[0].job))
    await asyncio.wait_for(first, 30)  # the first job is not forgotten


async def test_a_job_given_up_keeps_its_worker_until_the_worker_answers_it():
    pool, sent = _stub_pool()
    first = asyncio.create_task(pool.run("coliseum", lambda j: Job("a", j)))
    await spin()
    second = asyncio.create_task(pool.run("coliseum", lambda j: Job("b", j)))
    await spin()
    first.cancel()
    await spin()
    assert [t.name for t in sent] == ["a"]  # the worker still runs "a": "b" waits
    pool._dispatch(SimpleNamespace(job=sent[0].job))  # the answer nobody awaits any more
    await spin()
    assert [t.name for t in sent] == ["a", "b"]
    pool._dispatch(SimpleNamespace(job=sent[1].job))
    await second
    assert first.cancelled()


async def test_the_ray_pool_lets_an_export_jump_the_queue_too():
    pytest.importorskip("ray.exceptions")
    from engine.workers.raypool import RayPool

    pool = RayPool(
        None, lambda e: None, with_teacher=False, specs=[("c0", "coliseum", "cpu", None, 1)]
    )
    pool._idle = {"coliseum": IdleWorkers()}
    loop = asyncio.get_running_loop()
    sent: list[tuple[Job, asyncio.Future]] = []

    def handle(task: Job) -> asyncio.Future:
        fut = loop.create_future()
        sent.append((task, fut))
        return fut

    async def drain():
        return [], b""

    w = pool.workers[0]
    w.handle = SimpleNamespace(
        handle=SimpleNamespace(remote=handle), drain=SimpleNamespace(remote=drain)
    )
    pool._idle["coliseum"].put_nowait(w)
    jobs = [
        asyncio.create_task(pool.run("coliseum", lambda j, n=n: Job(n, j)))
        for n in ("train-a", "train-b", "train-c")
    ]
    await spin()
    export = asyncio.create_task(pool.run("coliseum", lambda j: Job("export", j), urgent=True))
    await spin()
    for _ in range(4):
        sent[-1][1].set_result(SimpleNamespace())
        await spin(10)
    assert [t.name for t, _ in sent] == ["train-a", "export", "train-b", "train-c"]
    await asyncio.gather(*jobs, export)
