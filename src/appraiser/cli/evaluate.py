"""`appraiser eval | leaderboard | compare | import-predictions | human …`: measure pricers and rank them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from appraiser import config
from appraiser.cli import console, err_console, friendly, parse_options, quiet_libraries
from appraiser.data.io import DataError
from appraiser.evaluation.evaluator import (
    DEFAULT_TEST_SIZE,
    EvalResult,
    fit_and_evaluate,
    load_test_items,
    record_result,
    score,
    summary_table,
    write_predictions,
)
from appraiser.evaluation.metrics import MIN_PRICED_SHARE, MaeRank, mae_rank
from appraiser.evaluation.store import LeaderboardStore, Row
from appraiser.items import fingerprint

TestOpt = Annotated[
    Path | None, typer.Option("--test", help="Test split file (or a folder: its test, else validation split).")
]
SizeOpt = Annotated[
    int, typer.Option("--size", help="Number of test items, from the start of the file (0 = all).", min=0)
]
IntervalOpt = Annotated[
    float,
    typer.Option(
        "--interval",
        help="Add a split-conformal interval on log price at this level (e.g. 0.8), calibrated on a slice of "
        "the training pool; coverage and width join the summary (0: none).",
    ),
]
IntervalMethodOpt = Annotated[
    str,
    typer.Option(
        "--interval-method",
        help="split: \\[guess e^-q, guess e^q]; cqr: the llm beam's own central interval, conformalised "
        "(calibrated on pool items its fine-tune did not train on).",
    ),
]
IntervalScaleOpt = Annotated[
    str,
    typer.Option(
        "--interval-scale",
        help="split intervals only: none = one width in log space for every item; difficulty = each item's "
        "width scaled by a model of how hard it is (guess, text length, category), so coverage holds across "
        "price levels, not only on average.",
    ),
]
DbOpt = Annotated[Path | None, typer.Option("--db", help="Leaderboard database (default: .appraiser/leaderboard.db).")]


def with_interval(pricer, level: float, needs_fit: bool, method: str = "split", scale: str = "none"):
    """`pricer` wrapped in conformal intervals at `level` (a pricer that needs no fit prices 300 pool items)."""
    from appraiser.pricers.conformal import Conformal, ConformalQuantile

    if not 0 < level < 1:
        raise DataError(f"--interval must be between 0 and 1 (e.g. 0.8), not {level}")
    if method == "cqr":
        if needs_fit:
            raise DataError("--interval-method cqr needs a pricer with its own distribution (the llm pricer)")
        return ConformalQuantile(pricer, level=level, max_calibration=300)
    if method != "split":
        raise DataError(f"--interval-method must be split or cqr, not {method!r}")
    from appraiser.pricers.conformal import INTERVAL_SCALES

    if scale not in INTERVAL_SCALES:
        raise DataError(f"--interval-scale must be one of {', '.join(INTERVAL_SCALES)}, not {scale!r}")
    most = 2000 if needs_fit else 300
    return Conformal(pricer, level=level, needs_fit=needs_fit, max_calibration=most, scale=scale)


def _size(size: int) -> int | None:
    return None if size <= 0 else size


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (what a write would have to create folders under)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, shown: Path, flag: str) -> None:
    """`folder` (existing or not) can hold new files: its nearest existing ancestor is a folder we can create a
    file in. Tried with a real file, removed at once: `os.access` says yes to root even on /proc."""
    import os
    import tempfile

    base = _nearest_existing(folder)
    if not base.is_dir():
        raise DataError(f"{shown}: {flag} cannot be written under {base}, a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".appraiser-probe-", dir=base)
    except OSError as e:
        raise DataError(f"{shown}: {flag} cannot be written in {base} ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written before anything runs: the error would otherwise come after
    a long fit, and after the leaderboard row was already written."""
    if path is None:
        return
    if path.is_dir():
        raise DataError(f"{path}: is a folder; {flag} needs a file path")
    _check_writable_folder(path.absolute().parent, path, flag)


