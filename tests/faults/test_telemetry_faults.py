"""NVML failing in the middle of a run (a GPU fallen off the bus, a driver reloaded): the terminal
UI, attached to the real engine process, shows N/A where the figures were, and the run goes on to
its end. NVML is read by the UI's sampler thread, never by the engine, so a broken NVML cannot
stop a run; this test holds the UI to its part. The GPU is ``FakeNvml`` (tests/fakes.py), the one
double here: this machine has no NVIDIA driver to break."""

from __future__ import annotations

import time

import pytest
from fakes import FakeNvml

from engine.profile import load_profile
from engine.rundir import RunDir
from engine.telemetry import NvmlSource, TelemetrySampler
from genesis_tui.app import GenesisApp
from genesis_tui.link import SocketLink, spawn_engine
from genesis_tui.widgets.gpu_row import GpuRow
from genesis_tui.widgets.telemetry_pane import TelemetryPane

pytestmark = pytest.mark.slow


async def until(pilot, cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def test_nvml_failing_mid_run_shows_na_and_the_run_completes(tiny_profile):
    profile = load_profile(tiny_profile(teacher__enabled=False, training__steps_per_generation=20))
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    proc = spawn_engine(run.path)
    nvml = FakeNvml(1)  # it breaks when the test has seen it work, whatever the machine's speed
    try:
        app = GenesisApp(
            SocketLink(run.path, process=proc),
            sampler=TelemetrySampler(NvmlSource(nvml), interval=0.5),
        )
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            pane = app.query_one(TelemetryPane)

            def status() -> str:
                return str(pane.query_one("#gpu-status").content)

            await until(pilot, lambda: status() == "1 NVIDIA GPU", 120, "the GPU to show")
            nvml.break_after = nvml.samples  # every query from now on fails
            await until(pilot, lambda: "NVML query failed" in status(), 120, "NVML to fail")
            assert "figures show N/A until NVML answers again" in status()
            line = str(app.query_one(GpuRow).query_one(".gpu-line").content)
            assert "NVIDIA Fake H100" in line and "N/A" in line
            host = str(pane.query_one("#host-line").content)
            assert "N/A" not in host  # the host's figures stay live
            await until(pilot, lambda: app.finished is not None, 240, "the run to finish")
            assert app.finished.status == "completed", app.finished.reason
            assert "NVML query failed" in status()  # and it said so to the end
            await pilot.press("q")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run.checkpoints() == [0, 1]
