"""The Ray executor on a private local Ray instance (loopback, CPU actors): the same run as the
local executor, a lost actor handled like a dead worker, and clear errors where Ray cannot serve."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import alpaca_from_text, board

from engine import events as ev
from engine.orchestrator import Orchestrator
from engine.profile import load_profile
from engine.rundir import RunDir

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


async def run(profile, listen=None) -> tuple[Orchestrator, ev.RunFinished]:
    rd = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    orch = Orchestrator(profile, rd)
    if listen is not None:
        orch.subscribe(listen)
    return orch, await orch.run()


async def test_two_ray_actors_give_the_same_leaderboard_as_local_workers(tiny_profile):
    # Logit distillation from a cached teacher: the cache travels through the object store.
    over = dict(devices__coliseum=["cpu", "cpu"], distill__mode="logits")
    local, done = await run(load_profile(tiny_profile(**over)))
    assert done.status == "completed", done.reason
    seen: list[ev.Event] = []
    on_ray, done = await run(
        load_profile(tiny_profile(devices__executor="ray", **over)), seen.append
    )
    assert done.status == "completed", done.reason
    assert board(on_ray.run_dir.path) == board(local.run_dir.path)
    ready = [e for e in seen if isinstance(e, ev.WorkerState) and e.state == "ready"]
    assert sorted(e.worker for e in ready) == ["coliseum-0", "coliseum-1", "teacher"]
    assert all(" on " in e.detail for e in ready)  # the node each actor landed on
    # both actors trained: the population was spread over them
    assert {e.worker for e in seen if isinstance(e, ev.TrainFinished)} == {
        "coliseum-0",
        "coliseum-1",
    }
    assert [e.kind for e in seen if isinstance(e, ev.TrainProgress)]  # progress came back
    champion = on_ray.run_dir.path / "champion"
    assert (champion / "adapter_model.safetensors").is_file()
    recipe = (champion / "merge.yaml").read_text()
    # the adapter beside the recipe, the student where the head has it: no path of an actor's node
    assert f"{on_ray.profile.student.model}+." in recipe and "genesis-export" not in recipe


async def test_sequence_distillation_on_ray_matches_local(tiny_lab, tiny_profile, tmp_path):
    # The teacher's answers are a file on its node: they reach the coliseum actors as bytes.
    train = alpaca_from_text(tiny_lab["data"] / "train.txt", tmp_path / "train.jsonl")
    val = alpaca_from_text(tiny_lab["data"] / "val.txt", tmp_path / "val.jsonl")
    over = dict(
        data__format="alpaca",
        data__train=str(train),
        data__validation=str(val),
        distill__mode="sequence",
        distill__max_new_tokens=6,
        training__steps_per_generation=4,
        devices__coliseum=["cpu", "cpu"],
    )
    local, done = await run(load_profile(tiny_profile(**over)))
    assert done.status == "completed", done.reason
    on_ray, done = await run(load_profile(tiny_profile(devices__executor="ray", **over)))
    assert done.status == "completed", done.reason
    assert board(on_ray.run_dir.path) == board(local.run_dir.path)


async def test_a_lost_actor_mid_generation_is_replaced_and_the_run_completes(tiny_profile):
    # The student is pruned first: the pruned checkpoint exists only in the run directory and
    # reaches the actors (the replacement too) through the object store.
    profile = load_profile(
        tiny_profile(
            devices__executor="ray",
            devices__coliseum=["cpu", "cpu"],
            teacher__enabled=False,
            training__steps_per_generation=30,
            prune__layers=0.5,
            prune__calibration_rows=16,
        )
    )
    seen: list[ev.Event] = []
    killed: dict = {}
    pids = {}

    def on(e):
        seen.append(e)
        if isinstance(e, ev.WorkerState) and e.state == "ready":
            pids[e.worker] = e.pid
        if isinstance(e, ev.TrainProgress) and not killed and len(pids) == 2:
            killed.update(id=e.id, pid=pids["coliseum-0"])
            os.kill(killed["pid"], signal.SIGKILL)  # its node, as far as the actor can tell

    orch, done = await run(profile, on)
    assert done.status == "completed", done.reason
    assert orch.run_dir.checkpoints() == [0, 1]
    assert all(i.fitness is not None for i in orch.population)
    lost = [e.message for e in seen if isinstance(e, ev.Log) and "was lost" in e.message]
    assert lost and lost[0].startswith(f"Ray actor coliseum-0 (pid {killed['pid']}")
    assert "replacing it (restart 1 of 3)" in lost[0]
    trained = [e.id for e in seen if isinstance(e, ev.TrainFinished)]
    assert len(trained) == len(set(trained))  # each individual trained to the end once
    generation_0 = [e for e in seen if isinstance(e, ev.GenerationStarted)][0].to_train
    assert set(generation_0) <= set(trained)
    pruned = orch.run_dir.path / "pruned"
    assert [e for e in seen if isinstance(e, ev.PruneReport)][0].blocks_after == 1
    recipe = (orch.run_dir.path / "champion" / "merge.yaml").read_text()
    assert "../pruned+." in recipe and "genesis-model-" not in recipe  # the run dir's own student
    assert (pruned / "config.json").is_file()
    # what each actor printed is in the run directory, the lost one's and its replacement's
    log = (orch.run_dir.path / "logs" / "coliseum-0.log").read_text()
    assert log.count("--- Ray actor coliseum-0, pid ") == 2
    assert f"pid {killed['pid']} on " in log


def test_the_tts_track_across_two_ray_nodes_matches_local_processes(tmp_path):
    """Style coliseums as Ray actors on a two-node cluster on this machine (two raylets, two
    object stores, each node its own temporary directory — ray.cluster_utils.Cluster): one
    actor per node, the population shared out between them; the pruning sweep's student, which
    exists only in the head's run directory, lands on each node through the object store; the
    leaderboard is the local executor's, and each actor's output is in RUN/logs."""
    import asyncio
    import csv

    from ray.cluster_utils import Cluster

    from engine.profile import parse_profile
    from engine.tts.orchestrator import StyleOrchestrator

    def text(executor: str, address: str = "") -> str:
        return (
            f'[run]\nname = "{executor}"\nseed = 3\noutput_dir = "{tmp_path}"\n'
            '[tts]\nsentences = ["The scan was abnormal."]\npopulation = 6\n'
            'griffin_lim_iters = 4\ntempo_weight = 10\ndevices = ["cpu", "cpu"]\n'
            "prune_sweep = [0.3]\n"
            f'[devices]\nthreads_per_worker = 1\nexecutor = "{executor}"\n'
            f'ray_address = "{address}"\n'
            "[evolution]\ngenerations = 2\nelitism = 2\ntournament_size = 2\n"
        )

    def run(profile_text: str, name: str, listen=None):
        profile = parse_profile(profile_text, source=tmp_path / f"{name}.toml")
        rd = RunDir.create(tmp_path, name, profile.to_toml())
        orch = StyleOrchestrator(profile, rd)
        if listen is not None:
            orch.subscribe(listen)
        done = asyncio.run(orch.run())
        assert done.status == "completed", done.reason
        with open(rd.path / "leaderboard.csv") as f:
            board = [(r["id"], r["fitness"], r["duration_ratio"]) for r in csv.DictReader(f)]
        return orch, rd, board

    _, _, local = run(text("local"), "local")
    node_tmp = [tmp_path / "node-a", tmp_path / "node-b"]
    for d in node_tmp:
        d.mkdir()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "env_vars": {"TMPDIR": str(node_tmp[0])}},
    )
    try:
        cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(node_tmp[1])})
        seen: list[ev.Event] = []
        orch, rd, on_ray = run(text("ray", cluster.address), "ray", seen.append)
    finally:
        cluster.shutdown()
    assert on_ray == local
    ready = [e for e in seen if isinstance(e, ev.WorkerState) and e.state == "ready"]
    assert sorted(e.worker for e in ready) == ["style-0", "style-1"]
    nodes = {e.detail.split("(Ray node ")[1][:8] for e in ready}
    assert len(nodes) == 2  # one actor on each node
    busy = {e.worker for e in seen if isinstance(e, ev.WorkerState) and e.state == "busy"}
    assert busy == {"style-0", "style-1"}  # the population was shared out
    for d in node_tmp:  # the swept student, landed on each node from the object store
        (landed,) = d.glob("genesis-model-*")
        assert (landed / "model.safetensors").is_file()
        assert not list((d / "genesis-ray-logs").glob("*.log"))  # collected, then removed
    assert (rd.path / "audio" / f"0001-{orch.champion.id}.wav").is_file()
    for name in ("style-0", "style-1"):
        assert "--- Ray actor " in (rd.path / "logs" / f"{name}.log").read_text()


def test_a_private_instance_is_started_even_beside_another_ray_cluster(tiny_profile, tmp_path):
    """A run with no [devices] ray_address starts a Ray instance of its own, even while another
    cluster runs on the machine (ray.init() alone joins the newest one it finds, and then refuses
    the CPUs it is given: found with the two-node test running beside the engine-kill test)."""
    from conftest import cli, only_run
    from ray.cluster_utils import Cluster

    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        r = cli("--profile", str(tiny_profile(devices__executor="ray")), "--headless")
    finally:
        other.shutdown()
    assert r.returncode == 0, r.stdout + r.stderr
    events = (only_run(tmp_path / "runs") / "events.jsonl").read_text()
    assert '"status":"completed"' in events


def test_without_ray_installed_the_executor_is_a_profile_error(tiny_profile, monkeypatch):
    import importlib.util

    from engine.errors import ProfileError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ProfileError) as err:
        load_profile(tiny_profile(devices__executor="ray"))
    msg = err.value.message
    assert "executor" in msg and "pip install 'genesis-tui[ray]'" in msg and ", line " in msg


async def test_a_cluster_without_the_gpus_asked_for_says_so(tiny_profile):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    profile = load_profile(
        tiny_profile(devices__executor="ray", devices__coliseum=["cuda"], teacher__enabled=False)
    )
    _, done = await run(profile)
    assert done.status == "failed"
    assert "the local Ray instance cannot place this run's actors" in done.reason
    assert "ask for 1 GPU(s)" in done.reason and "offers 0 GPU(s)" in done.reason


def test_the_cluster_profile_explains_itself_here():
    from conftest import cli

    r = cli("--profile", "profiles/ray-cluster.toml", "--check", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not in the local Hugging Face cache" in r.stderr and "hf download" in r.stderr
    assert r.stderr.count("\n") == 1  # one paragraph
