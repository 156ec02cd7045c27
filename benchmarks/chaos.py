"""Chaos: a lab run during which a random process of the run is SIGKILLed every few seconds
(issue 14). Does the run survive every kill and end with the same leaderboard as an undisturbed
run of the same seed — and with no process of the run left alive?

    python benchmarks/chaos.py                                  # the demo, a kill every ~30 s
    python benchmarks/chaos.py --every 20 --out /tmp/chaos      # runs the reference itself first
    python benchmarks/chaos.py --reference /tmp/ref/demo-…      # an undisturbed run to compare with
    python benchmarks/chaos.py --generations 2 --every 12       # a short smoke run

What it does, through the real command line (``genesis-tui … --headless``, one process per
engine, in a session of its own, the way the TUI starts one):

1. Unless ``--reference RUN_DIR`` is given, runs the profile undisturbed first (same seed, same
   ``[devices] threads_per_worker`` — results reproduce only at the same thread count) under
   ``OUT/reference``. A given reference must have been run with the same profile: its
   profile.toml is compared with this one's, ``[run] output_dir`` and ``name`` aside.
2. Starts the same profile under ``OUT/chaos`` and, every ``--every`` seconds on average (each
   interval drawn from ×0.5–1.5 of it by an RNG seeded with ``--chaos-seed``), SIGKILLs one
   process drawn by that RNG from the run's live, eligible victims: the engine (the CLI process),
   the teacher worker, a coliseum worker (found in ``RUN/workers.jsonl`` — pid and start time —
   and in the event log's ``worker_state`` events; a pid reused by another process is never hit).
3. When the engine was the victim: waits until every process of that engine (its descendants,
   every process of its session, its recorded workers) is gone — more than 5 s is reported and
   fails the benchmark — then starts ``genesis-tui --resume RUN --headless`` and checks that it
   resumed from the newest checkpoint on disk.
4. When the run has completed: compares the leaderboard with the reference's and checks that no
   process of the run is alive; prints a summary and writes it to ``OUT/chaos.json``.

What is compared ("same leaderboard"): every column of every row of ``leaderboard.csv`` (place,
id, generation, status, fitness, val_loss, perplexity, rank, alpha, learning_rate, parents,
operator, test_loss — the file has no wall-time column), as text, in order; and from
``report.json``: ``status``, ``seed``, ``generations_done``, ``planned_train_steps``, the
``champion`` (id, parents, operator, genome, steps, validation and test loss, gap closed, lineage),
the ``references`` (untrained student, teacher: validation and test loss) and the per-generation
``history`` (best, mean, worst fitness). Reported beside it, not compared: ``compute`` (a run
that reused a teacher cache its killed engine had written counts no teacher rows for it) and
every wall time.

Eligible victims (the lab's documented limits; ``--beyond-limits`` drops 2 and 3):

1. a worker still loading its model is never killed: the pool treats a death before a worker's
   first ``ready`` as a failure to start (a model that cannot load), not restarted;
2. within one engine's life, at most ``MAX_ATTEMPTS − 1`` kills (2) per worker role — the pool gives
   a job up once it was lost to ``MAX_ATTEMPTS`` (3) dying workers — and at most ``MAX_RESTARTS``
   (3) per worker (engine/workers/pool.py); a resumed engine starts both counts afresh;
3. the engine only once its run has saved something a resume keeps since that engine started (the
   pruned student, the teacher's logit cache, a generation's checkpoint): otherwise a period
   shorter than a generation would kill every engine before it got anywhere, and no run could end.

A kill is *survived* unless, after it, the engine ended by itself without completing the run or
hung (no new event for ``--stall`` seconds while alive) — the benchmark then kills it if need be
and resumes it, as an operator would, up to ``--max-failures`` times, and blames the kill just
before (the cause may lie earlier: the failure's record lists every kill of that engine's life,
its output's tail, the run's last events and its workers' states) — or, for an engine kill, a
process of the run outlived it by 5 s, or its resume did not start from the newest checkpoint.
The exit code is 0 only when every kill was survived, the run completed with the same leaderboard,
and no process of the run outlived it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GONE_WITHIN = 5.0  # seconds: every process of a killed engine must be gone by then
POLL = 0.2
REPORT_COMPARED = (
    "status",
    "seed",
    "generations_done",
    "planned_train_steps",
    "champion",
    "references",
    "history",
)


# --- the profile ---------------------------------------------------------------------------------


def make_profile(
    base: Path,
    out: Path,
    *,
    seed: int,
    threads: int,
    generations: int | None,
    steps: int | None,
) -> Path:
    """``base`` resolved (absolute paths), with this seed and thread count, shortened to
    ``generations`` (its ``[evolution] sizes`` cut to match) and ``steps`` when given, writing
    its runs under ``out``. Validated before anything runs."""
    from engine.profile import load_profile, parse_profile

    prof = load_profile(base)
    evo: dict[str, Any] = {}
    if generations is not None:
        evo["generations"] = generations
        if prof.evolution.sizes:
            evo["sizes"] = list(prof.evolution.sizes)[:generations]
    update: dict[str, Any] = {
        "run": prof.run.model_copy(update={"seed": seed, "output_dir": out}),
        "evolution": prof.evolution.model_copy(update=evo),
        "devices": prof.devices.model_copy(update={"threads_per_worker": threads}),
    }
    if steps is not None:
        update["training"] = prof.training.model_copy(update={"steps_per_generation": steps})
    prof = prof.model_copy(update=update)
    path = out.parent / f"{out.name}.toml"
    text = prof.to_toml()
    parse_profile(text, source=path)
    path.write_text(text)
    return path


def profile_table(path: Path) -> dict[str, Any]:
    """A profile.toml as data, without what differs between two runs of the same profile."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    data = tomllib.loads(path.read_text())
    for key in ("output_dir", "name"):
        data.get("run", {}).pop(key, None)
    return data


