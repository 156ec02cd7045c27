"""AdamW's state across training stretches: an individual that keeps training next generation (an
elite), or a copy of one (PBT's exploit), continues with its moments instead of a cold optimizer.

The state travels like adapters do — safetensors bytes, no pickle — keyed by the parameter's name
with the adapter's name taken out, so it fits whatever name the adapter gets in the next worker.
torch has no portable, pickle-free form of an optimizer's state; this is that and nothing more.
"""

from __future__ import annotations

from typing import Any

SEP = "::"


def _key(param_name: str, adapter: str) -> str:
    return param_name.replace(f".{adapter}.", ".")


def pack(opt: Any, named: list[tuple[str, Any]], adapter: str) -> bytes:
    """``opt``'s per-parameter state (step, exp_avg, exp_avg_sq) as safetensors bytes."""
    import torch
    from safetensors.torch import save

    out: dict[str, torch.Tensor] = {}
    for name, p in named:
        st = opt.state.get(p)
        if not st:
            continue
        k = _key(name, adapter)
        for field, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            out[f"{k}{SEP}{field}"] = t.detach().to("cpu").contiguous()
    return save(out)


def unpack(blob: bytes, opt: Any, named: list[tuple[str, Any]], adapter: str) -> bool:
    """Load the state ``pack`` wrote into ``opt`` (whose learning rate and weight decay stay its
    own: a perturbed copy keeps its new hyper-parameters). False, and ``opt`` untouched, when the
    state does not fit these parameters (another rank or other target modules)."""
    from safetensors.torch import load

    saved = load(blob)
    by_param: dict[str, dict[str, Any]] = {}
    for key, t in saved.items():
        pname, _, field = key.rpartition(SEP)
        by_param.setdefault(pname, {})[field] = t
    keys = [_key(n, adapter) for n, _ in named]
    if set(keys) != set(by_param):
        return False
    for (_, p), k in zip(named, keys, strict=True):
        for field, t in by_param[k].items():
            if field != "step" and t.shape != p.shape:
                return False
    sd = opt.state_dict()
    index = {id(p): i for i, p in enumerate(q for g in opt.param_groups for q in g["params"])}
    state = {}
    for (_, p), k in zip(named, keys, strict=True):
        entry = {f: (t.to(p.device) if f != "step" else t) for f, t in by_param[k].items()}
        state[index[id(p)]] = entry
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    return True
