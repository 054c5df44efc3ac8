"""Guesses from outside Appraiser: how a person writes a price, which column holds it, and files that must not
be scored (found by a probe: "2k" was scored as $2, an unfilled export replaced a real score on the board)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import DataError
from appraiser.evaluation import LeaderboardStore, load_test_items
from appraiser.evaluation.human import read_guesses, to_prediction

runner = CliRunner()


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2k", 2000.0),
        ("1.5k", 1500.0),
        ("100K", 100_000.0),
        ("1 000", 1000.0),
        ("1\u00a0299.50", 1299.5),
        ("1.299,00", 1299.0),  # a European decimal comma
        ("1,5", 1.5),
        ("1,299", 1299.0),  # US thousands stay thousands
        ("between 20 and 30", 25.0),
        ("$20-$30", 25.0),
        ("20 to 30", 25.0),
        ("Price is $45.00", 45.0),
        ("45.00 USD", 45.0),
        ("45 (was 50)", None),  # two numbers that are no range: which one was meant?
        ("30-20", None),
        ("k", None),
        ("n/a", None),
    ],
)
def test_a_guess_is_read_whole_or_not_at_all(cell, expected):
    got = to_prediction(cell)
    assert got.price == (pytest.approx(expected) if expected is not None else None)
    assert got.raw == cell


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_the_filled_price_column_is_the_guess_and_two_filled_ones_are_refused(tmp_path):
    # The exported `price` column left empty and the guesses typed into a column of one's own.
    path = _csv(tmp_path / "h.csv", ["id", "price", "guess"], [["a", "", "12"], ["b", "", "30"]])
    assert [g.value for g in read_guesses(path)] == ["12", "30"]
    # A JSONL whose lines name the guess differently.
    jl = tmp_path / "h.jsonl"
    jl.write_text('{"id": "a", "price": 12}\n{"id": "b", "guess": 30}\n')
    assert [g.value for g in read_guesses(jl)] == [12, 30]
    # Two columns that disagree: either could be the one meant.
    both = _csv(tmp_path / "both.csv", ["id", "price", "estimate"], [["a", "12", "12"], ["b", "30", "35"]])
    with pytest.raises(DataError, match=r"both.csv:3: two price columns hold values .*keep one"):
        read_guesses(both)


def test_a_jsonl_line_that_cannot_be_read_refuses_the_file(tmp_path):
    """Its item would have dropped out of the human's score, which covers only the items the file names."""
    path = tmp_path / "g.jsonl"
    path.write_text('{"id": "a", "price": 12}\n{"id": "b", "price": \n{"id": "c", "price": 5}\n')
    with pytest.raises(DataError, match=r"g.jsonl:2: malformed JSON.*nothing was recorded"):
        read_guesses(path)


def test_a_file_without_one_readable_guess_records_nothing(data_dir, tmp_path):
    test = data_dir / "validation.jsonl"
    items = load_test_items(test, 5)
    filled = _csv(tmp_path / "filled.csv", ["id", "price"], [[it.id, f"{it.price + 10:.2f}"] for it in items])
    r = runner.invoke(app, ["human", "import", str(filled), "--test", str(test)])
    assert r.exit_code == 0, r.output
    store = LeaderboardStore()
    first = store.latest("human")
    assert first.metrics["mae"] == pytest.approx(10.0)
    store.close()

    unfilled = tmp_path / "unfilled.csv"
    assert (
        runner.invoke(app, ["human", "export", "--test", str(test), "--n", "5", "--out", str(unfilled)]).exit_code == 0
    )
    r = runner.invoke(app, ["human", "import", str(unfilled), "--test", str(test)])
    assert r.exit_code == 2 and "none of its 5 matched rows holds a readable price (5 blank" in r.output
    words = _csv(tmp_path / "words.csv", ["id", "price"], [[it.id, "no idea"] for it in items])
    r = runner.invoke(app, ["import-predictions", str(words), "--name", "human", "--test", str(test), "--size", "5"])
    assert r.exit_code == 2 and "0 blank, 5 unreadable" in r.output
    store = LeaderboardStore()
    assert store.latest("human").run_id == first.run_id  # the real score still stands
    store.close()
