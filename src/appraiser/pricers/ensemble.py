"""`ensemble`: a stacked combination of base pricers, fitted on their out-of-fold predictions.

Why stacking and not a plain average: members differ in how good they are and in how they err, and the
weights that combine them should be learned — but never on predictions a member made for items it was
trained on (those look better than they are), and never on the split the ensemble is measured on. So

* the training draw is cut into K folds; each member is fitted on K-1 of them and predicts the last, which
  gives every training item an out-of-fold prediction from every member;
* the combiner is fitted on those predictions in log-price space: non-negative least squares with a free
  intercept (`combine="nnls"`, weights >= 0, so a member can only be used or dropped, never bet against), or
  the course's linear regression on [members..., min, max] (`combine="linear"`);
* the members are then refitted on the whole training draw, and the ensemble prices with them;
* the ensemble's own weighting (`weighting`, `categories`/`off_category_weight`, `sources`/`off_source_weight`)
  decides which items are priced out of fold and fit the combiner and the interval: with `sources=benchmark,
  off_source_weight=0` only the rows curated like the benchmark do (~3,000 of 21,000), so a slow LLM member
  reads a seventh of the pool, and the interval is set on errors of items drawn like the test set;
* `fit` never reads the validation split (its `validation` argument is ignored, and members are fitted
  without it), so validation labels cannot reach the weights.

Members are registered pricer names with their default options (`members="xgboost,tfidf-ridge,knn"`), or
`name:key=value:key=value` to set options. The weights are reported (`weights_`, `config()`), saved with the
pricer and reload with it like any fitted pricer. With `interval=LEVEL` (default 0.8) the ensemble and each
member (`member(j)`) get a conformal interval on log price from their out-of-fold errors on the training draw,
its width scaled per item by a model of how hard the item is (`interval_scale="difficulty"`, the default: see
`pricers.conformal`; `"none"` gives every item the same width in log space).
Those errors come from models fitted on (K-1)/K of the draw, the interval is put around the refitted ones:
`benchmarks/calibration.py --ensemble` measures what that costs on held-out pool items (with K=3 the
ensemble's OOF q is 0.950 where its refitted models need 0.942: 80.5% covered; knn, which gains most from a
denser pool, 82.8%). The promise is for items drawn like the pool; on another distribution the coverage is
whatever the errors there make it, which is why the evaluator reports it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from appraiser.data.weighting import check_weight, resolve_categories, resolve_sources, sample_weights
from appraiser.items import MAX_PRICE, MIN_PRICE, Item, data_fingerprint
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.registry import register

COMBINERS = ("nnls", "linear")


def parse_members(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """`"xgboost,knn:k=20"` -> [("xgboost", {}), ("knn", {"k": 20})] (values parsed as JSON when they can be)."""
    import json

    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, *opts = part.split(":")
        options: dict[str, Any] = {}
        for o in opts:
            key, sep, value = o.partition("=")
            if not sep:
                raise ValueError(f"member option {o!r} is not key=value")
            try:
                options[key] = json.loads(value)
            except json.JSONDecodeError:
                options[key] = value
        out.append((name.strip(), options))
    if not out:
        raise ValueError("name at least one member")
    return out


def _log_prices(preds: Sequence[Prediction]) -> np.ndarray:
    return np.array([np.nan if p.price is None else np.log(max(p.price, MIN_PRICE)) for p in preds])


def _fill(X: np.ndarray) -> np.ndarray:
    """A failed member prediction (NaN) becomes the mean of the other members' on that item."""
    X = X.copy()
    rows = np.isnan(X).any(axis=1)
    if rows.any():
        means = np.nanmean(X[rows], axis=1)
        X[rows] = np.where(np.isnan(X[rows]), means[:, None], X[rows])
    return X


