"""Engine throughput with the terminal UI attached vs headless: the same run, on the same machine.

Each trial runs the demo profile (generations overridden, default 2) as a headless engine process.
In "attached" trials the real UI (``genesis-tui attach RUN_DIR``) runs beside it in a
pseudo-terminal of 80×24 whose output is read as fast as a terminal would; it shows every event
live, re-renders the leaderboard, loss curves and telemetry (sampled at 1 Hz). Trials alternate
(attached, headless, attached, headless …) so that drift of the machine falls on both sides.

Throughput is the engine's own generation wall time (the sum of ``GenerationFinished.seconds``
in each run's event log) and its training tokens per second; the ratio headless / attached of
generation time is the figure of merit (target ≥ 0.95). The UI process's CPU share is printed too.

    python benchmarks/bench_tui_overhead.py [--generations 2] [--pairs 2]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_profile(out: Path, generations: int) -> Path:
    text = (ROOT / "profiles" / "demo.toml").read_text()
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("generations ="):
            line = f"generations = {generations}"
        elif line.strip().startswith("output_dir ="):
            line = f'output_dir = "{out}"'
        lines.append(line)
    # Relative paths in the profile resolve against its own directory: keep it beside the demo.
    path = ROOT / "profiles" / f".bench-tui-{os.getpid()}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def figures(run_dir: Path) -> dict[str, float]:
    gen_s, tokens, train_s = 0.0, 0, 0.0
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["kind"] == "generation_finished":
            gen_s += e["seconds"]
        elif e["kind"] == "train_finished":
            tokens += e["tokens"]
            train_s += e["seconds"]
    return {"generation_s": gen_s, "train_tok_s": tokens / max(train_s, 1e-9)}


def attach_in_pty(run_dir: Path) -> tuple[subprocess.Popen, threading.Thread, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="80", LINES="24")
    ui = subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "attach", str(run_dir)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)

    def drain() -> None:  # the terminal: read everything the UI draws
        while True:
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    return ui, t, master


def trial(profile: Path, out: Path, attached: bool) -> dict[str, float]:
    from engine.control import engine_listening, socket_path

    before = set(out.iterdir()) if out.exists() else set()
    engine = subprocess.Popen(
        [sys.executable, "-m", "genesis_tui.cli", "--profile", str(profile), "--headless"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = None
    while run_dir is None:
        new = set(out.iterdir()) - before if out.exists() else set()
        run_dir = next(iter(new), None)
        time.sleep(0.05)
    ui = None
    ui_cpu = 0.0
    if attached:
        while not engine_listening(socket_path(run_dir)):
            time.sleep(0.05)
        ui, _, master = attach_in_pty(run_dir)
    t0 = time.perf_counter()
    code = engine.wait()
    wall = time.perf_counter() - t0
    if ui is not None:
        import psutil

        try:
            ct = psutil.Process(ui.pid).cpu_times()
            ui_cpu = ct.user + ct.system
        except psutil.Error:
            pass
        os.write(master, b"q")
        try:
            ui.wait(10)
        except subprocess.TimeoutExpired:
            ui.kill()
        os.close(master)
    if code != 0:
        raise SystemExit(f"the engine exited with {code}; see {run_dir}/events.jsonl")
    f = figures(run_dir)
    f["ui_cpu_share"] = ui_cpu / wall if attached else 0.0
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    profile = make_profile(out, args.generations)
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    try:
        for k in range(args.pairs):
            for attached in (True, False):
                f = trial(profile, out, attached)
                results[attached].append(f)
                print(
                    f"pair {k + 1} {'attached' if attached else 'headless'}: generations "
                    f"{f['generation_s']:.1f} s, training {f['train_tok_s']:.0f} tok/s"
                    + (
                        f", UI process {100 * f['ui_cpu_share']:.1f}% of one core"
                        if attached
                        else ""
                    ),
                    flush=True,
                )
    finally:
        profile.unlink(missing_ok=True)

    def mean(attached: bool, key: str) -> float:
        xs = [r[key] for r in results[attached]]
        return sum(xs) / len(xs)

    h, a = mean(False, "generation_s"), mean(True, "generation_s")
    print(f"\nmean generation time: headless {h:.1f} s, attached {a:.1f} s")
    print(
        f"throughput ratio attached / headless = headless time / attached time = {h / a:.3f} (target ≥ 0.95)"
    )
    print(
        f"training tok/s: headless {mean(False, 'train_tok_s'):.0f}, attached {mean(True, 'train_tok_s'):.0f}; "
        f"UI process {100 * mean(True, 'ui_cpu_share'):.1f}% of one core"
    )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
