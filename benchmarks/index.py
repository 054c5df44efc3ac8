"""Which vector store for the retrieval index: build time, query time and recall@5 against exact search.

    python benchmarks/index.py [--data ../shared/data] [--home .appraiser]

Vectors are the real all-MiniLM-L6-v2 embeddings (64 tokens, the index's default) of the training pool
(train.jsonl + extra/, read through `read_pool`), queries the 500 validation items. "10x" is the pool
plus nine jittered copies of each vector (Gaussian noise, renormalised): there are not ten times as many
real items, and the copies keep the neighbourhood structure of real text while making search ten times
bigger. Recall@5 is the share of exact numpy top-5 found by a backend's top-5. Embeddings come from the
cache under --home (`appraiser index build` fills it); the first run embeds whatever is missing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    ap.add_argument("--home", type=Path, default=None, help="APPRAISER_HOME holding the embedding cache")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--pool", choices=("all", "train"), default="all", help="train.jsonl + extra/, or train.jsonl")
    ap.add_argument("--threads", type=int, default=1, help="FAISS / BLAS threads (the machine is shared)")
    args = ap.parse_args()
    if args.home is not None:
        os.environ["APPRAISER_HOME"] = str(args.home)

    import faiss

    from appraiser.data.io import read_items, read_pool
    from appraiser.retrieval.index import Searcher, embed_items

    faiss.omp_set_num_threads(args.threads)
    pool = read_pool(args.data if args.pool == "all" else args.data / "train.jsonl")
    queries_items = read_items(args.data / "validation.jsonl")
    base = embed_items(pool, progress=True)
    queries = embed_items(queries_items)
    rng = np.random.default_rng(0)
    jitter = [base + rng.normal(0, 0.02, base.shape).astype(np.float32) for _ in range(9)]
    big = np.concatenate([base, *[j / np.linalg.norm(j, axis=1, keepdims=True) for j in jitter]])

    t = Table(title=f"retrieval backends, {len(queries)} queries, recall@{args.k} vs exact numpy", box=box.SIMPLE_HEAD)
    for col in ("pool", "vectors", "backend", "build s", "query s (all)", "ms / query", f"recall@{args.k}"):
        t.add_column(col, justify="right")
    for name, vecs in (("pool", base), ("10x", big)):
        exact = Searcher(vecs, "numpy").search(queries, args.k)[1]
        for backend in ("numpy", "faiss-flat", "faiss-hnsw"):
            build_s, s = timed(lambda b=backend, v=vecs: Searcher(v, b), repeat=1 if backend == "faiss-hnsw" else 3)
            query_s, (_, rows) = timed(lambda s=s: s.search(queries, args.k))
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows, exact, strict=True)])
            t.add_row(
                name,
                f"{len(vecs):,}",
                backend,
                f"{build_s:.3f}",
                f"{query_s:.4f}",
                f"{1000 * query_s / len(queries):.3f}",
                f"{recall:.3f}",
            )
    Console().print(t)


if __name__ == "__main__":
    main()
