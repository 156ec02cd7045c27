"""One individual in full: genome, scores, lineage and its training-loss history."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from genesis_tui.widgets.leaderboard import STATUS_STYLE, Entry


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


class IndividualDetails(Vertical):
    """Shown in a modal on Enter, and beside the leaderboard on wide terminals."""

    def compose(self) -> ComposeResult:
        yield Static(id="details-text")
        yield Static(Text("training loss per step", style="bold"), id="details-loss-label")
        yield Sparkline([], id="details-loss")

    def show(
        self,
        entry: Entry | None,
        lineage: list[tuple[int, Entry | str]] | None = None,
        genome: dict[str, Any] | None = None,
    ) -> None:
        text = self.query_one("#details-text", Static)
        spark = self.query_one("#details-loss", Sparkline)
        if entry is None:
            text.update(Text("no individual selected — move the cursor in the leaderboard"))
            spark.data = []
            return
        head = Text.assemble(
            (entry.id, "bold"),
            f"  generation {entry.generation}  ",
            (entry.status, STATUS_STYLE.get(entry.status, "")),
        )
        if entry.reason:
            head.append(f"\n{entry.reason}", style="red" if entry.status == "failed" else "dim")
        g = Table.grid(padding=(0, 1))
        g.add_column(style="bold", no_wrap=True)
        g.add_column()
        g.add_row("fitness", _f(entry.fitness, "{:.4f}"))
        known = genome or entry.genome or {}
        style = known.get("kind") == "style"
        if style:  # a TTS style genome: scored by MCD (and tempo), no LoRA, no training
            g.add_row("MCD", _f(entry.val_loss, "{:.3f} dB") + " to the target style")
            ratio = known.get("duration_ratio")
            if ratio is not None:
                g.add_row("duration", f"{ratio:.2f}× the target's")
            weights = known.get("weights") or []
            top = sorted(enumerate(weights), key=lambda kw: -kw[1])[:5]
            g.add_row("tokens", " · ".join(f"t{k} {w:.2f}" for k, w in top))
        else:
            g.add_row(
                "val loss",
                _f(entry.val_loss, "{:.4f}") + f"   ppl {_f(entry.perplexity, '{:.2f}')}",
            )
            g.add_row(
                "LoRA",
                f"rank {entry.rank} · alpha {entry.alpha:g} · lr {entry.learning_rate:.3g}",
            )
        if genome and not style:
            mods = genome.get("target_modules")
            if mods:
                g.add_row("targets", ", ".join(mods))
            extra = [f"{k} {genome[k]}" for k in ("dropout", "seed") if k in genome]
            if genome.get("kd_alpha") is not None:
                extra.insert(0, f"KD ce weight {genome['kd_alpha']:g}")
            if genome.get("weight_decay") is not None:
                extra.insert(0, f"weight decay {genome['weight_decay']:g}")
            if extra:
                g.add_row("", " · ".join(extra))
        g.add_row("operator", entry.operator or "—")
        rows = []
        if not entry.parents:
            rows.append(Text("no parents (a random initial genome)", style="dim"))
        for level, anc in lineage or []:
            indent = "  " * (level - 1) + "↑ "
            if isinstance(anc, Entry):
                rows.append(
                    Text.assemble(
                        (f"{indent}{anc.id} ", "bold" if level == 1 else ""),
                        f"gen {anc.generation} {anc.status} ",
                        _f(anc.val_loss, "MCD {:.3f}" if style else "loss {:.4f}")
                        + f" · {anc.operator}",
                    )
                )
            else:
                rows.append(Text(f"{indent}{anc}", style="dim"))
        lines = Text("\n").join(rows)
        losses = entry.losses
        if style:
            lt = Text("style genomes are scored, not trained: no loss per step", style="dim")
        elif losses:
            done, total = entry.step
            lt = Text(
                f"step {done}/{total} ({len(losses)} readings) · first {losses[0]:.4f} · "
                f"last {losses[-1]:.4f} · min {min(losses):.4f}"
            )
            for k, vals in entry.terms.items():
                if vals:
                    lt.append(f"\n{k}: last {vals[-1]:.4f}", style="dim")
        else:
            lt = Text("no training steps seen yet", style="dim")
        text.update(
            Group(
                head,
                Text(),
                g,
                Text("\nlineage", style="bold"),
                lines,
                Text(),
                lt,
            )
        )
        spark.data = list(losses[-400:])
        self.query_one("#details-loss-label").display = not style
        spark.display = not style
