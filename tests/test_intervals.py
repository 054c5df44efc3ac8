"""Split-conformal intervals: the quantile rule, coverage on exchangeable data, and the metrics that report it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from appraiser.data.io import read_items
from appraiser.evaluation.metrics import compute_metrics, interval_metrics
from appraiser.pricers import registry
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.conformal import Conformal, ConformalQuantile, weighted_quantile


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
    # by third of the guesses (11, 21, 45): one each; only the cheapest guess's interval holds its truth
    assert (m["interval_coverage_low"], m["interval_coverage_mid"], m["interval_coverage_high"]) == (1.0, 0.0, 0.0)
    six = interval_metrics([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [0] * 6, [0.5, 2.5, 9, 9, 0, 0])
    assert (six["interval_coverage_low"], six["interval_coverage_mid"], six["interval_coverage_high"]) == (0, 1, 0.5)
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


def test_difficulty_scaled_intervals_keep_the_level_with_a_width_per_item(data_dir: Path, tmp_path: Path):
    """scale="difficulty": the same marginal promise on exchangeable items, each item's half-width q·σ(item)."""
    items = read_items(data_dir / "train.jsonl", limit=3000)
    order = np.random.default_rng(1).permutation(len(items))
    train, test = [items[i] for i in order[:2400]], [items[i] for i in order[2400:]]
    c = Conformal(registry.create("tfidf-ridge"), level=0.8, seed=0, scale="difficulty").fit(train)
    preds = c.predict(test)
    inside = [p.low <= it.price <= p.high for p, it in zip(preds, test, strict=True)]
    assert 0.74 <= float(np.mean(inside)) <= 0.86
    halves = np.log([p.high / p.price for p in preds])
    assert halves == pytest.approx(c.q_ * c.scale_.predict(test, np.log([p.price for p in preds])))
    assert halves.std() > 0.05 and c.fit_info["interval_scale"] == "difficulty"
    back = Pricer.load(c.save(tmp_path / "c.pkl"))
    assert [p.low for p in back.predict(test[:20])] == [p.low for p in preds[:20]]
    with pytest.raises(ValueError, match="interval scale"):
        Conformal(registry.create("constant-median"), scale="wide")


def test_the_difficulty_model_learns_which_items_are_hard(data_dir: Path):
    """Errors that depend on the category and on the guess are learned from both; predictions never drop below
    a tenth of the mean error; a model fitted with the members' spread needs it to predict."""
    from appraiser.pricers.conformal import Difficulty, normalized_quantile

    items = [it for it in read_items(data_dir / "validation.jsonl") if it.category in ("Automotive", "Electronics")]
    z = np.log([it.price for it in items])
    hard = np.array([it.category == "Electronics" for it in items])
    errors = np.where(hard, 1.0, 0.2) + 0.05 * (z - z.mean())
    d = Difficulty().fit(items, z, errors)
    got = d.predict(items, z)
    assert got[hard].mean() > 3 * got[~hard].mean()
    assert got.min() >= 0.1 * errors.mean() - 1e-12
    assert np.corrcoef(got, errors)[0, 1] > 0.95
    q, model = normalized_quantile(items, z, errors, np.ones(len(items)), 0.8)
    assert 0.5 < q < 2.0 and isinstance(model, Difficulty)
    with pytest.raises(ValueError, match="spread"):
        Difficulty().fit(items, z, errors, spread=np.ones(len(items))).predict(items, z)


def test_conformal_rejects_a_bad_level():
    with pytest.raises(ValueError, match="between 0 and 1"):
        Conformal(registry.create("constant-median"), level=1.5)


# ------------------------------------------------------------ a distribution's own quantiles, and CQR


def test_a_beam_distribution_carries_its_quantiles_in_its_raw_text():
    from appraiser.inference.decode import QUANTILE_LEVELS, parse_quantiles, summarize

    d = summarize({"10": 0.2, "20": 0.2, "30": 0.4, "100": 0.2}, interval=0.8, greedy=None)
    qs = parse_quantiles(d.raw)
    assert qs == d.quantiles and len(qs) == len(QUANTILE_LEVELS) == 19
    assert (qs[1], qs[9], qs[17]) == (d.low, d.median, d.high)  # 10%, 50%, 90%: the 80% interval and the median
    assert qs == sorted(qs)
    assert d.cdf(20) == pytest.approx(0.4) and d.cdf(5) == 0.0 and d.cdf(1000) == pytest.approx(1.0)
    assert parse_quantiles("mean 12.00, median 12") is None and parse_quantiles(None) is None


def _z() -> np.ndarray:
    from scipy.stats import norm

    from appraiser.inference.decode import QUANTILE_LEVELS

    return norm.ppf(QUANTILE_LEVELS)


