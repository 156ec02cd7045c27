"""Soak: a long headless run of many generations; is every process's memory flat, is the log whole?

Runs ``genesis-tui --profile … --headless`` (the real CLI, real worker processes) on a copy of the
profile with as many generations as fit in ``--minutes``, samples the resident memory (RSS and
USS) of the engine and of every worker process it spawned every ``--interval`` seconds, then stops
the run with SIGINT (as an operator's Ctrl-C) and checks the event log and the checkpoints.

Memory growth is measured from the end of warm-up (the first ``--warmup`` generations: pruning,
the teacher's logit cache, first allocations) to the end, per process, on the median of the first
and last five samples after warm-up; the target is < 5 %.

    python benchmarks/soak.py --minutes 30                      # the demo profile, 30 minutes
    python benchmarks/soak.py --minutes 2 --profile profiles/demo.toml --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def soak_profile(profile_path: Path, out: Path) -> Path:
    """The profile with (practically) unending generations, its runs under ``out``."""
    from engine.profile import load_profile

    prof = load_profile(profile_path)
    prof = prof.model_copy(
        update={
            "evolution": prof.evolution.model_copy(update={"generations": 100_000}),
            "run": prof.run.model_copy(update={"output_dir": out, "name": "soak"}),
        }
    )
    path = out / "soak.toml"
    path.write_text(prof.to_toml())
    return path


def worker_names(run: Path | None) -> dict[int, str]:
    """pid → worker name (teacher, coliseum-0 …), from the run's worker_state events."""
    names: dict[int, str] = {}
    if run is None or not (run / "events.jsonl").exists():
        return names
    for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines():
        if '"kind":"worker_state"' in line:
            e = json.loads(line)
            if e.get("pid"):
                names[e["pid"]] = e["worker"]
    return names


def role(proc, names: dict[int, str]) -> str:
    """A process's part in the run: the engine, a worker by name, or what its command line says."""
    if proc.pid in names:
        return names[proc.pid]
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "?"
    if "genesis_tui.cli" in cmd:
        return "engine"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return "pruner" if "spawn_main" in cmd else proc.name()


def sample(root, names: dict[int, str]) -> dict[str, dict[str, float]]:
    """{"<role> pid <pid>": {rss, uss}} in MiB for the engine and its descendants."""
    import psutil

    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            out[f"{role(p, names)} pid {p.pid}"] = {
                "rss": info.rss / 2**20,
                "uss": getattr(info, "uss", info.rss) / 2**20,
            }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def check_log(run: Path) -> list[str]:
    """What is inconsistent in the run's event log and checkpoints (empty when all is well)."""
    from engine.rundir import RunDir

    problems = []
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = []
    for n, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"events.jsonl line {n} is not JSON")
    kinds = [e["kind"] for e in events]
    if not kinds or kinds[0] != "run_started":
        problems.append("the log does not start with run_started")
    if not kinds or kinds[-1] != "run_finished":
        problems.append("the log does not end with run_finished")
    started = [e["generation"] for e in events if e["kind"] == "generation_started"]
    finished = [e["generation"] for e in events if e["kind"] == "generation_finished"]
    checkpoints = [e["generation"] for e in events if e["kind"] == "checkpoint"]
    if started[: len(finished)] != finished or finished != list(range(len(finished))):
        problems.append(f"generations started {started} and finished {finished} do not pair up")
    if checkpoints != finished:
        problems.append(f"checkpoints {checkpoints} differ from finished generations {finished}")
    trained = [e["id"] for e in events if e["kind"] == "train_finished"]
    if len(trained) != len(set(trained)):
        problems.append("an individual was trained twice")
    rd = RunDir.open(run)
    on_disk = rd.checkpoints()
    if on_disk != checkpoints:
        problems.append(f"checkpoint directories {on_disk} differ from the log's {checkpoints}")
    for gen in on_disk[-3:]:  # the newest ones load whole (older ones were checked as they came)
        try:
            rd.load_checkpoint(gen)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"gen {gen}: {exc}")
    return problems


def growth(series: list[float]) -> float:
    head, tail = statistics.median(series[:5]), statistics.median(series[-5:])
    return (tail - head) / head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=ROOT / "profiles" / "demo.toml")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=int, default=2, help="generations before measuring")
    ap.add_argument("--out", type=Path, help="where the run goes (default: a temporary dir)")
    ap.add_argument("--json", type=Path, help="write the samples and figures here")
    args = ap.parse_args()

    import psutil

    out = args.out or Path(tempfile.mkdtemp(prefix="genesis-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    prof = soak_profile(args.profile, out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(prof), "--headless"],
        cwd=ROOT,
        stdout=open(out / "soak.stdout", "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    root = psutil.Process(proc.pid)
    t0 = time.time()
    samples: list[tuple[float, int, dict]] = []  # (seconds, generations finished, memory)
    run = None
    gens = 0
    while time.time() - t0 < args.minutes * 60 and proc.poll() is None:
        time.sleep(args.interval)
        if run is None:
            runs = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("soak-")]
            run = runs[0] if runs else None
        if run is not None and (run / "events.jsonl").exists():
            gens = (run / "events.jsonl").read_text().count('"kind":"generation_finished"')
        samples.append((time.time() - t0, gens, sample(root, worker_names(run))))
        print(
            f"{samples[-1][0]:7.0f} s  generations {gens:3d}  "
            + "  ".join(f"{k.split(' pid')[0]} {v['rss']:.0f}" for k, v in samples[-1][2].items()),
            flush=True,
        )
    proc.send_signal(signal.SIGINT)  # stop after the work in flight, as Ctrl-C does
    code = proc.wait(timeout=600)
    print(f"engine exit code {code} after {time.time() - t0:.0f} s; run {run}")

    after = [s for s in samples if s[1] >= args.warmup]
    report = {"minutes": args.minutes, "generations": gens, "exit_code": code, "processes": {}}
    names = sorted({k for _, _, mem in after for k in mem})
    print(
        f"\n{'process':32} {'samples':>7} {'RSS start':>10} {'RSS end':>9} {'growth':>7}"
        f" {'USS start':>10} {'USS end':>9} {'growth':>7}"
    )
    for name in names:
        rss = [mem[name]["rss"] for _, _, mem in after if name in mem]
        uss = [mem[name]["uss"] for _, _, mem in after if name in mem]
        if len(rss) < 10:
            continue
        g_rss, g_uss = growth(rss), growth(uss)
        report["processes"][name] = {
            "samples": len(rss),
            "rss_start": statistics.median(rss[:5]),
            "rss_end": statistics.median(rss[-5:]),
            "rss_growth": g_rss,
            "uss_start": statistics.median(uss[:5]),
            "uss_end": statistics.median(uss[-5:]),
            "uss_growth": g_uss,
        }
        print(
            f"{name:32} {len(rss):7d} {statistics.median(rss[:5]):9.0f}M "
            f"{statistics.median(rss[-5:]):8.0f}M {g_rss:+7.1%} {statistics.median(uss[:5]):9.0f}M "
            f"{statistics.median(uss[-5:]):8.0f}M {g_uss:+7.1%}"
        )
    problems = check_log(run) if run is not None else ["no run directory appeared"]
    report["log_problems"] = problems
    print("event log and checkpoints: " + ("consistent" if not problems else "; ".join(problems)))
    flat = all(p["rss_growth"] < 0.05 for p in report["processes"].values())
    print(f"memory flat after warm-up (every process < 5% growth): {'yes' if flat else 'NO'}")
    if args.json:
        report["samples"] = samples
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if flat and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
