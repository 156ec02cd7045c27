"""Which waiting job a freed worker takes: the pools' dispatch, without worker processes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from engine.workers.pool import IdleWorkers, WorkerPool, _Worker


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


def _stub_pool() -> tuple[WorkerPool, list[Job]]:
    """A WorkerPool with one coliseum whose process is a stub: tasks put on it are recorded."""
    pool = WorkerPool(None, lambda e: None, with_teacher=False, specs=[])
    pool._loop = asyncio.get_running_loop()
    pool._idle = {"coliseum": IdleWorkers()}
    sent: list[Job] = []
    w = _Worker("coliseum-0", "coliseum", "cpu", None, 1)
    w.process = SimpleNamespace(is_alive=lambda: True, pid=4242)
    w.tasks = SimpleNamespace(put=sent.append)
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
