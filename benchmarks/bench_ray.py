"""The demo on the Ray executor with 1 and 2 coliseum actors, beside the local executor.

Each configuration runs the demo profile (cut to ``--generations``) from scratch in one process,
one after the other, on a private local Ray instance; the teacher's logit cache is built once
beforehand so no run pays for it. Printed: the wall time of the whole run (start-up — Ray,
pruning, model loading — included) and of its generations alone, and the ratios.

    python benchmarks/bench_ray.py [--generations 2] [--configs local:1,ray:1,ray:2,local:2]
    python benchmarks/bench_ray.py --configs ray:2,ray2nodes:2    # one Ray node against two

``ray2nodes`` runs on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: two
raylets, two object stores, each node its own temporary directory, the CPUs split between them),
so the pruned student, the logit cache and the adapters cross between nodes' object stores as
they would between boxes — without the network, and without more cores.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def profile(out: Path, generations: int, executor: str, coliseums: int, address: str = ""):
    from engine.profile import load_profile

    p = load_profile(ROOT / "profiles" / "demo.toml")
    return p.model_copy(
        update={
            "run": p.run.model_copy(update={"output_dir": out, "name": f"{executor}{coliseums}"}),
            "evolution": p.evolution.model_copy(update={"generations": generations}),
            "devices": p.devices.model_copy(
                update={
                    "executor": executor,
                    "coliseum": ["cpu"] * coliseums,
                    "ray_address": address,
                    # one thread each: the actors share the nodes' logical CPUs
                    **({"threads_per_worker": 1} if address else {}),
                }
            ),
        }
    )


async def one(prof) -> tuple[float, float, str]:
    from engine.events import GenerationFinished
    from engine.orchestrator import Orchestrator
    from engine.rundir import RunDir

    run = RunDir.create(prof.run.output_dir, prof.run.name, prof.to_toml())
    orch = Orchestrator(prof, run)
    gens: list[float] = []
    orch.subscribe(lambda e: gens.append(e.seconds) if isinstance(e, GenerationFinished) else None)
    t0 = time.perf_counter()
    done = await orch.run()
    assert done.status == "completed", done.reason
    return time.perf_counter() - t0, sum(gens), (run.path / "leaderboard.csv").read_text()


def two_nodes(out: Path, generations: int, n: int) -> tuple[float, float, str]:
    """The demo on a two-node Ray cluster on this machine: the cores split between the nodes."""
    from ray.cluster_utils import Cluster

    cores = os.cpu_count() or 2
    tmp = [out / "node-a", out / "node-b"]
    for d in tmp:
        d.mkdir(exist_ok=True)
    # logical CPUs enough for the teacher and n coliseums at one thread each, half on each node
    half = max(1, (n + 2) // 2)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": half, "env_vars": {"TMPDIR": str(tmp[0])}},
    )
    try:
        cluster.add_node(num_cpus=half, env_vars={"TMPDIR": str(tmp[1])})
        prof = profile(out, generations, "ray", n, cluster.address)
        result = asyncio.run(one(prof))
    finally:
        cluster.shutdown()
    landed = [sorted(p.name for p in d.glob("genesis-model-*")) for d in tmp]
    print(f"  {cores} cores; the pruned student landed on node a: {landed[0]}, node b: {landed[1]}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument(
        "--configs",
        default="local:1,ray:1,ray:2,local:2",
        help="executor:coliseum-workers, in order; the second is the ratios' baseline",
    )
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="genesis-bench-ray-"))
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    # The teacher's logit cache, built once under out/.cache and reused by every configuration.
    asyncio.run(one(profile(out, 1, "local", 1)))
    rows = []
    for executor, n in configs:
        if executor == "ray2nodes":
            wall, gens, board = two_nodes(out, args.generations, n)
        else:
            wall, gens, board = asyncio.run(one(profile(out, args.generations, executor, n)))
        rows.append((executor, n, wall, gens, board))
        print(
            f"{executor:5} {n} coliseum(s): run {wall:6.1f} s, generations {gens:6.1f} s",
            flush=True,
        )
    base = rows[1]
    print(f"\ndemo, {args.generations} generations, {os.cpu_count()} CPU cores")
    print(
        f"| executor | coliseum workers | run (s) | generations (s) | generations vs {base[0]} ×{base[1]} |"
    )
    print("|---|---|---|---|---|")
    for executor, n, wall, gens, _ in rows:
        print(f"| {executor} | {n} | {wall:.1f} | {gens:.1f} | {base[3] / gens:.2f} |")
    same = rows[0][4] == rows[1][4]
    print(
        f"{rows[0][0]} ×{rows[0][1]} and {rows[1][0]} ×{rows[1][1]} leaderboards identical: {same}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
