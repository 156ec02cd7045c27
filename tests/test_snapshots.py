"""Snapshot tests of the main screen (pytest-textual-snapshot): 80×24, the size an SSH session
opens at, and 160×48, where the leaderboard gets a details column. The scripted engine runs a
whole small run first, so the pictures hold a full, deterministic leaderboard.

After an intended change of the layout: ``pytest tests/test_snapshots.py --snapshot-update``,
then look at the new SVGs under tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from fakes import FakeEngine, FakeNvml

from engine.telemetry import NvmlSource, TelemetrySampler
from genesis_tui.app import GenesisApp


class ManualSampler(TelemetrySampler):
    def start(self) -> None:
        pass


def finished_run() -> GenesisApp:
    engine = FakeEngine(generations=2, population=6, run_dir="/runs/fake-20261125-080000")
    nvml = FakeNvml(fail_init="NVML Shared Library Not Found")
    return GenesisApp(engine, sampler=ManualSampler(NvmlSource(nvml)))


async def until_finished(pilot) -> None:
    """Wait for the scripted run's end however slow the machine is (a fixed number of short
    pauses once ran out on a loaded machine and pictured the run mid-evaluation), then let the
    screen settle."""
    import time

    app = pilot.app
    deadline = time.monotonic() + 300
    while app.finished is None:
        assert time.monotonic() < deadline, "the scripted run did not finish in 5 minutes"
        await pilot.pause(0.05)
    await pilot.pause(0.3)
    app.clear_notifications()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)


def test_main_screen_80x24(snap_compare):
    assert snap_compare(finished_run(), terminal_size=(80, 24), run_before=until_finished)


def test_main_screen_160x48(snap_compare):
    assert snap_compare(finished_run(), terminal_size=(160, 48), run_before=until_finished)
