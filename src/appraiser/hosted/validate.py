"""OpenAI's data-preparation checks for chat fine-tuning files, and chat examples as prompt/completion.

The checks follow OpenAI's cookbook "Data preparation and analysis for chat model fine-tuning", so a file
that passes here is one OpenAI accepts, and `appraiser serve` fails a fine-tuning job on exactly the files
OpenAI would fail:

- format errors, counted by category (`FORMAT_CATEGORIES`): `invalid_json` (a line that is not JSON; the
  cookbook simply crashes there), `data_type`, `missing_messages_list`, `message_missing_key`,
  `message_unrecognized_key`, `unrecognized_role`, `missing_content`, `example_missing_assistant_message`;
- at least `MIN_EXAMPLES` (10) examples;
- tokens per example, counted with the embedded model's tokenizer and chat template (not OpenAI's tiktoken
  estimate: that is the model that trains here), and the examples over `token_limit` (OpenAI truncates them);
- the default number of epochs (`default_epochs`: about 25k example passes, between 1 and 25 epochs),
  billed tokens (`sum(min(limit, tokens)) * epochs`) and, given a price per 1M training tokens, dollars.

Public API: `validate_chat(data, ...) -> ValidationReport` (`report.ok`, `report.error()` for OpenAI's
error triple, `report.summary()` for people), `read_examples(data)` (the parsed JSONL lines),
`default_epochs(n)`, and `to_prompt_completion(example, tokenizer)` / `price_target(completion)` for
training on chat examples (loss on the final assistant message only).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_CATEGORIES = (
    "invalid_json",
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
)
_CATEGORY_TEXT = {
    "invalid_json": "a line that is not valid JSON",
    "data_type": "a line that is not a JSON object",
    "missing_messages_list": "an example without a non-empty 'messages' list",
    "message_missing_key": "a message without 'role' or 'content'",
    "message_unrecognized_key": "a message with a key other than role, content, name, function_call, weight",
    "unrecognized_role": "a message whose role is not system, user, assistant or function",
    "missing_content": "a message without string content",
    "example_missing_assistant_message": "an example without an assistant message",
}
MESSAGE_KEYS = ("role", "content", "name", "function_call", "weight")
ROLES = ("system", "user", "assistant", "function")

MIN_EXAMPLES = 10
DEFAULT_TOKEN_LIMIT = 16385  # the cookbook's per-example limit
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
TARGET_EPOCHS = 3
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def default_epochs(n_examples: int) -> int:
    """OpenAI's default epochs: 3, raised for small files (to ~100 example passes, at most 25 epochs) and
    lowered for big ones (to ~25k passes, at least 1)."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


