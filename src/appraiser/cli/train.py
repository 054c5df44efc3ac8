"""`appraiser train` (LoRA / QLoRA fine-tuning) and `appraiser runs …` (list, events, show, watch).

Training shows live progress (step, loss, smoothed loss, lr, tokens/s, ETA) and writes everything to
the run store, so another terminal can follow it with `appraiser runs watch RUN`.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from appraiser.cli import console, err_console, quiet_libraries, user_errors
from appraiser.data.io import DataError

runs_app = typer.Typer(no_args_is_help=True, help="Training runs: list them, read their log, watch one live.")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _build_config(options: dict[str, Any], config_file: Path | None) -> Any:
    from pydantic import ValidationError

    from appraiser.training.config import TrainConfig

    base: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.exists():
            raise DataError(f"{config_file}: no such file")
        try:
            base = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{config_file}: not valid JSON ({e})") from None
    base.update({k: v for k, v in options.items() if v is not None})
    try:
        return TrainConfig.model_validate(base)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise DataError(f"invalid training option {where}: {first['msg']}") from None


def _dry_run(cfg: Any) -> None:
    from appraiser.models import load_tokenizer
    from appraiser.training.dataset import token_view
    from appraiser.training.trainer import prepare_data, resolve_paths

    cfg = resolve_paths(cfg)
    with console.status("tokenizing and auditing the training examples..."):
        tokenizer = load_tokenizer(cfg.model)
        data = prepare_data(cfg, tokenizer)
    ex = data.examples[0]
    legend = Text.assemble(
        ("masked (no loss)", "dim"), "   ", ("trained", "bold black on green"), "   │ = token boundary"
    )
    console.print(
        Panel(
            Group(token_view(ex, tokenizer), Text(""), legend),
            title=f"example 1 of {len(data.examples)}: item {ex.item_id}, ${data.train_items[0].price:,.2f}",
            subtitle=f"{len(ex)} tokens, {len(ex) - ex.prompt_len} trained",
        )
    )
    report = data.audit
    console.print(
        ("[green]✓[/green] " if report.ok else "[red]✗[/red] ") + escape(report.summary()), soft_wrap=True
    )
    console.print(
        f"training pool {cfg.train}: {len(data.train_items)} items drawn ({cfg.weighting} weighting); "
        f"probe: {len(data.probe_items)} validation items every {cfg.probe_every} steps",
        soft_wrap=True,
    )
    report.raise_if_failed()


class _ProgressView:
    """The rich progress line of a training run, fed by the trainer's listeners."""

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

    def stage(self, message: str) -> None:
        self.progress.update(self.task, description=message)
        if self.data_task is not None and message != "preparing data":
            self.progress.update(self.data_task, visible=False)

    def data(self, n: int) -> None:
        if self.data_task is None:
            self.data_task = self.progress.add_task("tokenizing", total=None, stats="")
        self.progress.advance(self.data_task, n)

    def __call__(self, step: int, total: int, values: dict[str, float]) -> None:
        from appraiser.runs.smoothing import ema

        if "loss" in values:
            self.losses.append(values["loss"])
            smooth = ema(self.losses, 0.1)[-1]
            stats = (
                f"loss {values['loss']:.3f}  smoothed {smooth:.3f}  lr {values['lr']:.2e}  "
                f"{values['tokens_per_s']:,.0f} tok/s  ETA {_fmt_duration(values['eta_s'])}"
            )
            self.progress.update(self.task, completed=step, total=total, stats=stats, description="training")
        if "probe_mae" in values:
            self.progress.console.print(
                f"  step {step}: probe MAE [bold]${values['probe_mae']:,.2f}[/bold], "
                f"hit rate {values['probe_hit_rate']:.0%}, eval loss {values['eval_loss']:.4f}"
            )


