"""The API client against a real HTTP server that misbehaves the way real ones do: a web page where the API
should be, a refused key echoed back, empty answers, no usage block. The server is a few lines of stdlib
`http.server` in a thread, speaking the OpenAI wire format; the client is Appraiser's, through the real SDK."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appraiser.cli import app

SECRET = "sk-hostile-test-SECRET-123"


class Hostile(BaseHTTPRequestHandler):
    """POST /<mode>/v1/chat/completions answers as `mode` says; every request is counted per mode."""

    hits: dict[str, int] = {}
    arrived, release = threading.Event(), threading.Event()

    def do_POST(self):  # noqa: N802 (http.server's name)
        mode = self.path.strip("/").split("/")[0]
        self.rfile.read(int(self.headers.get("content-length") or 0))
        Hostile.hits[mode] = Hostile.hits.get(mode, 0) + 1
        if mode == "html":
            self._send(200, b"<html><body>Welcome to the portal</body></html>", "text/html")
        elif mode == "echo401":
            key = self.headers.get("authorization", "").partition(" ")[2]
            body = {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                              "code": "invalid_api_key"}}  # fmt: skip
            self._send(401, json.dumps(body).encode())
        elif (mode, Hostile.hits[mode]) in (("once403", 2), ("first403", 1)):  # a guardrail blocks one prompt
            self._send(403, b'{"error": {"message": "blocked by policy", "code": "forbidden"}}')
        elif mode == "hang":  # holds every call until the test lets go
            Hostile.arrived.set()
            Hostile.release.wait(120)
            self._send(500, b'{"error": {"message": "released"}}')
        else:
            key = self.headers.get("authorization", "").partition(" ")[2]
            answers = {"empty": None, "nousage": "Price is $12.50", "echo": f"Price is $7 ({key})"}
            content = answers.get(mode, "Price is $20")
            body = {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "content_filter" if content is None else "stop"}],
            }  # fmt: skip
            self._send(200, json.dumps(body).encode())

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _eval(base: str, mode: str, files, *more: str):
    return CliRunner().invoke(
        app,
        ["eval", "api", "-o", f"base_url={base}/{mode}/v1", "-o", "max_retries=0", "-o", "concurrency=2",
         "--test", str(files), "--size", "4", *more],
    )  # fmt: skip


@pytest.fixture
def home(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("APPRAISER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return data_dir / "validation.jsonl"


def test_a_web_page_where_the_api_should_be_stops_the_run_with_one_line(hostile, home):
    got = _eval(hostile, "html", home)
    assert got.exit_code == 2, got.output
    assert "a web page, not the OpenAI API's JSON" in got.output and "Traceback" not in got.output


def test_a_refused_key_stops_the_run_and_never_shows_the_key(hostile, home, tmp_path):
    before = Hostile.hits.get("echo401", 0)
    got = _eval(hostile, "echo401", home, "--size", "12")
    assert got.exit_code == 2 and "401 invalid_api_key" in got.output, got.output
    assert SECRET not in got.output and "[the API key]" in got.output
    assert Hostile.hits["echo401"] - before < 8  # what was in flight when it stopped, not one failure per item
    stored = b"".join(p.read_bytes() for p in (tmp_path / "home").rglob("*") if p.is_file())
    assert SECRET.encode() not in stored


@pytest.mark.parametrize("mode", ["once403", "first403"])
def test_one_refused_prompt_is_that_items_failure(hostile, home, mode):
    """A 403 is a blocked prompt as often as a blocked key: it never stops the run, first or not (a re-probe
    found a run whose first item was refused could never finish)."""
    got = _eval(hostile, mode, home, "-o", "concurrency=1")
    assert got.exit_code == 0, got.output
    assert "403 forbidden: blocked by policy" in got.output and Hostile.hits[mode] == 4


def test_a_key_a_server_echoes_in_an_answer_is_not_kept(hostile, home, tmp_path):
    got = _eval(hostile, "echo", home, "--predictions", str(tmp_path / "p.jsonl"))
    assert got.exit_code == 0, got.output
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored and b"[the API key]" in stored


def test_an_empty_answer_is_a_failure_that_the_next_run_asks_again(hostile, home):
    first = _eval(hostile, "empty", home)
    assert first.exit_code == 0, first.output
    asked = Hostile.hits["empty"]
    again = _eval(hostile, "empty", home)
    assert again.exit_code == 0 and Hostile.hits["empty"] == asked + 4  # not served from the cache
    assert "empty answer" in again.output


def test_an_interval_calibrates_through_the_cache_so_a_rerun_asks_nothing(hostile, home, tmp_path, data_dir):
    """`eval api --interval 0.8` prices pool items to calibrate on: they used to be asked again (and paid for
    again) on every run; now they are cached like any evaluation, under the base model's own label."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join((data_dir / "train.jsonl").read_text().splitlines(keepends=True)[:40]))
    more = ("--interval", "0.8", "--train", str(pool))
    first = _eval(hostile, "cal", home, *more)
    assert first.exit_code == 0, first.output
    assert "calibrating the interval on 20 pool items" in first.output and Hostile.hits["cal"] == 20 + 4
    assert "interval coverage" in first.output
    again = _eval(hostile, "cal", home, *more)
    assert again.exit_code == 0, again.output
    assert Hostile.hits["cal"] == 24  # calibration and test items both came from the cache


