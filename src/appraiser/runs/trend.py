"""Is the loss still coming down? A verdict on a noisy curve, for local and hosted runs alike.

The course's advice on a running job: past the first fast drop, the loss is noise around a trend, and what
matters is whether there is "a gradual decrease". Two tools answer that:

- `debiased_ema`: TensorBoard's smoothing (causal: `last = last·s + (1−s)·y`, shown as `last / (1 − sⁿ)`),
  with a noise band from the spread of the raw values around it;
- `verdict`: in the spirit of dlib's running-gradient test, the least-squares slope of the raw loss over a
  recent window with its standard error gives P(slope < 0); a robust variant drops the top 10% of values
  (one bad batch must not hide a trend); and `steps_without_decrease` counts how far back from the end
  there is no evidence (P < 0.51) of a decrease.

States: too early, falling, flat (no evidence of decrease over the window, or over the last half of it or
more: a fast early drop must not hide that the loss stopped moving), rising, diverging (the last value is
non-finite, or the median of the last 10 steps is `diverge_ratio` times its best and has climbed back a quarter
of the range the curve covered).

`story` tells a whole history: its phases (cut where two straight lines fit best, when they fit much better
than one and the two sides get different verdicts, or both fall and the first 3 times faster: a "gradual
decrease" after the drop; the earlier side cut again), e.g. "fast initial drop 3.20 → 1.61 (steps 1–18),
then flat around 1.58 (steps 19–80)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

STATES = ("too early", "falling", "flat", "rising", "diverging")


def debiased_ema(values: Sequence[float], s: float = 0.6) -> list[float]:
    """TensorBoard's debiased exponential moving average (s = 0: the raw values; s → 1: smoother)."""
    if not 0 <= s < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {s}")
    out, last, n = [], 0.0, 0
    for y in values:
        if not math.isfinite(y):
            out.append(float("nan"))
            continue
        n += 1
        last = last * s + (1 - s) * y
        out.append(last / (1 - s**n))
    return out


def noise_band(values: Sequence[float], smoothed: Sequence[float], window: int = 50) -> list[tuple[float, float]]:
    """(low, high) = smoothed ∓ the standard deviation of the last `window` residuals (raw − smoothed)."""
    res = np.asarray(values, float) - np.asarray(smoothed, float)
    out = []
    for i, m in enumerate(smoothed):
        r = res[max(0, i - window + 1) : i + 1]
        r = r[np.isfinite(r)]
        sd = float(r.std(ddof=1)) if len(r) > 1 else 0.0
        out.append((m - sd, m + sd))
    return out


def _p_decrease(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, its standard error, P(slope < 0)) of a least-squares line, t-distributed."""
    n = len(x)
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if n < 3 or sxx == 0:
        return 0.0, float("inf"), 0.5
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    resid = y - (ym + slope * (x - xm))
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
    if se == 0:  # a perfect line: certain of its sign, and of nothing for a constant (a flat run is not rising)
        return slope, 0.0, 1.0 if slope < 0 else 0.0 if slope > 0 else 0.5
    return slope, se, float(stats.t.cdf(-slope / se, df=n - 2))


def steps_without_decrease(values: Sequence[float], threshold: float = 0.51) -> int:
    """How many values, counted back from the end, show no evidence (P(decrease) < threshold) of a
    decreasing trend — dlib's `count_steps_without_decrease`."""
    y = np.asarray([v for v in values if math.isfinite(v)], float)
    if len(y) < 3:
        return 0
    # Every suffix's least-squares line at once, from running sums over the series read backwards (j = 0 is
    # the last value): one pass instead of one regression per suffix length (10,000 steps: ~1 ms, was ~130).
    r = (y - y[-1])[::-1]  # shifted: the sums of squares below then cancel less
    n = np.arange(1, len(r) + 1, dtype=float)
    j = n - 1
    sy, sjy, syy = np.cumsum(r), np.cumsum(j * r), np.cumsum(r * r)
    sj, sjj = n * (n - 1) / 2, (n - 1) * n * (2 * n - 1) / 6
    sxx = sjj - sj * sj / n
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_j = (sjy - sj * sy / n) / sxx  # slope against j; against the step it is -slope_j
        ss = np.maximum(syy - sy * sy / n - slope_j * slope_j * sxx, 0.0)
        se = np.sqrt(ss / (n - 2) / sxx)
        p = stats.t.cdf(slope_j / se, df=n - 2)  # P(step slope < 0) = t.cdf(-slope / se)
    p = np.where(se == 0, np.where(slope_j > 0, 1.0, 0.0), p)
    below = np.flatnonzero(p[2:] < threshold)
    return int(below[-1] + 3) if len(below) else 0