@dataclass
class InvalidFile:
    """Why a file cannot be trained on, as OpenAI reports it on a failed job (`job.error`)."""

    code: str
    message: str
    param: str = "training_file"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class ValidationReport:
    """What the checks found in one chat JSONL file. Lines and example indexes are 1-based."""

    n_lines: int
    n_examples: int  # lines that parsed as JSON (valid or not)
    format_errors: dict[str, int] = field(default_factory=dict)  # category -> examples with it
    error_lines: dict[str, list[int]] = field(default_factory=dict)  # category -> first lines with it
    missing_system: int = 0
    missing_user: int = 0
    messages_per_example: list[int] = field(default_factory=list)
    tokens_per_example: list[int] = field(default_factory=list)  # whole conversation, chat template included
    assistant_tokens_per_example: list[int] = field(default_factory=list)
    token_limit: int = DEFAULT_TOKEN_LIMIT
    over_limit: list[int] = field(default_factory=list)  # example indexes over `token_limit`
    n_epochs: int = TARGET_EPOCHS
    price_per_million: float | None = None  # dollars per 1M training tokens, when given

    @property
    def ok(self) -> bool:
        return self.error() is None

    @property
    def billed_tokens_per_epoch(self) -> int:
        return sum(min(self.token_limit, n) for n in self.tokens_per_example)

    @property
    def billed_tokens(self) -> int:
        """Tokens charged for training: every example (cut at the limit) once per epoch."""
        return self.billed_tokens_per_epoch * self.n_epochs

    @property
    def estimated_cost(self) -> float | None:
        """Dollars for `billed_tokens` at `price_per_million` (None without a price)."""
        if self.price_per_million is None:
            return None
        return self.billed_tokens * self.price_per_million / 1e6

    def error(self, param: str = "training_file") -> InvalidFile | None:
        """The first reason the file would fail a fine-tuning job (format first, then size), or None."""
        if self.n_examples == 0 and not self.format_errors:
            return InvalidFile(
                "invalid_training_file", "The job failed due to an invalid training file: it is empty.", param
            )
        if self.format_errors:
            parts = []
            for cat in FORMAT_CATEGORIES:
                if cat in self.format_errors:
                    lines = ", ".join(str(n) for n in self.error_lines.get(cat, [])[:5])
                    parts.append(f"{cat}: {self.format_errors[cat]} ({_CATEGORY_TEXT[cat]}; line {lines})")
            return InvalidFile(
                "invalid_training_file",
                "The job failed due to an invalid training file. Format errors found: " + "; ".join(parts),
                param,
            )
        if self.n_examples < MIN_EXAMPLES:
            return InvalidFile(
                "invalid_training_file",
                f"Training file has {self.n_examples} example(s), but must have at least {MIN_EXAMPLES} examples",
                param,
            )
        return None

    def summary(self) -> str:
        """A few lines for people: counts, token distribution, epochs, billed tokens and cost."""

        def dist(xs: Sequence[int]) -> str:
            if not xs:
                return "-"
            s = sorted(xs)
            p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
            return f"min {s[0]}, median {statistics.median(s):g}, p90 {p90}, max {s[-1]}"

        lines = [f"{self.n_examples} examples ({self.n_lines} non-empty lines)"]
        if self.format_errors:
            lines.append("format errors: " + ", ".join(f"{k} {v}" for k, v in self.format_errors.items()))
        else:
            lines.append("no format errors")
        lines.append(
            f"examples without a system message: {self.missing_system}; without a user message: {self.missing_user}"
        )
        lines.append(f"messages per example: {dist(self.messages_per_example)}")
        lines.append(f"tokens per example: {dist(self.tokens_per_example)}")
        lines.append(f"assistant tokens per example: {dist(self.assistant_tokens_per_example)}")
        if self.over_limit:
            lines.append(f"{len(self.over_limit)} examples over the {self.token_limit}-token limit will be truncated")
        lines.append(
            f"default epochs {self.n_epochs}; billed tokens {self.billed_tokens_per_epoch:,} per epoch, "
            f"{self.billed_tokens:,} in all"
        )
        if self.estimated_cost is not None:
            lines.append(f"estimated cost ${self.estimated_cost:,.2f} at ${self.price_per_million:g} per 1M tokens")
        err = self.error()
        if err is not None:
            lines.append(f"NOT trainable: {err.message}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        err = self.error()
        return {
            "n_examples": self.n_examples,
            "format_errors": dict(self.format_errors),
            "error_lines": {k: list(v) for k, v in self.error_lines.items()},
            "missing_system": self.missing_system,
            "missing_user": self.missing_user,
            "tokens_per_example": list(self.tokens_per_example),
            "token_limit": self.token_limit,
            "over_limit": list(self.over_limit),
            "n_epochs": self.n_epochs,
            "billed_tokens": self.billed_tokens,
            "estimated_cost": self.estimated_cost,
            "error": err.as_dict() if err else None,
        }


def _text(data: bytes | str | Path) -> str:
    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, bytes):
        return data.decode("utf-8-sig", errors="replace")
    return data


def read_examples(data: bytes | str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed JSON or the exception) for every non-empty line of a JSONL file (bytes, text or
    a path)."""
    out: list[tuple[int, Any]] = []
    for n, line in enumerate(_text(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as e:
            out.append((n, e))
    return out


def example_errors(example: Any) -> list[str]:
    """The cookbook's format-error categories that one parsed example has (empty: a valid example)."""
    if isinstance(example, Exception):
        return ["invalid_json"]
    if not isinstance(example, dict):
        return ["data_type"]
    messages = example.get("messages")
    if not messages or not isinstance(messages, list):
        return ["missing_messages_list"]
    errs: list[str] = []
    for m in messages:
        if not isinstance(m, dict):
            errs.append("data_type")
            continue
        if "role" not in m or "content" not in m:
            errs.append("message_missing_key")
        if any(k not in MESSAGE_KEYS for k in m):
            errs.append("message_unrecognized_key")
        if m.get("role") not in ROLES:
            errs.append("unrecognized_role")
        content, function_call = m.get("content"), m.get("function_call")
        if (not content and not function_call) or not isinstance(content, str):
            errs.append("missing_content")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errs.append("example_missing_assistant_message")
    return list(dict.fromkeys(errs))


