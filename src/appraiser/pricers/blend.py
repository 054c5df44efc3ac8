"""A blend of pricers that are already fitted: weights learned on a slice none of them trained on.

The stacked `ensemble` learns its weights from out-of-fold predictions, which needs every member to be
refitted K times — fine for XGBoost or TF-IDF, not for a fine-tune that took twenty minutes. The usual
answer ("blending") is to set a slice of the training pool aside *before* anything is fitted: the members
are fitted (or fine-tuned) on the rest, they price the blend slice, and the combiner — the same
non-negative least squares in log-price space as the ensemble's, with a free intercept — is fitted on those
honest predictions. The same slice gives a split-conformal interval on log price for the blend.

The default combiner is convex (`combine="convex"`): weights >= 0 that sum to 1, no intercept — a weighted
geometric mean of the members. The blend slice is small and need not look like the items priced later (the
demo draws it by the probe's price histogram; its members were fitted on other draws), and a free intercept
with free weights learns that slice's shift — a stretch that the first demo run with it paid for on its test
items ($163.66 against members at $105–112). A convex mean cannot extrapolate past its members.
`combine="nnls"` keeps the ensemble's non-negative weights with a free intercept.

`BlendPricer(members).fit(blend_items)`: `members` are fitted pricers; `fit` only learns the weights (and
the interval), so it must be given items that no member saw in training — the caller's promise; `demo`
keeps one such slice out of every fit. Pickles like any fitted pricer (members included), reloads and
predicts the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from appraiser.items import Item, data_fingerprint
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.ensemble import _fill, _log_prices, log_predictions, nnls_with_intercept


def convex_weights(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of y on X with weights >= 0 that sum to 1 and no intercept: a weighted geometric mean."""
    from scipy.optimize import nnls

    # sum(w) = 1 as a heavily weighted extra row of the non-negative least squares
    big = 1e3 * max(1.0, float(np.abs(y).max()))
    A = np.vstack([X, np.full((1, X.shape[1]), big)])
    b = np.append(y, big)
    w, _ = nnls(A, b)
    return w / w.sum() if w.sum() > 0 else np.full(X.shape[1], 1.0 / X.shape[1])


class BlendPricer(Pricer):
    """Fitted `members` combined with weights fitted on a held-out blend slice."""

    name: ClassVar[str] = "blend"

    def __init__(
        self,
        members: Sequence[Pricer],
        labels: Sequence[str] | None = None,
        interval: float = 0.8,
        combine: str = "convex",
    ):
        if combine not in ("convex", "nnls"):
            raise ValueError(f"combine must be convex or nnls, not {combine!r}")
        self.combine = combine
        if not members:
            raise ValueError("a blend needs at least one member")
        if not 0 <= float(interval) < 1:
            raise ValueError(f"interval must be 0 (none) or a level between 0 and 1, not {interval}")
        self.members = list(members)
        self.member_labels = list(labels) if labels is not None else [m.label for m in self.members]
        if len(self.member_labels) != len(self.members):
            raise ValueError("give one label per member")
        self.interval = float(interval)
        self.batch_size = min(m.batch_size for m in self.members)
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0
        self.q_: float | None = None
        self.weights_: dict[str, float] = {}
        self.fit_info: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"blend[{'+'.join(self.member_labels)}]"

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": [{"label": lab, **m.config()} for lab, m in zip(self.member_labels, self.members, strict=True)],
            "weights": self.weights_,
            "intercept": self.intercept_,
            "interval": self.interval,
            "combine": self.combine,
            "blend_items": self.fit_info.get("blend_items"),
        }

    def member_log_prices(self, items: Sequence[Item]) -> np.ndarray:
        return np.column_stack([_log_prices(m.predict(items)) for m in self.members])

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> BlendPricer:
        """Learn the weights on `train` — the blend slice, which no member may have been fitted on."""
        items = list(train)
        if len(items) < len(self.members) + 2:
            raise ValueError(f"{len(items)} blend items are too few for {len(self.members)} members")
        X = _fill(self.member_log_prices(items))
        ok = ~np.isnan(X).any(axis=1)  # an item every member failed on stays NaN after _fill
        y = np.log(np.array([it.price for it in items]))
        if self.combine == "convex":
            coef, intercept = convex_weights(X[ok], y[ok]), 0.0
        else:
            coef, intercept = nnls_with_intercept(X[ok], y[ok], np.ones(int(ok.sum())))
        self.coef_, self.intercept_ = np.asarray(coef, dtype=float), float(intercept)
        self.weights_ = {lab: round(float(c), 6) for lab, c in zip(self.member_labels, self.coef_, strict=True)}
        residual = np.abs(X[ok] @ self.coef_ + self.intercept_ - y[ok])
        if self.interval:
            from appraiser.pricers.conformal import weighted_quantile

            self.q_ = weighted_quantile(residual, np.ones(len(residual)), self.interval)
        self.fit_info = {
            "blend_items": int(ok.sum()),
            "data": data_fingerprint(items),
            "weights": self.weights_,
            "intercept": round(self.intercept_, 6),
            "rmse_log": round(float(np.sqrt(np.mean(residual**2))), 6),
            "member_rmse_log": {
                lab: round(float(np.sqrt(np.mean((X[ok, j] - y[ok]) ** 2))), 6)
                for j, lab in enumerate(self.member_labels)
            },
            "q": self.q_,
        }
        return self

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if self.coef_ is None:
            raise RuntimeError(f"{self.label}: call fit() on a blend slice before predict()")
        if not items:
            return []
        X = self.member_log_prices(items)
        failed = np.isnan(X).all(axis=1)
        z = _fill(np.where(failed[:, None], 0.0, X)) @ self.coef_ + self.intercept_
        return log_predictions(z, failed, self.q_)
