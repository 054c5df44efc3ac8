"""Appraiser as a notebook uses it (found by a probe of the Python API): its own Pricer subclasses, items as
dicts, the fixed test set, a short repr, and a notebook's torch random state."""

from __future__ import annotations

from pathlib import Path

import pytest

import appraiser
from appraiser.data.io import read_items, write_items
from appraiser.evaluation.evaluator import DEFAULT_TEST_SIZE, load_test_items
from appraiser.items import Item
from appraiser.pricers import registry
from appraiser.pricers.base import Prediction, Pricer


class Hundred(Pricer):
    def predict(self, items):
        return [Prediction(price=100.0) for _ in items]


class Ten(Pricer):
    def predict(self, items):
        return [Prediction(price=10.0) for _ in items]


def test_a_notebooks_own_pricer_is_never_served_another_ones_cached_guesses(data_dir: Path):
    """Both have the base label and config(): the cache took Ten for Hundred, even in a fresh process."""
    test = read_items(data_dir / "validation.jsonl", limit=4)
    assert appraiser.evaluate(Hundred(), test, show=False, record=False).guesses == [100.0] * 4
    again = appraiser.evaluate(Ten(), test, show=False, record=False)
    assert again.guesses == [10.0] * 4 and again.cached == 0


def test_a_folder_means_the_fixed_test_set_and_a_result_reads_in_one_line(data_dir: Path):
    result = appraiser.evaluate(lambda it: 50.0, data_dir / "validation.jsonl", show=False, record=False)
    assert result.test_fingerprint == appraiser.items.fingerprint(load_test_items(data_dir / "validation.jsonl"))
    assert len(result.results) == DEFAULT_TEST_SIZE
    assert len(appraiser.evaluate(lambda it: 50.0, data_dir, size=0, show=False, record=False).results) > 250
    text = repr(result)
    assert text.startswith("<EvalResult <lambda>: MAE $") and "on 250 items" in text and len(text) < 200


def test_items_as_dicts_a_generator_or_one_item(data_dir: Path, tmp_path: Path):
    train = read_items(data_dir / "train.jsonl", limit=40)
    test = read_items(data_dir / "validation.jsonl", limit=3)
    model = registry.create("constant-mean").fit(it.model_dump() for it in train)  # a generator of records
    assert [p.price for p in model.predict([it.model_dump() for it in test])] == [p.price for p in model.predict(test)]
    with pytest.raises(TypeError, match="got one Item"):
        model.predict(test[0])
    with pytest.raises(TypeError, match=r"test items\[0\]: expected an Item"):
        appraiser.evaluate(lambda it: 1.0, [42], show=False, record=False)
    assert write_items([it.model_dump() for it in test], tmp_path / "t.jsonl") == 3
    assert read_items(tmp_path / "t.jsonl") == test
    with pytest.raises(TypeError, match="expected Items"):
        write_items(["not an item"], tmp_path / "u.jsonl")


def test_a_function_may_return_the_models_text_and_anything_else_is_named():
    item = Item(id="x", text="a thing", price=10.0)
    got = appraiser.evaluate(lambda it: "Price is $12.50", [item], show=False, record=False)
    assert got.guesses == [12.5]
    with pytest.raises(TypeError, match="returned dict for item x"):
        appraiser.evaluate(lambda it: {"price": 1}, [item], show=False, record=False)


def test_fitting_the_mlp_keeps_the_notebooks_torch_random_state(data_dir: Path):
    import torch

    train = read_items(data_dir / "train.jsonl", limit=30)
    torch.manual_seed(1234)
    expected = torch.rand(1).item()
    torch.manual_seed(1234)
    registry.create("mlp", epochs=1, n_features=256, hidden=8).fit(train)
    assert torch.rand(1).item() == expected
