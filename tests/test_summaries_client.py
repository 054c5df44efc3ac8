"""`appraiser data summarize` (plain and `--batch`) against a hostile OpenAI-compatible server: a small real
HTTP server in this file (stdlib `http.server` in a thread) that answers chat calls and the Batch API the way
a broken provider might — a refused key, empty answers, unreadable batch output, a batch that is still
running — reached through the official `openai` SDK as a user would reach OpenAI.

What must hold: a provider error is one line, never a traceback; an output line that is not an answer is a
failure of its own and the other answers are kept; a rerun can always go on (a batch for another model, or
one whose output cannot be read, is not waited for again); a torn last line never corrupts the output; and a
run where nothing was summarised does not exit 0.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appraiser.api import ApiClient, ApiError, resolve_endpoint
from appraiser.data.io import DataError, read_items
from appraiser.data.summaries import done_ids, summarize, summarize_batch

EXE = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
KEY_ENV = "STUB_PROVIDER_KEY"
SUMMARY = "Title: A pedal\nCategory: Music\nBrand: Acme\nDescription: A pedal.\nDetails: Loud."


class Provider:
    """An OpenAI-compatible server with knobs. `chat`: "ok", "401", "null" (no content), "alternate" (odd
    requests refused with a 400); `batch_status`: what every batch says it is; `output`: "answers" (one
    per request), "garbage" (the first answer, a line that is not JSON, a line without custom_id), "401"
    (every batch route refuses the key), "gone" (the output file is a 404)."""

    def __init__(self) -> None:
        self.chat, self.batch_status, self.output = "ok", "completed", "answers"
        self.chat_calls = 0
        self.inputs: dict[str, list[dict]] = {}  # input file id -> its requests
        self.batches: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Provider:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def batch_models(self) -> list[str]:
        """The model each batch was sent for (from its requests)."""
        return [self.inputs[b["input_file_id"]][0]["body"]["model"] for b in self.batches]

    # ---- answers

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        if path.endswith("/chat/completions"):
            return self._chat()
        if self.output == "401":
            return 401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
        if method == "POST" and path.endswith("/files"):
            return self._upload(body)
        if method == "POST" and path.endswith("/batches"):
            return self._create(json.loads(body))
        if path.endswith("/content"):
            return self._content(path.split("/")[-2])
        if "/batches/" in path:
            found = [b for b in self.batches if b["id"] == path.rsplit("/", 1)[-1]]
            return (200, {**found[0], "status": self.batch_status}) if found else (404, {"error": {"message": "no"}})
        return 404, {"error": {"message": f"no route {path}"}}

    def _chat(self) -> tuple[int, object]:
        with self.lock:
            self.chat_calls += 1
            n = self.chat_calls
        if self.chat == "401" or (self.chat == "alternate" and n % 2):
            code = 401 if self.chat == "401" else 400
            return code, {"error": {"message": "refused", "code": "invalid_api_key" if code == 401 else "bad"}}
        content = None if self.chat == "null" else SUMMARY
        usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        head = {"id": "c", "object": "chat.completion", "created": 0, "model": "m"}
        return 200, {**head, "choices": [choice], "usage": usage}

    def _upload(self, body: bytes) -> tuple[int, object]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.startswith('{"custom_id"')]
        with self.lock:
            file_id = f"file-in-{len(self.inputs) + 1}"
            self.inputs[file_id] = lines
        return 200, {"id": file_id, "object": "file", "bytes": len(body), "created_at": 0, "filename": "in.jsonl",
                     "purpose": "batch", "status": "processed"}  # fmt: skip

    def _create(self, req: dict) -> tuple[int, object]:
        with self.lock:
            n = len(self.batches) + 1
            batch = {"id": f"batch-{n}", "object": "batch", "endpoint": "/v1/chat/completions",
                     "input_file_id": req["input_file_id"], "completion_window": "24h", "created_at": 0,
                     "output_file_id": f"out-{n}", "error_file_id": None, "status": self.batch_status,
                     "request_counts": {"total": 1, "completed": 0, "failed": 0}}  # fmt: skip
            self.batches.append(batch)
        return 200, batch

    def _content(self, file_id: str) -> tuple[int, object]:
        if self.output == "gone":
            return 404, {"error": {"message": f"No such file: {file_id}", "code": "not_found"}}
        batch = next(b for b in self.batches if b["output_file_id"] == file_id)
        lines = [json.dumps(self._line(r)) for r in self.inputs[batch["input_file_id"]]]
        if self.output == "garbage":
            lines = [lines[0], "this is not json", '{"nocustom": 1}']
        return 200, ("\n".join(lines) + "\n").encode()

    @staticmethod
    def _line(request: dict) -> dict:
        message = {"role": "assistant", "content": SUMMARY}
        body = {"choices": [{"index": 0, "message": message}], "usage": {"prompt_tokens": 10, "completion_tokens": 20}}
        return {"custom_id": request["custom_id"], "response": {"status_code": 200, "body": body}}

    def _handler(self) -> type:
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = provider.answer(self.command, self.path.split("?")[0], body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        return Handler


@pytest.fixture()
def provider():
    with Provider() as p:
        yield p


@pytest.fixture()
def items(data_dir: Path):
    return read_items(data_dir / "validation.jsonl", limit=3)


def _client(provider: Provider, monkeypatch) -> ApiClient:
    monkeypatch.setenv(KEY_ENV, "sk-stub")
    return ApiClient(resolve_endpoint(base_url=provider.url, key_env=KEY_ENV), concurrency=2, max_retries=0)


def _summarize_cli(provider: Provider, data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["data", "summarize", str(data_dir / "validation.jsonl"), "--model", "gpt-4o-mini", "--out", str(out),
            "--base-url", provider.url, "--key-env", KEY_ENV, "--limit", "3", "--poll", "0.1", *extra]  # fmt: skip
    env = {**os.environ, KEY_ENV: "sk-stub"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=600, env=env)


# ---------------------------------------------------------------- the Batch API


def test_a_batch_refused_by_the_provider_is_one_error_line(provider, data_dir, tmp_path):
    provider.output = "401"
    r = _summarize_cli(provider, data_dir, tmp_path / "s.jsonl", "--batch")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("error:") == 1
    assert "401 invalid_api_key: Incorrect API key provided" in r.stderr


def test_batch_output_lines_that_are_not_answers_fail_and_the_rest_is_kept(provider, items, monkeypatch, tmp_path):
    provider.output = "garbage"
    out = tmp_path / "s.jsonl"
    report = summarize_batch(items, _client(provider, monkeypatch), "m", out, poll_s=0.01)
    assert report.written == 1 and done_ids(out) == {items[0].id}
    failed = dict(report.failed)
    assert failed["out-1 line 2"].startswith("not JSON") and failed["out-1 line 3"].startswith("no custom_id")
    assert failed[items[1].id] == failed[items[2].id] == "no answer in the batch output"
    assert not out.with_name(out.name + ".batch.json").exists()  # that batch is done with
    provider.output = "answers"
    again = summarize_batch(items, _client(provider, monkeypatch), "m", out, poll_s=0.01)
    assert again.skipped == 1 and again.written == 2 and len(provider.batches) == 2  # a new batch for the two
    assert done_ids(out) == {it.id for it in items}


def test_a_batch_whose_output_is_gone_is_not_waited_for_again(provider, items, monkeypatch, tmp_path):
    provider.output = "gone"
    out = tmp_path / "s.jsonl"
    with pytest.raises(ApiError, match="rerun to send a new batch"):
        summarize_batch(items, _client(provider, monkeypatch), "m", out, poll_s=0.01)
    assert not out.with_name(out.name + ".batch.json").exists()
    provider.output = "answers"
    report = summarize_batch(items, _client(provider, monkeypatch), "m", out, poll_s=0.01)
    assert report.written == 3 and len(provider.batches) == 2


def test_a_saved_batch_is_reused_for_its_own_model_only(provider, items, monkeypatch, tmp_path):
    """An interrupted run's batch is waited for again by a rerun with the same model (no second payment);
    a rerun with another model sends its own batch instead of taking the first model's answers."""
    provider.batch_status = "in_progress"
    out = tmp_path / "s.jsonl"
    state = out.with_name(out.name + ".batch.json")
    for _ in range(2):
        with pytest.raises(DataError, match="still in_progress"):
            summarize_batch(items, _client(provider, monkeypatch), "model-a", out, poll_s=0.01, timeout_s=0)
        assert json.loads(state.read_text())["model"] == "model-a"
    assert provider.batch_models() == ["model-a"]
    provider.batch_status = "completed"
    report = summarize_batch(items, _client(provider, monkeypatch), "model-b", out, poll_s=0.01)
    assert provider.batch_models() == ["model-a", "model-b"]
    assert report.written == 3 and not state.exists()