@dataclass
class Verdict:
    state: str
    p_decrease: float | None
    window: int
    slope: float | None = None
    slope_se: float | None = None
    p_decrease_robust: float | None = None
    steps_without_decrease: int | None = None
    metric: str = "loss"

    @property
    def message(self) -> str:
        if self.state == "too early":
            return f"too early: {self.window} points of {self.metric} so far"
        if self.state == "diverging":
            return f"diverging: the {self.metric} is non-finite or far above its best"
        p = f"P(decrease) = {self.p_decrease:.2f} over the last {self.window} steps"
        if self.state == "flat" and self.p_decrease >= 0.9:  # a real slope, but too small to matter
            return (
                f"flat: still drifting down ({p}), but by less than its noise for {self.steps_without_decrease} steps"
            )
        if self.state == "flat" and self.steps_without_decrease:
            return f"flat: no decrease beyond the noise for {self.steps_without_decrease} steps ({p})"
        if self.state == "flat":
            return f"flat: no clear decrease ({p})"
        return f"{self.state}: {p}"


def verdict(
    values: Sequence[float],
    *,
    window: int = 200,
    min_points: int = 20,
    metric: str = "loss",
    diverge_ratio: float = 3.0,
    phased: bool = True,
) -> Verdict:
    """The trend of the last `window` raw values (one per step, oldest first)."""
    vals = list(values)
    recent = vals[-window:]
    if recent and not math.isfinite(recent[-1]):  # it ends non-finite; one it recovered from is told, not judged
        return Verdict("diverging", None, len(recent), metric=metric)
    recent = [v for v in recent if math.isfinite(v)]
    if len(recent) < min_points:
        return Verdict("too early", None, len(recent), metric=metric)
    finite = np.asarray([v for v in vals if math.isfinite(v)], float)
    k = min(10, len(finite))  # medians of 10 steps: one bad batch is not a divergence
    medians = np.median(np.lib.stride_tricks.sliding_window_view(finite, k), axis=1)
    best, worst = float(medians.min()), float(medians.max())
    if medians[-1] > diverge_ratio * max(best, 1e-12) and medians[-1] - best > 0.25 * (worst - best):
        # The ratio alone would call a loss converging towards zero "diverging" (0.003 is 3 times 0.001); the
        # rise must also be a quarter of the whole range the series has covered.
        return Verdict("diverging", None, len(recent), metric=metric)
    y = np.asarray(recent, float)
    x = np.arange(len(y), dtype=float)
    slope, se, p = _p_decrease(x, y)
    keep = y <= np.quantile(y, 0.9)  # the robust variant: the top 10% (bad batches) dropped
    _, _, p_robust = _p_decrease(x[keep], y[keep])
    flat_for = steps_without_decrease(recent)
    p_best = max(p, p_robust)
    if 1 - p >= 0.95 and 1 - p_robust >= 0.95:
        state = "rising"
    elif flat_for >= max(min_points, len(recent) / 2) and steps_without_decrease(y[keep]) >= keep.sum() / 2:
        # No decrease over the last half of the window or more (also without the top 10%: one bad batch near
        # the end is not a plateau): flat now, whatever the first half did. The verdict reports that stretch.
        tail = y[-flat_for:]
        slope, se, p = _p_decrease(np.arange(len(tail), dtype=float), tail)
        return Verdict("flat", p, flat_for, slope, se, None, flat_for, metric)
    elif p_best >= 0.9:
        state = "falling"
        if phased and len(y) >= 2 * min_points:
            # Still "falling" only because the window holds the early drop? Judge the phase the run is in now
            # (the story's last phase): a plateau after a fast drop is flat, however significant the drop.
            last = _segments(np.minimum(y, np.quantile(y, 0.9)), min_points)[-1]  # top 10% clipped: bad batches
            if last[0] == "flat" and last[1] > 0:
                tail = y[last[1] :]
                t_slope, t_se, t_p = _p_decrease(np.arange(len(tail), dtype=float), tail)
                return Verdict("flat", t_p, len(tail), t_slope, t_se, None, len(tail), metric)
    else:
        state = "flat"
    return Verdict(state, p, len(recent), slope, se, p_robust, flat_for, metric)


@dataclass
class Phase:
    """One stretch of a history with one trend: its state, first and last step, level at each end."""

    state: str
    first_step: int
    last_step: int
    start: float  # mean of its first few raw values
    end: float  # mean of its last few raw values
    median: float

    def describe(self, fast: bool = False, money: bool = False) -> str:
        f = (lambda v: f"${v:,.2f}") if money else (lambda v: f"{v:.3g}")
        steps = f"steps {self.first_step}–{self.last_step}"
        if self.state == "falling":
            what = "fast initial drop" if fast else "falling"
            return f"{what} {f(self.start)} → {f(self.end)} ({steps})"
        if self.state == "gradual":
            return f"gradual decrease {f(self.start)} → {f(self.end)} ({steps})"
        if self.state == "rising":
            return f"rising {f(self.start)} → {f(self.end)} ({steps})"
        if self.state == "flat":
            return f"flat around {f(self.median)} ({steps})"
        return f"{self.state} ({steps})"


