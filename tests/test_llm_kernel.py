"""`llm-kernel`: a frozen LLM's features read by kernel ridge; features cached once per prompt; reloads the same.

Real items and the real SmolLM2-135M (the smaller packaged model; the default is Gemma-3-270M).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appraiser.data.io import read_items
from appraiser.pricers import registry
from appraiser.pricers.base import Pricer

OPTIONS = {"model": "smollm2-135m", "max_text_tokens": 48}


@pytest.fixture(scope="module")
def items(data_dir: Path):
    train = read_items(data_dir / "train.jsonl", limit=60)
    test = read_items(data_dir / "validation.jsonl", limit=8)
    return train, test


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def fitted(items, cache):
    train, _ = items
    return registry.create("llm-kernel", cache_dir=cache, **OPTIONS).fit(train)


def test_fits_a_kernel_read_out_and_prices_every_item(fitted, items):
    train, test = items
    assert fitted.fit_info["support"] == len(train) and fitted.alpha_ > 0
    prices = [p.price for p in fitted.predict(test)]
    assert all(p is not None and 0.5 <= p <= 999.49 for p in prices)
    assert len(set(prices)) > 1  # it reads the items, not a constant
    # in-sample it is closer than the mean: the read-out learned something from the features
    truth = np.log([it.price for it in train])
    fit = np.log([p.price for p in fitted.predict(train)])
    assert np.mean(np.abs(fit - truth)) < np.mean(np.abs(truth.mean() - truth))


def test_a_second_fit_reads_the_cached_features_and_never_loads_the_model(fitted, items, cache):
    train, test = items
    again = registry.create("llm-kernel", cache_dir=cache, **OPTIONS).fit(train[:40])
    assert again._cache()._model is None  # every prompt was in the cache
    assert np.allclose(again.features(test), fitted.features(test), atol=1e-6)


def test_saved_and_reloaded_it_predicts_the_same(fitted, items, tmp_path):
    _, test = items
    back = Pricer.load(fitted.save(tmp_path / "k.pkl"))
    assert back.config() == fitted.config()
    assert [p.price for p in back.predict(test)] == pytest.approx([p.price for p in fitted.predict(test)], rel=1e-6)


def test_max_items_keeps_a_weighted_draw(items, cache):
    train, _ = items
    p = registry.create("llm-kernel", cache_dir=cache, max_items=25, seed=3, **OPTIONS).fit(train)
    assert p.fit_info["support"] == 25


def test_bf16_and_fp32_features_never_share_a_cache_file(monkeypatch, tmp_path):
    from appraiser.pricers.readout import FeatureCache

    paths = {}
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv("APPRAISER_DTYPE", forced)
        paths[forced] = FeatureCache("smollm2-135m", "mean", tmp_path).path
    assert paths["fp32"].name == "features-smollm2-135m-mean.sqlite"
    assert paths["bf16"].name == "features-smollm2-135m-mean-bfloat16.sqlite"
