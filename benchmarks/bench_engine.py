"""Engine efficiency: one generation run by the engine vs a bare single-process PyTorch loop.

Both do the same work on the same tokens: train the same N genomes (same seeds, steps, batches)
and evaluate them on the validation split with mixed-adapter batches. The engine adds worker
processes, messages, events, checkpoints and logging; the ratio bare / engine is the fraction of
the engine's time that is real work (target ≥ 0.8).

    python benchmarks/bench_engine.py [--profile profiles/demo.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def engine_generation(profile_path: Path, out: Path) -> tuple[float, float, list[dict], Path]:
    from engine.orchestrator import Orchestrator
    from engine.profile import load_profile, parse_profile
    from engine.rundir import RunDir

    text = load_profile(profile_path).to_toml()
    text = "\n".join(
        "generations = 1" if line.startswith("generations =") else line
        for line in text.splitlines()
    )
    profile = parse_profile(text, source=out / "bench.toml")
    run = RunDir.create(out, "bench", text)
    t0 = time.perf_counter()
    asyncio.run(Orchestrator(profile, run).run())
    total = time.perf_counter() - t0
    ev = [json.loads(line) for line in (run.path / "events.jsonl").read_text().splitlines()]
    gen = next(e for e in ev if e["kind"] == "generation_finished")["seconds"]
    state = json.loads((run.path / "gen_0000" / "state.json").read_text())
    return gen, total, [i["genome"] for i in state["population"]], run.path


def bare_loop(profile_path: Path, genomes: list[dict]) -> tuple[float, float]:
    """The same training and evaluation, written as one plain PyTorch + PEFT loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import read_examples, tokenize
    from engine.losses import token_losses
    from engine.profile import load_profile

    prof = load_profile(profile_path)
    t_load = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(prof.student.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(prof.student.model)
    d = prof.data
    train = tokenize(
        read_examples(d.train, d.format, limit=d.max_train_examples), tok, d.max_seq_len
    )
    val = tokenize(
        read_examples(d.validation, d.format, limit=d.max_val_examples), tok, d.max_seq_len
    )
    for p in base.parameters():
        p.requires_grad_(False)
    model = get_peft_model(
        base,
        LoraConfig(r=1, target_modules=list(prof.population.target_modules)),
        adapter_name="_host",
    )
    load = time.perf_counter() - t_load

    t0 = time.perf_counter()
    trained = []
    for k, g in enumerate(genomes):
        name = f"i{k}"
        torch.manual_seed(g["seed"])
        model.add_adapter(
            name,
            LoraConfig(
                r=g["rank"],
                lora_alpha=g["alpha"],
                lora_dropout=g["dropout"],
                target_modules=g["target_modules"],
            ),
        )
        model.set_adapter(name)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=g["learning_rate"], weight_decay=prof.training.weight_decay
        )
        gen = torch.Generator().manual_seed(g["seed"])
        model.train()
        for _ in range(prof.training.steps_per_generation):
            for _ in range(prof.training.gradient_accumulation):
                idx = torch.randint(len(train), (d.batch_size,), generator=gen)
                logits = model(
                    input_ids=train.input_ids[idx], attention_mask=train.attention_mask[idx]
                ).logits
                s, c = token_losses(logits, train.labels[idx])
                (s.sum() / c.sum() / prof.training.gradient_accumulation).backward()
            torch.nn.utils.clip_grad_norm_(params, prof.training.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        trained.append(name)
    model.set_adapter("_host")
    n = d.eval_batch_size
    with torch.no_grad():
        for start in range(0, len(val), n):
            ids, mask, labels = (
                t[start : start + n] for t in (val.input_ids, val.attention_mask, val.labels)
            )
            group = max(1, d.eval_rows_per_pass // ids.size(0))
            for g0 in range(0, len(trained), group):
                chunk = trained[g0 : g0 + group]
                logits = model(
                    input_ids=ids.repeat(len(chunk), 1),
                    attention_mask=mask.repeat(len(chunk), 1),
                    adapter_names=[nm for nm in chunk for _ in range(ids.size(0))],
                ).logits
                token_losses(logits, labels.repeat(len(chunk), 1))
    return time.perf_counter() - t0, load


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "demo.toml"))
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        gen_s, total_s, genomes, _ = engine_generation(Path(args.profile), Path(tmp))
    torch.set_num_threads(os.cpu_count() or 1)
    bare_s, load_s = bare_loop(Path(args.profile), genomes)
    print(f"engine efficiency on {args.profile}: {len(genomes)} individuals trained and evaluated")
    print(
        f"  engine generation 0          {gen_s:7.2f} s   (whole run incl. worker start-up and export: {total_s:.2f} s)"
    )
    print(
        f"  bare single-process loop     {bare_s:7.2f} s   (model load {load_s:.2f} s, not counted)"
    )
    print(f"  ratio bare/engine            {bare_s / gen_s:.3f}   (target ≥ 0.8)")


if __name__ == "__main__":
    main()
