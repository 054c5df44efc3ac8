"""The price parser reads model text; every failure must be None (counted), never a silent 0."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appraiser.pricers.base import parse_price_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$1,299.99", 1299.99),
        ("Price is $45", 45.0),
        ("Price is $45.00", 45.0),
        ("about 45 dollars", 45.0),
        ("45-50", 47.5),
        ("$45 - $50", 47.5),
        ("$45-50", 47.5),
        ("between 45 to 55", 50.0),
        ("45 – 50", 47.5),
        ("Price is $1,234.5.", 1234.5),
        (".99", 0.99),
        ("$.99", 0.99),
        ("Price is $ 12", 12.0),
        ("12.", 12.0),
        ("Price is $99.99\n\nThis product", 99.99),
        # A "$" amount wins over other numbers, ranges included.
        ("Pack of 3-4 batteries, price $45", 45.0),
        ("Model 3-100 costs $45", 45.0),
        ("2 for $30", 30.0),
        ("Price is 1,000", 1000.0),
        ("1000", 1000.0),
        # A descending "range" is no range (a date, a part number): take the first number.
        ("50-45", 50.0),
    ],
)
def test_parses(text, expected):
    assert parse_price_text(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", None, "no idea", "   ", "Price is $", "$", "...", "N/A"])
def test_failures_are_none_not_zero(text):
    assert parse_price_text(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-5", None),  # a negative number is no price; it used to be read as $5
        ("Price is $-5.00", None),
        ("-$12", None),
        ("about −7 dollars", None),
        ("1e308", None),  # it used to be read as $1
        ("Price is $1e9", None),  # no product costs a billion
        ("1e3", 1000.0),
        ("Price - $45", 45.0),  # a dash with a space after it is punctuation, not a sign
        ("Price is $45 each", 45.0),
    ],
)
def test_signs_and_exponents_are_read_whole(text, expected):
    """What the re-probe found in model answers: "-5" read as 5 and "1e308" as 1."""
    assert parse_price_text(text) == (pytest.approx(expected) if expected is not None else None)


def test_overflowing_number_is_a_failure():
    assert parse_price_text("9" * 400) is None


@given(st.text(max_size=60))
def test_never_raises_and_never_negative(text):
    v = parse_price_text(text)
    assert v is None or (v >= 0 and v == v and v != float("inf"))


@given(st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False))
def test_round_trips_formatted_prices(d):
    v = float(d)
    assert parse_price_text(f"Price is ${v:,.2f}") == pytest.approx(round(v, 2))


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("$1,299.99", 1299.99),
        ("about 45 dollars", 45.0),
        ("1e3", 1000.0),
        (12.5, 12.5),
        ("-5", None),  # not $5
        ("$ -5", None),
        ("−7", None),
        ("1e308", None),  # not $1, and not a guess that makes the MAE astronomical
        (1e308, None),
        (-3, None),
        ("0", None),
        (float("nan"), None),
        (True, None),
    ],
)
def test_a_guess_that_is_no_price_is_a_failure_never_another_number(cell, expected):
    """Human CSVs and imported predictions: what the probe found read "-5" as 5 and "1e308" as 1."""
    from appraiser.evaluation.human import to_prediction

    got = to_prediction(cell)
    assert got.price == (pytest.approx(expected) if expected is not None else None)
    if expected is None:
        assert got.raw is not None  # the cell is kept, so the report can show what was written
