"""`appraiser data …`: curate raw metadata into splits, inspect datasets and prompts.

Bad input (a missing path, an unknown format, a malformed --split) ends with one line on stderr
and exit code 2; malformed lines inside a file are listed as `file:line: reason` and skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from appraiser.cli import console, err_console, fail, user_errors
from appraiser.data.io import DataError

app = typer.Typer(no_args_is_help=True)

SHOWN_ERRORS = 10


def _category_weights(pairs: list[str]) -> dict[str, float]:
    """CATEGORY=WEIGHT pairs as a dict. A weight must be finite and >= 0: `nan < 0` is false, so NaN
    once passed and silently sampled nothing."""
    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not math.isfinite(weights[name.strip()]) or weights[name.strip()] < 0:
            raise DataError(
                f"--category-weight {pair!r}: expected CATEGORY=WEIGHT with a finite WEIGHT >= 0, e.g. Automotive=0.2"
            )
    return weights


@app.command()
def curate(
    inputs: Annotated[
        list[str],
        typer.Argument(help="raw Amazon-Reviews-2023 metadata: .jsonl/.jsonl.gz files, or hub:<Category>"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the splits and report/")],
    category: Annotated[
        str | None,
        typer.Option(help="category of the items (default: from the file name meta_<Category>...)"),
    ] = None,
    size: Annotated[int | None, typer.Option(help="items to keep (price-flattened sample); default all")] = None,
    min_chars: Annotated[int, typer.Option(help="drop items whose text is shorter")] = 600,
    seed: Annotated[int, typer.Option(help="seed of the sample and the split")] = 42,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 2,
    split: Annotated[str, typer.Option(help="train,validation,test as fractions or counts")] = "0.8,0.1,0.1",
    fmt: Annotated[str, typer.Option("--format", help="jsonl, jsonl.gz or parquet")] = "jsonl",
    band_width: Annotated[float, typer.Option(help="price band width in $ for flattening")] = 10.0,
    flatten: Annotated[
        float, typer.Option(help="0 keeps the price distribution, 1 flattens it fully", min=0, max=1)
    ] = 1.0,
    category_weight: Annotated[
        list[str] | None, typer.Option(help="CATEGORY=WEIGHT sampling weight (repeatable; 0 leaves it out)")
    ] = None,
    chunk_bytes: Annotated[int, typer.Option(min=1, help="bytes of input per work unit", hidden=True)] = 4_000_000,
    fresh: Annotated[bool, typer.Option(help="ignore work left by an interrupted run")] = False,
    charts: Annotated[bool, typer.Option(help="draw the PNG charts")] = True,
) -> None:
    """Curate raw metadata into train/validation/test splits plus a stats report."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from appraiser.data.curate import CurateConfig, parse_split
    from appraiser.data.curate import curate as run_curate
    from appraiser.errors import validation_message

    with user_errors():
        try:
            config = CurateConfig(
                min_chars=min_chars,
                size=size,
                seed=seed,
                workers=workers,
                split=parse_split(split),
                band_width=band_width,
                flatten=flatten,
                category_weights=_category_weights(category_weight or []),
                chunk_bytes=chunk_bytes,
            )
        except ValidationError as e:
            raise DataError(validation_message(e, "", as_flag=True)) from None
        columns = (
            TextColumn("[bold]curating"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[records]:,} records, {task.fields[kept]:,} kept"),
            TimeElapsedColumn(),
        )
        bar = Progress(*columns, console=console)
        task = bar.add_task("curate", total=None, records=0, kept=0)

        def progress(done: int, total: int, records: int, kept: int) -> None:
            if not bar.live.is_started:  # started on the first chunk, so input errors print alone
                bar.start()
            bar.update(task, completed=done, total=total, records=records, kept=kept)

        try:
            result = run_curate(inputs, out, config, category, fmt, resume=not fresh, progress=progress, charts=charts)
        except KeyboardInterrupt:
            _stop(bar)
            err_console.print("interrupted: rerun the same command to resume from the last finished chunk")
            raise typer.Exit(130) from None
        finally:
            _stop(bar)
    _print_result(result)


def _stop(bar) -> None:
    if bar.live.is_started:
        bar.stop()


