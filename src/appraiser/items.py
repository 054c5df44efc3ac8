"""The one data type every stage shares: a product with a description and a true price.

`text` is what a pricer is allowed to see; it never contains the price. Everything else is
metadata for weighting, reporting and features.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIN_PRICE = 0.5
MAX_PRICE = 999.49
#: No product sold on Amazon costs more. A bigger number in a price field is a unit mistake (cents) or garbage,
#: and one such row among thousands moves a mean-based model by hundreds of dollars, so it is refused.
MAX_SANE_PRICE = 1_000_000.0


class Item(BaseModel):
    """A product: its description (`text`), its true price in US dollars, and metadata."""

    model_config = ConfigDict(extra="ignore", frozen=False)

    id: str
    title: str | None = None
    category: str | None = None
    text: str = Field(min_length=1)
    price: float = Field(gt=0)
    weight: float | None = Field(default=None, description="item weight in pounds, when known")
    summary: str | None = Field(default=None, description="an LLM-written short rewrite of the text")
    source: str | None = None
    format: str = "raw"
    price_exact: bool = True

    @field_validator("price", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # JSON true would otherwise be read as $1.00
            raise ValueError("price must be a number, not true/false")
        if isinstance(v, float | str) and _is_nan(v):  # before gt=0, which would say "greater than 0" of a NaN
            raise ValueError("price must be a finite number, not NaN")
        return v

    @field_validator("price")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("price must be a finite number")
        if v > MAX_SANE_PRICE:
            raise ValueError(f"price {v:,.6g} is beyond any product's (at most ${MAX_SANE_PRICE:,.0f}): in cents?")
        return float(v)

    def to_record(self) -> dict[str, Any]:
        """A plain JSON-able dict (what is written to JSONL/Parquet)."""
        return self.model_dump()

    @property
    def prompt_text(self) -> str:
        """The text a model is shown: the summary where there is one, else the raw text."""
        return self.summary or self.text


def make_id(*parts: str | None) -> str:
    """A stable 16-hex id from the given strings (title, text, ...)."""
    h = hashlib.sha1("\x1f".join(p or "" for p in parts).encode("utf-8"))
    return h.hexdigest()[:16]


def data_fingerprint(items: Sequence[Item], weights: Sequence[float] | None = None) -> str:
    """A short hash of what a pricer was fitted on: every item (all its fields) and its sample weight.

    A fitted pricer records it in `fit_info`, which keys the prediction cache: without it, a baseline refitted
    on another pool of the same size (a constant, a seeded model) had the same cache key and was served the
    first model's predictions."""
    h = hashlib.sha1()
    for i, it in enumerate(items):  # every field: a category, a weight or a title is a feature too
        w = "" if weights is None else f"{float(weights[i]):.9g}"
        h.update(f"{w}\x1f{it.model_dump_json()}\x1e".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:12]


def fingerprint(items: list[Item]) -> str:
    """A short hash of the ids and prices of a list of items, to tell test sets apart."""
    h = hashlib.sha1()
    for it in items:
        h.update(f"{it.id}:{it.price:.2f}\n".encode())
    return h.hexdigest()[:12]


def _is_nan(v: float | str) -> bool:
    """A float NaN, or text that reads as one ("NaN", "nan"), as pydantic would read it."""
    try:
        return math.isnan(float(v))
    except ValueError:
        return False


def item_list(items: Any, what: str = "items") -> list[Item]:
    """`items` as a list of Items, from what a notebook hands over: a list or a generator of Items, or of dicts
    (records as read from JSON). A single Item is refused rather than iterated (a pydantic model iterates its
    fields, which surfaced as "'tuple' object has no attribute 'id'"), and so is anything else, naming it."""
    if isinstance(items, Item):
        raise TypeError(f"{what}: expected a list of Items, got one Item (wrap it in a list: [item])")
    if isinstance(items, str | bytes | dict) or not hasattr(items, "__iter__"):
        raise TypeError(f"{what}: expected a list of Items, got {type(items).__name__}")
    out = []
    for i, x in enumerate(items):
        if isinstance(x, Item):
            out.append(x)
        elif isinstance(x, dict):
            out.append(Item.model_validate(x))
        else:
            raise TypeError(f"{what}[{i}]: expected an Item (or a dict of its fields), got {type(x).__name__}")
    return out