# ---------------------------------------------------------------- plain calls


def test_a_torn_last_line_is_asked_again_and_the_output_stays_whole(provider, items, monkeypatch, tmp_path):
    """A kill mid-write leaves half a record without its newline: the rerun drops it, asks for that item
    again, and appends on a fresh line, so every line of the output is a whole record."""
    out = tmp_path / "s.jsonl"
    first, second = (json.dumps(it.model_copy(update={"summary": SUMMARY}).to_record()) for it in items[:2])
    out.write_text(first + "\n" + second[: len(second) // 2], encoding="utf-8")
    report = summarize(items, _client(provider, monkeypatch), "m", out)
    assert report.skipped == 1 and report.written == 2 and provider.chat_calls == 2
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == sorted(it.id for it in items)
    assert len(read_items(out)) == 3


def test_a_whole_last_record_without_its_newline_is_kept(provider, items, monkeypatch, tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text(json.dumps(items[0].model_copy(update={"summary": SUMMARY}).to_record()), encoding="utf-8")
    report = summarize(items, _client(provider, monkeypatch), "m", out)
    assert report.skipped == 1 and report.written == 2 and provider.chat_calls == 2
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()][0] == items[0].id
    assert len(read_items(out)) == 3


def test_a_run_where_nothing_was_summarised_exits_non_zero(provider, data_dir, tmp_path):
    provider.chat = "null"
    r = _summarize_cli(provider, data_dir, tmp_path / "s.jsonl")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "error: nothing was summarised (3 failed)" in r.stderr
    assert "not a five-field summary" in r.stderr


def test_a_refused_key_stops_the_summaries_at_once(provider, data_dir, tmp_path):
    """A refused key fails every item the same way: one error line (exit 2), not a refused call per item."""
    provider.chat = "401"
    r = _summarize_cli(provider, data_dir, tmp_path / "s.jsonl", "--limit", "12", "--concurrency", "2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "401 invalid_api_key: refused" in r.stderr
    assert provider.chat_calls <= 4  # what was in flight when it stopped, not all 12


def test_a_run_with_some_summaries_keeps_them_and_says_how_many_failed(provider, data_dir, tmp_path):
    provider.chat = "alternate"  # the 1st and 3rd call are refused
    out = tmp_path / "s.jsonl"
    r = _summarize_cli(provider, data_dir, out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 failed, 1 written" in r.stderr and len(done_ids(out)) == 1
