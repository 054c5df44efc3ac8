"""Run any pricer over a fixed test set, show each guess as it lands, score it, and record it.

The evaluator is the measuring instrument for every claim Appraiser makes, so it is strict about
what it measures: the test set is identified by a fingerprint, a failed guess is a failure (never a
silent 0), and each result is stored with its per-item predictions so it can be re-scored,
charted and compared later. Predictions are cached per batch as they complete, so a long or
costly evaluation that is interrupted resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from appraiser.data.io import DataError, describe_sources, find_split_file, read_items, read_pool
from appraiser.evaluation.metrics import FAILED, colour, compute_metrics, money, squared_log_error
from appraiser.evaluation.store import LeaderboardStore, PredictionCache
from appraiser.items import MAX_SANE_PRICE, Item, fingerprint, item_list
from appraiser.pricers.base import Prediction, Pricer

DEFAULT_TEST_SIZE = 250
_STYLE = {"green": "green", "orange": "dark_orange", "red": "red", FAILED: "bold red"}


@dataclass
class ItemResult:
    """One test item's outcome: the truth, the guess (None = failure), interval and raw model text."""

    id: str
    title: str | None
    category: str | None
    truth: float
    guess: float | None
    low: float | None = None
    high: float | None = None
    raw: str | None = None

    @property
    def failed(self) -> bool:
        return self.guess is None

    @property
    def error(self) -> float | None:
        """Absolute error in dollars (None for a failure)."""
        return None if self.guess is None else abs(self.guess - self.truth)

    @property
    def sle(self) -> float | None:
        """Squared log error, log1p-based (None for a failure)."""
        return None if self.guess is None else squared_log_error(self.guess, self.truth)

    @property
    def color(self) -> str:
        """green / orange / red by the error bands, or "failed"."""
        return colour(self.guess, self.truth)


@dataclass
class EvalResult:
    """A whole evaluation: who was measured, on which test set, each item, the metrics, time and cost.

    `seconds` is the prediction time: measured now for new predictions, as recorded for cached ones,
    so a resumed evaluation reports what the whole run cost. `cached` counts predictions reused.
    """

    pricer: str
    config: dict[str, Any]
    test_fingerprint: str
    results: list[ItemResult]
    metrics: dict[str, float]
    seconds: float
    cost: float = 0.0
    run_id: int | None = None
    pricer_name: str | None = None
    cached: int = 0
    charts: list[Path] = field(default_factory=list)
    fit_seconds: float = 0.0

    def __repr__(self) -> str:
        """One line: a notebook cell ending in `evaluate(...)` showed the whole dataclass, every item in it."""
        m = self.metrics
        failed = f", {int(m['failures'])} failed" if m.get("failures") else ""
        run = f", run {self.run_id}" if self.run_id is not None else ""
        ci = f"{money(m.get('mae_ci_low'))}–{money(m.get('mae_ci_high'))}"
        return (
            f"<EvalResult {self.pricer}: MAE {money(m.get('mae'))} (95% CI {ci}) on {len(self.results)} items"
            f"{failed}, test set {self.test_fingerprint}{run}>"
        )

    @property
    def truths(self) -> list[float]:
        return [r.truth for r in self.results]

    @property
    def guesses(self) -> list[float | None]:
        return [r.guess for r in self.results]

    def to_frame(self):
        """A pandas DataFrame, one row per item (with error, sle and colour columns)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "id": r.id,
                    "title": r.title,
                    "category": r.category,
                    "truth": r.truth,
                    "guess": r.guess,
                    "low": r.low,
                    "high": r.high,
                    "error": r.error,
                    "sle": r.sle,
                    "color": r.color,
                    "raw": r.raw,
                }
                for r in self.results
            ]
        )

    def summary_table(self) -> Table:
        return summary_table(self)


# ---------------------------------------------------------------- helpers


def config_hash(cfg: dict[str, Any]) -> str:
    """A short, stable hash of a pricer's config (key order does not matter)."""
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def item_hash(item: Item) -> str:
    """A hash of everything a pricer may look at, so an edited item is never served a stale guess."""
    parts = (item.title or "", item.category or "", item.text, item.summary or "", repr(item.weight))
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def _clean(pred: Any) -> Prediction:
    """Accept a Prediction or a bare number/None; a NaN or infinite price is a failure, and so is one beyond any
    product's (`MAX_SANE_PRICE`): one guess of 1e308 would make the MAE astronomical and the charts unreadable."""
    if not isinstance(pred, Prediction):
        pred = Prediction(price=None if pred is None else float(pred))
    if pred.price is not None and not (math.isfinite(pred.price) and pred.price <= MAX_SANE_PRICE):
        raw = pred.raw or f"not a price: {pred.price!r}"
        pred = pred.model_copy(update={"price": None, "low": None, "high": None, "raw": raw})
    return pred


