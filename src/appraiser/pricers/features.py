"""Features and sample weights shared by the traditional baselines.

Two concerns live here, both pure functions of items so they are easy to test:

* **Features**: a few hand-made numbers per item (weight in pounds, lengths, digit count,
  keyword flags) and the text columns that vectorizers read. `items_frame` turns items into a
  pandas DataFrame so scikit-learn's `ColumnTransformer` can pick the columns each part needs.
* **Sample weights**: the training pool's price distribution (median $39, many cheap Software
  and Appliances items) is far from the benchmark's (median ~$172, 8 categories, flattened
  prices). `sample_weights` re-weights training items so a model spends its capacity where the
  benchmark's prices are. The "match" scheme reads only the *labels' distribution* of the
  validation split (a histogram of its prices and the set of its categories), never its texts,
  which is the same information as "the benchmark is flattened over $0–$1000 in these 8
  categories" that the data README states.
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


# ---------------------------------------------------------------- sample weights

WEIGHTINGS = ("none", "price_flat", "match")
#: Price bins for weighting: $50 wide over $0–$1000, the scale on which the benchmark was flattened.
PRICE_BINS = np.arange(0.0, 1050.0, 50.0)


def _bin_index(prices: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(prices, PRICE_BINS) - 1, 0, len(PRICE_BINS) - 2)


def _histogram(prices: np.ndarray) -> np.ndarray:
    return np.bincount(_bin_index(prices), minlength=len(PRICE_BINS) - 1).astype(float)


def sample_weights(
    train: Sequence[Item],
    scheme: str = "none",
    validation: Sequence[Item] | None = None,
    *,
    categories: Sequence[str] | None = None,
    off_category_weight: float = 1.0,
    max_weight: float = 20.0,
) -> np.ndarray:
    """One weight per training item: mean 1 over the items with a weight above 0, before the cap.

    Schemes:
      * ``none``: all 1.
      * ``price_flat``: 1 / (training items in the item's $50 price bin): every price bin
        counts the same in total, as in the benchmark's flattened distribution.
      * ``match``: importance weights ``p_validation(bin) / p_train(bin)`` so the weighted
        training price histogram equals validation's. Needs `validation` (only its prices are read).

    Categories: items whose (known) category is outside `categories` (default: the categories
    present in `validation`, if given) are multiplied by `off_category_weight`; 0 removes them.
    Items without a category keep their weight: we cannot tell where they belong.

    Weights are then capped at `max_weight` (the mean being 1) so a few items in a rare bin cannot
    dominate. A weight of 0 (a price bin validation never reaches, a filtered category) drops the item.
    """
    prices = np.array([it.price for it in train], dtype=float)
    if scheme == "none":
        w = np.ones(len(train))
    elif scheme == "price_flat":
        hist = _histogram(prices)
        w = 1.0 / hist[_bin_index(prices)]
    elif scheme == "match":
        if not validation:
            raise ValueError("weighting='match' needs the validation split (only its price distribution is used)")
        p_train = _histogram(prices) / len(prices)
        p_val = _histogram(np.array([it.price for it in validation], dtype=float)) / len(validation)
        w = p_val[_bin_index(prices)] / p_train[_bin_index(prices)]
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {scheme!r}")

    if off_category_weight != 1.0:
        target = set(categories) if categories is not None else None
        if target is None and validation:
            target = {it.category for it in validation if it.category}
        if target is None:
            raise ValueError("off_category_weight needs `categories` or the validation split")
        off = np.array([it.category is not None and it.category not in target for it in train])
        w = np.where(off, w * off_category_weight, w)

    if w.sum() <= 0:
        raise ValueError("all training weights are zero: nothing left to learn from")
    w = w / w[w > 0].mean()
    return np.minimum(w, max_weight)


def weighted_histogram(prices: Sequence[float], weights: np.ndarray | None = None) -> np.ndarray:
    """Share of (weighted) items per $50 price bin: handy to check what a scheme did."""
    p = np.asarray(prices, dtype=float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    h = np.bincount(_bin_index(p), weights=w, minlength=len(PRICE_BINS) - 1)
    return h / h.sum()
