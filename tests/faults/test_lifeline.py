"""Workers die with their engine (engine.workers.lifeline), tested on small stand-in processes:
the parent watch alone (where PR_SET_PDEATHSIG is not to be had), the one-off process pool
(pruning, the TTS sweep), and the sweep of a killed engine's workers when its run is resumed —
which must not kill a process that merely reuses a recorded pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

from engine.workers import lifeline

DRIVER = """
import os, sys, time
sys.path.insert(0, {root!r})
from engine.workers import lifeline

def child(parent):
    lifeline.bind_to_parent(parent, pdeathsig={pdeathsig})
    time.sleep(600)

if __name__ == "__main__":
    import multiprocessing as mp
    mode = sys.argv[1]
    if mode == "process":
        p = mp.get_context("spawn").Process(target=child, args=(os.getpid(),), daemon=True)
        p.start()
        pid = p.pid
    else:  # a one-off pool: its child's pid, then a long job keeps it busy
        pool = lifeline.one_off_pool(None, "pruner")
        pid = pool.submit(os.getpid).result()
        pool.submit(time.sleep, 600)
    print(pid, flush=True)
    time.sleep(600)
"""


def gone(pid: int, started: float) -> bool:
    """That process (pid and start time: not a later one reusing the pid) runs no more."""
    try:
        p = psutil.Process(pid)
        return p.create_time() != started or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_driver_and_time_its_child(tmp_path: Path, mode: str, pdeathsig: bool) -> float:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT), pdeathsig=pdeathsig))
    driver = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    child = None
    try:
        child = int(driver.stdout.readline())
        started = psutil.Process(child).create_time()
        time.sleep(1.0)  # the child is bound (and idle) by now
        driver.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        driver.wait()
        while not gone(child, started) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        took = time.monotonic() - killed
        assert gone(child, started), f"the child outlived its parent by {took:.0f} s"
        return took
    finally:
        if driver.poll() is None:
            driver.kill()
        if child is not None:
            try:
                psutil.Process(child).kill()
            except psutil.NoSuchProcess:
                pass


def test_the_parent_watch_alone_ends_a_worker_whose_parent_was_killed(tmp_path):
    took = kill_driver_and_time_its_child(tmp_path, "process", pdeathsig=False)
    assert took < 5.0, f"{took:.1f} s"  # the watch looks twice a second


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_kernel_death_signal_ends_a_worker_with_its_parent(tmp_path):
    took = kill_driver_and_time_its_child(tmp_path, "process", pdeathsig=True)
    assert took < 5.0, f"{took:.1f} s"


def test_a_one_off_pools_child_dies_with_the_engine_even_in_the_middle_of_a_job(tmp_path):
    took = kill_driver_and_time_its_child(tmp_path, "pool", pdeathsig=True)
    assert took < 5.0, f"{took:.1f} s"


def test_binding_to_a_parent_already_gone_ends_the_process_at_once(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from engine.workers import lifeline; "
        "import os; lifeline.bind_to_parent(os.getppid() + 1); print('lived')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "lived" not in r.stdout, (r.returncode, r.stdout, r.stderr)


# --- the sweep on resume -------------------------------------------------------------------------

FAKE_ENGINE = """
import subprocess, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from engine.workers import lifeline

for name in sys.argv[2:]:
    p = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    if not name.startswith("-"):
        lifeline.record(Path(sys.argv[1]), name, p.pid)
    print(p.pid, flush=True)
