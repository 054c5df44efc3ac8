"""Scores for a list of guesses against true prices: pure functions on arrays.

Conventions, so every number on the leaderboard means the same thing:

- A failed guess (None / NaN) is counted in `failures` and lowers `coverage` and `hit_rate`, but is
  left out of the error metrics (MAE, RMSLE, ...): a failure has no error to average. Failures are
  shown next to the MAE everywhere, so a pricer cannot look good by refusing hard items, and a pricer that
  priced under `MIN_PRICED_SHARE` of its items ranks after all that priced more (`mae_rank`), whatever its MAE.
- `hit_rate` is the share of *all* items that are green (a failure is not a hit).
- Log metrics use log1p and clip guesses below at 0 (a negative price has no logarithm).
- The MAE's 95% confidence interval is a seeded percentile bootstrap, so it is reproducible.
- Intervals (a guess's low..high, when the pricer gives them) are scored by `interval_coverage`, the share of
  the items with an interval whose true price lies inside it (ends included), and `interval_width`, their
  mean width in dollars; both are left out (not NaN) when no guess has an interval, so older rows and
  interval-less pricers look as before.
- A guess that carries its own distribution (the digit beam's quantiles at 5%, 10%, …, 95%) is also scored for
  calibration (`reliability`): `calib_cover_L` is the share of truths inside the distribution's central L%
  interval (L = 10, 20, …, 90; a calibrated model gets L%), `calib_error` their mean absolute gap to L, and
  `pit_bins` (not stored on the leaderboard) the PIT histogram: how many truths fall between each pair of
  neighbouring 5% quantiles (flat when calibrated; a U shape means too narrow, a hump too wide).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

GREEN, ORANGE, RED, FAILED = "green", "orange", "red", "failed"
#: Absolute ($) and relative (share of the true price) limits of the green and orange bands.
GREEN_ABS, GREEN_REL = 40.0, 0.20
ORANGE_ABS, ORANGE_REL = 80.0, 0.40

METRIC_NAMES = (
    "n",
    "failures",
    "coverage",
    "mae",
    "mae_ci_low",
    "mae_ci_high",
    "median_ae",
    "rmsle",
    "mse",
    "r2",
    "hit_rate",
)
#: Present only when some guess had an interval.
INTERVAL_METRICS = ("interval_n", "interval_coverage", "interval_width", "interval_log_width")
#: The nominal levels of the central intervals a reported distribution is scored at.
RELIABILITY_LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Present only when some guess carried its quantiles.
CALIBRATION_METRICS = ("calib_n", *(f"calib_cover_{round(lv * 100)}" for lv in RELIABILITY_LEVELS), "calib_error")


#: A pricer that priced fewer than this share of its items ranks after every one that priced more. Its MAE is
#: over the items it answered only, so one that abstains on all but its surest item (1 of 50, off by a cent)
#: would otherwise top the leaderboard with 49 failures.
MIN_PRICED_SHARE = 0.9


class MaeRank(NamedTuple):
    """A sort key for evaluations, best first (a tuple, so `sorted(key=mae_rank)` and `min` work as before)."""

    group: int  # 0: priced at least MIN_PRICED_SHARE of its items; 1: priced fewer; 2: has no MAE
    mae: float  # math.inf when there is none


def priced_share(metrics: Mapping[str, object]) -> float | None:
    """The share of its items an evaluation priced (`coverage`, else from `n` and `failures`); None when the
    row says neither (a row from before they were recorded is then ranked by its MAE alone, as it was)."""
    v = metrics.get("coverage")
    if isinstance(v, (int, float)) and not math.isnan(v):
        return float(v)
    n, failures = metrics.get("n"), metrics.get("failures")
    if isinstance(n, (int, float)) and isinstance(failures, (int, float)) and n > 0:
        return (n - failures) / n
    return None


def mae_rank(metrics: Mapping[str, object]) -> MaeRank:
    """An evaluation's sort key, best first: by MAE among the rows that priced at least MIN_PRICED_SHARE of
    their items, then by MAE among those that priced fewer (their MAE is over a few answered items, so it is
    no measure of the pricer), and last a missing or NaN MAE (a pricer that failed on every item). A NaN key
    would leave a sort's order arbitrary."""
    v = metrics.get("mae")
    if not isinstance(v, (int, float)) or math.isnan(v):
        return MaeRank(2, math.inf)
    share = priced_share(metrics)
    return MaeRank(1 if share is not None and share < MIN_PRICED_SHARE else 0, float(v))


def money(v: object, places: int = 2) -> str:
    """A dollar figure for a sentence or a title; "—" for a missing or non-finite one (a pricer that failed on
    every item has no MAE, and "$nan" reads as a number)."""
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    return f"${v:,.{places}f}"


def colour(guess: float | None, truth: float) -> str:
    """green if the error is under $40 or under 20% of the truth; orange under $80 or 40%; else red.

    Both limits are strict: an error of exactly $40 on a $100 item is orange.
    """
    if guess is None or guess != guess:
        return FAILED
    error = abs(guess - truth)
    if error < GREEN_ABS or error < GREEN_REL * truth:
        return GREEN
    if error < ORANGE_ABS or error < ORANGE_REL * truth:
        return ORANGE
    return RED


