"""Split-conformal intervals on log price, for any pricer: `Conformal(pricer, level=0.8)`.

A pricer's point guess says nothing about how sure it is; an interval that claims 80% should contain the true
price for 80% of items. Split conformal gets there without trusting the model: hold out a calibration slice of
the training pool, fit the pricer on the rest, and take the (weighted) `level` quantile q of the calibration
items' absolute log errors |log guess - log price|; every later guess g gets [g e^-q, g e^q]. On items drawn
like the calibration slice the coverage is at least `level` (exchangeability); on another distribution it
holds only as far as the errors there look alike, which is why the evaluator reports the coverage it got.

The calibration slice can be weighted like the baselines' training draw (`weighting`, `categories`,
`off_category_weight`: never the validation split), so its errors look like the benchmark's. With
`refit=True` (default) the pricer is fitted again on the whole pool after calibration (the usual "full-refit"
shortcut: the same q, a model that saw 100% of the data). A pricer that needs no fit (a local or API LLM)
is only asked to price the calibration slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from appraiser.data.weighting import sample_weights
from appraiser.items import Item
from appraiser.pricers.base import Prediction, Pricer


def weighted_quantile(values: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The conformal quantile: the smallest v with weighted share >= level·(1 + 1/n) at or below it."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w) / w.sum()
    target = min(1.0, level * (1 + 1 / len(v)))
    return float(v[min(len(v) - 1, np.searchsorted(cw, target - 1e-12))])


class Conformal(Pricer):
    """`base` with split-conformal intervals at `level`; prices are the base pricer's own."""

    name: ClassVar[str] = "conformal"

    def __init__(
        self,
        base: Pricer,
        level: float = 0.8,
        calibration: float = 0.2,
        max_calibration: int = 2000,
        seed: int = 0,
        refit: bool = True,
        needs_fit: bool = True,
        weighting: str = "none",
        categories: Sequence[str] | None = None,
        off_category_weight: float = 1.0,
    ):
        if not 0 < level < 1:
            raise ValueError(f"the interval level must be between 0 and 1, not {level}")
        if not 0 < calibration < 1:
            raise ValueError(f"the calibration share must be between 0 and 1, not {calibration}")
        self.base = base
        self.level, self.calibration, self.max_calibration = float(level), float(calibration), int(max_calibration)
        self.seed, self.refit, self.needs_fit = int(seed), bool(refit), bool(needs_fit)
        self.weighting = weighting
        self.categories = tuple(categories) if categories else None
        self.off_category_weight = float(off_category_weight)
        self.batch_size = base.batch_size
        self.concurrency = base.concurrency
        self.q_: float | None = None
        self.fit_info: dict[str, Any] = {}

    @classmethod
    def from_fitted(cls, base: Pricer, q: float, level: float) -> Conformal:
        """A fitted `base` with a quantile `q` found elsewhere (e.g. an ensemble's out-of-fold errors)."""
        c = cls(base, level=level, needs_fit=False)
        c.q_ = float(q)
        c.fit_info = {**(getattr(base, "fit_info", None) or {}), "conformal_q": round(c.q_, 6), "calibration": "oof"}
        return c

    @property
    def label(self) -> str:
        return f"{self.base.label}+ci{round(self.level * 100)}"

    def config(self) -> dict[str, Any]:
        return {
            **self.base.config(),
            "conformal": {
                "level": self.level,
                "calibration": self.calibration,
                "seed": self.seed,
                "refit": self.refit,
                "weighting": self.weighting,
                "categories": list(self.categories) if self.categories else None,
                "off_category_weight": self.off_category_weight,
            },
        }

    def usage(self) -> dict[str, Any] | None:
        return self.base.usage() if callable(getattr(self.base, "usage", None)) else None

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> Conformal:
        train = list(train)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(train))
        n_cal = min(self.max_calibration, max(20, int(round(self.calibration * len(train)))))
        if n_cal >= len(train):
            raise ValueError(f"{len(train)} training items are too few to keep {n_cal} for calibration")
        cal = [train[i] for i in order[:n_cal]]
        proper = [train[i] for i in order[n_cal:]]
        if self.needs_fit:
            self.base.fit(proper, validation)
        preds = self.base.predict(cal)
        ok = [(p.price, it) for p, it in zip(preds, cal, strict=True) if p.price is not None and p.price > 0]
        if not ok:
            raise ValueError(f"{self.base.label}: no calibration item was priced")
        scores = np.array([abs(math.log(g) - math.log(it.price)) for g, it in ok])
        w = sample_weights(
            [it for _, it in ok],
            self.weighting,
            None,
            categories=self.categories,
            off_category_weight=self.off_category_weight,
        )
        if w.sum() <= 0:
            raise ValueError("the calibration weights are all zero (no calibration item in the given categories)")
        self.q_ = weighted_quantile(scores, w, self.level)
        if self.needs_fit and self.refit:
            self.base.fit(train, validation)
        base_info = getattr(self.base, "fit_info", None) or {}
        self.fit_info = {**base_info, "conformal_q": round(self.q_, 6), "calibration_items": len(ok)}
        return self

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if self.q_ is None:
            raise RuntimeError(f"{self.label}: call fit() before predict()")
        factor = math.exp(self.q_)
        out = []
        for p in self.base.predict(items):
            if p.price is None:
                out.append(p)
            else:
                out.append(p.model_copy(update={"low": p.price / factor, "high": p.price * factor}))
        return out