def _predict(pricer: Pricer, batch: list[Item]) -> tuple[list[Prediction], float]:
    start = time.perf_counter()
    preds = pricer.predict(batch)
    elapsed = time.perf_counter() - start
    if len(preds) != len(batch):
        raise RuntimeError(f"{pricer.label}: predict returned {len(preds)} predictions for {len(batch)} items")
    return [_clean(p) for p in preds], elapsed


def _money(v: float | None) -> str:
    return "      —" if v is None else f"${v:,.2f}"


def item_line(i: int, r: ItemResult, width: int = 60) -> str:
    """One coloured console line: guess, truth, error, colour and the start of the title."""
    title = (r.title or r.id).replace("\n", " ")
    if len(title) > width:
        title = title[: width - 1] + "…"
    style = _STYLE[r.color]
    if r.failed:
        raw = (r.raw or "").replace("\n", " ")[:40]
        body = f"FAILED  truth {_money(r.truth):>10}  raw: {raw!r}"
    else:
        body = f"guess {_money(r.guess):>10}  truth {_money(r.truth):>10}  error {_money(r.error):>10}"
    return f"[{style}]{i + 1:>5} {escape(body)}[/]  {escape(title)}"  # raw model text may hold "[/]"


def summary_table(result: EvalResult) -> Table:
    m = result.metrics
    t = Table(title=f"{escape(result.pricer)} on test set {result.test_fingerprint} ({int(m['n'])} items)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    if not math.isfinite(m["mae"]):  # every item failed: no number to show, and "$nan" is none
        t.add_row("MAE", "— (no item was priced)")
    else:
        t.add_row("MAE", f"${m['mae']:,.2f}  (95% CI ${m['mae_ci_low']:,.2f} – ${m['mae_ci_high']:,.2f})")
        t.add_row("median abs error", f"${m['median_ae']:,.2f}")
        t.add_row("RMSLE", f"{m['rmsle']:.3f}")
        t.add_row("MSE", f"{m['mse']:,.0f}")
        t.add_row("R²", f"{m['r2']:.3f}")
    t.add_row("hit rate (green)", f"{m['hit_rate']:.1%}")
    if "interval_coverage" in m:
        t.add_row(
            "interval coverage",
            f"{m['interval_coverage']:.1%} of {int(m['interval_n'])}  (mean width ${m['interval_width']:,.2f})",
        )
        if "interval_coverage_high" in m:
            t.add_row(
                "  by third of the guesses",
                " · ".join(f"{m[f'interval_coverage_{k}']:.0%}" for k in ("low", "mid", "high"))
                + "  (cheapest · middle · dearest)",
            )
    if "calib_n" in m:
        t.add_row(
            "own distribution: central L% covers",
            "  ".join(f"{lv}→{m[f'calib_cover_{lv}']:.0%}" for lv in (10, 30, 50, 80, 90))
            + f"  (mean gap {m['calib_error']:.1%} over 10…90%)",
        )
    t.add_row("failures", f"{int(m['failures'])}  (coverage {m['coverage']:.1%})")
    t.add_row("predict time", f"{result.seconds:,.1f} s" + (f"  ({result.cached} cached)" if result.cached else ""))
    if result.fit_seconds:
        t.add_row("fit time", f"{result.fit_seconds:,.1f} s")
    if "tokens" in m:
        t.add_row("API use", f"{int(m['requests']):,} requests, {int(m['tokens']):,} tokens (this run)")
    if result.cost:
        t.add_row("cost", f"${result.cost:,.4f}")
    return t


def cache_path_for(store: LeaderboardStore | None) -> Path | None:
    """The cache sits beside the leaderboard it feeds (None: the default under config.home())."""
    return None if store is None else store.path.with_name("cache.db")


# ---------------------------------------------------------------- the evaluator


def evaluate(
    pricer: Pricer,
    items: Sequence[Item],
    *,
    name: str | None = None,
    show: bool = True,
    cache: bool = True,
    record: bool = True,
    predictions_path: str | Path | None = None,
    charts_dir: str | Path | None = None,
    store: LeaderboardStore | None = None,
    cost: float = 0.0,
    fit_seconds: float | None = None,
    lines: bool = True,
) -> EvalResult:
    """Evaluate `pricer` on `items` (in order): predict, show, score, and optionally record.

    Pricers with `concurrency > 1` are called from a thread pool, one `batch_size` batch per task
    (API pricers use batch_size 1); others are called batch by batch. With `cache`, finished
    batches are saved at once and reused on the next run with the same label, config, fitted
    state and items. The fitted state is the pricer's `fit_info` dict when it has one, less its fit time (a
    model refitted on other data is a new model and starts empty, as its `fit_info` names its data; the same
    fit again, or a saved-and-reloaded model, keeps its cache).
    With `record`, the result is added to the leaderboard (`store`, default: the project's). `lines=False` shows
    the progress bar alone (no line per item, no summary).
    `fit_seconds` (default: `fit_info["seconds"]` when present) is recorded beside the predict time.
    """
    items = item_list(items, "test items")
    if not items:
        raise DataError("no test items to evaluate on")
    if cache and type(pricer).config is Pricer.config:
        # a pricer that does not say what it is (no `config()` of its own: a notebook's subclass) cannot be told
        # from another of its label, or from itself with other arguments or edited code: never served from cache
        cache = False
    label = name or pricer.label
    cfg = pricer.config()
    fit_info = getattr(pricer, "fit_info", None)
    fit_info = fit_info if isinstance(fit_info, dict) else {}
    # the fitted state keys the cache, but not how long the fit took: an identical refit (same settings, same
    # data, `data` in fit_info) is the same model
    fitted = {k: v for k, v in fit_info.items() if k != "seconds"}
    chash = config_hash({"config": cfg, "fit": fitted} if fitted else cfg)
    if fit_seconds is None:
        fit_seconds = float(fit_info.get("seconds") or 0.0)
    n = len(items)
    console = Console(quiet=not show, highlight=False)

    preds: list[Prediction | None] = [None] * n
    secs = [0.0] * n
    keys = [(it.id, item_hash(it)) for it in items] if cache else []
    pcache = PredictionCache(cache_path_for(store)) if cache else None
    cached = 0
    if pcache is not None:
        known = pcache.lookup(label, chash)
        for i, k in enumerate(keys):
            hit = known.get(k)
            if hit is not None:
                preds[i] = Prediction(price=hit[0], low=hit[1], high=hit[2], raw=hit[3])
                secs[i] = hit[4]
                cached += 1

    def show_items(idx: list[int], batch_preds: list[Prediction]) -> None:
        if not (show and lines):
            return
        for i, p in zip(idx, batch_preds, strict=True):
            it = items[i]
            r = ItemResult(it.id, it.title, it.category, it.price, p.price, p.low, p.high, p.raw)
            progress.console.print(item_line(i, r), no_wrap=True, overflow="ellipsis")

    pending = [i for i in range(n) if preds[i] is None]
    size = max(1, int(pricer.batch_size or 1))
    batches = [pending[s : s + size] for s in range(0, len(pending), size)]
    workers = max(1, int(pricer.concurrency or 1))

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )
    start = time.perf_counter()
    with progress:
        task = progress.add_task(escape(label), total=n)
        done_cached = [i for i in range(n) if preds[i] is not None]
        if done_cached:
            show_items(done_cached, [preds[i] for i in done_cached])
            progress.advance(task, len(done_cached))

        def complete(idx: list[int], batch_preds: list[Prediction], elapsed: float) -> None:
            share = elapsed / len(idx) / min(workers, len(batches))
            for i, p in zip(idx, batch_preds, strict=True):
                preds[i], secs[i] = p, share
            if pcache is not None:  # a failed API call ("error: …") is not an answer: the next run asks again
                pcache.put(
                    label,
                    chash,
                    [
                        (*keys[i], p.price, p.low, p.high, p.raw, share)
                        for i, p in zip(idx, batch_preds, strict=True)
                        if not (p.failed and (p.raw or "").startswith("error:"))
                    ],
                )
            show_items(idx, batch_preds)
            progress.advance(task, len(idx))

        try:
            if workers == 1 or len(batches) <= 1:
                for idx in batches:
                    complete(idx, *_predict(pricer, [items[i] for i in idx]))
            else:
                _run_pool(pricer, items, batches, workers, complete)
        except BaseException as e:
            saved = sum(p is not None for p in preds)
            if show and pcache is not None and saved > cached:  # this run added predictions: say they are kept
                why = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped by an error"
                console.print(f"[yellow]{why}: {saved}/{n} predictions are cached; rerun to resume[/]")
            raise
        finally:
            if pcache is not None:
                pcache.close()
    run_seconds = time.perf_counter() - start
    usage = pricer.usage() if callable(getattr(pricer, "usage", None)) else None  # API pricers: what this run spent
    if usage and not cost and usage.get("dollars"):
        cost = float(usage["dollars"])

    seconds = sum(secs[i] for i in done_cached) + run_seconds if cached else run_seconds
    result = score(
        items,
        [preds[i] for i in range(n)],
        name=label,
        config=cfg,
        seconds=seconds,
        cost=cost,
        pricer_name=pricer.name,
    )
    result.cached = cached
    result.fit_seconds = fit_seconds
    if usage:
        result.metrics["requests"] = float(usage.get("requests", 0))
        result.metrics["tokens"] = float(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
    if record:
        record_result(result, store)
    if predictions_path is not None:
        write_predictions(result, predictions_path)
    if charts_dir is not None:
        from appraiser.evaluation.charts import save_charts

        result.charts = save_charts(result, charts_dir)
    if show and lines:
        console.print(summary_table(result))
        if result.run_id is not None:
            console.print(f"recorded as run {result.run_id} on the leaderboard")
        for p in result.charts:
            console.print(f"chart: {p}")
    return result


def fit_pricer(pricer: Pricer, train: Sequence[Item], validation: Sequence[Item] | None = None) -> float:
    """Fit `pricer` on `train` (and `validation`, for distribution matching); returns the seconds it took.

    A ValueError or TypeError from `fit` means the options and the data do not go together (say,
    `weighting=match` without a validation split, or an option of the wrong kind): a DataError naming
    the pricer, for the user to fix.
    """
    if not train:
        raise DataError(f"{pricer.label}: no training items")
    start = time.perf_counter()
    try:
        pricer.fit(list(train), list(validation) if validation is not None else None)
    except (ValueError, TypeError) as e:
        message = str(e)
        hint = "; pass --validation FILE" if validation is None and "validation" in message else ""
        raise DataError(f"{pricer.label}: {message}{hint}") from None
    return time.perf_counter() - start


def refuse_overlap(train: Sequence[Item], test: Sequence[Item], where: str, say: Any = None) -> None:
    """A DataError when test items are in the training pool (same id, or the same whole normalised text,
    `retrieval.index.copy_keys`): a pricer would be scored on items it learned from (knn with k=1 scores $0.00).
    A folder never yields its validation or test split as training data; two explicit files can, by mistake,
    hold the same items. Items that only share a (normalised, cut) title with a pool item are likely copies
    too, but two products can share one: those are counted in a warning through `say`, not refused."""
    from appraiser.retrieval.index import copy_keys

    ids, texts, titles = {it.id for it in train}, set(), set()
    for it in train:
        for key in copy_keys(it):
            (texts if key.startswith("text:") else titles).add(key)
    leaked = [it for it in test if it.id in ids or copy_keys(it) & texts]
    if leaked:
        raise DataError(
            f"{len(leaked)} of the {len(test)} test items are in the training pool {where} too (same id or whole "
            f"text; the first: {leaked[0].id}): a pricer would be scored on items it learned from. "
            "Remove them from the training files."
        )
    alike = sum(1 for it in test if copy_keys(it) & titles)
    if alike and say is not None:
        say(
            f"[yellow]warning: {alike} of the {len(test)} test items share a title with a training item "
            f"(different texts): check {escape(where)} for copies of the test set[/]"
        )


def calibrate_pricer(pricer: Any, train: Sequence[Item], say: Any, options: dict[str, Any]) -> float:
    """Calibrate an interval wrapper whose base is not fitted here (`Conformal.fixed_base`: an API model, a
    fine-tune): its calibration items are priced by `evaluate`, so they are cached under the base's own label
    like any evaluation (a rerun asks an API nothing twice, an interrupted calibration resumes) and priced with
    the base's concurrency and a progress bar. Returns the seconds it took."""
    start = time.perf_counter()
    try:
        cal = pricer.calibration_items(list(train))
    except ValueError as e:
        raise DataError(f"{pricer.label}: {e}") from None
    say(f"calibrating the interval on {len(cal):,} pool items priced by {escape(pricer.base.label)} …")
    result = evaluate(
        pricer.base,
        cal,
        show=options.get("show", True),
        lines=False,
        cache=options.get("cache", True),
        record=False,
        store=options.get("store"),
    )
    preds = [Prediction(price=r.guess, low=r.low, high=r.high, raw=r.raw) for r in result.results]
    try:
        pricer.calibrate(preds, cal)
    except ValueError as e:
        raise DataError(f"{pricer.label}: {e}") from None
    return time.perf_counter() - start


def fit_and_evaluate(
    pricer: Pricer,
    items: Sequence[Item],
    *,
    fit: bool = True,
    train: str | Path | Sequence[str | Path] | None = None,
    validation: str | Path | None = None,
    save: str | Path | None = None,
    say: Any = None,
    **evaluate_options: Any,
) -> tuple[EvalResult, Path | None]:
    """The one fit → save → evaluate flow of `appraiser eval` and `appraiser baseline`.

    With `fit`, the pricer is fitted on the items of `train` — a file, a folder or several files, read as one
    pool by `read_pool` — (and of `validation` when given);
    then saved to `save` when given, then evaluated on `items` with `evaluate_options` (see `evaluate`).
    `say(text)` hears what happens (fitting, fitted, saved). Returns the result and the saved path.
    Every bad input on the way (a file, an option, a pairing of options and data) is a DataError.
    """
    say = say or (lambda _text: None)
    items = list(items)
    if not items:
        raise DataError("no test items to evaluate on")
    fit_seconds = None
    if fit:
        if train is None:
            raise DataError(f"{pricer.label} needs fitting: name a training split")
        train_items = read_pool(train)
        if not train_items:
            raise DataError(f"{describe_sources(train)}: no training items")
        refuse_overlap(train_items, items, describe_sources(train), say)
        val_items = read_items(validation) if validation is not None else None
        say(f"fitting {escape(pricer.label)} on {len(train_items):,} items from {escape(describe_sources(train))} …")
        if getattr(pricer, "fixed_base", False):
            fit_seconds = calibrate_pricer(pricer, train_items, say, evaluate_options)
        else:
            fit_seconds = fit_pricer(pricer, train_items, val_items)
        say(f"fitted in {fit_seconds:.1f} s")
    saved = None
    if save is not None:
        saved = Path(pricer.save(save))
        say(f"saved pricer to {escape(str(saved))}")
    result = evaluate(pricer, items, fit_seconds=fit_seconds, **evaluate_options)
    return result, saved


def _run_pool(pricer: Pricer, items: list[Item], batches: list[list[int]], workers: int, complete) -> None:
    """Fan batches out to a thread pool; completed batches are handed to `complete` in the main thread.

    On an error (or Ctrl-C) no new batches start; batches that finish while the pool winds down are
    still saved, then the error is raised.
    """
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="appraiser-eval")
    futures: dict[Future, list[int]] = {ex.submit(_predict, pricer, [items[i] for i in idx]): idx for idx in batches}
    handled: set[Future] = set()
    error: BaseException | None = None
    try:
        remaining = set(futures)
        while remaining and error is None:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for f in done:
                handled.add(f)
                if f.exception() is not None:
                    error = error or f.exception()
                else:
                    complete(futures[f], *f.result())
    except BaseException as e:
        error = e
    finally:
        # Ctrl-C: do not wait for calls in flight (an API call can sit in its client's retries for minutes);
        # what already finished is saved below, the rest is asked again by the next run
        ex.shutdown(wait=not isinstance(error, KeyboardInterrupt), cancel_futures=True)
    if error is not None:
        for f, idx in futures.items():
            if f not in handled and f.done() and not f.cancelled() and f.exception() is None:
                complete(idx, *f.result())
        raise error


