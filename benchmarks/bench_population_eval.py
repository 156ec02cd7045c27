"""Population evaluation throughput: many adapters in one forward pass vs one adapter at a time.

Measured side by side in one run on the demo student, with N individuals of ranks drawn from
{8, 16, 32} on the profile's target modules:

  batched   mixed-adapter forwards (PEFT ``adapter_names``), as the coliseum runs them: the
            profile's eval_rows_per_pass ÷ eval_batch_size individuals share each pass
  one pass  all N individuals in a single mixed-adapter forward
  swapping  ``set_adapter`` per individual, one forward each
  ideal     N × a plain base-model forward on the same tokens (LoRA for free)

and the ratio ideal / batched (target ≥ 0.85).

    python benchmarks/bench_population_eval.py [--profile profiles/demo.toml] [--n 16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "demo.toml"))
    ap.add_argument("--n", type=int, default=16, help="individuals")
    ap.add_argument(
        "--rows",
        type=int,
        default=None,
        help="sequences per individual (default: the profile's eval_batch_size)",
    )
    ap.add_argument(
        "--rows-per-pass", type=int, default=None, help="default: the profile's eval_rows_per_pass"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from engine.profile import load_profile
    from engine.workers.coliseum import HOST_ADAPTER, Coliseum
    from engine.workers.common import setup_process

    setup_process(0)
    profile = load_profile(args.profile)
    go = threading.Event()
    go.set()
    col = Coliseum("bench", args.device, profile, queue.Queue(), go)
    model = col.model
    gen = torch.Generator().manual_seed(0)
    ranks = [(8, 16, 32)[k % 3] for k in range(args.n)]
    names = []
    for k, r in enumerate(ranks):
        genome = {
            "rank": r,
            "alpha": 2.0 * r,
            "target_modules": list(profile.population.target_modules),
            "dropout": 0.0,
            "learning_rate": 1e-3,
            "seed": k,
        }
        name = f"ind_{k}"
        col._add(name, genome, None)
        with torch.no_grad():  # trained-looking adapters: nonzero B
            for pn, p in model.named_parameters():
                if f"lora_B.{name}." in pn:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        names.append(name)
    model.set_adapter(HOST_ADAPTER)
    split = col.val_split
    rows_wanted = args.rows or profile.data.eval_batch_size
    per_pass = args.rows_per_pass or profile.data.eval_rows_per_pass
    ids = split.input_ids[:rows_wanted].to(args.device)
    mask = split.attention_mask[:rows_wanted].to(args.device)
    n, rows = len(names), ids.size(0)
    big_ids, big_mask = ids.repeat(n, 1), mask.repeat(n, 1)
    adapter_names = [nm for nm in names for _ in range(rows)]

    def batched_in(group: int):
        def run():
            for g0 in range(0, n, group):
                chunk = names[g0 : g0 + group]
                k = len(chunk)
                model(
                    input_ids=ids.repeat(k, 1),
                    attention_mask=mask.repeat(k, 1),
                    adapter_names=[nm for nm in chunk for _ in range(rows)],
                )

        return run

    group = max(1, per_pass // rows)
    batched = batched_in(group)

    def one_pass():
        model(input_ids=big_ids, attention_mask=big_mask, adapter_names=adapter_names)

    def swapping():
        for nm in names:
            model.set_adapter(nm)
            model(input_ids=ids, attention_mask=mask)
        model.set_adapter(HOST_ADAPTER)

    def ideal():
        with model.disable_adapter():
            for _ in names:
                model(input_ids=ids, attention_mask=mask)

    def base_one_pass():
        with model.disable_adapter():
            model(input_ids=big_ids, attention_mask=big_mask)

    def timeit(fn):
        with torch.no_grad():
            fn()  # warm-up
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t = {
        name: timeit(fn)
        for name, fn in [
            ("batched", batched),
            ("one_pass", one_pass),
            ("swapping", swapping),
            ("ideal", ideal),
            ("base_one_pass", base_one_pass),
        ]
    }
    groups = {g: timeit(batched_in(g)) for g in (1, 2, 4, 8) if g < n and g != group}
    tokens = int(mask.sum()) * n
    print(
        f"population evaluation: {n} individuals (ranks {sorted(set(ranks))}) × {rows} sequences × "
        f"{ids.size(1)} tokens, device {args.device}, torch threads {torch.get_num_threads()}, median of {args.repeat}"
    )
    print(f"  batched = {group} individuals × {rows} rows per pass (eval_rows_per_pass {per_pass})")
    for name in ("batched", "one_pass", "swapping", "ideal", "base_one_pass"):
        print(f"  {name:<14} {t[name] * 1000:8.1f} ms   {tokens / t[name]:9.0f} tokens/s")
    for g, tg in groups.items():
        print(
            f"  batched, {g:>2} adapters/pass {tg * 1000:8.1f} ms   {tokens / tg:9.0f} tokens/s   ideal/this {t['ideal'] / tg:.3f}"
        )
    print(f"  ratio ideal/batched           {t['ideal'] / t['batched']:.3f}   (target ≥ 0.85)")
    print(
        f"  ratio swapping/batched        {t['swapping'] / t['batched']:.3f}   (speed-up of batching over swapping)"
    )
    print(
        f"  ratio base_one_pass/batched   {t['base_one_pass'] / t['batched']:.3f}   (LoRA cost vs one plain pass of all rows)"
    )


if __name__ == "__main__":
    main()
