"""The math of LoRA genomes: crossover, mutation and rank changes of PEFT LoRA adapters.

A genome is an adapter's tensors, ``LoraTensors``: a ``dict[str, Tensor]`` in PEFT's adapter-file
key format, exactly what ``peft.get_peft_model_state_dict(model, adapter_name=...)`` returns and
``peft.set_peft_model_state_dict`` takes::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   # A: [r, in]
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight   # B: [out, r]

With ``scaling = alpha / r`` (no rsLoRA) a module's update is ΔW = scaling · B @ A.

Crossover works on ΔW, never on A and B separately
--------------------------------------------------
Mixing A's and B's separately (``(wA_a + (1-w)A_b)`` times ``(wB_a + (1-w)B_b)``) adds the
cross-terms ``B_a A_b`` and ``B_b A_a`` to the product: the known defect of PEFT's
``add_weighted_adapter`` for ``linear``/``ties``/``dare`` (huggingface/peft#3004); it also needs
equal ranks and is not invariant to the (arbitrary) basis of the rank-r subspace. Each parent's
ΔW, with its own scaling, is the only well-defined object, so every method combines ΔW's.

Why the child is re-factored by truncated SVD, not by concatenation
-------------------------------------------------------------------
The exact linear child ``[B_a B_b] @ [w s_a A_a; (1-w) s_b A_b]`` has rank r_a + r_b. Using that
concatenation as the child would make ranks grow every generation (8+32 -> 40 -> 80 ...), while
the child's rank is itself a gene drawn from the profile's rank set, and every adapter must stay
one of the ranks the trainer, the mixed-adapter batches and the memory budget were sized for. So
the child is the best rank-``child_rank`` approximation of its ΔW (Eckart-Young: truncated SVD),
and ``info["energy_kept"]`` says how much of ΔW (in squared singular values) survived.

For ``linear`` and ``slerp`` the child's ΔW is a combination of two low-rank products, so its SVD
is computed exactly without ever forming the dense out×in matrix: QR both thin factors and SVD the
small (r_a+r_b)² core. ``ties`` and ``dare`` act on individual entries of ΔW, so they must form
it densely and use a dense SVD.

Dead directions
---------------
A direction with A row = 0 *and* B column = 0 gets zero gradient for both (dL/dA ∝ Bᵀ, dL/dB ∝ A):
it can never learn. Whenever a re-factored child has more rank than its ΔW holds (growing the rank,
or a child rank above the rank of the merged ΔW), those directions get B column = 0 (ΔW unchanged)
and an A row drawn like PEFT's own init (kaiming-uniform, a=√5), exactly like a fresh adapter.

Determinism and dtypes: everything random comes from the ``torch.Generator`` passed in (a CPU
generator; random numbers are drawn on its device and moved). Math is done in float32 (float64
if an input is float64); results come back in the (first) parent's dtype and device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from mergekit.merge_methods.generalized_task_arithmetic import get_mask
from mergekit.sparsify import SparsificationMethod, sparsify
from torch import Tensor

__all__ = [
    "LoraTensors",
    "CrossoverMethod",
    "CROSSOVER_METHODS",
    "modules",
    "from_modules",
    "delta",
    "factor",
    "crossover",
    "mutate",
    "change_rank",
]

LoraTensors = dict[str, Tensor]
CrossoverMethod = Literal["linear", "slerp", "ties", "dare"]
CROSSOVER_METHODS: tuple[str, ...] = ("linear", "slerp", "ties", "dare")

_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"

# A singular value at or below this fraction of the largest one is treated as "no direction":
# float32 SVD of an exactly rank-k product leaves spurious values around 1e-7 relative.
_DEAD_RTOL = 1e-5
# mergekit's slerp threshold: above this |cos θ| the two vectors are treated as colinear.
_SLERP_DOT_THRESHOLD = 0.9995
_SLERP_EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Representation
# --------------------------------------------------------------------------------------------
def modules(t: LoraTensors) -> dict[str, tuple[Tensor, Tensor]]:
    """Group an adapter's tensors by module prefix: ``prefix -> (A [r, in], B [out, r])``.

    Raises ``ValueError`` for keys that are not LoRA A/B weights (DoRA magnitudes, biases,
    modules_to_save ...) rather than silently dropping them, and for unpaired or mis-shaped halves.
    """
    a_parts: dict[str, Tensor] = {}
    b_parts: dict[str, Tensor] = {}
    for key, value in t.items():
        if key.endswith(_A_SUFFIX):
            a_parts[key[: -len(_A_SUFFIX)]] = value
        elif key.endswith(_B_SUFFIX):
            b_parts[key[: -len(_B_SUFFIX)]] = value
        else:
            raise ValueError(f"not a LoRA A/B weight key: {key!r}")
    if a_parts.keys() != b_parts.keys():
        unpaired = sorted(a_parts.keys() ^ b_parts.keys())
        raise ValueError(f"LoRA modules missing their A or B half: {unpaired}")
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for prefix, a in a_parts.items():
        b = b_parts[prefix]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{prefix}: A {tuple(a.shape)} and B {tuple(b.shape)} are not [r, in] and [out, r]"
            )
        out[prefix] = (a, b)
    return out


def from_modules(m: dict[str, tuple[Tensor, Tensor]]) -> LoraTensors:
    """Inverse of :func:`modules` (PEFT's order: each module's A then its B)."""
    out: LoraTensors = {}
    for prefix, (a, b) in m.items():
        out[prefix + _A_SUFFIX] = a
        out[prefix + _B_SUFFIX] = b
    return out


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def delta(A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """ΔW = scaling · B @ A, in float32 (float64 if an input is float64)."""
    dt = _work_dtype(A, B)
    return (B.to(dt) @ A.to(dt)) * scaling


# --------------------------------------------------------------------------------------------
# Factorisation
# --------------------------------------------------------------------------------------------
def _check_rank_scaling(rank: int, scaling: float) -> None:
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not (scaling > 0 and math.isfinite(scaling)):
        raise ValueError(f"scaling must be positive and finite, got {scaling!r}")


def _split(
    U: Tensor, S: Tensor, Vh: Tensor, rank: int, scaling: float
) -> tuple[Tensor, Tensor, float]:
    """Rank-``rank`` factors of U·diag(S)·Vh with √(S/scaling) on both sides (zero-padded)."""
    out_f, in_f = U.shape[0], Vh.shape[1]
    k = min(rank, S.numel())
    root = torch.sqrt(S[:k].clamp_min(0) / scaling)
    A = torch.zeros(rank, in_f, dtype=S.dtype, device=S.device)
    B = torch.zeros(out_f, rank, dtype=S.dtype, device=S.device)
    A[:k] = root[:, None] * Vh[:k]
    B[:, :k] = U[:, :k] * root[None, :]
    total = float((S * S).sum())
    kept = float((S[:k] * S[:k]).sum())
    return A, B, (kept / total if total > 0 else 1.0)


def factor(dW: Tensor, rank: int, scaling: float) -> tuple[Tensor, Tensor, float]:
    """Best rank-``rank`` factorisation of ``dW`` (truncated SVD) as LoRA factors.

    Returns ``(A [rank, in], B [out, rank], energy_kept)`` with ``scaling · B @ A`` the truncated
    SVD of ``dW``: √S is split into both factors, each divided by √scaling. ``energy_kept`` is the
    kept Σ S² over the total (1.0 for a zero matrix). A ``rank`` above min(out, in) is zero-padded.
    """
    _check_rank_scaling(rank, scaling)
    dt = _work_dtype(dW)
    U, S, Vh = torch.linalg.svd(dW.to(dt), full_matrices=False)
    return _split(U, S, Vh, rank, scaling)


def _lowrank_svd(L: Tensor, R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact thin SVD of ``L @ R`` (L [out, k], R [k, in]) without forming the product.

    L = Q_L R_L, Rᵀ = Q_R R_R  =>  L @ R = Q_L (R_L R_Rᵀ) Q_Rᵀ; SVD of the small core only.
    """
    q_l, r_l = torch.linalg.qr(L, mode="reduced")
    q_r, r_r = torch.linalg.qr(R.T, mode="reduced")
    u_c, S, vh_c = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
    return q_l @ u_c, S, vh_c @ q_r.T


