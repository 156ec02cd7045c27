"""A run is a directory: everything needed to follow, resume or export it lives there.

    <run>/profile.toml         the resolved profile the run uses
    <run>/events.jsonl         append-only event log, one JSON object per line
    <run>/gen_0003/            one checkpoint per generation, written whole or not at all:
        state.json               population (genomes, scores, lineage) and the RNG state
        adapters/<id>.safetensors  each individual's LoRA tensors (PEFT key format)
        optimizers/<id>.safetensors  AdamW state of those that train on (continuations, copies)
    <run>/leaderboard.csv      the latest leaderboard
    <run>/report.json          champion, lineage, validation and test figures, compute, wall time
    <run>/champion/            the champion's PEFT adapter, mergekit recipe (paths relative to
                               it), lineage.json and model card README.md
    <run>/exports/<id>/        adapters exported on request, laid out the same way
    <run>/workers.jsonl        the engine's worker processes (engine.workers.lifeline)

Every file is written to a temporary name and renamed into place, so a crash (or a full disk)
never leaves a half-written file where a complete one was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.errors import RunDirError
from engine.events import Event, event_from_dict

CHECKPOINT_PREFIX = "gen_"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise RunDirError(
            f"{path}: could not be written ({exc.strerror or exc}); {kept}."
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._events: Any = None
        self.log_error: RunDirError | None = None  # set when an event could not be written

    # --- creation and opening -----------------------------------------------------------------

    @classmethod
    def create(cls, output_dir: Path, name: str, profile_toml: str) -> RunDir:
        """A new, uniquely named run directory holding the profile."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = output_dir / (f"{name}-{stamp}" if n == 0 else f"{name}-{stamp}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - a thousand runs in one second
            raise RunDirError(f"{output_dir}: could not create a new run directory for {name!r}")
        run = cls(path)
        atomic_write_text(run.profile_path, profile_toml)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: no such run directory.")
        run = cls(path)
        if not run.profile_path.is_file():
            raise RunDirError(
                f"{path}: not a Genesis Lab run directory (it has no profile.toml); "
                "give the directory a run printed when it started."
            )
        return run

    @property
    def profile_path(self) -> Path:
        return self.path / "profile.toml"

    def started_at(self) -> Path | None:
        """Where this run directory was when the run started (its first ``run_started`` event),
        or None before that event exists."""
        try:
            with open(self.events_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        data = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(data, dict) and data.get("kind") == "run_started":
                        return Path(data["run_dir"]) if data.get("run_dir") else None
        except OSError:
            return None
        return None

    def load_profile(self) -> tuple[Any, list[str]]:
        """The run's profile, its paths re-resolved when the directory was copied or moved since
        the run started (``engine.profile.relocate_run_profile``), and what was re-resolved.

        Raises ProfileError (one paragraph) when the profile does not validate."""
        from engine.errors import ProfileError
        from engine.profile import load_profile, parse_profile, relocate_run_profile

        started = self.started_at()
        if started is None:
            return load_profile(self.profile_path), []
        try:
            text = self.profile_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return load_profile(self.profile_path), []  # which says what is wrong with it
        text, changes = relocate_run_profile(text, started, self.path)
        if not changes:
            return load_profile(self.profile_path), []
        try:
            profile = parse_profile(text, source=self.profile_path)
        except ProfileError as exc:
            raise ProfileError(
                f"{exc.message} (This run directory started at {started} and is now at "
                f"{self.path}; these paths were re-resolved from here: {'; '.join(changes)}.)"
            ) from None
        note = (
            f"this run directory started at {started} and is now at {self.path}: its profile's "
            f"paths are re-resolved from here — {'; '.join(changes)}"
        )
        return profile, [note]

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    # --- event log ------------------------------------------------------------------------------

    def append_event(self, event: Event) -> None:
        """Append one event as a JSON line; flushed and synced so a crash loses at most that line.

        A write that fails (a full disk) is cut back to the last whole line and remembered in
        ``log_error`` instead of raised: events are published from callbacks that cannot fail
        cleanly, and the orchestrator stops the run at its next safe point with that error.
        """
        try:
            if self._events is None:
                # Unbuffered: a failed write leaves no bytes in a buffer to be flushed later.
                self._events = open(self.events_path, "ab", buffering=0)
            _append_line(self._events, (event.to_json() + "\n").encode("utf-8"))
        except OSError as exc:
            if self.log_error is None:
                self.log_error = RunDirError(
                    f"{self.events_path}: the event log cannot be written ({exc.strerror or exc}); "
                    "everything logged before is intact"
                )

    def read_events(self) -> list[Event]:
        """All complete events; a last line cut short by a crash is skipped, not fatal."""
        if not self.events_path.exists():
            return []
        events = []
        with open(self.events_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    events.append(event_from_dict(json.loads(line)))
                except (json.JSONDecodeError, ValueError, TypeError):
                    continue
        return events

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoint_path(self, generation: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{generation:04d}"

    def save_checkpoint(
        self,
        generation: int,
        state: dict[str, Any],
        adapters: dict[str, bytes],
        optimizers: dict[str, bytes] | None = None,
    ) -> Path:
        """Write generation ``generation`` whole: into a temporary directory, then one rename.

        ``adapters`` maps an individual's id to its safetensors bytes; ``optimizers`` its AdamW
        state (engine.workers.optim), for the individuals that train on.
        """
        final = self.checkpoint_path(generation)
        tmp = self.path / f".{final.name}.{os.getpid()}.tmp"
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "adapters").mkdir(parents=True)
            for ind_id, blob in adapters.items():
                _write_file(tmp / "adapters" / f"{ind_id}.safetensors", blob)
            if optimizers:
                (tmp / "optimizers").mkdir()
                for ind_id, blob in optimizers.items():
                    _write_file(tmp / "optimizers" / f"{ind_id}.safetensors", blob)
            _write_file(tmp / "state.json", json.dumps(state, indent=1).encode("utf-8"))
            _fsync_tree(tmp)
            if final.exists():  # re-running a generation after resume: replace it whole
                old = self.path / f".{final.name}.old"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = [g for g in self.checkpoints() if g <= generation]  # as they were
            kept = (
                f"{self.checkpoint_path(previous[-1]).name} is intact and the run resumes from it"
                if previous
                else "no earlier generation was checkpointed, so a resume starts the run again"
            )
            raise RunDirError(
                f"{final}: the checkpoint of generation {generation} could not be written "
                f"({exc.strerror or exc}); {kept} once the problem is fixed (genesis-tui --resume "
                f"{self.path})."
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def checkpoints(self) -> list[int]:
        gens = []
        for p in self.path.glob(f"{CHECKPOINT_PREFIX}[0-9]*"):
            try:
                gens.append(int(p.name[len(CHECKPOINT_PREFIX) :]))
            except ValueError:
                continue
        return sorted(gens)

    def load_checkpoint(self, generation: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, {id: tensors}) of one generation; RunDirError naming the file when it is corrupt."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = self.checkpoint_path(generation)
        state_path = root / "state.json"
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{state_path}: unreadable checkpoint state ({exc}).") from exc
        if not (isinstance(state, dict) and isinstance(state.get("population"), list)):
            raise RunDirError(
                f"{state_path}: unreadable checkpoint state (not a Genesis Lab state: it has no "
                "population list)."
            )
        tensors = {}
        for ind in [*state.get("population", []), *state.get("hall", [])]:
            f = root / "adapters" / f"{ind['id']}.safetensors"
            if not ind.get("trained"):
                continue
            try:
                tensors[ind["id"]] = load_file(str(f))
            except (OSError, SafetensorError, RuntimeError) as exc:
                raise RunDirError(f"{f}: unreadable adapter file ({exc}).") from exc
        return state, tensors

    def load_optimizers(self, generation: int) -> dict[str, bytes]:
        """{id: AdamW state bytes} saved with generation ``generation`` (none: {})."""
        root = self.checkpoint_path(generation) / "optimizers"
        if not root.is_dir():
            return {}
        out = {}
        for f in sorted(root.glob("*.safetensors")):
            try:
                out[f.name[: -len(".safetensors")]] = f.read_bytes()
            except OSError as exc:
                raise RunDirError(f"{f}: unreadable optimizer state ({exc}).") from exc
        return out

    def write_report(self, report: dict[str, Any]) -> None:
        """report.json: the run's figures for machines (written whole each time)."""
        atomic_write_text(self.path / "report.json", json.dumps(report, indent=1) + "\n")

    def latest_checkpoint(
        self, on_skip: Callable[[str], None] | None = None
    ) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """The newest generation that loads whole; older ones are tried when a newer one is
        corrupt, and ``on_skip`` hears why each skipped one was."""
        errors = []
        for gen in reversed(self.checkpoints()):
            try:
                state, tensors = self.load_checkpoint(gen)
                return gen, state, tensors
            except RunDirError as exc:
                errors.append(str(exc))
                if on_skip is not None:
                    on_skip(str(exc))
        if errors:
            raise RunDirError(" ".join(errors) + " No complete generation is left to resume from.")
        return None

    def individual_records(self) -> dict[str, dict[str, Any]]:
        """Every individual any checkpoint holds (id -> its state, the newest generation's copy),
        for lineage; a checkpoint that does not read back is passed over."""
        records: dict[str, dict[str, Any]] = {}
        for gen in self.checkpoints():
            try:
                state = json.loads((self.checkpoint_path(gen) / "state.json").read_text("utf-8"))
                population = state["population"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for ind in population if isinstance(population, list) else []:
                if isinstance(ind, dict) and "id" in ind:
                    records[ind["id"]] = ind
        return records

    # --- leaderboard ----------------------------------------------------------------------------

    def write_leaderboard(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_text(self.path / "leaderboard.csv", buf.getvalue())


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file (checkpoint files; they are synced together afterwards)."""
    with open(path, "wb") as f:
        f.write(data)


def _append_line(f: Any, line: bytes) -> None:
    """Append one whole line to the open event log and sync it; on failure cut the file back to
    where the line began, so no torn line is left for the lines after it to join."""
    start = f.seek(0, os.SEEK_END)
    try:
        view = memoryview(line)
        while view:
            view = view[f.write(view) :]
        os.fsync(f.fileno())
    except OSError:
        try:
            f.truncate(start)
            f.seek(start)
        except OSError:
            pass
        raise


def _fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