def score(
    items: Sequence[Item],
    predictions: Sequence[Prediction | float | None],
    *,
    name: str,
    config: dict[str, Any] | None = None,
    seconds: float = 0.0,
    cost: float = 0.0,
    pricer_name: str | None = None,
) -> EvalResult:
    """Score ready-made predictions (one per item, None = failure) without running a pricer.

    This is how imported predictions and human guesses become leaderboard rows on equal terms.
    """
    items = list(items)
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    preds = [_clean(p) for p in predictions]
    results = [
        ItemResult(it.id, it.title, it.category, it.price, p.price, p.low, p.high, p.raw)
        for it, p in zip(items, preds, strict=True)
    ]
    from appraiser.inference.decode import parse_quantiles

    metrics = compute_metrics(
        [r.truth for r in results],
        [r.guess for r in results],
        lows=[r.low for r in results],
        highs=[r.high for r in results],
        quantiles=[parse_quantiles(r.raw) for r in results],
    )
    return EvalResult(
        pricer=name,
        config=dict(config or {}),
        test_fingerprint=fingerprint(items),
        results=results,
        metrics=metrics,
        seconds=seconds,
        cost=cost,
        pricer_name=pricer_name or name,
    )


def record_result(result: EvalResult, store: LeaderboardStore | None = None) -> int:
    """Add a result to the leaderboard (`store`, or the project's default one); sets and returns its run id."""
    own = store is None
    st = store or LeaderboardStore()
    try:
        result.run_id = st.add(result)
    finally:
        if own:
            st.close()
    return result.run_id