def train_command(
    model: Annotated[str | None, typer.Option(help="smollm2-135m, gemma3-270m, a folder or a hub id")] = None,
    train: Annotated[Path | None, typer.Option("--train", help="training items (.jsonl / .parquet)")] = None,
    validation: Annotated[
        Path | None, typer.Option(help="validation items, for probes and weighting")
    ] = None,
    n_train: Annotated[int | None, typer.Option(help="items drawn from the training pool")] = None,
    weighting: Annotated[
        str | None, typer.Option(help="none | price_flat | match (the validation price histogram)")
    ] = None,
    off_category_weight: Annotated[
        float | None, typer.Option(help="weight of items outside the validation categories (0: drop)")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="optimizer steps (overrides --epochs)")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the drawn items")] = None,
    batch_size: Annotated[int | None, typer.Option(help="items per micro-batch")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="micro-batches per optimizer step")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="peak learning rate")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="share of steps spent warming up")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha")] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout")] = None,
    target_modules: Annotated[
        str | None, typer.Option(help="comma-separated modules, e.g. q_proj,k_proj,v_proj,o_proj,gate_proj")
    ] = None,
    max_text_tokens: Annotated[int | None, typer.Option(help="description budget in tokens")] = None,
    head_weight: Annotated[
        float | None, typer.Option(help="add a regression head on log price with this loss weight (0: none)")
    ] = None,
    lm_weight: Annotated[
        float | None, typer.Option(help="weight of the completion cross-entropy (0: train the head only)")
    ] = None,
    head_lr: Annotated[float | None, typer.Option(help="learning rate of the regression head")] = None,
    head_pooling: Annotated[
        str | None, typer.Option(help="what the head reads: last (prompt position), mean (over the prompt), both")
    ] = None,
    head_refit: Annotated[
        str | None,
        typer.Option(help="after training, refit the head on the training items' features: none | ridge | kernel"),
    ] = None,
    head_refit_items: Annotated[
        int | None, typer.Option(help="distinct training items the head refit reads")
    ] = None,
    load_in_4bit: Annotated[bool | None, typer.Option("--4bit/--no-4bit", help="QLoRA: NF4 base")] = None,
    probe_every: Annotated[
        int | None, typer.Option(help="score the probe set every N steps (0: never)")
    ] = None,
    probe_size: Annotated[int | None, typer.Option(help="validation items in the probe set")] = None,
    probe_method: Annotated[str | None, typer.Option(help="expected | greedy")] = None,
    save_every: Annotated[int | None, typer.Option(help="checkpoint every N steps")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="newest checkpoints kept")] = None,
    patience: Annotated[
        int | None, typer.Option(help="early stop after N probes without improvement")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seed of sampling, order, LoRA init and dropout")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    report_to: Annotated[
        str | None, typer.Option(help="comma-separated: wandb, trackio, mlflow, tensorboard")
    ] = None,
    name: Annotated[str | None, typer.Option(help="a name for the run")] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="a TrainConfig JSON (options override)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show one example's labels and the audit; exit")
    ] = False,
    resume: Annotated[str | None, typer.Option(help="continue run RUN from its last checkpoint")] = None,
) -> None:
    """Fine-tune a model with LoRA on price prompts (loss on the price and EOS only)."""
    from appraiser.training import trainer

    with user_errors():
        quiet_libraries()
        view = _ProgressView()
        if resume is not None:
            with view.progress:
                result = trainer.resume(
                    resume, listeners=[view], data_progress=view.data, on_stage=view.stage
                )
        else:
            options = {
                "model": model,
                "train": train,
                "validation": validation,
                "n_train": n_train,
                "weighting": weighting,
                "off_category_weight": off_category_weight,
                "max_steps": max_steps,
                "epochs": epochs,
                "batch_size": batch_size,
                "grad_accum": grad_accum,
                "learning_rate": lr,
                "warmup_ratio": warmup_ratio,
                "lora_r": lora_r,
                "lora_alpha": lora_alpha,
                "lora_dropout": lora_dropout,
                "target_modules": [m.strip() for m in target_modules.split(",") if m.strip()]
                if target_modules
                else None,
                "max_text_tokens": max_text_tokens,
                "head_weight": head_weight,
                "lm_weight": lm_weight,
                "head_lr": head_lr,
                "head_pooling": head_pooling,
                "head_refit": head_refit,
                "head_refit_items": head_refit_items,
                "load_in_4bit": load_in_4bit,
                "probe_every": probe_every,
                "probe_size": probe_size,
                "probe_method": probe_method,
                "save_every": save_every,
                "keep_checkpoints": keep_checkpoints,
                "patience": patience,
                "seed": seed,
                "threads": threads,
                "report_to": [r.strip() for r in report_to.split(",") if r.strip()] if report_to else None,
                "name": name,
            }
            cfg = _build_config(options, config_file)
            if dry_run:
                _dry_run(cfg)
                return

            def created(run: Any) -> None:
                view.progress.console.print(f"run [bold]{run.id}[/bold] in {run.folder}")

            try:
                with view.progress:
                    result = trainer.start(
                        cfg,
                        listeners=[view],
                        data_progress=view.data,
                        on_stage=view.stage,
                        on_created=created,
                    )
            except KeyboardInterrupt:
                err_console.print("interrupted; continue with: appraiser train --resume last")
                raise typer.Exit(130) from None
    line = (
        f"[green]done[/green]: run {result.run_id}, {result.steps} steps, mean loss {result.train_loss:.4f}"
    )
    if result.best_probe_mae is not None:
        line += f", best probe MAE ${result.best_probe_mae:,.2f} at step {result.best_step}"
    if result.stopped_early:
        line += " (stopped early)"
    console.print(line)
    console.print(f"adapter: {result.best or result.final}")


# ------------------------------------------------------------------------------------------ runs


def _store() -> Any:
    from appraiser.runs.store import RunStore

    return RunStore()


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


_STATUS_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "failed": "red",
    "killed": "red",
    "cancelled": "yellow",
    "queued": "dim",
}


