"""What data, retrieval and stacking buy: one table on the first 400 validation items.

    nice -n 10 python benchmarks/accuracy.py [--data ../shared/data] [--home .appraiser] [--llm RUN ...]

For each training pool — `train.jsonl` alone, then with `extra/` (read through `read_pool`, as `--train DIR`
does) — one stacked ensemble of the cheap pricers (xgboost, tfidf-ridge, knn over the retrieval index) is
fitted: K-fold out-of-fold predictions → non-negative weights in log space → members refitted on the whole
pool. Each member is then scored alone (it is exactly the pricer fitted alone on that pool) and so is the
ensemble; every one carries a conformal 80% interval on log price from its own out-of-fold errors. With
`--llm RUN` (a fine-tuned run or a packaged model) the local LLM is scored plain and with `rag=K` at reading
time only, over `--index` (default: an index of the larger pool, `appraiser index build`'s, built here if
missing); with `--rag-llm RUN` a retrieval-augmented fine-tune (`appraiser train --rag K`) is scored the way it
was trained: its own K, its own index (checked against the pool it was trained with). `--llm-methods
head,expected` reads each run both by its regression head and by its digits (default: auto, the head when
there is one). `--pools ""` skips the ensembles (the xgboost reference row then comes from the leaderboard).

Printed: MAE with its 95% CI, RMSLE, hit rate, interval coverage and mean width, and the paired difference
of absolute errors against xgboost on train.jsonl (negative = better; its 95% bootstrap CI). Every row is
recorded on the leaderboard under --home, so `appraiser leaderboard` and `appraiser compare` show the same
numbers. Validation is only scored: nothing is fitted on it, the holdout is never read.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table


def money(v: float) -> str:
    return f"−${-v:,.2f}" if v < 0 else f"${v:,.2f}"


def parse_options(pairs: list[str]) -> dict:
    """["weighting=price_flat", "off_category_weight=0"] -> {"weighting": "price_flat", "off_category_weight": 0}."""
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: use KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    ap.add_argument("--home", type=Path, default=Path(".appraiser"), help="APPRAISER_HOME (embedding cache, rows)")
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--members", default="xgboost,tfidf-ridge,knn")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--level", type=float, default=0.8)
    ap.add_argument("--llm", action="append", default=[], help="a run or model to score plain and with rag")
    ap.add_argument("--rag", type=int, default=5)
    ap.add_argument("--rag-llm", action="append", default=[], help="a run fine-tuned with --rag, read its own way")
    ap.add_argument("--llm-methods", default="auto", help="how runs are read: auto, head, expected, ... (comma)")
    ap.add_argument("--index", type=Path, default=None, help="index of --llm's rag rows (default: <home>/index)")
    ap.add_argument("--pools", default="train,train+extra", help="which pools: train, train+extra")
    ap.add_argument(
        "--llm-interval",
        type=float,
        default=None,
        help="interval level of the --llm/--rag-llm rows (default: --level; 0: none): split conformal around the "
        "head's guess, CQR on the digit beam's own interval; calibrated on 300 pool items the run never saw",
    )
    ap.add_argument(
        "--llm-calibration",
        default="benchmark",
        choices=("benchmark", "train"),
        help="where the --llm rows' calibration items come from: 'benchmark' = the pool's rows curated like the "
        "benchmark (sources=benchmark, train.jsonl and extra/), 'train' = all of train.jsonl (drawn like the run's "
        "training items); items the run trained on are never calibration items",
    )
    ap.add_argument("--limit", type=int, default=None, help="first N items of each pool (a quick smoke run)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an ensemble option, e.g. weighting=price_flat, categories=benchmark, off_category_weight=0, "
        "member_weighting=true (members then train with the same weighting)",
    )
    args = ap.parse_args()
    options = parse_options(args.set)
    os.environ["APPRAISER_HOME"] = str(args.home.resolve())

    from appraiser.data.io import read_items, read_pool
    from appraiser.evaluation.compare import paired_compare
    from appraiser.evaluation.evaluator import evaluate, load_test_items
    from appraiser.evaluation.store import LeaderboardStore
    from appraiser.pricers.ensemble import EnsemblePricer

    console = Console(width=max(Console().width, 160))  # the table is wide; a log file should hold it whole
    test = load_test_items(args.data / "validation.jsonl", args.size)
    pools = {"train": [args.data / "train.jsonl"], "train+extra": [args.data]}
    chosen = [p.strip() for p in args.pools.split(",") if p.strip()]
    results: list[tuple[str, str, object]] = []  # (pricer, pool, EvalResult)
    weights: dict[str, dict] = {}
    labels: dict[str, list[str]] = {}
    with LeaderboardStore() as store:
        for pool_name in chosen:
            pool = read_pool(pools[pool_name])[: args.limit]
            start = time.perf_counter()
            ens = EnsemblePricer(args.members, folds=args.folds, interval=args.level, **options).fit(pool)
            fit_s = time.perf_counter() - start
            ens.save(args.home / "models" / f"ensemble-{pool_name}.pkl")
            weights[pool_name] = {**ens.weights_, "intercept": round(ens.intercept_, 4), "fit_s": round(fit_s)}
            fitted = f"{pool_name}: {len(pool):,} items, ensemble fitted in {fit_s:,.0f} s, {weights[pool_name]}"
            console.print(fitted, markup=False)  # labels like xgboost[sources=...] are not rich markup
            for j, label in enumerate(ens.labels):
                short = ens.members.split(",")[j].strip().split(":")[0]  # the full label is on the leaderboard
                r = evaluate(ens.member(j), test, name=f"{label} · {pool_name}", show=False, store=store, cache=False)
                results.append((short, pool_name, r))
            r = evaluate(ens, test, name=f"{ens.label} · {pool_name}", show=False, store=store, cache=False)
            results.append(("ensemble", pool_name, r))
            labels[pool_name] = [*ens.labels, ens.label]
        methods = [m.strip() for m in args.llm_methods.split(",") if m.strip()]
        llm_level = args.level if args.llm_interval is None else args.llm_interval
        if args.llm_calibration == "benchmark":  # items curated like the test set: their errors are the test's
            from appraiser.data.weighting import BENCHMARK_SOURCES

            calibration_pool = [
                it for it in read_pool(pools["train+extra"]) if (it.source or "").startswith(BENCHMARK_SOURCES)
            ]
        else:
            calibration_pool = read_pool(pools["train"])

        def with_interval(p):
            """The llm row with its interval: CQR where the beam reports quantiles, split conformal otherwise."""
            from appraiser.pricers.conformal import Conformal, ConformalQuantile

            if not llm_level:
                return p
            if p.method in ("head", "greedy"):  # no distribution of its own
                return Conformal(p, level=llm_level, needs_fit=False, max_calibration=300).fit(calibration_pool)
            return ConformalQuantile(p, level=llm_level, max_calibration=300).fit(calibration_pool)

        for run in args.llm:
            from appraiser.pricers.llm import LLMPricer
            from appraiser.retrieval.index import RetrievalIndex

            folder = args.index or args.home / "index"
            if not (folder / "index.json").exists():
                held = read_items(args.data / "validation.jsonl")
                RetrievalIndex().build(read_pool(pools["train+extra"]), held).save(folder)
            for method in methods:
                for rag in (0, args.rag):
                    p = LLMPricer(model=run, method=method, rag=rag, index=str(folder) if rag else None)
                    r = evaluate(with_interval(p), test, show=False, store=store)
                    how = "fine-tune" if rag == 0 else f"rag={rag} (reading only)"
                    results.append((p.label, f"{how}, {p.method}", r))
        for run in args.rag_llm:
            from appraiser.pricers.llm import LLMPricer

            for method in methods:
                p = LLMPricer(model=run, method=method)  # its own K and index, as trained
                if not p.rag:
                    raise SystemExit(f"--rag-llm {run}: not fine-tuned with --rag (score it with --llm)")
                r = evaluate(with_interval(p), test, show=False, store=store)
                results.append((p.label, f"RAG fine-tune (rag={p.rag}), {p.method}", r))

        xgb = [(pool, r) for name, pool, r in results if name == "xgboost"]
        ref = next((r for pool, r in xgb if pool == "train"), None)
        ref_name = "xgboost on train.jsonl"
        if ref is None and (row := store.latest("xgboost · train")) is not None:  # from an earlier --pools run
            ref = store.result(row.run_id)
        if ref is None and xgb:  # only the larger pool fitted: its own xgboost (same weighting, same data)
            ref_name, ref = f"xgboost on {xgb[0][0]}", xgb[0][1]
        if ref is None:  # no xgboost row: the first row
            ref_name, ref = results[0][0], results[0][2]
    t = Table(
        title=f"first {len(test)} validation items; Δ = paired |error| difference vs {ref_name}",
        box=box.SIMPLE_HEAD,
    )
    cols = ("pricer", "pool", "MAE", "95% CI", "RMSLE", "hit", "cover", "by third", "width", "Δ vs ref", "Δ 95% CI")
    for col in cols:
        t.add_column(col, justify="left" if col in ("pricer", "pool") else "right")
    for name, pool, r in results:
        m = r.metrics
        c = paired_compare(r.results, ref.results, name, ref_name)
        t.add_row(
            name,
            pool,
            money(m["mae"]),
            f"{money(m['mae_ci_low'])}–{money(m['mae_ci_high'])}",
            f"{m['rmsle']:.3f}",
            f"{m['hit_rate']:.1%}",
            f"{m['interval_coverage']:.1%}" if "interval_coverage" in m else "—",
            " ".join(f"{m[f'interval_coverage_{k}']:.0%}" for k in ("low", "mid", "high"))
            if "interval_coverage_high" in m
            else "—",
            money(m["interval_width"]) if "interval_width" in m else "—",
            "—" if r is ref else money(c.mean_diff),
            "—" if r is ref else f"{money(c.ci_low)} … {money(c.ci_high)}",
        )
    console.print(t)
    for pool_name, w in weights.items():
        console.print(f"ensemble weights ({pool_name}): {w}", markup=False)
    if options or ":" in args.members:
        console.print(f"ensemble options: {options}; leaderboard names: {labels}", markup=False)


if __name__ == "__main__":
    main()