def diff_tables(a: Any, b: Any, where: str = "") -> str | None:
    """The first place two nested tables differ, in words; None when they are the same."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}{k}: only in {'the reference' if k in a else 'this run'}"
            d = diff_tables(a[k], b[k], f"{where}{k}.")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = diff_tables(x, y, f"{where.rstrip('.')}[{i}].")
            if d:
                return d
        return None
    return None if a == b else f"{where.rstrip('.')}: reference {a!r}, this run {b!r}"


# --- runs and their files ------------------------------------------------------------------------


def run_dirs(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def leaderboard(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run / "leaderboard.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def compare(reference: Path, run: Path) -> dict[str, Any]:
    """The comparison the module docstring describes: ``same`` and the first difference."""
    out: dict[str, Any] = {"same": False, "first_difference": None, "compute_same": None}
    try:
        ref_cols, ref_rows = leaderboard(reference)
        cols, rows = leaderboard(run)
    except OSError as exc:
        out["first_difference"] = f"leaderboard.csv unreadable: {exc}"
        return out
    out["rows"], out["columns"] = len(rows), cols
    first = None
    if ref_cols != cols:
        first = f"leaderboard.csv columns: reference {ref_cols}, chaos {cols}"
    elif len(ref_rows) != len(rows):
        first = f"leaderboard.csv rows: reference {len(ref_rows)}, chaos {len(rows)}"
    else:
        for n, (a, b) in enumerate(zip(ref_rows, rows, strict=True), 1):
            for c in cols:
                if a.get(c) != b.get(c):
                    first = (
                        f"leaderboard.csv row {n} ({a.get('id')} / {b.get('id')}), column {c}: "
                        f"reference {a.get(c)!r}, chaos {b.get(c)!r}"
                    )
                    break
            if first:
                break
    ref_rep, rep = read_json(reference / "report.json"), read_json(run / "report.json")
    if first is None:
        if not isinstance(ref_rep, dict) or not isinstance(rep, dict):
            first = "report.json missing or unreadable"
        else:
            for key in REPORT_COMPARED:
                d = diff_tables(ref_rep.get(key), rep.get(key), f"report.json {key}.")
                if d:
                    first = d.replace("this run", "chaos")
                    break
    out["first_difference"] = first
    out["same"] = first is None
    if isinstance(ref_rep, dict) and isinstance(rep, dict):

        def spent(r: dict) -> Any:
            per = [
                {k: v for k, v in g.items() if k != "seconds"}
                for g in r.get("compute_per_generation", [])
            ]
            return {"compute": r.get("compute"), "per_generation": per}

        d = diff_tables(spent(ref_rep), spent(rep), "report.json ")
        out["compute_same"] = d is None
        out["compute_difference"] = d.replace("this run", "chaos") if d else None
        out["champion"] = (rep.get("champion") or {}).get("id")
        out["champion_val_loss"] = (rep.get("champion") or {}).get("val_loss")
        out["champion_test_loss"] = (rep.get("champion") or {}).get("test_loss")
    return out


class EventTail:
    """The run's events.jsonl read as it grows (a line torn by a kill is skipped)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict):
                out.append(e)
        return out


# --- processes -----------------------------------------------------------------------------------


