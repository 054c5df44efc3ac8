"""`appraiser train`: LoRA / QLoRA fine-tuning, or `--resume RUN` to continue one.

Training shows live progress (step, loss, smoothed loss, lr, tokens/s, ETA) and writes everything to
the run store, so another terminal can follow it with `appraiser runs watch RUN` (cli/runs.py).
Everything that can be checked before a model loads is checked first (the options, the config file,
the model name), so a typo costs a second, not a model load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from appraiser.cli import console, err_console, quiet_libraries
from appraiser.cli.progress import ProgressView
from appraiser.data.io import DataError


def _build_config(options: dict[str, Any], config_file: Path | None) -> Any:
    """The TrainConfig of `--config FILE` (a JSON object) overridden by the options given; any problem
    with either is a DataError that names the file or the option."""
    from pydantic import ValidationError

    from appraiser.errors import validation_message
    from appraiser.training import TrainConfig

    base: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise DataError(f"{config_file}: " + ("is a folder" if config_file.is_dir() else "no such file"))
        try:
            base = json.loads(config_file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{config_file}: not a text file (a TrainConfig JSON object is)") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{config_file}: not valid JSON ({e})") from None
        except OSError as e:
            raise DataError(f"{config_file}: cannot read it ({e.strerror or e})") from None
        if not isinstance(base, dict):
            raise DataError(
                f"{config_file}: holds a JSON {type(base).__name__}, not an object of TrainConfig fields "
                '(e.g. {"model": "smollm2-135m", "max_steps": 100})'
            )
    base.update({k: v for k, v in options.items() if v is not None})
    try:
        cfg = TrainConfig.model_validate(base)
    except ValidationError as e:
        where = f" in {config_file}" if config_file is not None else ""
        raise DataError(validation_message(e, "invalid training option") + where) from None
    from appraiser.models import check_model, check_target_modules

    check_model(cfg.model)
    check_target_modules(cfg.model, cfg.target_modules)
    _check_report_to(cfg.report_to)
    return cfg


def _check_report_to(report_to: list[str]) -> None:
    """Every `--report-to` tracker known to transformers and installed here, checked before the model loads
    (transformers would only refuse it when the trainer is built, after data and model are ready)."""
    wanted = [r for r in report_to if r not in ("none", "all")]
    if not wanted:
        return
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    installed = set(get_available_reporting_integrations())
    for r in wanted:
        if r not in INTEGRATION_TO_CALLBACK:
            raise DataError(f"--report-to {r}: unknown tracker; known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        if r not in installed:
            raise DataError(f"--report-to {r}: not installed here (pip install {r.replace('_', '-')})")


def _resume_config(ref: str) -> None:
    """Check a run's saved `config.json` and its model before resuming: a damaged or invalid file is a
    DataError naming it (`TrainConfig.load`), before any model or data loads."""
    from appraiser.models import check_model
    from appraiser.runs.store import RunStore
    from appraiser.training import TrainConfig

    run = RunStore().get(ref)
    if run.folder is None or not (Path(run.folder) / "config.json").exists():
        return  # the trainer says what is wrong with such a run
    try:
        cfg = TrainConfig.load(Path(run.folder) / "config.json")
    except DataError as e:
        raise DataError(f"{e}; cannot resume run {run.id}") from None
    check_model(cfg.model)


def _interrupted(run_id: str | None, view: ProgressView) -> typer.Exit:
    """The one line Ctrl-C prints during training, and its exit code (130)."""
    step = view.step
    if run_id is not None:
        from appraiser.runs.store import RunStore

        try:
            step = max(step, RunStore().get(run_id).step)
        except DataError:
            pass
        err_console.print(
            f"interrupted at step {step}; `appraiser train --resume {escape(run_id)}` continues", highlight=False
        )
    else:
        err_console.print("interrupted before the run started; nothing to resume", highlight=False)
    return typer.Exit(130)


class _Watch:
    """The run's notifier thread (appraiser.notify.RunNotifier): sends `--notify` cards on the end state and
    logs stalls (with no URLs too); started once the run id is known, stopped after training."""

    def __init__(self, urls: list[str], view: ProgressView):
        self.urls = urls
        self.view = view
        self.notifier: Any = None

    def start(self, run_id: str) -> None:
        from appraiser.notify import RunNotifier
        from appraiser.runs.store import RunStore

        def stalled(message: str) -> None:
            self.view.progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

        self.notifier = RunNotifier(RunStore(), run_id, self.urls, on_stall=stalled).start()

    def stop(self) -> None:
        if self.notifier is None:
            return
        if self.urls:
            err_console.print("sending notifications...", highlight=False)
        self.notifier.stop(timeout=120)


def _check_notify(urls: list[str]) -> list[str]:
    """Every `--notify` URL checked before the model loads (a typo must not cost a training run)."""
    from appraiser.notify import check_url

    for url in urls:
        problem = check_url(url)
        if problem is not None:
            raise DataError(f"--notify: {problem}")
    return urls


def _dry_run(cfg: Any) -> None:
    from appraiser.data.io import describe_sources
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
            title=escape(f"example 1 of {len(data.examples)}: item {ex.item_id}, ${data.train_items[0].price:,.2f}"),
            subtitle=f"{len(ex)} tokens, {len(ex) - ex.prompt_len} trained",
        )
    )
    report = data.audit
    console.print(("[green]✓[/green] " if report.ok else "[red]✗[/red] ") + escape(report.summary()), soft_wrap=True)
    console.print(
        f"training pool {escape(describe_sources(cfg.train))}: {len(data.train_items)} items drawn "
        f"({cfg.weighting} weighting); "
        f"probe: {len(data.probe_items)} validation items every {cfg.probe_every} steps",
        soft_wrap=True,
    )
    report.raise_if_failed()


def train_command(
    model: Annotated[str | None, typer.Option(help="smollm2-135m, gemma3-270m, a folder or a hub id")] = None,
    train: Annotated[
        list[Path] | None,
        typer.Option("--train", help="training items (.jsonl / .parquet), a folder of them; repeat for several"),
    ] = None,
    validation: Annotated[Path | None, typer.Option(help="validation items, for probes and weighting")] = None,
    n_train: Annotated[int | None, typer.Option(help="items drawn from the training pool")] = None,
    weighting: Annotated[
        str | None, typer.Option(help="none | price_flat | match (the validation price histogram)")
    ] = None,
    off_category_weight: Annotated[
        float | None, typer.Option(help="weight of items outside the validation categories (0: drop)")
    ] = None,
    sources: Annotated[
        str | None,
        typer.Option(help="source prefixes to lean on, comma-separated ('benchmark': rows curated like the benchmark)"),
    ] = None,
    off_source_weight: Annotated[
        float | None, typer.Option(help="weight of items whose source is not among --sources (0: drop)")
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
    head_refit_items: Annotated[int | None, typer.Option(help="distinct training items the head refit reads")] = None,
    load_in_4bit: Annotated[bool | None, typer.Option("--4bit/--no-4bit", help="QLoRA: NF4 base")] = None,
    rag: Annotated[
        int | None,
        typer.Option(help="retrieval-augmented: each prompt starts with its K nearest training items and prices"),
    ] = None,
    index: Annotated[
        Path | None, typer.Option(help="the training pool's retrieval index for --rag (default: <home>/index)")
    ] = None,
    probe_every: Annotated[int | None, typer.Option(help="score the probe set every N steps (0: never)")] = None,
    probe_size: Annotated[int | None, typer.Option(help="validation items in the probe set")] = None,
    probe_method: Annotated[
        str | None, typer.Option(help="expected | greedy | head (default: head with --head-refit, else expected)")
    ] = None,
    save_every: Annotated[int | None, typer.Option(help="checkpoint every N steps")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="newest checkpoints kept")] = None,
    patience: Annotated[int | None, typer.Option(help="early stop after N probes without improvement")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of sampling, order, LoRA init and dropout")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
    report_to: Annotated[str | None, typer.Option(help="comma-separated: wandb, trackio, mlflow, tensorboard")] = None,
    name: Annotated[str | None, typer.Option(help="a name for the run")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="a TrainConfig JSON (options override)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show one example's labels and the audit; exit")] = False,
    resume: Annotated[str | None, typer.Option(help="continue run RUN from its last checkpoint")] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            help="send the result card here when the run ends or stalls (an Apprise URL: mailto://, json://, "
            "slack://, discord://, tgram://, ntfy://, ...); repeat for several",
        ),
    ] = None,
) -> None:
    """Fine-tune a model with LoRA on price prompts (loss on the price and EOS only).

    A non-finite training loss stops the run at once (failed, exit code 2).
    """
    if resume is not None:  # a resumed run keeps the settings it started with: say so, never ignore a flag
        given = [k for k, v in locals().items() if v not in (None, False) and k not in ("resume", "notify")]
        if given:
            flags = ", ".join("--" + ("config" if k == "config_file" else k.replace("_", "-")) for k in given)
            raise DataError(f"--resume continues run {resume} with the settings it started with; drop {flags}")
    quiet_libraries()  # before `training` imports transformers/peft/bitsandbytes, which warn as they load
    from appraiser import training
    from appraiser.training import distributed

    view = ProgressView()
    if not distributed.is_main():  # under `accelerate launch` rank 0 alone shows progress and the result
        view.progress.disable = True
    watch = _Watch(_check_notify(list(notify or [])), view)
    run_id: str | None = resume
    if resume is not None:
        _resume_config(resume)
        from appraiser.runs.store import RunStore

        run_id = RunStore().get(resume).id
        if distributed.is_main():  # one notifier per run (start: `created` runs on rank 0 only)
            watch.start(run_id)
        try:
            with view.progress:
                result = training.resume(resume, listeners=[view], data_progress=view.data, on_stage=view.stage)
        except KeyboardInterrupt:
            raise _interrupted(run_id, view) from None
        finally:
            watch.stop()
    else:
        options = {
            "model": model,
            "train": (train[0] if len(train) == 1 else list(train)) if train else None,
            "validation": validation,
            "n_train": n_train,
            "weighting": weighting,
            "off_category_weight": off_category_weight,
            "sources": sources.split(",") if sources else None,
            "off_source_weight": off_source_weight,
            "max_steps": max_steps,
            "epochs": epochs,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "learning_rate": lr,
            "warmup_ratio": warmup_ratio,
            "lora_r": lora_r,
            "lora_alpha": lora_alpha,
            "lora_dropout": lora_dropout,
            "target_modules": [m.strip() for m in target_modules.split(",") if m.strip()] if target_modules else None,
            "max_text_tokens": max_text_tokens,
            "head_weight": head_weight,
            "lm_weight": lm_weight,
            "head_lr": head_lr,
            "head_pooling": head_pooling,
            "head_refit": head_refit,
            "head_refit_items": head_refit_items,
            "load_in_4bit": load_in_4bit,
            "rag": rag,
            "index": index,
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
            nonlocal run_id
            run_id = run.id
            view.progress.console.print(f"run [bold]{escape(run.id)}[/bold] in {escape(str(run.folder))}")
            watch.start(run.id)

        try:
            with view.progress:
                result = training.start(
                    cfg,
                    listeners=[view],
                    data_progress=view.data,
                    on_stage=view.stage,
                    on_created=created,
                )
        except KeyboardInterrupt:
            raise _interrupted(run_id, view) from None
        finally:
            watch.stop()
    if not distributed.is_main():
        return
    line = f"[green]done[/green]: run {escape(result.run_id)}, {result.steps} steps, mean loss {result.train_loss:.4f}"
    if result.best_probe_mae is not None:
        line += f", best probe MAE ${result.best_probe_mae:,.2f} at step {result.best_step}"
    if result.stopped_early:
        line += " (stopped early)"
    console.print(line)
    console.print(f"adapter: {escape(str(result.best or result.final))}")


def register(app: typer.Typer) -> None:
    """Add `train` to the `appraiser` app."""
    app.command("train")(train_command)
