"""Pruning on the embedded default: perplexity unpruned / pruned / healed, size and speed.

Runs the demo profile with the ``[prune]`` options given (default ``layers`` 0.25: 2 of the
student's 8 blocks, those of lowest Block Influence) and ``--generations`` generations of LoRA
healing (default 1), then prints the figures of the run's prune_report.json beside the champion's
validation perplexity.

    python benchmarks/bench_prune.py [--layers 0.25] [--layer-score influence|angular]
                                     [--heads 0] [--width 0] [--importance magnitude]
                                     [--sparsity 0] [--generations 1] [--size 8] [--steps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    from conftest import demo_profile_text

    from engine.orchestrator import Orchestrator
    from engine.profile import parse_profile
    from engine.rundir import RunDir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=float, default=0.25)
    ap.add_argument("--layer-score", default="influence", choices=["influence", "angular"])
    ap.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads")
    ap.add_argument("--width", type=float, default=0.0, help="fraction of MLP channels")
    ap.add_argument("--importance", default="magnitude", choices=["magnitude", "taylor"])
    ap.add_argument("--sparsity", type=float, default=0.0, help="Wanda: fraction zeroed per row")
    ap.add_argument("--generations", type=int, default=1)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-prune-"))
    text = demo_profile_text(
        out,
        prune__layers=args.layers,
        prune__layer_score=args.layer_score,
        prune__heads=args.heads,
        prune__width=args.width,
        prune__sparsity=args.sparsity,
        prune__importance=args.importance,
        population__size=args.size,
        evolution__generations=args.generations,
        evolution__sizes=None,
        training__steps_per_generation=args.steps,
    )
    path = out / "prune.toml"
    path.write_text(text)
    profile = parse_profile(text, source=path)
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    finished = asyncio.run(Orchestrator(profile, run).run())
    r = json.loads((run.path / "pruned" / "prune_report.json").read_text())
    healed = math.exp(-finished.champion_fitness)
    print(f"\npruning: {r['method']}, then {args.generations} generation(s) of healing")
    print(f"blocks {r['blocks_before']} → {r['blocks_after']} (removed {r['removed']})")
    if r.get("block_influence") is not None:
        print("block influence: " + ", ".join(f"{b:.4f}" for b in r["block_influence"]))
    if r.get("angular_distance") is not None:
        print("angular distance by start: " + ", ".join(f"{d:.4f}" for d in r["angular_distance"]))
    if r.get("heads_after") is not None:
        print(
            f"attention heads {r['heads_before']} → {r['heads_after']}, key/value heads "
            f"{r['kv_heads_before']} → {r['kv_heads_after']} (removed per block: "
            f"{r['heads_removed']})"
        )
    if r.get("mlp_width_after") is not None:
        print(f"MLP width {r['mlp_width_before']} → {r['mlp_width_after']} ({args.importance})")
    if r.get("sparsity_after") is not None:
        print(
            f"decoder linear sparsity {r['sparsity_before']:.4f} → {r['sparsity_after']:.4f}; "
            f"non-zero parameters {r['nonzero_params_before'] / 1e6:.3f}M → "
            f"{r['nonzero_params_after'] / 1e6:.3f}M"
        )
    print(f"parameters {r['params_before'] / 1e6:.3f}M → {r['params_after'] / 1e6:.3f}M")
    print(f"safetensors bytes {r['bytes_before']} → {r['bytes_after']}")
    print(f"forward tokens/s {r['tokens_per_s_before']:.0f} → {r['tokens_per_s_after']:.0f}")
    stages = r.get("stages") or []
    for stage in stages if len(stages) > 1 else []:  # each method's own step
        print(
            f"  after {stage['method']}: {stage['params_after'] / 1e6:.3f}M parameters, "
            f"perplexity {stage['perplexity_after']:.2f}"
        )
    print(
        f"validation perplexity: unpruned {r['perplexity_before']:.2f} · pruned "
        f"{r['perplexity_after']:.2f} · healed (champion {finished.champion}) {healed:.2f}"
    )
    print(f"pruning took {r['seconds']:.1f}s")
    print(f"run: {run.path}")


if __name__ == "__main__":
    main()
