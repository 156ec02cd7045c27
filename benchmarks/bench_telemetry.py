"""Telemetry sampler cost: CPU time it takes per sample, and as a share of one core at 1 Hz.

The sampler (engine.telemetry) reads NVML (where there is a GPU), the host's CPU and memory,
and each watched worker process, in a daemon thread of the UI. Two measurements, side by side:

1. per sample: ``sample_once()`` called back to back, CPU time per call;
2. in place: the sampler thread running at 1 Hz for ``--seconds`` while the main thread sleeps;
   the process's CPU time over that wall time is the sampler's share of one core (target ≤ 1%).

    python benchmarks/bench_telemetry.py [--seconds 30] [--workers 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _idle() -> None:  # a stand-in worker process to watch (sleeps)
    time.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=3, help="processes the sampler watches")
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()

    from engine.telemetry import TelemetrySampler

    procs = [
        mp.get_context("spawn").Process(target=_idle, daemon=True) for _ in range(args.workers)
    ]
    for p in procs:
        p.start()
    pids = [p.pid for p in procs] + [os.getpid()]
    try:
        s = TelemetrySampler(interval=1.0)
        s.watch(pids)
        snap = s.sample_once()  # NVML probe and the psutil baselines
        print(f"GPUs: {snap.gpu_status}; watching {len(pids)} processes")

        c0 = time.process_time()
        for _ in range(args.calls):
            s.sample_once()
        per_sample = (time.process_time() - c0) / args.calls
        print(f"per sample: {per_sample * 1e3:.3f} ms CPU ({args.calls} calls back to back)")
        print(f"  → at 1 Hz: {per_sample * 100:.3f}% of one core")

        s2 = TelemetrySampler(interval=1.0)
        s2.watch(pids)
        c0, w0 = time.process_time(), time.perf_counter()
        s2.start()
        time.sleep(args.seconds)
        s2.stop()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        latest = s2.latest()
        n = latest.seq if latest else 0
        print(
            f"sampler thread at 1 Hz for {wall:.1f} s: {n} samples, {cpu * 1e3:.1f} ms CPU "
            f"→ {100 * cpu / wall:.3f}% of one core (target ≤ 1%)"
        )
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