def log_predictions(z: np.ndarray, failed: np.ndarray, q: float | np.ndarray | None) -> list[Prediction]:
    """Predictions from combined log prices `z` (clipped to the price range), with [p e^-q, p e^q] when q is
    set (one half-width for all, or one per item); a row every member failed on is a failed prediction."""
    prices = np.clip(np.exp(z), MIN_PRICE, MAX_PRICE)
    half = np.broadcast_to(np.asarray(np.nan if q is None else q, dtype=float), prices.shape)
    return [
        Prediction(price=None)
        if f
        else Prediction(
            price=float(p),
            low=float(p * np.exp(-h)) if q is not None else None,
            high=float(p * np.exp(h)) if q is not None else None,
        )
        for p, f, h in zip(prices, failed, half, strict=True)
    ]


def nnls_with_intercept(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least squares of y on X with non-negative coefficients and a free intercept."""
    from scipy.optimize import nnls

    sw = np.sqrt(w / w.mean())
    ones = np.ones((len(X), 1))
    A = np.hstack([X, ones, -ones]) * sw[:, None]
    coef, _ = nnls(A, y * sw)
    return coef[:-2], float(coef[-2] - coef[-1])


@register("ensemble", "stacked ensemble: out-of-fold member predictions combined in log space (non-negative)")
class EnsemblePricer(Pricer):
    name: ClassVar[str] = "ensemble"
    # class-level defaults: an ensemble pickled before source weighting existed loads with none
    sources: tuple[str, ...] | None = None
    off_source_weight: float = 1.0
    # ... and one pickled before difficulty-scaled intervals with one q for every item
    interval_scale: str = "none"
    scale_: Any = None
    member_scale_: tuple = ()

    def __init__(
        self,
        members: str = "xgboost,tfidf-ridge,knn",
        folds: int = 5,
        combine: str = "nnls",
        seed: int = 0,
        weighting: str = "none",
        categories: str | None = None,
        off_category_weight: float = 1.0,
        sources: str | None = None,
        off_source_weight: float = 1.0,
        interval: float = 0.8,
        member_weighting: bool = False,
        interval_scale: str = "difficulty",
    ):
        if not 0 <= float(interval) < 1:
            raise ValueError(f"interval must be 0 (none) or a level between 0 and 1, not {interval}")
        if combine not in COMBINERS:
            raise ValueError(f"combine must be one of {', '.join(COMBINERS)}, not {combine!r}")
        if int(folds) < 2:
            raise ValueError(f"folds must be at least 2, not {folds}")
        if weighting == "match":
            raise ValueError("weighting 'match' reads the validation split; the ensemble never does (none|price_flat)")
        self.members = str(members)
        self.member_specs = parse_members(self.members)
        from appraiser.pricers import registry

        for name, options in self.member_specs:  # a typo fails now, not after the first fold
            if options.get("weighting") == "match":  # members are fitted without validation, whatever is passed
                raise ValueError(
                    f"member {name}: weighting 'match' reads the validation split, which the ensemble never does"
                )
            registry.create(name, **options)
        self.folds, self.combine, self.seed = int(folds), combine, int(seed)
        self.weighting = weighting
        self.categories = resolve_categories(categories)
        self.member_weighting = bool(member_weighting)
        self.off_category_weight = check_weight("off_category_weight", off_category_weight)
        self.sources = resolve_sources(sources)
        self.off_source_weight = check_weight("off_source_weight", off_source_weight)
        if self.off_source_weight != 1.0 and not self.sources:
            raise ValueError("off_source_weight needs sources (source prefixes, or 'benchmark')")
        self.interval = float(interval)
        from appraiser.pricers.conformal import check_scale

        self.interval_scale = check_scale(interval_scale)
        self.scale_ = None
        self.member_scale_ = ()
        self.q_: float | None = None
        self.member_q_: list[float] = []
        self.fitted_: list[Pricer] = []
        self.weights_: dict[str, float] = {}
        self.intercept_: float = 0.0
        self.coef_: np.ndarray | None = None
        self.oof_: np.ndarray | None = None
        self.fit_info: dict[str, Any] = {}

    # ------------------------------------------------------------ identity

    @property
    def labels(self) -> list[str]:
        """Each member's label as the ensemble builds it (inherited seed and weighting included)."""
        return [self._member(j).label for j in range(len(self.member_specs))]

    @property
    def label(self) -> str:
        """The members, then every setting that differs from the defaults, like a baseline's label: the
        leaderboard keeps one row per label, so two ensembles that differ only in folds or weighting must not
        share one (the second hid the first)."""
        import inspect

        from appraiser.data.weighting import BENCHMARK_CATEGORIES, BENCHMARK_SOURCES

        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        cfg = self.config()
        cfg["categories"] = "benchmark" if self.categories == BENCHMARK_CATEGORIES else cfg["categories"]
        cfg["sources"] = "benchmark" if self.sources == BENCHMARK_SOURCES else cfg["sources"]
        if not self.interval:
            cfg["interval_scale"] = defaults["interval_scale"]  # no interval: its scale changes nothing
        skip = ("members", "seed", "weights", "intercept")  # the seed is in the members' labels
        diff = [f"{k}={cfg[k]}" for k in defaults if k not in skip and k in cfg and cfg[k] != defaults[k]]
        return f"ensemble[{'+'.join(self.labels)}{''.join(',' + d for d in diff)}]"

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": self.members,
            "folds": self.folds,
            "combine": self.combine,
            "seed": self.seed,
            "weighting": self.weighting,
            "categories": list(self.categories) if self.categories else None,
            "off_category_weight": self.off_category_weight,
            "sources": list(self.sources) if self.sources else None,
            "off_source_weight": self.off_source_weight,
            "interval": self.interval,
            "interval_scale": self.interval_scale,
            "member_weighting": self.member_weighting,
            "weights": self.weights_,
            "intercept": self.intercept_,
        }

    # ------------------------------------------------------------ fit

    def _member(self, j: int) -> Pricer:
        from appraiser.pricers import registry

        name, options = self.member_specs[j]
        opts = dict(options)
        accepted = registry.options(name)
        inherited = {"seed": self.seed}
        if self.member_weighting:  # members trained the way the combiner is fitted (a member's own option wins)
            inherited |= {
                "weighting": self.weighting,
                "categories": self.categories,
                "off_category_weight": self.off_category_weight,
                "sources": self.sources,
                "off_source_weight": self.off_source_weight,
            }
        for key, value in inherited.items():
            if key in accepted and key not in opts:
                opts[key] = value
        return registry.create(name, **opts)

    def _features(self, X: np.ndarray) -> np.ndarray:
        if self.combine == "linear":
            return np.hstack([X, X.min(axis=1, keepdims=True), X.max(axis=1, keepdims=True)])
        return X

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> EnsemblePricer:
        """Out-of-fold member predictions → combiner → members refitted on all of `train`.
        `validation` is ignored on purpose (see the module doc)."""
        from sklearn.model_selection import KFold

        from appraiser.evaluation.evaluator import fit_pricer

        train = list(train)
        if len(train) < self.folds * 2:
            raise ValueError(f"{len(train)} training items are too few for {self.folds} folds")
        start = time.perf_counter()
        m = len(self.member_specs)
        oof = np.full((len(train), m), np.nan)
        y = np.log(np.array([it.price for it in train]))
        w = sample_weights(
            train,
            self.weighting,
            None,
            categories=self.categories,
            off_category_weight=self.off_category_weight,
            sources=self.sources,
            off_source_weight=self.off_source_weight,
        )
        folds = KFold(self.folds, shuffle=True, random_state=self.seed).split(np.arange(len(train)))
        for tr, te in folds:
            te = te[w[te] > 0]  # an item of weight 0 enters neither the combiner nor the interval: never priced
            part, held = [train[i] for i in tr], [train[i] for i in te]
            for j in range(m):
                p = self._member(j)
                fit_pricer(p, part)
                oof[te, j] = _log_prices(p.predict(held))
        keep = w > 0
        X = np.zeros_like(oof)
        X[keep] = _fill(oof[keep])
        X = self._features(X)
        if self.combine == "nnls":
            coef, intercept = nnls_with_intercept(X[keep], y[keep], w[keep])
        else:
            from sklearn.linear_model import LinearRegression

            lr = LinearRegression().fit(X[keep], y[keep], sample_weight=w[keep])
            coef, intercept = lr.coef_, float(lr.intercept_)
        self.coef_, self.intercept_ = np.asarray(coef, dtype=float), intercept
        names = self.labels + (["min", "max"] if self.combine == "linear" else [])
        self.weights_ = {n: round(float(c), 6) for n, c in zip(names, self.coef_, strict=True)}
        self.oof_ = oof
        stacked = X @ self.coef_ + intercept
        if self.interval:  # conformal on out-of-fold errors: every training item is a calibration item
            self._calibrate(train, oof, X[:, :m], stacked, y, w, keep)
        self.fitted_ = []
        for j in range(m):
            p = self._member(j)
            fit_pricer(p, train)
            self.fitted_.append(p)
        self.fit_info = {
            "n_train": len(train),
            "data": data_fingerprint(train, w),
            "weights": self.weights_,
            "intercept": round(self.intercept_, 6),
            "oof_rmse_log": round(float(np.sqrt(np.mean((stacked - y)[keep] ** 2))), 6),
            "member_oof_rmse_log": {
                n: round(float(np.sqrt(np.nanmean((oof[:, j] - y) ** 2))), 6) for j, n in enumerate(self.labels)
            },
            "q": self.q_,
            "member_q": self.member_q_,
            "seconds": round(time.perf_counter() - start, 3),
        }
        return self

    def _calibrate(self, train, oof, X, stacked, y, w, keep) -> None:
        """q (and with interval_scale="difficulty" the difficulty models) of the ensemble and of each member,
        from the out-of-fold errors of the items that fit the combiner."""
        from appraiser.pricers.conformal import normalized_quantile, weighted_quantile

        def quantile(rows: np.ndarray, z: np.ndarray, spread: np.ndarray | None = None):
            errors = np.abs(z[rows] - y[rows])
            if self.interval_scale == "none":
                return weighted_quantile(errors, w[rows], self.interval), None
            items = [train[i] for i in np.flatnonzero(rows)]
            sub = None if spread is None else spread[rows]
            return normalized_quantile(items, z[rows], errors, w[rows], self.interval, sub, seed=self.seed)

        self.q_, self.scale_ = quantile(keep, stacked, X.std(axis=1))
        ok = ~np.isnan(oof)
        members = [quantile(ok[:, j] & keep, oof[:, j]) for j in range(oof.shape[1])]
        self.member_q_ = [q for q, _ in members]
        self.member_scale_ = tuple(s for _, s in members) if self.interval_scale != "none" else ()

    def member(self, j: int) -> Pricer:
        """Member `j` as refitted on all of `train`, with its own out-of-fold conformal interval (when
        `interval` > 0): the same model the member would be fitted alone, so it can be evaluated alone."""
        from appraiser.pricers.conformal import Conformal

        p = self.fitted_[j]
        if not self.interval:
            return p
        scale = self.member_scale_[j] if self.member_scale_ else None
        return Conformal.from_fitted(p, self.member_q_[j], self.interval, scale)

    # ------------------------------------------------------------ predict

    def member_log_prices(self, items: Sequence[Item]) -> np.ndarray:
        """(n_items, members) log prices from the refitted members."""
        return np.column_stack([_log_prices(p.predict(items)) for p in self.fitted_])

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if not self.fitted_:
            raise RuntimeError(f"{self.label}: call fit() (or load a fitted ensemble) before predict()")
        if not items:
            return []
        X = self.member_log_prices(items)
        failed = np.isnan(X).all(axis=1)
        filled = _fill(np.where(failed[:, None], 0.0, X))
        z = self._features(filled) @ self.coef_ + self.intercept_
        q = self.q_
        if q is not None and self.scale_ is not None:
            q = q * self.scale_.predict(items, z, filled.std(axis=1))
        return log_predictions(z, failed, q)