"""


@pytest.fixture
def orphans(tmp_path):
    """``start(run_dir, names)``: an engine (a stand-in) that starts a sleeping process for each
    name, records it as a worker of the run under that name (a name starting with "-": not
    recorded) and exits, leaving them behind as a SIGKILLed engine does; their psutil handles.
    Whatever is left of them is killed at the end of the test."""
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE.format(root=str(ROOT)))
    left: list[psutil.Process] = []

    def start(run_dir: Path, names: list[str]) -> list[psutil.Process]:
        r = subprocess.run(
            [sys.executable, str(script), str(run_dir), *names],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        procs = [psutil.Process(int(pid)) for pid in r.stdout.split()]
        left.extend(procs)
        return procs

    yield start
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # is_running: same start time
    except psutil.NoSuchProcess:
        return False


def wait_gone(p: psutil.Process, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while running(p) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(p)


def test_resume_kills_a_killed_engines_stale_worker_but_not_a_reused_pid(tmp_path, orphans):
    stale, reused, renamed = orphans(tmp_path, ["teacher", "coliseum-0", "pruner"])
    entries = lifeline.recorded(tmp_path)
    assert [e["name"] for e in entries] == ["teacher", "coliseum-0", "pruner"]
    # The pids of two of them belong to other programs now (as far as the record can tell): one
    # started after the record was written, one runs another command line.
    lines = []
    for e in entries:
        if e["name"] == "coliseum-0":
            e["started"] -= 60.0
        if e["name"] == "pruner":
            e["cmdline"] = ["/usr/bin/python3", "-m", "something.else"]
        lines.append(json.dumps(e))
    (tmp_path / lifeline.REGISTRY).write_text("\n".join(lines) + '\n{"cut sho')  # a torn line

    warnings: list[str] = []
    killed = lifeline.sweep(tmp_path, warnings.append)

    assert killed == [stale.pid]
    assert wait_gone(stale)
    assert running(reused) and running(renamed)  # unrelated processes live on
    [warning] = warnings
    assert "worker teacher" in warning and f"pid {stale.pid}" in warning and "killed" in warning
    assert not (tmp_path / lifeline.REGISTRY).exists()  # the resumed run records afresh


def test_a_worker_whose_engine_still_runs_is_not_stale(tmp_path, orphans):
    [live] = orphans(tmp_path, ["-unrecorded"])
    lifeline.record(tmp_path, "teacher", live.pid)  # recorded by this process, which lives
    assert lifeline.recorded(tmp_path)[0]["engine"] == os.getpid()
    assert lifeline.sweep(tmp_path, print) == []
    assert running(live)


def test_resume_publishes_the_sweeps_warning_and_a_new_run_sweeps_nothing(tiny_profile, orphans):
    from engine import events as ev
    from engine.profile import load_profile
    from engine.runcontrol import RunControl
    from engine.rundir import RunDir

    class Control(RunControl):
        def _resume(self, generation, state, tensors):  # no checkpoint in this run
            raise AssertionError("nothing to resume from")

    profile = load_profile(tiny_profile())
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    stale, other = orphans(run.path, ["teacher", "-unrecorded"])

    Control(profile, run)._begin(4, resume=False)
    assert running(stale) and running(other)  # a new run has no earlier engine to sweep

    seen: list[ev.Event] = []
    control = Control(profile, RunDir.open(run.path))
    control.subscribe(seen.append)
    control._begin(4, resume=True)
    assert wait_gone(stale)
    assert running(other)
    warnings = [e.message for e in seen if isinstance(e, ev.Log) and e.level == "warning"]
    assert any(f"worker teacher (pid {stale.pid}" in w for w in warnings), warnings
    assert lifeline.recorded(run.path) == []


# --- the reaper (a private Ray instance's processes are not the engine's to bind) ----------------

REAPED_ENGINE = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
from engine.workers import lifeline

reaper = lifeline.start_reaper()
# A process it did not start itself, bound to nothing (as Ray's agents are).
other = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
time.sleep(1.5)  # the reaper has seen it
print(reaper.pid, other.pid, flush=True)
if sys.argv[1] == "close":
    lifeline.stop_reaper(reaper)
    print(reaper.returncode, other.wait(10), flush=True)
time.sleep(600)
"""


def test_the_reaper_kills_what_the_engine_started_once_the_engine_is_killed(tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(REAPED_ENGINE.format(root=str(ROOT)))
    engine = subprocess.Popen(
        [sys.executable, str(script), "kill"], stdout=subprocess.PIPE, text=True
    )
    procs: list[psutil.Process] = []
    try:
        procs = [psutil.Process(int(pid)) for pid in engine.stdout.readline().split()]
        engine.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        engine.wait()
        assert all(wait_gone(p, 30) for p in procs), [p.pid for p in procs if running(p)]
        took = time.monotonic() - killed
        assert took < 5.0, f"{took:.1f} s"
    finally:
        if engine.poll() is None:
            engine.kill()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_stopping_the_reaper_ends_it_and_what_is_left_of_the_engines_processes(tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(REAPED_ENGINE.format(root=str(ROOT)))
    engine = subprocess.Popen(
        [sys.executable, str(script), "close"], stdout=subprocess.PIPE, text=True
    )
    try:
        engine.stdout.readline()  # their pids
        code, other_code = engine.stdout.readline().split()
        assert code == "0" and other_code == str(-signal.SIGKILL)
    finally:
        engine.kill()
        engine.wait()


def test_a_ray_worker_is_known_again_by_its_actor_class_though_it_retitles_itself():
    same = lifeline._same_program
    assert same(["ray::ActorWorker"], ["ray::ActorWorker.handle"])  # retitled after each call
    assert not same(["ray::ActorWorker"], ["ray::IDLE"])  # the pid went to another worker
    assert not same(["python", "-m", "a"], ["python", "-m", "b"])
    assert not same(None, ["python"])
