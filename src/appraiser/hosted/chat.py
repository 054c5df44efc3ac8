"""Items as the course's chat examples for a hosted fine-tune, and the train / validation JSONL files.

One example is exactly the conversation the `api` pricer holds at evaluation time (system, then
"How much does this cost?" with the item's text), answered "Price is $X.00": what the fine-tuned model
learns is what it is later asked. The files are OpenAI's chat format, one `{"messages": [...]}` a line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appraiser.data.io import DataError
from appraiser.data.prompts import PRICE_PREFIX, PromptConfig, make_completion
from appraiser.items import Item


def chat_example(item: Item, exact_cents: bool = False) -> dict[str, Any]:
    """`{"messages": [system, user, assistant]}` for one item (its text, never its price, in the prompt)."""
    from appraiser.pricers.api import messages_for

    answer = PRICE_PREFIX + make_completion(item.price, PromptConfig(exact_cents=exact_cents))
    return {"messages": [*messages_for(item, prefill=False), {"role": "assistant", "content": answer}]}


def write_chat_jsonl(items: Sequence[Item], path: str | Path, exact_cents: bool = False) -> Path:
    """Write one chat example a line (UTF-8, atomically: a failed write leaves no half file)."""
    from appraiser.atomic import replacing

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(chat_example(it, exact_cents), ensure_ascii=False) + "\n")
    return path


def pick_items(
    pool: Sequence[Item], n_train: int, n_validation: int, *, seed: int | None = 42
) -> tuple[list[Item], list[Item]]:
    """`n_train` then `n_validation` distinct items from `pool` (shuffled with `seed`, or in file order
    when `seed` is None), as the course takes train[:200] and train[200:250]."""
    if n_train < 1 or n_validation < 0:
        raise DataError("--n-train must be at least 1 and --n-validation at least 0")
    if n_train + n_validation > len(pool):
        raise DataError(f"asked for {n_train} + {n_validation} items but the training pool holds {len(pool)}")
    order = list(pool)
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order[:n_train], order[n_train : n_train + n_validation]
