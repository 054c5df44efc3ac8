"""`appraiser baseline NAME`: fit a traditional baseline, evaluate it, record it, save it.

The same as `appraiser eval NAME` for a baseline, plus the options every baseline shares
(`--weighting`, `--target`, `--seed`) as flags, a saved model by default, and `--list`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from appraiser import config
from appraiser.cli import console, friendly, parse_options
from appraiser.data.io import DataError
from appraiser.evaluation.evaluator import DEFAULT_TEST_SIZE, fit_and_evaluate, load_test_items
from appraiser.evaluation.metrics import money
from appraiser.evaluation.store import LeaderboardStore


def model_path(label: str) -> Path:
    """Where a fitted baseline is saved by default: `<home>/models/<label>.pkl`, label made file-safe."""
    from appraiser.evaluation.charts import short_name

    return config.home() / "models" / f"{short_name(re.sub(r'[^A-Za-z0-9_.=-]+', '_', label).strip('_'))}.pkl"


def list_table() -> Table:
    from appraiser.pricers import registry

    t = Table(title="Baselines (appraiser baseline NAME)", box=box.SIMPLE_HEAD)
    t.add_column("name", no_wrap=True)
    t.add_column("target", no_wrap=True)
    t.add_column("what it is")
    for name in registry.names("baseline"):
        entry = registry.get(name)
        target = getattr(entry.factory, "default_target", "")
        t.add_row(name, target, escape(entry.description))
    return t


@friendly
def baseline_command(
    name: Annotated[str | None, typer.Argument(help="A baseline name (see --list).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="Name the baselines and exit.")] = False,
    train: Annotated[
        list[Path] | None,
        typer.Option(
            help="Training file or folder (a folder: every train.* in and below it, so extra/train.jsonl too); "
            "repeat for several (default: the data folder's train.jsonl alone)."
        ),
    ] = None,
    test: Annotated[
        Path | None, typer.Option(help="Test split file or folder (default: <data dir>/validation.jsonl).")
    ] = None,
    size: Annotated[
        int, typer.Option(help="Number of test items from the start of the file (0 = all).", min=0)
    ] = DEFAULT_TEST_SIZE,  # min=0 as in `appraiser eval`: -5 is a typo, not "all"
    offset: Annotated[int, typer.Option(help="Skip this many items at the start of the test file.")] = 0,
    weighting: Annotated[
        str, typer.Option(help="Sample weights: none | price_flat | match (match reads validation's prices).")
    ] = "none",
    target: Annotated[str | None, typer.Option(help="Regress on log | price (default: the baseline's own).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything random.")] = 0,
    validation: Annotated[
        Path | None,
        typer.Option(help="Split whose price distribution --weighting match aims at (default: <data dir>/validation)."),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Baseline option key=value (e.g. -o k=20).")
    ] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-item predictions JSONL here.")] = None,
    save: Annotated[
        Path | None, typer.Option(help="Where to save the fitted model (default: <home>/models/<label>.pkl).")
    ] = None,
    charts: Annotated[Path | None, typer.Option(help="Write PNG/HTML charts to this folder.")] = None,
    name_as: Annotated[str | None, typer.Option("--name", help="Leaderboard name (default: the label).")] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Split-conformal interval on log price at this level (0: none).")
    ] = 0.0,
    interval_scale: Annotated[
        str,
        typer.Option(
            "--interval-scale",
            help="none: one width in log space for all; difficulty: scaled per item by how hard it is.",
        ),
    ] = "none",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-item lines, just the summary.")] = False,
    no_record: Annotated[bool, typer.Option("--no-record", help="Do not add a leaderboard row.")] = False,
    db: Annotated[Path | None, typer.Option(help="Leaderboard database (default: <home>/leaderboard.db).")] = None,
) -> None:
    """Fit a baseline on the training split, evaluate and record it, and save the fitted model."""
    from appraiser.pricers import registry

    if list_:
        console.print(list_table())
        return
    if name is None:
        raise DataError("name a baseline (see `appraiser baseline --list`)")
    if name not in registry.names("baseline"):
        raise DataError(f"unknown baseline {name!r}; known: {', '.join(registry.names('baseline'))}")

    from appraiser.cli.evaluate import check_output_file, check_output_folder

    # before the fit: a bad output path found afterwards wastes the fit and leaves a leaderboard row behind
    check_output_file(predictions, "--predictions")
    check_output_file(save, "--save")
    check_output_folder(charts, "--charts")

    opts = {"weighting": weighting, "seed": seed, **parse_options(option)}
    if target is not None:
        opts["target"] = target
    pricer = registry.create(name, **opts)
    if hasattr(pricer, "progress"):
        pricer.progress = True  # embedding thousands of texts takes minutes: show it
    weighting_of, off_category = pricer.weighting, pricer.off_category_weight
    if interval:
        from appraiser.cli.evaluate import with_interval

        pricer = with_interval(pricer, interval, True, scale=interval_scale)
    elif interval_scale != "none":
        raise DataError("--interval-scale scales an interval: add --interval LEVEL (e.g. 0.8)")

    data = config.default_data_dir()
    test_items = load_test_items(test or data / "validation.jsonl", None if size <= 0 else size, offset)
    if validation is None and (weighting_of == "match" or off_category != 1.0):
        validation = data / "validation.jsonl"  # what `match` and category weights aim at, by default

    save = save or model_path(pricer.label)
    check_output_file(save, "--save")  # the default, under <home>/models
    with LeaderboardStore(db) as store:
        result, saved = fit_and_evaluate(
            pricer,
            test_items,
            train=train or data / "train.jsonl",
            validation=validation,
            save=save,
            say=console.print,
            name=name_as,
            show=not quiet,
            cache=False,
            record=not no_record,
            predictions_path=predictions,
            charts_dir=charts,
            store=store,
        )
    fit_seconds = result.fit_seconds
    if quiet:
        console.print(result.summary_table())
    m = result.metrics
    console.print(
        f"{escape(result.pricer)}: MAE {money(m['mae'])}, RMSLE {m['rmsle']:.3f}, hit rate {m['hit_rate']:.1%} · "
        f"fit {fit_seconds:.1f} s, predict {result.seconds:.2f} s for {len(test_items)} items"
    )
    where = escape(str(saved))
    console.print(f"model saved to {where} (evaluate again with `appraiser eval --model {where}`)")
    if predictions is not None:
        console.print(f"predictions: {escape(str(predictions))}")


def register(app: typer.Typer) -> None:
    """Add `appraiser baseline` to the app."""
    app.command("baseline")(baseline_command)
