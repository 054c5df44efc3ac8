"""Training and test prompts, as the course builds them, for any tokenizer.

Prompt:      "What does this cost to the nearest dollar?\n\n{text}\n\nPrice is $"
Completion:  "{round(price)}.00"   (or exact cents)

The text is cut to a token budget (160 tokens for raw text in the course, 110 for summaries) so
that every prompt fits the training context and prices are compared on equal information.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appraiser.items import Item

QUESTION = "What does this cost to the nearest dollar?"
PRICE_PREFIX = "Price is $"


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are made. `max_text_tokens` caps the description, not the whole prompt."""

    max_text_tokens: int = 160
    exact_cents: bool = False
    question: str = QUESTION
    use_summary: bool = True

    @classmethod
    def of_finetune(cls, info: dict[str, Any]) -> PromptConfig:
        """The prompt settings a fine-tune was trained with (its `appraiser.json`'s "prompt"); unknown keys
        from other versions are ignored, missing ones take the defaults."""
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (info.get("prompt") or {}).items() if k in fields})


def truncate_text(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The text cut to at most `max_tokens` tokens of `tokenizer`, on a token boundary."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text.strip()
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()


def item_text(item: Item, config: PromptConfig) -> str:
    return item.prompt_text if config.use_summary else item.text


def make_prompt(item: Item, tokenizer: Any, config: PromptConfig = PromptConfig()) -> str:
    """The prompt for `item`, ending with "Price is $" (the model writes the number next)."""
    text = truncate_text(item_text(item, config), tokenizer, config.max_text_tokens)
    return f"{config.question}\n\n{text}\n\n{PRICE_PREFIX}"


def make_completion(price: float, config: PromptConfig = PromptConfig()) -> str:
    """The target the model learns: whole dollars with ".00" (course default) or exact cents."""
    if config.exact_cents:
        return f"{price:.2f}"
    # Round half up (Python's round() sends 0.50 to 0 and 2.50 to 2).
    return f"{int(price + 0.5)}.00"


def token_stats(items: Sequence[Item], tokenizer: Any, config: PromptConfig = PromptConfig()) -> dict[str, Any]:
    """Token counts of texts before truncation, of prompts and of completions, for a split."""
    raw = [len(tokenizer.encode(item_text(it, config), add_special_tokens=False)) for it in items]
    prompts = [len(tokenizer.encode(make_prompt(it, tokenizer, config), add_special_tokens=False)) for it in items]
    comps = [len(tokenizer.encode(make_completion(it.price, config), add_special_tokens=False)) for it in items]

    def summary(xs: list[int]) -> dict[str, float]:
        xs_sorted = sorted(xs)
        return {
            "min": xs_sorted[0],
            "median": statistics.median(xs_sorted),
            "mean": round(statistics.fmean(xs_sorted), 1),
            "p95": xs_sorted[min(len(xs_sorted) - 1, int(0.95 * len(xs_sorted)))],
            "max": xs_sorted[-1],
        }

    truncated = sum(1 for n in raw if n > config.max_text_tokens)
    return {
        "items": len(items),
        "text_tokens": summary(raw),
        "prompt_tokens": summary(prompts),
        "completion_tokens": summary(comps),
        "truncated": truncated,
        "truncated_share": truncated / len(items) if items else 0.0,
    }
