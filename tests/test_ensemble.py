"""The stacked ensemble: never fitted on validation labels, non-negative weights, reloads to the same guesses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appraiser.data.io import DataError, read_items
from appraiser.pricers import registry
from appraiser.pricers.base import Pricer
from appraiser.pricers.ensemble import nnls_with_intercept, parse_members

MEMBERS = "tfidf-ridge,constant-median,linear"


@pytest.fixture(scope="module")
def split(data_dir: Path):
    return read_items(data_dir / "train.jsonl", limit=600), read_items(data_dir / "validation.jsonl", limit=40)


def test_nnls_weights_are_non_negative_with_a_free_intercept():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = 2.0 * X[:, 0] - 1.0 * X[:, 1] + 5.0  # the second member is anti-correlated: its weight must be 0
    coef, intercept = nnls_with_intercept(X, y, np.ones(200))
    assert coef.min() >= 0 and coef[1] == 0
    coef, intercept = nnls_with_intercept(X[:, [0, 2]], 2.0 * X[:, 0] - 3.0, np.ones(200))
    assert coef == pytest.approx([2.0, 0.0], abs=1e-9) and intercept == pytest.approx(-3.0)


def test_members_parse_with_options():
    assert parse_members("xgboost, knn:k=20:aggregate=median") == [
        ("xgboost", {}),
        ("knn", {"k": 20, "aggregate": "median"}),
    ]
    with pytest.raises(ValueError):
        parse_members(" , ")


def test_ensemble_never_sees_validation_labels(split):
    """The same training draw with validation given, with its prices scrambled, or without it: the same fit."""
    train, val = split
    scrambled = [
        it.model_copy(update={"price": float(p)}) for it, p in zip(val, np.random.permutation(200), strict=False)
    ]
    fits = [registry.create("ensemble", members=MEMBERS, folds=3).fit(train, v) for v in (val, scrambled, None)]
    assert fits[0].weights_ == fits[1].weights_ == fits[2].weights_
    guesses = [[p.price for p in e.predict(val)] for e in fits]
    assert guesses[0] == guesses[1] == guesses[2]
    assert all(w >= 0 for w in fits[0].weights_.values())
    assert set(fits[0].weights_) == set(fits[0].labels)


def test_ensemble_saves_reloads_and_predicts_the_same(split, tmp_path: Path):
    train, val = split
    e = registry.create("ensemble", members=MEMBERS, folds=3).fit(train)
    back = Pricer.load(e.save(tmp_path / "e.pkl"))
    assert back.weights_ == e.weights_ and back.config() == e.config()
    assert [p.price for p in back.predict(val)] == [p.price for p in e.predict(val)]
    assert [p.low for p in back.predict(val)] == [p.low for p in e.predict(val)]


def test_ensemble_and_members_carry_out_of_fold_intervals(split):
    train, val = split
    e = registry.create("ensemble", members=MEMBERS, folds=3, interval=0.8).fit(train)
    assert e.q_ > 0 and len(e.member_q_) == 3
    for p in e.predict(val):
        assert p.low < p.price < p.high
    ridge = e.member(0)  # the member refitted on all of train, with its own out-of-fold interval
    alone = registry.create("tfidf-ridge").fit(train)
    assert [p.price for p in ridge.predict(val)] == pytest.approx([p.price for p in alone.predict(val)])
    assert ridge.label == "tfidf-ridge+ci80:difficulty" and ridge.q_ == e.member_q_[0]  # the default scale


def test_interval_widths_scale_with_each_items_difficulty_by_default(split):
    """The default interval_scale="difficulty": the ensemble's and each member's half-width in log space is its q
    times the item's expected error (so widths differ by item); "none" gives every item the same width."""
    import math

    train, val = split
    e = registry.create("ensemble", members=MEMBERS, folds=3, interval=0.8).fit(train)
    assert e.config()["interval_scale"] == "difficulty" and len(e.member_scale_) == 3
    halves = [math.log(p.high / p.price) for p in e.predict(val)]
    z, spread = np.log([p.price for p in e.predict(val)]), e.member_log_prices(val).std(axis=1)
    assert halves == pytest.approx(list(e.q_ * e.scale_.predict(val, z, spread)))
    assert np.std(halves) > 0.01
    ridge = e.member(0)
    assert ridge.scale_ is e.member_scale_[0]
    ridge_halves = [math.log(p.high / p.price) for p in ridge.predict(val)]
    assert ridge_halves == pytest.approx(
        list(ridge.q_ * ridge.scale_.predict(val, np.log([p.price for p in ridge.predict(val)])))
    )
    plain = registry.create("ensemble", members=MEMBERS, folds=3, interval=0.8, interval_scale="none").fit(train)
    assert [math.log(p.high / p.price) for p in plain.predict(val)] == pytest.approx([plain.q_] * len(val))
    assert plain.weights_ == e.weights_  # the scale changes widths only, never the guesses
    assert [p.price for p in plain.predict(val)] == [p.price for p in e.predict(val)]
    with pytest.raises(DataError, match="interval scale"):
        registry.create("ensemble", members=MEMBERS, interval_scale="wide")


