"""`appraiser demo`: baselines, zero-shot, a short LoRA fine-tune and its evaluation, in one report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from appraiser.cli import console, err_console, quiet_libraries, user_errors
from appraiser.cli.progress import ProgressView
from appraiser.data.io import DataError
from appraiser.evaluation.metrics import mae_rank, money


def demo_command(
    data: Annotated[
        str | None, typer.Option(help="a data folder (train.jsonl + validation/test) or a hub dataset id")
    ] = None,
    out: Annotated[Path, typer.Option(help="the report folder")] = Path("appraiser-demo"),
    model: Annotated[str | None, typer.Option(help="smollm2-135m (default), a local folder or a hub id")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a few items and steps: the whole path in minutes")] = False,
    test_size: Annotated[int | None, typer.Option(help="test items (the first N of the test split)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="fine-tuning steps")] = None,
    n_train: Annotated[int | None, typer.Option(help="training items drawn for the fine-tune")] = None,
    seed: Annotated[int, typer.Option(help="seed of sampling and training")] = 42,
) -> None:
    """Run the whole job on the embedded model: baselines, zero-shot, LoRA fine-tune, leaderboard, charts."""
    from appraiser import config
    from appraiser.demo import DemoConfig, run_demo
    from appraiser.models import DEFAULT_MODEL, check_model

    with user_errors():
        quiet_libraries()
        source = data or str(config.default_data_dir())
        name = model or DEFAULT_MODEL
        cfg = DemoConfig.quick_config(source, out, name) if quick else DemoConfig(data=source, out=out, model=name)
        cfg.seed = seed
        for key, value in (("test_size", test_size), ("max_steps", max_steps), ("n_train", n_train)):
            if value is not None:
                if value < 1:
                    raise DataError(f"--{key.replace('_', '-')} must be at least 1, not {value}")
                setattr(cfg, key, value)
        check_model(name)  # before minutes of baselines, not after them
        view = ProgressView()

        def stage(msg: str) -> None:
            if view.progress.live.is_started:
                # the fine-tune is over: its line stays as it ended, not live (and stale) under every later stage
                view.progress.update(view.task, description="fine-tuned")
                view.progress.stop()
            console.rule(f"[bold]{escape(msg)}")

        def train_stage(msg: str) -> None:
            view.stage(msg)

        class _Live:
            """Open the progress display only while the fine-tune runs."""

            def __call__(self, step: int, total: int, values: dict[str, float]) -> None:
                if not view.progress.live.is_started:
                    view.progress.start()
                view(step, total, values)

        try:
            result = run_demo(
                cfg,
                stage=stage,
                train_listeners=(_Live(),),
                train_progress=None,
                train_stage=train_stage,
            )
        except KeyboardInterrupt:  # said before "interrupted": how to finish, since nothing is lost
            err_console.print(
                f"stopped: run the same command again to finish (priced items are cached and the fine-tune resumes "
                f"from its last checkpoint; report: {escape(str(out))})",
                highlight=False,
                soft_wrap=True,
            )
            raise
        finally:
            if view.progress.live.is_started:
                view.progress.stop()
    console.rule("[bold green]done")
    for r in sorted(result.results, key=lambda r: mae_rank(r.metrics)):
        m = r.metrics
        console.print(
            f"{escape(f'{r.pricer:<40}')} MAE {money(m['mae']):>9}  "
            f"(95% CI {money(m['mae_ci_low'], 0)}–{money(m['mae_ci_high'], 0)})  hit rate {m['hit_rate']:.0%}",
            soft_wrap=True,
        )
    from appraiser.demo_report import model_vs_traditional

    if line := model_vs_traditional(result.results):
        console.print(escape(line), soft_wrap=True)
    console.print(f"report: {escape(str(result.index))}  ({result.seconds / 60:.1f} min)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
