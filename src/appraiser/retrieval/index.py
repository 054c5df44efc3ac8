"""A retrieval index over a training pool: the K most similar priced items for any item.

What retrieval may never do is leak: a neighbour list that holds the item itself (or a copy of it under
another id) turns "similar items and their prices" into "the answer". So

* every search drops neighbours with the query's id, its normalised title, or its whole text (`copy_keys`: a
  copy whose source dropped the title has only its text in common with the original);
* `build` drops pool items that match a held-out item (validation, test) the same way, so a held-out split
  is never in the index, whatever files `--train` named;
* the index remembers the fingerprint of the pool it was built from, and `check_pool` refuses a different
  one (a pricer fitted on pool B must not read neighbours from pool A).

Vectors are all-MiniLM-L6-v2 sentence embeddings of the item text (unit length, so inner product = cosine),
cached on disk by `EmbeddingCache`. The search backend is FAISS (`faiss-cpu`) or exact numpy; `benchmarks/
index.py` measures both (build, query, recall@5 against exact search) at the pool's size and at 10x.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appraiser.data.io import DataError
from appraiser.items import Item, fingerprint

#: numpy: exact brute force; faiss-flat: exact (FAISS's BLAS kernels); faiss-hnsw: approximate graph search.
BACKENDS = ("faiss-flat", "faiss-hnsw", "numpy")
DEFAULT_BACKEND = "faiss-flat"
FORMAT = 1
#: Tokens of each text the embedding model reads: the title and the start of the description. Embedding cost
#: grows with it (the pool's 21k texts take ~20 minutes at 64 tokens on one busy CPU core, about twice that at 128).
DEFAULT_MAX_TOKENS = 64
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's


def _normalised(text: str, limit: int | None = None) -> str:
    """Case-folded, letters and digits only (of any script), single spaces; the first `limit` characters if given.

    Any script: with ASCII letters only, every text without Latin letters or digits (Japanese, Cyrillic …)
    normalised to "" and all of them counted as copies of each other. ASCII texts normalise as before."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()[:limit]


def texts_fingerprint(items: Sequence[Item]) -> str:
    """A short hash of the items' ids and texts (`items.fingerprint` hashes ids and prices)."""
    import hashlib

    h = hashlib.sha1()
    for it in items:
        h.update(f"{it.id}\x1f{it.text}\x1e".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:12]


def copy_keys(item: Item) -> frozenset[str]:
    """Keys a copy of `item` under another id shares with it; two items are copies when their keys intersect:
    the normalised title (titled items), and a hash of the whole normalised text, whatever the titles (a copy
    whose source dropped the title has nothing else in common with the original).

    The whole text, not its start: on the real pool, items whose texts share their first 200 characters are
    different products (one part number in two sizes, a fan motor for two fridges) at different prices, while
    identical whole texts are copies.
    """
    import hashlib

    whole = hashlib.sha1(_normalised(item.text).encode("utf-8", "surrogatepass")).hexdigest()[:20]
    keys = {"text:" + whole}
    title = _normalised(item.title or "", 200)
    if title:
        keys.add("title:" + title)
    return frozenset(keys)


@dataclass
class Neighbour:
    """One retrieved item: what a prompt shows of it (title, text) and its price."""

    id: str
    title: str | None
    text: str
    price: float
    score: float


def embed_items(
    items: Sequence[Item], max_tokens: int = DEFAULT_MAX_TOKENS, cache_dir: str | Path | None = None, progress=False
):
    """Unit-length all-MiniLM-L6-v2 vectors of the items' texts (cached on disk)."""
    from appraiser.pricers.baselines import EmbeddingCache

    return EmbeddingCache(cache_dir, max_tokens=max_tokens).embed([it.text for it in items], progress=progress)


class Searcher:
    """Top-k inner-product search over fixed vectors, by one of `BACKENDS`."""

    def __init__(self, vectors: np.ndarray, backend: str = DEFAULT_BACKEND, hnsw_m: int = 32, ef_search: int = 64):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.backend = backend
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index: Any = None
        if backend.startswith("faiss"):
            import faiss

            d = self.vectors.shape[1]
            if backend == "faiss-flat":
                self.index = faiss.IndexFlatIP(d)
            else:
                self.index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                self.index.hnsw.efSearch = ef_search
            self.index.add(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n_queries, k), best first; rows of -1 where the pool has fewer than k."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.vectors))
        if self.index is not None:
            return self.index.search(q, k)
        scores = q @ self.vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


