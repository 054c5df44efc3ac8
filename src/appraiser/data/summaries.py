"""Items rewritten by an LLM into the course's five-field summary (Title, Category, Brand, Description, Details).

The summary goes into the item's `summary` field (its raw `text` is kept), which every prompt reads when it
is there (`Item.prompt_text`), so summaries feed any pricer and the trainer like raw text does. The work
is resumable: answers are appended to the output file as they arrive, and a rerun skips every id already
there. `summarize_batch` sends the same requests through the Batch API (upload, create, poll, download,
match by `custom_id`), half the price at OpenAI; its batch id is kept beside the output so an interrupted
run waits for the same batch instead of paying twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appraiser.data.io import DataError
from appraiser.items import Item

SYSTEM = (
    "Create a concise description of a product. Respond only in this format. Do not include part numbers.\n"
    "Title: Rewritten short precise title\n"
    "Category: eg Electronics\n"
    "Brand: Brand name\n"
    "Description: 1 sentence description\n"
    "Details: 1 sentence on features"
)
FIELDS = ("Title", "Category", "Brand", "Description", "Details")
MAX_TOKENS = 200
#: Roughly what a five-field answer costs in output tokens (for the estimate before anything is sent).
TYPICAL_ANSWER_TOKENS = 90


def messages_for(item: Item) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": item.text}]


def parse_summary(text: str | None) -> str | None:
    """The answer as five `Field: value` lines in order, or None when a field is missing or empty."""
    if not text:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().lstrip("*-# ").partition(":")
        key = key.strip().strip("*").strip()
        if sep and key in FIELDS and key not in found and value.strip():
            found[key] = value.strip().strip("*").strip()
    if set(found) != set(FIELDS):
        return None
    return "\n".join(f"{k}: {found[k]}" for k in FIELDS)


def done_ids(out: Path) -> set[str]:
    """Ids already in the output (a torn last line from a kill is ignored: that item is asked again)."""
    if not out.exists():
        return set()
    ids = set()
    for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


@dataclass
class Estimate:
    items: int
    prompt_tokens: int
    completion_tokens: int
    dollars: float | None


def estimate(items: Sequence[Item], model: str, prices: Any, batch: bool = False) -> Estimate:
    """Tokens (about 4 characters each) and dollars before anything is sent."""
    prompt = sum((len(SYSTEM) + len(it.text)) // 4 + 8 for it in items)
    completion = TYPICAL_ANSWER_TOKENS * len(items)
    return Estimate(len(items), prompt, completion, prices.cost(model, prompt, completion, batch=batch))


@dataclass
class Report:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


class _Writer:
    """Appends finished items to the output, one whole line at a time, from many threads."""

    def __init__(self, out: Path):
        out.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(out, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, item: Item, summary: str) -> None:
        line = json.dumps(item.model_copy(update={"summary": summary}).to_record(), ensure_ascii=False)
        with self.lock:
            self.fh.write(line + "\n")
            self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def summarize(
    items: Sequence[Item],
    client: Any,
    model: str,
    out: str | Path,
    *,
    seed: int = 42,
    max_tokens: int = MAX_TOKENS,
    on_done: Callable[[Item, str | None], None] | None = None,
) -> Report:
    """Summarise every item not yet in `out`, `client.limiter.concurrency` at a time (an `ApiClient`)."""
    out = Path(out)
    have = done_ids(out)
    todo = [it for it in items if it.id not in have]
    report = Report(skipped=len(items) - len(todo))
    writer = _Writer(out)
    lock = threading.Lock()

    def one(item: Item) -> None:
        from appraiser.api import ApiError

        try:
            resp = client.chat(model, messages_for(item), max_tokens=max_tokens, temperature=0, seed=seed)
            text = resp.choices[0].message.content if resp.choices else None
            summary = parse_summary(text)
            reason = None if summary else f"not a five-field summary: {(text or '')[:60]!r}"
        except ApiError as e:
            summary, reason = None, str(e)
        with lock:
            if summary:
                writer.write(item, summary)
                report.written += 1
            else:
                report.failed.append((item.id, reason or "no answer"))
        if on_done is not None:
            on_done(item, summary)

    try:
        with ThreadPoolExecutor(max_workers=client.limiter.concurrency) as pool:
            list(pool.map(one, todo))
    finally:
        writer.close()
    return report


def batch_lines(items: Sequence[Item], model: str, seed: int = 42, max_tokens: int = MAX_TOKENS) -> bytes:
    """The Batch API input: one chat request per item, `custom_id` = the item's id."""
    lines = [
        json.dumps(
            {
                "custom_id": it.id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": messages_for(it),
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "seed": seed,
                },
            }
        )
        for it in items
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


