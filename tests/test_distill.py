"""engine.distill: batch draws, the teacher's top-k, the KD loss and the teacher cache files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.data import TokenizedSplit
from engine.distill import (
    batch_indices,
    cache_key,
    kd_loss,
    load_cache,
    lookup,
    model_files,
    same_tokenizer,
    save_cache,
    teacher_topk,
    tokenizer_fingerprint,
)
from engine.errors import DataError


def _labels(b: int, length: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    labels = torch.randint(vocab, (b, length), generator=gen)
    labels[:, :3] = -100  # a prompt
    labels[0, -4:] = -100  # padding
    return labels


def _exact_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float):
    """Full-vocabulary KL(teacher_T ‖ student_T) · T² over the scored positions, via F.kl_div."""
    mask = labels[:, 1:] != -100
    log_q = F.log_softmax(student[:, :-1][mask].float() / t, dim=-1)
    log_p = F.log_softmax(teacher[:, :-1][mask].float() / t, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    return kl.mean() * t * t


def _topk(teacher: torch.Tensor, t: float, k: int, dtype=torch.float32):
    values, indices = F.log_softmax(teacher.float() / t, dim=-1).topk(k, dim=-1)
    return values.to(dtype), indices.to(torch.int32)


# --- batch_indices --------------------------------------------------------------------------------


def test_batch_indices_deterministic_and_same_as_generator_draws():
    a = batch_indices(11, 37, steps=3, accum=2, batch_size=5)
    b = batch_indices(11, 37, steps=3, accum=2, batch_size=5)
    assert len(a) == 6
    gen = torch.Generator().manual_seed(11)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
        assert torch.equal(x, torch.randint(37, (5,), generator=gen))
        assert x.dtype == torch.int64 and int(x.max()) < 37
    c = batch_indices(12, 37, steps=3, accum=2, batch_size=5)
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


# --- kd_loss --------------------------------------------------------------------------------------


def test_kd_loss_full_vocab_is_exact_kl_and_differentiable():
    gen = torch.Generator().manual_seed(0)
    b, length, v, t = 3, 9, 40, 2.0
    teacher = torch.randn(b, length, v, generator=gen) * 3
    student = (torch.randn(b, length, v, generator=gen) * 3).requires_grad_(True)
    labels = _labels(b, length, v, gen)
    logp, idx = _topk(teacher, t, v)
    # shuffling the teacher entries must not matter
    perm = torch.randperm(v, generator=gen)
    got = kd_loss(student, logp[..., perm], idx[..., perm], labels, temperature=t, vocab=v)
    ref_student = student.detach().clone().requires_grad_(True)
    want = _exact_kd(ref_student, teacher, labels, t)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    got.backward()
    want.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert torch.allclose(student.grad, ref_student.grad, atol=1e-6)
    # positions whose next label is -100 get no gradient
    assert student.grad[:, :2].abs().max() == 0
    assert student.grad[0, -5:].abs().max() == 0
    assert student.grad[1, 2:-1].abs().min() >= 0 and student.grad[1, 2:-1].abs().sum() > 0


def test_kd_loss_ignores_positions_labels_do_not_score():
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 6, 20, generator=gen)
    student = torch.randn(2, 6, 20, generator=gen)
    labels = _labels(2, 6, 20, gen)
    logp, idx = _topk(teacher, 1.0, 5)
    base = kd_loss(student, logp, idx, labels, temperature=1.0, vocab=20)
    changed = student.clone()
    changed[:, :2] += 10 * torch.randn(2, 2, 20, generator=gen)  # labels[:, 1:3] are -100
    changed[:, -1] += 10  # the last position predicts nothing
    assert kd_loss(changed, logp, idx, labels, temperature=1.0, vocab=20).item() == pytest.approx(
        base.item(), abs=1e-6
    )
    none = torch.full_like(labels, -100)
    zero = kd_loss(student.requires_grad_(True), logp, idx, none, temperature=1.0, vocab=20)
    assert zero.item() == 0.0
    zero.backward()


def test_kd_loss_topk_equals_explicit_tail_bucket_kl():
    gen = torch.Generator().manual_seed(4)
    b, length, v, t, k = 3, 7, 30, 1.5, 4
    teacher = torch.randn(b, length, v, generator=gen) * 3
    student = torch.randn(b, length, v, generator=gen) * 3
    labels = _labels(b, length, v, gen)
    logp, idx = _topk(teacher, t, k)
    got = kd_loss(student, logp, idx, labels, temperature=t, vocab=v).item()
    # the (k + 1)-outcome distributions, built explicitly: the k kept tokens, then "the rest"
    mask = labels[:, 1:] != -100
    p = F.softmax(teacher[:, :-1][mask] / t, dim=-1)
    q = F.softmax(student[:, :-1][mask] / t, dim=-1)
    ix = idx[:, :-1][mask].long()
    p_k, q_k = p.gather(-1, ix), q.gather(-1, ix)
    p_g = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], dim=-1)
    q_g = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], dim=-1)
    want = F.kl_div(q_g.log(), p_g, reduction="none").sum(-1).mean() * t * t
    assert got == pytest.approx(want.item(), rel=1e-4)
    assert got > 0.1


def test_kd_loss_topk_bounds_and_moves_toward_teacher():
    gen = torch.Generator().manual_seed(2)
    b, length, v, t, k = 4, 8, 64, 2.0, 8
    teacher = torch.randn(b, length, v, generator=gen) * 4
    noise = torch.randn(b, length, v, generator=gen) * 4
    labels = _labels(b, length, v, gen)
    logp32, idx = _topk(teacher, t, k)
    logp16 = logp32.to(torch.float16)

    def loss(student, logp=logp16):
        return kd_loss(student, logp, idx, labels, temperature=t, vocab=v).item()

    losses = [loss(teacher + a * noise) for a in (1.0, 0.5, 0.25, 0.1)]
    assert all(x >= 0 for x in losses)
    assert losses == sorted(losses, reverse=True) and losses[0] > 10 * losses[-1]
    assert loss(teacher) == pytest.approx(0.0, abs=1e-3)
    assert loss(teacher, logp32) == pytest.approx(0.0, abs=1e-5)
    # grouping tokens into a tail bucket can only lose divergence (data-processing inequality)
    student = teacher + noise
    full = _exact_kd(student, teacher, labels, t).item()
    assert 0 < loss(student, logp32) <= full + 1e-5

    # a gradient step on the KD loss moves the student toward the teacher
    s = (teacher + noise).requires_grad_(True)
    before = kd_loss(s, logp16, idx, labels, temperature=t, vocab=v)
    before.backward()
    after = loss((s - 5.0 * s.grad).detach())
    assert after < before.item()


def test_kd_loss_truncates_padded_vocabularies():
    gen = torch.Generator().manual_seed(3)
    b, length, t = 2, 7, 2.0
    teacher = torch.randn(b, length, 44, generator=gen)
    student = torch.randn(b, length, 40, generator=gen)
    labels = _labels(b, length, 40, gen)
    logp, idx = _topk(teacher[..., :40], t, 40)
    got = kd_loss(student, logp, idx, labels, temperature=t, vocab=40)
    want = _exact_kd(student, teacher[..., :40], labels, t)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    # a student with extra padded logits gives the same loss
    padded = torch.cat([student, torch.full((b, length, 4), 30.0)], dim=-1)
    assert kd_loss(padded, logp, idx, labels, temperature=t, vocab=40).item() == pytest.approx(
        got.item(), abs=1e-6
    )
    with pytest.raises(ValueError, match="fewer than"):
        kd_loss(student, logp, idx, labels, temperature=t, vocab=44)


# --- teacher_topk ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(5)
    n, length = 7, 12
    ids = torch.randint(50, (n, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    return model, TokenizedSplit(ids, labels, mask)


def test_teacher_topk_is_the_true_topk(tiny_teacher):
    model, split = tiny_teacher
    t, k = 2.0, 6
    out = teacher_topk(model, split, None, temperature=t, k=k, vocab=48, batch_size=3, device="cpu")
    n, length = split.input_ids.shape
    assert out["rows"].dtype == torch.int64 and torch.equal(out["rows"], torch.arange(n))
    assert out["logp"].dtype == torch.float16 and out["logp"].shape == (n, length, k)
    assert out["idx"].dtype == torch.int32 and out["idx"].shape == (n, length, k)
    with torch.no_grad():
        logits = model(input_ids=split.input_ids, attention_mask=split.attention_mask).logits
    ref = F.log_softmax(logits[..., :48].float() / t, dim=-1)
    values, indices = ref.topk(k, dim=-1)
    assert torch.equal(out["idx"].long(), indices)
    assert torch.allclose(out["logp"].float(), values, atol=2e-3)
    assert int(out["idx"].max()) < 48

    rows = torch.tensor([5, 1, 5])
    part = teacher_topk(
        model, split, rows, temperature=t, k=k, vocab=48, batch_size=2, device="cpu"
    )
    assert torch.equal(part["rows"], rows)
    assert torch.equal(part["idx"], out["idx"][rows])
    assert torch.allclose(part["logp"].float(), out["logp"][rows].float(), atol=2e-3)

    model.train()
    teacher_topk(model, split, rows, temperature=t, k=k, vocab=48, batch_size=2, device="cpu")
    assert model.training
    model.eval()


# --- cache files ----------------------------------------------------------------------------------


def _cache(n_rows: int = 4, length: int = 5, k: int = 3, rows=None):
    gen = torch.Generator().manual_seed(9)
    return {
        "rows": torch.arange(n_rows) if rows is None else torch.tensor(rows),
        "logp": -torch.rand(n_rows, length, k, generator=gen).to(torch.float16),
        "idx": torch.randint(50, (n_rows, length, k), generator=gen).to(torch.int32),
    }


def test_save_load_round_trip(tmp_path: Path):
    cache = _cache()
    path = tmp_path / "sub" / "dir" / "teacher.safetensors"
    meta = {"key": "abc", "temperature": "2.0", "k": "3"}
    save_cache(path, cache, meta)
    assert [p.name for p in path.parent.iterdir()] == ["teacher.safetensors"]  # no temp left
    got, got_meta = load_cache(path)
    assert got_meta == meta
    assert set(got) == set(cache)
    for name, t in cache.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t)
    save_cache(path, _cache(2), {"key": "def"})  # replaces the old file
    assert load_cache(path)[1] == {"key": "def"}
    assert load_cache(path)[0]["rows"].shape == (2,)


def test_truncated_or_missing_cache_raises_data_error(tmp_path: Path):
    path = tmp_path / "teacher.safetensors"
    save_cache(path, _cache(8, 16, 4), {"key": "abc"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="recomputed") as info:
        load_cache(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(DataError, match="recomputed"):
        load_cache(path)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(DataError, match="recomputed") as info:
        load_cache(missing)
    assert str(missing) in str(info.value)


def test_cache_key_changes_with_every_input(tmp_path: Path):
    model_dir = tmp_path / "teacher"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"weights")
    (model_dir / "sub" / "config.json").write_text("{}")
    files = model_files(str(model_dir))
    assert [f[0] for f in files] == ["model.safetensors", "sub/config.json"]
    assert files[0][1] == len(b"weights")
    assert model_files(str(tmp_path / "absent")) is None
    assert model_files("org/some-model") is None

    ids = torch.randint(100, (4, 8), generator=torch.Generator().manual_seed(0))
    base = {
        "teacher": str(model_dir),
        "teacher_files": files,
        "tokenizer_fingerprint": "f" * 64,
        "input_ids": ids,
        "temperature": 2.0,
        "k": 16,
        "vocab": 32000,
    }
    key = cache_key(**base)
    assert len(key) >= 24 and int(key, 16) >= 0
    assert cache_key(**dict(base, input_ids=ids.clone())) == key

    changed_ids = ids.clone()
    changed_ids[3, 7] += 1
    st = (model_dir / "model.safetensors").stat()
    os.utime(model_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new_files = model_files(str(model_dir))
    assert new_files != files
    variants = [
        {"temperature": 1.0},
        {"k": 32},
        {"vocab": 32064},
        {"input_ids": changed_ids},
        {"input_ids": ids.reshape(8, 4)},
        {"teacher_files": new_files},
        {"teacher_files": None},
        {"teacher": "org/model@main"},
        {"tokenizer_fingerprint": "e" * 64},
    ]
    keys = {cache_key(**dict(base, **v)) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_lookup_with_repeats_and_missing_rows():
    cache = _cache(4, rows=[10, 3, 7, 20])
    logp, idx = lookup(cache, torch.tensor([7, 10, 7, 20]))
    assert torch.equal(logp, cache["logp"][[2, 0, 2, 3]])
    assert torch.equal(idx, cache["idx"][[2, 0, 2, 3]])
    with pytest.raises(KeyError, match="row 5"):
        lookup(cache, torch.tensor([10, 5]))
    with pytest.raises(KeyError, match="row 21"):
        lookup(cache, torch.tensor([21]))


# --- tokenizers -----------------------------------------------------------------------------------


def _tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def test_same_tokenizer():
    a = _tokenizer(["chest", "pain", "fever"])
    assert same_tokenizer(a, a)
    assert same_tokenizer(a, _tokenizer(["chest", "pain", "fever"]))
    assert not same_tokenizer(a, _tokenizer(["chest", "fever", "pain"]))
    assert not same_tokenizer(a, _tokenizer(["chest", "pain", "cough"]))
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(_tokenizer(["chest", "pain", "fever"]))
