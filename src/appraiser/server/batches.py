"""The Batch API on Appraiser's models: a JSONL file of chat requests in, a JSONL file of answers out.

`POST /v1/batches` validates every line first (JSON, unique `custom_id`, `method` POST, the batch's `url`,
a body that is a valid chat request for this server); a file with bad lines makes a `failed` batch whose
`errors` name each line, as OpenAI does, and nothing runs. A valid batch runs in one background worker,
line by line, appending each answer to a partial output file as it completes: after a kill the restarted
server resumes every unfinished batch and skips what is already answered. Output lines have OpenAI's
shape (`{id, custom_id, response: {status_code, request_id, body}, error}`), in input order.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from typing import Any

from pydantic import ValidationError

from appraiser.atomic import end_on_whole_line
from appraiser.server.chat import ChatRequest, check_chat, check_context, complete_chat
from appraiser.server.engine import current_owner
from appraiser.server.errors import OpenAIError, error_body
from appraiser.server.store import ServerStore, new_id

ENDPOINTS = ("/v1/chat/completions",)


def parse_lines(data: bytes, endpoint: str, settings: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(requests, errors) of a batch input file; errors carry the 1-based line."""
    requests, errs, seen = [], [], set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [{"code": "invalid_file", "message": "the batch file is not UTF-8 text", "line": None}]
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("a line must be a JSON object")
            cid = rec.get("custom_id")
            if not isinstance(cid, str) or not cid:
                raise ValueError("custom_id must be a non-empty string")
            if cid in seen:
                raise ValueError(f"custom_id {cid!r} appears twice")
            if rec.get("method") != "POST":
                raise ValueError("method must be POST")
            if rec.get("url") != endpoint:
                raise ValueError(f"url must be {endpoint} (the batch's endpoint)")
            req = ChatRequest.model_validate(rec.get("body"))
            if req.stream:
                raise ValueError("stream is not supported in a batch")
            check_chat(req, settings)
        except (json.JSONDecodeError, ValueError, ValidationError, OpenAIError) as e:
            msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            errs.append({"code": "invalid_request", "message": msg, "param": None, "line": n})
            continue
        seen.add(cid)
        requests.append({"custom_id": cid, "body": rec["body"]})
    if not requests and not errs:
        errs.append({"code": "empty_file", "message": "the batch file has no requests", "line": None})
    return requests, errs


def _failed(answer: dict[str, Any]) -> bool:
    """An answer that goes to the error file: no response, or a non-200 one (as at OpenAI)."""
    return bool(answer["error"]) or (answer["response"] or {}).get("status_code") != 200


