"""Split-conformal intervals: the quantile rule, coverage on exchangeable data, and the metrics that report it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from appraiser.data.io import read_items
from appraiser.evaluation.metrics import compute_metrics, interval_metrics
from appraiser.pricers import registry
from appraiser.pricers.conformal import Conformal, weighted_quantile


def test_weighted_quantile_is_the_conformal_rank():
    v = np.arange(1, 11, dtype=float)  # 10 scores: the 80% conformal quantile is the ceil(0.8 * 11) = 9th
    assert weighted_quantile(v, np.ones(10), 0.8) == 9.0
    assert weighted_quantile(v, np.ones(10), 0.5) == 6.0
    w = np.ones(10)
    w[-1] = 100.0  # nearly all weight on the largest score
    assert weighted_quantile(v, w, 0.5) == 10.0


def test_interval_metrics_count_inside_and_width():
    m = interval_metrics([10, 20, 30, 40], [11, 21, None, 45], [9, 21, 1, 41], [12, 25, 99, 50])
    assert m["interval_n"] == 3  # the failure has no interval that counts
    assert m["interval_coverage"] == pytest.approx(1 / 3)  # 10 in [9, 12]; 20 < 21; 40 < 41
    assert m["interval_width"] == pytest.approx((3 + 4 + 9) / 3)
    assert "interval_coverage" not in compute_metrics([1.0, 2.0], [1.0, 2.0])  # no intervals: no columns
    assert compute_metrics([1.0], [1.0], lows=[None], highs=[None]).keys() == compute_metrics([1.0], [1.0]).keys()


def test_conformal_covers_its_level_on_items_drawn_like_the_calibration(data_dir: Path):
    """Calibrated on pool items, scored on other pool items (the exchangeable case split conformal promises):
    coverage lands within a few points of the level, and the prices are the base pricer's own."""
    items = read_items(data_dir / "train.jsonl", limit=3000)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(items))
    train, test = [items[i] for i in order[:2400]], [items[i] for i in order[2400:]]
    c = Conformal(registry.create("tfidf-ridge"), level=0.8, seed=0).fit(train)
    preds = c.predict(test)
    inside = [p.low <= it.price <= p.high for p, it in zip(preds, test, strict=True)]
    assert 0.74 <= float(np.mean(inside)) <= 0.86
    plain = registry.create("tfidf-ridge").fit(train).predict(test[:20])
    assert [p.price for p in preds[:20]] == pytest.approx([p.price for p in plain])
    p = preds[0]
    assert math.log(p.high / p.price) == pytest.approx(c.q_) and math.log(p.price / p.low) == pytest.approx(c.q_)
    assert c.label == "tfidf-ridge+ci80"


def test_conformal_rejects_a_bad_level():
    with pytest.raises(ValueError, match="between 0 and 1"):
        Conformal(registry.create("constant-median"), level=1.5)