def alive(p: Any) -> bool:
    """A zombie nobody reaped yet counts as gone: it runs nothing and holds no memory."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process(pid: int, started: float | None = None) -> Any:
    """The live process ``pid`` (psutil), None when gone or — given its recorded start time — when
    the pid now belongs to another process."""
    import psutil

    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - float(started)) > 0.05:
            return None
        return p if alive(p) else None
    except (psutil.Error, TypeError, ValueError):
        return None


class Family:
    """Every process seen belonging to the run: the engines, their descendants, their recorded
    workers, and every process of an engine's session (each engine starts one of its own)."""

    def __init__(self) -> None:
        self.procs: dict[tuple[int, float], tuple[Any, str]] = {}
        self.sessions: set[int] = set()

    def add(self, p: Any, label: str) -> None:
        import psutil

        try:
            key = (p.pid, p.create_time())
        except psutil.Error:
            return
        if key not in self.procs:
            self.procs[key] = (p, label)

    def add_tree(self, root_pid: int, label: str) -> None:
        import psutil

        try:
            root = psutil.Process(root_pid)
            self.add(root, label)
            for c in root.children(recursive=True):
                self.add(c, describe(c))
        except psutil.Error:
            pass

    def add_sessions(self) -> None:
        """Every process of an engine's session, wherever it was re-parented to."""
        import psutil

        if not self.sessions:
            return
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) in self.sessions:
                    self.add(p, describe(p))
            except (OSError, psutil.Error):
                continue

    def members(self, keys: set[tuple[int, float]] | None = None) -> list[tuple[Any, str]]:
        return [v for k, v in self.procs.items() if keys is None or k in keys]

    def left(self, keys: set[tuple[int, float]] | None = None) -> list[str]:
        return [f"{label} (pid {p.pid})" for p, label in self.members(keys) if alive(p)]

    def kill_all(self) -> None:
        self.add_sessions()
        for p, _ in self.members():
            if alive(p):
                with contextlib.suppress(Exception):
                    p.kill()


def describe(p: Any) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "?"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "multiprocessing.spawn" in cmd or "spawn_main" in cmd:
        return "a spawned worker"
    return cmd[:80]


