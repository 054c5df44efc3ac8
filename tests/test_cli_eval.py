"""The evaluation commands end to end through `appraiser.cli.app`, on real validation and train items."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import read_items, write_items
from appraiser.evaluation import LeaderboardStore, load_test_items
from appraiser.items import Item, fingerprint
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.registry import register

runner = CliRunner()


@register("test-train-mean", "Test only: the training mean.", kind="other", needs_fit=True)
class TrainMeanPricer(Pricer):
    name = "test-train-mean"

    def __init__(self, shrink: float = 1.0):
        self.shrink = shrink
        self.mean: float | None = None

    def fit(self, train: Sequence[Item], validation=None):
        self.mean = sum(it.price for it in train) / len(train) * self.shrink
        self.n_validation = len(validation) if validation is not None else None
        return self

    def config(self):
        return {"shrink": self.shrink}

    @property
    def label(self):
        return self.name if self.shrink == 1.0 else f"{self.name}[shrink={self.shrink}]"

    def predict(self, items):
        return [Prediction(price=self.mean) for _ in items]


@register("test-length", "Test only: price from text length.", kind="other", needs_fit=False)
class LengthPricer(Pricer):
    name = "test-length"

    def predict(self, items):
        return [Prediction(price=len(it.text) / 10) for it in items]


@pytest.fixture(scope="module")
def files(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-data")
    train = read_items(data_dir / "train.jsonl", limit=300)
    write_items(train, d / "train.jsonl")
    return {"test": data_dir / "validation.jsonl", "train": d / "train.jsonl", "train_items": train}


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_eval_fits_evaluates_records_and_writes_files(files, tmp_path):
    preds, charts, saved = tmp_path / "p.jsonl", tmp_path / "charts", tmp_path / "model.pkl"
    r = run(
        "eval",
        "test-train-mean",
        "--test",
        files["test"],
        "--size",
        "20",
        "--train",
        files["train"],
        "--predictions",
        preds,
        "--charts",
        charts,
        "--save",
        saved,
    )
    assert r.exit_code == 0, r.output
    assert "fitting test-train-mean on 300 items" in r.output and "MAE" in r.output
    mean = sum(it.price for it in files["train_items"]) / 300
    test = load_test_items(files["test"], 20)
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["id"] for x in lines] == [it.id for it in test]
    assert all(x["price"] == pytest.approx(mean) for x in lines)
    assert len(list(charts.glob("*.png"))) == 3 and len(list(charts.glob("*.html"))) == 3
    store = LeaderboardStore()
    row = store.latest("test-train-mean", fingerprint(test))
    assert row.metrics["mae"] == pytest.approx(sum(abs(it.price - mean) for it in test) / 20)
    store.close()

    assert Pricer.load(saved).n_validation is None

    # The saved model evaluates again without fitting.
    r = run("eval", "--model", saved, "--test", files["test"], "--size", "20", "--name", "reloaded")
    assert r.exit_code == 0, r.output
    assert "fitting" not in r.output
    store = LeaderboardStore()
    assert store.latest("reloaded").metrics["mae"] == pytest.approx(row.metrics["mae"])
    store.close()


def test_eval_options_and_no_record(files, tmp_path):
    db = tmp_path / "lb.db"
    r = run(
        "eval",
        "test-train-mean",
        "-o",
        "shrink=0.5",
        "--test",
        files["test"],
        "--size",
        "10",
        "--train",
        files["train"],
        "--db",
        db,
    )
    assert r.exit_code == 0, r.output
    store = LeaderboardStore(db)
    assert store.rows()[0].label == "test-train-mean[shrink=0.5]" and store.rows()[0].config == {"shrink": 0.5}
    r = run(
        "eval",
        "test-train-mean",
        "--test",
        files["test"],
        "--size",
        "10",
        "--train",
        files["train"],
        "--validation",
        files["train"],
        "--save",
        tmp_path / "m.pkl",
        "--no-record",
    )
    assert r.exit_code == 0, r.output
    assert Pricer.load(tmp_path / "m.pkl").n_validation == 300  # --validation reaches fit()
    r = run("eval", "test-length", "--test", files["test"], "--size", "10", "--db", db, "--no-record")
    assert r.exit_code == 0, r.output
    assert len(store.rows()) == 1
    store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "no-such-pricer", "--size", "5"], "unknown pricer"),
        (["eval", "test-length", "--test", "/nonexistent/test.jsonl"], "no such file"),
        (["eval", "test-length", "--size", "100000"], "holds 500"),
        (["eval", "--model", "/nonexistent/model.pkl"], "no such saved pricer"),
        (["eval", "test-length", "-o", "nonsense"], "bad option"),
        (["compare", "nobody", "nothing"], "no evaluation named"),
        (["eval", "test-length", "--interval", "0.8", "--interval-scale", "wide"], "--interval-scale must be"),
        (["eval", "test-length", "--interval-scale", "difficulty"], "add --interval"),  # was silently ignored
        (["leaderboard", "--db", "/nonexistent/typo.db"], "no such leaderboard database"),  # was created empty
    ],
)
def test_bad_input_is_one_line_and_exit_2(files, args, message):
    if "--test" not in args:
        args += ["--test", str(files["test"])]
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:")


def test_eval_with_a_difficulty_scaled_interval(files, tmp_path):
    """--interval 0.8 --interval-scale difficulty: coverage and width join the summary, and each item's interval
    has its own width in log space."""
    preds = tmp_path / "p.jsonl"
    r = run("eval", "tfidf-ridge", "--test", files["test"], "--size", "30", "--train", files["train"], "--interval",
            "0.8", "--interval-scale", "difficulty", "--predictions", preds, "--db", tmp_path / "lb.db")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "coverage" in r.output.lower()
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    halves = {round(math.log(x["high"] / x["price"]), 6) for x in lines}
    assert len(lines) == 30 and len(halves) > 10


def test_leaderboard_ranks_one_test_set_and_charts_it(files, tmp_path):
    for args in (["test-length"], ["test-train-mean", "--train", files["train"]]):
        assert run("eval", *args, "--test", files["test"], "--size", "30").exit_code == 0
    assert run("eval", "test-length", "--test", files["test"], "--size", "12", "--name", "other-set").exit_code == 0

    r = run("leaderboard", "--test", files["test"], "--size", "30", "--charts", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert "test-length" in r.output and "test-train-mean" in r.output and "other-set" not in r.output
    fp30 = fingerprint(load_test_items(files["test"], 30))
    fp12 = fingerprint(load_test_items(files["test"], 12))
    assert fp30 in r.output and fp12 in r.output  # the other set is named, not mixed in
    assert (tmp_path / "c" / f"leaderboard-{fp30}.png").stat().st_size > 1000
    assert (tmp_path / "c" / f"leaderboard-{fp30}.html").stat().st_size > 1000
    # Ranked by MAE.
    store = LeaderboardStore()
    maes = {r.label: r.metrics["mae"] for r in store.rows(fp30)}
    store.close()
    first, second = sorted(maes, key=maes.get)
    assert r.output.index(first) < r.output.index(second)

    r = run("leaderboard")  # default: the most recent test set
    assert r.exit_code == 0 and "other-set" in r.output and "test-train-mean" not in r.output


def test_compare_prints_the_paired_difference(files):
    for args in (["test-length"], ["test-train-mean", "--train", files["train"]]):
        assert run("eval", *args, "--test", files["test"], "--size", "40").exit_code == 0
    r = run("compare", "test-length", "test-train-mean", "--test", files["test"], "--size", "40")
    assert r.exit_code == 0, r.output
    assert "40 shared items" in r.output and "sign test p-value" in r.output and "95% CI" in r.output


def test_human_export_then_import(files, tmp_path):
    out = tmp_path / "human.csv"
    r = run("human", "export", "--test", files["test"], "--n", "10", "--out", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    test = load_test_items(files["test"], 10)
    assert [x["id"] for x in rows] == [it.id for it in test]
    assert all(x["price"] == "" for x in rows) and rows[0]["text"] == test[0].text
    guesses = ["$100", "50", "", "about 20 dollars", "1,000", "?", "75.5", "10", "10", "10"]
    for x, g in zip(rows, guesses, strict=True):
        x["price"] = g
    with out.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    again = run("human", "export", "--test", files["test"], "--n", "10", "--out", out)  # a slip of the shell
    assert again.exit_code == 2 and "exists" in again.output and "about 20 dollars" in out.read_text()
    r = run("human", "import", out, "--test", files["test"], "--minutes", "12")
    assert r.exit_code == 0, r.output
    store = LeaderboardStore()
    row = store.latest("human")
    assert row.test_fingerprint == fingerprint(test)  # same set as `eval --size 10`
    assert row.metrics["failures"] == 2 and row.metrics["n"] == 10 and row.seconds == 720
    values = [100, 50, None, 20, 1000, None, 75.5, 10, 10, 10]
    assert [p.guess for p in store.predictions(row.run_id)] == values
    errs = [abs(v - it.price) for v, it in zip(values, test, strict=True) if v is not None]
    assert row.metrics["mae"] == pytest.approx(sum(errs) / len(errs))
    store.close()


def test_import_predictions_by_id_and_text(files, tmp_path):
    test = load_test_items(files["test"], 20)
    path = tmp_path / "external.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "text", "prediction"])
        for i, it in enumerate(test[:15]):  # 10 by id, 5 by text only; 5 items get no guess
            w.writerow([it.id if i < 10 else "", it.text if i >= 10 else "", f"{it.price + 10:.2f}"])
        w.writerow(["not-a-test-item", "", "5"])
    r = run(
        "import-predictions",
        path,
        "--name",
        "other-tool",
        "--test",
        files["test"],
        "--size",
        "20",
        "--predictions",
        tmp_path / "as.jsonl",
    )
    assert r.exit_code == 0, r.output
    assert "matched 10 rows by id and 5 by text" in r.output and "1 rows match no test item" in r.output
    store = LeaderboardStore()
    row = store.latest("other-tool", fingerprint(test))
    assert row.metrics["failures"] == 5 and row.metrics["mae"] == pytest.approx(10.0)
    store.close()

    # Appraiser's own predictions JSONL imports too (the interchange format round-trips).
    r = run(
        "import-predictions", tmp_path / "as.jsonl", "--name", "round-trip", "--test", files["test"], "--size", "20"
    )
    assert r.exit_code == 0, r.output
    store = LeaderboardStore()
    again = store.latest("round-trip")
    assert again.metrics == row.metrics
    store.close()


def test_import_rejects_files_it_cannot_read(files, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,comment\nx,hello\n")
    r = run("import-predictions", bad, "--name", "x", "--test", files["test"])
    assert r.exit_code == 2 and "no price column" in r.output
    nomatch = tmp_path / "nomatch.csv"
    nomatch.write_text("id,price\nx,5\n")
    r = run("import-predictions", nomatch, "--name", "x", "--test", files["test"])
    assert r.exit_code == 2 and "none of its 1 rows match" in r.output