TERMINAL = ("completed", "failed", "expired", "cancelled")


def summarize_batch(
    items: Sequence[Item],
    client: Any,
    model: str,
    out: str | Path,
    *,
    seed: int = 42,
    max_tokens: int = MAX_TOKENS,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    on_poll: Callable[[Any], None] | None = None,
) -> Report:
    """The same through the Batch API. The batch id is kept in `<out>.batch.json` until its answers are in."""
    out = Path(out)
    state_path = out.with_name(out.name + ".batch.json")
    have = done_ids(out)
    todo = [it for it in items if it.id not in have]
    report = Report(skipped=len(items) - len(todo))
    if not todo:
        state_path.unlink(missing_ok=True)
        return report
    sdk = client.sdk
    batch = None
    if state_path.exists():
        try:
            batch = sdk.batches.retrieve(json.loads(state_path.read_text())["batch_id"])
        except Exception:  # a stale or foreign id: start a new batch
            batch = None
        if batch is not None and batch.status in ("failed", "expired", "cancelled"):
            batch = None
    if batch is None:
        f = sdk.files.create(
            file=(f"{out.stem}-batch.jsonl", batch_lines(todo, model, seed, max_tokens)), purpose="batch"
        )
        batch = sdk.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"appraiser": "summarize"},
        )
        state_path.write_text(json.dumps({"batch_id": batch.id, "input_file_id": f.id}))
    start = time.monotonic()
    while batch.status not in TERMINAL:
        if on_poll is not None:
            on_poll(batch)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise DataError(f"batch {batch.id} still {batch.status}; rerun the same command to keep waiting")
        time.sleep(poll_s)
        batch = sdk.batches.retrieve(batch.id)
    if on_poll is not None:
        on_poll(batch)
    if batch.status != "completed":
        errs = "; ".join(f"line {e.line}: {e.message}" for e in (batch.errors.data if batch.errors else [])[:3])
        state_path.unlink(missing_ok=True)
        raise DataError(f"batch {batch.id} {batch.status}" + (f": {errs}" if errs else ""))
    answers: dict[str, str | None] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        for line in sdk.files.content(file_id).text.splitlines():
            rec = json.loads(line)
            resp = rec.get("response") or {}
            body = resp.get("body") or {}
            text = None
            if resp.get("status_code") == 200 and body.get("choices"):
                text = body["choices"][0]["message"].get("content")
                u = body.get("usage") or {}
                client.usage.add(
                    u.get("prompt_tokens", 0),
                    u.get("completion_tokens", 0),
                    client.prices.cost(model, u.get("prompt_tokens", 0), u.get("completion_tokens", 0), batch=True),
                )
            answers[rec["custom_id"]] = text
    writer = _Writer(out)
    try:
        for it in todo:
            summary = parse_summary(answers.get(it.id))
            if summary:
                writer.write(it, summary)
                report.written += 1
            else:
                why = "no answer in the batch output" if it.id not in answers else "not a five-field summary"
                report.failed.append((it.id, why))
    finally:
        writer.close()
    state_path.unlink(missing_ok=True)
    return report
