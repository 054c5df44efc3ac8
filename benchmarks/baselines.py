"""Reproduce the baseline table: every baseline trained on all of train.jsonl, scored on all 500
validation items through the evaluator (one leaderboard row each), then the sample-weighting and
target experiment on the best of them.

    python benchmarks/baselines.py --home /tmp/appraiser-bench [--data ../shared/data]

Leaderboard rows, fitted models and the embedding cache go to `--home` (APPRAISER_HOME), so a
second run reuses the embeddings and `appraiser leaderboard` shows the rows. Embedding the 16k
train + validation texts is the slow part of knn-embed on a CPU: ~20 minutes the first time on
two busy cores (its "fit s" then includes it), well under a second once cached. Validation is the
only set anything is tuned on; the holdout is never read.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ORDER = [
    "random",
    "constant-mean",
    "constant-median",
    "linear",
    "bow-lr",
    "tfidf-ridge",
    "random-forest",
    "xgboost",
    "knn-embed",
    "mlp",
]
#: The weighting/target experiment: (target, weighting, off_category_weight).
#: The baseline's own default (weighting none, its default target) is taken from the main table.
VARIANTS = [
    ("log", "none", 1.0),
    ("price", "none", 1.0),
    ("log", "price_flat", 1.0),
    ("price", "price_flat", 1.0),
    ("log", "match", 1.0),
    ("price", "match", 1.0),
    ("log", "match", 0.0),
]

console = Console(width=200, highlight=False)


def run_one(name: str, opts: dict, train, validation, store, models: Path) -> dict:
    from appraiser.data.weighting import weighted_histogram
    from appraiser.evaluation.evaluator import evaluate
    from appraiser.pricers import registry

    pricer = registry.create(name, **opts)
    console.print(f"[dim]fitting {escape(pricer.label)} …[/]")
    start = time.perf_counter()
    pricer.fit(train, validation)
    fit_s = time.perf_counter() - start
    pricer.save(models / f"{pricer.label}.pkl")
    result = evaluate(pricer, validation, show=False, cache=False, record=True, store=store, fit_seconds=fit_s)
    m = result.metrics
    row = {
        "label": pricer.label,
        "opts": opts,
        "mae": m["mae"],
        "ci": (m["mae_ci_low"], m["mae_ci_high"]),
        "median_ae": m["median_ae"],
        "rmsle": m["rmsle"],
        "hit": m["hit_rate"],
        "failures": m["failures"],
        "fit_s": fit_s,
        "predict_s": result.seconds,
        "n_train": pricer.fit_info["n_train"],
        "median_guess": float(np.median([g for g in result.guesses if g is not None])),
    }
    if hasattr(pricer, "weighting"):
        from appraiser.data.weighting import sample_weights

        w = sample_weights(
            train,
            pricer.weighting,
            validation,
            categories=pricer.categories,
            off_category_weight=pricer.off_category_weight,
        )
        hist = weighted_histogram([it.price for it in train], w)
        row["train_under_200"] = float(hist[:4].sum())
    console.print(
        f"  {escape(row['label'])}: MAE ${row['mae']:.2f}  RMSLE {row['rmsle']:.3f}  hit {row['hit']:.1%}  "
        f"fit {fit_s:.1f}s  predict {result.seconds:.2f}s"
    )
    return row


def table(rows: list[dict], title: str, extra: bool = False) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD)
    cols = ["baseline", "MAE", "95% CI", "median AE", "RMSLE", "hit rate", "fit s", "predict s"]
    if extra:
        cols += ["train items", "train ≤$200 (weighted)", "median guess"]
    for c in cols:
        t.add_column(c, justify="left" if c == "baseline" else "right", no_wrap=True)
    for r in rows:
        cells = [
            escape(r["label"]),
            f"${r['mae']:.2f}",
            f"${r['ci'][0]:.2f}–${r['ci'][1]:.2f}",
            f"${r['median_ae']:.2f}",
            f"{r['rmsle']:.3f}",
            f"{r['hit']:.1%}",
            f"{r['fit_s']:.1f}",
            f"{r['predict_s']:.2f}",
        ]
        if extra:
            cells += [f"{r['n_train']:,}", f"{r.get('train_under_200', float('nan')):.0%}", f"${r['median_guess']:.0f}"]
        t.add_row(*cells)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="APPRAISER_HOME for rows, models, embeddings")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--only", default=None, help="comma-separated baselines (default: all)")
    ap.add_argument("--experiment-on", default=None, help="baseline for the weighting experiment (default: best)")
    ap.add_argument("--no-experiment", action="store_true")
    ap.add_argument("--no-transfer", action="store_true", help="skip the winning weighting on the others")
    args = ap.parse_args()
    if args.home is not None:
        os.environ["APPRAISER_HOME"] = str(args.home)

    from appraiser import config
    from appraiser.data.io import read_items
    from appraiser.evaluation.evaluator import load_test_items
    from appraiser.evaluation.store import LeaderboardStore
    from appraiser.items import fingerprint

    home = config.home()
    models = home / "models"
    train = read_items(args.data / "train.jsonl")
    validation = load_test_items(args.data / "validation.jsonl", size=None)
    console.print(
        f"train {len(train):,} items · validation {len(validation)} items (fingerprint "
        f"{fingerprint(validation)}) · home {home.resolve()} · {os.cpu_count()} CPUs"
    )
    names = args.only.split(",") if args.only else ORDER
    total = time.perf_counter()
    with LeaderboardStore() as store:
        rows = [run_one(n, {}, train, validation, store, models) for n in names]
        console.print()
        console.print(table(rows, "Baselines: trained on train.jsonl, scored on all 500 validation items"))

        if not args.no_experiment:
            learned = [r for r in rows if r["label"] not in ("random", "constant-mean", "constant-median")]
            best = args.experiment_on or min(learned or rows, key=lambda r: r["mae"])["label"]
            console.print(f"\nweighting / target experiment on {best} …")
            exp_rows = []
            from appraiser.pricers import registry

            default_target = registry.get(best).factory.default_target
            for target, weighting, off in VARIANTS:
                if (target, weighting, off) == (default_target, "none", 1.0):
                    exp_rows.append(next(r for r in rows if r["label"] == best))
                    continue
                opts = {"target": target, "weighting": weighting, "off_category_weight": off}
                exp_rows.append(run_one(best, opts, train, validation, store, models))
            console.print()
            console.print(
                table(
                    exp_rows,
                    f"{best}: target × sample weighting (off_category_weight=0.0 drops training items whose "
                    "category validation never has)",
                    extra=True,
                )
            )
            if not args.no_transfer:
                # The winning *weighting* (not target) on every other learned baseline, each keeping
                # its own default target, to see whether the weighting helps beyond one model.
                win = min(exp_rows, key=lambda r: r["mae"])["opts"]
                weights = {k: v for k, v in win.items() if k != "target"}
                if weights and weights != {"weighting": "none", "off_category_weight": 1.0}:
                    console.print(f"\nthe winning weighting {weights} on the other learned baselines …")
                    others = [r for r in learned if r["label"] != best]
                    moved = [run_one(r["label"], weights, train, validation, store, models) for r in others]
                    pairs = [row for r, m in zip(others, moved, strict=True) for row in (r, m)]
                    console.print()
                    console.print(table(pairs, f"each learned baseline: default vs {weights}", extra=True))
    console.print(f"total {time.perf_counter() - total:.0f} s; rows recorded in {home.resolve() / 'leaderboard.db'}")


if __name__ == "__main__":
    main()
