"""Items rewritten by an LLM into the course's five-field summary (Title, Category, Brand, Description, Details).

The summary goes into the item's `summary` field (its raw `text` is kept), which every prompt reads when it
is there (`Item.prompt_text`), so summaries feed any pricer and the trainer like raw text does. The work
is resumable: answers are appended to the output file as they arrive, and a rerun skips every id already
there. `summarize_batch` sends the same requests through the Batch API (upload, create, poll, download,
match by `custom_id`), half the price at OpenAI; its batch id (and model) is kept beside the output so an
interrupted run waits for the same batch instead of paying twice. A batch for another model, or one that is
gone, failed, or whose output could not be read for good, is not reused. An output line that is not an
answer is reported as a failure with its line number, and the other answers are kept.
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

from appraiser.atomic import end_on_whole_line
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
        end_on_whole_line(out)  # a kill mid-write left half a record: that item is asked again
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
    stopped: list[Exception] = []  # an error every other item would meet too (api.client.is_fatal)
    answered = threading.Event()

    def one(item: Item) -> None:
        from appraiser.api import ApiError
        from appraiser.api.client import is_fatal

        if stopped:
            return
        try:
            resp = client.chat(model, messages_for(item), max_tokens=max_tokens, temperature=0, seed=seed)
            answered.set()
            text = resp.choices[0].message.content if resp.choices else None
            summary = parse_summary(text)
            reason = None if summary else f"not a five-field summary: {(text or '')[:60]!r}"
        except ApiError as e:
            if is_fatal(e) and not answered.is_set():  # a refused key, an unknown model: stop, not N failures
                stopped.append(e)
                return
            summary, reason = None, str(e)
        with lock:
            if summary:
                writer.write(item, summary)
                report.written += 1
            else:
                report.failed.append((item.id, reason or "no answer"))
        if on_done is not None:
            on_done(item, summary)

    pool = ThreadPoolExecutor(max_workers=client.limiter.concurrency)
    interrupted = False
    try:
        list(pool.map(one, todo))
    except BaseException:
        interrupted = True
        raise
    finally:
        # Ctrl-C: no waiting for calls in flight (a hung server holds them for minutes); what was written stays
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        writer.close()
    if stopped:
        raise stopped[0]
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


def _api(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One SDK call; a failure is one ApiError line with the provider's message, never an SDK traceback."""
    from appraiser.hosted.jobs import call

    return call(fn, *args, **kwargs)


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".batch.json")


def _saved_batch(sdk: Any, state_path: Path, model: str) -> Any | None:
    """The batch an earlier run sent for this output, when it can still answer for this model; else None,
    and its state file is dropped. A state file for another model, an unreadable one, a batch the provider
    no longer knows (404) or one that ended without answers is not reused; any other error (no connection,
    a bad key) is raised with the state kept, so the next run still waits for the batch already paid for.
    A state file from before the model was recorded is trusted (its batch cannot be told apart)."""
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        batch_id = state["batch_id"]
        saved_model = state.get("model", model)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        saved_model, batch_id = None, None
    if not isinstance(batch_id, str) or saved_model != model:
        state_path.unlink(missing_ok=True)
        return None
    from appraiser.api import ApiError

    try:
        batch = _api(sdk.batches.retrieve, batch_id)
    except ApiError as e:
        if e.status != 404:
            raise
        batch = None
    if batch is None or batch.status in ("failed", "expired", "cancelled"):
        state_path.unlink(missing_ok=True)
        return None
    return batch


def _send_batch(sdk: Any, todo: Sequence[Item], model: str, out: Path, seed: int, max_tokens: int) -> Any:
    """Upload the requests and create the batch; its id and model go to the state file at once."""
    data = batch_lines(todo, model, seed, max_tokens)
    f = _api(sdk.files.create, file=(f"{out.stem}-batch.jsonl", data), purpose="batch")
    batch = _api(
        sdk.batches.create,
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"appraiser": "summarize"},
    )
    state = {"batch_id": batch.id, "input_file_id": f.id, "model": model}
    _state_path(out).write_text(json.dumps(state), encoding="utf-8")
    return batch


