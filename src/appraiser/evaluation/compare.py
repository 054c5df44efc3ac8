"""Is pricer A really better than pricer B? A paired comparison on the items both priced.

Two MAEs with overlapping confidence intervals can still differ reliably, because both pricers see
the same items: pairing removes the item-to-item spread. We report the mean difference of absolute
errors (A − B, negative = A better) with a seeded bootstrap CI, and a two-sided sign test on which
pricer was closer per item (ties dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appraiser.evaluation.evaluator import EvalResult, ItemResult
from appraiser.evaluation.metrics import bootstrap_mean_ci


@dataclass
class Comparison:
    a: str
    b: str
    n: int  # items both priced (same id and truth, neither failed)
    mae_a: float
    mae_b: float
    mean_diff: float  # mean of |err A| − |err B|
    ci_low: float
    ci_high: float
    a_better: int  # items where A was strictly closer
    b_better: int
    ties: int
    p_value: float  # two-sided sign test (binomial, p = 0.5) on a_better vs b_better
    skipped: int  # shared items dropped because one pricer failed on them
    failed_a: int = 0  # of the shared items, those A failed on (they are in `skipped`)
    failed_b: int = 0  # … and those B failed on (an item both failed counts in both)

    @property
    def shared(self) -> int:
        """Items both runs were asked (same id and truth), before failures are dropped."""
        return self.n + self.skipped

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no shared items to compare"
        if self.ci_high < 0:
            return f"{self.a} is better (95% CI of the difference is below 0)"
        if self.ci_low > 0:
            return f"{self.b} is better (95% CI of the difference is above 0)"
        return "no significant difference (95% CI contains 0)"


def paired_compare(
    a: Sequence[ItemResult] | EvalResult,
    b: Sequence[ItemResult] | EvalResult,
    name_a: str = "A",
    name_b: str = "B",
    seed: int = 0,
) -> Comparison:
    """Compare two sets of per-item results on the items they share (matched by id and true price).

    Each side is a list of ItemResult or a whole EvalResult (what `evaluate` and `LeaderboardStore.result`
    return), whose `.results` are compared: passing one failed with "'EvalResult' object is not iterable"."""
    from scipy.stats import binomtest

    a = a.results if isinstance(a, EvalResult) else a
    b = b.results if isinstance(b, EvalResult) else b
    by_id = {(r.id, round(r.truth, 2)): r for r in b}
    ea, eb = [], []
    skipped = failed_a = failed_b = 0
    for r in a:
        other = by_id.get((r.id, round(r.truth, 2)))
        if other is None:
            continue
        if r.error is None or other.error is None:
            skipped += 1
            failed_a += r.error is None
            failed_b += other.error is None
            continue
        ea.append(r.error)
        eb.append(other.error)
    ea_arr, eb_arr = np.array(ea), np.array(eb)
    d = ea_arr - eb_arr
    nan = float("nan")
    if d.size == 0:
        return Comparison(name_a, name_b, 0, nan, nan, nan, nan, nan, 0, 0, 0, nan, skipped, failed_a, failed_b)
    low, high = bootstrap_mean_ci(d, seed=seed)
    a_better, b_better = int((d < 0).sum()), int((d > 0).sum())
    trials = a_better + b_better
    p = binomtest(a_better, trials, 0.5).pvalue if trials else 1.0
    return Comparison(
        name_a,
        name_b,
        int(d.size),
        float(ea_arr.mean()),
        float(eb_arr.mean()),
        float(d.mean()),
        low,
        high,
        a_better,
        b_better,
        int(d.size) - trials,
        float(p),
        skipped,
        failed_a,
        failed_b,
    )
