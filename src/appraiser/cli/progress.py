"""Live training progress, shared by `appraiser train`, `appraiser demo` and `appraiser runs watch`.

`ProgressView` is the rich progress line a training run feeds through the trainer's listeners;
`watch_frame` draws one frame of a run from the run store (header, loss chart, latest events).
Everything user-supplied (run names, models, messages) is shown as text, never as rich markup.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from appraiser.cli import console

#: The longest wait between two polls of `--interval` (a day): beyond it `time.sleep` overflows, and no watch
#: means it.
MAX_POLL_SECONDS = 86_400.0


def check_poll_interval(seconds: float) -> float:
    """A watch's `--interval`, refused (one line) unless it is a real wait: more than 0, at most a day."""
    from appraiser.data.io import DataError

    if not 0 < seconds <= MAX_POLL_SECONDS:
        raise DataError(f"--interval must be more than 0 seconds and at most {MAX_POLL_SECONDS:,.0f} (a day)")
    return seconds


#: The colour of each run status, wherever a status is shown.
STATUS_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "failed": "red",
    "killed": "red",
    "cancelled": "yellow",
    "queued": "dim",
}


def fmt_duration(seconds: float | None) -> str:
    """`1:02:03` / `2:03`, or `-` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressView:
    """The rich progress line of a training run, fed by the trainer's listeners.

    Use it as a listener (`view(step, total, values)`), as `on_stage` (`view.stage`) and as
    `data_progress` (`view.data`); `view.progress` is the rich Progress to open around the run.
    `view.step` is the last step it saw (0 before the first).
    """

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("training", total=None, stats="")
        self.data_task: Any = None
        self.losses: list[float] = []
        self.step = 0

    def stage(self, message: str) -> None:
        self.progress.update(self.task, description=escape(message))
        if self.data_task is not None and message != "preparing data":
            self.progress.update(self.data_task, visible=False)

    def data(self, n: int) -> None:
        if self.data_task is None:
            self.data_task = self.progress.add_task("tokenizing", total=None, stats="")
        self.progress.advance(self.data_task, n)

    def __call__(self, step: int, total: int, values: dict[str, float]) -> None:
        from appraiser.runs.smoothing import ema

        self.step = max(self.step, int(step))
        if "loss" in values:
            self.losses.append(values["loss"])
            smooth = ema(self.losses, 0.1)[-1]
            stats = (
                f"loss {values['loss']:.3f}  smoothed {smooth:.3f}  lr {values['lr']:.2e}  "
                f"{values['tokens_per_s']:,.0f} tok/s  ETA {fmt_duration(values['eta_s'])}"
            )
            self.progress.update(self.task, completed=step, total=total, stats=stats, description="training")
        if "probe_mae" in values:
            self.progress.console.print(
                f"  step {step}: probe MAE [bold]${values['probe_mae']:,.2f}[/bold], "
                f"hit rate {values['probe_hit_rate']:.0%}, eval loss {values['eval_loss']:.4f}"
            )


#: The series a verdict is given for: (metric name, label, fewest points for a verdict, shown in dollars).
TREND_SERIES = (
    ("loss", "loss", 20, False),
    ("eval_loss", "validation loss", 3, False),
    ("probe_mae", "probe MAE", 3, True),
)

_VERDICT_STYLE = {"falling": "green", "flat": "yellow", "rising": "red", "diverging": "bold red"}


def trend_lines(store: Any, run_id: str, *, eta_s: float | None = None) -> list[Text]:
    """The trend verdicts of a run's loss, validation loss and probe MAE (once each has a few points), one line
    each; `eta_s` (a running run's time left) is added to the loss line."""
    from appraiser.runs.trend import verdict

    out = []
    for name, label, min_points, _ in TREND_SERIES:
        _, values = store.series(run_id, name)
        if values:
            v = verdict(values, metric=label, min_points=min_points)
            line = Text.assemble(f"{label} trend: ", (v.message, _VERDICT_STYLE.get(v.state, "")))
            if name == "loss" and eta_s is not None and math.isfinite(eta_s):
                line.append(f"  (ETA {fmt_duration(eta_s)})", style="dim")
            out.append(line)
    return out


def story_lines(store: Any, run_id: str) -> list[Text]:
    """The whole history of each series as one line: "loss: fast initial drop 3.2 → 1.6 (steps 1–18), then
    flat around 1.58 (steps 19–80)" (`runs show --verdict`, and `runs watch` once the run ended)."""
    from appraiser.runs.trend import phases, story

    out = []
    for name, label, min_points, money in TREND_SERIES:
        steps, values = store.series(run_id, name)
        if values:
            last = phases(steps, values, min_points=min_points)
            style = _VERDICT_STYLE.get(last[-1].state, "") if last else ""
            out.append(Text(story(steps, values, metric=label, min_points=min_points, money=money), style=style))
    return out


def stall_line(store: Any, run_id: str) -> Text | None:
    """A warning when a running run has written nothing for too long (runs.stalls), else None."""
    from appraiser.runs.stalls import check_stall

    stall = check_stall(store, run_id)
    return Text(f"warning: {stall.message}", style="bold yellow") if stall is not None else None


def watch_frame(store: Any, run_id: str, *, alpha: float = 0.1, width: int = 70, height: int = 14) -> Group:
    """One frame of `runs watch`: header, raw and smoothed loss chart, latest events."""
    from appraiser.runs.chart import Series, line_chart
    from appraiser.runs.smoothing import ema

    r = store.get(run_id)
    steps, losses = store.series(r.id, "loss")
    latest = store.latest(r.id)
    status = r.display_status
    head = Text.assemble(
        (r.id, "bold"),
        f"  {r.name or ''}  ",
        (status, STATUS_STYLE.get(status, "")),
        f"  step {r.step}/{r.max_steps or '?'}",
    )
    if losses:
        smooth = ema(losses, alpha)
        head.append(f"  loss {losses[-1]:.3f}  smoothed {smooth[-1]:.3f}")
        if latest.get("lr") is not None:
            head.append(f"  lr {latest['lr']:.2e}")
        if latest.get("tokens_per_s") is not None:
            head.append(f"  {latest['tokens_per_s']:,.0f} tok/s")
        if status == "running" and latest.get("eta_s") is not None:
            head.append(f"  ETA {fmt_duration(latest['eta_s'])}")
    else:
        smooth = []
    if r.best_value is not None:
        head.append(f"  best {r.best_metric} {r.best_value:,.2f} @{r.best_step}", style="green")
    chart = line_chart(
        [
            Series("loss", steps, losses, "grey50"),
            Series(f"smoothed (EMA {alpha})", steps, smooth, "bold cyan"),
        ],
        width=width,
        height=height,
    )
    eta = latest.get("eta_s") if status == "running" else None
    parts: list[Any] = [head]
    stall = stall_line(store, r.id)
    if stall is not None:
        parts.append(stall)
    parts += [*trend_lines(store, r.id, eta_s=eta), Panel(chart, title="training loss", expand=False)]
    probe_steps, maes = store.series(r.id, "probe_mae")
    if maes:
        parts.append(
            Panel(
                line_chart([Series("probe MAE ($)", probe_steps, maes, "yellow")], width=width, height=5),
                title="probe MAE",
                expand=False,
            )
        )
    events = store.events(r.id)[-5:]
    parts.append(Text("\n".join(str(e) for e in events), style="dim"))
    return Group(*parts)
