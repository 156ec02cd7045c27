"""Telemetry: NVML through a fake (present, missing, failing mid-run), the host, the workers, the
sampler thread and its interval; and the module stays free of textual."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FakeNvml

from engine.telemetry import (
    GpuUnavailable,
    NvmlSource,
    TelemetrySampler,
    clamp_interval,
    na,
)

ROOT = Path(__file__).resolve().parents[1]


def test_gpus_through_a_fake_nvml():
    nvml = FakeNvml(2)
    sampler = TelemetrySampler(NvmlSource(nvml))
    snap = sampler.sample_once()
    assert snap.gpu_available and snap.gpu_status == "2 NVIDIA GPUs"
    g0, g1 = snap.gpus
    assert g0.name == "NVIDIA Fake H100" and g1.name == "NVIDIA Fake H101"
    assert g0.utilization == 50 and g1.utilization == 60
    assert g0.memory_used == 20 * 2**30 and g0.memory_total == 80 * 2**30
    assert g0.memory_percent == pytest.approx(25.0)
    assert g0.power_draw == pytest.approx(250.0) and g0.power_limit == pytest.approx(700.0)
    assert g1.temperature == 61
    sampler.sample_once()
    hist = sampler.history()
    assert hist["gpu_util"] == {0: [50.0, 50.0], 1: [60.0, 60.0]}
    assert len(hist["cpu"]) == 2 and len(hist["ram"]) == 2
    sampler.stop()
    assert nvml.shut


@pytest.mark.parametrize("reason", ["NVML Shared Library Not Found", "Driver Not Loaded"])
def test_nvml_missing_is_a_readable_state_and_the_host_stays_live(reason):
    sampler = TelemetrySampler(NvmlSource(FakeNvml(fail_init=reason)))
    snap = sampler.sample_once()
    assert not snap.gpu_available and snap.gpus == ()
    assert snap.gpu_status == f"no NVIDIA GPU: NVML not available ({reason})"
    assert snap.host.cpu_percent is not None and snap.host.memory_total
    assert sampler.sample_once().seq == 2  # probed once, sampled on


def test_no_device_and_no_nvidia_ml_py(monkeypatch):
    with pytest.raises(GpuUnavailable, match="NVML found no devices"):
        NvmlSource(FakeNvml(0)).start()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # "import pynvml" raises ImportError
    with pytest.raises(GpuUnavailable, match="nvidia-ml-py is not installed"):
        NvmlSource().start()


def test_the_real_nvml_on_this_machine_never_raises():
    snap = TelemetrySampler().sample_once()
    if snap.gpu_available:  # a GPU machine
        assert snap.gpus and all(g.name for g in snap.gpus)
    else:
        assert snap.gpu_status.startswith("no NVIDIA GPU: NVML")


def test_nvml_failing_mid_run_gives_na_and_the_host_stays_live():
    sampler = TelemetrySampler(NvmlSource(FakeNvml(1, break_after=1)))
    first = sampler.sample_once()
    assert first.gpus[0].utilization == 50
    lost = sampler.sample_once()
    g = lost.gpus[0]
    assert g.name == "NVIDIA Fake H100"  # the row stays
    assert (g.utilization, g.memory_used, g.power_draw, g.temperature) == (None,) * 4
    assert na(g.utilization, "{:.0f}%") == "N/A"
    assert lost.host.cpu_percent is not None  # host figures stay live
    assert sampler.history()["gpu_util"][0] == [50.0, None]


def test_a_whole_query_failing_keeps_the_rows_with_na():
    class Broken(NvmlSource):
        calls = 0

        def sample(self):
            Broken.calls += 1
            if Broken.calls > 1:
                raise RuntimeError("GPU is lost")
            return super().sample()

    sampler = TelemetrySampler(Broken(FakeNvml(2)))
    sampler.sample_once()
    snap = sampler.sample_once()
    assert snap.gpu_status == "NVML query failed: GPU is lost"
    assert [g.name for g in snap.gpus] == ["NVIDIA Fake H100", "NVIDIA Fake H101"]
    assert all(g.utilization is None for g in snap.gpus)
    assert snap.host.memory_used is not None


def test_interval_is_clamped():
    assert clamp_interval(0.01) == 0.5 and clamp_interval(10) == 2.0
    assert clamp_interval(1.3) == 1.3
    assert TelemetrySampler(NvmlSource(FakeNvml()), interval=0.1).interval == 0.5
    assert TelemetrySampler(NvmlSource(FakeNvml()), interval=60).interval == 2.0
    assert TelemetrySampler(NvmlSource(FakeNvml())).interval == 1.0


def test_worker_processes_rss_and_cpu():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sampler = TelemetrySampler(NvmlSource(FakeNvml(fail_init="no")))
    sampler.watch([os.getpid(), gone.pid])
    sampler.sample_once()
    snap = sampler.sample_once()
    me, dead = snap.processes[os.getpid()], snap.processes[gone.pid]
    assert me.alive and me.rss and me.rss > 10 * 2**20 and me.cpu_percent is not None
    assert not dead.alive and dead.rss is None
    sampler.watch([])
    assert sampler.sample_once().processes == {}


def test_the_sampler_thread_publishes_snapshots():
    sampler = TelemetrySampler(NvmlSource(FakeNvml(1)), interval=0.5, history=3)
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while (
            sampler.latest() is None or sampler.latest().seq < 2
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = sampler.latest()
        assert snap is not None and snap.seq >= 2 and snap.gpus[0].utilization == 50
        assert sampler._thread is not None and sampler._thread.daemon
    finally:
        sampler.stop()
    assert sampler._thread is None
    for _ in range(5):
        sampler.sample_once()
    assert len(sampler.history()["cpu"]) == 3  # bounded history


def test_telemetry_never_imports_textual():
    code = (
        "import sys, engine.telemetry as t; t.TelemetrySampler().sample_once(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'torch')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
