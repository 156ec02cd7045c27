"""The TTS track's style evolution: genome operators, profile, and a tiny run end to end through
the real style-coliseum worker process (events, checkpoints, WAVs)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import genetics
from engine.errors import ProfileError
from engine.events import (
    AudioSample,
    GenerationFinished,
    IndividualUpdate,
    RunFinished,
    RunStarted,
)
from engine.profile import parse_profile
from engine.rundir import RunDir
from engine.tts.evolution import (
    StyleIndividual,
    crossover,
    initial_logits,
    make_child,
    mutate,
    next_generation,
    softmax,
)

SENTENCE = "The scan was abnormal."


def tiny_profile_text(out: Path, **tts) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in tts.items())
    return (
        f'[run]\nname = "tiny"\nseed = 3\noutput_dir = "{out}"\n'
        f'[tts]\nsentences = ["{SENTENCE}"]\npopulation = 6\ngriffin_lim_iters = 4\n{extra}'
        "[devices]\nthreads_per_worker = 1\n"
        "[evolution]\ngenerations = 2\nelitism = 2\ntournament_size = 2\n"
        "mutation_rate = 0.5\nmutation_scale = 0.5\n"
    )


# --- genome operators -------------------------------------------------------------------------


def test_softmax_is_on_the_simplex():
    rng = random.Random(0)
    for _ in range(20):
        w = softmax([rng.gauss(0, 5) for _ in range(10)])
        assert all(x >= 0 for x in w)
        assert math.isclose(sum(w), 1.0, rel_tol=1e-9)
    assert softmax([0.0] * 10) == pytest.approx([0.1] * 10)  # all zeros: neutral
    assert sum(softmax([1000.0, 0.0])) == pytest.approx(1.0)  # no overflow


def test_initial_population_starts_with_neutral_and_is_seeded():
    a = initial_logits(5, 10, 1.0, random.Random(7))
    b = initial_logits(5, 10, 1.0, random.Random(7))
    assert a == b and len(a) == 5
    assert a[0] == [0.0] * 10
    assert a[1] != a[2]


def test_crossover_and_mutation_are_deterministic():
    a, b = [1.0, 0.0, -1.0], [0.0, 2.0, 1.0]
    assert crossover(a, b, 0.25) == pytest.approx([0.25, 1.5, 0.5])
    m1, n1 = mutate(a, 0.5, 0.3, random.Random(1))
    m2, n2 = mutate(a, 0.5, 0.3, random.Random(1))
    assert (m1, n1) == (m2, n2)
    assert mutate(a, 0.0, 0.3, random.Random(1)) == (a, 0)
    assert mutate(a, 1.0, 0.0, random.Random(1)) == (a, 0)
    pa = StyleIndividual("a", 0, a, fitness=-3.0)
    pb = StyleIndividual("b", 0, b, fitness=-4.0)
    c1 = make_child("c", 1, pa, pb, random.Random(5), mutation_rate=0.5, mutation_scale=0.5)
    c2 = make_child("c", 1, pa, pb, random.Random(5), mutation_rate=0.5, mutation_scale=0.5)
    assert c1 == c2 and c1.parents == ["a", "b"] and c1.operator.startswith("blend")


def test_next_generation_keeps_elites_through_shared_genetics():
    class Evo:
        elitism, tournament_size, crossover_rate, mutation_rate, mutation_scale = (
            2,
            2,
            0.9,
            0.5,
            0.5,
        )

    pop = [StyleIndividual(f"g0-{i}", 0, [float(i)] * 3, fitness=-float(i)) for i in range(6)]
    ids = iter(range(100, 200))
    elites, children = next_generation(
        pop, 1, 6, Evo, random.Random(0), lambda g: f"g{g}-{next(ids)}"
    )
    assert [e.id for e in elites] == [x.id for x in genetics.ranked(pop)[:2]]
    assert len(children) == 4 and all(c.fitness is None for c in children)
    # state round trip (JSON, no pickle)
    c = children[0]
    assert StyleIndividual.from_state(json.loads(json.dumps(c.to_state()))) == c


# --- profile ----------------------------------------------------------------------------------


def test_tts_profile_needs_no_llm_sections(tmp_path):
    p = parse_profile(tiny_profile_text(tmp_path), source=tmp_path / "p.toml")
    assert p.is_tts and p.student is None and p.data is None
    assert p.tts.style().label == "en-us+f3 p70 g50 r200"
    # the resolved profile round-trips (it is stored in the run directory)
    assert parse_profile(p.to_toml(), source=p.source) == p


@pytest.mark.parametrize(
    "over, key",
    [
        ({"voice": "zz-nope"}, "[tts] voice"),
        ({"pitch": 300}, "[tts] pitch"),
        ({"variant": "nope9"}, "[tts] variant"),
    ],
)
def test_bad_style_is_one_paragraph_naming_the_key(tmp_path, over, key):
    with pytest.raises(ProfileError) as err:
        parse_profile(tiny_profile_text(tmp_path, **over), source=tmp_path / "p.toml")
    msg = err.value.message
    assert key in msg and "\n" not in msg, msg


def test_llm_profile_without_student_names_the_section(tmp_path):
    with pytest.raises(ProfileError, match=r"missing required section \[student\]"):
        parse_profile('[run]\nname = "x"\n', source=tmp_path / "p.toml")


def test_tts_elitism_is_checked_against_the_tts_population(tmp_path):
    text = tiny_profile_text(tmp_path).replace("elitism = 2", "elitism = 6")
    with pytest.raises(
        ProfileError, match=r"\[evolution\] elitism = 6: must be less than \[tts\] population"
    ):
        parse_profile(text, source=tmp_path / "p.toml")


# --- a tiny run end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from engine.tts.orchestrator import StyleOrchestrator

    tmp = tmp_path_factory.mktemp("tts-run")
    profile = parse_profile(tiny_profile_text(tmp, tempo_weight=10), source=tmp / "p.toml")
    run = RunDir.create(tmp, "tiny", profile.to_toml())
    orch = StyleOrchestrator(profile, run)
    events = []
    orch.subscribe(events.append)
    finished = asyncio.run(orch.run())
    return profile, run, orch, events, finished


def test_tiny_run_writes_events_checkpoints_and_wavs(tiny_run):
    import soundfile as sf

    profile, run, orch, events, finished = tiny_run
    assert finished.status == "completed", finished.reason
    assert run.checkpoints() == [0, 1]
    state = json.loads((run.checkpoint_path(1) / "state.json").read_text())
    assert state["track"] == "tts" and len(state["population"]) == 6
    assert all(len(i["logits"]) == 10 for i in state["population"])
    logged = run.read_events()
    samples = [e for e in logged if isinstance(e, AudioSample)]
    names = {Path(e.path).name for e in samples}
    assert {"target.wav", "neutral.wav"} <= names
    per_gen = [e for e in samples if e.generation >= 0 and Path(e.path).name != "neutral.wav"]
    assert sorted(e.generation for e in per_gen) == [0, 1]
    for e in samples:
        data, sr = sf.read(e.path, dtype="float32")
        assert sr == 22050 == e.sample_rate
        assert len(data) > 0.3 * sr and float(np.sqrt(np.mean(data**2))) > 1e-3  # not silent
    gens = [e for e in logged if isinstance(e, GenerationFinished)]
    assert [g.generation for g in gens] == [0, 1]
    assert any(isinstance(e, IndividualUpdate) and e.genome.get("kind") == "style" for e in logged)
    assert isinstance(logged[-1], RunFinished)
    # the UI learns the track and what −fitness is from RunStarted, not from the engine's words
    started = next(e for e in logged if isinstance(e, RunStarted))
    assert (started.track, started.metric) == ("tts", "MCD+tempo")


def test_champion_never_gets_worse(tiny_run):
    _, _, _, events, _ = tiny_run
    best = [e.best for e in events if isinstance(e, GenerationFinished)]
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:], strict=False))


def test_neutral_fitness_is_minus_the_direct_mcd_and_tempo_error(tiny_run):
    import torch

    from engine.tts.espeak import synthesize
    from engine.tts.mcd import MCDReference
    from engine.tts.student import load_student, mels_to_audio

    profile, run, orch, _, _ = tiny_run
    torch.set_num_threads(1)
    student = load_student(profile.tts.assets_dir())
    ids = student.vocab.encode_text(SENTENCE)
    with torch.no_grad():
        mels, lengths = student.model.synthesize_mel(ids, student.model.neutral_weights(1))
    (wav,) = mels_to_audio(mels, lengths, n_iter=profile.tts.griffin_lim_iters)
    target = synthesize(SENTENCE, profile.tts.style()).samples
    direct = MCDReference(target).score(wav)
    assert orch.neutral_mcd == pytest.approx(direct, abs=1e-4)
    # the tempo term: the log of the duration ratio to espeak-ng's, weighted by tempo_weight
    log_ratio = math.log(len(wav) / len(target))
    state = json.loads((run.checkpoint_path(0) / "state.json").read_text())
    neutral = next(i for i in state["population"] if i["operator"] == "neutral")
    assert neutral["duration_ratio"] == pytest.approx(math.exp(log_ratio), rel=1e-9)
    assert neutral["fitness"] == pytest.approx(-(direct + 10 * abs(log_ratio)), abs=1e-4)
    assert abs(log_ratio) > 0.01  # the term is not vanishing on this sentence


def test_resume_after_the_last_generation_changes_nothing(tiny_run):
    from engine.tts.orchestrator import StyleOrchestrator

    profile, run, orch, _, _ = tiny_run
    again = StyleOrchestrator(profile, RunDir.open(run.path))
    finished = asyncio.run(again.run(resume=True))
    assert finished.status == "completed"
    assert finished.champion == orch.champion.id
    assert [i.to_state() for i in again.population] == [i.to_state() for i in orch.population]


def test_engine_never_imports_textual():
    code = (
        "import sys, engine.tts.evolution, engine.tts.worker, engine.tts.orchestrator, engine.profile\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'genesis_tui')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


async def test_the_tui_shows_a_tts_run_and_its_champion_sample(tiny_run, monkeypatch):
    """The TUI needs nothing new: the leaderboard and the audio pane read the same events."""
    import time

    from genesis_tui.app import GenesisApp
    from genesis_tui.link import ReplayLink
    from genesis_tui.widgets import audio_pane
    from genesis_tui.widgets.leaderboard import Leaderboard

    monkeypatch.setattr(audio_pane, "probe_audio", lambda: "playback unavailable: test")
    _, run, orch, _, _ = tiny_run
    app = GenesisApp(ReplayLink(run.path))
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = time.monotonic() + 10
        while app.finished is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        board = app.query_one(Leaderboard)
        assert board.row_count >= 6
        assert board.selected is not None and board.selected.id == orch.champion.id
        labels = {str(c.key.value): str(c.label) for c in board.columns.values()}
        assert labels["val_loss"] == "MCD dB" and board.style_track  # not "val loss"
        await pilot.press("4")
        await pilot.pause(0.1)
        text = str(app.query_one(audio_pane.AudioPane).content)
        assert ".wav" in text and "audio" in text, text
        # the loss pane and the details speak of scores and MCD, not of training and LoRA
        from genesis_tui.widgets.details import IndividualDetails
        from genesis_tui.widgets.loss_pane import LossPane

        await pilot.press("2")
        await pilot.pause(0.1)
        pane = app.query_one(LossPane)
        assert pane.style_track and not pane.query_one("#train-plot").display
        assert "scored, not trained" in str(pane.query_one("#loss-summary").content)
        await pilot.press("1", "enter")
        await pilot.pause(0.2)
        details = app.screen.query_one(IndividualDetails)
        from rich.console import Console

        console = Console(width=80, record=True, file=io.StringIO())
        console.print(details.query_one("#details-text").content)
        shown = console.export_text()
        assert "dB to the target style" in shown and "× the target's" in shown, shown
        assert "LoRA" not in shown
        # the Log speaks of scoring and of MCD; the individual keys are greyed out
        from genesis_tui.widgets.event_log import EventLog

        log = "\n".join(app.query_one(EventLog).plain)
        assert "generation 0: scoring 6 individuals" in log and "MCD+tempo best" in log
        assert "val loss" not in log and app.track == "tts"
