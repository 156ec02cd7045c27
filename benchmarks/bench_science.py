"""Does the lab beat the plain fine-tune of the same compute? (issue 15)

On the embedded default, for each seed, side by side in one run of this script:

- the shipped demo (``profiles/demo.toml`` with that seed): the evolved champion;
- the compute-matched single fine-tune (``genesis-tui baseline RUN --kind finetune``) at the
  profile's learning rate ×0.5, ×1 and ×2 — one adapter, the run's own training steps, scored on
  validation every 30 steps, the best checkpoint kept;
- random search (``--kind random``): the population's random genomes sharing the budget;
- the demo without merging adapters (``[evolution] crossover_rate = 0`` and ``soup = 0``; the
  shipped demo's children are all continuations, so crossover alone would change nothing).

Every figure is the champion's loss on the TEST split (validation rows 128–499, which no
selection ever scored), read from each run's report.json, with its training tokens beside it (the
baselines get the run's steps; tokens agree within a few per cent because rows differ in length).
Printed: mean ± sd over seeds of the test loss, the champion's advantage, the share of the
pruned-student → teacher gap closed, and the wall time of each configuration.

    python benchmarks/bench_science.py [--seeds 0 1 2] [--out DIR] [--only demo,ft1]
    python benchmarks/bench_science.py --profile profiles/demo.toml --seeds 0
    # seeds side by side, one process each, then one table:
    python benchmarks/bench_science.py --seeds 1 --threads 1 --out /tmp/bs1 &  (… one per seed)
    python benchmarks/bench_science.py --collect /tmp/bs*/results.json

Runs each configuration through the real command line, one after the other (about 25 minutes a
seed on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIGS = {
    "demo": "the shipped demo (evolution)",
    "ft0.5": "single fine-tune, lr ×0.5",
    "ft1": "single fine-tune, lr ×1 (the demo's)",
    "ft2": "single fine-tune, lr ×2",
    "ft2kd": "single fine-tune, lr ×2, at the champion's KD weight",
    "random": "random search",
    "nocross": "the demo without merging (crossover_rate 0, no soup)",
}


def cli(*args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "genesis_tui.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if r.returncode != 0:
        raise SystemExit(f"genesis-tui {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr}")
    return r.stdout, time.perf_counter() - t0


def newest(parent: Path) -> Path:
    dirs = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return max(dirs, key=lambda p: p.stat().st_mtime)


THREADS = 0  # [devices] threads_per_worker for every run (--threads)


def profile_for(base: Path, out: Path, seed: int, name: str, **evolution) -> Path:
    """``base`` resolved to absolute paths, with this seed, writing runs under ``out``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from engine.profile import load_profile, parse_profile

    data = tomllib.loads(load_profile(base).to_toml())
    data["run"].update(seed=seed, name=name, output_dir=str(out / name))
    data["evolution"].update(evolution)
    if THREADS:
        data["devices"]["threads_per_worker"] = THREADS
    path = out / f"{name}.toml"
    text = _toml(data)
    parse_profile(text, source=path)  # validated before anything runs
    path.write_text(text)
    return path


def _toml(data: dict) -> str:
    lines = []
    for section, kv in data.items():
        lines.append(f"[{section}]")
        for k, v in kv.items():
            if v is not None:
                lines.append(
                    f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                )
        lines.append("")
    return "\n".join(lines)


