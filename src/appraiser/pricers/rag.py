"""Retrieval-augmented prompts: an item's K most similar training items and their prices, before the question.

The API prompt is the course's frontier agent's, word for word: "To provide some context, here are some other
items that might be similar to the item you need to estimate.", each neighbour as "Potentially related
product:\\n{text}\\nPrice is ${price:.2f}", then "And now the question for you:" and the zero-shot question.
The local model's prompt is the same idea, shorter: each neighbour's title (or the start of its text) and
price, so a small model's context holds K of them and the item itself.

Neighbours come from a `RetrievalIndex` built on the training pool only (`appraiser index build`), and the
index never returns the item itself or a copy of it, so a RAG pricer evaluated on validation sees only
training items' prices.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appraiser.data.io import DataError
from appraiser.items import Item
from appraiser.retrieval.index import Neighbour, RetrievalIndex

#: Tokens of each neighbour's title in the local context (`local_context`).
TITLE_TOKENS = 24

CONTEXT_INTRO = (
    "To provide some context, here are some other items that might be similar to the item you need to estimate.\n\n"
)
CONTEXT_ITEM = "Potentially related product:\n{text}\nPrice is ${price:.2f}\n\n"
QUESTION_INTRO = "And now the question for you:\n\n"


def api_context(neighbours: Sequence[Neighbour], max_chars: int = 600) -> str:
    """The course's context block (each neighbour's text cut to `max_chars`)."""
    parts = [CONTEXT_INTRO]
    for n in neighbours:
        parts.append(CONTEXT_ITEM.format(text=n.text[:max_chars].strip(), price=n.price))
    return "".join(parts) + QUESTION_INTRO


def local_context(neighbours: Sequence[Neighbour], tokenizer: Any, max_tokens: int = TITLE_TOKENS) -> str:
    """A compact context for a small local model: each neighbour's title (≤ `max_tokens` tokens) and price."""
    from appraiser.data.prompts import truncate_text

    lines = ["Similar items and their prices:"]
    for n in neighbours:
        name = truncate_text((n.title or n.text).replace("\n", " "), tokenizer, max_tokens)
        lines.append(f"- {name}: ${n.price:.2f}")
    return "\n".join(lines) + "\n\n"


def local_contexts(
    items: Sequence[Item], tokenizer: Any, retriever: Retriever, k: int, max_tokens: int = TITLE_TOKENS
) -> list[str]:
    """`local_context` of each item's k neighbours: what a RAG fine-tune is trained on and read with."""
    found = retriever.neighbours(items, k)
    return [local_context(ns, tokenizer, max_tokens) for ns in found]


def rag_count(rag: Any, index: str | Path | None = None) -> int:
    """`rag=K` as the whole number of similar items each prompt shows: `true` is no count (it read as 1), 2.5
    no number of items; and `index=FOLDER` without a K > 0 is refused, since no prompt would ever read it."""
    bad = ValueError(f"rag must be 0 (no retrieval) or the number of similar items to show, not {rag!r}")
    if isinstance(rag, bool) or not isinstance(rag, int | float | str):
        raise bad
    try:
        k = float(rag)
    except ValueError:
        raise bad from None
    if not k.is_integer() or k < 0:
        raise bad
    if index is not None and k == 0:
        raise ValueError(
            f"index={index} needs rag=K (the K similar items each prompt shows); without it no prompt reads the index"
        )
    return int(k)


class Retriever:
    """An index loaded on first use and searched under a lock (the evaluator's worker threads share one
    embedding model); saved pricers keep its folder, not its vectors.

    `pool`: the pool fingerprint the index must have (a RAG fine-tune's, recorded at training); loading an
    index built from any other pool is a DataError, since its neighbours are not the ones trained on."""

    def __init__(self, folder: str | Path | None = None, pool: str | None = None):
        from appraiser import config

        self.folder = Path(folder) if folder is not None else config.home() / "index"
        self.pool = pool
        self._index: RetrievalIndex | None = None
        self._lock = threading.Lock()

    @property
    def index(self) -> RetrievalIndex:
        with self._lock:
            if self._index is None:
                idx = RetrievalIndex.load(self.folder)
                if self.pool is not None and not idx.same_pool(self.pool):
                    raise DataError(
                        f"{self.folder}: this index was built from another training pool (fingerprint "
                        f"{idx.pool_identity}) than the one the model was trained with ({self.pool}); "
                        "read the run with its own index, or rebuild that one with `appraiser index build` "
                        "on the training files"
                    )
                self._index = idx
            return self._index

    def neighbours(self, items: Sequence[Item], k: int) -> list[list[Neighbour]]:
        index = self.index
        with self._lock:
            return index.search(items, k)

    def describe(self) -> dict[str, Any]:
        """What identifies the neighbours (cache key): the index's folder and its pool (ids, prices, texts)."""
        return {"index": str(self.folder), "pool": self.index.pool_identity}

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "pool": self.pool}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder = state["folder"]
        self.pool = state.get("pool")
        self._index = None
        self._lock = threading.Lock()
