"""Appraiser: price a product from its text description with fine-tuned language models."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appraiser.items import Item

if TYPE_CHECKING:
    from appraiser.evaluation.evaluator import EvalResult
    from appraiser.pricers.base import Pricer

# bitsandbytes, imported on a CPU with AVX512-BF16, warns on every import that it cannot fetch an optional kernel
# from the Hugging Face hub ("Failed to load CPU gemm_4bit_forward …"); its 4-bit path works without it, and the
# hub is not the user's to reach. Only that module's warnings are muted; raise its level again to see them.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["Item", "__version__", "evaluate"]


def evaluate(
    pricer: Pricer | Callable[[Item], float | None],
    items: Sequence[Item] | str | Path,
    *,
    name: str | None = None,
    show: bool = True,
    record: bool = True,
    size: int | None = None,
    **options: Any,
) -> EvalResult:
    """Score a pricer on test items, as the course's `Tester.test(fn)`: per-item lines, metrics, a leaderboard row.

    `pricer` is a `Pricer` or a plain function `item -> price` (None: no guess); `items` a list of Items or a
    split file / data folder (its first `size` items: the fixed test set of `appraiser eval`, 250 by default,
    so a notebook's rows sit beside the CLI's; `size=0` takes every item), or a list (its first `size`, or all).
    A plain function is never served from the prediction cache: redefining it in a notebook under the same
    name must give its new answers. Other `options` go to `appraiser.evaluation.evaluate`.
    """
    from appraiser.evaluation.evaluator import DEFAULT_TEST_SIZE, load_test_items
    from appraiser.evaluation.evaluator import evaluate as run_evaluation
    from appraiser.pricers.base import FunctionPricer, Pricer

    if isinstance(items, str | Path):
        items = load_test_items(items, size=DEFAULT_TEST_SIZE if size is None else (size or None))
    elif size is not None:
        items = list(items)[:size]
    if not isinstance(pricer, Pricer):
        if not callable(pricer):
            raise TypeError(f"pricer must be a Pricer or a function item -> price, not {type(pricer).__name__}")
        pricer = FunctionPricer(pricer, name=name or getattr(pricer, "__name__", "function"))
        options.setdefault("cache", False)
    return run_evaluation(pricer, items, name=name, show=show, record=record, **options)
