"""Sample weights: re-weight a training pool towards the benchmark's price distribution.

The training pool's price distribution (median $39, many cheap Software and Appliances items) is
far from the benchmark's (median ~$172, 8 categories, flattened prices). `sample_weights` re-weights
training items so a model spends its capacity where the benchmark's prices are; the baselines use
the weights in their loss and fine-tuning draws its training items by them
(`training.dataset.choose_items`), so the two trained "the same way" see the same mix. The "match"
scheme reads only the *labels' distribution* of the validation split (a histogram of its prices and
the set of its categories), never its texts, which is the same information as "the benchmark is
flattened over $0–$1000 in these 8 categories" that the data README states.

`sources` / `off_source_weight` go one step further: the pool holds ~3,000 rows curated exactly like the
benchmark (the data READMEs say which), and weighting the rest down (or out) moved every pricer closer to the
benchmark than any price or category weighting did (README, "The accuracy recipe").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from appraiser.data.io import DataError
from appraiser.items import Item

WEIGHTINGS = ("none", "price_flat", "match")


class WeightingError(DataError, ValueError):
    """Weights that cannot be made from these items and options. A DataError, so a command prints it as one
    line (a fine-tune's `--sources nonexist --off-source-weight 0` was a ValueError traceback after the
    options had passed), and still a ValueError for callers that catch one."""


#: The release benchmark's 8 categories, as the data README states them (`categories="benchmark"` names them).
BENCHMARK_CATEGORIES: tuple[str, ...] = (
    "Automotive",
    "Tools_and_Home_Improvement",
    "Electronics",
    "Office_Products",
    "Toys_and_Games",
    "Musical_Instruments",
    "Cell_Phones_and_Accessories",
    "Appliances",
)


#: The training rows curated exactly like the release benchmark, by `source` prefix (an item's source is
#: "owner/repo:path@commit"): the 999 rows of `train.jsonl` whose source is validation's own file and commit
#: (the data README's "1,000 rows come from the same curation as the benchmark") and the course's own
#: curation in `extra/` (its README: "built exactly like the course rows"). `sources="benchmark"` names them.
#: Chosen from the data READMEs and validation's `source` field, which the data README allows for sampling
#: weights; no validation price or text is read.
BENCHMARK_SOURCES: tuple[str, ...] = (
    "oscargbocanegra/llms-engineering-main:week6/test.pkl@ae351dfebcf81e7cb9275cfecb0b988c5f28e48d",
    "TalatMasood1988/LLMs:Pricer/test.pkl",
)


def _expand(values: Sequence[str] | str | None, benchmark: tuple[str, ...]) -> tuple[str, ...] | None:
    """A list (or one comma-separated string) with the alias "benchmark" expanded; None stays None."""
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    out: list[str] = []
    for v in (str(v).strip() for v in values):
        out.extend(benchmark if v == "benchmark" else [v] if v else [])
    return tuple(dict.fromkeys(out))


def resolve_sources(sources: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Source prefixes with the alias "benchmark" expanded to `BENCHMARK_SOURCES`."""
    return _expand(sources, BENCHMARK_SOURCES)


def resolve_categories(categories: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Category names with the alias "benchmark" expanded to `BENCHMARK_CATEGORIES`."""
    return _expand(categories, BENCHMARK_CATEGORIES)


#: Price bins for weighting: $50 wide over $0–$1000, the scale on which the benchmark was flattened.
PRICE_BINS = np.arange(0.0, 1050.0, 50.0)


def _bin_index(prices: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(prices, PRICE_BINS) - 1, 0, len(PRICE_BINS) - 2)


def _histogram(prices: np.ndarray) -> np.ndarray:
    return np.bincount(_bin_index(prices), minlength=len(PRICE_BINS) - 1).astype(float)


def check_weight(option: str, value: float) -> float:
    """An off-category or off-source weight as a float, refused unless finite and at least 0: a NaN or a
    negative weight acted like 0 (silently), and an infinite one divided everything by infinity."""
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise WeightingError(f"{option} must be a finite number at least 0 (0 drops those items), not {value}")
    return v


def sample_weights(
    train: Sequence[Item],
    scheme: str = "none",
    validation: Sequence[Item] | None = None,
    *,
    categories: Sequence[str] | None = None,
    off_category_weight: float = 1.0,
    sources: Sequence[str] | str | None = None,
    off_source_weight: float = 1.0,
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

    Sources: items whose `source` starts with none of the `sources` prefixes ("benchmark":
    `BENCHMARK_SOURCES`) are multiplied by `off_source_weight` — a way to lean on the rows curated exactly like
    the benchmark while the rest of the pool still counts. Items without a source keep their weight.

    Weights are then capped at `max_weight` (the mean being 1) so a few items in a rare bin cannot
    dominate. A weight of 0 (a price bin validation never reaches, a filtered category) drops the item.
    """
    off_category_weight = check_weight("off_category_weight", off_category_weight)
    off_source_weight = check_weight("off_source_weight", off_source_weight)
    prices = np.array([it.price for it in train], dtype=float)
    if scheme == "none":
        w = np.ones(len(train))
    elif scheme == "price_flat":
        hist = _histogram(prices)
        w = 1.0 / hist[_bin_index(prices)]
    elif scheme == "match":
        if not validation:
            raise WeightingError("weighting='match' needs the validation split (only its price distribution is used)")
        p_train = _histogram(prices) / len(prices)
        p_val = _histogram(np.array([it.price for it in validation], dtype=float)) / len(validation)
        w = p_val[_bin_index(prices)] / p_train[_bin_index(prices)]
    else:
        raise WeightingError(f"weighting must be one of {WEIGHTINGS}, not {scheme!r}")

    if off_category_weight != 1.0:
        target = set(resolve_categories(categories)) if categories is not None else None
        if target is None and validation:
            target = {it.category for it in validation if it.category}
        if target is None:
            raise WeightingError("off_category_weight needs `categories` or the validation split")
        off = np.array([it.category is not None and it.category not in target for it in train])
        w = np.where(off, w * off_category_weight, w)

    if off_source_weight != 1.0:
        prefixes = resolve_sources(sources)
        if not prefixes:
            raise WeightingError("off_source_weight needs `sources` (source prefixes, or 'benchmark')")
        off = np.array([it.source is not None and not it.source.startswith(prefixes) for it in train])
        w = np.where(off, w * off_source_weight, w)

    if w.sum() <= 0:
        # Say which option dropped everything: the one line a user gets must point at what to change.
        why = []
        if off_source_weight == 0:
            named = sources.split(",") if isinstance(sources, str) else list(sources or ())
            why.append(f"no item's source starts with {', '.join(named)} (off_source_weight 0)")
        if off_category_weight == 0:
            why.append("no item is in the validation categories (off_category_weight 0)")
        if scheme == "match":
            why.append("no item is in a $50 price bin the validation prices reach (weighting 'match')")
        raise WeightingError(
            f"all {len(train)} training weights are zero, nothing left to learn from"
            + (f": {'; or '.join(why)}" if why else "")
        )
    w = w / w[w > 0].mean()
    return np.minimum(w, max_weight)


def weighted_histogram(prices: Sequence[float], weights: np.ndarray | None = None) -> np.ndarray:
    """Share of (weighted) items per $50 price bin: handy to check what a scheme did."""
    p = np.asarray(prices, dtype=float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    h = np.bincount(_bin_index(p), weights=w, minlength=len(PRICE_BINS) - 1)
    return h / h.sum()
