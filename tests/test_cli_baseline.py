"""`appraiser baseline` end to end through `appraiser.cli.app`, on real train and validation items."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import read_items, write_items
from appraiser.evaluation import LeaderboardStore, load_test_items
from appraiser.items import fingerprint
from appraiser.pricers.base import Pricer

runner = CliRunner()


@pytest.fixture(scope="module")
def train_file(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-baseline") / "train.jsonl"
    write_items(read_items(data_dir / "train.jsonl")[::20], path)  # ~780 items from every source
    return path


def test_list_names_every_baseline_with_a_description():
    result = runner.invoke(app, ["baseline", "--list"])
    assert result.exit_code == 0, result.output
    for name in ("random", "constant-median", "linear", "tfidf-ridge", "xgboost", "knn-embed", "mlp"):
        assert name in result.output
    assert "nearest" in result.output  # descriptions are shown


def test_fit_evaluate_record_save_and_write_predictions(data_dir, train_file, tmp_path):
    out = tmp_path / "preds.jsonl"
    model = tmp_path / "linear.pkl"
    args = ["baseline", "linear", "--train", str(train_file), "--test", str(data_dir / "validation.jsonl")]
    args += ["--size", "30", "--predictions", str(out), "--save", str(model), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fit " in result.output and "predict " in result.output

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    test_items = load_test_items(data_dir / "validation.jsonl", 30)
    assert [r["id"] for r in rows] == [it.id for it in test_items]
    assert [r["truth"] for r in rows] == [it.price for it in test_items]
    assert all(isinstance(r["price"], float) and r["price"] > 0 for r in rows)
    assert {"low", "high", "raw"} <= set(rows[0])

    reloaded = Pricer.load(model)  # the saved model gives the same guesses
    assert [p.price for p in reloaded.predict(test_items)] == [r["price"] for r in rows]

    with LeaderboardStore() as store:
        board = store.rows(fingerprint(test_items))
    assert [r.label for r in board] == ["linear"]
    assert board[0].metrics["mae"] == pytest.approx(sum(abs(r["price"] - r["truth"]) for r in rows) / len(rows))


def test_weighting_and_target_flags_reach_the_label_and_default_model_path(data_dir, train_file, tmp_path):
    args = ["baseline", "constant-median", "--train", str(train_file), "--test", str(data_dir / "validation.jsonl")]
    args += ["--size", "10", "--weighting", "match", "--target", "log", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    label = "constant-median[target=log,weighting=match]"
    assert label in result.output
    from appraiser import config

    saved = list((config.home() / "models").glob("*.pkl"))
    assert len(saved) == 1 and Pricer.load(saved[0]).label == label


@pytest.mark.parametrize(
    "args, message",
    [
        (["baseline", "no-such-model"], "unknown baseline"),
        (["baseline", "linear", "--weighting", "flat"], "weighting"),
        (["baseline", "linear", "-o", "n_trees=3"], "unknown option"),
        (["baseline"], "name a baseline"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_switch_written_false_is_off():
    """`-o chars=False` stayed the text "False", which is true, so the option turned the feature on."""
    from appraiser.data.io import DataError
    from appraiser.pricers import registry

    for off in ("False", "false", "no", "off", "0", False):
        assert registry.create("tfidf-ridge", chars=off).params["chars"] is False, off
    assert registry.create("tfidf-ridge", chars="yes").params["chars"] is True
    with pytest.raises(DataError, match="chars"):
        registry.create("tfidf-ridge", chars="maybe")
