"""`llm-kernel`: a frozen language model's features read by RBF kernel ridge regression.

Why this pricer exists: on the first 400 validation items the frozen Gemma-3-270M's prompt-mean features,
read by kernel ridge (`python benchmarks/readout.py --model gemma3-270m --n-train 7200 --seed 42
--max-text-tokens 128 --pooling mean`), priced as well as a one-epoch LoRA fine-tune of the same model read
the same way ($97.96 vs $98.81) — with no backward pass at all. Features are computed once per item and
cached on disk (`FeatureCache`, the embedding cache's SQLite file with another model behind it), so the
K folds of a stacked `ensemble` refit in seconds: it is the language-model member a CPU can afford.

The read-out is `training.refit`'s kernel head as a standalone model: features standardised, an RBF kernel
(gamma = gamma_scale / features), kernel ridge on the target (log price by default), its penalty chosen by
the exact leave-one-out error in dollars from one eigendecomposition (weighted by the sample weights, so
`--weighting`/`categories` decide which items the penalty is judged on). The kernel matrix is n x n, so at
most `max_items` training items are kept (a weighted draw without replacement, seeded per item id); weights of zero
drop an item as in every baseline.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appraiser.items import Item
from appraiser.pricers.baselines import Baseline, EmbeddingCache
from appraiser.pricers.features import from_target
from appraiser.pricers.registry import register

#: Kernel ridge penalties tried (the RBF kernel's diagonal is 1), as the head refit tries them.
ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 1, 13))


class FeatureCache(EmbeddingCache):
    """A language model's pooled prompt features on disk, keyed by a hash of (model, pooling, prompt).

    The prompt already carries the description's truncation, so another `max_text_tokens` is another key.
    The model is loaded on the first miss only: a fit whose features are all cached never loads it.
    """

    def __init__(self, model: str, pooling: str, folder: str | Path | None = None, batch_size: int = 16):
        super().__init__(folder, chunk=8 * batch_size)
        self.model_name, self.pooling, self.batch_size = model, pooling, batch_size
        self._tokenizer = None

    @property
    def dtype(self) -> str:
        """The dtype the model will run in here ("float32", "bfloat16"): bf16 features agree with fp32 ones
        to a cosine of 0.99997 (Gemma-3-270M, 64 validation prompts) at twice the speed on a CPU with native
        bf16, but a cache never mixes the two: bf16 features live in their own file."""
        from appraiser.models import default_device, default_dtype

        return str(default_dtype(default_device())).removeprefix("torch.")

    @property
    def path(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_name).strip("_")
        suffix = "" if self.dtype == "float32" else f"-{self.dtype}"
        return self.folder / f"features-{safe}-{self.pooling}{suffix}.sqlite"

    def key(self, text: str) -> str:
        return hashlib.sha1(f"{self.model_name}\x1f{self.pooling}\x1f{text}".encode()).hexdigest()

    def tokenizer(self):
        if self._tokenizer is None:
            from appraiser.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_name)
        return self._tokenizer

    def model(self):
        if self._model is None:
            from appraiser.inference.head import attach_head
            from appraiser.models import load_model

            model, tok = load_model(self.model_name)
            attach_head(model, pooling=self.pooling)  # only its pooling is used: it reads the features
            self._model, self._tokenizer = model, tok
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        from appraiser.training.refit import prompt_features

        model = self.model()
        return prompt_features(model, self.tokenizer(), texts, batch_size=self.batch_size).astype(np.float32)

    def __getstate__(self):
        return {**super().__getstate__(), "_tokenizer": None}


def priority(items: Sequence[Item], w: np.ndarray, seed: int) -> np.ndarray:
    """Keys u^(1/w) with u uniform from a hash of (seed, item id): the top n is a weighted draw without
    replacement (Efraimidis–Spirakis) that is the same for an item whatever else is in the pool, so the
    folds of an ensemble draw mostly the same items and their features are computed once."""
    u = np.array(
        [
            (int.from_bytes(hashlib.sha1(f"{seed}:{it.id}".encode()).digest()[:8], "little") + 0.5) / 2**64
            for it in items
        ]
    )
    return np.log(u) / np.maximum(w, 1e-12)


@register("llm-kernel", "a frozen LLM's prompt features (Gemma-3-270M by default) read by RBF kernel ridge")
class LLMKernel(Baseline):
    name = "llm-kernel"
    default_params = {
        "model": "gemma3-270m",
        "pooling": "mean",
        "max_text_tokens": 128,
        "max_items": 6000,
        "gamma_scale": 1.0,
        "batch_size": 16,
    }

    def __init__(self, cache_dir: str | Path | None = None, progress: bool = False, **options: Any):
        super().__init__(**options)  # target, weighting, seed, categories, ...: the registry reads them from Baseline
        if self.params["pooling"] not in ("mean", "last", "both"):
            raise ValueError("pooling must be mean, last or both")
        if int(self.params["max_items"]) < 3:
            raise ValueError("max_items must be at least 3")
        self.cache_dir = cache_dir
        self.progress = progress

    def _cache(self) -> FeatureCache:
        cache = getattr(self, "_feature_cache", None)
        if cache is None:
            p = self.params
            cache = FeatureCache(p["model"], p["pooling"], self.cache_dir, int(p["batch_size"]))
            self._feature_cache = cache
        return cache

    def features(self, items: Sequence[Item]) -> np.ndarray:
        """(items, features) float64: each item's prompt as the base model is asked, pooled."""
        from appraiser.data.prompts import PromptConfig, make_prompt

        cache = self._cache()
        config = PromptConfig(max_text_tokens=int(self.params["max_text_tokens"]))
        prompts = [make_prompt(it, cache.tokenizer(), config) for it in items]
        return cache.embed(prompts, progress=self.progress).astype(np.float64)

    def _fit(self, items, y, w):
        n_max = int(self.params["max_items"])
        if len(items) > n_max:  # a weighted draw without replacement: the kernel matrix is n x n
            keep = np.sort(np.argsort(-priority(items, w, self.seed))[:n_max])
            items, y, w = [items[i] for i in keep], y[keep], np.ones(n_max)
        x = self.features(items)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        std[std < 1e-8] = 1.0
        self.std_ = std
        x = (x - self.mean_) / self.std_
        self.gamma_ = float(self.params["gamma_scale"]) / x.shape[1]
        kernel = self._kernel(x, x)
        self.bias_ = float(np.average(y, weights=w))
        eigval, eigvec = np.linalg.eigh(kernel)
        del kernel
        qy = eigvec.T @ (y - self.bias_)
        q2 = eigvec**2
        truth = from_target(y, self.target)
        best: tuple[float, float, np.ndarray] | None = None
        for a in ALPHAS:
            inv = 1.0 / (eigval + a)
            dual = eigvec @ (qy * inv)
            loo = y - dual / (q2 @ inv)  # leave-one-out predictions, in target space
            mae = float(np.average(np.abs(from_target(loo, self.target) - truth), weights=w))
            if best is None or mae < best[0]:
                best = (mae, a, dual)
        assert best is not None
        self.loo_mae_, self.alpha_, self.dual_ = best[0], best[1], best[2].astype(np.float64)
        self.support_ = x.astype(np.float32)

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sa, sb = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
        return np.exp(-self.gamma_ * np.maximum(sa[:, None] + sb[None, :] - 2.0 * (a @ b.T), 0.0))

    def _predict(self, items):
        x = (self.features(items) - self.mean_) / self.std_
        support = self.support_.astype(np.float64)
        out = np.empty(len(items))
        for i in range(0, len(items), 1024):
            out[i : i + 1024] = self._kernel(x[i : i + 1024], support) @ self.dual_ + self.bias_
        return out

    def fit(self, train, validation=None):
        super().fit(train, validation)
        self.fit_info |= {"alpha": self.alpha_, "loo_mae": round(self.loo_mae_, 4), "support": len(self.dual_)}
        return self
