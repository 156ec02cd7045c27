"""Workers with a fault injected, for tests/faults. A spawned worker imports this module by name
(the pool pickles the worker class by reference), so it lives beside the tests, not in engine/.

``OomColiseum`` is the real coliseum — the real model, PEFT adapters, training loop and mixed
evaluation — whose model raises ``torch.OutOfMemoryError``, the exception a CUDA allocator
raises, from inside a forward pass that holds more rows than the limits in the environment
variable ``GENESIS_TEST_OOM`` allow, as a GPU of that size would:

    train_rows=N   a training forward pass of more than N rows runs out of memory
    min_rank=R     … only for adapters of rank R or more (bigger adapters, more memory)
    eval_rows=N    an evaluation forward pass of more than N rows runs out of memory
"""

from __future__ import annotations

import os
from typing import Any

from engine.workers.coliseum import Coliseum


def limits() -> dict[str, int]:
    spec = os.environ.get("GENESIS_TEST_OOM", "")
    return {k: int(v) for k, v in (part.split("=") for part in spec.split(",") if part)}


class OomColiseum(Coliseum):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        import torch

        lim = limits()
        model = self.model

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                return
            rows = int(ids.shape[0])
            if module.training:
                adapter = model.active_adapter
                rank = model.peft_config[adapter].r if adapter in model.peft_config else 0
                limit = lim.get("train_rows", 0) if rank >= lim.get("min_rank", 0) else 0
            else:
                limit = lim.get("eval_rows", 0)
            if limit and rows > limit:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate activations for {rows} rows "
                    f"(this test's device holds {limit})"
                )

        model.register_forward_pre_hook(hook, with_kwargs=True)
