"""The TTS student: shapes, batched styles, the length regulator, the shipped assets, pruning,
load errors and a quick build."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_TTS

from engine.errors import ModelError
from engine.tts import build as tts_build
from engine.tts.audio import mel_spectrogram
from engine.tts.espeak import Style, synthesize
from engine.tts.mcd import mel_cepstral_distortion
from engine.tts.model import StudentConfig, TTSStudent, count_parameters, prunable_ignored_layers
from engine.tts.student import (
    ASSETS_DIR,
    CONFIG_FILE,
    WEIGHTS_FILE,
    PhonemeVocabulary,
    StudentLoadError,
    load_student,
    render,
    render_batch,
    save_student,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny() -> TTSStudent:
    torch.manual_seed(0)
    model = TTSStudent(StudentConfig(n_symbols=20, **TINY_TTS)).eval()
    with torch.no_grad():  # a trained model predicts durations of a few frames, not ~0
        model.duration.out.bias.fill_(1.5)
    return model


@pytest.fixture(scope="module")
def shipped():
    return load_student(ASSETS_DIR)


def test_shapes_and_padding(tiny):
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    lengths = torch.tensor([5, 3])
    durations = torch.tensor([[2, 0, 3, 1, 4], [1, 2, 2, 0, 0]])
    w = tiny.neutral_weights(2)
    assert torch.allclose(w.sum(1), torch.ones(2)) and w.shape == (2, 6)
    out = tiny.run(ids, lengths, w, durations)
    assert out.mel.shape == (2, 80, 10) and out.log_durations.shape == (2, 5)
    assert out.mel_lengths.tolist() == [10, 5]
    assert torch.isfinite(out.mel).all()
    assert torch.all(out.mel[1, :, 5:] == tiny.log_floor)  # past the end: the log floor
    assert torch.all(out.log_durations[1, 3:] == 0)  # padded phonemes predict nothing
    mel, log_d = tiny(ids[:1], w[:1])  # the traced path: predicted durations
    assert mel.shape[:2] == (1, 80) and log_d.shape == (1, 5)
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        tiny.style_from_weights(torch.ones(2, 5))


def test_length_regulator_adds_up(tiny):
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    d = torch.tensor([[2, 0, 3, 1], [1, 1, 0, 0]])
    frames, lengths, pos = TTSStudent.regulate(x, d)
    assert lengths.tolist() == [6, 2] == d.sum(1).tolist()
    assert frames.shape == (2, 3, 6) and pos.shape == (2, 2, 6)
    # row 0: phoneme 0 twice, phoneme 2 three times, phoneme 3 once; phoneme 1 (0 frames) skipped
    expect = torch.stack([x[0, :, 0]] * 2 + [x[0, :, 2]] * 3 + [x[0, :, 3]], dim=1)
    assert torch.equal(frames[0], expect)
    assert torch.equal(frames[1, :, :2], x[1, :, :2]) and torch.all(frames[1, :, 2:] == 0)
    assert torch.allclose(pos[0, 0], torch.tensor([0.25, 0.75, 1 / 6, 0.5, 5 / 6, 0.5]))
    # the forward pass regulates by the durations it is given
    out = tiny.run(torch.tensor([[3, 4, 5, 6]]), torch.tensor([4]), tiny.neutral_weights(1), d[:1])
    assert out.mel.shape[-1] == 6 and out.durations.sum() == 6


def test_batched_styles_differ_and_match_single_rows(tiny):
    ids = torch.tensor([3, 4, 5, 6, 7, 8, 9])
    g = torch.Generator().manual_seed(1)
    w = torch.softmax(3 * torch.randn(5, 6, generator=g), dim=-1)
    mels, lengths = tiny.synthesize_mel(ids, w)
    assert mels.shape[0] == 5 and lengths.shape == (5,)
    for i in range(5):
        one, n = tiny.synthesize_mel(ids[None], w[i])
        assert int(n[0]) == int(lengths[i])
        torch.testing.assert_close(
            one[0, :, : n[0]], mels[i, :, : lengths[i]], atol=1e-5, rtol=1e-5
        )
    common = int(lengths.min())
    for i in range(1, 5):
        assert (mels[i, :, :common] - mels[0, :, :common]).abs().max() > 1e-3


def test_pruning_half_the_channels_keeps_the_forward_working():
    import torch_pruning as tp

    torch.manual_seed(0)
    model = TTSStudent(StudentConfig(n_symbols=20, **TINY_TTS)).eval()
    before = count_parameters(model)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    w = model.neutral_weights(1)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=(ids, w),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=prunable_ignored_layers(model),
    )
    pruner.step()
    cfg = model.current_config()
    assert cfg.encoder_filters == (24, 20) and cfg.decoder_filters == (24, 20)
    assert cfg.duration_filters == (12, 8)
    # the residual width, the tokens, the embedding and the output stay whole
    assert (cfg.hidden, cfg.n_tokens, cfg.token_dim, cfg.n_mels) == (32, 6, 16, 80)
    assert model.tokens.shape == (6, 16) and model.embedding.weight.shape == (20, 32)
    assert count_parameters(model) < before
    mels, lengths = model.synthesize_mel(ids, torch.softmax(torch.randn(3, 6), -1))
    assert mels.shape[:2] == (3, 80) and torch.isfinite(mels).all()


def test_pruned_shipped_student_saves_and_loads(shipped, tmp_path):
    from engine.tts.sweep import prune

    ids = shipped.vocab.encode_text("The patient has a mild fever.")
    model = prune(
        shipped.model, ids, 0.5
    )  # gradients on while tracing: load_student turns them off
    before = sum(p.numel() for p in shipped.model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 0.75 * before  # really pruned
    assert model.current_config() != shipped.model.current_config()
    save_student(model, shipped.vocab, tmp_path)
    back = load_student(tmp_path)
    assert back.model.current_config() == model.current_config()
    mel, n = back.model.synthesize_mel(torch.tensor([ids]), back.model.neutral_weights(2))
    assert mel.shape[:2] == (2, 80) and int(n[0]) > 0


def test_shipped_assets_load_and_speak(shipped):
    model, vocab, config = shipped
    assert config["format"] == "genesis-tts-student"
    assert len(vocab) == model.config.n_symbols and vocab.symbols[:2] == ("<pad>", "<unk>")
    assert (ASSETS_DIR / WEIGHTS_FILE).stat().st_size < 5_000_000
    ids = vocab.encode_text("Please check the pulse today.")
    assert 1 not in ids  # every symbol known
    mels, lengths = model.synthesize_mel(ids, model.neutral_weights(3))
    assert mels.shape[:2] == (3, 80) and torch.isfinite(mels).all()
    # about 1.5 s at 175 words per minute: 11.6 ms frames
    assert 80 < int(lengths[0]) < 250
    samples, sr = render(shipped, "Please check the pulse today.")
    assert sr == 22050 and samples.dtype == np.float32 and samples.ndim == 1
    assert 0.9 < len(samples) / sr < 3.0 and 0.01 < np.abs(samples).max() <= 1.0
    wavs, _ = render_batch(shipped, "Rest in bed.", np.eye(model.n_tokens)[:2])
    assert len(wavs) == 2
    with pytest.raises(ValueError, match="render_batch"):
        render(shipped, "Rest in bed.", np.eye(model.n_tokens)[:2])


def test_student_speaks_its_sentence(shipped):
    """A training sentence in a training style: the student's audio is closer (MCD) to espeak-ng's
    audio of that sentence than to espeak-ng's audio of another sentence in that style."""
    config = shipped.config
    style = Style(**config["training_styles"][0])
    a, b = config["train_sentences_sample"][:2]
    syn_a, syn_b = synthesize(a, style), synthesize(b, style)
    ref_a, ref_b = syn_a.samples, syn_b.samples
    mel_b = torch.from_numpy(mel_spectrogram(ref_b))
    w = shipped.model.reference_weights(mel_b, len(syn_b.phonemes))
    student_a, _ = render(shipped, a, w[0].numpy())
    own, other = (
        mel_cepstral_distortion(ref_a, student_a),
        mel_cepstral_distortion(ref_b, student_a),
    )
    # measured 2.97 dB against 13.5 dB (the Griffin-Lim round trip alone costs 1.6 dB)
    assert own < other - 4.0, (own, other)
    assert own < 5.0


