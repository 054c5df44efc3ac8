"""Small, pure parsers for the messy fields of Amazon metadata: prices, weights, details.

They never raise on odd input: they return None, and the caller counts the reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

# An optional minus (before or after a "$"; not a hyphen, as in "Pack-2"), the number (US thousands commas
# allowed), an optional exponent.
_NUMBER = re.compile(
    r"(?<![\d.])(?:(?<![\w.])([-\u2212])\s*)?\$?" r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:[eE]([-+]?\d+))?"
)
# What may not follow a number: more digits after a "." or "," ("1.299,00", "12,50"), which are European
# decimals or a garbled number: no reading of them is safe, so they are no price rather than $1.299.
_CUT_NUMBER = re.compile(r"[.,]\d")


def parse_price(value: Any) -> float | None:
    """A price in dollars from a number or a string such as "$1,299.00", "from 9.99", "None".

    Ranges ("9.99 - 19.99") give their first number, as a listing shows the lowest price first.
    An exponent is read ("1e3" is 1000); a minus sign is kept, so "-20" is dropped like -20 is (it was read
    as $20). Returns None when there is no usable positive finite number, and for a number that reads two
    ways ("1.299,00", European for 1299.00, was $1.299).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        v = float(value)
    else:
        s = str(value).strip()
        if not s or s.lower() in {"none", "null", "nan", "n/a", "-", "—"}:
            return None
        m = _NUMBER.search(s)
        if not m or _CUT_NUMBER.match(s, m.end()):
            return None
        sign, whole, frac, exp = m.groups()
        text = whole.replace(",", "") + (f".{frac}" if frac else "") + (f"e{exp}" if exp else "")
        v = -float(text) if sign else float(text)
    if v != v or v in (float("inf"), float("-inf")) or v <= 0:
        return None
    return v


# Factors to pounds; longest names first so "hundredths pounds" wins over "pounds".
_WEIGHT_UNITS: list[tuple[str, float]] = [
    ("hundredths pounds", 0.01),
    ("hundredths pound", 0.01),
    ("milligrams", 1 / 453_592.37),
    ("milligram", 1 / 453_592.37),
    ("mg", 1 / 453_592.37),
    ("kilograms", 2.204_622_62),
    ("kilogram", 2.204_622_62),
    ("kg", 2.204_622_62),
    ("grams", 1 / 453.592_37),
    ("gram", 1 / 453.592_37),
    ("g", 1 / 453.592_37),
    ("ounces", 1 / 16),
    ("ounce", 1 / 16),
    ("oz", 1 / 16),
    ("pounds", 1.0),
    ("pound", 1.0),
    ("lbs", 1.0),
    ("lb", 1.0),
]
_WEIGHT = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z][a-zA-Z ]*)")


def parse_weight(value: Any) -> float | None:
    """Item weight in pounds from strings like "10 pounds", "8 Ounces", "1.2 kg", "45 hundredths pounds"."""
    if value is None:
        return None
    m = _WEIGHT.search(str(value))
    if not m:
        return None
    number, unit = float(m.group(1)), m.group(2).strip().lower()
    for name, factor in _WEIGHT_UNITS:
        if unit == name or unit.startswith(name + " ") or (len(name) > 3 and unit.startswith(name)):
            return number * factor
    return None


def parse_details(value: Any) -> dict[str, Any]:
    """`details` as a dict whether it came as a dict, a JSON string, or nothing."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def weight_from_details(details: Any) -> float | None:
    """The "Item Weight" entry of a details dict (or JSON string), in pounds."""
    d = parse_details(details)
    for key in ("Item Weight", "item_weight", "Weight"):
        if key in d:
            return parse_weight(d[key])
    return None
