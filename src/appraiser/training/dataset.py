"""Training examples: tokenized prompt + completion, labels on the completion only, and their audit.

The model learns one thing: after "Price is $" write the price and stop. So the loss covers exactly
the completion tokens ("1", "2", "3", ".", "0", "0") and the end-of-sequence token, and nothing of
the prompt. Small slips here silently ruin a fine-tune, and they are easy to make:

- SmolLM2's pad token *is* its EOS (`<|im_end|>`); a collator that masks pad positions also masks the
  EOS, and the model never learns to stop.
- Tokenizing prompt and completion separately can split differently from the joined text (a space
  or "$" merged with the first digit), so the labels land on the wrong tokens.
- Truncating to a maximum length cuts the completion, the only part that is trained.

`audit` checks every example (and the batches the collator makes of them) for all of this before a
single step runs, and training refuses to start when anything is off.

A retrieval-augmented fine-tune (`TrainConfig.rag`) puts each item's K nearest training items' titles and
prices (`pricers.rag.local_context`) before its prompt; that context is prompt, masked like the rest, and the
audit checks it exactly as it checks the question.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.text import Text
from torch.utils.data import Dataset, Sampler

from appraiser.data.io import DataError
from appraiser.data.prompts import PromptConfig, make_completion, make_prompt
from appraiser.items import Item

IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenized training example. `labels` holds IGNORE_INDEX on prompt positions."""

    item_id: str
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    completion: str  # the completion text, without EOS
    price: float = float("nan")  # the true price (the regression head's target)

    def __len__(self) -> int:
        return len(self.input_ids)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt as inference sees it (with the tokenizer's BOS, if it adds one)."""
    return list(tokenizer(prompt)["input_ids"])


def full_prompt(item: Item, tokenizer: Any, config: PromptConfig, context: str = "") -> str:
    """The prompt as the model reads it: the RAG context (if any), then the course prompt."""
    return context + make_prompt(item, tokenizer, config)


def encode(item: Item, tokenizer: Any, config: PromptConfig, context: str = "") -> Example:
    """Prompt + completion + EOS as one sequence; labels on the completion and EOS only.

    The joined text is tokenized once and the labels start where the prompt's own tokens end, so
    the trained tokens are exactly those the model sees after the prompt at inference (the audit
    checks that the prompt's tokens are a prefix of the joined text's). `context` (the RAG block)
    goes before the prompt and is masked with it.
    """
    prompt = full_prompt(item, tokenizer, config, context)
    completion = make_completion(item.price, config)
    p_ids = prompt_ids(tokenizer, prompt)
    full = list(tokenizer(prompt + completion)["input_ids"])
    if not full or full[-1] != tokenizer.eos_token_id:  # some tokenizers append EOS themselves
        full.append(tokenizer.eos_token_id)
    n = len(p_ids)
    labels = [IGNORE_INDEX] * n + full[n:]
    return Example(item.id, full, labels, n, completion, float(item.price))


def encode_items(
    items: Sequence[Item],
    tokenizer: Any,
    config: PromptConfig,
    progress: Callable[[int], None] | None = None,
    contexts: Sequence[str] | None = None,
) -> list[Example]:
    """`encode` of each item, with its RAG context when `contexts` is given (one per item)."""
    if contexts is not None and len(contexts) != len(items):
        raise ValueError(f"{len(items)} items but {len(contexts)} contexts")
    out = []
    for i, it in enumerate(items):
        out.append(encode(it, tokenizer, config, contexts[i] if contexts is not None else ""))
        if progress is not None:
            progress(1)
    return out


class ExampleDataset(Dataset):
    """A list of examples as the HF Trainer wants them (dicts of token id lists)."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels, "price": ex.price}

    @property
    def lengths(self) -> list[int]:
        return [len(ex) for ex in self.examples]


class Collator:
    """Right-pads a batch to its own longest example (no fixed length), labels padded with IGNORE_INDEX.

    Labels are never derived from the input ids, so a pad id equal to the EOS id cannot mask the EOS.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, Any] | Example]) -> dict[str, torch.Tensor]:
        rows = [(f.input_ids, f.labels) if isinstance(f, Example) else (f["input_ids"], f["labels"]) for f in features]
        prices = [f.price if isinstance(f, Example) else f.get("price", float("nan")) for f in features]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labs) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
            attention[i, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "prices": torch.tensor(prices, dtype=torch.float32),
        }


# ------------------------------------------------------------------------------------------ audit


@dataclass
class AuditProblem:
    index: int
    item_id: str
    reason: str

    def __str__(self) -> str:
        return f"#{self.index} ({self.item_id}): {self.reason}"


