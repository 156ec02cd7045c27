"""Distillation on the embedded default: KD+CE against CE-only at equal steps, and the logit cache
against the online teacher — side by side in one run, from the engine's own events.

Every configuration runs the demo profile with the same seed, population, generations and steps
(overridable below); only the loss and the teacher's mode change:

- ce: cross-entropy on the labels only (the teacher is still scored, as the reference);
- kd+ce (cache): KL(teacher_T ‖ student_T)·T² + alpha·CE, the teacher's top-k computed once;
- kd+ce (online): the same loss, the teacher scoring each individual's batches as it trains.

Printed: the champion's validation loss, the fraction of the untrained-student → teacher gap it
closes, the wall time of each generation, and the teacher's busy time from generation 1 on.

    python benchmarks/bench_distill.py [--generations 2] [--size 8] [--steps 30] [--rows 1024]
    python benchmarks/bench_distill.py --demo     # profiles/demo.toml as shipped vs demo-ce-only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(out: Path, name: str, over: dict) -> dict:
    from conftest import demo_profile_text

    from engine import events as ev
    from engine.orchestrator import Orchestrator
    from engine.profile import parse_profile
    from engine.rundir import RunDir

    text = demo_profile_text(out / name, **over)
    path = out / f"{name}.toml"
    path.write_text(text)
    profile = parse_profile(text, source=path)
    rundir = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    orch = Orchestrator(profile, rundir)
    t0 = time.perf_counter()
    finished = asyncio.run(orch.run())
    wall = time.perf_counter() - t0
    events = rundir.read_events()
    gens = [e.seconds for e in events if isinstance(e, ev.GenerationFinished)]
    # The teacher's busy time from generation 1 on: busy → next state of the teacher.
    start = next(
        (
            k
            for k, e in enumerate(events)
            if isinstance(e, ev.GenerationStarted) and e.generation == 1
        ),
        len(events),
    )
    busy, since = 0.0, None
    for e in events[start:]:
        if isinstance(e, ev.WorkerState) and e.worker == "teacher":
            if e.state == "busy":
                since = e.ts
            elif since is not None:
                busy, since = busy + e.ts - since, None
    cache = [e for e in events if isinstance(e, ev.TeacherLogits) and e.id is None]
    loss = -finished.champion_fitness
    s, t = orch.student_loss, orch.teacher_loss
    return {
        "name": name,
        "loss": loss,
        "gap": (s - loss) / (s - t),
        "gens": gens,
        "wall": wall,
        "teacher_busy_later": busy,
        "cache_s": cache[0].seconds if cache else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=1024, help="training rows (max_train_examples)")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument(
        "--targets",
        default="",
        help="comma-separated LoRA target modules (default: the demo profile's)",
    )
    ap.add_argument("--no-online", action="store_true", help="skip the online-teacher run")
    ap.add_argument(
        "--demo",
        action="store_true",
        help="the shipped demo profile as it is (its own data, pruning, distillation settings) "
        "against the same with [distill] mode = off (profiles/demo-ce-only.toml); other options "
        "except --no-online are ignored",
    )
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    if args.demo:
        base: dict = {}
        kd: dict = {"distill__cache_dir": str(out / "kd-cache")}
        what = "profiles/demo.toml as shipped"
    else:
        base = {
            "population__size": args.size,
            "evolution__generations": args.generations,
            "evolution__sizes": None,
            "training__steps_per_generation": args.steps,
            "data__max_train_examples": args.rows,
            "prune__layers": 0.0,
        }
        if args.targets:
            base["population__target_modules"] = args.targets.split(",")
        kd = {
            "distill__mode": "logits",
            "distill__temperature": args.temperature,
            "distill__alpha": args.alpha,
            "distill__cache_dir": str(out / "kd-cache"),
        }
        what = (
            f"{args.size} individuals × {args.generations} generations × {args.steps} steps, "
            f"{args.rows} training rows, T = {args.temperature}, alpha = {args.alpha}"
        )
    rows = [
        run(out, "ce", {**base, "distill__mode": "off"}),
        run(out, "kd-cache", {**base, **kd}),
    ]
    if not args.no_online:
        rows.append(run(out, "kd-online", {**base, **kd, "distill__cache": False}))
    print(f"\n{what}")
    print(
        f"{'run':<10} {'champion val loss':>17} {'gap closed':>10}  generation seconds        teacher busy, gen ≥ 1"
    )
    for r in rows:
        gens = " / ".join(f"{g:.1f}" for g in r["gens"])
        extra = f"  (cache built in {r['cache_s']:.1f} s)" if r["cache_s"] else ""
        print(
            f"{r['name']:<10} {r['loss']:>17.4f} {100 * r['gap']:>9.1f}%  {gens:<24} "
            f"{r['teacher_busy_later']:.1f} s{extra}; run {r['wall']:.0f} s in all"
        )
    c, o = rows[1]["gens"], rows[-1]["gens"]
    if len(rows) > 2 and len(c) > 1 and len(o) > 1:
        print(
            f"generation 1 wall time, cache / online: {c[1]:.1f} / {o[1]:.1f} = {c[1] / o[1]:.2f} (target ≤ 0.6)"
        )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
