"""`appraiser hosted prepare`: items → the train and validation chat files, checked as OpenAI checks them.

The checks are `hosted.validate`'s (OpenAI's data-preparation guide); here they are run on both files,
priced with the training price of the chosen base model, and turned into a refusal (a DataError naming
the file and OpenAI's reason) when a file would fail the job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appraiser.data.io import DataError
from appraiser.hosted.chat import pick_items, write_chat_jsonl
from appraiser.items import Item

#: Dollars per 1M *training* tokens (OpenAI's published fine-tuning prices; inference is `api.cost`).
#: Longest prefix wins, as in `api.cost.PriceTable`. Models served by `appraiser serve` train for free.
TRAINING_PRICES: dict[str, float] = {
    "gpt-4o-mini": 3.00,
    "gpt-4o": 25.00,
    "gpt-4.1-nano": 1.50,
    "gpt-4.1-mini": 5.00,
    "gpt-4.1": 25.00,
    "gpt-3.5-turbo": 8.00,
    "smollm2-135m": 0.0,
    "gemma3-270m": 0.0,
}

DEFAULT_BASE_MODEL = "gpt-4o-mini-2024-07-18"


def training_price(model: str) -> float | None:
    """Dollars per 1M training tokens of `model`, None when it is not listed."""
    keys = [k for k in TRAINING_PRICES if model == k or model.startswith(k)]
    return TRAINING_PRICES[max(keys, key=len)] if keys else None


@dataclass
class Checked:
    """A chat file with its validation report."""

    path: Path
    param: str  # training_file / validation_file
    report: Any  # hosted.validate.ValidationReport

    def refusal(self) -> str | None:
        """Why the job would fail on this file, naming it; None when it would not.

        The at-least-10-examples rule is the training file's; a validation file only has to be well formed
        and not empty.
        """
        from appraiser.hosted.validate import MIN_EXAMPLES

        err = self.report.error(self.param)
        if err is None:
            return None
        small = not self.report.format_errors and 0 < self.report.n_examples < MIN_EXAMPLES
        if self.param == "validation_file" and small:
            return None
        return f"{self.path}: {err.message}"

    def summary_lines(self) -> list[str]:
        """The report's lines for people; a validation file is not billed, so without epochs and cost."""
        lines = self.report.summary().splitlines()
        if self.param == "validation_file":
            skip = ("default epochs", "estimated cost", "NOT trainable")
            lines = [ln for ln in lines if not ln.startswith(skip)]
        return lines


def check_files(
    train: Path,
    validation: Path | None,
    *,
    model: str = DEFAULT_BASE_MODEL,
    n_epochs: int | None = None,
    price_per_million: float | None = None,
    tokenizer: Any = None,
) -> list[Checked]:
    """Run OpenAI's checks on the train file (and the validation file); the epochs and cost are the
    training file's (OpenAI bills validation tokens at no charge)."""
    from appraiser.hosted.validate import validate_chat

    for p in (train, validation):
        if p is not None and not Path(p).is_file():
            raise DataError(f"{p}: no such chat JSONL file")
    price = price_per_million if price_per_million is not None else training_price(model)
    out = [
        Checked(
            Path(train),
            "training_file",
            validate_chat(Path(train), tokenizer=tokenizer, n_epochs=n_epochs, price_per_million=price),
        )
    ]
    if validation is not None:
        out.append(Checked(Path(validation), "validation_file", validate_chat(Path(validation), tokenizer=tokenizer)))
    return out


def refuse_if_invalid(checked: Sequence[Checked]) -> None:
    """A DataError for the first file that would fail the job (OpenAI's own message, the file named)."""
    for c in checked:
        msg = c.refusal()
        if msg is not None:
            raise DataError(msg)


def prepare(
    pool: Sequence[Item],
    out_dir: str | Path,
    *,
    n_train: int = 200,
    n_validation: int = 50,
    validation_pool: Sequence[Item] | None = None,
    seed: int | None = 42,
    exact_cents: bool = False,
    model: str = DEFAULT_BASE_MODEL,
    n_epochs: int | None = None,
    price_per_million: float | None = None,
    tokenizer: Any = None,
) -> list[Checked]:
    """Write `train.jsonl` and `validation.jsonl` (chat) to `out_dir`, check them, save `report.json`.

    Validation items come after the training ones in the shuffled pool (the course's train[200:250]), or
    from `validation_pool` when given. The files are written even when a check fails, so that the user
    can read the lines the refusal names; `refuse_if_invalid` decides whether to go on.
    """
    out = Path(out_dir)
    if validation_pool is not None:
        train_items, _ = pick_items(pool, n_train, 0, seed=seed)
        val_items = _first(validation_pool, n_validation, seed)
    else:
        train_items, val_items = pick_items(pool, n_train, n_validation, seed=seed)
    train_path = write_chat_jsonl(train_items, out / "train.jsonl", exact_cents)
    val_path = write_chat_jsonl(val_items, out / "validation.jsonl", exact_cents) if val_items else None
    if val_path is None:
        (out / "validation.jsonl").unlink(missing_ok=True)
    checked = check_files(
        train_path, val_path, model=model, n_epochs=n_epochs, price_per_million=price_per_million, tokenizer=tokenizer
    )
    report = {
        "model": model,
        "n_train": len(train_items),
        "n_validation": len(val_items),
        "seed": seed,
        "exact_cents": exact_cents,
        "files": {c.param: {"path": str(c.path), **c.report.as_dict()} for c in checked},
    }
    from appraiser.atomic import write_text

    write_text(out / "report.json", json.dumps(report, indent=1))
    return checked


def _first(pool: Sequence[Item], n: int, seed: int | None) -> list[Item]:
    if n > len(pool):
        raise DataError(f"asked for {n} validation items but the validation pool holds {len(pool)}")
    order = list(pool)
    if seed is not None:
        import random

        random.Random(seed).shuffle(order)
    return order[:n]
