"""The blend of already-fitted pricers: weights from a held-aside slice, non-negative, saved and reloaded."""

from __future__ import annotations

import math

import pytest

from appraiser.data.io import read_items
from appraiser.pricers import registry
from appraiser.pricers.base import FunctionPricer, Pricer
from appraiser.pricers.blend import BlendPricer


@pytest.fixture(scope="module")
def pools(data_dir):
    items = read_items(data_dir / "train.jsonl", limit=1400)
    return items[:1000], items[1000:1300], read_items(data_dir / "validation.jsonl", limit=60)


def test_blend_learns_from_the_slice_and_reloads(pools, tmp_path):
    fit_on, blend_slice, test = pools
    tfidf = registry.create("tfidf-ridge").fit(fit_on)
    const = registry.create("constant-median").fit(fit_on)
    blend = BlendPricer([tfidf, const], interval=0.8).fit(blend_slice)
    assert set(blend.weights_) == {tfidf.label, const.label}
    assert all(w >= 0 for w in blend.weights_.values())
    assert blend.weights_[tfidf.label] > 0  # the text model carries information the constant does not
    assert sum(blend.weights_.values()) == pytest.approx(1.0) and blend.intercept_ == 0.0  # convex by default
    free = BlendPricer([tfidf, const], combine="nnls").fit(blend_slice)
    assert all(w >= 0 for w in free.weights_.values())
    # a convex blend never prices outside its members' range
    lows = [min(a.price, b.price) for a, b in zip(tfidf.predict(test), const.predict(test), strict=True)]
    highs = [max(a.price, b.price) for a, b in zip(tfidf.predict(test), const.predict(test), strict=True)]
    preds = blend.predict(test)
    assert all(p.price and p.low < p.price < p.high for p in preds)
    assert all(lo * 0.999 <= p.price <= hi * 1.001 for p, lo, hi in zip(preds, lows, highs, strict=True))
    # the interval's quantile is the slice's own residual quantile: about 80% of the slice lies inside
    inside = [p.low <= it.price <= p.high for p, it in zip(blend.predict(blend_slice), blend_slice, strict=True)]
    assert 0.78 <= sum(inside) / len(inside) <= 0.84
    again = Pricer.load(blend.save(tmp_path / "blend.pkl"))
    assert [p.price for p in again.predict(test)] == pytest.approx([p.price for p in preds])


def test_a_useless_member_gets_no_weight(pools):
    fit_on, blend_slice, _ = pools
    tfidf = registry.create("tfidf-ridge").fit(fit_on)
    noise = FunctionPricer(lambda it: 1.0 + (hash(it.id) % 997), name="noise")
    blend = BlendPricer([tfidf, noise]).fit(blend_slice)
    assert blend.weights_["noise"] < 0.05 < blend.weights_[tfidf.label]


def test_failed_members_and_bad_input():
    with pytest.raises(ValueError, match="at least one member"):
        BlendPricer([])
    always_none = FunctionPricer(lambda it: None, name="none")
    from appraiser.items import Item

    items = [Item(id=f"i{i}", text=f"thing {i}", price=10.0 + i) for i in range(8)]
    half = FunctionPricer(lambda it: it.price * 1.1, name="close")
    blend = BlendPricer([half, always_none]).fit(items)
    preds = blend.predict(items)
    assert all(math.isclose(p.price, it.price, rel_tol=0.2) for p, it in zip(preds, items, strict=True))
    with pytest.raises(ValueError, match="too few"):
        BlendPricer([half, always_none]).fit(items[:3])