@runs_app.command("list")
def list_command(
    kind: Annotated[str | None, typer.Option(help="local or hosted")] = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
    limit: Annotated[int, typer.Option(help="newest N runs")] = 50,
) -> None:
    """Runs, newest first."""
    with user_errors():
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
        status_text = r.display_status
        best = "-"
        if r.best_value is not None:
            value = f"${r.best_value:,.2f}" if r.best_metric == "probe_mae" else f"{r.best_value:.4g}"
            best = f"{value} @{r.best_step}"
        model_name = r.model or "-"
        if r.kind == "hosted":
            model_name += " (hosted)"
        table.add_row(
            r.id,
            r.name or "",
            f"[{_STATUS_STYLE.get(status_text, '')}]{status_text}[/]",
            Path(model_name).name if "/" in model_name and Path(model_name).exists() else model_name,
            f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step),
            best,
            datetime.fromtimestamp(r.created).strftime("%m-%d %H:%M"),
        )
    console.print(table)


@runs_app.command("events")
def events_command(
    run: Annotated[str, typer.Argument(help="run id, id prefix, name, or 'last'")],
    tail: Annotated[int | None, typer.Option(help="only the last N events")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events until the run ends")
    ] = False,
) -> None:
    """The run's event log, like a hosted job's ("Step 118/500: training loss=1.92")."""
    with user_errors():
        store = _store()
        r = store.get(run)
        events = store.events(r.id)
    if tail is not None:
        events = events[-tail:] if tail > 0 else []
    last = 0
    for e in events:
        console.print(
            escape(str(e)), style="red" if e.level == "error" else None, soft_wrap=True, highlight=False
        )
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


@runs_app.command("show")
def show_command(run: Annotated[str, typer.Argument(help="run id, id prefix, name, or 'last'")]) -> None:
    """A run's status, progress, latest metrics, files and configuration."""
    with user_errors():
        store = _store()
        r = store.get(run)
        latest = store.latest(r.id)
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    status = r.display_status
    rows = [
        ("id", r.id),
        ("name", r.name or "-"),
        ("kind", r.kind + (f" ({r.external_id})" if r.external_id else "")),
        (
            "status",
            f"[{_STATUS_STYLE.get(status, '')}]{status}[/]" + (f"  {escape(r.error)}" if r.error else ""),
        ),
        ("model", r.model or "-"),
        ("progress", f"step {r.step}/{r.max_steps or '?'}"),
        (
            "best",
            f"{r.best_metric} = {r.best_value:,.4f} at step {r.best_step}"
            if r.best_value is not None
            else "-",
        ),
        ("created", _when(r.created)),
        ("updated", _when(r.updated)),
        ("folder", str(r.folder or "-")),
    ]
    for k, v in rows:
        table.add_row(k, v)
    if latest:
        table.add_row("latest", ", ".join(f"{k}={v:.4g}" for k, v in sorted(latest.items()) if v is not None))
    if r.folder and Path(r.folder).exists():
        files = sorted(p.name for p in Path(r.folder).iterdir() if not p.name.startswith("."))
        table.add_row("files", ", ".join(files))
    console.print(table)
    config = {k: v for k, v in r.config.items() if v not in (None, [], "")}
    console.print(Panel(escape(json.dumps(config, indent=1)), title="config", expand=False))


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
        (status, _STATUS_STYLE.get(status, "")),
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
            head.append(f"  ETA {_fmt_duration(latest['eta_s'])}")
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
    parts: list[Any] = [head, Panel(chart, title="training loss", expand=False)]
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


@runs_app.command("watch")
def watch_command(
    run: Annotated[str, typer.Argument(help="run id, id prefix, name, or 'last'")],
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    alpha: Annotated[float, typer.Option(help="EMA smoothing factor (smaller: smoother)")] = 0.1,
    width: Annotated[int, typer.Option(help="chart width in characters")] = 70,
) -> None:
    """A live chart of the raw and smoothed training loss; exits when the run ends."""
    with user_errors():
        store = _store()
        r = store.get(run)
        if not 0 < alpha <= 1:
            raise DataError("--alpha must be in (0, 1]")
        if once:
            console.print(watch_frame(store, r.id, alpha=alpha, width=width))
            return
        with Live(
            watch_frame(store, r.id, alpha=alpha, width=width), console=console, refresh_per_second=4
        ) as live:
            while True:
                current = store.get(r.id)
                live.update(watch_frame(store, r.id, alpha=alpha, width=width))
                if current.finished or current.alive() is False:
                    break
                time.sleep(interval)
    if not console.is_terminal:
        console.print()  # the last live frame ends without a newline when output is not a terminal
    console.print(f"run {r.id} is {store.get(r.id).display_status}")


def register(app: typer.Typer) -> None:
    """Add `train` and the `runs` group to the `appraiser` app."""
    app.command("train")(train_command)
    app.add_typer(runs_app, name="runs")