Z = _z()  # standard normal quantiles at 5%, 10%, …, 95%


def _lognormal_quantiles(centre: float, sigma: float) -> list[float]:
    return (centre * np.exp(sigma * Z)).tolist()


def test_reliability_is_nominal_for_truths_drawn_from_the_distribution_and_shows_overconfidence():
    from appraiser.evaluation.metrics import reliability

    rng = np.random.default_rng(0)
    centres = np.exp(rng.uniform(1, 6, 4000))
    truths = centres * np.exp(rng.normal(0, 0.5, 4000))
    calibrated = reliability(truths, [_lognormal_quantiles(c, 0.5) for c in centres])
    for level in (10, 50, 80, 90):
        assert calibrated[f"calib_cover_{level}"] == pytest.approx(level / 100, abs=0.03)
    assert sum(calibrated["pit_bins"]) == 4000 and max(calibrated["pit_bins"]) < 1.3 * 4000 / 20  # flat
    narrow = reliability(truths, [_lognormal_quantiles(c, 0.2) for c in centres])  # too sure of itself
    assert narrow["calib_cover_80"] < 0.5 and narrow["calib_error"] > calibrated["calib_error"]
    bins = narrow["pit_bins"]
    assert bins[0] + bins[-1] > 4 * (bins[9] + bins[10])  # the U shape of an overconfident model
    assert reliability([1.0], [None]) == {}


class _QuantilePricer(Pricer):
    """A real ridge model with a made-up, too narrow lognormal around its guess, reported like the beam does."""

    def __init__(self, sigma: float):
        self.ridge, self.sigma = registry.create("tfidf-ridge"), sigma

    def fit(self, train, validation=None):
        self.ridge.fit(train)
        return self

    def config(self):  # what it is, and so what the prediction cache may key it by
        return {"sigma": self.sigma, "ridge": self.ridge.config(), "fit": self.ridge.fit_info.get("data")}

    def predict(self, items):
        from appraiser.inference.decode import format_quantiles

        out = []
        for p in self.ridge.predict(items):
            qs = _lognormal_quantiles(p.price, self.sigma)
            out.append(Prediction(price=p.price, low=qs[1], high=qs[17], raw=f"x; {format_quantiles(qs)}"))
        return out


def test_cqr_corrects_an_overconfident_distribution_to_its_level(data_dir: Path):
    from appraiser.evaluation.evaluator import score

    items = read_items(data_dir / "train.jsonl", limit=3000)
    order = np.random.default_rng(2).permutation(len(items))
    train, cal, test = ([items[i] for i in order[a:b]] for a, b in ((0, 1800), (1800, 2400), (2400, 3000)))
    base = _QuantilePricer(sigma=0.2).fit(train)
    raw = score(test, base.predict(test), name="raw").metrics
    assert raw["interval_coverage"] < 0.6 and raw["calib_cover_80"] == raw["interval_coverage"]
    cqr = ConformalQuantile(base, level=0.8, max_calibration=600).fit(cal)  # needs no fit: prices cal only
    assert cqr.q_ > 0 and cqr.fit_info["calibration_items"] == 600
    got = score(test, cqr.predict(test), name="cqr").metrics
    assert 0.74 <= got["interval_coverage"] <= 0.86
    p, b = cqr.predict(test[:1])[0], base.predict(test[:1])[0]
    assert p.price == b.price and p.low == pytest.approx(b.low / math.exp(cqr.q_))
    assert cqr.label == f"{base.label}+cqr80"
    with pytest.raises(ValueError, match="quantile grid"):
        ConformalQuantile(base, level=0.85).fit(cal[:30])


def test_calibration_by_the_evaluator_is_the_same_and_cached(data_dir: Path, tmp_path):
    """`appraiser eval` calibrates a wrapper around a model it does not fit (an API model, a fine-tune) through
    `evaluate`, so the calibration items are cached: the same q as `fit`, quantiles intact, nothing asked twice."""
    from appraiser.data.io import write_items
    from appraiser.evaluation.evaluator import fit_and_evaluate
    from appraiser.evaluation.store import LeaderboardStore

    items = read_items(data_dir / "train.jsonl", limit=900)
    base = _QuantilePricer(sigma=0.2).fit(items[:600])
    asked = []
    predict = base.predict
    base.predict = lambda batch: asked.extend(batch) or predict(batch)
    pool = tmp_path / "pool.jsonl"
    write_items(items[600:850], pool)
    direct = ConformalQuantile(base, level=0.8, max_calibration=100).fit(read_items(pool))
    asked.clear()
    with LeaderboardStore(tmp_path / "lb.db") as store:
        for _ in range(2):
            cqr = ConformalQuantile(base, level=0.8, max_calibration=100)
            fit_and_evaluate(cqr, items[850:], train=pool, show=False, store=store, record=False)
            assert cqr.q_ == pytest.approx(direct.q_) and cqr.fit_info["calibration_items"] == 100
            assert len(asked) == 100 + 50  # calibration and test items, asked once: the second run reads the cache