def test_an_answer_without_usage_has_an_unknown_cost_not_zero(hostile, home):
    from appraiser.pricers import registry

    pricer = registry.create("api", model="gpt-4o-mini", base_url=f"{hostile}/nousage/v1", max_retries=0)
    from appraiser.items import Item

    assert pricer.predict([Item(id="a", text="a kettle", price=1.0)])[0].price == 12.5
    assert pricer.usage()["requests"] == 1 and pricer.usage()["dollars"] is None


def test_a_megabyte_of_digits_is_read_at_once():
    from appraiser.pricers.base import parse_price_text

    assert parse_price_text("Price is $45 " + "9" * 1_000_000) == 45.0
    assert parse_price_text("9" * 1_000_000) is None  # too many digits for a price: a failure


def test_loopback_means_this_machine_and_a_key_over_plain_http_elsewhere_is_warned(monkeypatch, caplog):
    from appraiser.api.providers import _is_loopback, _warn_cleartext, resolve_endpoint

    _warn_cleartext.cache_clear()  # once per endpoint and process: another test may have warned already

    assert _is_loopback("http://127.0.0.1:8000/v1") and _is_loopback("http://localhost/v1")
    assert not _is_loopback("http://127.evil.example/v1") and not _is_loopback("http://10.0.0.1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.WARNING, logger="appraiser.api")
    assert resolve_endpoint(base_url="http://192.0.2.1/v1").api_key() == SECRET
    assert "unencrypted" in caplog.text and SECRET not in caplog.text
    caplog.clear()
    resolve_endpoint(base_url="https://192.0.2.1/v1").api_key()
    resolve_endpoint(base_url="http://127.0.0.1:9/v1").api_key()
    assert "unencrypted" not in caplog.text


def test_ctrl_c_leaves_without_waiting_for_calls_in_flight(hostile, home, tmp_path):
    """A probe found Ctrl-C waited for every call in flight to come back (and the SDK retries them): against a
    server that hangs, minutes. The server here answers only once the test lets it, and the test lets it only
    after the process has exited: had the process waited for its calls, it would still be running."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    exe = shutil.which("appraiser") or str(Path(sys.executable).with_name("appraiser"))
    env = {**os.environ, "APPRAISER_HOME": str(tmp_path / "home"), "OPENAI_API_KEY": SECRET}
    args = [exe, "eval", "api", "-o", f"base_url={hostile}/hang/v1", "-o", "concurrency=2", "--test", str(home)]
    Hostile.arrived.clear()
    Hostile.release.clear()
    proc = subprocess.Popen([*args, "--size", "6"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert Hostile.arrived.wait(120), "no call reached the server"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)  # the calls are still held: only leaving at once gets here
    finally:
        Hostile.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert b"interrupted" in out and b"Traceback" not in out