def _phase(state: str, steps: Sequence[int], y: np.ndarray) -> Phase:
    k = max(1, min(5, len(y) // 4))
    return Phase(state, int(steps[0]), int(steps[-1]), float(y[:k].mean()), float(y[-k:].mean()), float(np.median(y)))


def _sse_line(y: np.ndarray) -> float:
    """Squared error of the least-squares line through y."""
    x = np.arange(len(y), dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(((y - (slope * x + intercept)) ** 2).sum())


def _side(y: np.ndarray, min_points: int) -> str:
    """A phase's state: its verdict, but a "falling" whose fitted line drops less than one noise standard
    deviation over the whole phase is flat (a long plateau's last crumbs of decrease are significant, not news)."""
    v = verdict(y, window=len(y), min_points=min_points, phased=False)
    if v.state == "falling" and v.slope is not None:
        noise = math.sqrt(_sse_line(y) / max(len(y) - 2, 1))
        if -v.slope * len(y) < noise:
            return "flat"
    return v.state


def _segments(y: np.ndarray, min_points: int) -> list[tuple[str, int, int]]:
    """(state, start, end) index ranges. The history is cut where two straight lines fit it best (each side at
    least `min_points` long); sides with different verdicts are two phases (the left side cut again), else one."""
    n = len(y)
    if n < min_points:
        return [("too early", 0, n)]
    whole = _side(y, min_points)
    if n < 2 * min_points:
        return [(whole, 0, n)]
    cut = min(range(min_points, n - min_points + 1), key=lambda k: _sse_line(y[:k]) + _sse_line(y[k:]))
    one, two = _sse_line(y), _sse_line(y[:cut]) + _sse_line(y[cut:])
    # Two lines (and a cut) must fit much better than one (F-test, p < 0.001): noise around one trend is not
    # a change of phase.
    if two <= 0 or stats.f.sf(((one - two) / 3) / (two / (n - 5)), 3, n - 5) >= 0.001:
        return [(whole, 0, n)]
    left, right = _side(y[:cut], min_points), _side(y[cut:], min_points)
    if left == right == "falling":
        # Both falling, but a line through each fits much better than one: a fast drop, then a gradual
        # decrease (the course's "is it still coming down?"), when the first is at least 3 times steeper.
        steep = np.polyfit(np.arange(cut, dtype=float), y[:cut], 1)[0]
        slow = np.polyfit(np.arange(n - cut, dtype=float), y[cut:], 1)[0]
        if steep < 3 * slow < 0:
            return _segments(y[:cut], min_points) + [("gradual", cut, n)]
    if left == right:
        return [(whole if whole == left else left, 0, n)]
    return _segments(y[:cut], min_points) + [(right, cut, n)]


def phases(steps: Sequence[int], values: Sequence[float], *, min_points: int = 20) -> list[Phase]:
    """The history split into trend phases, oldest first (non-finite values dropped; neighbours with the
    same state merged)."""
    pairs = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    if not pairs:
        return []
    st = [s for s, _ in pairs]
    y = np.asarray([v for _, v in pairs], float)
    merged: list[list[Any]] = []
    for state, a, b in _segments(y, min_points):
        if merged and merged[-1][0] == state:
            merged[-1][2] = b
        else:
            merged.append([state, a, b])
    return [_phase(state, st[a:b], y[a:b]) for state, a, b in merged]


def story(
    steps: Sequence[int], values: Sequence[float], *, metric: str = "loss", min_points: int = 20, money: bool = False
) -> str:
    """The whole history in one line: "loss: fast initial drop 3.2 → 1.6 (steps 1–18), then flat around 1.58
    (steps 19–80)". A first falling phase is "fast" when it holds more than half of the whole drop."""
    ph = phases(steps, values, min_points=min_points)
    if not ph:
        return f"{metric}: no values"
    total = ph[0].start - min(p.end for p in ph) if ph[0].state == "falling" else 0.0
    fast = len(ph) > 1 and ph[0].state == "falling" and (ph[0].start - ph[0].end) > 0.5 * total > 0
    parts = [ph[0].describe(fast=fast, money=money)] + [p.describe(money=money) for p in ph[1:]]
    line = f"{metric}: " + ", then ".join(parts)
    bad = [int(s) for s, v in zip(steps, values, strict=True) if not math.isfinite(v)]
    if not bad:
        return line
    if not math.isfinite(values[-1]):  # it ended on non-finite values: diverged, from the first of that stretch on
        first = 1 + max(i for i, v in enumerate(values) if math.isfinite(v))  # phases() found a finite value
        line += f", then diverging (steps {int(steps[first])}–{int(steps[-1])})"
        bad = [b for b in bad if b < int(steps[first])]
    if bad:  # non-finite values it recovered from: where they were, not a phase at the end
        shown = ", ".join(str(b) for b in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        line += f" (non-finite at step{'s' if len(bad) > 1 else ''} {shown})"
    return line