def _print_result(result) -> None:
    for line in result.error_examples[:SHOWN_ERRORS]:
        err_console.print(escape(line), soft_wrap=True, highlight=False)
    if result.n_errors > SHOWN_ERRORS:
        err_console.print(
            f"... {result.n_errors - SHOWN_ERRORS:,} more in {result.report_paths['errors']}", soft_wrap=True
        )
    s = result.stats
    table = Table(title="curation", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("records", f"{s['records']:,}")
    for reason, n in s["dropped"].items():
        if n:
            table.add_row(f"  dropped: {reason}", f"{n:,}")
    table.add_row("candidates", f"{s['candidates']:,}")
    table.add_row("kept", f"{s['kept']:,}")
    for name, n in s["splits"].items():
        table.add_row(f"  {name}", f"{n:,}")
    p = s["price"]["kept"]
    if p.get("count"):
        table.add_row("price median / mean", f"${p['median']:,.2f} / ${p['mean']:,.2f}")
    table.add_row("records/second", f"{s['records_per_second'] or 0:,.0f}")
    console.print(table)
    for name, path in result.paths.items():
        console.print(f"{name}: {escape(str(path))}", soft_wrap=True, highlight=False)
    console.print(f"report: {escape(str(result.report_paths['markdown']))}", soft_wrap=True, highlight=False)


@app.command()
def prompts(
    split_file: Annotated[Path, typer.Argument(help="a split file (.jsonl, .jsonl.gz or .parquet)")],
    model: Annotated[str, typer.Option(help="tokenizer: a packaged model name, a folder or a hub id")] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option(min=1, help="token budget of the text in the prompt")] = 160,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items")] = None,
    exact_cents: Annotated[bool, typer.Option(help="completions with exact cents instead of whole dollars")] = False,
    raw_text: Annotated[bool, typer.Option(help="use the raw text even where an item has a summary")] = False,
) -> None:
    """Token-count statistics of a split's prompts, and one example prompt and completion."""
    from rich.panel import Panel

    from appraiser.data.io import LoadReport, read_items
    from appraiser.data.prompts import PromptConfig, make_completion, make_prompt, token_stats
    from appraiser.models import load_tokenizer

    with user_errors():
        report = LoadReport()
        items = read_items(split_file, report, limit=limit)  # each bad line is logged as a warning as it is read
        if not items:
            raise DataError(f"{split_file}: no items to make prompts from")
        try:
            tokenizer = load_tokenizer(model)  # an unknown model is a ModelNotFound, itself a DataError
        except (OSError, ValueError) as e:
            raise DataError(f"{model}: could not load its tokenizer ({type(e).__name__}: {e})") from None
    cfg = PromptConfig(max_text_tokens=max_tokens, exact_cents=exact_cents, use_summary=not raw_text)
    stats = token_stats(items, tokenizer, cfg)
    table = Table(title=f"tokens: {escape(split_file.name)}, {stats['items']:,} items, model {escape(model)}")
    table.add_column("")
    for col in ("min", "median", "mean", "p95", "max"):
        table.add_column(col, justify="right")
    for key, label in (
        ("text_tokens", "text"),
        ("prompt_tokens", "prompt"),
        ("completion_tokens", "completion"),
    ):
        row = stats[key]
        table.add_row(label, *(f"{row[c]:g}" for c in ("min", "median", "mean", "p95", "max")))
    console.print(table)
    console.print(
        f"texts over {max_tokens} tokens (truncated): {stats['truncated']:,} ({stats['truncated_share']:.1%})"
    )
    example = items[0]
    console.print(Panel(escape(make_prompt(example, tokenizer, cfg)), title="example prompt"))
    console.print(Panel(escape(make_completion(example.price, cfg)), title="completion"))


@app.command()
def stats(
    source: Annotated[str, typer.Argument(help="a split file, a folder of splits, or a hub dataset id")],
) -> None:
    """Items, prices and categories of each split of a dataset."""
    from collections import Counter

    from appraiser.data.io import LoadReport, load_splits
    from appraiser.data.report import summary

    with user_errors():
        report = LoadReport()
        splits = load_splits(source, report)
        if report.skipped and not any(splits.values()):  # a table of zeros would pass for a dataset
            raise DataError(f"{source}: no items: all {report.skipped:,} records were bad (see the warnings above)")
    if Path(source).is_file():  # one file is read as a test split; show it under its own name
        splits = {Path(source).name: items for items in splits.values()}
    table = Table(title=escape(source))  # bad lines were logged as warnings as they were read
    for col in ("split", "items", "min $", "median $", "mean $", "max $", "top categories"):
        table.add_column(col, justify="left" if col in ("split", "top categories") else "right")
    for name, items in splits.items():
        p = summary([it.price for it in items])
        cats = Counter(it.category or "(none)" for it in items).most_common(3)
        table.add_row(
            name,
            f"{len(items):,}",
            *(f"{p[k]:,.2f}" if k in p else "" for k in ("min", "median", "mean", "max")),
            escape(", ".join(f"{c} {n:,}" for c, n in cats)),
        )
    console.print(table)
    if report.skipped:
        console.print(f"skipped {report.skipped:,} bad records")