def report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def one_seed(
    base: Path, out: Path, seed: int, only: set[str], results: dict[int, dict[str, dict]]
) -> dict[str, dict]:
    res: dict[str, dict] = results.setdefault(seed, {})

    def record(name: str, run: Path, wall: float) -> None:
        rep = report(run)
        champ = rep["champion"] or {}
        res[name] = {
            "test": champ.get("test_loss"),
            "val": champ.get("val_loss"),
            "tokens": rep["compute"]["train_tokens"],
            "steps": rep["compute"]["train_steps"],
            "gap_test": champ.get("gap_closed_test"),
            "student_test": rep["references"]["student"]["test_loss"],
            "teacher_test": rep["references"]["teacher"]["test_loss"],
            "wall": wall,
            "run": str(run),
            "lr": (champ.get("genome") or {}).get("learning_rate"),
        }
        (out / "results.json").write_text(json.dumps(results, indent=1))  # kept as it goes
        print(
            f"  seed {seed} {name:8s} test {res[name]['test']:.4f} val {res[name]['val']:.4f} "
            f"steps {res[name]['steps']} tokens {res[name]['tokens']} ({wall:.0f}s)",
            flush=True,
        )

    if "demo" in res:  # an earlier invocation ran it (results.json in --out): add the rest
        demo = Path(res["demo"]["run"])
    else:
        prof = profile_for(base, out, seed, f"demo-s{seed}")
        _, wall = cli("--profile", str(prof), "--headless")
        demo = newest(out / f"demo-s{seed}")
        record("demo", demo, wall)
    for name, scale in (("ft1", 1.0), ("ft2", 2.0), ("ft0.5", 0.5)):
        if (only and name not in only) or name in res:
            continue
        _, wall = cli("baseline", str(demo), "--kind", "finetune", "--lr-scale", str(scale))
        record(name, newest(demo / "baselines"), wall)
    kd = (report(demo)["champion"].get("genome") or {}).get("kd_alpha")
    if (not only or "ft2kd" in only) and "ft2kd" not in res and kd is not None:
        # What a user who copied the lab's finding (the KD weight) into the best fine-tune gets
        args = ("--kind", "finetune", "--lr-scale", "2", "--kd-alpha", str(kd))
        _, wall = cli("baseline", str(demo), *args)
        record("ft2kd", newest(demo / "baselines"), wall)
    if (not only or "random" in only) and "random" not in res:
        before = {p.name for p in (demo / "baselines").iterdir()}
        _, wall = cli("baseline", str(demo), "--kind", "random")
        after = [p for p in (demo / "baselines").iterdir() if p.name not in before]
        record("random", after[0], wall)
    if (not only or "nocross" in only) and "nocross" not in res:
        prof = profile_for(base, out, seed, f"nocross-s{seed}", crossover_rate=0.0, soup=0)
        _, wall = cli("--profile", str(prof), "--headless")
        record("nocross", newest(out / f"nocross-s{seed}"), wall)
    return res


def table(results: dict[int, dict[str, dict]]) -> str:
    seeds = sorted(s for s in results if "demo" in results[s])
    names = [n for n in CONFIGS if all(n in results[s] for s in seeds)]
    lines = [
        f"seeds {', '.join(map(str, seeds))}; test = validation rows 128–499 (never selected on)",
        "",
        "| configuration | test loss, mean ± sd | champion better by | tokens vs demo | gap closed (test) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    demo = [results[s]["demo"]["test"] for s in seeds]
    for n in names:
        xs = [results[s][n]["test"] for s in seeds]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        adv = statistics.mean(
            100 * (results[s][n]["test"] - results[s]["demo"]["test"]) / results[s][n]["test"]
            for s in seeds
        )
        tok = statistics.mean(results[s][n]["tokens"] / results[s]["demo"]["tokens"] for s in seeds)
        gaps = [results[s][n]["gap_test"] for s in seeds if results[s][n]["gap_test"] is not None]
        gap = f"{100 * statistics.mean(gaps):.1f}%" if gaps else "—"
        wall = statistics.mean(results[s][n]["wall"] for s in seeds)
        lines.append(
            f"| {CONFIGS[n]} | {statistics.mean(xs):.4f} ± {sd:.4f} | "
            f"{'—' if n == 'demo' else f'{adv:+.2f}%'} | {tok:.3f} | {gap} | {wall:.0f} |"
        )
    lines.append("")
    lines.append(
        "per seed: "
        + "; ".join(
            f"seed {s}: " + ", ".join(f"{n} {results[s][n]['test']:.4f}" for n in names)
            for s in seeds
        )
    )
    lines.append(f"demo mean test {statistics.mean(demo):.4f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "demo.toml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", help="where the runs go (default: a temporary directory)")
    ap.add_argument(
        "--only", default="", help="comma-separated configurations besides demo (default: all)"
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="threads per worker (0: the profile's own)"
    )
    ap.add_argument(
        "--collect",
        nargs="+",
        metavar="RESULTS.json",
        help="only print the table of earlier runs' results.json files (seeds run apart)",
    )
    args = ap.parse_args()
    if args.collect:
        merged: dict[int, dict[str, dict]] = {}
        for f in args.collect:
            merged.update({int(k): v for k, v in json.loads(Path(f).read_text()).items()})
        print(table(merged))
        return 0
    global THREADS
    THREADS = args.threads
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-science-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    only = {x for x in args.only.split(",") if x}
    print(f"runs under {out}", flush=True)
    results: dict[int, dict[str, dict]] = {}
    if (out / "results.json").is_file():  # resume: configurations already measured are kept
        results = {int(k): v for k, v in json.loads((out / "results.json").read_text()).items()}
    for seed in args.seeds:
        one_seed(Path(args.profile).resolve(), out, seed, only, results)
        print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