def squared_log_error(guess: float, truth: float) -> float:
    return float((np.log1p(max(guess, 0.0)) - np.log1p(truth)) ** 2)


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (seeded, so reruns agree).

    Resamples in chunks so 10,000 values x 2,000 resamples stays within a few MB of memory.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        idx = rng.integers(0, x.size, size=(k, x.size))
        means[start : start + k] = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def compute_metrics(
    truths: Sequence[float] | np.ndarray,
    guesses: Sequence[float | None] | np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    lows: Sequence[float | None] | None = None,
    highs: Sequence[float | None] | None = None,
    quantiles: Sequence[Sequence[float] | None] | None = None,
) -> dict[str, float]:
    """All leaderboard metrics for paired truths and guesses (None or NaN marks a failure), plus the interval
    metrics when `lows` and `highs` give some guesses an interval, and the calibration metrics when
    `quantiles` (19 values at 5%…95% per guess, or None) give some guesses a distribution."""
    t = np.asarray(truths, dtype=float)
    g = np.array([np.nan if v is None else v for v in guesses], dtype=float)
    if t.shape != g.shape:
        raise ValueError(f"{t.size} truths but {g.size} guesses")
    n = int(t.size)
    ok = ~np.isnan(g)
    t_ok, g_ok = t[ok], g[ok]
    n_ok = int(ok.sum())
    nan = float("nan")
    out: dict[str, float] = {
        "n": n,
        "failures": n - n_ok,
        "coverage": n_ok / n if n else nan,
    }
    if lows is not None and highs is not None:
        out.update(interval_metrics(t, g, lows, highs))
    if quantiles is not None:
        rel = reliability(t, [None if np.isnan(gi) else q for gi, q in zip(g, quantiles, strict=True)])
        out.update({k: v for k, v in rel.items() if k != "pit_bins"})
    if n_ok == 0:
        out.update(dict.fromkeys(("mae", "mae_ci_low", "mae_ci_high", "median_ae", "rmsle", "mse", "r2"), nan))
        out["hit_rate"] = 0.0 if n else nan
        return out
    err = np.abs(g_ok - t_ok)
    low, high = bootstrap_mean_ci(err, n_resamples=n_resamples, seed=seed)
    sle = (np.log1p(np.clip(g_ok, 0, None)) - np.log1p(t_ok)) ** 2
    ss_tot = float(((t_ok - t_ok.mean()) ** 2).sum())
    colours = [colour(float(a), float(b)) for a, b in zip(g_ok, t_ok, strict=True)]
    out.update(
        mae=float(err.mean()),
        mae_ci_low=low,
        mae_ci_high=high,
        median_ae=float(np.median(err)),
        rmsle=float(np.sqrt(sle.mean())),
        mse=float((err**2).mean()),
        r2=float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else nan,
        hit_rate=colours.count(GREEN) / n,
    )
    return out


def interval_metrics(
    truths: Sequence[float] | np.ndarray,
    guesses: Sequence[float | None] | np.ndarray,
    lows: Sequence[float | None],
    highs: Sequence[float | None],
) -> dict[str, float]:
    """Coverage and mean width of the intervals of the non-failed guesses that have one ({} when none has), and
    the coverage in each third of those guesses (cheapest, middle, dearest: `interval_coverage_low/mid/high`),
    since an interval can keep its level on average and break it by price level."""
    t = np.asarray(truths, dtype=float)
    g = np.array([np.nan if v is None else v for v in guesses], dtype=float)
    lo = np.array([np.nan if v is None else v for v in lows], dtype=float)
    hi = np.array([np.nan if v is None else v for v in highs], dtype=float)
    has = ~np.isnan(g) & ~np.isnan(lo) & ~np.isnan(hi)
    if not has.any():
        return {}
    t, g, lo, hi = t[has], g[has], lo[has], hi[has]
    inside = (lo <= t) & (t <= hi)
    thirds = np.array_split(inside[np.argsort(g, kind="stable")], 3)
    by_third = {
        f"interval_coverage_{name}": float(part.mean())
        for name, part in zip(("low", "mid", "high"), thirds, strict=True)
        if len(part)
    }
    return {
        "interval_n": float(has.sum()),
        "interval_coverage": float(inside.mean()),
        **by_third,
        "interval_width": float((hi - lo).mean()),
        "interval_log_width": float((np.log(np.clip(hi, 1e-9, None)) - np.log(np.clip(lo, 1e-9, None))).mean()),
    }


def reliability(
    truths: Sequence[float] | np.ndarray, quantiles: Sequence[Sequence[float] | None]
) -> dict[str, float | list[int]]:
    """Calibration of reported distributions: for each nominal level L in `RELIABILITY_LEVELS`, the share of the
    truths inside the central interval [q_(1-L)/2, q_(1+L)/2] (ends included, as `interval_metrics`), and the
    PIT histogram over the 20 bins the 19 quantiles (5%…95%) cut the price line into. A truth level with some
    quantiles (a model sure of one whole-dollar price) counts half below them. {} when no row has quantiles."""
    t = np.asarray(truths, dtype=float)
    rows = [(float(y), np.asarray(q, dtype=float)) for y, q in zip(t, quantiles, strict=True) if q is not None]
    if not rows:
        return {}
    y = np.array([r[0] for r in rows])
    Q = np.vstack([r[1] for r in rows])
    if Q.shape[1] != 19:
        raise ValueError(f"expected 19 quantiles (5%, 10%, …, 95%) per row, not {Q.shape[1]}")
    out: dict[str, float | list[int]] = {"calib_n": float(len(y))}
    gaps = []
    for level in RELIABILITY_LEVELS:
        k = round((1 - level) / 2 / 0.05) - 1  # index of the lower end in the 5% grid
        inside = (Q[:, k] <= y) & (y <= Q[:, 18 - k])
        out[f"calib_cover_{round(level * 100)}"] = float(inside.mean())
        gaps.append(abs(float(inside.mean()) - level))
    out["calib_error"] = float(np.mean(gaps))
    below = (Q < y[:, None]).sum(axis=1) + 0.5 * (Q == y[:, None]).sum(axis=1)
    out["pit_bins"] = np.bincount(np.floor(below).astype(int), minlength=20).tolist()
    return out