class RetrievalIndex:
    """The priced items of a training pool, their vectors, and a searcher over them."""

    def __init__(
        self, backend: str = DEFAULT_BACKEND, max_tokens: int = DEFAULT_MAX_TOKENS, cache_dir: str | Path | None = None
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.backend = backend
        self.max_tokens = int(max_tokens)
        self.cache_dir = cache_dir
        self.records: list[dict[str, Any]] = []
        self.vectors: np.ndarray | None = None
        self.pool_fingerprint: str | None = None
        self.pool_texts: str | None = None  # the pool's texts too (indexes saved before it have none)
        self.info: dict[str, Any] = {}
        self._searcher: Searcher | None = None

    # ------------------------------------------------------------ building

    def build(self, pool: Sequence[Item], held_out: Sequence[Item] = (), progress: bool = False) -> RetrievalIndex:
        """Index `pool`, minus every item that is a `held_out` item or a copy of one (same id, `copy_keys`),
        and minus copies within the pool (the first one is kept)."""
        if not pool:
            raise DataError("no items to index")
        start = time.perf_counter()
        banned_ids = {it.id for it in held_out}
        banned_keys = set().union(*(copy_keys(it) for it in held_out))
        kept: list[Item] = []
        seen_ids: set[str] = set()
        seen_keys: set[str] = set()
        dropped_held = dropped_dupes = 0
        for it in pool:
            keys = copy_keys(it)
            if it.id in banned_ids or keys & banned_keys:
                dropped_held += 1
                continue
            if it.id in seen_ids or keys & seen_keys:
                dropped_dupes += 1
                continue
            seen_ids.add(it.id)
            seen_keys |= keys
            kept.append(it)
        if not kept:
            raise DataError("every pool item matches a held-out item: nothing left to index")
        self.vectors = embed_items(kept, self.max_tokens, self.cache_dir, progress)
        self.records = [{"id": it.id, "title": it.title, "text": it.text, "price": it.price} for it in kept]
        self.pool_fingerprint = fingerprint(list(pool))
        self.pool_texts = texts_fingerprint(pool)
        self._searcher = Searcher(self.vectors, self.backend)
        self.info = {
            "pool_items": len(pool),
            "indexed": len(kept),
            "dropped_held_out": dropped_held,
            "dropped_duplicates": dropped_dupes,
            "held_out_fingerprint": fingerprint(list(held_out)) if held_out else None,
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        return self

    def __len__(self) -> int:
        return len(self.records)

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            if self.vectors is None:
                raise RuntimeError("the index is empty: build() or load() it first")
            self._searcher = Searcher(self.vectors, self.backend)
        return self._searcher

    @property
    def pool_identity(self) -> str | None:
        """The pool this index was built from, as runs record it and caches key it: ids and prices, and its
        texts once indexes kept them (`<fingerprint>/<texts>`); an older index's is the fingerprint alone."""
        if self.pool_fingerprint is None:
            return None
        return self.pool_fingerprint + (f"/{self.pool_texts}" if self.pool_texts else "")

    def same_pool(self, identity: str) -> bool:
        """Whether `identity` (a `pool_identity` recorded elsewhere: a run's index_pool) names this index's pool;
        one recorded before texts were, by its ids and prices alone."""
        mine = self.pool_identity or ""
        return identity == mine if "/" in identity else identity == self.pool_fingerprint

    @property
    def record_keys(self) -> list[frozenset[str]]:
        """Each indexed item's copy keys (from its title and text, so an index saved before text keys existed
        is searched the same way)."""
        if getattr(self, "_record_keys", None) is None or len(self._record_keys) != len(self.records):
            self._record_keys = [
                copy_keys(Item(id=r["id"], title=r.get("title"), text=r["text"], price=r["price"]))
                for r in self.records
            ]
        return self._record_keys

    def check_pool(self, pool: Sequence[Item]) -> None:
        """A DataError unless `pool` is the pool this index was built from (same ids and prices, and same
        texts: a pool rewritten into summaries keeps its ids and prices, but its neighbours would differ)."""
        fp = fingerprint(list(pool))
        other = fp != self.pool_fingerprint
        if not other and self.pool_texts is not None and texts_fingerprint(pool) != self.pool_texts:
            fp, other = f"{fp} with other texts", True
        if other:
            raise DataError(
                f"this index was built from another training pool (fingerprint {self.pool_fingerprint}, "
                f"this pool's is {fp}): rebuild it with `appraiser index build` on the same --train"
            )

    # ------------------------------------------------------------ searching

    def search(self, items: Sequence[Item], k: int = 5, vectors: np.ndarray | None = None) -> list[list[Neighbour]]:
        """The k nearest indexed items of each item, never the item itself nor a copy of it."""
        if not items:
            return []
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        q = vectors if vectors is not None else embed_items(items, self.max_tokens, self.cache_dir)
        ids = [it.id for it in items]
        keys = [copy_keys(it) for it in items]
        record_keys = self.record_keys
        out: list[list[Neighbour] | None] = [None] * len(items)
        todo = list(range(len(items)))
        fetch = k + 8
        while todo:
            scores, rows = self.searcher.search(q[todo], min(fetch, len(self.records)))
            retry = []
            for j, i in enumerate(todo):
                got = []
                for s, r in zip(scores[j], rows[j], strict=True):
                    if r < 0:
                        continue
                    rec = self.records[r]
                    if rec["id"] == ids[i] or record_keys[r] & keys[i]:
                        continue
                    got.append(Neighbour(rec["id"], rec["title"], rec["text"], rec["price"], float(s)))
                    if len(got) == k:
                        break
                if len(got) < k and fetch < len(self.records):
                    retry.append(i)
                else:
                    out[i] = got
            todo, fetch = retry, fetch * 4
        return [o or [] for o in out]

    # ------------------------------------------------------------ files

    def save(self, folder: str | Path) -> Path:
        """`folder/index.json` (settings, fingerprints), `items.jsonl` (what prompts show), `vectors.npy`."""
        from appraiser.atomic import replacing

        if self.vectors is None:
            raise RuntimeError("nothing to save: build() the index first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with replacing(folder / "vectors.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.vectors)
        with replacing(folder / "items.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        meta = {
            "format": FORMAT,
            "backend": self.backend,
            "max_tokens": self.max_tokens,
            "embedding_model": "all-MiniLM-L6-v2",
            "pool_fingerprint": self.pool_fingerprint,
            "pool_texts": self.pool_texts,
            **self.info,
        }
        with replacing(folder / "index.json") as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, backend: str | None = None, cache_dir: str | Path | None = None):
        """An index saved with `save` (its search structure is rebuilt from the vectors: seconds)."""
        folder = Path(folder)
        if not (folder / "index.json").exists():
            raise DataError(f"{folder}: not a retrieval index (no index.json; build one with `appraiser index build`)")
        try:
            return cls._load(folder, backend, cache_dir)
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as e:  # a damaged file
            reason = f"{type(e).__name__}: {e}"[:200]
            raise DataError(
                f"{folder}: damaged retrieval index ({reason}); rebuild it with `appraiser index build`"
            ) from None

    @classmethod
    def _load(cls, folder: Path, backend: str | None, cache_dir: str | Path | None):
        meta = json.loads((folder / "index.json").read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise DataError(f"{folder}: index format {found} is not {FORMAT}; rebuild it")
        idx = cls(backend or meta["backend"], meta["max_tokens"], cache_dir)
        idx.vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        with open(folder / "items.jsonl", encoding="utf-8") as f:
            idx.records = [json.loads(line) for line in f if line.strip()]
        if idx.vectors.ndim != 2 or idx.vectors.shape[1] != EMBEDDING_DIM:
            raise DataError(f"{folder}: vectors of shape {idx.vectors.shape}, not (n, {EMBEDDING_DIM}); rebuild it")
        if len(idx.records) != len(idx.vectors):
            raise DataError(f"{folder}: {len(idx.records)} items but {len(idx.vectors)} vectors; rebuild it")
        if not all(isinstance(r, dict) and {"id", "text", "price"} <= r.keys() for r in idx.records):
            raise DataError(f"{folder}: items.jsonl has records without id, text or price; rebuild it")
        idx.pool_fingerprint = meta["pool_fingerprint"]
        idx.pool_texts = meta.get("pool_texts")
        settings = ("format", "backend", "max_tokens", "pool_fingerprint", "pool_texts")
        idx.info = {k: v for k, v in meta.items() if k not in settings}
        return idx

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_searcher": None}  # FAISS structures are rebuilt, not pickled


def neighbours_as_dicts(neighbours: Sequence[Neighbour]) -> list[dict[str, Any]]:
    return [asdict(n) for n in neighbours]