def _wait(sdk: Any, batch: Any, poll_s: float, timeout_s: float | None, on_poll: Callable[[Any], None] | None) -> Any:
    """Poll until the batch ends (or `timeout_s` passes: a DataError, the state kept for the next run)."""
    start = time.monotonic()
    while batch.status not in TERMINAL:
        if on_poll is not None:
            on_poll(batch)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise DataError(f"batch {batch.id} still {batch.status}; rerun the same command to keep waiting")
        time.sleep(poll_s)
        batch = _api(sdk.batches.retrieve, batch.id)
    if on_poll is not None:
        on_poll(batch)
    return batch


def _tokens(usage: dict[str, Any], key: str) -> int:
    n = usage.get(key)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parse_output_line(line: str) -> tuple[str, dict[str, Any]]:
    """(custom_id, record) of one batch output line; ValueError saying what is wrong with it."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"not JSON: {line[:60]!r}") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("custom_id"), str):
        raise ValueError(f"no custom_id: {line[:60]!r}")
    return rec["custom_id"], rec


def _answer(rec: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(text, why there is none, usage of a paid answer) of one output record, whatever shape it has."""
    resp = _dict(rec.get("response"))
    body = _dict(resp.get("body"))
    if resp.get("status_code") != 200:
        err = _dict(body.get("error")) or _dict(rec.get("error"))
        return None, f"the batch answered {resp.get('status_code')}: {err.get('message') or 'no answer'}", None
    choices = body.get("choices")
    first = _dict(choices[0]) if isinstance(choices, list) and choices else {}
    text = _dict(first.get("message")).get("content")
    return (text if isinstance(text, str) else None), None, _dict(body.get("usage"))


Answers = dict[str, tuple[str | None, str | None]]


def _read_output(client: Any, model: str, batch: Any, out: Path, report: Report) -> Answers:
    """{custom_id: (answer text, why there is none)} from the batch's output and error files. A line that is not an
    answer is a failure of its own (`<file> line N`); the other lines are kept. A file that cannot be read
    is an ApiError: a passing one (no connection, 5xx) keeps the state so a rerun fetches it again; any
    other drops it, so a rerun sends a new batch instead of failing on this one again."""
    from appraiser.api import ApiError
    from appraiser.hosted.jobs import retryable

    answers: Answers = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        try:
            text = _api(client.sdk.files.content, file_id).text
        except ApiError as e:
            again = "fetch its answers again" if retryable(e) else "send a new batch"
            if not retryable(e):
                _state_path(out).unlink(missing_ok=True)
            raise ApiError(
                f"batch {batch.id}: reading {file_id} failed ({e}); rerun to {again}", e.status, e.code
            ) from None
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                _take_line(client, model, f"{file_id} line {n}", line, answers, report)
    return answers


def _take_line(client: Any, model: str, where: str, line: str, answers: Answers, report: Report) -> None:
    """One output line into `answers` (its usage counted), or into the report's failures when unreadable."""
    try:
        custom_id, rec = _parse_output_line(line)
    except ValueError as e:
        report.failed.append((where, str(e)))
        return
    text, why, usage = _answer(rec)
    if usage is not None:
        prompt, completion = _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens")
        client.usage.add(prompt, completion, client.prices.cost(model, prompt, completion, batch=True))
    answers[custom_id] = (text, why)


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
    """The same through the Batch API. The batch id is kept in `<out>.batch.json` until its answers are in.
    Every provider error is one ApiError line (a DataError), never an SDK traceback."""
    out = Path(out)
    state_path = _state_path(out)
    have = done_ids(out)
    todo = [it for it in items if it.id not in have]
    report = Report(skipped=len(items) - len(todo))
    if not todo:
        state_path.unlink(missing_ok=True)
        return report
    sdk = client.sdk
    batch = _saved_batch(sdk, state_path, model) or _send_batch(sdk, todo, model, out, seed, max_tokens)
    batch = _wait(sdk, batch, poll_s, timeout_s, on_poll)
    if batch.status != "completed":
        errs = "; ".join(f"line {e.line}: {e.message}" for e in (batch.errors.data if batch.errors else [])[:3])
        state_path.unlink(missing_ok=True)
        raise DataError(f"batch {batch.id} {batch.status}" + (f": {errs}" if errs else ""))
    answers = _read_output(client, model, batch, out, report)
    writer = _Writer(out)
    try:
        for it in todo:
            text, why = answers.get(it.id, (None, "no answer in the batch output"))
            summary = parse_summary(text)
            if summary:
                writer.write(it, summary)
                report.written += 1
            else:
                report.failed.append((it.id, why or "not a five-field summary"))
    finally:
        writer.close()
    state_path.unlink(missing_ok=True)
    return report