def wait_gone(
    family: Family, keys: set[tuple[int, float]], limit: float
) -> tuple[float, list[str]]:
    """Seconds until every process of ``keys`` was gone (``limit`` when some never went), and
    those still alive at ``limit``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not family.left(keys):
            return time.monotonic() - t0, []
        time.sleep(0.05)
    return limit, family.left(keys)


# --- the chaos run -------------------------------------------------------------------------------


class Chaos:
    def __init__(self, args: argparse.Namespace, profile: Path, out: Path) -> None:
        from engine.workers.pool import MAX_ATTEMPTS, MAX_RESTARTS

        self.args, self.profile, self.out = args, profile, out
        self.runs_dir = out / "chaos"
        self.rng = random.Random(args.chaos_seed)
        self.log_path = out / "chaos-engine.log"
        self.family = Family()
        self.run: Path | None = None
        self.events: EventTail | None = None
        self.engine: subprocess.Popen | None = None
        self.incarnations: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.errors: list[str] = []  # error-level log lines of the run
        self.worker_state: dict[int, str] = {}  # pid -> its last worker_state
        self.ready: set[int] = set()  # worker pids that have loaded their model
        self.last_event = time.monotonic()  # when the run last wrote an event
        self.registry: dict[str, dict[str, Any]] = {}  # worker name -> its latest entry
        self.phase = "starting"
        self.planned: int | None = None  # the run's generations (its run_started event)
        self.limits = {"per_role": MAX_ATTEMPTS - 1, "per_worker": MAX_RESTARTS}
        self.victims = set(args.victims.split(","))
        self.t0 = time.monotonic()
        self.outcome = "running"

    # --- the engine ---

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.now():7.1f}s] {text}", flush=True)

    def start_engine(self, how: str) -> None:
        args = ["--profile", str(self.profile)] if how == "start" else ["--resume", str(self.run)]
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== chaos: {how} at {self.now():.1f}s =====\n".encode())
            log.flush()
            self.engine = subprocess.Popen(
                [sys.executable, "-m", "genesis_tui.cli", *args, "--headless"],
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.last_event = time.monotonic()
        self.family.sessions.add(self.engine.pid)
        self.family.add_tree(self.engine.pid, f"engine #{len(self.incarnations)}")
        self.incarnations.append(
            {
                "n": len(self.incarnations),
                "how": how,
                "pid": self.engine.pid,
                "t": round(self.now(), 2),
                "wall_start": time.time(),
                "kills": {},  # worker name -> kills in this engine's life
                "role_kills": {},
                "resumed_from": None,
                "expected_resume_from": None,
                "ended": None,
            }
        )
        self.say(f"engine #{len(self.incarnations) - 1} ({how}): pid {self.engine.pid}")

    @property
    def current(self) -> dict[str, Any]:
        return self.incarnations[-1]

    def checkpoints(self) -> list[int]:
        if self.run is None:
            return []
        gens = []
        for p in self.run.glob("gen_[0-9]*"):
            with contextlib.suppress(ValueError):
                gens.append(int(p.name[4:]))
        return sorted(gens)

    def progressed(self) -> bool:
        """Has the run saved something a resume keeps since the current engine started?"""
        if self.run is None:
            return False
        since = self.current["wall_start"]
        marks = [self.run / "pruned" / "prune_report.json", *self.run.glob("gen_[0-9]*")]
        cache = self.runs_dir / ".cache"
        if cache.is_dir():
            marks += [p for p in cache.rglob("*") if p.is_file()]
        for m in marks:
            with contextlib.suppress(OSError):
                if m.stat().st_mtime >= since:
                    return True
        return False

    # --- what the run says ---

    def observe(self) -> None:
        if self.run is None:
            found = run_dirs(self.runs_dir)
            if not found:
                return
            self.run = found[0]
            self.events = EventTail(self.run / "events.jsonl")
            self.say(f"run directory: {self.run}")
        assert self.events is not None
        new = self.events.read()
        if new:
            self.last_event = time.monotonic()
        for e in new:
            self.on_event(e)
        for entry in _registry(self.run):
            name = entry.get("name")
            if isinstance(name, str):
                self.registry[name] = entry
                p = process(entry["pid"], entry.get("started"))
                if p is not None:
                    self.family.add(p, f"worker {name}")
        if self.engine is not None and self.engine.poll() is None:
            self.family.add_tree(self.engine.pid, f"engine #{self.current['n']}")

    def on_event(self, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        if kind == "worker_state":
            pid, state, name = e.get("pid"), e.get("state"), e.get("worker")
            if isinstance(pid, int):
                self.worker_state[pid] = state
                if state == "ready":
                    self.ready.add(pid)
            if state == "ready":
                for k in reversed(self.kills):
                    if (
                        k["victim"] == name
                        and k["pid"] != pid
                        and k.get("restarted_in") is None
                        and k["incarnation"] == self.current["n"]
                    ):
                        k["restarted_in"] = round(e.get("ts", time.time()) - k["wall"], 2)
                        break
        elif kind == "log":
            msg = str(e.get("message", ""))
            if e.get("level") == "error":
                self.errors.append(msg)
            m = re.match(r"worker (\S+) \(pid (\d+)[^)]*\) died (while [^:]*): (.*)", msg)
            if m:
                for k in self.kills:
                    if k["pid"] == int(m.group(2)) and k["victim"] == m.group(1):
                        k["died"] = f"{m.group(3)}: {m.group(4)}"
        elif kind == "run_started":
            self.current["resumed_from"] = gen = e.get("resumed_from")
            self.planned = e.get("generations", self.planned)
            self.phase = "starting" if gen is None else self.after(gen)
        elif kind == "prune_report":
            self.phase = "starting (pruned)" if self.phase == "starting" else self.phase
        elif kind == "reference":
            self.phase = f"reference ({e.get('model')})"
        elif kind == "teacher_logits" and not e.get("hit") and e.get("id") is None:
            self.phase = "teacher logit cache"
        elif kind == "generation_started":
            self.phase = f"generation {e.get('generation')}"
        elif kind == "checkpoint":
            self.phase = self.after(e.get("generation"))
        elif kind == "run_finished":
            self.phase = f"finished ({e.get('status')})"

    def after(self, gen: Any) -> str:
        """The phase after generation ``gen`` was checkpointed."""
        if isinstance(gen, int) and self.planned is not None and gen >= self.planned - 1:
            return "after the last generation (soup, test, export)"
        return f"after generation {gen}"

    # --- victims ---

    def eligible(self) -> list[tuple[str, int, Any]]:
        """(name, pid, process) of each process that may be killed now, sorted by name."""
        out: list[tuple[str, int, Any]] = []
        if self.engine is None or self.engine.poll() is not None or self.run is None:
            return out
        beyond = self.args.beyond_limits
        inc = self.current
        if "engine" in self.victims and (beyond or self.progressed()):
            p = process(self.engine.pid)
            if p is not None:
                out.append(("engine", self.engine.pid, p))
        for name, entry in sorted(self.registry.items()):
            role = "teacher" if name == "teacher" else name.split("-")[0]
            if role not in self.victims or entry.get("engine") != self.engine.pid:
                continue
            if entry["pid"] not in self.ready or self.worker_state.get(entry["pid"]) not in (
                "ready",
                "busy",
                "idle",
            ):
                continue  # still loading its model (the pool may hand it a job before), or gone
            if not beyond and (
                inc["kills"].get(name, 0) >= self.limits["per_worker"]
                or inc["role_kills"].get(role, 0) >= self.limits["per_role"]
            ):
                continue
            p = process(entry["pid"], entry.get("started"))
            if p is not None:
                out.append((name, entry["pid"], p))
        return out

    def strike(self) -> None:
        u = self.rng.random()  # drawn whatever is eligible: the RNG's sequence stays the same
        victims = self.eligible()
        if not victims:
            self.skipped.append({"t": round(self.now(), 2), "phase": self.phase})
            self.say(f"no eligible victim ({self.phase}): kill skipped")
            return
        name, pid, p = victims[min(int(u * len(victims)), len(victims) - 1)]
        kind = "engine" if name == "engine" else ("teacher" if name == "teacher" else "coliseum")
        inc = self.current
        kill: dict[str, Any] = {
            "n": len(self.kills) + 1,
            "t": round(self.now(), 2),
            "victim": name,
            "kind": kind,
            "pid": pid,
            "incarnation": inc["n"],
            "phase": self.phase,
            "checkpoints": self.checkpoints(),
            "wall": time.time(),
        }
        if kind == "engine":
            self.observe()
            self.family.add_sessions()
            # every live process known to belong to the run: this engine's descendants, its
            # session, its recorded workers
            mine = {k for k, (pp, _) in self.family.procs.items() if pp.pid != pid and alive(pp)}
            os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            assert self.engine is not None
            self.engine.wait()
            took, left = wait_gone(self.family, mine, GONE_WITHIN)
            took = max(took, time.monotonic() - t_kill)
            kill["gone_in"] = round(took, 3)
            kill["left"] = left
            kill["processes"] = len(mine)
            inc["ended"] = "killed"
            self.say(
                f"kill {kill['n']}: engine #{inc['n']} (pid {pid}) [{self.phase}]; its "
                f"{len(mine)} other processes "
                + (f"gone in {took:.2f} s" if not left else f"NOT gone in 5 s: {', '.join(left)}")
            )
            if left:  # measured, then cleaned up so that the run can go on
                took2, left2 = wait_gone(self.family, mine, 30.0)
                kill["left_after_30s"] = left2
                for pp, _ in self.family.members(mine):
                    if alive(pp):
                        with contextlib.suppress(Exception):
                            pp.kill()
            self.kills.append(kill)
            cks = self.checkpoints()
            self.start_engine("resume")
            self.current["expected_resume_from"] = cks[-1] if cks else None
            self.current["after_kill"] = kill["n"]
        else:
            try:
                p.send_signal(signal.SIGKILL)
            except Exception as exc:  # noqa: BLE001 - gone meanwhile: try again next time
                self.say(f"{name} (pid {pid}) could not be killed: {exc}")
                return
            inc["kills"][name] = inc["kills"].get(name, 0) + 1
            inc["role_kills"][kind] = inc["role_kills"].get(kind, 0) + 1
            kill["restarted_in"] = None
            self.kills.append(kill)
            self.say(f"kill {kill['n']}: {name} (pid {pid}) of engine #{inc['n']} [{self.phase}]")

    # --- the loop ---

    def go(self) -> None:
        deadline = self.args.timeout
        self.start_engine("start")
        next_kill = self.now() + self.interval()
        while True:
            self.observe()
            assert self.engine is not None
            code = self.engine.poll()
            stalled = time.monotonic() - self.last_event
            if code is None and stalled < self.args.stall:
                if deadline and self.now() > deadline:
                    self.outcome = "timed out"
                    self.say(f"timed out after {deadline:.0f} s")
                    return
                if self.now() >= next_kill:
                    self.strike()
                    next_kill = self.now() + self.interval()
                time.sleep(POLL)
                continue
            if code is None:  # alive, and silent for --stall seconds: hung
                failure = self.failure("stalled", f"no event for {stalled:.0f} s")
                self.say(
                    f"engine #{self.current['n']} (pid {self.engine.pid}) wrote no event for "
                    f"{stalled:.0f} s [{self.phase}]: stalled; killed and resumed, as an operator "
                    "would"
                )
                self.engine.kill()
                self.engine.wait()
                self.current["ended"] = "stalled, killed"
                self.family.add_sessions()
                wait_gone(self.family, set(self.family.procs), GONE_WITHIN)
                self.family.kill_all()  # not measured: the chaos kills are
            else:
                self.current["ended"] = f"exit code {code}"
                report = read_json(self.run / "report.json") if self.run else None
                status = report.get("status") if isinstance(report, dict) else None
                if code == 0 and status == "completed":
                    self.outcome = "completed"
                    self.say(f"engine #{self.current['n']}: the run completed")
                    return
                failure = self.failure("ended", f"exit code {code}, report status {status}")
                self.say(
                    f"engine #{self.current['n']} ended by itself (exit code {code}, report "
                    f"status {status}) after kill {failure['after_kill']}: see {self.log_path}"
                )
            if self.run is None or len(self.failures) > self.args.max_failures:
                self.outcome = "failed"
                return
            cks = self.checkpoints()
            self.start_engine("resume")
            self.current["expected_resume_from"] = cks[-1] if cks else None
            self.current["after_failure"] = len(self.failures)
            next_kill = self.now() + self.interval()

    def failure(self, kind: str, what: str) -> dict[str, Any]:
        """Record that the current engine did not survive by itself: how, and what it was doing
        (its output's tail, the run's last events, its workers' states)."""
        tail, last = "", []
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 3000))
            tail = f.read().decode(errors="replace")
        with contextlib.suppress(OSError, TypeError):
            lines = (self.run / "events.jsonl").read_text(errors="replace").splitlines()
            last = [ln[:300] for ln in lines if '"train_progress"' not in ln][-25:]
        workers = {
            name: {"pid": e["pid"], "state": self.worker_state.get(e["pid"])}
            for name, e in self.registry.items()
            if e.get("engine") == self.current["pid"]
        }
        failure = {
            "kind": kind,
            "what": what,
            "t": round(self.now(), 2),
            "incarnation": self.current["n"],
            "phase": self.phase,
            "after_kill": self.kills[-1]["n"] if self.kills else None,
            "kills_in_this_engine": [
                f"{k['n']}: {k['victim']} {k.get('died', '')}".strip()
                for k in self.kills
                if k["incarnation"] == self.current["n"]
            ],
            "workers": workers,
            "log_tail": tail,
            "last_events": last,
        }
        self.failures.append(failure)
        return failure

    def interval(self) -> float:
        return self.args.every * self.rng.uniform(0.5, 1.5)

    def finish(self) -> list[str]:
        """After the last engine exited: every process of the run gone (within 5 s)."""
        self.observe()
        self.family.add_sessions()
        _, left = wait_gone(self.family, set(self.family.procs), GONE_WITHIN)
        return left