@dataclass
class AuditReport:
    """What the label audit found over all examples."""

    n: int
    problems: list[AuditProblem] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_examples(self) -> int:
        return len({p.index for p in self.problems})

    def summary(self) -> str:
        def stats(xs: list[int]) -> str:
            if not xs:
                return "-"
            return f"min {min(xs)}, median {statistics.median(xs):g}, max {max(xs)}"

        return (
            f"label audit: {self.n} examples, {self.n - self.bad_examples} ok, "
            f"{self.bad_examples} with problems; prompt tokens {stats(self.prompt_tokens)}; "
            f"trained tokens (price + EOS) {stats(self.completion_tokens)}; "
            f"{sum(self.completion_tokens)} trained tokens in all"
        )

    def raise_if_failed(self, show: int = 10) -> None:
        """Refuse to train: a DataError listing the first `show` offending examples."""
        if self.ok:
            return
        lines = [str(p) for p in self.problems[:show]]
        more = len(self.problems) - show
        if more > 0:
            lines.append(f"... and {more} more")
        raise LabelAuditError(
            f"label audit failed for {self.bad_examples} of {self.n} examples; not training:\n  " + "\n  ".join(lines)
        )


class LabelAuditError(DataError):
    """Training data whose labels are wrong; the message lists the offending examples."""


