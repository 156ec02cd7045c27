"""Distillation through the real engine: the teacher's logit cache (built once, then reused by
every generation and by a later run), online mode giving the same run, and a teacher whose
tokenizer differs from the student's stopping at start-up — never reaching a logit KL."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import alpaca_from_text

from engine import events as ev
from engine.errors import DataError, ModelError
from engine.models import preflight
from engine.orchestrator import Orchestrator
from engine.profile import load_profile
from engine.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_engine(path: Path) -> tuple[ev.RunFinished, list[ev.Event]]:
    profile = load_profile(path)
    run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    finished = asyncio.run(Orchestrator(profile, run).run())
    return finished, run.read_events()


def distilled(tiny_profile, tmp_path: Path, **over) -> Path:
    settings = {
        "distill__mode": "logits",
        "distill__temperature": 2.0,
        "distill__alpha": 0.5,
        "distill__top_k": 8,
        "distill__cache_dir": str(tmp_path / "kd-cache"),
        "training__steps_per_generation": 6,
    }
    return tiny_profile(**{**settings, **over})


def teacher_busy_after_first_generation(events: list[ev.Event]) -> list[ev.Event]:
    started = next(k for k, e in enumerate(events) if isinstance(e, ev.GenerationStarted))
    return [
        e
        for e in events[started:]
        if isinstance(e, ev.WorkerState) and e.worker == "teacher" and e.state == "busy"
    ]


def test_the_logit_cache_is_built_once_and_reused_and_online_gives_the_same_run(
    tiny_profile, tmp_path
):
    first, events = run_engine(distilled(tiny_profile, tmp_path))
    assert first.status == "completed", first.reason
    built = [e for e in events if isinstance(e, ev.TeacherLogits)]
    assert len(built) == 1 and not built[0].hit and built[0].rows == 240 and built[0].seconds > 0
    assert Path(built[0].path).parent == tmp_path / "kd-cache"
    terms = [e.terms for e in events if isinstance(e, ev.TrainProgress)]
    assert terms and all(set(t) == {"kd", "ce"} and t["kd"] >= 0 for t in terms)
    assert teacher_busy_after_first_generation(events) == []  # idle once the cache is built

    second, events2 = run_engine(distilled(tiny_profile, tmp_path))  # a later run: same key
    reused = [e for e in events2 if isinstance(e, ev.TeacherLogits)]
    assert len(reused) == 1 and reused[0].hit and reused[0].seconds == 0.0
    assert reused[0].path == built[0].path
    assert second.champion == first.champion
    assert second.champion_fitness == pytest.approx(first.champion_fitness, abs=1e-6)

    online, events3 = run_engine(distilled(tiny_profile, tmp_path, distill__cache=False))
    per_ind = [e for e in events3 if isinstance(e, ev.TeacherLogits)]
    trained = [e for e in events3 if isinstance(e, ev.TrainFinished)]
    assert per_ind and all(e.id is not None for e in per_ind) and len(per_ind) == len(trained)
    assert teacher_busy_after_first_generation(events3)  # online: the teacher works every time
    # The same top-k from the same teacher on the same rows: the same run.
    assert online.champion == first.champion
    assert online.champion_fitness == pytest.approx(first.champion_fitness, abs=1e-4)


def test_kd_changes_training_against_ce_only(tiny_profile, tmp_path):
    kd, _ = run_engine(distilled(tiny_profile, tmp_path, distill__alpha=0.0))
    ce, _ = run_engine(tiny_profile(training__steps_per_generation=6))
    assert kd.status == ce.status == "completed"
    assert kd.champion_fitness != pytest.approx(ce.champion_fitness, abs=1e-6)


def test_the_kd_weight_is_a_gene_each_individual_trains_with(tiny_profile, tmp_path):
    finished, events = run_engine(
        distilled(
            tiny_profile,
            tmp_path,
            population__kd_alphas=[1.0, 0.0],
            population__weight_decays=[0.0, 0.5],
            evolution__mutation_rate=1.0,  # every child's weight moves to the other value
            evolution__crossover_rate=0.0,
        )
    )
    assert finished.status == "completed", finished.reason
    genomes = {e.id: e.genome for e in events if isinstance(e, ev.IndividualUpdate)}
    assert {g["kd_alpha"] for g in genomes.values()} == {0.0, 1.0}
    assert {g["weight_decay"] for g in genomes.values()} <= {0.0, 0.5}
    children = [e for e in events if isinstance(e, ev.IndividualUpdate) and e.parents]
    assert children and all(
        genomes[c.id]["kd_alpha"] != genomes[c.parents[0]]["kd_alpha"] for c in children
    )
    progress = [e for e in events if isinstance(e, ev.TrainProgress)]
    # Each step's loss is KL + that individual's weight × cross-entropy, not the profile's 0.5
    for p in progress:
        a = genomes[p.id]["kd_alpha"]
        assert p.loss == pytest.approx(p.terms["kd"] + a * p.terms["ce"], rel=1e-4)
    assert {genomes[p.id]["kd_alpha"] for p in progress} == {0.0, 1.0}


def test_a_kd_weight_gene_without_logit_distillation_is_refused(tiny_profile):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "genesis_tui.cli",
            "--profile",
            str(tiny_profile(population__kd_alphas=[0.0, 0.5])),
            "--check",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "kd_alphas" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def foreign_teacher(tiny_lab, tmp_path) -> Path:
    """The tiny teacher with a tokenizer of a different vocabulary (one token more)."""
    from transformers import AutoTokenizer

    out = tmp_path / "foreign-teacher"
    shutil.copytree(tiny_lab["teacher"], out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens(["<foreign>"])
    tok.save_pretrained(out)
    return out


def test_a_teacher_with_another_tokenizer_stops_at_start_up(
    tiny_profile, tmp_path, foreign_teacher
):
    path = distilled(tiny_profile, tmp_path, teacher__model=str(foreign_teacher))
    with pytest.raises(ModelError, match="is not the student's") as err:
        preflight(load_profile(path))
    assert "logit distillation compares the two models token by token" in str(err.value)
    r = subprocess.run(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(path), "--headless"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and "is not the student's" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
    assert not (tmp_path / "kd-cache").exists()
    # Without distillation the same teacher is only a reference score: allowed.
    preflight(load_profile(tiny_profile(teacher__model=str(foreign_teacher))))


def test_the_coliseum_refuses_logits_of_another_tokenizer(tiny_lab, foreign_teacher):
    """The last guard, in the worker: a cache whose tokenizer is not the student's never reaches
    the KL, whatever the orchestrator sent."""
    import torch
    from safetensors.torch import save
    from transformers import AutoTokenizer

    from engine.distill import tokenizer_fingerprint
    from engine.workers.coliseum import Coliseum
    from engine.workers.messages import TrainTask

    student_tok = AutoTokenizer.from_pretrained(tiny_lab["student"])
    meta = {
        "teacher": "foreign",
        "tokenizer": tokenizer_fingerprint(AutoTokenizer.from_pretrained(foreign_teacher)),
        "temperature": "2.0",
        "vocab": "10",
    }
    blob = save(
        {
            "rows": torch.arange(2),
            "logp": torch.zeros(2, 4, 1, dtype=torch.float16),
            "idx": torch.zeros(2, 4, 1, dtype=torch.int32),
        },
        metadata=meta,
    )
    worker = SimpleNamespace(
        tokenizer=student_tok,
        tokenizer_fingerprint=tokenizer_fingerprint(student_tok),  # the worker's cached property
        profile=SimpleNamespace(student=SimpleNamespace(model="student")),
        _kd_cache=None,
    )
    task = TrainTask(1, "g0-001", {}, None, 1, kd_blob=blob)
    with pytest.raises(DataError, match="use another tokenizer than the student"):
        Coliseum._teacher_topk(worker, task)
    meta["tokenizer"] = tokenizer_fingerprint(student_tok)
    ok = Coliseum._teacher_topk(
        worker,
        TrainTask(
            1,
            "x",
            {},
            None,
            1,
            kd_blob=save(
                {
                    "rows": torch.arange(2),
                    "logp": torch.zeros(2, 4, 1, dtype=torch.float16),
                    "idx": torch.zeros(2, 4, 1, dtype=torch.int32),
                },
                metadata=meta,
            ),
        ),
    )
    assert ok is not None and ok["meta"]["vocab"] == "10"


def test_sequence_distillation_crosses_tokenizers_and_reuses_the_answers(
    tiny_lab, tiny_profile, tmp_path, foreign_teacher
):
    """mode = "sequence" with a teacher of another tokenizer: no start-up error, the teacher
    answers every training prompt once (greedy), the students learn those answers with
    cross-entropy, and a later run reuses the answers file instead of generating again."""
    from engine.distill import load_answers

    train = alpaca_from_text(tiny_lab["data"] / "train.txt", tmp_path / "train.jsonl")
    val = alpaca_from_text(tiny_lab["data"] / "val.txt", tmp_path / "val.jsonl")
    path = tiny_profile(
        teacher__model=str(foreign_teacher),
        data__format="alpaca",
        data__train=str(train),
        data__validation=str(val),
        distill__mode="sequence",
        distill__max_new_tokens=6,
        distill__cache_dir=str(tmp_path / "kd-cache"),
        training__steps_per_generation=4,
    )
    preflight(load_profile(path))  # another tokenizer is fine: only text crosses over
    first, events = run_engine(path)
    assert first.status == "completed", first.reason
    answered = [e for e in events if isinstance(e, ev.TeacherAnswers)]
    assert len(answered) == 1 and not answered[0].hit and answered[0].rows == 240
    assert not [e for e in events if isinstance(e, ev.TeacherLogits)]  # never a logit KL
    prompts, answers, meta = load_answers(Path(answered[0].path))
    assert len(prompts) == len(answers) == 240 and meta["decoding"] == "greedy"
    assert all(answers)  # an untrained tiny teacher writes newlines, but it writes
    terms = [e.terms for e in events if isinstance(e, ev.TrainProgress)]
    assert terms and all(set(t) == {"ce"} for t in terms)

    second, events2 = run_engine(path)
    reused = [e for e in events2 if isinstance(e, ev.TeacherAnswers)]
    assert len(reused) == 1 and reused[0].hit and reused[0].path == answered[0].path
    assert second.champion_fitness == pytest.approx(first.champion_fitness, abs=1e-6)

    # The students learned the teacher's answers, not the data's: CE-only on the data differs.
    plain, _ = run_engine(
        tiny_profile(
            data__format="alpaca",
            data__train=str(train),
            data__validation=str(val),
            training__steps_per_generation=4,
        )
    )
    assert plain.champion_fitness != pytest.approx(first.champion_fitness, abs=1e-6)


def test_teacher_answers_batched_equal_one_by_one_and_bad_files_are_data_errors(tiny_lab, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.distill import load_answers, save_answers, teacher_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_lab["teacher"])
    tok = AutoTokenizer.from_pretrained(tiny_lab["teacher"])
    prompts = ["<s>a b", "<s>the patient has a long history of", "<s>x"]
    kw = dict(max_new_tokens=5, device="cpu")
    batched = teacher_answers(model, tok, prompts, batch_size=3, **kw)
    single = [teacher_answers(model, tok, [p], batch_size=1, **kw)[0] for p in prompts]
    assert batched == single and all(isinstance(a, str) for a in batched)

    f = tmp_path / "answers.json"
    save_answers(f, prompts, batched, {"teacher": "t"})
    assert load_answers(f) == (prompts, batched, {"teacher": "t"})
    f.write_text(f.read_text()[:20])  # truncated
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_answers(f)
    f.write_text('{"prompts": ["a"], "answers": []}')
    with pytest.raises(DataError, match="malformed"):
        load_answers(f)
    with pytest.raises(DataError, match="do not exist"):
        load_answers(tmp_path / "none.json")


def test_a_4bit_teacher_falls_back_to_full_precision_with_a_warning(
    tiny_lab, tiny_profile, monkeypatch
):
    """Where bitsandbytes cannot serve the teacher's device, the teacher is loaded in its dtype
    and the run says why; a 4-bit student there stays a start-up error (it must train)."""
    import torch

    from engine import models

    monkeypatch.setattr(models, "quantization_problem", lambda device: "no 4-bit kernels here")
    profile = load_profile(tiny_profile(teacher__load_in_4bit=True))
    note = models.quantization_fallback(profile.teacher, "cpu")
    assert note and "no 4-bit kernels here" in note and "loaded in float32 instead" in note
    preflight(profile)  # not an error for the teacher
    model, _ = models.load_causal_lm(profile.teacher, "cpu", fallback=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ModelError, match="no 4-bit kernels here"):
        models.load_causal_lm(profile.teacher, "cpu")  # without the fallback: refused
    with pytest.raises(ModelError, match=r"\[student\] load_in_4bit = true on cpu"):
        preflight(load_profile(tiny_profile(student__load_in_4bit=True)))
    assert models.quantization_fallback(load_profile(tiny_profile()).teacher, "cpu") is None