def test_calibration_items_are_never_items_the_fine_tune_trained_on(data_dir: Path, tmp_path: Path):
    """The run's own draw (choose_items with its config's n_train, weighting and seed) is replayed and left out."""
    from appraiser.data.io import write_items
    from appraiser.pricers.conformal import calibration_split, trained_keys
    from appraiser.training.config import TrainConfig
    from appraiser.training.dataset import choose_items

    pool = read_items(data_dir / "train.jsonl", limit=400)
    write_items(pool, tmp_path / "pool.jsonl")
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    TrainConfig(train=tmp_path / "pool.jsonl", n_train=300, weighting="price_flat", seed=7).save(run / "config.json")

    class FineTuned:  # what the calibration reads of an llm pricer: its adapter folder
        adapter = run / "best"

    drawn = choose_items(pool, 300, "price_flat", 7)
    assert {it.id for it in drawn} <= trained_keys(FineTuned())
    cal, _ = calibration_split(FineTuned(), pool, 1.0, 300, 0, needs_fit=False)
    assert cal and not {it.id for it in cal} & {it.id for it in drawn}
    assert len(cal) == len({it.id for it in pool} - {it.id for it in drawn})  # fewer than asked: all that is left
    assert trained_keys(registry.create("constant-median")) == set()


def test_a_pool_that_changed_since_the_run_drew_from_it_is_refused(data_dir: Path, tmp_path: Path):
    """From a probe: replaying the seeded draw on a reordered pool gives other items, so items the model trained
    on passed as "unseen" calibration items. The run store's fingerprint of the drawn items tells."""
    import json
    import random

    from appraiser.data.io import write_items
    from appraiser.items import fingerprint
    from appraiser.pricers.conformal import trained_keys
    from appraiser.runs.store import RunStore
    from appraiser.training.config import TrainConfig
    from appraiser.training.dataset import choose_items

    pool = read_items(data_dir / "train.jsonl", limit=200)
    write_items(pool, tmp_path / "pool.jsonl")
    drawn = choose_items(pool, 50, "none", 7)
    record = RunStore().create(name="cal", config={"data_fingerprint": fingerprint(drawn)})
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    TrainConfig(train=tmp_path / "pool.jsonl", n_train=50, weighting="none", seed=7).save(run / "config.json")
    (run / "best" / "appraiser.json").write_text(json.dumps({"base_model": "smollm2-135m", "run_id": record.id}))

    class FineTuned:
        adapter = run / "best"

    assert {it.id for it in drawn} <= trained_keys(FineTuned())  # the pool as it was: fine
    random.Random(0).shuffle(pool)
    write_items(pool, tmp_path / "pool.jsonl")
    with pytest.raises(ValueError, match="changed since it drew its items"):
        trained_keys(FineTuned())


def test_the_evaluation_scores_and_charts_a_reported_distribution(data_dir: Path, tmp_path: Path):
    from appraiser.evaluation.charts import save_charts
    from appraiser.evaluation.evaluator import score

    items = read_items(data_dir / "train.jsonl", limit=700)
    base = _QuantilePricer(sigma=0.6).fit(items[:500])
    result = score(items[500:], base.predict(items[500:]), name="quantile-ridge")
    m = result.metrics
    assert m["calib_n"] == 200 and {f"calib_cover_{lv}" for lv in range(10, 100, 10)} <= m.keys()
    assert m["calib_cover_10"] <= m["calib_cover_50"] <= m["calib_cover_90"]
    paths = save_charts(result, tmp_path)
    assert {"quantile-ridge-calibration.png", "quantile-ridge-calibration.html"} <= {p.name for p in paths}
    plain = score(items[500:], registry.create("constant-median").fit(items[:500]).predict(items[500:]), name="c")
    assert "calib_n" not in plain.metrics
    assert not any("calibration" in p.name for p in save_charts(plain, tmp_path / "plain"))


def test_two_levels_never_share_a_label():
    from appraiser.pricers.conformal import Conformal, percent
    from appraiser.pricers.registry import create

    assert [percent(x) for x in (0.8, 0.95, 0.001, 0.004)] == ["80", "95", "0.1", "0.4"]
    labels = {Conformal(create("constant-mean"), level=level).label for level in (0.001, 0.004)}
    assert len(labels) == 2
