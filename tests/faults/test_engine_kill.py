"""The engine process itself killed (SIGKILL: the OOM killer, a power cut of the process) in the
middle of a generation, on the real CLI: ``--resume`` finishes the run as if nothing happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, board, cli, events, only_run

pytestmark = pytest.mark.slow


def test_sigkill_mid_generation_then_resume_matches_uninterrupted(tiny_profile, tmp_path):
    prof = tiny_profile(evolution__generations=3, training__steps_per_generation=25)
    assert cli("--profile", str(prof), "--headless").returncode == 0
    reference = board(only_run(tmp_path / "runs"))
    os.rename(only_run(tmp_path / "runs"), tmp_path / "reference")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(prof), "--headless"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    run = None
    while time.time() < deadline:  # wait until generation 1 is under way, then kill everything
        runs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
        if runs and (runs[0] / "gen_0000").exists():
            run = runs[0]
            log = (run / "events.jsonl").read_text()
            if '"generation_started"' in log.split('"kind":"checkpoint"')[-1]:
                break
        time.sleep(0.2)
    assert run is not None, "the run never reached generation 1"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "gen_0002").exists()

    r = cli("--resume", str(run), "--headless")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed after generation" in r.stdout
    assert board(run) == reference


def _start_engine(prof) -> subprocess.Popen:
    """The real headless CLI in a session of its own (the way the TUI starts an engine)."""
    return subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(prof), "--headless"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _alive(procs: list) -> list:
    """The processes of ``procs`` still running (a zombie nobody reaped yet counts as gone: it
    holds no memory and runs nothing)."""
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_of_the_engine_alone_takes_every_process_of_its_run_with_it(
    tiny_profile, tmp_path, executor
):
    """``kill -9`` of the engine's pid only (not its process group: the OOM killer picks one
    process): the teacher, the coliseum, multiprocessing's resource tracker — with Ray, the
    private Ray instance the engine started and its actors — must not outlive it. They used to:
    an idle teacher waited on its task queue forever, and kept the resource tracker alive."""
    import psutil

    if executor == "ray":
        pytest.importorskip("ray")
    prof = tiny_profile(
        evolution__generations=3, training__steps_per_generation=200, devices__executor=executor
    )
    proc = _start_engine(prof)
    family: list = []
    try:
        deadline = time.time() + 300
        ready: dict[str, int] = {}
        while time.time() < deadline and len(ready) < 2:  # until both workers have loaded
            runs = list((tmp_path / "runs").glob("tiny-*")) if (tmp_path / "runs").exists() else []
            if runs and (runs[0] / "events.jsonl").exists():
                for e in events(runs[0]):
                    if e["kind"] == "worker_state" and e["state"] == "ready":
                        ready[e["worker"]] = e["pid"]
            assert proc.poll() is None, "the engine ended before its workers were up"
            time.sleep(0.2)
        assert set(ready) == {"teacher", "coliseum-0"}, ready
        family = psutil.Process(proc.pid).children(recursive=True)
        names = {p.pid: " ".join(p.cmdline())[:100] for p in family}
        for worker, pid in ready.items():
            names[pid] = f"the {worker} worker"
        assert set(ready.values()) <= set(names), (ready, names)
        if executor == "local":
            assert any("multiprocessing.resource_tracker" in n for n in names.values()), names

        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
        # Polled well past the bound, so that a failure says how long they took, if ever.
        while _alive(family) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        took = time.monotonic() - killed
        left = [f"{names[p.pid]} (pid {p.pid})" for p in _alive(family)]
    finally:
        if proc.poll() is None:
            family += psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
        for p in _alive(family):  # what a failing run leaves: not for the next test to meet
            p.kill()
    print(f"every process of the run was gone {took:.2f} s after the engine's SIGKILL")
    assert not left, f"still alive {took:.0f} s after the engine was killed: {left}"
    assert took < 5.0, f"the run's processes took {took:.1f} s to die after the engine"
