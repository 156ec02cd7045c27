"""The coliseum in this process: real PEFT adapters on a real (tiny) Llama base."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from engine.profile import load_profile
from engine.workers import messages as m
from engine.workers.coliseum import Coliseum

GENOME = {
    "rank": 4,
    "alpha": 8.0,
    "target_modules": ["q_proj", "v_proj"],
    "dropout": 0.0,
    "learning_rate": 5e-3,
    "seed": 11,
}


@pytest.fixture(scope="module")
def coliseum(tiny_lab, tmp_path_factory):
    from conftest import tiny_profile_text

    d = tmp_path_factory.mktemp("col")
    p = d / "p.toml"
    p.write_text(tiny_profile_text(tiny_lab, d / "runs"))
    go = threading.Event()
    go.set()
    return Coliseum("coliseum-0", "cpu", load_profile(p), queue.Queue(), go)


def _train(col, genome=GENOME, adapter=None, steps=4, ind="a"):
    return col.train(m.TrainTask(1, ind, genome, adapter, steps))


def _base_checksum(col) -> float:
    return float(sum(p.double().sum() for n, p in col.model.named_parameters() if "lora_" not in n))


def test_training_is_deterministic_and_leaves_the_base_untouched(coliseum):
    before = _base_checksum(coliseum)
    a = _train(coliseum)
    b = _train(coliseum)
    assert a.adapter == b.adapter  # same genome, same seed: same adapter bytes
    assert len(a.losses) == 4 and a.tokens > 0
    assert _base_checksum(coliseum) == before
    assert set(coliseum.model.peft_config) == {"_host"}  # the individual's adapter was removed


def test_fitness_depends_on_the_adapter_weights(coliseum):
    a = _train(coliseum, steps=6)
    other = dict(GENOME, seed=99, learning_rate=2e-2)
    b = _train(coliseum, genome=other, steps=6)
    items = [
        ("a", GENOME, a.adapter),
        ("b", other, b.adapter),
        ("a2", GENOME, a.adapter),
        ("base", None, None),
    ]
    scores = coliseum.evaluate(m.EvalTask(2, items)).scores
    assert scores["a"][0] == pytest.approx(scores["a2"][0], abs=1e-6)
    assert abs(scores["a"][0] - scores["b"][0]) > 1e-4
    assert abs(scores["a"][0] - scores["base"][0]) > 1e-4


def test_mixed_batch_equals_one_adapter_at_a_time(coliseum):
    from engine.losses import validation_loss

    a = _train(coliseum, steps=3)
    other = dict(GENOME, rank=2, alpha=4.0, seed=5)
    b = _train(coliseum, genome=other, steps=3)
    mixed = coliseum.evaluate(
        m.EvalTask(3, [("a", GENOME, a.adapter), ("b", other, b.adapter)])
    ).scores
    for ind, genome, blob in (("a", GENOME, a.adapter), ("b", other, b.adapter)):
        coliseum._add("solo", genome, blob)
        coliseum.model.set_adapter("solo")
        solo, _ = validation_loss(coliseum.model, coliseum.val_split, 8, "cpu")
        coliseum._remove("solo")
        assert mixed[ind][0] == pytest.approx(solo, abs=1e-5)


def test_training_lowers_the_loss(coliseum):
    done = _train(coliseum, genome=dict(GENOME, learning_rate=2e-2), steps=30)
    assert sum(done.losses[-5:]) / 5 < sum(done.losses[:5]) / 5


def test_a_child_adapter_continues_from_its_tensors(coliseum):
    a = _train(coliseum, steps=3)
    cont = _train(coliseum, adapter=a.adapter, steps=3)
    fresh = _train(coliseum, steps=3)
    assert cont.adapter != fresh.adapter


def test_export_reproduces_the_lab_loss_with_plain_peft(coliseum, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.losses import validation_loss

    a = _train(coliseum, steps=5)
    lab = coliseum.evaluate(m.EvalTask(4, [("a", GENOME, a.adapter)])).scores["a"][0]
    done = coliseum.export(m.ExportTask(5, "a", GENOME, a.adapter, str(tmp_path / "champion")))
    assert (tmp_path / "champion" / "adapter_config.json").is_file()
    assert (tmp_path / "champion" / "merge.yaml").is_file()
    assert done.val_loss == pytest.approx(lab, abs=1e-4)
    base = AutoModelForCausalLM.from_pretrained(coliseum.base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(tmp_path / "champion")).eval()
    loss, _ = validation_loss(model, coliseum.val_split, 8, "cpu")
    assert loss == pytest.approx(lab, abs=1e-4)


def test_qlora_student_in_4bit_trains_and_scores_on_cpu(tiny_lab, tmp_path):
    """load_in_4bit = true (bitsandbytes nf4) on the CPU: real QLoRA, trained and evaluated."""
    pytest.importorskip("bitsandbytes")
    from conftest import tiny_profile_text

    p = tmp_path / "q.toml"
    text = tiny_profile_text(tiny_lab, tmp_path / "runs")
    p.write_text(
        text.replace(
            "[student]\n", '[student]\nload_in_4bit = true\ncompute_dtype = "float32"\n', 1
        )
    )
    go = threading.Event()
    go.set()
    col = Coliseum("coliseum-q", "cpu", load_profile(p), queue.Queue(), go)
    assert any("4bit" in type(mod).__name__ for mod in col.model.modules())
    done = _train(col, steps=2)
    scores = col.evaluate(m.EvalTask(9, [("a", GENOME, done.adapter), ("base", None, None)])).scores
    assert abs(scores["a"][0] - scores["base"][0]) > 1e-5