def test_an_ensemble_pickled_before_difficulty_scaling_prices_with_one_width(split):
    import math

    train, val = split
    e = registry.create("ensemble", members=MEMBERS, folds=3, interval=0.8, interval_scale="none").fit(train)
    for attr in ("interval_scale", "scale_", "member_scale_"):
        del e.__dict__[attr]  # as unpickled from a file written before these existed
    assert [math.log(p.high / p.price) for p in e.predict(val)] == pytest.approx([e.q_] * len(val))
    assert e.member(0).predict(val)[0].low is not None


def test_linear_combiner_reads_min_and_max(split):
    train, val = split
    e = registry.create("ensemble", members="tfidf-ridge,constant-median", folds=3, combine="linear").fit(train)
    assert set(e.weights_) == {"tfidf-ridge", "constant-median", "min", "max"}
    assert all(p.price is not None and p.price > 0 for p in e.predict(val))


def test_ensemble_refuses_match_weighting_and_unknown_members():
    from appraiser.data.io import DataError

    with pytest.raises(DataError, match="validation"):
        registry.create("ensemble", weighting="match")
    with pytest.raises(DataError):
        registry.create("ensemble", members="no-such-pricer")


@pytest.mark.slow  # the default suite's time budget; `python -m pytest -m slow` runs it
def test_the_out_of_fold_interval_keeps_its_level_on_held_out_pool_items(data_dir: Path):
    """Where the conformal promise applies (items drawn like the pool), the refitted ensemble's interval from
    its out-of-fold errors covers close to its level, though those errors came from models fitted on 2/3."""
    items = read_items(data_dir / "train.jsonl", limit=3000)
    order = np.random.default_rng(3).permutation(len(items))
    train, held = [items[i] for i in order[:2400]], [items[i] for i in order[2400:]]
    e = registry.create("ensemble", members=MEMBERS, folds=3, interval=0.8).fit(train)
    inside = [p.low <= it.price <= p.high for p, it in zip(e.predict(held), held, strict=True)]
    assert 0.75 <= float(np.mean(inside)) <= 0.85


def test_members_can_be_trained_the_way_the_combiner_is_fitted(split):
    """`member_weighting=true` hands the ensemble's weighting and categories to every member that takes them
    (a member's own option wins); `categories="benchmark"` names the release benchmark's 8 categories."""
    from appraiser.data.weighting import BENCHMARK_CATEGORIES

    train, _ = split
    e = registry.create(
        "ensemble",
        members="tfidf-ridge,linear:off_category_weight=1",
        folds=3,
        weighting="price_flat",
        categories="benchmark",
        off_category_weight=0,
        member_weighting=True,
    )
    assert e.categories == BENCHMARK_CATEGORIES
    ridge, linear = e._member(0), e._member(1)
    assert ridge.weighting == "price_flat" and ridge.categories == BENCHMARK_CATEGORIES
    assert ridge.off_category_weight == 0 and linear.off_category_weight == 1
    e.fit(train)
    in_benchmark = [it for it in train if it.category is None or it.category in BENCHMARK_CATEGORIES]
    assert e.fitted_[0].fit_info["n_train"] == len(in_benchmark) < len(train)
    assert e.fitted_[1].fit_info["n_train"] == len(train)
    plain = registry.create("ensemble", members="tfidf-ridge", folds=3, weighting="price_flat")._member(0)
    assert plain.weighting == "none"  # without member_weighting members keep their own defaults


def test_items_of_weight_zero_are_never_priced_out_of_fold(split):
    """With off_category_weight=0 an off-benchmark item enters neither the combiner nor the interval, so the
    folds do not price it (for an LLM member that is most of the cost)."""
    from appraiser.data.weighting import BENCHMARK_CATEGORIES

    train, _ = split
    e = registry.create("ensemble", members="tfidf-ridge", folds=3, categories="benchmark", off_category_weight=0)
    e.fit(train)
    off = np.array([it.category is not None and it.category not in BENCHMARK_CATEGORIES for it in train])
    assert off.any() and np.isnan(e.oof_[off]).all() and not np.isnan(e.oof_[~off]).any()
    assert np.isfinite(e.fit_info["oof_rmse_log"]) and e.q_ is not None


def test_the_combiner_can_be_fitted_on_the_rows_curated_like_the_benchmark(split):
    """`sources=benchmark, off_source_weight=0`: only the benchmark's own curation is priced out of fold and
    fits the combiner and the interval; members trained without it (no member_weighting) see the whole pool,
    and with it they inherit the sources too."""
    from appraiser.data.weighting import BENCHMARK_SOURCES

    train, _ = split
    curated = np.array([bool(it.source) and it.source.startswith(BENCHMARK_SOURCES) for it in train])
    e = registry.create("ensemble", members="tfidf-ridge", folds=3, sources="benchmark", off_source_weight=0)
    e.fit(train)
    assert curated.sum() >= 6 and np.isnan(e.oof_[~curated]).all() and not np.isnan(e.oof_[curated]).any()
    assert e.fitted_[0].fit_info["n_train"] == len(train) and e.config()["sources"] == list(BENCHMARK_SOURCES)
    inherited = registry.create(
        "ensemble", members="tfidf-ridge", sources="benchmark", off_source_weight=0, member_weighting=True
    )._member(0)
    assert inherited.sources == BENCHMARK_SOURCES and inherited.off_source_weight == 0
