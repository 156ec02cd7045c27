"""The profile schema: shipped profiles validate, round-trip through to_toml, and every kind of
mistake becomes one readable ProfileError naming the file, the line, the key and what is expected."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine.errors import ProfileError
from engine.profile import (
    _SECTIONS,
    Profile,
    TeacherSpec,
    load_profile,
    parse_profile,
    schema_help,
)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"

BASE = """\
# a small valid profile
[run]
name = "t"
output_dir = "runs"

[student]
model = "./m/student"

[teacher]
model = "./m/teacher"

[data]
format = "text"
train = "train.txt"
validation = "val.txt"

[population]
size = 4
ranks = [8, 4]

[evolution]
generations = 2
elitism = 1
tournament_size = 2

[training]
steps_per_generation = 3

[devices]
teacher = "cpu"
coliseum = ["cpu"]
"""


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A directory with fake model dirs and data files; the CWD, so messages show 'bad.toml'."""
    (tmp_path / "m" / "student").mkdir(parents=True)
    (tmp_path / "m" / "teacher").mkdir(parents=True)
    (tmp_path / "train.txt").write_text("hello\n")
    (tmp_path / "val.txt").write_text("hello\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(lab: Path, text: str, name: str = "bad.toml") -> Path:
    p = lab / name
    p.write_text(text)
    return p


def error(lab: Path, text: str) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(write(lab, text))
    msg = info.value.message
    assert "\n" not in msg, msg  # one paragraph
    assert "pydantic" not in msg.lower() and "validation error" not in msg.lower(), msg
    assert msg.startswith("bad.toml"), msg  # relative to the CWD
    return msg


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


# --- valid profiles -------------------------------------------------------------------------------


def test_base_profile_resolves_paths_and_defaults(lab):
    p = load_profile(write(lab, BASE, "ok.toml"))
    assert p.source == lab / "ok.toml"
    assert p.run.output_dir == lab / "runs"
    assert p.student.model == str(lab / "m" / "student")
    assert p.data.train == lab / "train.txt" and p.data.train.is_absolute()
    assert p.population.ranks == [4, 8]  # stored sorted
    assert p.population.learning_rate_spread == 1.0 and p.training.loss == "ce"
    assert isinstance(p.teacher, TeacherSpec) and p.teacher.enabled
    assert p.model_config["frozen"] and p.model_config["extra"] == "forbid"
    with pytest.raises(Exception):  # noqa: B017 - frozen
        p.run.seed = 3  # type: ignore[misc]


def test_round_trip_through_to_toml(lab):
    p = load_profile(write(lab, BASE, "ok.toml"))
    text = p.to_toml()
    assert parse_profile(text, source=p.source) == p
    # and from another directory: stored paths are absolute
    other = lab / "elsewhere"
    other.mkdir()
    again = parse_profile(text, source=other / "profile.toml")
    assert again.model_dump(exclude={"source"}) == p.model_dump(exclude={"source"})


def test_absent_or_disabled_teacher_means_no_teacher(lab):
    no_teacher = BASE.replace('[teacher]\nmodel = "./m/teacher"\n', "")
    assert load_profile(write(lab, no_teacher, "a.toml")).teacher is None
    disabled = BASE.replace('model = "./m/teacher"', 'model = "./m/gone"\nenabled = false')
    p = load_profile(write(lab, disabled, "b.toml"))
    assert p.teacher is not None and not p.teacher.enabled
    assert parse_profile(p.to_toml(), source=p.source) == p


def test_card_memory_and_model_config_for_the_estimate(lab):
    (lab / "cfg").mkdir()
    (lab / "cfg" / "config.json").write_text("{}")
    text = BASE.replace('coliseum = ["cpu"]', 'coliseum = ["cpu"]\ngpu_memory_gb = 32').replace(
        'model = "./m/student"', 'model = "org/student"\nconfig = "cfg"'
    )
    p = load_profile(write(lab, text, "ok.toml"))
    assert p.devices.gpu_memory_gb == 32.0 and p.student.config == lab / "cfg"
    assert parse_profile(p.to_toml(), source=p.source) == p
    table = text.replace("gpu_memory_gb = 32", 'gpu_memory_gb = { "cuda:0" = 32, "cuda:1" = 24.5 }')
    p = load_profile(
        write(lab, table.replace('config = "cfg"', 'config = "cfg/config.json"'), "t.toml")
    )
    assert p.devices.gpu_memory_gb == {"cuda:0": 32.0, "cuda:1": 24.5}
    assert p.student.config == lab / "cfg" / "config.json"
    assert parse_profile(p.to_toml(), source=p.source) == p


@pytest.mark.parametrize(
    "old,new,expect",
    [
        (
            'coliseum = ["cpu"]',
            'coliseum = ["cpu"]\ngpu_memory_gb = "32"',
            "without quotes",
        ),
        ('coliseum = ["cpu"]', 'coliseum = ["cpu"]\ngpu_memory_gb = 0', "greater than 0"),
        ('coliseum = ["cpu"]', 'coliseum = ["cpu"]\ngpu_memory_gb = [32]', "or a table"),
        ('coliseum = ["cpu"]', 'coliseum = ["cpu"]\ngpu_memory_gb = { gpu0 = 32 }', '"gpu0"'),
        ('coliseum = ["cpu"]', 'coliseum = ["cpu"]\ngpu_memory_gb = { "cuda:1" = -2 }', '"cuda:1"'),
        ('model = "./m/teacher"', 'model = "./m/teacher"\nconfig = "nowhere"', "is missing"),
        ('model = "./m/teacher"', 'model = "./m/teacher"\nconfig = "m"', "without a config.json"),
    ],
)
def test_bad_card_memory_or_model_config(lab, old, new, expect):
    text = BASE.replace(old, new)
    msg = error(lab, text)
    key = "gpu_memory_gb" if "gpu_memory_gb" in new else "config"
    assert f"line {line_of(text, key)}" in msg and key in msg and expect in msg, msg


def test_hub_ids_are_not_checked_for_existence(lab):
    text = BASE.replace("./m/student", "BioMistral/BioMistral-7B").replace("./m/teacher", "gpt2")
    p = load_profile(write(lab, text, "hub.toml"))
    assert p.student.model == "BioMistral/BioMistral-7B" and p.teacher.model == "gpt2"


def test_inline_and_dotted_forms_are_accepted(lab):
    text = BASE.replace("[population]\nsize = 4\nranks = [8, 4]\n", "").replace(
        "# a small valid profile\n",
        'population = { size = 4, ranks = [4, 8] }\nevolution.crossover = "ties"\n',
    )
    with pytest.raises(
        ProfileError
    ):  # [evolution] appears as a dotted key and as a header: a TOML error
        load_profile(write(lab, text, "x.toml"))
    text = text.replace('evolution.crossover = "ties"\n', "")
    assert load_profile(write(lab, text, "y.toml")).population.size == 4


def _assets_copy(tmp_path: Path, name: str) -> Path:
    """A copy of a shipped profile in a tmp tree with (fake) asset files where it points."""
    (tmp_path / "profiles").mkdir(exist_ok=True)
    dst = tmp_path / "profiles" / name
    shutil.copy(PROFILES / name, dst)
    text = dst.read_text()
    for rel in re.findall(
        r'^\s*(?:train|validation|model|config)\s*=\s*"(\.\./[^"]+)"', text, re.M
    ):
        target = (dst.parent / rel).resolve()
        if "/models/" in rel:
            target.mkdir(parents=True, exist_ok=True)
        elif "/configs/" in rel:  # the shipped config, which the memory estimate reads
            shutil.copytree(PROFILES.parent / rel.removeprefix("../"), target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x\n")
    return dst


@pytest.mark.parametrize(
    "name",
    [
        "demo.toml",
        "demo-ce-only.toml",
        "medical-dual-gpu.toml",
        "medical-70b-teacher.toml",
        "tinyllama.toml",
        "ray-cluster.toml",
    ],
)
def test_shipped_profiles_validate_and_round_trip(name, tmp_path):
    p = load_profile(_assets_copy(tmp_path, name))
    assert parse_profile(p.to_toml(), source=p.source) == p
    assert p.run.output_dir == tmp_path / "runs"


def test_shipped_profile_values(tmp_path):
    demo = load_profile(_assets_copy(tmp_path, "demo.toml"))
    assert (demo.population.size, demo.population.ranks, demo.evolution.generations) == (
        8,
        [4, 8, 16],
        10,
    )
    assert (demo.evolution.elitism, demo.evolution.tournament_size, demo.evolution.crossover) == (
        2,
        2,
        "slerp",
    )
    # the budget the compute-matched fine-tune gets (docs/BENCHMARKS.md)
    assert demo.planned_train_steps() == 780
    assert demo.evolution.continue_elites and demo.evolution.soup == 6
    assert demo.population.learning_rate_spread == 4.0
    assert (demo.training.steps_per_generation, demo.training.learning_rate) == (30, 2e-3)
    assert (
        demo.data.format,
        demo.data.batch_size,
        demo.data.max_seq_len,
        demo.data.max_val_examples,
    ) == ("text", 8, 128, 128)
    assert (demo.devices.teacher, demo.devices.coliseum) == ("cpu", ["cpu"])
    assert "generations = 10" in demo.to_toml()
    assert demo.data.max_train_examples == 64
    assert demo.population.target_modules == [
        *("q_proj", "k_proj", "v_proj", "o_proj"),
        *("gate_proj", "up_proj", "down_proj"),
    ]
    assert demo.population.kd_alphas == [0.0, 0.25, 0.5]
    assert demo.population.weight_decays == [0.0, 0.1, 0.5] and demo.evolution.patience == 2
    assert (demo.distill.mode, demo.distill.temperature, demo.distill.alpha) == ("logits", 2.0, 0.5)
    assert demo.distill.cache and demo.prune.layers == 0.25
    # The comparison run is the same run without the teacher's logits, and nothing else.
    ce = load_profile(_assets_copy(tmp_path, "demo-ce-only.toml"))
    assert ce.distill.mode == "off" and ce.run.name == "demo-ce-only"
    same = ce.model_copy(
        update={
            "distill": ce.distill.model_copy(update={"mode": "logits"}),
            "population": ce.population.model_copy(update={"kd_alphas": [0.0, 0.25, 0.5]}),
            "run": ce.run.model_copy(update={"name": "demo"}),
        }
    )
    assert tomllib.loads(same.to_toml()) == tomllib.loads(demo.to_toml())

    # The seed's lab on its rig: a teacher with the student's tokenizer (logit KD is valid), a
    # fifth of the student's blocks pruned first, 10-20 individuals of ranks 8/16/32, two 32 GB
    # cards (tests/test_memory.py checks that it fits them).
    med = load_profile(_assets_copy(tmp_path, "medical-dual-gpu.toml"))
    assert med.student.model == "BioMistral/BioMistral-7B" and med.student.dtype == "bfloat16"
    t = med.teacher
    assert t is not None and t.model == "BioMistral/BioMistral-7B-DARE"
    assert med.student.config == t.config == tmp_path / "assets" / "configs" / "biomistral-7b"
    assert (med.devices.teacher, med.devices.coliseum) == ("cuda:0", ["cuda:1"])
    assert med.devices.gpu_memory_gb == {"cuda:0": 32.0, "cuda:1": 32.0}
    assert 10 <= med.population.size <= 20 and med.population.ranks == [8, 16, 32]
    assert (med.distill.mode, med.prune.layers, med.run.seed) == ("logits", 0.2, 0)
    assert (med.data.format, med.data.max_seq_len) == ("alpaca", 512)
    # The 70B teacher: another tokenizer, so sequence-level KD; too big for one card, so the CPU.
    big = load_profile(_assets_copy(tmp_path, "medical-70b-teacher.toml"))
    assert big.teacher.model == "meta-llama/Meta-Llama-3-70B-Instruct" and big.teacher.load_in_4bit
    assert (big.distill.mode, big.devices.teacher) == ("sequence", "cpu")
    assert big.devices.coliseum == ["cuda:0", "cuda:1"]

    tiny = load_profile(_assets_copy(tmp_path, "tinyllama.toml"))
    assert tiny.student.model == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert tiny.teacher is None or not tiny.teacher.enabled
    assert tiny.population.target_modules == ["q_proj", "v_proj", "o_proj"]
    assert (tiny.devices.coliseum, tiny.data.format) == (["cuda:0"], "mistral-inst")


DEMO_ASSETS = [ROOT / "assets" / "models" / m for m in ("student", "teacher")] + [
    ROOT / "assets" / "data" / f for f in ("domain_train.txt", "domain_val.txt")
]


@pytest.mark.skipif(not all(p.exists() for p in DEMO_ASSETS), reason="demo assets not built")
def test_shipped_demo_validates_in_place():
    p = load_profile(PROFILES / "demo.toml")
    assert p.run.output_dir == ROOT / "runs"
    assert f'output_dir = "{ROOT / "runs"}"' in p.to_toml()


# --- bad profiles ---------------------------------------------------------------------------------


def test_toml_syntax_error(lab):
    text = BASE.replace("size = 4", "size 4")
    msg = error(lab, text)
    assert (
        f"line {line_of(text, 'size 4')}, column" in msg
        and "invalid TOML" in msg
        and "size 4" in msg
    )


def test_section_given_twice(lab):
    msg = error(lab, BASE + "\n[run]\nseed = 1\n")
    assert "invalid TOML" in msg and "[run] appears twice" in msg


def test_unknown_section_suggests_closest(lab):
    text = BASE + "\n[evoluton]\nelitism = 1\n"
    msg = error(lab, text)
    assert f"line {line_of(text, '[evoluton]')}" in msg and "unknown section [evoluton]" in msg
    assert "did you mean [evolution]?" in msg


def test_unknown_key_suggests_closest(lab):
    text = BASE.replace("elitism = 1", "elitsm = 1")
    msg = error(lab, text)
    assert (
        f"line {line_of(text, 'elitsm')}, [evolution] elitsm = 1" in msg
        and "did you mean 'elitism'?" in msg
    )


def test_key_in_the_wrong_section(lab):
    text = BASE.replace("size = 4", "size = 4\nelitism = 1")
    msg = error(lab, text)
    assert "[population] elitism" in msg and "belongs in [evolution]" in msg


def test_device_under_student_points_to_devices(lab):
    text = BASE.replace('model = "./m/student"', 'model = "./m/student"\ndevice = "cuda:1"')
    msg = error(lab, text)
    assert f"line {line_of(text, 'device = ')}, [student] device" in msg
    assert 'device placement is set in [devices] (teacher = "cpu", coliseum = ["cpu"])' in msg


def test_missing_required_key(lab):
    text = BASE.replace('train = "train.txt"\n', "")
    msg = error(lab, text)
    assert (
        f"line {line_of(text, '[data]')}, [data]" in msg and "missing required key 'train'" in msg
    )


def test_missing_required_section(lab):
    text = BASE.replace(
        '[data]\nformat = "text"\ntrain = "train.txt"\nvalidation = "val.txt"\n', ""
    )
    msg = error(lab, text)
    assert "missing required section [data]" in msg


def test_wrong_type_string_for_integer(lab):
    text = BASE.replace("size = 4", 'size = "8"')
    msg = error(lab, text)
    assert f"line {line_of(text, 'size =')}, [population] size" in msg
    assert 'expected an integer, got the string "8"' in msg


def test_wrong_type_float_for_integer_and_string_for_list(lab):
    assert "expected an integer, got the number 4.0" in error(
        lab, BASE.replace("size = 4", "size = 4.0")
    )
    msg = error(lab, BASE.replace('coliseum = ["cpu"]', 'coliseum = "cpu"'))
    assert "[devices] coliseum" in msg and "expected a list of strings" in msg


def test_out_of_range(lab):
    text = BASE.replace("size = 4", "size = 1")
    msg = error(lab, text)
    assert (
        f"line {line_of(text, 'size = 1')}, [population] size = 1: must be at least 2" in msg
        and "2 to 4096" in msg
    )


def test_out_of_range_float(lab):
    text = BASE.replace("ranks = [8, 4]", "ranks = [8, 4]\ndropout = 1.5")
    msg = error(lab, text)
    assert (
        f"line {line_of(text, 'dropout')}, [population] dropout = 1.5: must be less than 1 " in msg
    )


def test_error_line_in_inline_table(lab):
    text = BASE.replace("[population]\nsize = 4\nranks = [8, 4]\n", "").replace(
        "# a small valid profile\n", "population = { size = 1 }\n"
    )
    assert error(lab, text).startswith(
        "bad.toml, line 1, [population] size = 1: must be at least 2"
    )


def test_list_item_out_of_range(lab):
    msg = error(lab, BASE.replace("ranks = [8, 4]", "ranks = [4, 0]"))
    assert "[population] ranks = [4, 0]: item 2 (0) must be at least 1" in msg


def test_duplicate_ranks(lab):
    msg = error(lab, BASE.replace("ranks = [8, 4]", "ranks = [4, 8, 4]"))
    assert "[population] ranks" in msg and "4 more than once" in msg


def test_bad_choice_lists_allowed_values(lab):
    text = BASE.replace("generations = 2", 'generations = 2\ncrossover = "slurp"')
    msg = error(lab, text)
    assert f"line {line_of(text, 'slurp')}, [evolution] crossover" in msg
    assert 'did you mean "slerp"?' in msg and '"linear", "slerp", "ties", "dare"' in msg


def test_elitism_must_leave_room_for_children(lab):
    text = BASE.replace("elitism = 1", "elitism = 8").replace("size = 4", "size = 8")
    msg = error(lab, text)
    assert (
        f"bad.toml, line {line_of(text, 'elitism')}, [evolution] elitism = 8: must be less than [population] size (8)"
        in msg
    )
    assert "at least one place must be left for children" in msg


def test_tournament_larger_than_population(lab):
    text = BASE.replace("tournament_size = 2", "tournament_size = 9")
    msg = error(lab, text)
    assert f"line {line_of(text, 'tournament_size')}, [evolution] tournament_size = 9" in msg
    assert "at most [population] size (4)" in msg


def test_4bit_student_on_mps_is_refused_a_4bit_teacher_falls_back(lab):
    text = BASE.replace('coliseum = ["cpu"]', 'coliseum = ["mps"]').replace(
        'model = "./m/student"', 'model = "./m/student"\nload_in_4bit = true'
    )
    msg = error(lab, text)
    assert f"line {line_of(text, 'load_in_4bit')}, [student] load_in_4bit = true" in msg
    assert "bitsandbytes" in msg and "mps" in msg
    # The teacher is only read: on a device without 4-bit support it is loaded in full
    # precision with a warning (engine.models.quantization_fallback), not refused.
    text = BASE.replace('teacher = "cpu"', 'teacher = "mps"').replace(
        'model = "./m/teacher"', 'model = "./m/teacher"\nload_in_4bit = true'
    )
    (lab / "p.toml").write_text(text)
    assert load_profile(lab / "p.toml").teacher.load_in_4bit


def test_sequence_distillation_needs_prompts(lab):
    text = BASE + '\n[distill]\nmode = "sequence"\n'
    msg = error(lab, text)
    assert f"line {line_of(text, 'sequence')}, [distill] mode" in msg
    assert 'format = "text" has no prompts' in msg


def test_bad_device_name(lab):
    msg = error(lab, BASE.replace('coliseum = ["cpu"]', 'coliseum = ["cpu", "gpu1"]'))
    assert "[devices] coliseum" in msg and '"gpu1" is not a device name' in msg and "cuda:N" in msg


def test_missing_data_file(lab):
    text = BASE.replace('validation = "val.txt"', 'validation = "nope.txt"')
    msg = error(lab, text)
    assert f"line {line_of(text, 'nope.txt')}, [data] validation" in msg and "missing" in msg
    assert str(lab / "nope.txt") in msg


def test_missing_local_model_directory(lab):
    text = BASE.replace("./m/student", "./m/nowhere")
    msg = error(lab, text)
    assert f"line {line_of(text, 'nowhere')}, [student] model" in msg and "missing" in msg


def test_bad_run_name(lab):
    msg = error(lab, BASE.replace('name = "t"', 'name = "my run"'))
    assert "[run] name" in msg and "letters, digits" in msg


def test_key_outside_any_section(lab):
    msg = error(lab, "seed = 3\n" + BASE)
    assert msg.startswith("bad.toml, line 1") and "did you mean [run] seed?" in msg


def test_several_problems_report_the_first_and_count_the_rest(lab):
    text = BASE.replace("size = 4", 'size = "x"').replace("elitism = 1", "elitism = -1")
    msg = error(lab, text)
    assert "[population] size" in msg and msg.endswith("(and 1 more problem).")


def test_missing_profile_file(lab):
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(lab / "absent.toml")


def test_parse_profile_from_text(lab):
    p = parse_profile(BASE, source=Path("virtual.toml"))
    assert p.source == lab / "virtual.toml" and p.data.validation == lab / "val.txt"
    with pytest.raises(ProfileError, match=r"^virtual\.toml, line \d+, \[evolution\] elitism"):
        parse_profile(BASE.replace("elitism = 1", "elitism = 4"), source=Path("virtual.toml"))


# --- --help-profile -------------------------------------------------------------------------------


def test_schema_help_mentions_every_field_of_every_section():
    text = schema_help()
    assert "[" in text and "\x1b" not in text and "[bold" not in text
    for section, model in _SECTIONS.items():
        assert f"[{section}]" in text
        block = text.split(f"[{section}]  ", 1)[1]
        for key, field in model.model_fields.items():
            assert re.search(rf"^  {key}\s", block, re.M), (section, key)
            assert field.description and field.description in block, (section, key)
    assert "default: 8" in text and '"slerp"' in text and "2 to 4096" in text
    assert set(Profile.model_fields) - {"source"} == set(_SECTIONS)