# ---------------------------------------------------------------- files


def write_predictions(result: EvalResult, path: str | Path) -> Path:
    """One JSON line per test item: {"id", "price" (null on failure), "truth", "low", "high", "raw"}."""
    from appraiser.atomic import replacing

    path = Path(path)
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in result.results:
            rec = {"id": r.id, "price": r.guess, "truth": r.truth, "low": r.low, "high": r.high, "raw": r.raw}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def load_test_items(path_or_folder: str | Path, size: int | None = DEFAULT_TEST_SIZE, offset: int = 0) -> list[Item]:
    """The fixed test set: items `offset .. offset+size` of a split file, in file order.

    A folder means its test split, or its validation split when it has no test split. `size=None`
    takes every item. Asking for more items than the file holds is an error, not a smaller test set.
    """
    if offset < 0:
        raise DataError(f"the offset must be 0 or more, not {offset}")
    if size is not None and size < 0:
        raise DataError(f"the test size must be 0 or more, not {size}")
    path = Path(path_or_folder)
    if path.is_dir():
        found = find_split_file(path, "test") or find_split_file(path, "validation")
        if found is None:
            raise DataError(f"{path}: no test or validation split file in this folder")
        path = found
    limit = None if size is None else offset + size
    items = read_items(path, limit=limit)
    if size is not None and len(items) < offset + size:
        raise DataError(f"{path}: asked for items {offset}..{offset + size} but the file holds {len(items)}")
    return items[offset:]
