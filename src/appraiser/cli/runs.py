"""`appraiser runs …`: list training runs, read a run's event log, show one, watch one live.

Local runs today; hosted fine-tuning jobs are runs of kind `hosted` in the same store and share these
commands. Everything a user named (run names, models, errors, config values) is printed as text.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from appraiser.cli import console
from appraiser.cli.progress import STATUS_STYLE, check_poll_interval, story_lines, trend_lines, watch_frame
from appraiser.data.io import DataError

app = typer.Typer(no_args_is_help=True, help="Training runs: list them, read their log, watch one live.")

RunArg = Annotated[str, typer.Argument(help="run id, id prefix, name, or 'last'")]


def _store() -> Any:
    from appraiser.runs.store import RunStore

    return RunStore()


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{escape(status)}[/]"


@app.command("list")
def list_command(
    kind: Annotated[str | None, typer.Option(help="local or hosted")] = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
    limit: Annotated[int, typer.Option(help="newest N runs")] = 50,
) -> None:
    """Runs, newest first."""
    from appraiser.runs.store import KINDS, STATUSES

    if limit < 1:
        raise DataError("--limit must be at least 1")
    if kind is not None and kind not in KINDS:
        raise DataError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    if status is not None and status not in STATUSES:
        raise DataError(f"--status {status!r}: use one of {', '.join(STATUSES)}")
    runs = _store().list(kind=kind, status=status, limit=limit)
    if not runs:
        console.print("no runs yet (start one with `appraiser train`)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("id", "name", "status", "model", "step", "best", "created"):
        table.add_column(
            col,
            justify="right" if col in ("step", "best") else "left",
            no_wrap=col in ("id", "status", "step"),
        )
    for r in runs:
        best = "-"
        if r.best_value is not None:
            value = f"${r.best_value:,.2f}" if r.best_metric == "probe_mae" else f"{r.best_value:.4g}"
            best = f"{value} @{r.best_step}"
        model_name = r.model or "-"
        if "/" in model_name and Path(model_name).exists():
            model_name = Path(model_name).name
        if r.kind == "hosted":
            model_name += " (hosted)"
        table.add_row(
            escape(r.id),
            escape(r.name or ""),
            _status(r.display_status),
            escape(model_name),
            f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step),
            escape(best),
            datetime.fromtimestamp(r.created).strftime("%m-%d %H:%M"),
        )
    console.print(table)


@app.command("events")
def events_command(
    run: RunArg,
    tail: Annotated[int | None, typer.Option(help="only the last N events", min=0)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events until the run ends")] = False,
) -> None:
    """The run's event log, like a hosted job's ("Step 118/500: training loss=1.92")."""
    store = _store()
    r = store.get(run)
    events = store.events(r.id)
    if tail is not None:
        events = events[-tail:] if tail > 0 else []
    last = 0
    for e in events:
        console.print(escape(str(e)), style="red" if e.level == "error" else None, soft_wrap=True, highlight=False)
    if events:
        last = events[-1].id
    elif tail is not None:
        all_events = store.events(r.id)
        last = all_events[-1].id if all_events else 0
    while follow:
        current = store.get(r.id)
        for e in store.events(r.id, after=last):
            console.print(escape(str(e)), soft_wrap=True, highlight=False)
            last = e.id
        if current.finished or current.alive() is False:
            break
        time.sleep(1.0)


def _print_story(store: Any, run_id: str) -> None:
    """The whole history's story of each series (`--verdict`): its trend phases, oldest first."""
    r = store.get(run_id)
    console.print(f"run [bold]{escape(r.id)}[/bold] {escape(r.name or '')}: {_status(r.display_status)}, step {r.step}")
    lines = story_lines(store, r.id)
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
    if not lines:
        console.print("no losses recorded yet")


VerdictOpt = Annotated[
    bool, typer.Option("--verdict", help="print the story of the whole history (e.g. fast initial drop, then flat)")
]


@app.command("show")
def show_command(run: RunArg, story: VerdictOpt = False) -> None:
    """A run's status, progress, latest metrics, files and configuration."""
    store = _store()
    r = store.get(run)
    if story:
        _print_story(store, r.id)
        return
    latest = store.latest(r.id)
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", escape(r.id)),
        ("name", escape(r.name or "-")),
        ("kind", escape(r.kind + (f" ({r.external_id})" if r.external_id else ""))),
        ("status", _status(r.display_status) + (f"  {escape(r.error)}" if r.error else "")),
        ("model", escape(r.model or "-")),
        ("progress", f"step {r.step}/{r.max_steps or '?'}"),
        (
            "best",
            escape(f"{r.best_metric} = {r.best_value:,.4f} at step {r.best_step}") if r.best_value is not None else "-",
        ),
        ("created", _when(r.created)),
        ("updated", _when(r.updated)),
        ("folder", escape(str(r.folder or "-"))),
    ]
    for k, v in rows:
        table.add_row(k, v)
    if latest:
        values = ", ".join(f"{k}={v:.4g}" for k, v in sorted(latest.items()) if v is not None)
        table.add_row("latest", escape(values))
    for line in trend_lines(store, r.id):
        label = line.plain.partition(": ")[0]
        table.add_row(label, line[len(label) + 2 :])
    if r.folder and Path(r.folder).exists():
        files = sorted(p.name for p in Path(r.folder).iterdir() if not p.name.startswith("."))
        table.add_row("files", escape(", ".join(files)))
    console.print(table)
    config = {k: v for k, v in r.config.items() if v not in (None, [], "")}
    console.print(Panel(escape(json.dumps(config, indent=1, default=str)), title="config", expand=False))


@app.command("watch")
def watch_command(
    run: RunArg,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    alpha: Annotated[float, typer.Option(help="EMA smoothing factor (smaller: smoother)")] = 0.1,
    width: Annotated[int, typer.Option(help="chart width in characters")] = 70,
    story: VerdictOpt = False,
) -> None:
    """A live chart of the raw and smoothed training loss with the trend verdict; exits when the run ends."""
    store = _store()
    r = store.get(run)
    if story:
        _print_story(store, r.id)
        return
    if not 0 < alpha <= 1:
        raise DataError("--alpha must be in (0, 1]")
    if not 10 <= width <= 1000:
        raise DataError("--width must be between 10 and 1000 characters")
    check_poll_interval(interval)
    if once:
        console.print(watch_frame(store, r.id, alpha=alpha, width=width))
        return
    follow = contextlib.ExitStack()
    if r.kind == "hosted" and not r.finished:  # a hosted job: mirror its events into the store while watching
        from appraiser.cli.hosted import follow_while_watching

        follow.enter_context(follow_while_watching(store, r, interval))
    live_frame = Live(watch_frame(store, r.id, alpha=alpha, width=width), console=console, refresh_per_second=4)
    with follow, live_frame as live:
        while True:
            current = store.get(r.id)
            live.update(watch_frame(store, r.id, alpha=alpha, width=width))
            if current.finished or current.alive() is False:
                break
            time.sleep(interval)
    if not console.is_terminal:
        console.print()  # the last live frame ends without a newline when output is not a terminal
    console.print(f"run {escape(r.id)} is {escape(store.get(r.id).display_status)}")
    for line in story_lines(store, r.id):
        console.print(line, soft_wrap=True, highlight=False)


def register(app_: typer.Typer) -> None:
    """Add the `runs` group to the `appraiser` app."""
    app_.add_typer(app, name="runs")