def _check_example(
    ex: Example, item: Item, tokenizer: Any, config: PromptConfig, max_length: int | None, context: str = ""
) -> list[str]:
    reasons = []
    eos = tokenizer.eos_token_id
    prompt = full_prompt(item, tokenizer, config, context)
    completion = make_completion(item.price, config)
    p_ids = prompt_ids(tokenizer, prompt)
    joined = list(tokenizer(prompt + completion)["input_ids"])
    if joined[: len(p_ids)] != p_ids:
        reasons.append("prompt tokens are not a prefix of prompt+completion tokens (tokenization differs at the seam)")
    if len(ex.labels) != len(ex.input_ids):
        reasons.append(f"{len(ex.labels)} labels for {len(ex.input_ids)} tokens")
        return reasons
    trained = [i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
    expected_positions = list(range(ex.prompt_len, len(ex.input_ids)))
    if trained != expected_positions:
        reasons.append(f"trained positions {trained[:8]} are not exactly the completion's {expected_positions[:8]}")
    if any(ex.labels[i] != ex.input_ids[i] for i in trained):
        reasons.append("labels differ from the input tokens at trained positions")
    c_ids = [ex.labels[i] for i in trained]
    if not c_ids or c_ids[-1] != eos:
        reasons.append("EOS is not trained (the model would not learn to stop)")
    text = tokenizer.decode([t for t in c_ids if t != eos])
    if text != completion:
        reasons.append(f"trained tokens read {text!r}, expected the completion {completion!r}")
    if ex.completion != completion:
        reasons.append(f"example completion {ex.completion!r} does not match the price ({completion!r})")
    if max_length is not None and len(ex.input_ids) > max_length:
        reasons.append(
            f"{len(ex.input_ids)} tokens > max_length {max_length}: truncation would cut the completion away"
        )
    if context and not tokenizer.decode(ex.input_ids[: ex.prompt_len], skip_special_tokens=True).startswith(context):
        reasons.append("the RAG context is not the start of the example's prompt")
    return reasons


def audit(
    items: Sequence[Item],
    examples: Sequence[Example],
    tokenizer: Any,
    config: PromptConfig,
    *,
    collator: Callable[[list], dict[str, torch.Tensor]] | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    contexts: Sequence[str] | None = None,
) -> AuditReport:
    """Check every example, and every batch the collator makes, for correct completion-only labels.

    The collator check matters as much as the examples': it is where pad == EOS masks the EOS.
    `contexts`: the RAG context each example was encoded with (prompt: never trained).
    """
    if len(items) != len(examples):
        raise ValueError(f"{len(items)} items but {len(examples)} examples")
    if contexts is not None and len(contexts) != len(items):
        raise ValueError(f"{len(items)} items but {len(contexts)} contexts")
    report = AuditReport(n=len(examples))
    eos = tokenizer.eos_token_id
    if eos is None:
        report.problems.append(AuditProblem(-1, "-", "the tokenizer has no EOS token"))
        return report
    for i, (it, ex) in enumerate(zip(items, examples, strict=True)):
        report.prompt_tokens.append(ex.prompt_len)
        report.completion_tokens.append(sum(1 for lab in ex.labels if lab != IGNORE_INDEX))
        context = contexts[i] if contexts is not None else ""
        for reason in _check_example(ex, it, tokenizer, config, max_length, context):
            report.problems.append(AuditProblem(i, ex.item_id, reason))
    collator = collator or Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = collator([{"input_ids": ex.input_ids, "labels": ex.labels} for ex in chunk])
        labels, input_ids = batch["labels"], batch["input_ids"]
        for j, ex in enumerate(chunk):
            row_labels = labels[j].tolist()
            got = [(k, lab) for k, lab in enumerate(row_labels) if lab != IGNORE_INDEX]
            want = [(k, lab) for k, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
            if got != want:
                lost_eos = any(lab == eos for _, lab in want) and not any(lab == eos for _, lab in got)
                why = "the collator masks the EOS (pad == EOS?)" if lost_eos else "the collator changes the labels"
                report.problems.append(
                    AuditProblem(start + j, ex.item_id, f"{why}: {len(got)} trained tokens, expected {len(want)}")
                )
            elif input_ids[j, : len(ex.input_ids)].tolist() != ex.input_ids:
                report.problems.append(AuditProblem(start + j, ex.item_id, "the collator changes the input tokens"))
    return report


def token_view(example: Example, tokenizer: Any) -> Text:
    """The example's tokens, masked ones dim and trained ones highlighted, for `train --dry-run`."""
    text = Text()
    for tok, lab in zip(example.input_ids, example.labels, strict=True):
        piece = tokenizer.decode([tok])
        shown = piece.replace("\n", "⏎\n") if piece.strip() or "\n" in piece else piece
        if lab == IGNORE_INDEX:
            text.append(shown, style="dim")
        else:
            text.append(shown if shown.strip() else repr(shown), style="bold black on green")
        text.append("│", style="grey23")
    return text


# ------------------------------------------------------------------------------------------ sampling


class LengthGroupedSampler(Sampler[int]):
    """Shuffled batches of similar-length examples, the same for the same (seed, epoch).

    Examples are shuffled, cut into mega-batches of `mega` batches, sorted by length inside each, cut
    into batches, and the batches shuffled, so padding stays small while order stays random. The
    order depends only on seed and epoch (set by the Trainer through `set_epoch`), so a resumed run
    sees exactly the batches the interrupted one would have. A last, short batch stays last.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *, group: bool = True, mega: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.group:
            size = self.batch_size * self.mega
            order = [
                i
                for s in range(0, len(order), size)
                for i in sorted(order[s : s + size], key=lambda k: self.lengths[k], reverse=True)
            ]
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        tail = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        if self.group:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[k] for k in perm]
        if tail is not None:
            batches.append(tail)
        return batches

    def __iter__(self) -> Iterator[int]:
        return iter([i for b in self.batches() for i in b])


# ------------------------------------------------------------------------------------------ weighting


def choose_items(
    pool: Sequence[Item],
    n: int | None,
    weighting: str = "none",
    seed: int = 42,
    reference: Sequence[Item] | None = None,
    off_category_weight: float = 1.0,
    sources: Sequence[str] | None = None,
    off_source_weight: float = 1.0,
) -> list[Item]:
    """`n` items of the pool drawn by price weight (seeded; without replacement while the pool allows).

    The weights are the baselines' (`data.weighting.sample_weights`): `none`, `price_flat` (every
    $50 price bin counts the same, like the benchmark's flattened prices) or `match` (the validation
    set's price histogram), so a fine-tune and a baseline trained "the same way" see the same mix.
    """
    from appraiser.data.weighting import sample_weights

    if not pool:
        raise DataError("the training pool is empty")
    if n is None and weighting == "none" and off_category_weight == 1.0 and off_source_weight == 1.0:
        return list(pool)
    w = sample_weights(
        pool,
        weighting,
        reference,
        off_category_weight=off_category_weight,
        sources=sources,
        off_source_weight=off_source_weight,
    )
    if w.sum() <= 0:
        raise DataError(f"weighting {weighting!r} leaves no training item with a weight above 0")
    available = int((w > 0).sum())
    if n is None:
        n = available
    if weighting == "none" and n >= available:
        return [it for it, wi in zip(pool, w, strict=True) if wi > 0]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pool), size=n, replace=n > available, p=w / w.sum())
    return [pool[i] for i in idx]


# ------------------------------------------------------------------------------------------ retrieval


@dataclass
class RagContexts:
    """The RAG context of every training and probe item, by item id, and the index's pool fingerprint."""

    contexts: dict[str, str]
    pool: str | None


def rag_index_path(cfg: Any) -> Path | None:
    """The absolute index folder a RAG config reads (`<home>/index` by default); None without RAG."""
    from appraiser import config as app_config

    if not cfg.rag:
        return None
    folder = cfg.index if cfg.index is not None else app_config.home() / "index"
    return Path(folder).expanduser().resolve()


def rag_contexts(
    cfg: Any, pool: Sequence[Item], items: Sequence[Item], probe_items: Sequence[Item], tokenizer: Any
) -> RagContexts:
    """Each item's `cfg.rag` nearest neighbours as `pricers.rag.local_context` shows them.

    The index must be the training pool's (`RetrievalIndex.check_pool`: a DataError otherwise), and, on a
    resume, the very index the run started with (`cfg.index_pool`). The index never returns the item itself
    nor a copy of it (same id, normalised title or whole text), though every training item is in it: each item sees the
    neighbours a validation item would, never its own price.
    """
    from appraiser.pricers.rag import Retriever, local_contexts

    retriever = Retriever(rag_index_path(cfg), pool=cfg.index_pool)
    retriever.index.check_pool(pool)
    distinct = list({it.id: it for it in [*items, *probe_items]}.values())
    found = local_contexts(distinct, tokenizer, retriever, cfg.rag, cfg.rag_title_tokens)
    return RagContexts({it.id: c for it, c in zip(distinct, found, strict=True)}, retriever.index.pool_identity)
