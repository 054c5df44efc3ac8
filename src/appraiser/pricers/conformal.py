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
is only asked to price the calibration slice — drawn from the pool items a fine-tune did *not* train on
(`trained_keys`: the run's own draw, replayed from its `config.json`), since its errors on items it learned
are smaller than on new ones and would make q too narrow.

`ConformalQuantile` is conformalised quantile regression (CQR, Romano et al. 2019) for a pricer that reports
its own quantiles (the llm pricer's digit beam): the model's central interval [lo, hi] at `level` is kept in
shape and widened (or narrowed) in log space by the conformal quantile Q of the calibration items' scores
max(log lo − log y, log y − log hi), to [lo e^−Q, hi e^Q]. It keeps the model's sense of which items are
hard (a wide beam stays wider) and gets the split-conformal promise of `level` coverage on exchangeable items.

`scale="difficulty"` makes the split interval adapt to the item (normalised conformal: Papadopoulos et al.
2008, Lei et al. 2018). One q for every item keeps its promise on average and breaks it by price level: the
recipe's ensemble, out of fold on the curated rows, covered 70% of the items in the cheapest third of its
guesses and 87% in the dearest third (`python benchmarks/levers.py intervals`). `Difficulty` is a small ridge
model of |log error| from what is known when pricing (the guess's log price and its square, the text's length,
the category, and for an ensemble its members' spread); each calibration score is divided by the item's
expected error — cross-fitted, so an item's own error never sets its scale — the quantile q is taken of
those, and a new item gets [g e^-qσ, g e^qσ]. The marginal promise is the same; the coverage is even
across price levels, and the mean width in dollars is smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from appraiser.data.weighting import sample_weights
from appraiser.items import Item
from appraiser.pricers.base import Prediction, Pricer


def run_config(pricer: Pricer) -> Any:
    """The `TrainConfig` of a fine-tuned pricer's run (its `config.json`), or None for anything else."""
    adapter = getattr(pricer, "adapter", None)
    if adapter is None:
        return None
    from pathlib import Path

    from appraiser.training.config import TrainConfig

    adapter = Path(adapter)
    found = [f / "config.json" for f in (adapter, adapter.parent) if (f / "config.json").exists()]
    if not found:
        raise ValueError(f"{adapter}: no run config.json, so the items it trained on are unknown")
    cfg = TrainConfig.load(found[0])
    if cfg.train is None:
        raise ValueError(f"{found[0]}: names no training pool")
    return cfg


def _run_weights(cfg: Any, items: Sequence[Item]) -> np.ndarray:
    """The weights the run drew its training items by (`choose_items`), for `items`."""
    from appraiser.data.io import read_items

    reference = read_items(cfg.validation) if cfg.validation is not None and cfg.weighting == "match" else None
    return sample_weights(
        items,
        cfg.weighting,
        reference,
        off_category_weight=cfg.off_category_weight,
        sources=cfg.sources,
        off_source_weight=cfg.off_source_weight,
    )


def trained_keys(pricer: Pricer) -> set[str]:
    """Ids and copy keys (`retrieval.index.copy_keys`) of the items a fine-tuned pricer's run trained on (empty
    for anything else).

    The trainer draws its items with `training.dataset.choose_items(pool, n_train, weighting, seed, …)` from
    the pool its `config.json` names; the draw is seeded, so replaying it gives the same items. (All n_train
    drawn items count as trained on, even when max_steps stopped the run before it saw them all.)
    """
    cfg = run_config(pricer)
    if cfg is None:
        return set()
    from appraiser.data.io import read_items, read_pool
    from appraiser.retrieval.index import copy_keys
    from appraiser.training.dataset import choose_items

    reference = read_items(cfg.validation) if cfg.validation is not None and cfg.weighting == "match" else None
    drawn = choose_items(
        read_pool(cfg.train),
        cfg.n_train,
        cfg.weighting,
        cfg.seed,
        reference,
        cfg.off_category_weight,
        cfg.sources,
        cfg.off_source_weight,
    )
    recorded = _recorded_fingerprint(pricer)
    if recorded is not None:
        from appraiser.items import fingerprint

        if fingerprint(drawn) != recorded:
            # Replaying the seeded draw on a pool that changed (rows added, removed or reordered) gives other
            # items: "unseen" calibration items would then include items the model trained on, and its interval
            # would look better than it is.
            raise ValueError(
                f"the training pool of run {pricer.adapter} changed since it drew its items, so the items it "
                "trained on cannot be told apart: calibrate with the pool files as they were when it trained"
            )
    return {it.id for it in drawn}.union(*(copy_keys(it) for it in drawn))


def _recorded_fingerprint(pricer: Pricer) -> str | None:
    """The fingerprint of the items the run drew, as the run store recorded it when it started (None: the
    adapter names no run this store knows, say a copied run folder)."""
    from appraiser import config
    from appraiser.models import finetune_info
    from appraiser.runs.store import RunNotFound, RunStore

    run_id = finetune_info(pricer.adapter).get("run_id")
    if not run_id or not (config.home() / "runs.db").exists():
        return None
    try:
        return RunStore().get(run_id).config.get("data_fingerprint")
    except RunNotFound:
        return None


def unseen(pricer: Pricer, items: Sequence[Item]) -> list[Item]:
    """`items` minus those the pricer's fine-tune trained on and their copies (`retrieval.index.copy_keys`)."""
    keys = trained_keys(pricer)
    if not keys:
        return list(items)
    from appraiser.retrieval.index import copy_keys

    return [it for it in items if it.id not in keys and not copy_keys(it) & keys]


def calibration_split(
    pricer: Pricer, train: Sequence[Item], share: float, most: int, seed: int, needs_fit: bool
) -> tuple[list[Item], list[Item]]:
    """(calibration, proper training) items: a seeded `share` (at most `most`, at least 20) of `train`; for a
    pricer that is not fitted here, drawn only from the items its fine-tune did not train on, and drawn like its
    training items were (the run's weighting and categories, without replacement): calibration items should
    look like the items the model is meant for, and the run's draw says what those are."""
    train = list(train)
    candidates = train if needs_fit else unseen(pricer, train)
    n_cal = min(most, max(20, int(round(share * len(train)))))
    if needs_fit and n_cal >= len(train):
        raise ValueError(f"{len(train)} training items are too few to keep {n_cal} for calibration")
    cfg = None if needs_fit else run_config(pricer)
    w = _run_weights(cfg, candidates) if cfg is not None and candidates else np.ones(len(candidates))
    if not candidates or w.sum() <= 0:
        raise ValueError("every pool item the fine-tune could draw was a training item: no calibration items left")
    rng = np.random.default_rng(seed)
    if cfg is None:
        order = rng.permutation(len(candidates))[:n_cal]
    else:
        order = rng.choice(len(candidates), size=min(n_cal, int((w > 0).sum())), replace=False, p=w / w.sum())
    cal = [candidates[i] for i in order]
    chosen = {id(it) for it in cal}
    return cal, [it for it in train if id(it) not in chosen]


def percent(level: float) -> str:
    """A level as the percent in a label: 80 for 0.8, 0.1 for 0.001 (two levels never share a label)."""
    return f"{round(level * 100, 6):g}"


INTERVAL_SCALES = ("none", "difficulty")


def check_scale(scale: str) -> str:
    if scale not in INTERVAL_SCALES:
        raise ValueError(f"the interval scale must be one of {', '.join(INTERVAL_SCALES)}, not {scale!r}")
    return scale


class Difficulty:
    """An item's expected |log error| from what a pricer knows when it prices it (see the module doc).

    Ridge regression on: the guess's log price (clipped to the range seen in calibration) and its square, the
    log length of the text, one indicator per category seen in calibration (another category: none), and an
    ensemble's member spread when given. Predictions are floored at a tenth of the mean calibration error, so
    no item gets a zero-width interval.
    """

    def fit(
        self,
        items: Sequence[Item],
        z: np.ndarray,
        errors: np.ndarray,
        weights: np.ndarray | None = None,
        spread: np.ndarray | None = None,
    ) -> Difficulty:
        from sklearn.linear_model import Ridge

        z = np.asarray(z, dtype=float)
        self.categories_ = sorted({it.category or "" for it in items})
        self.z_range_ = (float(z.min()), float(z.max()))
        self.uses_spread_ = spread is not None
        errors = np.asarray(errors, dtype=float)
        self.floor_ = max(0.1 * float(errors.mean()), 1e-6)
        self.model_ = Ridge(alpha=1.0).fit(self.design(items, z, spread), errors, sample_weight=weights)
        return self

    def design(self, items: Sequence[Item], z: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
        z = np.clip(np.asarray(z, dtype=float), *self.z_range_)
        cols = [z, z**2, np.log1p([len(it.text or "") for it in items])]
        if self.uses_spread_:
            if spread is None:
                raise ValueError("this difficulty model was fitted with the members' spread: pass it")
            cols.append(np.asarray(spread, dtype=float))
        cats = np.array([[(it.category or "") == c for c in self.categories_] for it in items], dtype=float)
        return np.column_stack([*cols, cats.reshape(len(items), len(self.categories_))])

    def predict(self, items: Sequence[Item], z: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
        if not len(items):
            return np.zeros(0)
        return np.maximum(self.model_.predict(self.design(items, z, spread)), self.floor_)


def normalized_quantile(
    items: Sequence[Item],
    z: np.ndarray,
    errors: np.ndarray,
    weights: np.ndarray,
    level: float,
    spread: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> tuple[float, Difficulty]:
    """(q, difficulty model): q the conformal quantile of errors / σ, each calibration item's σ from a model
    fitted on the other folds; the returned model (fitted on all of them) gives new items their σ."""
    errors, weights = np.asarray(errors, dtype=float), np.asarray(weights, dtype=float)
    sigma = cross_fitted_difficulty(items, z, errors, weights, spread, folds, seed)
    q = weighted_quantile(errors / sigma, weights, level)
    return q, Difficulty().fit(items, z, errors, weights, spread)


def cross_fitted_difficulty(
    items: Sequence[Item],
    z: np.ndarray,
    errors: np.ndarray,
    weights: np.ndarray,
    spread: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Each calibration item's σ from a difficulty model fitted on the other `folds` - 1 folds."""
    from sklearn.model_selection import KFold

    items, z = list(items), np.asarray(z, dtype=float)
    sigma = np.empty(len(items))
    k = min(folds, len(items))
    if k < 2:
        raise ValueError("a difficulty-scaled interval needs at least 2 calibration items")
    for tr, te in KFold(k, shuffle=True, random_state=seed).split(np.arange(len(items))):
        sub = None if spread is None else spread[tr]
        model = Difficulty().fit([items[i] for i in tr], z[tr], errors[tr], weights[tr], sub)
        sigma[te] = model.predict([items[i] for i in te], z[te], None if spread is None else spread[te])
    return sigma


def weighted_quantile(values: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The conformal quantile: the smallest v with weighted share >= level·(1 + 1/n) at or below it."""
    if len(values) == 0 or not np.sum(weights) > 0:  # a NaN or zero total would divide by nothing below
        raise ValueError("no calibration item with a weight above 0 to set the interval's width from")
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w) / w.sum()
    target = min(1.0, level * (1 + 1 / len(v)))
    return float(v[min(len(v) - 1, np.searchsorted(cw, target - 1e-12))])


class Conformal(Pricer):
    """`base` with split-conformal intervals at `level`; prices are the base pricer's own."""

    name: ClassVar[str] = "conformal"
    # class-level defaults: a wrapper pickled before difficulty scaling existed loads as a plain one
    scale: str = "none"
    scale_: Difficulty | None = None

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
        scale: str = "none",
    ):
        if not 0 < level < 1:
            raise ValueError(f"the interval level must be between 0 and 1, not {level}")
        self.scale = check_scale(scale)
        self.scale_: Difficulty | None = None
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
    def from_fitted(cls, base: Pricer, q: float, level: float, scale: Difficulty | None = None) -> Conformal:
        """A fitted `base` with a quantile `q` found elsewhere (e.g. an ensemble's out-of-fold errors), and the
        difficulty model its scores were divided by, if any."""
        c = cls(base, level=level, needs_fit=False, scale="none" if scale is None else "difficulty")
        c.q_, c.scale_ = float(q), scale
        c.fit_info = {**(getattr(base, "fit_info", None) or {}), "conformal_q": round(c.q_, 6), "calibration": "oof"}
        return c

    @property
    def label(self) -> str:
        """`BASE+ci80`, and `+ci80:difficulty` for scaled widths: the leaderboard keeps one row per label, and the
        two intervals are different pricers."""
        scaled = ":difficulty" if self.scale == "difficulty" or self.scale_ is not None else ""
        return f"{self.base.label}+ci{percent(self.level)}{scaled}"

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
                "scale": self.scale,
            },
        }

    def usage(self) -> dict[str, Any] | None:
        return self.base.usage() if callable(getattr(self.base, "usage", None)) else None

    @property
    def fixed_base(self) -> bool:
        """Whether fitting only calibrates (the base is not fitted here: an API model, a fine-tune). Then the
        evaluator prices `calibration_items` itself, cached and concurrent, and hands them to `calibrate`: a
        rerun of `appraiser eval api --interval 0.8` asks the API nothing it asked before."""
        return not self.needs_fit

    def calibration_items(self, train: Sequence[Item]) -> list[Item]:
        return calibration_split(self.base, train, self.calibration, self.max_calibration, self.seed, False)[0]

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> Conformal:
        train = list(train)
        cal, proper = calibration_split(
            self.base, train, self.calibration, self.max_calibration, self.seed, self.needs_fit
        )
        if self.needs_fit:
            self.base.fit(proper, validation)
        self.calibrate(self.base.predict(cal), cal)
        if self.needs_fit and self.refit:
            self.base.fit(train, validation)
            self.fit_info = {**(getattr(self.base, "fit_info", None) or {}), **self._calibration_info()}
        return self

    def _calibration_info(self) -> dict[str, Any]:
        keys = ("conformal_q", "calibration_items", "interval_scale")
        return {k: self.fit_info[k] for k in keys if k in self.fit_info}

    def calibrate(self, preds: Sequence[Prediction], cal: Sequence[Item]) -> float:
        """q (and the difficulty model) from the base's predictions of the calibration items `cal`."""
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
        if self.scale == "difficulty":
            guesses = np.log([g for g, _ in ok])
            self.q_, self.scale_ = normalized_quantile([it for _, it in ok], guesses, scores, w, self.level)
        else:
            self.q_ = weighted_quantile(scores, w, self.level)
        base_info = getattr(self.base, "fit_info", None) or {}
        self.fit_info = {**base_info, "conformal_q": round(self.q_, 6), "calibration_items": len(ok)}
        if self.scale_ is not None:
            self.fit_info["interval_scale"] = self.scale
        return self.q_

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if self.q_ is None:
            raise RuntimeError(f"{self.label}: call fit() before predict()")
        preds = self.base.predict(items)
        half = np.full(len(preds), self.q_)  # the half-width in log space, per item
        if self.scale_ is not None:
            priced = [i for i, p in enumerate(preds) if p.price is not None and p.price > 0]
            z = np.log([preds[i].price for i in priced])
            half[priced] = self.q_ * self.scale_.predict([items[i] for i in priced], z)
        out = []
        for p, h in zip(preds, half, strict=True):
            if p.price is None:
                out.append(p)
            else:
                factor = math.exp(h)
                out.append(p.model_copy(update={"low": p.price / factor, "high": p.price * factor}))
        return out


def quantile_interval(pred: Prediction, level: float) -> tuple[float, float] | None:
    """The central `level` interval a prediction's own distribution gives: from the quantiles in its raw text
    (the digit beam's `QUANTILE_LEVELS`), else its low/high; None when it has neither."""
    from appraiser.inference.decode import QUANTILE_LEVELS, parse_quantiles

    qs = parse_quantiles(pred.raw)
    if qs is not None:
        tail = round((1 - level) / 2, 6)
        grid = [round(g, 6) for g in QUANTILE_LEVELS]
        if tail not in grid:
            raise ValueError(f"level {level} is not a central interval of the quantile grid (0.1, 0.2, …, 0.9)")
        return qs[grid.index(tail)], qs[grid.index(round(1 - tail, 6))]
    if pred.low is not None and pred.high is not None:
        return pred.low, pred.high
    return None


def cqr_scores(lows: np.ndarray, highs: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """CQR conformity scores in log space: how far outside [low, high] each truth lies (negative: inside)."""
    lo, hi = np.log(np.clip(lows, 1e-9, None)), np.log(np.clip(highs, 1e-9, None))
    y = np.log(truths)
    return np.maximum(lo - y, y - hi)


class ConformalQuantile(Pricer):
    """`base` (a pricer that reports its own quantiles: the llm pricer's beam) with its central `level` interval
    conformalised (CQR): [lo e^-Q, hi e^Q], Q calibrated on pool items the base never trained on."""

    name: ClassVar[str] = "cqr"

    def __init__(self, base: Pricer, level: float = 0.8, max_calibration: int = 300, seed: int = 0):
        if not 0 < level < 1:
            raise ValueError(f"the interval level must be between 0 and 1, not {level}")
        self.base, self.level = base, float(level)
        self.max_calibration, self.seed = int(max_calibration), int(seed)
        self.batch_size, self.concurrency = base.batch_size, base.concurrency
        self.q_: float | None = None
        self.fit_info: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"{self.base.label}+cqr{percent(self.level)}"

    def config(self) -> dict[str, Any]:
        return {
            **self.base.config(),
            "cqr": {"level": self.level, "calibration": self.max_calibration, "seed": self.seed},
        }

    def usage(self) -> dict[str, Any] | None:
        return self.base.usage() if callable(getattr(self.base, "usage", None)) else None

    def calibrate(self, preds: Sequence[Prediction], items: Sequence[Item]) -> float:
        """Q from the base's predictions of calibration items (those it failed or gave no interval are skipped)."""
        rows = [(quantile_interval(p, self.level), it.price) for p, it in zip(preds, items, strict=True)]
        rows = [(iv, y) for iv, y in rows if iv is not None and y > 0]
        if not rows:
            raise ValueError(f"{self.base.label}: no calibration item got an interval (does it report quantiles?)")
        lows, highs = np.array([iv[0] for iv, _ in rows]), np.array([iv[1] for iv, _ in rows])
        scores = cqr_scores(lows, highs, np.array([y for _, y in rows]))
        self.q_ = weighted_quantile(scores, np.ones(len(scores)), self.level)
        self.fit_info = {
            **(getattr(self.base, "fit_info", None) or {}),
            "cqr_q": round(self.q_, 6),
            "calibration_items": len(rows),
        }
        return self.q_

    fixed_base = True  # see Conformal.fixed_base

    def calibration_items(self, train: Sequence[Item]) -> list[Item]:
        return calibration_split(self.base, train, 1.0, self.max_calibration, self.seed, needs_fit=False)[0]

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> ConformalQuantile:
        cal = self.calibration_items(train)
        self.calibrate(self.base.predict(cal), cal)
        return self

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if self.q_ is None:
            raise RuntimeError(f"{self.label}: call fit() before predict()")
        factor = math.exp(self.q_)
        out = []
        for p in self.base.predict(items):
            iv = quantile_interval(p, self.level) if p.price is not None else None
            out.append(p if iv is None else p.model_copy(update={"low": iv[0] / factor, "high": iv[1] * factor}))
        return out
