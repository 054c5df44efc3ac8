"""Metrics and colour bands pinned on hand-computed cases; the bootstrap CI on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from appraiser.evaluation.evaluator import ItemResult
from appraiser.evaluation.metrics import bootstrap_mean_ci, colour, compute_metrics, squared_log_error


@pytest.mark.parametrize(
    ("guess", "truth", "expected"),
    [
        (100.0, 100.0, "green"),
        (139.99, 100.0, "green"),  # $39.99 < $40
        (140.0, 100.0, "orange"),  # exactly $40 (and 40% > 20%): not green
        (60.0, 100.0, "orange"),  # errors count both ways
        (179.99, 100.0, "orange"),
        (180.0, 100.0, "red"),  # exactly $80 and exactly 80%: red
        (599.0, 500.0, "green"),  # $99 < 20% of $500
        (600.0, 500.0, "orange"),  # exactly 20% of $500 ($100): not green; < 40%
        (699.0, 500.0, "orange"),
        (700.0, 500.0, "red"),  # exactly 40% of $500 ($200) and >= $80
        (0.0, 39.0, "green"),  # a $39 miss on a cheap item is under $40
        (1000.0, 1.0, "red"),
        (None, 100.0, "failed"),
        (float("nan"), 100.0, "failed"),
    ],
)
def test_colour_bands_and_boundaries(guess, truth, expected):
    assert colour(guess, truth) == expected


def test_metrics_on_a_hand_computed_case():
    truths = [100.0, 200.0, 50.0, 10.0]
    guesses = [110.0, 150.0, None, 10.0]
    m = compute_metrics(truths, guesses)
    # Scored items: errors 10, 50, 0 (the failure on the $50 item is counted, not scored).
    assert m["n"] == 4
    assert m["failures"] == 1
    assert m["coverage"] == pytest.approx(0.75)
    assert m["mae"] == pytest.approx(20.0)
    assert m["median_ae"] == pytest.approx(10.0)
    assert m["mse"] == pytest.approx((100 + 2500 + 0) / 3)
    sle = [(math.log(111) - math.log(101)) ** 2, (math.log(151) - math.log(201)) ** 2, 0.0]
    assert m["rmsle"] == pytest.approx(math.sqrt(sum(sle) / 3))
    # R² over the scored items: truths 100, 200, 10 (mean 103.33), SS_res = 2600.
    ss_tot = (100 - 310 / 3) ** 2 + (200 - 310 / 3) ** 2 + (10 - 310 / 3) ** 2
    assert m["r2"] == pytest.approx(1 - 2600 / ss_tot)
    # Green: $10 on $100 and $0 on $10; orange: $50 on $200 (not < $40, not < 20%); one failure.
    assert m["hit_rate"] == pytest.approx(2 / 4)
    assert m["mae_ci_low"] <= m["mae"] <= m["mae_ci_high"]
    assert 0 <= m["mae_ci_low"] and m["mae_ci_high"] <= 50


def test_perfect_guesses():
    m = compute_metrics([5.0, 50.0, 500.0], [5.0, 50.0, 500.0])
    assert m["mae"] == 0 and m["rmsle"] == 0 and m["r2"] == 1 and m["hit_rate"] == 1 and m["failures"] == 0


def test_all_failures_score_nothing_but_count():
    m = compute_metrics([10.0, 20.0], [None, float("nan")])
    assert m["failures"] == 2 and m["coverage"] == 0 and m["hit_rate"] == 0
    assert math.isnan(m["mae"]) and math.isnan(m["rmsle"])


def test_negative_guess_is_clipped_for_log_metrics():
    m = compute_metrics([9.0], [-5.0])
    assert m["mae"] == pytest.approx(14.0)
    assert m["rmsle"] == pytest.approx(math.log(10))
    assert squared_log_error(-5.0, 9.0) == pytest.approx(math.log(10) ** 2)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        compute_metrics([1.0, 2.0], [1.0])


def test_item_result_properties():
    r = ItemResult("a", "t", "c", truth=100.0, guess=150.0)
    assert r.error == 50.0 and r.color == "orange"
    assert r.sle == pytest.approx((math.log(151) - math.log(101)) ** 2)
    f = ItemResult("b", None, None, truth=100.0, guess=None, raw="no idea")
    assert f.failed and f.error is None and f.sle is None and f.color == "failed"


def test_bootstrap_ci_on_a_known_normal_distribution():
    # (A 95% CI misses the true mean one sample in 20; this fixed sample is one of the 19 — the
    # coverage test below checks the rate itself.)
    rng = np.random.default_rng(1)
    mu, sigma, n = 50.0, 10.0, 2000
    x = rng.normal(mu, sigma, n)
    low, high = bootstrap_mean_ci(x, n_resamples=2000, seed=0)
    assert low < x.mean() < high
    assert low < mu < high
    expected_width = 2 * 1.96 * sigma / math.sqrt(n)
    assert high - low == pytest.approx(expected_width, rel=0.15)
    # Seeded: the same input gives the same interval.
    assert bootstrap_mean_ci(x, n_resamples=2000, seed=0) == (low, high)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    mu, trials = 3.0, 200
    hits = 0
    for t in range(trials):
        x = rng.exponential(mu, 200)  # skewed, like absolute errors
        low, high = bootstrap_mean_ci(x, n_resamples=1000, seed=t)
        hits += low < mu < high
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    assert bootstrap_mean_ci([7.0]) == (7.0, 7.0)
    assert bootstrap_mean_ci([3.0] * 50) == pytest.approx((3.0, 3.0))
