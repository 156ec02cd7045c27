"""``genesis-tui``: the command line. Parses arguments, turns every user error into one paragraph."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  genesis-tui --profile profiles/demo.toml                the terminal UI on a new run of the embedded demo
  genesis-tui attach runs/demo-20261122-101500            the terminal UI on a run going on (headless or detached)
  genesis-tui open runs/demo-20261122-101500              browse a finished or stopped run (read-only)
  genesis-tui --profile profiles/demo.toml --headless     no UI: progress lines, then the leaderboard
  genesis-tui --profile profiles/medical-dual-gpu.toml --check
                                                          validate a profile and check this machine can run it
  genesis-tui --resume runs/demo-20261122-101500 --headless
                                                          continue a run from its last complete generation
  genesis-tui --help-profile                              every profile field, its type, default and range

exit codes: 0 done · 1 the run failed · 2 bad input (profile, data, run directory, machine) · 130 stopped
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genesis-tui",
        description="Genesis Lab: evolve a population of LoRA adapters of a student model — "
        "trained, scored on held-out data, selected, crossed over and mutated, generation after generation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["attach", "open", "baseline"],
        help="attach: the terminal UI on a running engine (quitting leaves it running); "
        "open: browse a finished or stopped run from its event log; baseline: the run's "
        "compute-matched baseline (--kind), headless",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run directory (attach, open)")
    p.add_argument(
        "--profile", metavar="PROFILE.toml", help="the run's profile (TOML); see --help-profile"
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last complete generation"
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no terminal UI: progress lines and a final leaderboard (a UI can attach later)",
    )
    p.add_argument(
        "--check", action="store_true", help="validate the profile and this machine, start nothing"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="also merge the champion into the base model with mergekit",
    )
    b = p.add_argument_group(
        "baseline",
        "genesis-tui baseline RUN_DIR --kind finetune: what a run must beat, at the run's own "
        "training steps (from its report.json), written under RUN_DIR/baselines/ and recorded in "
        "the run's report; or baseline --profile P: at the profile's planned steps",
    )
    b.add_argument(
        "--kind",
        choices=["finetune", "random"],
        default="finetune",
        help="finetune: one adapter trained for the whole budget, the best validation checkpoint "
        "kept; random: [population] size random genomes sharing the budget (default finetune)",
    )
    b.add_argument(
        "--lr-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="finetune: the profile's learning rate times X (default 1)",
    )
    b.add_argument(
        "--kd-alpha",
        type=float,
        metavar="A",
        help="finetune: distillation's cross-entropy weight (default: the profile's [distill] "
        "alpha) — to compare with the weight a run's champion evolved",
    )
    b.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="the training budget in optimizer steps (default: matched)",
    )
    b.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="finetune: score on validation every N steps (default: an epoch or the profile's "
        "steps per generation, whichever is longer)",
    )
    p.add_argument("--help-profile", action="store_true", help="print the profile schema and exit")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def _fail(message: str) -> int:
    print(f"genesis-tui: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from engine.errors import GenesisError

    try:
        return _main(args)
    except GenesisError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:
        return 130


def _main(args: argparse.Namespace) -> int:
    from engine import __version__
    from engine.profile import load_profile, schema_help

    if args.version:
        print(f"genesis-tui {__version__}")
        return 0
    if args.help_profile:
        print(schema_help())
        return 0
    if args.action == "baseline":
        return _baseline(args)
    if args.action:
        return _browse(args)
    if args.run_dir:
        return _fail(
            f"unexpected argument {args.run_dir!r}: a run directory goes after attach or open, "
            "or after --resume."
        )
    if args.profile and args.resume:
        return _fail("give either --profile (a new run) or --resume (an existing run), not both.")
    if not args.profile and not args.resume:
        build_parser().print_help(sys.stderr)
        return _fail(
            "nothing to do: give --profile PROFILE.toml for a new run, --resume RUN_DIR to "
            "continue one, or attach RUN_DIR / open RUN_DIR."
        )

    from engine.control import engine_listening, socket_path
    from engine.models import preflight
    from engine.rundir import RunDir

    if args.resume:
        run = RunDir.open(Path(args.resume))
        if engine_listening(socket_path(run.path)):
            return _fail(
                f"{run.path}: an engine is already running this run; attach to it with: "
                f"genesis-tui attach {run.path}"
            )
        if (run.path / "baseline.json").exists():
            return _fail(
                f"{run.path}: this is a baseline's run directory, which cannot be resumed; run "
                "the baseline again (genesis-tui baseline …)."
            )
        profile, relocated = run.load_profile()  # a copied or moved run reads from where it is
    else:
        profile, relocated = load_profile(args.profile), []
    if profile.is_tts:
        _tts_preflight(profile)
        if args.check:
            print(_summary(profile))
    else:
        from engine.data import check_data
        from engine.memory import estimate

        check_data(profile)
        memory = estimate(profile)
        if args.check:  # the estimate is shown even when the machine cannot run the profile
            print(_summary(profile))
            print("\n".join(memory.lines()), flush=True)
        preflight(profile, memory=memory)
    if args.check:
        print("profile is valid and this machine can run it.")
        return 0
    if not args.headless:
        _need_terminal("--headless")
        from genesis_tui.app import GenesisApp
        from genesis_tui.link import SocketLink, spawn_engine

        if not args.resume:
            run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
        # The engine runs in a process of its own: this window can close (or lose its SSH
        # session) and the run goes on; quitting asks whether to stop it or detach.
        process = spawn_engine(run.path, merge=args.merge)
        return _run_app(GenesisApp(SocketLink(run.path, process=process)))

    from genesis_tui.headless import run_headless

    if not args.resume:
        run = RunDir.create(profile.run.output_dir, profile.run.name, profile.to_toml())
    if profile.is_tts:  # the TTS track: style evolution
        from engine.tts.orchestrator import StyleOrchestrator

        orch = StyleOrchestrator(profile, run)
    else:
        from engine.orchestrator import Orchestrator

        orch = Orchestrator(profile, run, merge_champion=args.merge)
    orch.start_notes = relocated
    return run_headless(orch, resume=bool(args.resume))


def _baseline(args: argparse.Namespace) -> int:
    """``baseline RUN_DIR`` (matched to the run) or ``baseline --profile P`` (its planned steps)."""
    import json

    from engine.baseline import make_baseline, ranked_note, summary
    from engine.data import check_data
    from engine.models import preflight
    from engine.profile import load_profile
    from engine.rundir import RunDir, atomic_write_text
    from genesis_tui.headless import run_headless

    if bool(args.run_dir) == bool(args.profile):
        return _fail(
            "baseline needs either a run directory (genesis-tui baseline RUN_DIR --kind finetune: "
            "matched to that run's compute) or --profile PROFILE.toml, not both."
        )
    if args.resume or args.check or args.merge:
        return _fail(
            "baseline takes --kind, --lr-scale, --kd-alpha, --steps and --eval-every only."
        )
    if args.lr_scale <= 0 or (args.steps is not None and args.steps < 1):
        return _fail("--lr-scale must be > 0 and --steps at least 1.")
    if args.kd_alpha is not None and (args.kind != "finetune" or args.kd_alpha < 0):
        return _fail("--kd-alpha is the fine-tune's cross-entropy weight: --kind finetune, A ≥ 0.")
    parent = None
    if args.run_dir:
        parent = RunDir.open(Path(args.run_dir))
        profile = parent.load_profile()[0]
        out_dir, report_file = parent.path / "baselines", parent.path / "report.json"
    else:
        profile = load_profile(args.profile)
        out_dir, report_file = profile.run.output_dir, None
    if profile.is_tts:
        return _fail(f"{profile.source}: baselines are for the LLM track; this is a TTS profile.")
    steps = args.steps
    if steps is None and report_file is not None and report_file.is_file():
        steps = json.loads(report_file.read_text()).get("compute", {}).get("train_steps") or None
    steps = steps or profile.planned_train_steps()
    check_data(profile)
    preflight(profile)
    name = args.kind + (f"-lr{args.lr_scale:g}x" if args.kind == "finetune" else "")
    if args.kd_alpha is not None:
        if profile.distill.mode != "logits":
            return _fail(
                f"{profile.source}: --kd-alpha weighs distillation's cross-entropy, and this "
                f'profile\'s [distill] mode is "{profile.distill.mode}", not "logits".'
            )
        name += f"-kd{args.kd_alpha:g}"
    run = RunDir.create(out_dir, name, profile.to_toml())
    orch = make_baseline(
        args.kind,
        profile,
        run,
        steps=steps,
        lr_scale=args.lr_scale,
        eval_every=args.eval_every,
        kd_alpha=args.kd_alpha,
    )
    print(
        f"baseline {name}: {steps} training steps (matched to {parent.path if parent else 'the profile'})"
    )
    code = run_headless(orch)
    if code == 0 and report_file is not None and report_file.is_file():
        report = json.loads(report_file.read_text())
        report.setdefault("baselines", {})[name] = summary(
            json.loads((run.path / "report.json").read_text())
        )
        atomic_write_text(report_file, json.dumps(report, indent=1) + "\n")
        note = ranked_note(report)
        if note:
            print(f"the run's champion against its baselines, on test: {note}")
    return code


def _tts_preflight(profile) -> None:
    """A TTS run: its style-coliseum devices exist, and its student loads (as the workers will)."""
    from engine.errors import GenesisError
    from engine.models import device_problem
    from engine.tts.student import load_student

    problems = [f"[tts] devices: {p}" for d in profile.tts.devices if (p := device_problem(d))]
    if problems:
        raise GenesisError(
            f"{profile.source}: this machine cannot run the profile: " + "; ".join(problems) + "."
        )
    load_student(profile.tts.assets_dir())


def _browse(args: argparse.Namespace) -> int:
    """``attach RUN_DIR`` and ``open RUN_DIR``."""
    from engine.control import engine_listening, socket_path
    from engine.rundir import RunDir

    if not args.run_dir:
        return _fail(f"{args.action} needs a run directory: genesis-tui {args.action} RUN_DIR")
    if args.profile or args.resume or args.headless or args.check or args.merge:
        return _fail(f"{args.action} RUN_DIR takes no other options.")
    run = RunDir.open(Path(args.run_dir))
    from genesis_tui.app import GenesisApp
    from genesis_tui.link import ReplayLink, SocketLink

    if args.action == "attach":
        path = socket_path(run.path)
        if not engine_listening(path):
            return _fail(
                f"{run.path}: no engine is running this run (nothing answers on {path}). "
                f"Browse it with: genesis-tui open {run.path} — or continue it with: "
                f"genesis-tui --resume {run.path}"
            )
        _need_terminal("")
        return _run_app(GenesisApp(SocketLink(run.path)))
    _need_terminal("")
    return _run_app(GenesisApp(ReplayLink(run.path)))


def _need_terminal(instead: str) -> None:
    from engine.errors import GenesisError

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        hint = f"; without one, run with {instead}" if instead else ""
        raise GenesisError(
            f"the terminal UI needs a terminal (stdin and stdout are not one){hint}."
        )


def _run_app(app) -> int:
    code = app.run()
    if app.farewell:
        print(
            app.farewell, file=sys.stderr if app.farewell.startswith("genesis-tui:") else sys.stdout
        )
    return code if code is not None else (app.return_code or 1)


def _summary(profile) -> str:
    if profile.is_tts:
        tts = profile.tts
        return (
            f"{profile.source}: TTS run '{profile.run.name}' (seed {profile.run.seed}) — style evolution of "
            f"{tts.assets_dir()} on {', '.join(tts.devices)} towards {tts.style().label}; population "
            f"{tts.population} × {profile.evolution.generations} generations"
            + (f"; tempo weight {tts.tempo_weight:g}" if tts.tempo_weight else "")
            + (
                f"; pruning sweep over {len(tts.prune_sweep)} ratios, "
                f"{tts.prune_heal_steps} healing steps each"
                if tts.prune_sweep
                else ""
            )
            + _executor_summary(profile.devices)
        )
    t = profile.teacher
    teacher = f"{t.model} on {profile.devices.teacher}" if t is not None and t.enabled else "none"
    return (
        f"{profile.source}: run '{profile.run.name}' (seed {profile.run.seed}) — student {profile.student.model} "
        f"on {', '.join(profile.devices.coliseum)}; teacher {teacher}; population {profile.population.size} × "
        f"{profile.evolution.generations} generations, {profile.evolution.crossover} crossover; data "
        f"{profile.data.format} {profile.data.train}"
        + _distill_summary(profile.distill)
        + _prune_summary(profile.prune)
        + _executor_summary(profile.devices)
    )


def _executor_summary(d) -> str:
    if d.executor != "ray":
        return ""
    where = (
        f"the Ray cluster at {d.ray_address!r}" if d.ray_address else "a private local Ray instance"
    )
    return f"; workers as Ray actors on {where}"


def _distill_summary(d) -> str:
    if d.mode == "logits":
        how = "cached" if d.cache else "online"
        return f"; distillation logits (T {d.temperature}, alpha {d.alpha}, top-{d.top_k}, {how})"
    if d.mode == "sequence":
        return f"; distillation sequence (teacher answers of up to {d.max_new_tokens} tokens)"
    return ""


def _prune_summary(p) -> str:
    parts = [
        f"{p.layers:.0%} of the student's blocks (by {p.layer_score})" if p.layers else "",
        f"{p.heads:.0%} of its attention heads" if p.heads else "",
        f"{p.width:.0%} of its MLP channels" if p.width else "",
        f"{p.sparsity:.0%} of its weights (Wanda)" if p.sparsity else "",
    ]
    return "; prune " + ", ".join(x for x in parts if x) + " first" if p.active else ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
