"""The Loss pane: training loss per step (each loss term separately, smoothed) and the
validation loss of each generation's best, mean and worst individual, with the references."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from engine.events import (
    Event,
    GenerationFinished,
    IndividualUpdate,
    ReferenceReport,
    TrainFinished,
    TrainProgress,
)

try:  # textual-plotext draws real axes; Sparklines are the fallback
    from textual_plotext import PlotextPlot
except Exception:  # pragma: no cover - exercised only where textual-plotext is missing
    PlotextPlot = None  # type: ignore[assignment,misc]

SMOOTHING = 0.8  # exponential moving average weight of the past
TERM_COLORS = ("cyan", "magenta", "yellow", "green", "red", "blue")


def ema(values: list[float], weight: float = SMOOTHING) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def _ok(v: float) -> bool:
    return v is not None and not math.isnan(v) and not math.isinf(v)


class LossPane(Vertical):
    """Left: the individual in training, step by step, one line per loss term (and the total
    when there are several), smoothed, with the previous individual's total in grey for
    comparison. Right: best/mean/worst validation loss per generation and the references."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # id -> term -> [(step, value)]; "loss" is the total. Only recent individuals are kept.
        self.curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        self.total_steps: dict[str, int] = {}
        self.following: str | None = None
        self.previous: str | None = None
        self.finished_ids: set[str] = set()  # trained, failed, culled or paused: stop following
        self.generations: list[tuple[int, float, float, float]] = []  # losses: best, mean, worst
        self.references: dict[str, float] = {}
        self.last: TrainProgress | None = None
        self.use_plotext = PlotextPlot is not None
        # a TTS run: style genomes are scored (MCD dB, tempo penalty included), never trained
        self.style_track = False

    def compose(self) -> ComposeResult:
        yield Static(Text("no training step yet", style="bright_black"), id="loss-summary")
        if self.use_plotext:
            with Horizontal(id="loss-plots"):
                yield PlotextPlot(id="train-plot")
                yield PlotextPlot(id="gen-plot")
        else:
            with Vertical(id="loss-sparks"):
                yield Static("training loss (smoothed)", classes="spark-title")
                yield Sparkline([], id="train-spark")
                yield Static("val loss per generation: best", classes="spark-title")
                yield Sparkline([], id="gen-best-spark")
                yield Static("mean", classes="spark-title")
                yield Sparkline([], id="gen-mean-spark")

    def on_mount(self) -> None:
        self._draw()

    def series(self, ind_id: str | None = None) -> dict[str, tuple[list[int], list[float]]]:
        """The followed individual's curves: each term (ce, kd, …), and the total ("loss")
        unless there is exactly one term (then it is the total)."""
        curves = self.curves.get(ind_id or self.following or "", {})
        terms = [k for k in curves if k != "loss"]
        names = terms if len(terms) == 1 else ["loss", *terms]
        return {
            k: ([p[0] for p in curves[k]], [p[1] for p in curves[k]]) for k in names if k in curves
        }

    def _record(self, e: TrainProgress) -> None:
        if self.following is None or (self.following != e.id and self._done(self.following)):
            if self.following is not None and self.following != e.id:
                self.previous = self.following
            self.following = e.id
        curves = self.curves.setdefault(e.id, {})
        if _ok(e.loss):
            curves.setdefault("loss", []).append((e.step, e.loss))
        for k, v in e.terms.items():
            if _ok(v):
                curves.setdefault(k, []).append((e.step, v))
        self.total_steps[e.id] = e.steps
        while len(self.curves) > 64:  # bounded: the details view keeps the full history
            oldest = next(iter(self.curves))
            if oldest in (self.following, self.previous):
                break
            del self.curves[oldest]

    def _done(self, ind_id: str) -> bool:
        loss = self.curves.get(ind_id, {}).get("loss", [])
        return ind_id in self.finished_ids or (
            bool(loss) and loss[-1][0] >= self.total_steps.get(ind_id, 0)
        )

    def apply(self, events: Iterable[Event]) -> bool:
        changed = False
        for e in events:
            if isinstance(e, TrainProgress):
                self._record(e)
                self.last = e
                changed = True
            elif isinstance(e, TrainFinished):
                self.finished_ids.add(e.id)
            elif isinstance(e, IndividualUpdate):
                if e.status in ("failed", "culled", "paused"):
                    self.finished_ids.add(e.id)
                if not self.style_track and (e.genome or {}).get("kind") == "style":
                    self.style_track = changed = True
            elif isinstance(e, GenerationFinished):
                self.generations.append((e.generation, -e.best, -e.mean, -e.worst))
                changed = True
            elif isinstance(e, ReferenceReport):
                self.references[e.model] = e.val_loss
                changed = True
        if changed:
            self._draw()
        return changed

    def _summary(self) -> Text:
        t = Text()
        if self.last is not None:
            e = self.last
            t.append(f"{e.id} step {e.step}/{e.steps} ", style="bold")
            t.append(f"loss {e.loss:.4f}")
            if e.terms:
                t.append(
                    " (" + " · ".join(f"{k} {v:.4f}" for k, v in e.terms.items()) + ")",
                    style="bright_black",
                )
        elif self.style_track:
            t.append(
                "style genomes are scored, not trained: score = MCD dB (+ tempo penalty)",
                style="bright_black",
            )
        else:
            t.append("no training step yet", style="bright_black")
        t.append("\n")
        if self.generations:
            g, best, mean, worst = self.generations[-1]
            t.append(f"gen {g} ", style="bold")
            t.append(f"best {best:.4f} · mean {mean:.4f} · worst {worst:.4f}")
        refs = [f"{k} {v:.4f}" for k, v in sorted(self.references.items())]
        if refs:
            t.append(("  │ " if self.generations else "") + " · ".join(refs), style="bright_black")
        return t

    def _draw(self) -> None:
        if not self.is_mounted:
            return
        self.query_one("#loss-summary", Static).update(self._summary())
        if self.use_plotext:
            self._draw_plotext()
        else:
            self._draw_sparks()

    def _draw_plotext(self) -> None:
        train = self.query_one("#train-plot", PlotextPlot)
        train.display = not self.style_track  # the generations' plot takes the whole width
        plt = train.plt
        plt.clear_data()
        plt.clear_figure()
        who = self.following
        plt.title(f"train loss {who} (EMA {SMOOTHING})" if who else "training loss / step")
        if self.previous and self.previous in self.curves:
            xs, ys = self.series(self.previous).get("loss") or next(
                iter(self.series(self.previous).values()), ([], [])
            )
            if ys:
                plt.plot(
                    xs, ema(ys), label=f"{self.previous} (previous)", color="gray", marker="hd"
                )
        for (name, (xs, ys)), color in zip(self.series().items(), TERM_COLORS, strict=False):
            if ys:
                plt.plot(xs, ema(ys), label=name, color=color, marker="hd")
        steps = self.total_steps.get(who or "", 0)
        if steps > 1:
            plt.xlim(1, steps)
        train.refresh()
        gen = self.query_one("#gen-plot", PlotextPlot)
        plt = gen.plt
        plt.clear_data()
        plt.clear_figure()
        rows = [r for r in self.generations if _ok(r[1])]
        metric = "score dB" if self.style_track else "val loss"
        plt.title(f"{metric} / generation" if rows else f"{metric}: after the first generation")
        if rows:
            xs = [r[0] for r in rows]
            for k, (name, color) in enumerate(
                (("best", "green"), ("mean", "cyan"), ("worst", "red")), 1
            ):
                plt.plot(xs, [r[k] for r in rows], label=name, color=color, marker="hd")
            plt.xticks(xs)
            for name, color in (("student", "gray"), ("teacher", "magenta")):
                if name in self.references:
                    plt.hline(self.references[name], color)
        gen.refresh()

    def _draw_sparks(self) -> None:
        s = self.series()
        main = s.get("loss") or next(iter(s.values()), ([], []))
        self.query_one("#train-spark", Sparkline).data = ema(main[1])
        rows = [r for r in self.generations if _ok(r[1])]
        self.query_one("#gen-best-spark", Sparkline).data = [r[1] for r in rows]
        self.query_one("#gen-mean-spark", Sparkline).data = [r[2] for r in rows]