def _template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": str(m.get("role")), "content": m.get("content") or ""} for m in messages]


def count_tokens(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> int:
    """Tokens of a conversation as the model sees it in training (its chat template applied)."""
    msgs = _template_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(msgs, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return len(ids)
        except Exception:  # a role the template refuses (e.g. function): count the plain text
            pass
    return sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) + 3 for m in msgs) + 3


def embedded_tokenizer() -> Any:
    """The embedded model's tokenizer (SmolLM2-135M), loaded on first use."""
    from appraiser.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def validate_chat(
    data: bytes | str | Path,
    *,
    tokenizer: Any = None,
    token_limit: int = DEFAULT_TOKEN_LIMIT,
    n_epochs: int | None = None,
    price_per_million: float | None = None,
    max_error_lines: int = 20,
) -> ValidationReport:
    """Check a chat fine-tuning JSONL file (bytes, text or a path) as OpenAI does.

    `tokenizer` counts tokens (default: the embedded model's); `n_epochs` overrides the default-epochs
    rule for billing; `price_per_million` (dollars per 1M training tokens) adds a cost estimate. Token
    statistics cover the examples without format errors only.
    """
    tokenizer = tokenizer if tokenizer is not None else embedded_tokenizer()
    parsed = read_examples(data)
    report = ValidationReport(n_lines=len(parsed), n_examples=len(parsed), token_limit=token_limit)
    for line, ex in parsed:
        errs = example_errors(ex)
        for cat in errs:
            report.format_errors[cat] = report.format_errors.get(cat, 0) + 1
            lines = report.error_lines.setdefault(cat, [])
            if len(lines) < max_error_lines:
                lines.append(line)
        if errs:
            continue
        messages = ex["messages"]
        report.missing_system += not any(m["role"] == "system" for m in messages)
        report.missing_user += not any(m["role"] == "user" for m in messages)
        report.messages_per_example.append(len(messages))
        n = count_tokens(tokenizer, messages)
        report.tokens_per_example.append(n)
        report.assistant_tokens_per_example.append(
            sum(
                len(tokenizer.encode(m["content"], add_special_tokens=False))
                for m in messages
                if m["role"] == "assistant"
            )
        )
        if n > token_limit:
            report.over_limit.append(len(report.tokens_per_example))
    report.format_errors = {c: report.format_errors[c] for c in FORMAT_CATEGORIES if c in report.format_errors}
    report.n_epochs = n_epochs if n_epochs is not None else default_epochs(report.n_examples)
    report.price_per_million = price_per_million
    return report


# ------------------------------------------------------------------------------ chat -> prompt/completion


def split_example(example: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """(context messages, final assistant message's content): what the model reads and what it learns.

    Only the last assistant message is trained; earlier turns (assistant ones included) are context.
    """
    messages = _template_messages(example["messages"])
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def chat_prompt(tokenizer: Any, context: Sequence[dict[str, str]]) -> str:
    """The prompt text for `context`, ending where the assistant's answer starts: the model's chat template
    with the generation prompt (exactly what `/v1/chat/completions` feeds it), or plain paragraphs."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(context), add_generation_prompt=True, tokenize=False)
    return "".join(m["content"] + "\n\n" for m in context)


def to_prompt_completion(example: dict[str, Any], tokenizer: Any) -> tuple[str, str]:
    """(prompt, completion) of a valid chat example: loss goes on the completion (the final assistant
    message) only; the trainer appends the end-of-sequence token, so the model learns to stop there."""
    context, answer = split_example(example)
    return chat_prompt(tokenizer, context), answer


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def price_target(completion: str) -> tuple[str, float] | None:
    """(text before the first number, that number) of an answer like "Price is $123.00"; None when the
    answer holds no number. The probe prices a validation example by continuing its prompt + that prefix."""
    m = _NUMBER.search(completion)
    if m is None:
        return None
    try:
        value = float(m.group().replace(",", ""))
    except ValueError:
        return None
    return completion[: m.start()], value