def _registry(run: Path) -> list[dict[str, Any]]:
    try:
        text = (run / "workers.jsonl").read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict) and isinstance(e.get("pid"), int):
                out.append(e)
    return out


# --- the reference -------------------------------------------------------------------------------


def run_reference(profile: Path, out: Path) -> tuple[Path, float]:
    runs = out / "reference"
    log = out / "reference-engine.log"
    print(f"reference: an undisturbed run of {profile} (its output: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genesis_tui.cli", "--profile", str(profile), "--headless"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    wall = time.perf_counter() - t0
    found = run_dirs(runs)
    if code != 0 or len(found) != 1:
        raise SystemExit(f"the reference run failed (exit code {code}); see {log}")
    print(f"reference: {found[0]} in {wall:.0f} s", flush=True)
    return found[0], wall


# --- the summary ---------------------------------------------------------------------------------


def judge(chaos: Chaos) -> None:
    """Mark each kill survived or not (the module docstring's definition)."""
    for k in chaos.kills:
        k["survived"] = True
        if k["kind"] == "engine":
            nxt = next((i for i in chaos.incarnations if i.get("after_kill") == k["n"]), None)
            k["resumed_from"] = nxt["resumed_from"] if nxt else None
            k["expected_resume_from"] = nxt["expected_resume_from"] if nxt else None
            if k["left"]:
                k["survived"], k["why_not"] = False, "processes outlived the engine by 5 s"
            elif nxt is None or nxt["resumed_from"] != nxt["expected_resume_from"]:
                k["survived"] = False
                k["why_not"] = (
                    f"resumed from {k['resumed_from']}, the newest checkpoint was "
                    f"{k['expected_resume_from']}"
                )
        k.pop("wall", None)
    for f in chaos.failures:
        if f["after_kill"] is not None:
            k = chaos.kills[f["after_kill"] - 1]
            k["survived"] = False
            k["why_not"] = (
                f"engine #{f['incarnation']} then did not survive by itself ({f['kind']}: "
                f"{f['what']})"
            )


def summarize(
    chaos: Chaos,
    args: argparse.Namespace,
    reference: Path | None,
    ref_wall: float | None,
    ref_wall_from: str,
    left_at_end: list[str],
    wall: float,
) -> dict[str, Any]:
    judge(chaos)
    by_kind: dict[str, dict[str, int]] = {}
    for k in chaos.kills:
        d = by_kind.setdefault(k["kind"], {"kills": 0, "survived": 0})
        d["kills"] += 1
        d["survived"] += int(k["survived"])
    comparison = (
        compare(reference, chaos.run)
        if reference is not None and chaos.run is not None and chaos.outcome == "completed"
        else None
    )
    engine_kills = [k for k in chaos.kills if k["kind"] == "engine"]
    outlived = [k for k in engine_kills if k["left"]] or bool(left_at_end)
    ok = (
        chaos.outcome == "completed"
        and all(k["survived"] for k in chaos.kills)
        and not chaos.failures
        and comparison is not None
        and comparison["same"]
        and not outlived
    )
    return {
        "ok": ok,
        "outcome": chaos.outcome,
        "profile": str(args.profile),
        "seed": args.seed,
        "threads": args.threads,
        "generations": args.generations,
        "steps": args.steps,
        "every": args.every,
        "chaos_seed": args.chaos_seed,
        "victims": sorted(chaos.victims),
        "within_limits": not args.beyond_limits,
        "limits": chaos.limits,
        "run": str(chaos.run) if chaos.run else None,
        "reference": str(reference) if reference else None,
        "wall_seconds": round(wall, 1),
        "reference_wall_seconds": round(ref_wall, 1) if ref_wall else None,
        "reference_wall_from": ref_wall_from,
        "kills": len(chaos.kills),
        "survived": sum(int(k["survived"]) for k in chaos.kills),
        "by_kind": by_kind,
        "skipped_no_victim": len(chaos.skipped),
        "resumes": sum(1 for i in chaos.incarnations if i["how"] == "resume"),
        "resumes_after_engine_kill": sum(1 for i in chaos.incarnations if "after_kill" in i),
        "resumes_after_failure": sum(1 for i in chaos.incarnations if "after_failure" in i),
        "engine_failures": chaos.failures,
        "slowest_engine_family_exit_s": max((k["gone_in"] for k in engine_kills), default=None),
        "left_alive_at_end": left_at_end,
        "same_leaderboard": comparison["same"] if comparison else None,
        "comparison": comparison,
        "compared": {
            "leaderboard.csv": "every column of every row, as text, in order",
            "report.json": list(REPORT_COMPARED),
        },
        "errors_logged": chaos.errors,
        "kill_log": chaos.kills,
        "incarnations": [
            {k: v for k, v in i.items() if k not in ("wall_start",)} for i in chaos.incarnations
        ],
    }


def print_summary(s: dict[str, Any]) -> None:
    kinds = ", ".join(
        f"{kind} {d['survived']}/{d['kills']}" for kind, d in sorted(s["by_kind"].items())
    )
    ref = s["reference_wall_seconds"]
    ratio = f", ×{s['wall_seconds'] / ref:.2f}" if ref else ""
    print()
    print(
        f"chaos: {s['profile']} seed {s['seed']}, {s['threads']} thread(s) per worker"
        + (f", {s['generations']} generations" if s["generations"] else "")
        + (f", {s['steps']} steps" if s["steps"] else "")
    )
    print(
        f"  a kill every ~{s['every']:g} s (×0.5–1.5, chaos seed {s['chaos_seed']}); "
        f"{'within' if s['within_limits'] else 'beyond'} the pool's limits"
    )
    print(f"  outcome: {s['outcome']}")
    print(
        f"  kills: {s['kills']}, survived {s['survived']} (by kind, survived/killed: "
        f"{kinds or 'none'}); {s['skipped_no_victim']} skipped (no eligible victim)"
    )
    print(
        f"  resumes: {s['resumes']} ({s['resumes_after_engine_kill']} after an engine kill, "
        f"{s['resumes_after_failure']} after a failure); engine failures (ended by itself, or "
        f"hung: resumed by the benchmark, as an operator would): {len(s['engine_failures'])}"
    )
    for f in s["engine_failures"]:
        print(
            f"    engine #{f['incarnation']} at {f['t']:.0f} s [{f['phase']}]: {f['kind']} "
            f"({f['what']}); kills in its life: {'; '.join(f['kills_in_this_engine']) or 'none'}"
        )
    slow = s["slowest_engine_family_exit_s"]
    if slow is not None:
        print(
            f"  after each engine kill its processes were gone in ≤ {slow:.2f} s"
            if all(not k.get("left") for k in s["kill_log"] if k["kind"] == "engine")
            else "  after an engine kill, processes outlived it by 5 s: see kill_log"
        )
    print(f"  processes alive after the run: {', '.join(s['left_alive_at_end']) or 'none'}")
    print(
        f"  wall time: {s['wall_seconds']:.0f} s (reference {ref:.0f} s, "
        f"{s['reference_wall_from']}{ratio})"
        if ref
        else f"  wall time: {s['wall_seconds']:.0f} s"
    )
    c = s["comparison"]
    if c is None:
        print("  same leaderboard: not compared (the run did not complete)")
    else:
        print(
            f"  same leaderboard: {'yes' if c['same'] else 'NO'} ({c.get('rows')} rows of "
            f"leaderboard.csv, all columns; report.json {', '.join(REPORT_COMPARED)})"
        )
        if not c["same"]:
            print(f"    first difference: {c['first_difference']}")
        if c.get("compute_same") is False:
            print(f"    (compute accounting differs, not compared: {c['compute_difference']})")
        print(
            f"  champion {c.get('champion')}: val loss {c.get('champion_val_loss')}, "
            f"test loss {c.get('champion_test_loss')}"
        )
    print(f"  {'PASS' if s['ok'] else 'FAIL'}")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/chaos.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--profile",
        type=Path,
        default=ROOT / "profiles" / "demo.toml",
        help="the profile to run (default profiles/demo.toml)",
    )
    ap.add_argument("--seed", type=int, default=0, help="[run] seed (default 0)")
    ap.add_argument(
        "--every", type=float, default=30.0, help="mean seconds between kills (default 30)"
    )
    ap.add_argument(
        "--chaos-seed", type=int, default=0, help="seed of the kill intervals and victims"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="[devices] threads_per_worker of both runs (default 1: reproducible)",
    )
    ap.add_argument(
        "--generations",
        type=int,
        default=None,
        help="shorten the run to K generations ([evolution] sizes cut to match)",
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="[training] steps_per_generation (shortens it)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="where the runs and chaos.json go (a new /tmp dir)"
    )
    ap.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="an undisturbed run of the same profile, seed and threads (default: run one first)",
    )
    ap.add_argument(
        "--victims",
        default="engine,teacher,coliseum",
        help="kinds of process to kill (default engine,teacher,coliseum)",
    )
    ap.add_argument(
        "--beyond-limits",
        action="store_true",
        help="ignore the pool's restart and job-attempt limits and the engine's progress rule "
        "(the run is then expected to fail now and then: that is the lab's policy)",
    )
    ap.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="engine failures (ended by itself) the benchmark resumes before it gives up",
    )
    ap.add_argument(
        "--stall",
        type=float,
        default=180.0,
        help="seconds without a new event (the engine alive) that count as a hang: recorded as a "
        "failure, the engine killed and resumed (default 180)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds for the chaos run (default: 6 × the reference's wall time + 600)",
    )
    args = ap.parse_args(argv)
    if args.every <= 0 or args.threads < 1:
        ap.error("--every must be > 0 and --threads at least 1")
    if args.generations is not None and args.generations < 1:
        ap.error("--generations must be at least 1")
    bad = set(args.victims.split(",")) - {"engine", "teacher", "coliseum"}
    if bad:
        ap.error(f"--victims: unknown kind(s) {sorted(bad)}; use engine, teacher, coliseum")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="genesis-chaos-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if run_dirs(out / "chaos"):
        raise SystemExit(f"{out / 'chaos'} already holds a run: give another --out")
    profile = make_profile(
        args.profile,
        out / "chaos",
        seed=args.seed,
        threads=args.threads,
        generations=args.generations,
        steps=args.steps,
    )
    print(f"chaos: {out} (profile {profile})", flush=True)

    if args.reference is not None:
        reference = args.reference.resolve()
        d = diff_tables(profile_table(reference / "profile.toml"), profile_table(profile))
        if d:
            raise SystemExit(
                f"{reference} was not run with this profile ({d}): pass the same --profile, "
                "--seed, --threads, --generations and --steps, or leave --reference out."
            )
        rep = read_json(reference / "report.json") or {}
        if rep.get("status") != "completed":
            raise SystemExit(
                f"{reference}: not a completed run (report.json status {rep.get('status')!r})"
            )
        ref_wall = (rep.get("wall_seconds") or {}).get("total")
        ref_wall_from = "its report.json's wall_seconds.total"
    else:
        ref_profile = make_profile(
            args.profile,
            out / "reference",
            seed=args.seed,
            threads=args.threads,
            generations=args.generations,
            steps=args.steps,
        )
        reference, ref_wall = run_reference(ref_profile, out)
        ref_wall_from = "its process's wall time, measured here"
    if args.timeout is None:
        args.timeout = 6 * (ref_wall or 3600) + 600

    chaos = Chaos(args, profile, out)
    t0 = time.perf_counter()
    left: list[str] = []
    try:
        chaos.go()
        wall = time.perf_counter() - t0
        left = chaos.finish()
    except KeyboardInterrupt:  # Ctrl-C: the summary of what happened so far
        chaos.outcome = "interrupted"
        wall = time.perf_counter() - t0
    finally:
        if chaos.outcome != "completed":  # whatever is left of the run goes with the benchmark
            if chaos.engine is not None and chaos.engine.poll() is None:
                chaos.engine.kill()
                chaos.engine.wait()
            chaos.family.kill_all()
    summary = summarize(chaos, args, reference, ref_wall, ref_wall_from, left, wall)
    (out / "chaos.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    print(f"summary: {out / 'chaos.json'}")
    if left:  # measured and reported; not left behind
        chaos.family.kill_all()
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