@app.command()
def summarize(
    source: Annotated[Path, typer.Argument(help="an items file (.jsonl, .jsonl.gz, .parquet)")],
    model: Annotated[str, typer.Option(help="The model that writes the summaries (e.g. gpt-4o-mini).")],
    out: Annotated[Path, typer.Option(help="Output items file (JSONL); a rerun skips the ids already in it.")],
    provider: Annotated[
        str | None, typer.Option(help="A provider preset (openai, anthropic, ollama, appraiser …).")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="Any OpenAI-compatible endpoint (default $OPENAI_BASE_URL).")
    ] = None,
    key_env: Annotated[str | None, typer.Option(help="Environment variable holding the key.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N items.", min=0)] = None,
    batch: Annotated[bool, typer.Option("--batch", help="Through the Batch API (half price at OpenAI).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print tokens and dollars; send nothing.")] = False,
    concurrency: Annotated[int, typer.Option(help="Calls in flight at once (plain mode).", min=1)] = 8,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per summary.", min=16)] = 200,
    poll: Annotated[float, typer.Option(help="Seconds between batch status polls.", min=0.1)] = 10.0,
    prices: Annotated[Path | None, typer.Option(help="A JSON price table {model: \\[input, output]} $/1M.")] = None,
) -> None:
    """Rewrite items into the five-field summary (Title, Category, Brand, Description, Details) with an LLM."""
    from appraiser.api import ApiClient, load_prices, resolve_endpoint
    from appraiser.data import summaries
    from appraiser.data.io import read_items

    table = load_prices(prices)
    items = read_items(source, limit=limit)
    todo = [it for it in items if it.id not in summaries.done_ids(out)]
    est = summaries.estimate(todo, model, table, batch=batch)
    dollars = f"${est.dollars:,.4f}" if est.dollars is not None else "unknown (model not in the price table)"
    console.print(
        f"{len(todo):,} of {len(items):,} items to summarise with {escape(model)}"
        f"{' via the Batch API' if batch else ''}: ~{est.prompt_tokens:,} input + ~{est.completion_tokens:,} "
        f"output tokens, about {dollars}"
    )
    if dry_run or not todo:
        return
    client = ApiClient(resolve_endpoint(provider, base_url, key_env), concurrency=concurrency, prices=table)
    if batch:
        report = summaries.summarize_batch(
            items,
            client,
            model,
            out,
            max_tokens=max_tokens,
            poll_s=poll,
            on_poll=_print_batch,
        )
    else:
        from rich.progress import Progress

        with Progress(console=console) as bar:
            task = bar.add_task("summarising", total=len(todo))
            report = summaries.summarize(
                items, client, model, out, max_tokens=max_tokens, on_done=lambda it, s: bar.advance(task)
            )
    u = client.usage
    spent = f"${u.dollars:,.4f}" if u.dollars is not None else "unknown"
    console.print(
        f"wrote {report.written:,} summaries to {escape(str(out))} ({report.skipped:,} already there); "
        f"{u.prompt_tokens:,} + {u.completion_tokens:,} tokens, {spent}"
    )
    _summarize_outcome(report)


def _print_batch(batch: Any) -> None:
    """One poll of a summaries batch: its status and how many requests are done (what the provider says)."""
    counts = getattr(batch, "request_counts", None)
    done, total = getattr(counts, "completed", None), getattr(counts, "total", None)
    console.print(
        f"batch {escape(str(batch.id))}: {escape(str(batch.status))} ({done or 0}/{total or '?'})",
        highlight=False,
        emoji=False,
    )


def _summarize_outcome(report: Any) -> None:
    """The failures, then the exit code: a run where nothing succeeded is an error (exit 1, the first reason
    on the error line), so a bad key or a dead endpoint never passes for a finished job in a script; a run
    with some successes keeps them, says how many failed, and exits 0 (a rerun retries only the failures)."""
    for item_id, why in report.failed[:SHOWN_ERRORS]:
        err_console.print(f"{escape(item_id)}: {escape(why)}", soft_wrap=True, highlight=False)
    if not report.failed:
        return
    if not report.written:
        first = ": ".join(report.failed[0])
        raise fail(f"nothing was summarised ({len(report.failed):,} failed); first {first}", code=1)
    err_console.print(
        f"{len(report.failed):,} failed, {report.written:,} written; rerun the same command to retry the failures",
        highlight=False,
    )


def register(app_: typer.Typer) -> None:
    """Add the `data` group to the `appraiser` app."""
    app_.add_typer(app, name="data", help="Curate raw metadata into splits; inspect datasets and prompts.")
