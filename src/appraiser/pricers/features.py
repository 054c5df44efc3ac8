"""Features and regression targets of the traditional baselines.

Pure functions of items, so they are easy to test: a few hand-made numbers per item (weight in
pounds, lengths, digit count, keyword flags) and the text columns that vectorizers read.
`items_frame` turns items into a pandas DataFrame so scikit-learn's `ColumnTransformer` can pick the
columns each part needs; `to_target` / `from_target` map prices to what a model regresses on and
back. Sample weights (shared with fine-tuning) live with the data: `appraiser.data.weighting`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from appraiser.items import MAX_PRICE, MIN_PRICE, Item

# ---------------------------------------------------------------- hand-made features

#: Words whose presence moves prices (bulk, pro gear, spare parts, accessories); chosen by eye
#: from the training texts, not tuned.
KEYWORDS: tuple[str, ...] = (
    "pack",
    "set",
    "kit",
    "professional",
    "replacement",
    "oem",
    "compatible",
    "case",
    "cable",
    "heavy duty",
    "stainless",
    "wireless",
    "battery",
    "digital",
    "download",
    "motor",
    "warranty",
    "assembly",
)
_KEYWORD_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in KEYWORDS) + r")\b", re.I)
_NO_DIGITS = str.maketrans("", "", "0123456789")
_WEIGHT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(pounds?|lbs?|ounces?|oz)\b", re.I)

NUMERIC_COLUMNS: tuple[str, ...] = (
    "log_weight",
    "weight_missing",
    "log_text_len",
    "log_title_len",
    "log_digits",
    "log_words",
    "is_summary",
    *(f"kw_{k.replace(' ', '_')}" for k in KEYWORDS),
)


def weight_pounds(item: Item) -> float | None:
    """The item's weight in pounds: `Item.weight` when known, else the first "N pounds/oz" in its text.

    Only ~6% of training items carry a parsed weight (90% of validation do), so the text is the
    fallback that keeps the feature meaningful on both.
    """
    if item.weight is not None and item.weight > 0:
        return float(item.weight)
    m = _WEIGHT_RE.search(item.text)
    if not m:
        return None
    value = float(m.group(1))
    unit = m.group(2).lower()
    if unit.startswith(("ounce", "oz")):
        value /= 16.0
    return value if value > 0 else None


def items_frame(items: Sequence[Item]) -> pd.DataFrame:
    """One row per item: the text columns vectorizers read plus the raw numeric features.

    Missing weights stay NaN here; the pipeline imputes them (with a missing flag alongside),
    so the imputed value is learned from the training split only.
    """
    rows = []
    for it in items:
        text = it.text
        title = it.title or text.split("\n", 1)[0]
        w = weight_pounds(it)
        row = {
            "text": text,
            "title": title,
            "category": it.category or "unknown",
            "log_weight": np.log1p(w) if w is not None else np.nan,
            "weight_missing": float(w is None),
            "log_text_len": np.log1p(len(text)),
            "log_title_len": np.log1p(len(title)),
            "log_digits": np.log1p(len(text) - len(text.translate(_NO_DIGITS))),
            "log_words": np.log1p(len(text.split())),
            "is_summary": float(it.format == "summary"),
        }
        found = {m.lower() for m in _KEYWORD_RE.findall(text)}
        for k in KEYWORDS:
            row[f"kw_{k.replace(' ', '_')}"] = float(k in found)
        rows.append(row)
    return pd.DataFrame(rows, columns=["text", "title", "category", *NUMERIC_COLUMNS])


# ---------------------------------------------------------------- targets

TARGETS = ("price", "log")


def to_target(prices: np.ndarray, target: str) -> np.ndarray:
    """Prices → what the model regresses on (`log` compresses the long right tail)."""
    if target == "log":
        return np.log(prices)
    if target == "price":
        return prices.astype(float)
    raise ValueError(f"target must be one of {TARGETS}, not {target!r}")


def from_target(values: np.ndarray, target: str) -> np.ndarray:
    """Model outputs → prices, clipped into the data's price range [MIN_PRICE, MAX_PRICE].

    Every training and test price lies in [$0.50, $999.49], so clipping can only move a guess
    closer to the truth; it also turns the negative outputs a linear model on raw prices can
    produce into a real (if poor) guess instead of a nonsense one. The result is never 0.
    """
    values = np.asarray(values, dtype=float)
    if target == "log":
        values = np.exp(np.clip(values, np.log(MIN_PRICE), np.log(MAX_PRICE)))
    elif target != "price":
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    values = np.where(np.isfinite(values), values, np.nan)
    return np.clip(values, MIN_PRICE, MAX_PRICE)