def _reference(student, text, style):
    syn = synthesize(text, style)
    mel = torch.from_numpy(mel_spectrogram(syn.samples))
    return syn, student.model.reference_weights(mel, len(syn.phonemes))


def test_style_carries_the_speaking_rate(shipped):
    """Weights read off a slow and a fast reference give slow and fast speech (durations are
    predicted): within 15% of espeak-ng's own length at each rate."""
    text, other = shipped.config["eval_sentences"][:2]
    ids = shipped.vocab.encode_text(text)
    frames = {}
    for rate in (140, 220):
        _, w = _reference(shipped, other, Style(rate=rate))
        _, n = shipped.model.synthesize_mel(ids, w)
        true = mel_spectrogram(synthesize(text, Style(rate=rate)).samples).shape[1]
        assert abs(int(n[0]) / true - 1) < 0.15, (rate, int(n[0]), true)
        frames[rate] = int(n[0])
    assert frames[140] > 1.3 * frames[220]  # measured 211 and 138 frames


def test_target_style_is_reachable_from_neutral(shipped):
    """The held-out target style: the token weights the reference encoder reads off the target's
    audio bring the MCD at least 20% below the neutral style's (measured 3.2 against 7.2 dB)."""
    target = Style(**shipped.config["target_style"])
    text = shipped.config["eval_sentences"][0]
    syn, w = _reference(shipped, text, target)
    weights = torch.cat([shipped.model.neutral_weights(1), w])
    (neutral, reached), _ = render_batch(shipped, text, weights)
    mcd_neutral = mel_cepstral_distortion(syn.samples, neutral)
    mcd_reached = mel_cepstral_distortion(syn.samples, reached)
    assert mcd_reached < 0.8 * mcd_neutral, (mcd_reached, mcd_neutral)


