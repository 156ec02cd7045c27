"""Crossover cost: LoRA-space children vs a full-model mergekit SLERP of the same pair.

Measured side by side in one run, on a tiny Llama shaped like the demo student (hidden 256,
6 layers, built in a temp dir, no downloads) and two adapters of ranks 8 and 32 on
q_proj/v_proj:

  lora <method>    ``engine.genomes.lora.crossover`` → a rank-16 child (tensors in memory)
  mergekit slerp   ``run_merge`` SLERP (t=0.5) of the two *merged* checkpoints (base+adapter,
                   prepared once beforehand through our mergekit recipe), written to disk

and the ratio mergekit / lora per method. A full-model mergekit TIES (weight 0.5, density 0.5
against the base) is timed as well, for context beside ``lora ties``. The one-off cost of preparing the two merged
checkpoints is printed too: a full-model route pays it for every new parent.

    python benchmarks/bench_crossover.py [--repeat 20] [--mk-repeat 5] [--child-rank 16]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = ["q_proj", "v_proj"]


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-crossover-"))
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=20, help="children per LoRA method")
    ap.add_argument("--mk-repeat", type=int, default=5, help="mergekit SLERP merges")
    ap.add_argument("--child-rank", type=int, default=16)
    args = ap.parse_args()

    import peft
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from engine.export import export_peft_adapter, merge_with_mergekit, write_mergekit_recipe
    from engine.genomes import lora

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=2048,
    )
    base = LlamaForCausalLM(cfg).eval()
    base.save_pretrained(tmp / "base")
    n_params = sum(p.numel() for p in base.parameters())

    parents, scalings = [], []
    for r, seed in ((8, 1), (32, 2)):
        torch.manual_seed(seed)
        lcfg = peft.LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False
        )
        sd = peft.get_peft_model_state_dict(peft.get_peft_model(copy.deepcopy(base), lcfg))
        parents.append({k: v * 0.1 if k.endswith("lora_B.weight") else v for k, v in sd.items()})
        scalings.append(2.0)
    (a, b), (sa, sb) = parents, scalings
    rc = args.child_rank

    rows = []
    for method in lora.CROSSOVER_METHODS:
        gen = torch.Generator().manual_seed(0)
        lora.crossover(
            method, a, sa, b, sb, child_rank=rc, child_scaling=2.0, generator=gen
        )  # warm-up
        t, (_, info) = timed(
            lambda m=method, g=gen: lora.crossover(
                m, a, sa, b, sb, child_rank=rc, child_scaling=2.0, generator=g
            ),
            args.repeat,
        )
        rows.append((method, t, info["energy_kept"]))

    # full-model route: base+adapter → merged checkpoints (once), then mergekit SLERP per child
    t0 = time.perf_counter()
    merged = []
    for i, (t_, r) in enumerate(zip(parents, (8, 32), strict=True)):
        ad = export_peft_adapter(
            base,
            t_,
            rank=r,
            alpha=2.0 * r,
            dropout=0.0,
            target_modules=TARGETS,
            base_model_name_or_path=str(tmp / "base"),
            out_dir=tmp / f"adapter{i}",
        )
        recipe = write_mergekit_recipe(str(tmp / "base"), ad, tmp / f"recipe{i}.yaml")
        merged.append(merge_with_mergekit(recipe, tmp / f"merged{i}"))
    prep = (time.perf_counter() - t0) / 2

    slerp_cfg = MergeConfiguration.model_validate(
        {
            "merge_method": "slerp",
            "base_model": str(merged[0]),
            "models": [{"model": str(merged[0])}, {"model": str(merged[1])}],
            "parameters": {"t": 0.5},
            "dtype": "float32",
        }
    )
    options = MergeOptions(cuda=False, copy_tokenizer=False, write_model_card=False, quiet=True)
    counter = iter(range(10**6))

    def mk_slerp():
        run_merge(slerp_cfg, str(tmp / f"slerp{next(counter)}"), options=options)
        for ref in slerp_cfg.referenced_models():  # cold loaders each time, like a new pair
            loader = LoaderCache().loaders.pop(ref, None)
            if loader is not None:
                loader.flush()

    mk_slerp()  # warm-up (imports, planner)
    t_mk, _ = timed(mk_slerp, args.mk_repeat)

    # context: the full-model counterpart of ``lora ties`` (task vectors against the base)
    ties_cfg = MergeConfiguration.model_validate(
        {
            "merge_method": "ties",
            "base_model": str(tmp / "base"),
            "models": [
                {"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}} for m in merged
            ],
            "dtype": "float32",
        }
    )

    def mk_ties():
        run_merge(ties_cfg, str(tmp / f"ties{next(counter)}"), options=options)
        for ref in ties_cfg.referenced_models():
            loader = LoaderCache().loaders.pop(ref, None)
            if loader is not None:
                loader.flush()

    t_mk_ties, _ = timed(mk_ties, max(1, args.mk_repeat // 2))

    print(
        f"tiny Llama: hidden 256, 6 layers, {n_params / 1e6:.1f}M params; adapters r=8 × r=32 on "
        f"{'/'.join(TARGETS)} ({len(lora.modules(a))} modules) → child rank {rc}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'route':<28}{'ms / child':>12}{'energy kept':>13}{'mergekit SLERP ÷ this':>24}")
    for method, t, e in rows:
        print(f"{'lora ' + method:<28}{t * 1e3:>12.2f}{e:>13.3f}{t_mk / t:>23.1f}×")
    print(f"{'mergekit slerp (full model)':<28}{t_mk * 1e3:>12.2f}{'—':>13}{1.0:>23.1f}×")
    print(
        f"{'mergekit ties (full model)':<28}{t_mk_ties * 1e3:>12.2f}{'—':>13}{t_mk / t_mk_ties:>23.1f}×"
    )
    print(
        f"{'  + per parent base+adapter':<28}{prep * 1e3:>12.2f}   (one-off merge to a full checkpoint)"
    )


if __name__ == "__main__":
    main()
