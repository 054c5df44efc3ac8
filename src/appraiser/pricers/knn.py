"""`knn`: price an item like its K nearest training items in the retrieval index.

The same neighbours the RAG prompts show (a `RetrievalIndex`: all-MiniLM-L6-v2 vectors, FAISS search, never
the item itself nor a copy, no held-out item), aggregated as knn-embed does: each neighbour weighs
sample weight / (cosine distance + 0.01), the guess is the weighted mean of their log prices (a geometric
mean) or the weighted median. With ``index=FOLDER`` it reuses a built index and refuses one built from
another pool than the one it is fitted on; without, `fit` builds its own from the training items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appraiser.data.io import DataError
from appraiser.items import Item
from appraiser.pricers.baselines import Baseline, _weighted_median
from appraiser.pricers.registry import register
from appraiser.retrieval.index import DEFAULT_BACKEND, RetrievalIndex


@register("knn", "k nearest neighbours in the retrieval index (FAISS over all-MiniLM-L6-v2; no self, no held-out)")
class KnnPricer(Baseline):
    name = "knn"
    default_params = {"k": 10, "aggregate": "mean", "backend": DEFAULT_BACKEND, "index": None}
    positive_params = ("k",)  # k=2.7 is refused, not read as 2 under the label knn[k=2.7]

    def __init__(self, cache_dir: str | Path | None = None, progress: bool = False, **options: Any):
        super().__init__(**options)  # target, weighting, seed, categories, ...: the registry reads them from Baseline
        if self.params["aggregate"] not in ("mean", "median"):
            raise ValueError("aggregate must be 'mean' or 'median'")
        self.cache_dir = cache_dir
        self.progress = progress
        self._held_out: list[Item] = []

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> KnnPricer:
        self._held_out = list(validation or [])  # never in the index, whatever the pool holds
        self._pool = list(train)
        try:
            return super().fit(train, validation)
        finally:
            self._held_out, self._pool = [], []

    def _fit(self, items, y, w):
        folder = self.params["index"]
        if folder is not None:
            index = RetrievalIndex.load(folder, backend=self.params["backend"], cache_dir=self.cache_dir)
            index.check_pool(self._pool)
        else:
            index = RetrievalIndex(self.params["backend"], cache_dir=self.cache_dir)
            index.build(items, self._held_out, progress=self.progress)
        by_id = {it.id: (t, wt) for it, t, wt in zip(items, y, w, strict=True)}
        target = [by_id.get(r["id"]) for r in index.records]
        if any(t is None for t in target):  # an index row outside the drawn items (weights dropped it)
            keep = [i for i, t in enumerate(target) if t is not None]
            raise DataError(f"{len(target) - len(keep)} index items are not in the weighted training draw")
        self.index_ = index
        self.y_ = np.array([t[0] for t in target], dtype=float)
        self.w_ = np.array([t[1] for t in target], dtype=float)

    def _predict(self, items):
        k = int(self.params["k"])
        pos = {r["id"]: i for i, r in enumerate(self.index_.records)}
        out = np.empty(len(items))
        for i, found in enumerate(self.index_.search(items, k)):
            if not found:  # every indexed item is the item itself or a copy of it (a tiny pool): a failure
                out[i] = np.nan
                continue
            idx = np.array([pos[n.id] for n in found])
            sims = np.array([n.score for n in found])
            weights = self.w_[idx] / (1.0 - sims + 0.01)
            if self.params["aggregate"] == "mean":
                out[i] = np.average(self.y_[idx], weights=weights)
            else:
                out[i] = _weighted_median(self.y_[idx], weights)
        return out