def _copy_assets(tmp_path):
    dst = tmp_path / "student"
    dst.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy(ASSETS_DIR / name, dst / name)
    return dst


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(StudentLoadError, match="no TTS student at"):
        load_student(tmp_path / "nowhere")
    d = _copy_assets(tmp_path)
    assert issubclass(StudentLoadError, ModelError)

    (d / WEIGHTS_FILE).rename(d / "moved")
    with pytest.raises(StudentLoadError, match=rf"has no {WEIGHTS_FILE}.*safetensors"):
        load_student(d)
    (d / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(StudentLoadError, match="not a readable safetensors file"):
        load_student(d)
    (d / "moved").rename(d / WEIGHTS_FILE)

    config = json.loads((d / CONFIG_FILE).read_text())
    wrong = copy.deepcopy(config)
    wrong["architecture"]["decoder_filters"][0] += 8
    (d / CONFIG_FILE).write_text(json.dumps(wrong))
    with pytest.raises(StudentLoadError, match=r"does not match.*decoder\.0\.conv1\.weight is"):
        load_student(d)

    wrong = copy.deepcopy(config)
    wrong["vocabulary"] = wrong["vocabulary"][:-1]
    (d / CONFIG_FILE).write_text(json.dumps(wrong))
    with pytest.raises(StudentLoadError, match="vocabulary has .* symbols"):
        load_student(d)

    (d / CONFIG_FILE).write_text("{not json")
    with pytest.raises(StudentLoadError, match="not readable JSON"):
        load_student(d)
    (d / CONFIG_FILE).unlink()
    with pytest.raises(StudentLoadError, match=f"has no {CONFIG_FILE}"):
        load_student(d)


def test_vocabulary():
    v = PhonemeVocabulary.from_corpus([["D", "@2", "p"], ["p", "'eI"]])
    assert v.symbols == ("<pad>", "<unk>", "D", "@2", "p", "'eI")
    assert v.encode(["p", "zz"]) == [4, 1] and v.unknown(["p", "zz"]) == ["zz"]
    assert v.encode([",eI", "eI", "'@2", ",D"]) == [5, 5, 3, 2]  # another stress mark
    with pytest.raises(ValueError, match="no phonemes"):
        v.encode_text("   ")


def test_sentences_and_pairs_are_deterministic():
    a = tts_build.make_sentences(0, 50)
    assert a == tts_build.make_sentences(0, 50) and len(set(a)) == 50
    assert a != tts_build.make_sentences(1, 50)
    held = tts_build.make_sentences(1, 10, frozenset(a))
    assert not set(held) & set(a)
    pairs = tts_build.make_pairs(20, 9, 4, 0)
    assert pairs == tts_build.make_pairs(20, 9, 4, 0) and len(pairs) == 80
    per_style = np.bincount([y for _, y in pairs], minlength=9)
    assert per_style.max() - per_style.min() <= 2  # styles are dealt evenly
    assert all(len({y for s2, y in pairs if s2 == s}) == 4 for s in range(20))
    assert tts_build.TARGET_STYLE not in tts_build.style_grid(tts_build.FULL)


def test_quick_build_is_deterministic(tmp_path, capsys):
    info = tts_build.build(tmp_path / "a", 0, tts_build.QUICK)
    a = tmp_path / "a"
    assert {p.name for p in a.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, "BUILD_INFO.json"}
    saved = json.loads((a / "BUILD_INFO.json").read_text())
    assert saved["seed"] == 0 and saved["quick"] is True
    assert saved["evaluation"]["target"]["mcd_neutral"] > 0
    assert load_student(a).model.n_tokens == 4
    assert info["total_s"] < 60
    assert "== total" in capsys.readouterr().out
    tts_build.build(tmp_path / "b", 0, tts_build.QUICK)
    b = tmp_path / "b"
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()


def test_student_modules_never_import_textual():
    import subprocess
    import sys

    code = (
        "import sys, engine.tts.model, engine.tts.student, engine.tts.build\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'genesis_tui')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
