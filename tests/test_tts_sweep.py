"""The channel-pruning sweep (engine/tts/sweep.py): pruned models at growing ratios, the sweet-spot
rule, the outputs (JSON, markdown, hand-written SVG, the chosen student) and ratio 0 = unpruned."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from conftest import TINY_TTS

from engine.tts import sweep as sw
from engine.tts.espeak import Style, synthesize
from engine.tts.mcd import MCDReference
from engine.tts.model import StudentConfig, TTSStudent, count_parameters
from engine.tts.student import ASSETS_DIR, load_student, mels_to_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped():
    return load_student(ASSETS_DIR)


def _point(ratio: float, mcd: float, rtf: float) -> sw.SweepPoint:
    return sw.SweepPoint(
        ratio=ratio,
        params=1000 - int(ratio * 1000),
        params_inference=900 - int(ratio * 900),
        encoder_filters=(8,),
        decoder_filters=(8,),
        duration_filters=(4, 4),
        mcd=mcd,
        mcd_per_sentence=(mcd,),
        rtf_model=rtf,
        rtf_vocoder=0.05,
        rtf_total=rtf + 0.05,
        rtf_audio_s=30.0,
        rtf_model_same_frames=rtf,
        prune_seconds=0.1,
    )


def test_pruned_tiny_models_run_and_shrink_as_the_ratio_grows():
    torch.manual_seed(0)
    model = TTSStudent(StudentConfig(n_symbols=20, **TINY_TTS)).eval()
    for p in model.parameters():  # as load_student leaves them: prune() must still trace
        p.requires_grad_(False)
    ids = [3, 4, 5, 6, 7, 8]
    sizes = []
    for ratio in (0.0, 0.2, 0.4, 0.6):
        pruned = sw.prune(model, ids, ratio)
        mels, lengths = pruned.synthesize_mel(ids, torch.softmax(torch.randn(2, 6), -1))
        assert mels.shape[:2] == (2, 80) and torch.isfinite(mels).all()
        sizes.append(count_parameters(pruned))
    assert sizes[0] == count_parameters(model)  # the original is untouched, ratio 0 = a copy
    assert all(a > b for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    with pytest.raises(ValueError):
        sw.prune(model, ids, 1.0)


def test_rule_picks_the_fastest_point_within_the_bound():
    points = [
        _point(0.0, 3.0, 0.010),
        _point(0.1, 3.2, 0.008),
        _point(0.2, 3.45, 0.007),  # within 0.5 dB, fastest of those
        _point(0.3, 3.6, 0.005),  # faster, but 0.6 dB worse
        _point(0.4, 5.0, 0.004),
    ]
    assert sw.choose(points, 0.5).ratio == 0.2
    assert sw.choose(points, 0.1).ratio == 0.0  # nothing else within the bound
    assert sw.choose(points, 10.0).ratio == 0.4
    # a noisy timing: a pruned point slower than the baseline is not chosen over it
    noisy = [_point(0.0, 3.0, 0.006), _point(0.1, 3.1, 0.007)]
    assert sw.choose(noisy, 0.5).ratio == 0.0
    with pytest.raises(ValueError):
        sw.choose([], 0.5)


def test_outputs_are_written_and_well_formed(tmp_path):
    points = [_point(0.0, 3.0, 0.010), _point(0.1, 3.2, 0.008), _point(0.2, 4.0, 0.006)]
    chosen = sw.choose(points, 0.5)
    paths = sw.write_outputs(tmp_path, points, chosen, 0.5, meta={"sentences": ["Hi."]})
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["chosen_ratio"] == 0.1 and data["max_mcd_increase_db"] == 0.5
    assert data["rule"] == sw.RULE and [p["ratio"] for p in data["points"]] == [0.0, 0.1, 0.2]
    md = paths["md"].read_text(encoding="utf-8")
    assert md.count("\n| 0.") == 3 and "◀ chosen" in md
    root = ET.parse(paths["svg"]).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert len(root.findall(f"{ns}polyline")) == 2 and len(root.findall(f"{ns}circle")) == 6
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_sweep_on_the_shipped_student(shipped, tmp_path):
    sentence = shipped.config["eval_sentences"][4]  # "The scan was abnormal." — short
    style = Style(**shipped.config["target_style"])
    points = sw.sweep(shipped, [0.0, 0.3], [sentence], style, rtf_batch=2, rtf_repeat=1, n_iter=8)
    base, pruned = points
    assert pruned.params < base.params and pruned.params_inference < base.params_inference
    assert pruned.encoder_filters[0] < base.encoder_filters[0]
    assert all(
        np.isfinite([p.mcd, p.rtf_model, p.rtf_total, p.rtf_model_same_frames]).all()
        for p in points
    )
    # ratio 0 reproduces the unpruned student's MCD in the same fixed style
    ref = synthesize(sentence, style)
    w = sw.target_weights(shipped, [sentence], [ref])
    with torch.no_grad():
        mels, lengths = shipped.model.synthesize_mel(shipped.vocab.encode_text(sentence), w[None])
    (wav,) = mels_to_audio(mels, lengths, n_iter=8)
    assert base.mcd == pytest.approx(MCDReference(ref.samples).score(wav), abs=1e-9)
    # the chosen student is saved and loads with its pruned widths
    paths = sw.write_outputs(
        tmp_path, points, points[1], 0.5, student=shipped, meta={"sentences": [sentence]}
    )
    back = load_student(paths["student"])
    assert back.model.current_config().encoder_filters == pruned.encoder_filters
    assert back.config["pruning"]["ratio"] == 0.3
    assert count_parameters(back.model) == pruned.params


def _distance_to_teacher(model, teacher, ids, weights) -> float:
    """Mean |Δ| between the model's and the teacher's log-mels, the teacher's durations forced."""
    lengths = torch.full((weights.shape[0],), len(ids))
    batch = torch.tensor([ids] * weights.shape[0])
    with torch.no_grad():
        ref = teacher.run(batch, lengths, weights)
        out = model.run(batch, lengths, weights, ref.durations)
    return float((out.mel - ref.mel).abs().mean())


