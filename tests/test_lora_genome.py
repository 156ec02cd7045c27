"""LoRA genome math: key format, factor, crossover (linear/slerp/ties/dare), mutate, change_rank."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from mergekit.merge_methods.slerp import slerp as mergekit_slerp
from transformers import LlamaConfig, LlamaForCausalLM

from engine.genomes import lora as L

TARGETS = ["q_proj", "v_proj"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    return LlamaForCausalLM(cfg).eval()


def peft_adapter(base, r: int, alpha: float, seed: int):
    """A PEFT model with one random (non-zero B) adapter, and its state dict."""
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg)
    return pm, peft.get_peft_model_state_dict(pm)


def rand_adapter(r: int, seed: int, shapes=((64, 48), (32, 48), (64, 64)), scale=1.0):
    g = gen(seed)
    return L.from_modules(
        {
            f"base_model.model.model.layers.{i}.self_attn.q_proj": (
                torch.randn(r, n_in, generator=g) * scale / math.sqrt(n_in),
                torch.randn(n_out, r, generator=g) * scale / math.sqrt(r),
            )
            for i, (n_out, n_in) in enumerate(shapes)
        }
    )


def deltas(t, s):
    return {p: L.delta(a, b, s) for p, (a, b) in L.modules(t).items()}


def truncated(dW: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(dW.double(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def assert_close_rel(x: torch.Tensor, y: torch.Tensor, rtol: float):
    x, y = x.double(), y.double()
    scale = max(float(y.abs().max()), 1e-12)
    assert float((x - y).abs().max()) <= rtol * scale, float((x - y).abs().max()) / scale


# ---------------------------------------------------------------------------- representation
def test_peft_key_format_and_scaling(tiny_llama):
    pm, sd = peft_adapter(tiny_llama, r=8, alpha=16, seed=1)
    mods = L.modules(sd)
    assert len(mods) == 2 * 2
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    A, B = mods[prefix]
    assert A.shape == (8, 64) and B.shape == (64, 8)
    assert list(L.from_modules(mods)) == list(sd)
    # ΔW = (alpha / r) · B @ A is exactly what PEFT itself applies
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(L.delta(A, B, 16 / 8), layer.get_delta_weight("default"))


def test_modules_rejects_foreign_and_unpaired_keys():
    t = rand_adapter(4, 0)
    with pytest.raises(ValueError, match="not a LoRA"):
        L.modules({**t, "base_model.model.lm_head.weight": torch.zeros(2, 2)})
    key = next(k for k in t if k.endswith("lora_B.weight"))
    with pytest.raises(ValueError, match="missing"):
        L.modules({k: v for k, v in t.items() if k != key})


def test_crossover_child_loads_into_peft(tiny_llama):
    _, sa = peft_adapter(tiny_llama, r=8, alpha=16, seed=1)
    _, sb = peft_adapter(tiny_llama, r=32, alpha=32, seed=2)
    child, _ = L.crossover(
        "ties", sa, 2.0, sb, 1.0, child_rank=16, child_scaling=2.0, generator=gen(0)
    )
    pm = peft.get_peft_model(
        copy.deepcopy(tiny_llama), peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS)
    )
    res = peft.set_peft_model_state_dict(pm, child)
    assert not res.unexpected_keys
    got = peft.get_peft_model_state_dict(pm)
    assert got.keys() == child.keys() and all(torch.equal(got[k], child[k]) for k in child)


# ---------------------------------------------------------------------------- factor
def test_factor_exact_at_rank_at_least_r():
    g = gen(3)
    dW = torch.randn(40, 5, generator=g) @ torch.randn(5, 30, generator=g)
    for rank in (5, 8, 64):
        A, B, kept = L.factor(dW, rank, 0.5)
        assert A.shape == (rank, 30) and B.shape == (40, rank)
        assert kept == pytest.approx(1.0, abs=1e-6)
        assert_close_rel(L.delta(A, B, 0.5), dW, 1e-5)
    A, B, kept = L.factor(dW, 2, 0.5)
    S = torch.linalg.svdvals(dW.double())
    assert kept == pytest.approx(float((S[:2] ** 2).sum() / (S**2).sum()), rel=1e-5)
    assert_close_rel(L.delta(A, B, 0.5), truncated(dW, 2), 1e-5)
    # balanced split: both factors carry sqrt(S / scaling)
    assert torch.allclose(A.norm(dim=1), B.norm(dim=0), rtol=1e-4)


def test_factor_of_zero_matrix():
    A, B, kept = L.factor(torch.zeros(6, 4), 3, 1.0)
    assert kept == 1.0 and not A.any() and not B.any()


# ---------------------------------------------------------------------------- crossover
RANK_CASES = [(8, 32, 16), (32, 8, 8)]


@pytest.mark.parametrize("method", L.CROSSOVER_METHODS)
@pytest.mark.parametrize("ra,rb,rc", RANK_CASES)
def test_crossover_shapes_and_determinism(method, ra, rb, rc):
    a, b = rand_adapter(ra, 1), rand_adapter(rb, 2)
    run = lambda seed: L.crossover(  # noqa: E731
        method, a, 2.0, b, 0.5, child_rank=rc, child_scaling=1.5, weight=0.4, generator=gen(seed)
    )
    child, info = run(7)
    assert child.keys() == a.keys()
    for p, (A, B) in L.modules(child).items():
        Aa, Ba = L.modules(a)[p]
        assert A.shape == (rc, Aa.shape[1]) and B.shape == (Ba.shape[0], rc)
        assert A.dtype == B.dtype == torch.float32
    assert info["method"] == method and info["modules"] == 3
    assert 0.0 < info["energy_kept_min"] <= info["energy_kept"] <= 1.0 + 1e-6
    again, _ = run(7)
    assert all(torch.equal(child[k], again[k]) for k in child)
    other, _ = run(8)
    differs = any(not torch.equal(child[k], other[k]) for k in child)
    # only dare draws randomness here; the others are pure functions of the parents (they use
    # the generator only to revive dead directions, which a rank-40 ΔW at rank ≤ 16 has none of)
    assert differs == (method == "dare")


@pytest.mark.parametrize("method", L.CROSSOVER_METHODS)
def test_crossover_keeps_dtype_of_parent(method):
    a = {k: v.to(torch.bfloat16) for k, v in rand_adapter(8, 1).items()}
    b = rand_adapter(32, 2)
    child, _ = L.crossover(
        method, a, 1.0, b, 1.0, child_rank=16, child_scaling=1.0, generator=gen(0)
    )
    assert all(v.dtype == torch.bfloat16 for v in child.values())


@pytest.mark.parametrize("ra,rb,rc", RANK_CASES)
def test_linear_equals_dense_computation(ra, rb, rc):
    a, b = rand_adapter(ra, 1), rand_adapter(rb, 2)
    w, sa, sb = 0.3, 2.0, 0.5
    dense = {
        p: w * da + (1 - w) * db
        for (p, da), db in zip(deltas(a, sa).items(), deltas(b, sb).values(), strict=True)
    }
    child, info = L.crossover(
        "linear", a, sa, b, sb, child_rank=rc, child_scaling=1.0, weight=w, generator=gen(0)
    )
    for p, dc in deltas(child, 1.0).items():
        assert_close_rel(dc, truncated(dense[p], rc), 1e-4)
    # at a rank that holds all of ΔW (r_a + r_b = 40) the child is the dense combination itself
    full, info = L.crossover(
        "linear", a, sa, b, sb, child_rank=ra + rb, child_scaling=1.0, weight=w, generator=gen(0)
    )
    assert info["energy_kept"] == pytest.approx(1.0, abs=1e-6)
    for p, dc in deltas(full, 1.0).items():
        assert_close_rel(dc, dense[p], 1e-5)


def test_module_in_one_parent_counts_as_zero():
    a, b = rand_adapter(8, 1), rand_adapter(8, 2)
    only = "base_model.model.model.layers.2.self_attn.q_proj"
    b = {k: v for k, v in b.items() if not k.startswith(only + ".")}
    child, _ = L.crossover(
        "linear", a, 1.0, b, 1.0, child_rank=16, child_scaling=1.0, weight=0.25, generator=gen(0)
    )
    assert_close_rel(deltas(child, 1.0)[only], 0.25 * deltas(a, 1.0)[only], 1e-5)


@pytest.mark.parametrize("ra,rb,rc", [(8, 32, 32), (32, 8, 32), (8, 32, 16)])
def test_slerp_endpoints_return_parents(ra, rb, rc):
    a, b = rand_adapter(ra, 1), rand_adapter(rb, 2)
    for w, parent, s, r in ((1.0, a, 2.0, ra), (0.0, b, 0.5, rb)):
        child, _ = L.crossover(
            "slerp", a, 2.0, b, 0.5, child_rank=rc, child_scaling=1.0, weight=w, generator=gen(0)
        )
        for p, dc in deltas(child, 1.0).items():
            want = deltas(parent, s)[p]
            if rc >= r:
                assert_close_rel(dc, want, 1e-5)
            else:
                assert_close_rel(dc, truncated(want, rc), 1e-4)


@pytest.mark.parametrize("w", [0.5, 0.2])
def test_slerp_matches_mergekit_on_flattened_delta(w):
    a, b = rand_adapter(8, 1), rand_adapter(32, 2, scale=3.0)
    child, _ = L.crossover(
        "slerp", a, 2.0, b, 0.5, child_rank=40, child_scaling=1.0, weight=w, generator=gen(0)
    )
    for (p, da), db in zip(deltas(a, 2.0).items(), deltas(b, 0.5).values(), strict=True):
        want = mergekit_slerp(torch.tensor(1 - w), da.reshape(1, -1), db.reshape(1, -1))
        assert_close_rel(deltas(child, 1.0)[p], want.reshape(da.shape), 1e-5)


def test_slerp_keeps_norm_of_orthogonal_parents_unlike_linear():
    # disjoint input columns make the two ΔW's orthogonal (Frobenius), with equal norms
    g = gen(4)
    A_a, B = torch.randn(4, 32, generator=g), torch.randn(16, 4, generator=g)
    A_a[:, 16:] = 0
    A_b = torch.roll(A_a, 16, dims=1)
    a = L.from_modules({"m": (A_a, B)})
    b = L.from_modules({"m": (A_b, B)})
    da, db = deltas(a, 1.0)["m"], deltas(b, 1.0)["m"]
    assert abs(float((da * db).sum())) < 1e-4 and float(da.norm()) == pytest.approx(
        float(db.norm())
    )
    s, _ = L.crossover("slerp", a, 1.0, b, 1.0, child_rank=8, child_scaling=1.0, generator=gen(0))
    lin, _ = L.crossover(
        "linear", a, 1.0, b, 1.0, child_rank=8, child_scaling=1.0, generator=gen(0)
    )
    assert float(deltas(s, 1.0)["m"].norm()) == pytest.approx(float(da.norm()), rel=1e-5)
    assert float(deltas(lin, 1.0)["m"].norm()) == pytest.approx(
        float(da.norm()) / math.sqrt(2), rel=1e-5
    )


def test_slerp_of_colinear_parents_is_linear():
    a = rand_adapter(8, 1)
    child, _ = L.crossover(
        "slerp", a, 1.0, a, 3.0, child_rank=8, child_scaling=1.0, weight=0.5, generator=gen(0)
    )
    for p, dc in deltas(child, 1.0).items():
        assert_close_rel(dc, 2.0 * deltas(a, 1.0)[p], 1e-5)


def _full_rank_pair():
    """Parents on 16×16 modules, so a rank-16 child holds the merged ΔW exactly."""
    shapes = ((16, 16), (16, 16))
    return rand_adapter(8, 5, shapes), rand_adapter(16, 6, shapes)


def _top_k(x: torch.Tensor, density: float) -> torch.Tensor:
    k = max(1, int(density * x.numel()))
    thresh = x.abs().flatten().sort(descending=True).values[k - 1]
    return x * (x.abs() >= thresh)


@pytest.mark.parametrize("w", [0.5, 0.7])
def test_ties_keeps_only_sign_consistent_entries(w):
    a, b = _full_rank_pair()
    child, _ = L.crossover(
        "ties",
        a,
        1.0,
        b,
        1.0,
        child_rank=16,
        child_scaling=1.0,
        weight=w,
        density=0.5,
        generator=gen(0),
    )
    for (p, da), db in zip(deltas(a, 1.0).items(), deltas(b, 1.0).values(), strict=True):
        ta, tb = _top_k(da, 0.5), _top_k(db, 0.5)
        elected = torch.where(w * ta + (1 - w) * tb >= 0, 1.0, -1.0)
        keep_a, keep_b = ta.sign() == elected, tb.sign() == elected
        num = w * ta * keep_a + (1 - w) * tb * keep_b
        den = w * keep_a + (1 - w) * keep_b
        want = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
        got = deltas(child, 1.0)[p]
        assert_close_rel(got, want, 1e-4)
        conflict = (ta * tb) < 0
        assert conflict.any()
        # in a sign conflict the child takes exactly one parent's (trimmed) value, never a mix
        g_c = got[conflict]
        assert torch.all(
            torch.isclose(g_c, ta[conflict], atol=1e-4)
            | torch.isclose(g_c, tb[conflict], atol=1e-4)
        )
        assert torch.all(got * elected >= -1e-4)


def test_dare_keeps_only_sign_consistent_entries():
    a, b = _full_rank_pair()
    w, d = 0.6, 0.5
    child, _ = L.crossover(
        "dare",
        a,
        1.0,
        b,
        1.0,
        child_rank=16,
        child_scaling=1.0,
        weight=w,
        density=d,
        generator=gen(0),
    )
    for (p, da), db in zip(deltas(a, 1.0).items(), deltas(b, 1.0).values(), strict=True):
        got = deltas(child, 1.0)[p]
        ca, cb = w * da / d, (1 - w) * db / d
        near = lambda x, got=got: torch.isclose(got, x, rtol=1e-4, atol=1e-4)  # noqa: E731
        conflict = (da * db) < 0
        # every entry is: dropped, one survivor, or (same signs only) both survivors summed
        assert torch.all(
            near(torch.zeros_like(got)) | near(ca) | near(cb) | (near(ca + cb) & ~conflict)
        )
        assert (conflict & ~near(torch.zeros_like(got))).any()  # conflicts occur and keep one
        kept_frac = float((~near(torch.zeros_like(got))).float().mean())
        assert 0.4 < kept_frac < 0.9


def test_ties_with_full_density_and_agreeing_signs_is_linear():
    a = rand_adapter(8, 1)  # b = a at 3× the scaling: every entry agrees in sign
    child, _ = L.crossover(
        "ties",
        a,
        1.0,
        a,
        3.0,
        child_rank=8,
        child_scaling=1.0,
        weight=0.5,
        density=1.0,
        generator=gen(0),
    )
    for p, dc in deltas(child, 1.0).items():
        assert_close_rel(dc, 2.0 * deltas(a, 1.0)[p], 1e-5)


def test_crossover_revives_directions_beyond_merged_rank():
    a, b = rand_adapter(4, 1), rand_adapter(4, 2)
    child, info = L.crossover(
        "linear", a, 1.0, b, 1.0, child_rank=16, child_scaling=1.0, generator=gen(0)
    )
    assert info["revived_directions"] == 3 * 8
    for p, (A, B) in L.modules(child).items():
        assert torch.all(A.abs().sum(dim=1) > 0)  # no dead (A row = 0 and B col = 0) direction
        assert not B[:, 8:].any()
        assert_close_rel(
            L.delta(A, B, 1.0), 0.5 * deltas(a, 1.0)[p] + 0.5 * deltas(b, 1.0)[p], 1e-5
        )


def test_crossover_rejects_bad_arguments():
    a, b = rand_adapter(4, 1), rand_adapter(4, 2)
    with pytest.raises(ValueError):
        L.crossover("mean", a, 1.0, b, 1.0, child_rank=4, child_scaling=1.0, generator=gen(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.crossover(
            "dare", a, 1.0, b, 1.0, child_rank=4, child_scaling=1.0, density=0.0, generator=gen(0)
        )
    bad = rand_adapter(4, 2, shapes=((8, 8), (32, 48), (64, 64)))
    with pytest.raises(ValueError, match="shapes differ"):
        L.crossover("linear", a, 1.0, bad, 1.0, child_rank=4, child_scaling=1.0, generator=gen(0))


# ---------------------------------------------------------------------------- mutate
def test_mutate_noise_scales_with_rms():
    t = rand_adapter(8, 1)
    big = {k: v * 100 for k, v in t.items()}
    m1, n1 = L.mutate(t, rate=1.0, scale=0.1, generator=gen(9))
    m2, n2 = L.mutate(big, rate=1.0, scale=0.1, generator=gen(9))
    assert n1 == n2 == len(t)
    for k in t:
        noise, noise_big = m1[k] - t[k], m2[k] - big[k]
        torch.testing.assert_close(noise_big, 100 * noise, rtol=1e-3, atol=1e-4)
        rms = float(t[k].pow(2).mean().sqrt())
        assert float(noise.pow(2).mean().sqrt()) == pytest.approx(0.1 * rms, rel=0.3)


def test_mutate_rate_zero_and_one():
    t = rand_adapter(8, 1)
    zero_key = next(k for k in t if k.endswith("lora_B.weight"))
    t[zero_key] = torch.zeros_like(t[zero_key])  # a not-yet-trained B
    same, n = L.mutate(t, rate=0.0, scale=1.0, generator=gen(0))
    assert n == 0 and all(torch.equal(same[k], t[k]) for k in t)
    changed, n = L.mutate(t, rate=1.0, scale=0.05, generator=gen(0))
    assert n == len(t) - 1
    assert torch.equal(changed[zero_key], t[zero_key])
    assert all(not torch.equal(changed[k], t[k]) for k in t if k != zero_key)
    again, _ = L.mutate(t, rate=1.0, scale=0.05, generator=gen(0))
    assert all(torch.equal(changed[k], again[k]) for k in t)


def test_mutate_partial_rate_is_seeded():
    t = rand_adapter(8, 1, shapes=((8, 8),) * 20)
    _, n = L.mutate(t, rate=0.3, scale=0.1, generator=gen(1))
    assert 0 < n < len(t)
    _, n_again = L.mutate(t, rate=0.3, scale=0.1, generator=gen(1))
    assert n == n_again


# ---------------------------------------------------------------------------- change_rank
def test_change_rank_shrink_keeps_best_approximation():
    t = rand_adapter(32, 1)
    out = L.change_rank(t, 0.5, 8, 2.0, gen(0))
    for (p, d0), d1 in zip(deltas(t, 0.5).items(), deltas(out, 2.0).values(), strict=True):
        assert L.modules(out)[p][0].shape[0] == 8
        assert_close_rel(d1, truncated(d0, 8), 1e-4)


def test_change_rank_grow_is_exact_and_new_directions_can_learn():
    t = rand_adapter(8, 1)
    out = L.change_rank(t, 2.0, 32, 0.5, gen(0))
    for (p, d0), d1 in zip(deltas(t, 2.0).items(), deltas(out, 0.5).values(), strict=True):
        A, B = L.modules(out)[p]
        assert A.shape[0] == 32 and B.shape[1] == 32
        assert_close_rel(d1, d0, 1e-5)
        assert torch.all(A[8:].abs().sum(dim=1) > 0) and not B[:, 8:].any()
        bound = 1 / math.sqrt(A.shape[1])  # kaiming_uniform(a=√5) bound, as PEFT's lora_A init
        assert float(A[8:].abs().max()) <= bound
    again = L.change_rank(t, 2.0, 32, 0.5, gen(0))
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_change_rank_of_untrained_adapter_is_a_fresh_init(tiny_llama):
    pm = peft.get_peft_model(
        copy.deepcopy(tiny_llama), peft.LoraConfig(r=4, target_modules=TARGETS)
    )
    t = peft.get_peft_model_state_dict(pm)  # B = 0
    out = L.change_rank(t, 2.0, 8, 2.0, gen(0))
    for A, B in L.modules(out).values():
        assert not B.any() and torch.all(A.abs().sum(dim=1) > 0)
