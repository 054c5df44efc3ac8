"""Do the intervals keep their promise? Raw vs conformalised coverage and width, and the reliability table.

    nice -n 10 python benchmarks/calibration.py --run RUN [--calibration 300] [--size 400]
    nice -n 10 python benchmarks/calibration.py --ensemble [--folds 3 10]

`--run RUN` (a fine-tuned run, or a packaged model read zero-shot) reads the digit beam's own distribution on
the first `--size` validation items and on `--calibration` training-pool items the run did NOT train on (its
draw — n_train, weighting, seed of its config.json — is replayed and left out; validation is never a
calibration item). Printed for each nominal level 10…90%: the beam's raw central-interval coverage and mean
width, the CQR-corrected one (Q calibrated on the pool items at that level), and, at 80%, the split-conformal
interval around the guess. The raw and CQR 80% rows are recorded on the leaderboard and the raw one's
reliability / PIT chart is written to `--charts`.

`--ensemble` checks the stacked ensemble's out-of-fold interval where the conformal promise applies: a
seeded 20% slice of the training pool is held out, the ensemble is fitted on the rest (K-fold out-of-fold
predictions, members refitted on all of the rest), and its OOF q is compared with the q its refitted models
need on the slice; the coverage on the slice and on the first `--size` validation items (only scored) follow.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table


def money(v: float) -> str:
    return f"${v:,.0f}"


def _coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return float(np.mean((lo <= y) & (y <= hi))), float(np.mean(hi - lo))


def run_section(args, console: Console) -> None:
    from appraiser.data.io import read_pool
    from appraiser.evaluation.charts import calibration_chart
    from appraiser.evaluation.evaluator import evaluate, load_test_items, record_result, score
    from appraiser.evaluation.metrics import RELIABILITY_LEVELS
    from appraiser.evaluation.store import LeaderboardStore
    from appraiser.inference.decode import QUANTILE_LEVELS, parse_quantiles
    from appraiser.pricers.conformal import (
        ConformalQuantile,
        calibration_split,
        cqr_scores,
        unseen,
        weighted_quantile,
    )
    from appraiser.pricers.llm import LLMPricer

    test = load_test_items(args.data / "validation.jsonl", args.size)
    pool = read_pool(args.train or [args.data / "train.jsonl"])
    p = LLMPricer(model=args.run, method="expected")
    cal, _ = calibration_split(p, pool, 1.0, args.calibration, args.seed, needs_fit=False)
    trained = len(pool) - len(unseen(p, pool))
    console.print(
        f"{p.label}: {len(cal)} calibration items drawn like its training items from the {len(pool) - trained:,} "
        f"of {len(pool):,} pool items it did not draw for training; {len(test)} validation items (only scored)"
    )
    with LeaderboardStore() as store:  # cached per item: a rerun reads no item twice
        start = time.perf_counter()
        r_cal = evaluate(p, cal, show=False, record=False, store=store)
        r_val = evaluate(p, test, show=False, record=False, store=store)
        console.print(f"read {len(cal) + len(test)} items in {time.perf_counter() - start:,.0f} s")

        def arrays(result):
            rows = [(r.truth, r.guess, parse_quantiles(r.raw)) for r in result.results]
            rows = [row for row in rows if row[1] is not None and row[2] is not None]
            return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))

        yc, gc, Qc = arrays(r_cal)
        yv, gv, Qv = arrays(r_val)
        grid = [round(g, 6) for g in QUANTILE_LEVELS]
        t = Table(title=f"{p.label}: central intervals of the beam's own distribution", box=box.SIMPLE_HEAD)
        for col in ("level", "raw cover (pool)", "raw cover", "raw width", "CQR Q", "CQR cover", "CQR width"):
            t.add_column(col, justify="right")
        for level in RELIABILITY_LEVELS:
            i, j = grid.index(round((1 - level) / 2, 6)), grid.index(round((1 + level) / 2, 6))
            cover_pool, _ = _coverage(Qc[:, i], Qc[:, j], yc)
            cover_raw, width_raw = _coverage(Qv[:, i], Qv[:, j], yv)
            q = weighted_quantile(cqr_scores(Qc[:, i], Qc[:, j], yc), np.ones(len(yc)), level)
            cover_cqr, width_cqr = _coverage(Qv[:, i] * math.exp(-q), Qv[:, j] * math.exp(q), yv)
            t.add_row(
                f"{level:.0%}",
                f"{cover_pool:.1%}",
                f"{cover_raw:.1%}",
                money(width_raw),
                f"{q:+.3f}",
                f"{cover_cqr:.1%}",
                money(width_cqr),
            )
        console.print(t)
        q_split = weighted_quantile(np.abs(np.log(gc) - np.log(yc)), np.ones(len(yc)), args.level)
        cover, width = _coverage(gv * math.exp(-q_split), gv * math.exp(q_split), yv)
        console.print(
            f"split conformal around the guess at {args.level:.0%}: q {q_split:.3f}, cover {cover:.1%}, "
            f"width {money(width)}  (n cal {len(yc)}, n val {len(yv)}; failures: cal "
            f"{int(r_cal.metrics['failures'])}, val {int(r_val.metrics['failures'])})"
        )
        raw = score(test, [_pred(r) for r in r_val.results], name=f"{p.label}", config=p.config())
        cqr = ConformalQuantile(p, level=args.level, max_calibration=args.calibration, seed=args.seed)
        cqr.calibrate([_pred(r) for r in r_cal.results], cal)
        fixed = score(test, _cqr_preds(cqr, r_val), name=cqr.label, config=cqr.config())
        for res in (raw, fixed):
            record_result(res, store)
            m = res.metrics
            console.print(
                f"{res.pricer}: MAE ${m['mae']:,.2f}, {args.level:.0%} interval covers {m['interval_coverage']:.1%} "
                f"of {int(m['interval_n'])}, mean width {money(m['interval_width'])} (leaderboard run {res.run_id})"
            )
    for path in calibration_chart(raw, args.charts):
        console.print(f"chart: {path}")


def _pred(r):
    from appraiser.pricers.base import Prediction

    return Prediction(price=r.guess, low=r.low, high=r.high, raw=r.raw)


def _cqr_preds(cqr, result):
    """The CQR interval applied to predictions already read (what `ConformalQuantile.predict` does)."""
    from appraiser.pricers.conformal import quantile_interval

    out = []
    f = math.exp(cqr.q_)
    for r in result.results:
        p = _pred(r)
        iv = quantile_interval(p, cqr.level) if p.price is not None else None
        out.append(p if iv is None else p.model_copy(update={"low": iv[0] / f, "high": iv[1] * f}))
    return out


def ensemble_section(args, console: Console) -> None:
    from appraiser.data.io import read_items
    from appraiser.evaluation.evaluator import load_test_items
    from appraiser.pricers.conformal import weighted_quantile
    from appraiser.pricers.ensemble import EnsemblePricer

    items = read_items(args.data / "train.jsonl")
    test = load_test_items(args.data / "validation.jsonl", args.size)
    order = np.random.default_rng(args.seed).permutation(len(items))
    n_slice = len(items) // 5
    held, rest = [items[i] for i in order[:n_slice]], [items[i] for i in order[n_slice:]]
    y_held = np.log([it.price for it in held])
    y_test = np.log([it.price for it in test])
    y_rest = np.log([it.price for it in rest])
    # The pool's rows from the benchmark's own curation (the data README: 1,000 of train.jsonl), told by their
    # source: do the OOF errors of items curated like the benchmark differ from the pool's?
    sources = {it.source for it in test}
    curated = np.array([it.source in sources for it in rest])
    for k in args.folds:
        t = Table(
            title=f"OOF q vs the q the refitted models need: {len(rest):,} pool items fitted, {len(held):,} held "
            f"out (pool), first {len(test)} validation items; nominal {args.level:.0%}",
            box=box.SIMPLE_HEAD,
        )
        cols = ("pricer", "folds", "OOF q", f"OOF q ({int(curated.sum())} curated)", "q needed (held-out pool)")
        for col in (*cols, "cover held-out pool", "cover validation"):
            t.add_column(col, justify="left" if col == "pricer" else "right")
        start = time.perf_counter()
        # one q for every item: this table compares the OOF q with the q the refitted models need
        ens = EnsemblePricer(args.members, folds=k, interval=args.level, interval_scale="none").fit(rest)
        console.print(f"folds={k}: fitted in {time.perf_counter() - start:,.0f} s, weights {ens.weights_}")
        from appraiser.pricers.ensemble import _fill

        stacked = ens._features(_fill(ens.oof_)) @ ens.coef_ + ens.intercept_
        oof = [stacked] + [ens.oof_[:, j] for j in range(len(ens.labels))]
        pricers = [("ensemble", ens, ens.q_)] + [
            (lab, ens.fitted_[j], ens.member_q_[j]) for j, lab in enumerate(ens.labels)
        ]
        for (name, pricer, q), o in zip(pricers, oof, strict=True):
            ok = curated & ~np.isnan(o)
            q_curated = weighted_quantile(np.abs(o[ok] - y_rest[ok]), np.ones(int(ok.sum())), args.level)
            g_held = np.log([p.price for p in pricer.predict(held)])
            g_test = np.log([p.price for p in pricer.predict(test)])
            need = weighted_quantile(np.abs(g_held - y_held), np.ones(len(held)), args.level)
            t.add_row(
                name,
                str(k),
                f"{q:.3f}",
                f"{q_curated:.3f}",
                f"{need:.3f}",
                f"{np.mean(np.abs(g_held - y_held) <= q):.1%}",
                f"{np.mean(np.abs(g_test - y_test) <= q):.1%}",
            )
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    ap.add_argument("--home", type=Path, default=Path(".appraiser"), help="APPRAISER_HOME (cache, leaderboard)")
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--level", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", help="a fine-tuned run (id, name, folder) or a packaged model")
    ap.add_argument("--train", type=Path, action="append", help="the pool calibration items come from")
    ap.add_argument("--calibration", type=int, default=300, help="pool items the run did not train on")
    ap.add_argument("--charts", type=Path, default=Path(".appraiser/charts"))
    ap.add_argument("--ensemble", action="store_true")
    ap.add_argument("--members", default="xgboost,tfidf-ridge,knn")
    ap.add_argument("--folds", type=int, nargs="+", default=[3])
    args = ap.parse_args()
    os.environ["APPRAISER_HOME"] = str(args.home.resolve())
    console = Console(width=max(Console().width, 140))
    if not args.run and not args.ensemble:
        ap.error("name --run RUN and/or --ensemble")
    if args.run:
        run_section(args, console)
    if args.ensemble:
        ensemble_section(args, console)


if __name__ == "__main__":
    main()