def _kaiming_rows(n: int, in_features: int, generator: torch.Generator) -> Tensor:
    """``n`` rows drawn like PEFT's lora_A init: kaiming_uniform_(a=√5) over fan_in = in."""
    rows = torch.empty(n, in_features, dtype=torch.float32, device=generator.device)
    torch.nn.init.kaiming_uniform_(rows, a=math.sqrt(5), generator=generator)
    return rows


def _revive_dead(A: Tensor, B: Tensor, S: Tensor, generator: torch.Generator) -> int:
    """In place: directions of (A, B) with no singular value behind them become learnable.

    A direction whose A row and B column are both (numerically) zero is dead: its gradients,
    dL/dA ∝ Bᵀ(...) and dL/dB ∝ (...)Aᵀ, are both zero, so training could never use it. Such a
    direction gets B column = 0 (ΔW is unchanged) and a fresh kaiming-uniform A row, like PEFT's
    own init of a new adapter, so B can start learning along it. Returns how many were revived.
    """
    rank = A.shape[0]
    s = torch.zeros(rank, dtype=S.dtype, device=S.device)
    k = min(rank, S.numel())
    s[:k] = S[:k]
    s_max = float(S.max()) if S.numel() else 0.0
    dead = (s <= _DEAD_RTOL * s_max).nonzero().flatten()
    if dead.numel():
        B[:, dead] = 0
        A[dead] = _kaiming_rows(dead.numel(), A.shape[1], generator).to(A.device, A.dtype)
    return int(dead.numel())