class BatchRunner:
    """Runs batches one line at a time in a background thread; survives restarts through the store."""

    def __init__(self, store: ServerStore, pool: Any, settings: Any):
        self.store, self.pool, self.settings = store, pool, settings
        self.work_dir = store.root / "batches"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="appraiser-batches", daemon=True)
                self._thread.start()

    def resume_unfinished(self) -> None:
        for bid in self.store.unfinished_batches():
            self._queue.put(bid)
        self._ensure_worker()

    def create(
        self, owner: str, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise OpenAIError(
                400, f"endpoint must be one of {', '.join(ENDPOINTS)}", code="invalid_value", param="endpoint"
            )
        if completion_window != "24h":
            raise OpenAIError(400, "completion_window must be 24h", code="invalid_value", param="completion_window")
        meta = self.store.get_file(owner, input_file_id)
        if meta["purpose"] != "batch":
            raise OpenAIError(
                400,
                f"{input_file_id} has purpose {meta['purpose']!r}, not 'batch'",
                code="invalid_value",
                param="input_file_id",
            )
        requests, errs = parse_lines(self.store.read_file(owner, input_file_id), endpoint, self.settings)
        now = int(time.time())
        body: dict[str, Any] = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "created_at": now,
            "expires_at": now + 86400,
            "status": "failed" if errs else "in_progress",
            "metadata": metadata,
            "errors": None,
            "output_file_id": None,
            "error_file_id": None,
            "in_progress_at": None if errs else now,
            "failed_at": now if errs else None,
            "finalizing_at": None,
            "completed_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "expired_at": None,
            "request_counts": {"total": len(requests), "completed": 0, "failed": 0},
        }
        if errs:
            body["errors"] = {"object": "list", "data": errs}
        self.store.add_batch(owner, body)
        if not errs:
            (self.work_dir / f"{body['id']}.requests.json").write_text(json.dumps(requests))
            self._queue.put(body["id"])
            self._ensure_worker()
        return body

    def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        b = self.store.get_batch(owner, batch_id)
        if b["status"] not in ("validating", "in_progress", "finalizing"):
            raise OpenAIError(409, f"Cannot cancel a batch that is {b['status']}.", code="batch_not_cancellable")
        return self.store.update_batch(batch_id, status="cancelling", cancelling_at=int(time.time()))

    def _work(self) -> None:
        while True:
            bid = self._queue.get()
            try:
                self._run(bid)
            except Exception as e:  # a bug must not kill the worker: the batch fails with its reason
                self.store.update_batch(
                    bid,
                    status="failed",
                    failed_at=int(time.time()),
                    errors={"object": "list", "data": [{"code": "server_error", "message": type(e).__name__}]},
                )

    def _run(self, bid: str) -> None:
        owner = self.store.batch_owner(bid)
        requests = json.loads((self.work_dir / f"{bid}.requests.json").read_text())
        partial = self.work_dir / f"{bid}.partial.jsonl"
        done: dict[str, str] = {}
        if partial.exists():  # answers written before a restart; a torn last line is dropped
            end_on_whole_line(partial)  # so the answers appended below start on a line of their own
            for line in partial.read_text(encoding="utf-8").splitlines():
                try:
                    done[json.loads(line)["custom_id"]] = line
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        counts = {"total": len(requests), "completed": 0, "failed": 0}
        for line in done.values():
            counts["failed" if _failed(json.loads(line)) else "completed"] += 1
        with open(partial, "a", encoding="utf-8") as out:
            for r in requests:
                if r["custom_id"] in done:
                    continue
                if self.store.get_batch(owner, bid)["status"] == "cancelling":
                    break
                line = json.dumps(self._answer(r, owner))
                out.write(line + "\n")
                out.flush()
                done[r["custom_id"]] = line
                counts["failed" if _failed(json.loads(line)) else "completed"] += 1
                self.store.update_batch(bid, request_counts=dict(counts))
        cancelled = self.store.get_batch(owner, bid)["status"] == "cancelling"
        self.store.update_batch(bid, status="finalizing", finalizing_at=int(time.time()))
        ordered = [json.loads(done[r["custom_id"]]) for r in requests if r["custom_id"] in done]
        ok = [x for x in ordered if not _failed(x)]
        bad = [x for x in ordered if _failed(x)]
        fields: dict[str, Any] = {"request_counts": counts}
        if ok:
            data = "".join(json.dumps(x) + "\n" for x in ok).encode()
            fields["output_file_id"] = self.store.add_file(owner, f"{bid}_output.jsonl", "batch_output", data)["id"]
        if bad:
            data = "".join(json.dumps(x) + "\n" for x in bad).encode()
            fields["error_file_id"] = self.store.add_file(owner, f"{bid}_error.jsonl", "batch_output", data)["id"]
        now = int(time.time())
        if cancelled:
            fields.update(status="cancelled", cancelled_at=now)
        else:
            fields.update(status="completed", completed_at=now)
        self.store.update_batch(bid, **fields)

    def _answer(self, r: dict[str, Any], owner: str) -> dict[str, Any]:
        rid = f"req_{uuid.uuid4().hex[:16]}"
        base = {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": r["custom_id"]}
        token = current_owner.set(owner)  # this worker thread answers for the batch's owner: their ft: models
        try:
            req = ChatRequest.model_validate(r["body"])
            lm = self.pool.get(req.model)
            check_context(lm, req, self.settings)
            body = complete_chat(lm, req)
            return {**base, "response": {"status_code": 200, "request_id": rid, "body": body}, "error": None}
        except OpenAIError as e:
            err = error_body(e.status, e.message, e.code, e.param)
            return {
                **base,
                "response": {"status_code": e.status, "request_id": rid, "body": err},
                "error": None,
            }
        except Exception as e:  # one request's failure is that line's error, not the batch's
            return {**base, "response": None, "error": {"code": "server_error", "message": type(e).__name__}}
        finally:
            current_owner.reset(token)