def test_healing_distils_the_pruned_student_towards_the_unpruned_one(shipped):
    """A 0.4-pruned copy, 40 healing steps on training-template sentences: on a held-out
    sentence, in styles it never saw, its mels move closer to the unpruned student's; the style
    tokens and the original are untouched."""
    held_out = shipped.vocab.encode_text(shipped.config["eval_sentences"][1])
    pruned = sw.prune(shipped.model, held_out, 0.4)
    weights = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(5)), -1)
    before = _distance_to_teacher(pruned, shipped.model, held_out, weights)
    tokens = pruned.style_tokens.weight.clone()
    original = {k: v.clone() for k, v in shipped.model.state_dict().items()}
    sentences = sw.heal_sentences(shipped, 32)
    assert not set(sentences) & set(shipped.config["eval_sentences"])
    info = sw.heal(pruned, shipped.model, shipped.vocab, 40, sentences)
    after = _distance_to_teacher(pruned, shipped.model, held_out, weights)
    assert info["steps"] == 40 and info["last_loss"] < info["first_loss"]
    assert after < 0.8 * before, (before, after)
    assert torch.equal(pruned.style_tokens.weight, tokens)
    assert all(torch.equal(v, original[k]) for k, v in shipped.model.state_dict().items())
    assert not any(p.requires_grad for p in pruned.parameters()) and not pruned.training


def test_a_tts_run_sweeps_first_and_evolves_the_chosen_student(tmp_path):
    """[tts] prune_sweep = [0.3] (one ratio: it is the baseline and the choice): the sweep runs in
    a spawned process, writes RUN/sweep/, logs its summary, and the style workers load the pruned
    student — the neutral genome's MCD is the pruned student's, not the shipped one's."""
    import asyncio

    from engine.events import Log
    from engine.profile import parse_profile
    from engine.rundir import RunDir
    from engine.tts.orchestrator import StyleOrchestrator

    sentence = "The scan was abnormal."
    text = (
        f'[run]\nname = "swept"\nseed = 3\noutput_dir = "{tmp_path}"\n'
        f'[tts]\nsentences = ["{sentence}"]\npopulation = 3\ngriffin_lim_iters = 4\n'
        "prune_sweep = [0.3]\nmax_mcd_increase_db = 0.5\nprune_heal_steps = 20\n"
        "[devices]\nthreads_per_worker = 1\n"
        "[evolution]\ngenerations = 1\nelitism = 1\ntournament_size = 2\n"
    )
    profile = parse_profile(text, source=tmp_path / "p.toml")
    assert profile.tts.prune_sweep == [0.3] and profile.tts.max_mcd_increase_db == 0.5
    run = RunDir.create(tmp_path, "swept", profile.to_toml())
    orch = StyleOrchestrator(profile, run)
    events = []
    orch.subscribe(events.append)
    finished = asyncio.run(orch.run())
    assert finished.status == "completed", finished.reason
    out = run.path / "sweep"
    data = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert data["chosen_ratio"] == 0.3 and (out / "sweep.md").is_file()
    # healed before it was measured: both MCDs are in the table, the saved student says so
    assert data["heal_steps"] == 20 and data["points"][0]["mcd_unhealed"] is not None
    assert "MCD before healing" in (out / "sweep.md").read_text()
    ET.parse(out / "sweep.svg")
    assert any(isinstance(e, Log) and "chosen 0.30" in e.message for e in events)
    assert orch.profile.tts.assets_dir() == out / "student"

    pruned = load_student(out / "student")
    assert pruned.model.current_config().encoder_filters[0] < 256
    assert "then 20 steps distilled" in pruned.config["pruning"]["method"]
    style = profile.tts.style()
    ref = MCDReference(synthesize(sentence, style).samples)

    def neutral_mcd(student):
        ids = student.vocab.encode_text(sentence)
        with torch.no_grad():
            mels, lengths = student.model.synthesize_mel(ids, student.model.neutral_weights(1))
        return ref.score(mels_to_audio(mels, lengths, n_iter=4)[0])

    assert orch.neutral_mcd == pytest.approx(neutral_mcd(pruned), abs=1e-4)
    assert abs(orch.neutral_mcd - neutral_mcd(load_student(ASSETS_DIR))) > 1e-3

    # a resumed run reuses the finished sweep rather than sweeping again
    again = StyleOrchestrator(profile, RunDir.open(run.path))
    logged = []
    again.subscribe(logged.append)
    assert asyncio.run(again.run(resume=True)).status == "completed"
    assert any(isinstance(e, Log) and "reusing the pruning sweep" in e.message for e in logged)
    assert again.profile.tts.assets_dir() == out / "student"


def test_profile_refuses_a_pruning_ratio_of_one(tmp_path):
    from engine.errors import ProfileError
    from engine.profile import parse_profile

    text = (
        f'[run]\nname = "x"\noutput_dir = "{tmp_path}"\n[tts]\nprune_sweep = [0, 1.0]\n'
        "[evolution]\nelitism = 1\n"
    )
    with pytest.raises(ProfileError, match=r"\[tts\] prune_sweep"):
        parse_profile(text, source=tmp_path / "p.toml")