# --------------------------------------------------------------------------------------------
# Crossover
# --------------------------------------------------------------------------------------------
def _slerp_coefficients(w: float, nn_a: float, nn_b: float, dot_ab: float) -> tuple[float, float]:
    """Coefficients (c_a, c_b) with slerp(ΔW_a, ΔW_b) = c_a ΔW_a + c_b ΔW_b.

    Same formula, threshold and zero-norm handling as ``mergekit.merge_methods.slerp.slerp``
    (checked against it in the tests), but fed with norms and dot products computed from the
    low-rank factors: mergekit's function takes and returns dense tensors, which would force the
    dense out×in ΔW and a dense SVD of the child, where the coefficients keep everything exact
    and low-rank. ``t = 1 - w`` because ``w`` is parent a's weight (t=0 returns a).
    """
    t = 1.0 - w
    norm_a = math.sqrt(max(nn_a, 0.0))
    norm_b = math.sqrt(max(nn_b, 0.0))
    norm_a = norm_a if norm_a > _SLERP_EPS else 1.0
    norm_b = norm_b if norm_b > _SLERP_EPS else 1.0
    dot = max(-1.0, min(1.0, dot_ab / (norm_a * norm_b)))
    if abs(dot) > _SLERP_DOT_THRESHOLD:  # (anti)colinear: spherical = linear, avoid sin θ ≈ 0
        return 1.0 - t, t
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def _dare_drop(x: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: keep each entry with probability ``density`` and rescale survivors by 1/density.

    Written here rather than calling ``mergekit.sparsify.bernoulli``: that one draws from the
    global torch RNG (not from our generator) and rescales by matching the L1 norm of the
    survivors, not by DARE's exact 1/density.
    """
    if density >= 1.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=generator.device) < density
    return x * keep.to(x.device, x.dtype) / density


def _sign_consensus(da: Tensor, db: Tensor, w: float, *, normalize: bool) -> Tensor:
    """TIES sign election + (disjoint) merge of two weighted task vectors, as mergekit does.

    Mirrors ``GeneralizedTaskArithmeticMerge.merge_group`` (base = 0): weight the deltas, elect
    each entry's sign by their summed weighted values (``get_mask(..., "sum")``), keep only the
    entries agreeing with it, and with ``normalize`` divide by the summed weights of the kept
    entries (TIES' disjoint mean); dare_ties does not normalise.
    """
    deltas = torch.stack([da, db])
    weights = torch.tensor([w, 1.0 - w], dtype=deltas.dtype, device=deltas.device)[:, None, None]
    deltas = deltas * weights
    mask = get_mask(deltas, method="sum", mask_dtype=deltas.dtype)
    mixed = (deltas * mask).sum(dim=0)
    if normalize:
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
        mixed = mixed / divisor
    return mixed


def crossover(
    method: CrossoverMethod,
    a: LoraTensors,
    a_scaling: float,
    b: LoraTensors,
    b_scaling: float,
    *,
    child_rank: int,
    child_scaling: float,
    weight: float = 0.5,
    density: float = 0.5,
    generator: torch.Generator,
) -> tuple[LoraTensors, dict]:
    """Cross two adapters (any ranks) into a child of rank ``child_rank`` (see module docstring).

    ``weight`` is parent a's share (b gets ``1 - weight``); ``density`` is the fraction kept by
    ``ties`` (top magnitudes) and ``dare`` (random keep probability). A module present in only
    one parent counts as ΔW = 0 in the other.

    - ``linear``: w·ΔW_a + (1−w)·ΔW_b, exact and low-rank (no dense out×in SVD).
    - ``slerp``: spherical interpolation of the flattened ΔW's (linear when nearly colinear).
    - ``ties``: trim each ΔW to its top-``density`` magnitudes (``mergekit.sparsify``), elect
      signs by summed weighted value, disjoint weighted mean.
    - ``dare``: random drop with keep probability ``density`` and 1/density rescale, then the
      same sign consensus and a (non-normalised) weighted sum, as mergekit's ``dare_ties``.

    Returns ``(child_tensors, info)`` with info keys ``method``, ``modules``, ``energy_kept``
    (mean over modules), ``energy_kept_min``, ``revived_directions``. linear/slerp/ties draw
    from ``generator`` only to revive dead directions (child rank above the merged ΔW's rank).
    """
    if method not in CROSSOVER_METHODS:
        raise ValueError(
            f"unknown crossover method {method!r}; expected one of {CROSSOVER_METHODS}"
        )
    _check_rank_scaling(child_rank, child_scaling)
    _check_rank_scaling(1, a_scaling)
    _check_rank_scaling(1, b_scaling)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    if method in ("ties", "dare") and not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")

    ma, mb = modules(a), modules(b)
    if not ma and not mb:
        raise ValueError("both parents are empty")
    ref = next(iter(ma.values() or mb.values()))[0]
    out_dtype, out_device = ref.dtype, ref.device
    order = list(ma) + [p for p in mb if p not in ma]

    child: dict[str, tuple[Tensor, Tensor]] = {}
    energies: list[float] = []
    revived = 0
    for prefix in order:
        pa, pb = ma.get(prefix), mb.get(prefix)
        shapes = {(p[1].shape[0], p[0].shape[1]) for p in (pa, pb) if p is not None}
        if len(shapes) != 1:
            raise ValueError(f"{prefix}: parents' ΔW shapes differ: {sorted(shapes)}")
        dt = _work_dtype(*[x for p in (pa, pb) if p is not None for x in p])
        fa = None if pa is None else (pa[0].to(out_device, dt), pa[1].to(out_device, dt))
        fb = None if pb is None else (pb[0].to(out_device, dt), pb[1].to(out_device, dt))

        if method in ("linear", "slerp"):
            if method == "linear":
                ca, cb = weight, 1.0 - weight
            else:
                nn_a = _gram(fa, a_scaling, fa, a_scaling)
                nn_b = _gram(fb, b_scaling, fb, b_scaling)
                dot = _gram(fa, a_scaling, fb, b_scaling)
                ca, cb = _slerp_coefficients(weight, nn_a, nn_b, dot)
            lefts, rights = [], []
            for f, c, s in ((fa, ca, a_scaling), (fb, cb, b_scaling)):
                if f is not None:
                    lefts.append(f[1])
                    rights.append(f[0] * (c * s))
            U, S, Vh = _lowrank_svd(torch.cat(lefts, dim=1), torch.cat(rights, dim=0))
        else:
            out_f, in_f = shapes.pop()
            zero = torch.zeros(out_f, in_f, dtype=dt, device=out_device)
            da = zero if fa is None else delta(fa[0], fa[1], a_scaling)
            db = zero if fb is None else delta(fb[0], fb[1], b_scaling)
            if method == "ties":
                da = sparsify(da, density=density, method=SparsificationMethod.magnitude)
                db = sparsify(db, density=density, method=SparsificationMethod.magnitude)
                merged = _sign_consensus(da, db, weight, normalize=True)
            else:
                da = _dare_drop(da, density, generator)
                db = _dare_drop(db, density, generator)
                merged = _sign_consensus(da, db, weight, normalize=False)
            U, S, Vh = torch.linalg.svd(merged, full_matrices=False)

        A, B, kept = _split(U, S, Vh, child_rank, child_scaling)
        revived += _revive_dead(A, B, S, generator)
        energies.append(kept)
        child[prefix] = (A.to(out_dtype).contiguous(), B.to(out_dtype).contiguous())

    info = {
        "method": method,
        "modules": len(child),
        "energy_kept": sum(energies) / len(energies),
        "energy_kept_min": min(energies),
        "revived_directions": revived,
    }
    return from_modules(child), info


def _gram(
    f: tuple[Tensor, Tensor] | None, s: float, g: tuple[Tensor, Tensor] | None, t: float
) -> float:
    """⟨s·B_f A_f, t·B_g A_g⟩_F from the factors: s t Σ (B_fᵀ B_g) ⊙ (A_f A_gᵀ). 0 if absent."""
    if f is None or g is None:
        return 0.0
    return float(s * t * ((f[1].T @ g[1]) * (f[0] @ g[0].T)).sum())


# --------------------------------------------------------------------------------------------
# Mutation and rank change
# --------------------------------------------------------------------------------------------
def mutate(
    t: LoraTensors, *, rate: float, scale: float, generator: torch.Generator
) -> tuple[LoraTensors, int]:
    """Gaussian mutation relative to each tensor's own size.

    Each tensor is picked with probability ``rate``; a picked tensor gets N(0, (scale·RMS)²)
    noise, RMS being its root-mean-square, so a ×100 tensor gets ×100 noise. Returns the new
    dict (tensors left alone are shared, not copied; inputs are never modified) and the number
    of tensors mutated. One uniform draw per tensor, in sorted key order, whether or not it is
    then mutated, so the random stream does not depend on the values.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be >= 0 and finite, got {scale!r}")
    out = dict(t)
    count = 0
    for key in sorted(t):
        x = t[key]
        picked = float(torch.rand((), generator=generator, device=generator.device)) < rate
        if not picked or x.numel() == 0:
            continue
        dt = _work_dtype(x)
        xf = x.to(dt)
        rms = float(torch.sqrt(torch.mean(xf * xf)))
        # A tensor whose RMS is 0 is left alone: it is all zeros, typically a LoRA B that has
        # not been trained yet (PEFT initialises B = 0 so that ΔW starts at 0). Noise relative
        # to its size is zero by definition, and any absolute noise level would be arbitrary
        # and would move the adapter away from its "no change yet" start. It is not counted.
        if rms == 0.0 or scale == 0.0:
            continue
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=dt)
        out[key] = (xf + noise.to(x.device) * (scale * rms)).to(x.dtype)
        count += 1
    return out, count


def change_rank(
    t: LoraTensors,
    scaling: float,
    new_rank: int,
    new_scaling: float,
    generator: torch.Generator,
) -> LoraTensors:
    """Re-factor every module's ΔW = scaling·B@A at ``new_rank`` (with ``new_scaling``).

    Shrinking keeps the best rank-``new_rank`` approximation (truncated SVD, computed from the
    thin factors). Growing keeps ΔW exactly; the new directions get B columns = 0 and A rows
    drawn like PEFT's init (kaiming-uniform, a=√5) so that they can learn — with A = 0 and B = 0
    together a direction would be dead (both its gradients are zero). A module whose ΔW is 0
    (B never trained) comes back as a fresh PEFT-style init: B = 0, random A.
    """
    _check_rank_scaling(new_rank, new_scaling)
    _check_rank_scaling(1, scaling)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for prefix, (A0, B0) in modules(t).items():
        dt = _work_dtype(A0, B0)
        U, S, Vh = _lowrank_svd(B0.to(dt), A0.to(dt) * scaling)
        A, B, _ = _split(U, S, Vh, new_rank, new_scaling)
        _revive_dead(A, B, S, generator)
        out[prefix] = (A.to(A0.dtype).contiguous(), B.to(B0.dtype).contiguous())
    return from_modules(out)