def check_output_folder(path: Path | None, flag: str) -> None:
    """Refuse an output folder that is a file or cannot be created, before anything runs (see check_output_file)."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file; {flag} needs a folder")
    _check_writable_folder(path, path, flag)


def _store(db: Path | None) -> LeaderboardStore:
    return LeaderboardStore(db)


def _existing_store(db: Path | None) -> LeaderboardStore:
    """The leaderboard a command only reads: a --db that does not exist is a typo, not a new empty database."""
    if db is not None and not db.exists():
        raise DataError(f"{db}: no such leaderboard database")
    return LeaderboardStore(db)


def _fmt_money(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"−${-v:,.2f}" if v < 0 else f"${v:,.2f}"


# ---------------------------------------------------------------- eval


def _ignored_with_model(pricer, option, train, validation, save, interval, method, scale) -> list[str]:
    """The options given beside --model that it would silently drop: a saved pricer is evaluated as it was
    fitted (no new name, options, training data or interval), and saving it again would only copy it."""
    given = {
        f"the pricer name {pricer!r}": pricer is not None,
        "-o": bool(option),
        "--train": bool(train),
        "--validation": validation is not None,
        "--save": save is not None,
        "--interval": bool(interval),
        "--interval-method": method != "split",
        "--interval-scale": scale != "none",
    }
    return [k for k, v in given.items() if v]


@friendly
def eval_command(
    pricer: Annotated[
        str | None, typer.Argument(help="A registered pricer name (see `appraiser baseline --list`).")
    ] = None,
    test: TestOpt = None,
    size: SizeOpt = DEFAULT_TEST_SIZE,
    offset: Annotated[int, typer.Option(help="Skip this many items at the start of the test file.")] = 0,
    train: Annotated[
        list[Path] | None,
        typer.Option(
            help="Training file or folder (a folder: every train.* in and below it, so extra/train.jsonl too); "
            "repeat for several (default: the data folder's train.jsonl alone)."
        ),
    ] = None,
    validation: Annotated[
        Path | None, typer.Option(help="Validation split handed to fit (e.g. for distribution-matching weights).")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="A saved, fitted pricer file to evaluate instead (as it was saved: no pricer name, -o, --train, "
            "--validation, --interval or --save). It is a pickle, which runs code when loaded: load only files "
            "you made or trust."
        ),
    ] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Pricer option key=value.")] = None,
    name: Annotated[str | None, typer.Option(help="Leaderboard name (default: the pricer's label).")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-item predictions JSONL here.")] = None,
    charts: Annotated[Path | None, typer.Option(help="Write PNG/HTML charts to this folder.")] = None,
    save: Annotated[Path | None, typer.Option(help="Save the fitted pricer here (reload with --model).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Predict every item again.")] = False,
    no_record: Annotated[bool, typer.Option("--no-record", help="Do not add the result to the leaderboard.")] = False,
    cost: Annotated[float, typer.Option(help="Cost of this evaluation in dollars, recorded with it.", min=0)] = 0.0,
    interval: IntervalOpt = 0.0,
    interval_method: IntervalMethodOpt = "split",
    interval_scale: IntervalScaleOpt = "none",
    db: DbOpt = None,
) -> None:
    """Evaluate a pricer on a fixed test set: per-item lines, summary, charts, leaderboard row."""
    from appraiser.pricers.base import Pricer

    quiet_libraries()  # an LLM pricer loads transformers/peft; their warnings would interleave with our table

    if model is not None:
        dropped = _ignored_with_model(
            pricer, option, train, validation, save, interval, interval_method, interval_scale
        )
        if dropped:
            raise DataError(
                f"--model evaluates the saved pricer as it was saved: {', '.join(dropped)} "
                + ("does" if len(dropped) == 1 else "do")
                + " not apply (drop them, or fit afresh without --model)"
            )
    check_output_file(predictions, "--predictions")
    check_output_file(save, "--save")
    check_output_folder(charts, "--charts")
    if test is None:
        test = config.default_data_dir() / "validation.jsonl"
    items = load_test_items(test, _size(size), offset)
    needs_fit = False
    if model is not None:
        p = Pricer.load(model)  # a missing, damaged or foreign file is already one line naming it
    else:
        if pricer is None:
            raise DataError("name a pricer (e.g. `appraiser eval constant`) or pass --model FILE")
        from appraiser.pricers import registry

        p = registry.create(pricer, **parse_options(option))
        needs_fit = registry.get(pricer).needs_fit
        if interval:
            p, needs_fit = with_interval(p, interval, needs_fit, interval_method, interval_scale), True
        elif interval_scale != "none":
            raise DataError("--interval-scale scales an interval: add --interval LEVEL (e.g. 0.8)")
    with _store(db) as store:
        fit_and_evaluate(
            p,
            items,
            fit=needs_fit,
            train=train or config.default_data_dir() / "train.jsonl",
            validation=validation,
            save=save,
            say=console.print,
            name=name,
            show=True,
            cache=not no_cache,
            record=not no_record,
            predictions_path=predictions,
            charts_dir=charts,
            store=store,
            cost=cost,
        )
    if predictions is not None:
        console.print(f"predictions: {escape(str(predictions))}")


# ---------------------------------------------------------------- leaderboard


#: `--size` of the commands that read the leaderboard: it cuts `--test`, so it means nothing without it.
BoardSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--size",
        help=f"Number of items of --test, from the start of the file (0 = all; default {DEFAULT_TEST_SIZE}).",
        min=0,
    ),
]


def _board_test_fingerprint(test: Path | None, size: int | None) -> str | None:
    """The fingerprint of `--test` cut to `--size`; None without `--test`. A `--size` alone was silently
    ignored (the rows of the most recent test set were used, whatever their size): it is refused."""
    if test is None:
        if size is not None:
            raise DataError(
                "--size picks the first N items of --test: give --test too (the file the runs were scored on)"
            )
        return None
    return fingerprint(load_test_items(test, _size(DEFAULT_TEST_SIZE if size is None else size)))


def _pick_fingerprint(store: LeaderboardStore, test: Path | None, size: int | None, fp: str | None) -> str | None:
    if (chosen := _board_test_fingerprint(test, size)) is not None:
        return chosen
    if fp is not None:
        return fp
    fps = store.fingerprints()
    return fps[0][0] if fps else None


def _whole(v: float | None) -> str:
    return "—" if v is None or math.isnan(v) else f"${v:,.0f}"


def _ratio(v: float | None) -> str:
    """R² or RMSLE to three places; "—" where a pricer that failed on every item has none ("nan" read as one)."""
    return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _ci(low: float | None, high: float | None) -> str:
    return "—" if _whole(low) == _whole(high) == "—" else f"{_whole(low)}–{_whole(high)}"


def _secs(v: float) -> str:
    return f"{v:,.1f}s" if v < 100 else f"{v:,.0f}s"


def tied_ranks(rows: list[Row]) -> list[str]:
    """Competition ranks of rows sorted by `_mae_key`, with "=" on a tie ("1", "2=", "2=", "4"): runs whose MAEs
    read the same (to the cent, as shown) share a rank, rather than the more recent one looking better; a row
    ranked after the others for pricing too few items ties only with another such row."""
    keys = [k._replace(mae=round(k.mae, 2)) if math.isfinite(k.mae) else k for k in map(_mae_key, rows)]
    out = []
    for k in keys:
        first = keys.index(k) + 1  # rows are sorted, so equal keys are adjacent
        out.append(f"{first}=" if keys.count(k) > 1 else str(first))
    return out


def leaderboard_table(rows: list[Row], fp: str, wide: bool = False) -> Table:
    """Rows ranked as given; `wide` adds median error, R² and cost (they do not fit 80 columns).

    A row that `mae_rank` puts after the others for pricing too few items gets a "*" on its failures and a
    caption says why, so a low MAE ranked below a higher one does not read as a mistake."""
    few = [_mae_key(r).group == 1 for r in rows]
    t = Table(
        title=f"Leaderboard — test set {fp} ({rows[0].test_size if rows else 0} items), by MAE",
        caption=f"* ranked after the others: priced under {MIN_PRICED_SHARE:.0%} of the items" if any(few) else None,
        box=box.SIMPLE_HEAD,
    )
    cols = ["#", "pricer", "MAE", "95% CI"] + (["median", "R²"] if wide else []) + ["RMSLE", "hit", "fail"]
    if any("interval_coverage" in r.metrics for r in rows):  # rows without intervals show "—"
        cols += ["cover", "width"]
    cols += ["fit", "predict"] if wide else ["time"]
    cols += (["cost"] if wide or any(r.cost for r in rows) else []) + (["run"] if wide else [])
    longest = max((len(r.label) for r in rows), default=6)
    for col in cols:
        if col == "pricer":  # the one column that must stay readable: others give way first
            t.add_column(col, min_width=min(longest, 18), overflow="fold")
        else:
            t.add_column(col, justify="right", no_wrap=col != "95% CI", overflow="fold")
    ranks = tied_ranks(rows)
    for rank, r, short in zip(ranks, rows, few, strict=True):
        m = r.metrics
        cells = {
            "#": rank,
            "pricer": escape(r.label),
            "MAE": _fmt_money(m.get("mae")),
            "95% CI": _ci(m.get("mae_ci_low"), m.get("mae_ci_high")),
            "median": _fmt_money(m.get("median_ae")),
            "R²": _ratio(m.get("r2")),
            "RMSLE": _ratio(m.get("rmsle")),
            "hit": f"{m.get('hit_rate', 0):.1%}",
            "fail": str(int(m.get("failures", 0))) + ("*" if short else ""),
            "cover": f"{m['interval_coverage']:.0%}" if "interval_coverage" in m else "—",
            "width": _whole(m.get("interval_width")),
            "time": _secs(r.seconds + r.fit_seconds),
            "fit": _secs(r.fit_seconds),
            "predict": _secs(r.seconds),
            "cost": (f"${r.cost:,.2f}" if r.cost >= 1 else f"${r.cost:.4f}") if r.cost else "—",
            "run": str(r.run_id),
        }
        t.add_row(*(cells[c] for c in cols))
    return t


def _mae_key(r: Row) -> MaeRank:
    return mae_rank(r.metrics)


@friendly
def leaderboard_command(
    test: Annotated[Path | None, typer.Option("--test", help="Show the rows for this test set.")] = None,
    size: BoardSizeOpt = None,
    fp: Annotated[
        str | None, typer.Option("--fingerprint", help="Show the rows for this test-set fingerprint.")
    ] = None,
    all_runs: Annotated[bool, typer.Option("--all-runs", help="Every run, not only each pricer's latest.")] = False,
    charts: Annotated[Path | None, typer.Option(help="Folder for the bar chart (default: .appraiser/charts).")] = None,
    db: DbOpt = None,
) -> None:
    """Rank pricers on one test set (the most recent by default) and write a bar chart."""
    with _existing_store(db) as store:
        chosen = _pick_fingerprint(store, test, size, fp)
        rows = sorted(store.rows(chosen, latest_only=not all_runs), key=_mae_key) if chosen else []
        others = [f for f in store.fingerprints() if f[0] != chosen]
    if not rows:
        console.print("no evaluations on this test set yet" if chosen else "the leaderboard is empty")
    else:
        console.print(leaderboard_table(rows, chosen, wide=console.width >= 120))
        from appraiser.evaluation.charts import leaderboard_chart

        paths = leaderboard_chart(rows, charts or config.home() / "charts", name=f"leaderboard-{chosen}")
        console.print("chart: " + escape(", ".join(str(p) for p in paths)))
    if others:
        console.print(
            "other test sets (use --fingerprint or --test): "
            + "; ".join(f"{f} ({size_} items, {n} runs, last {when})" for f, size_, n, when in others)
        )


# ---------------------------------------------------------------- compare


def _find_run(store: LeaderboardStore, key: str, fp: str | None) -> Row:
    if key.isascii() and key.isdigit() and (row := store.get(int(key))) is not None:  # not "²": isdigit, no int
        return row
    row = store.latest(key, fp)
    if row is None and fp is not None:
        row = store.latest(key)  # e.g. a human scored on a subset of the test set: pair on shared items
    if row is None:
        raise DataError(f"no evaluation named {key!r} on the leaderboard" + (f" for test set {fp}" if fp else ""))
    return row


@friendly
def compare_command(
    a: Annotated[str, typer.Argument(help="Pricer label (its latest run) or run id.")],
    b: Annotated[str, typer.Argument(help="Pricer label (its latest run) or run id.")],
    test: Annotated[Path | None, typer.Option("--test", help="Compare the runs on this test set.")] = None,
    size: BoardSizeOpt = None,
    db: DbOpt = None,
) -> None:
    """Paired comparison of two pricers on the items both priced: mean error difference, CI, sign test."""
    from appraiser.evaluation.compare import paired_compare

    with _existing_store(db) as store:
        fp = _board_test_fingerprint(test, size)
        ra = _find_run(store, a, fp)
        rb = _find_run(store, b, fp or ra.test_fingerprint)
        c = paired_compare(store.predictions(ra.run_id), store.predictions(rb.run_id), ra.label, rb.label)
    runs = f"run {ra.run_id} ({ra.label}) and run {rb.run_id} ({rb.label})"
    if c.shared == 0:
        raise DataError(f"{runs} share no test items (same id and price): nothing to compare")
    if c.n == 0:  # every shared item failed on one side or the other: no difference, no p-value
        raise DataError(
            f"nothing to compare: of the {c.shared} items {runs} share, {ra.label} failed on {c.failed_a} and "
            f"{rb.label} on {c.failed_b}, so none was priced by both"
        )
    if ra.test_fingerprint != rb.test_fingerprint:  # the MAEs below are not the ones on the leaderboard
        err_console.print(
            f"[yellow]note:[/] {escape(runs)} are on different test sets ({ra.test_size} and {rb.test_size} "
            f"items): compared on the {c.shared} items both hold, so the MAEs shown are on those, not the "
            "recorded ones",
            soft_wrap=True,
            highlight=False,
        )
    la, lb = escape(ra.label), escape(rb.label)
    t = Table(title=f"{la} (run {ra.run_id}) vs {lb} (run {rb.run_id}) on {c.n} shared items")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row(f"MAE {la}", _fmt_money(c.mae_a))
    t.add_row(f"MAE {lb}", _fmt_money(c.mae_b))
    t.add_row("mean difference (A − B)", _fmt_money(c.mean_diff))
    t.add_row("95% CI of the difference", f"{_fmt_money(c.ci_low)} … {_fmt_money(c.ci_high)}")
    t.add_row(f"{la} closer", str(c.a_better))
    t.add_row(f"{lb} closer", str(c.b_better))
    t.add_row("ties", str(c.ties))
    t.add_row("sign test p-value", f"{c.p_value:.4g}")
    if c.skipped:
        t.add_row("skipped (a failure on either side)", str(c.skipped))
    console.print(t)
    console.print(escape(c.verdict))


# ---------------------------------------------------------------- imports and the human baseline


def _report_import(rep, total: int) -> None:
    console.print(
        f"matched {rep.matched_by_id} rows by id and {rep.matched_by_text} by text; "
        f"{rep.missing} of {total} test items have no guess, {rep.blank} blank, {rep.unreadable} unreadable "
        "(all scored as failures)"
    )
    if rep.unmatched:
        lines = ", ".join(map(str, rep.unmatched[:10])) + (" …" if len(rep.unmatched) > 10 else "")
        err_console.print(f"[yellow]warning:[/] {len(rep.unmatched)} rows match no test item (lines {lines})")
    if rep.duplicates:
        err_console.print(f"[yellow]warning:[/] {len(rep.duplicates)} duplicate rows ignored (the first one counts)")


def _refuse_priceless(file: Path, preds, rep) -> None:
    """A file whose matched rows hold no readable price would record a row of failures, and as the newest
    row under its name it would hide an earlier real score on the leaderboard (an unfilled export, say)."""
    if not any(p.price is not None for p in preds):
        raise DataError(
            f"{file}: none of its {rep.matched_by_id + rep.matched_by_text} matched rows holds a readable price "
            f"({rep.blank} blank, {rep.unreadable} unreadable); nothing was recorded"
        )


def _finish_import(result: EvalResult, db: Path | None, predictions: Path | None) -> None:
    with _store(db) as store:
        record_result(result, store)
    if predictions is not None:
        write_predictions(result, predictions)
    console.print(summary_table(result))
    console.print(f"recorded as run {result.run_id} on the leaderboard")


@friendly
def import_predictions_command(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL with an id (or text) column and a price column.")],
    name: Annotated[str, typer.Option(help="Leaderboard name for these predictions.")],
    test: TestOpt = None,
    size: SizeOpt = DEFAULT_TEST_SIZE,
    cost: Annotated[float, typer.Option(help="What the predictions cost, in dollars.", min=0)] = 0.0,
    seconds: Annotated[float, typer.Option(help="How long the predictions took, if known.", min=0)] = 0.0,
    predictions: Annotated[Path | None, typer.Option(help="Also write them in Appraiser's JSONL format.")] = None,
    db: DbOpt = None,
) -> None:
    """Score another tool's predictions on the test set and add them to the leaderboard.

    Rows are matched to test items by id, else by exact text; test items without a row are failures.
    """
    from appraiser.evaluation.human import match_guesses, read_guesses

    if test is None:
        test = config.default_data_dir() / "validation.jsonl"
    items = load_test_items(test, _size(size))
    guesses = read_guesses(file)
    preds, rep = match_guesses(items, guesses)
    if rep.matched_by_id + rep.matched_by_text == 0:
        raise DataError(f"{file}: none of its {len(guesses)} rows match an item of the test set {test}")
    _report_import(rep, len(items))
    _refuse_priceless(file, preds, rep)
    result = score(
        items,
        preds,
        name=name,
        config={"imported_from": str(file)},
        seconds=seconds,
        cost=cost,
        pricer_name="imported",
    )
    _finish_import(result, db, predictions)


human_app = typer.Typer(no_args_is_help=True, help="The human baseline: export items to price by hand, import them.")


@human_app.command("export")
@friendly
def human_export(
    test: TestOpt = None,
    n: Annotated[int, typer.Option("--n", help="How many items (from the start of the test set).")] = 100,
    out: Annotated[Path, typer.Option(help="CSV to write (id, title, text, empty price column).")] = Path("human.csv"),
    offset: Annotated[int, typer.Option(help="Skip this many items first.", min=0)] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CSV (its guesses are lost).")] = False,
) -> None:
    """Write test items to a CSV for a person to price (fill in the `price` column)."""
    from appraiser.evaluation.human import export_human

    if out.exists() and not force:  # it may hold an hour of someone's guesses
        raise DataError(f"{out} exists (perhaps with guesses in it): import it, choose another --out, or --force")
    if n < 1:
        raise DataError(f"--n must be at least 1, not {n}")
    if test is None:
        test = config.default_data_dir() / "validation.jsonl"
    items = load_test_items(test, n, offset)
    export_human(items, out)
    where = escape(str(out))
    console.print(
        f"wrote {len(items)} items to {where}; fill in the price column, then `appraiser human import {where}`"
    )


@human_app.command("import")
@friendly
def human_import(
    file: Annotated[Path, typer.Argument(help="The filled-in CSV.")],
    test: TestOpt = None,
    name: Annotated[str, typer.Option(help="Leaderboard name.")] = "human",
    minutes: Annotated[float, typer.Option(help="Time the person spent, recorded with the row.", min=0)] = 0.0,
    db: DbOpt = None,
) -> None:
    """Score a filled-in human CSV like any pricer (blank cells are failures) and record it."""
    from appraiser.evaluation.human import guessed_items, match_guesses, read_guesses

    if test is None:
        test = config.default_data_dir() / "validation.jsonl"
    all_items = load_test_items(test, None)
    guesses = read_guesses(file)
    items = guessed_items(all_items, guesses)
    if not items:
        raise DataError(f"{file}: none of its {len(guesses)} rows match an item of the test set {test}")
    preds, rep = match_guesses(items, guesses)
    _report_import(rep, len(items))
    _refuse_priceless(file, preds, rep)
    result = score(items, preds, name=name, config={"human": str(file)}, seconds=minutes * 60, pricer_name="human")
    _finish_import(result, db, None)


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to the `appraiser` app."""
    app.command("eval")(eval_command)
    app.command("leaderboard")(leaderboard_command)
    app.command("compare")(compare_command)
    app.command("import-predictions")(import_predictions_command)
    app.add_typer(human_app, name="human")
