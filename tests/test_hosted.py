"""`appraiser hosted prepare/start/watch/checkpoints/cancel` end to end: the real CLI in its own process,
the official `openai` SDK, a live `appraiser serve` (its files and fine-tuning routes), the run store, and
trackio's local SQLite store as the tracker.

The fine-tuning jobs train SmolLM2-135M on CPU for a few steps (a couple of dozen items). Ctrl-C + continue
and `runs watch` + cancel run in the default suite (start and watch end to end, about a minute together); the
whole workflow through a rate-limiting proxy with trackio and eval-on-finish (about two minutes) is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import KEY

from appraiser.data.io import read_items, write_items
from appraiser.runs.store import RunStore

EXE = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")


def cli(*args: object, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `appraiser` command as a user runs it (its own process, this test's state folder)."""
    return subprocess.run(
        [EXE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture()
def pool(data_dir: Path, tmp_path: Path) -> Path:
    """A small item pool: 40 real training items."""
    path = tmp_path / "pool.jsonl"
    write_items(read_items(data_dir / "train.jsonl", limit=40), path)
    return path


# ---------------------------------------------------------------- prepare


def test_prepare_writes_the_courses_chat_examples_and_checks_them(pool: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    r = cli("hosted", "prepare", "--items", pool, "--n-train", 20, "--n-validation", 10, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "training_file" in r.stdout and "validation_file" in r.stdout
    assert "default epochs 5" in r.stdout  # OpenAI's rule: 100 // 20 example passes
    assert "estimated cost $" in r.stdout  # gpt-4o-mini's training price
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert len(train) == 20 and len(val) == 10
    items = {it.text: it for it in read_items(pool)}
    for ex in train + val:
        system, user, assistant = ex["messages"]
        assert system["role"] == "system" and "estimate prices" in system["content"]
        assert user["content"].startswith("How much does this cost?\n\n")
        item = items[user["content"].removeprefix("How much does this cost?\n\n")]
        assert assistant == {"role": "assistant", "content": f"Price is ${int(item.price + 0.5)}.00"}
    train_texts = {ex["messages"][1]["content"] for ex in train}
    assert not train_texts & {ex["messages"][1]["content"] for ex in val}  # no item in both files
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["training_file"]["n_epochs"] == 5
    assert report["files"]["training_file"]["error"] is None


def test_prepare_refuses_a_training_file_with_too_few_examples(pool: Path, tmp_path: Path):
    r = cli("hosted", "prepare", "--items", pool, "--n-train", 5, "--n-validation", 0, "--out", tmp_path / "p")
    assert r.returncode == 2
    assert r.stderr.count("error:") == 1 and "at least 10 examples" in r.stderr
    assert (tmp_path / "p" / "train.jsonl").exists()  # kept, so the user can read what was refused


def test_prepare_refuses_more_items_than_the_pool_holds(pool: Path, tmp_path: Path):
    r = cli("hosted", "prepare", "--items", pool, "--n-train", 40, "--n-validation", 10, "--out", tmp_path / "p")
    assert r.returncode == 2 and "the training pool holds 40" in r.stderr


def test_start_refuses_a_malformed_file_before_uploading_anything(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
        '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
    )
    r = cli("hosted", "start", "--train", bad, "--provider", "appraiser", "--base-url", "http://127.0.0.1:9/v1")
    assert r.returncode == 2
    err = r.stderr
    assert "invalid_json: 1" in err and "unrecognized_role: 1" in err and "example_missing_assistant_message" in err
    assert RunStore().list() == []  # nothing started


def test_start_names_a_missing_file_before_anything_else(tmp_path: Path):
    r = cli("hosted", "start", "--from", tmp_path / "nowhere", env={"OPENAI_API_KEY": ""})
    assert r.returncode == 2 and "nowhere/train.jsonl: no such chat JSONL file" in r.stderr


def test_start_records_a_provider_error_on_the_run(server, pool: Path, tmp_path: Path):
    """The files upload to the live server; a job on a model it does not have fails with its message."""
    out = tmp_path / "p"
    assert cli("hosted", "prepare", "--items", pool, "--n-train", 12, "--n-validation", 0, "--out", out).returncode == 0
    env = {"APPRAISER_API_KEY": KEY}
    r = cli("hosted", "start", "--from", out, "--base-url", server[0], "--key-env", "APPRAISER_API_KEY",
            "--model", "no-such-model", env=env)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("error:") == 1
    (run,) = RunStore().list()
    assert run.kind == "hosted" and run.status == "failed" and run.error
    assert run.config["training_file"].startswith("file-")  # the upload went through before the refusal
    assert KEY not in json.dumps(run.config)  # where the key lives, never the key


# ---------------------------------------------------------------- a live server that trains

STEPS = 2  # every job is capped at this many steps (the server's --job-max-steps), a checkpoint at each


@pytest.fixture(scope="module")
def trainer_server(tmp_path_factory):
    """(base_url, home) of an `appraiser serve` that runs fine-tuning jobs: two steps each, a checkpoint
    after each step, and a body limit that takes a training file."""
    from conftest import start_serve

    home = tmp_path_factory.mktemp("trainer-home")
    args = ["--api-key", KEY, "--max-body", "5000000", "--job-max-steps", str(STEPS), "--job-save-every", "1"]
    proc, base = start_serve(home, *args, "--max-tokens", "16", timeout=180)
    yield f"{base}/v1", home
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


class FlakyProxy:
    """A loopback HTTP proxy in front of the server that answers the first `fail` requests for job events
    with 429 and then 503 (what a busy provider does), and forwards everything else unchanged."""

    def __init__(self, upstream: str, fail: int):
        import http.server
        import threading

        import httpx2

        self.upstream, self.remaining, self.failed = upstream.removesuffix("/v1"), fail, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.split("?")[0].endswith("/events") and proxy.remaining > 0:
                    proxy.remaining -= 1
                    proxy.failed += 1
                    status = 429 if proxy.failed % 2 else 503
                    payload = json.dumps({"error": {"message": "slow down", "type": "rate_limit"}}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("retry-after-ms", "10")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx2.request(self.command, proxy.upstream + self.path, headers=headers, content=body, timeout=120)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_DELETE = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()  # refuse connections at once (a listening socket nobody serves hangs them)


def _prepared(pool: Path, tmp_path: Path, n_train: int = 12, n_validation: int = 3) -> Path:
    out = tmp_path / "prepared"
    r = cli("hosted", "prepare", "--items", pool, "--n-train", n_train, "--n-validation", n_validation, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def _trackio_losses(trackio_dir: Path, run_id: str) -> dict[int, float]:
    """The `loss` per step that trackio stored for a run, read back through trackio's own storage API (in
    a fresh process: trackio reads `$TRACKIO_DIR` once, at import)."""
    code = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage; "
        "print(json.dumps(SQLiteStorage.get_logs('appraiser', sys.argv[1])))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, run_id],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRACKIO_DIR": str(trackio_dir)},
    )
    assert r.returncode == 0, r.stderr
    logs = json.loads(r.stdout.strip().splitlines()[-1])
    return {int(row["step"]): float(row["loss"]) for row in logs if "loss" in row}


@pytest.mark.slow
def test_start_follows_the_job_live_into_the_store_trackio_and_leaderboard(
    trainer_server, pool: Path, data_dir: Path, tmp_path: Path
):
    """The course's hosted workflow as one command, against `appraiser serve` through a proxy that
    rate-limits the event list: upload, job, live events and metrics (store and trackio), the result
    CSV, and the fine-tuned model priced on the test set and put on the leaderboard."""
    base, _home = trainer_server
    out = _prepared(pool, tmp_path)
    test = tmp_path / "test.jsonl"
    write_items(read_items(data_dir / "validation.jsonl", limit=3), test)
    trackio_dir = tmp_path / "trackio"
    env = {"APPRAISER_API_KEY": KEY, "TRACKIO_DIR": str(trackio_dir)}
    with FlakyProxy(base, fail=6) as proxy:
        r = cli("hosted", "start", "--from", out, "--provider", "appraiser", "--base-url", proxy.url,
                "--epochs", 1, "--batch-size", 1, "--report-to", "trackio", "--eval-on-finish", "--eval-checkpoints",
                "--test", test, "--size", 3, "--interval", 0.5, "--plain", env=env)  # fmt: skip
        cps = cli("hosted", "checkpoints", "last", env=env)  # the run reaches its job through the proxy
    assert r.returncode == 0, r.stdout + r.stderr
    assert proxy.failed == 6 and "retrying in" in r.stderr  # backed off past the SDK's own retries
    (run,) = RunStore().list()
    store = RunStore()
    assert run.kind == "hosted" and run.status == "succeeded" and run.external_id.startswith("ftjob-")
    assert run.config["fine_tuned_model"].startswith("ft:") and run.config["estimate"]["n_epochs"] == 1
    messages = [e.message for e in store.events(run.id)]
    step_lines = [m for m in messages if m.startswith("Step ")]
    assert step_lines and f"Step 1/{STEPS}" in step_lines[0]  # the job's own words, oldest first
    assert len(messages) == len(set(messages))  # nothing mirrored twice
    steps, losses = store.series(run.id, "loss")
    assert steps == list(range(1, STEPS + 1)) and run.step == STEPS and run.max_steps == STEPS
    # trackio got the live values; the store has the result CSV's (5 decimals) over them
    assert _trackio_losses(trackio_dir, run.id) == pytest.approx(dict(zip(steps, losses, strict=True)), abs=1e-4)
    assert run.best_metric in ("full_valid_loss", "valid_loss") and run.best_value > 0
    # every step's validation figures reached the store, though they arrive after its training loss
    import openai

    job_events = openai.OpenAI(base_url=base, api_key=KEY).fine_tuning.jobs.list_events(run.external_id, limit=100)
    validated = sorted(e.data["step"] for e in job_events.data if e.type == "metrics" and "full_valid_loss" in e.data)
    assert validated and store.series(run.id, "full_valid_loss")[0] == validated
    evaluated = [m for m in messages if m.startswith("Evaluated ")]
    assert len(evaluated) == STEPS + 1  # each checkpoint's model and the final one
    from appraiser.evaluation.store import LeaderboardStore

    with LeaderboardStore() as lb:
        labels = {row.label for row in lb.rows()}
    assert any(label.startswith(f"api[{run.config['fine_tuned_model']},at=127.0.0.1:") for label in labels), labels
    shown = cli("runs", "show", run.id)
    assert shown.returncode == 0 and run.external_id in shown.stdout
    assert cps.returncode == 0 and run.config["fine_tuned_model"].split(":")[1] in cps.stdout


def test_ctrl_c_then_watch_continues_from_the_cursor_without_duplicates(trainer_server, pool: Path, tmp_path: Path):
    """Interrupted once its first metrics are in, the follower exits 130 and says how to go on; trackio
    already holds those steps while the job still runs (live, not synced at the end); a rerun mirrors the
    rest, each event once."""
    base, _home = trainer_server
    out = _prepared(pool, tmp_path, n_validation=0)  # no validation pass at each checkpoint: a quicker job
    trackio_dir = tmp_path / "trackio"
    env = {"APPRAISER_API_KEY": KEY, "TRACKIO_DIR": str(trackio_dir)}
    r = cli("hosted", "start", "--from", out, "--provider", "appraiser", "--base-url", base, "--epochs", 1,
            "--batch-size", 1, "--report-to", "trackio", "--detach", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (run,) = RunStore().list()
    assert run.status in ("queued", "running") and "hosted watch" in r.stdout
    store = RunStore()
    before = len(store.series(run.id, "loss")[0])  # `start` may have mirrored some steps already
    watcher = subprocess.Popen(
        [EXE, "hosted", "watch", run.id, "--interval", "0.3", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.time() + 600
    # interrupted once the watcher itself has mirrored a step: it is up (a SIGINT during the interpreter's
    # start kills it outright) and the job is running
    while time.time() < deadline and len(store.series(run.id, "loss")[0]) <= before and watcher.poll() is None:
        time.sleep(0.2)
    if store.get(run.id).finished:  # the watcher found the job done and mirrored all of it at once: leaving
        watcher.communicate(timeout=120)
        pytest.skip("the job ended before the watcher could be interrupted")
    watcher.send_signal(signal.SIGINT)
    stdout, stderr = watcher.communicate(timeout=120)
    if watcher.returncode in (0, -signal.SIGINT) and store.get(run.id).finished and not stderr:
        # the job ended between the check and the signal: the interrupt met an interpreter that was already
        # exiting (past main(), so Python's own exit on SIGINT: -2), with nothing left to interrupt
        pytest.skip("the job ended before the interrupt arrived")
    assert watcher.returncode == 130, stderr
    assert f"rerun `appraiser hosted watch {run.id}` to continue" in stderr
    if not store.get(run.id).finished:  # the job was still running: trackio had its steps already
        seen = store.series(run.id, "loss")[0]
        assert set(seen) <= set(_trackio_losses(trackio_dir, run.id))
    again = cli("hosted", "watch", run.id, "--interval", "0.3", "--plain", env=env)
    assert again.returncode == 0, again.stderr
    assert store.get(run.id).status == "succeeded"
    events = store.events(run.id)
    mirrored = [e.message for e in events if e.message.startswith("Step ")]
    assert len(mirrored) == len(set(mirrored)) == STEPS  # each step once, across the two followers
    import openai

    sdk = openai.OpenAI(base_url=base, api_key=KEY)
    provider = [e.message for e in sdk.fine_tuning.jobs.list_events(run.external_id, limit=100).data]
    ours = [e.message for e in events]
    assert all(ours.count(m) == provider.count(m) for m in provider)  # every event, and once
    steps, losses = store.series(run.id, "loss")
    assert _trackio_losses(trackio_dir, run.id) == pytest.approx(dict(zip(steps, losses, strict=True)), abs=1e-4)


def test_runs_watch_follows_a_hosted_job_and_cancel_ends_it(trainer_server, pool: Path, tmp_path: Path):
    """`runs watch` on a hosted run that nobody follows mirrors the job's events itself; `hosted cancel`
    ends the job, and the watch ends with it."""
    base, _home = trainer_server
    out = _prepared(pool, tmp_path, n_validation=0)
    env = {"APPRAISER_API_KEY": KEY}
    r = cli("hosted", "start", "--from", out, "--provider", "appraiser", "--base-url", base, "--epochs", 3,
            "--batch-size", 1, "--detach", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (run,) = RunStore().list()
    store = RunStore()
    before = len(store.events(run.id))  # ours only: nobody has followed the job yet
    watcher = subprocess.Popen(
        [EXE, "runs", "watch", run.id, "--interval", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(store.events(run.id)) == before and watcher.poll() is None:
        time.sleep(0.2)
    assert len(store.events(run.id)) > before  # the provider's events, mirrored by `runs watch`
    c = cli("hosted", "cancel", run.id, env=env)
    assert c.returncode == 0, c.stderr
    assert "cancelled" in c.stdout
    stdout, stderr = watcher.communicate(timeout=300)
    assert watcher.returncode == 0, stderr
    assert f"run {run.id} is cancelled" in stdout
    assert store.get(run.id).status == "cancelled"
    ends = [e.message for e in store.events(run.id) if e.message.startswith("Job cancelled")]
    assert len(ends) == 1


# ---------------------------------------------------------------- a hostile provider

STUB_KEY_ENV = "STUB_PROVIDER_KEY"
STUB_ENV = {STUB_KEY_ENV: "sk-stub"}
CHECKPOINT_MODEL = "ft:m:org:ok:ckpt-step-1"  # ":ok:" is an emoji code to rich: shown as text, it stays


class HostedProvider:
    """A fine-tuning API with knobs, as a broken or hostile provider answers (stdlib `http.server` in a
    thread). `upload`: "ok", "html" (a 200 web page), "noid" (a 200 JSON without a file id); `job`: the
    status every job has, or "missing" (404) or "500"; `events`: "ok", "loop" (always `has_more`, the same
    page), "badfields" (a time that is "yesterday", no message, an ANSI escape); `checkpoints`: "ok" or
    "loop"; chat calls answer with no content. `calls` counts requests per route."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.upload, self.job, self.events, self.checkpoints = "ok", "running", "ok", "ok"
        self.fresh = 0
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostedProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, method: str, path: str) -> tuple[int, object]:
        route = self._route(method, path)
        with self.lock:
            self.calls[route] = self.calls.get(route, 0) + 1
        if route == "upload":
            return self._upload()
        if route == "chat":
            message = {"role": "assistant", "content": None}
            return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip
        if route == "create":
            return 200, self._job("running")
        if self.job == "missing":
            return 404, {"error": {"message": "No such fine-tuning job: ftjob-1", "code": "fine_tune_not_found"}}
        if route == "events":
            return 200, self._events()
        if route == "checkpoints":
            return 200, self._checkpoints()
        if route == "cancel":
            return 200, self._job("cancelled")
        if self.job == "500":
            return 500, {"error": {"message": "internal", "type": "server_error"}}
        return 200, self._job(self.job)

    @staticmethod
    def _route(method: str, path: str) -> str:
        if path.endswith("/files"):
            return "upload"
        for name in ("chat/completions", "events", "checkpoints", "cancel"):
            if path.endswith(name):
                return name.split("/")[0]
        return "create" if method == "POST" else "job"

    def _upload(self) -> tuple[int, object]:
        if self.upload == "html":
            return 200, b"<html><body>Welcome to nginx</body></html>"
        f = {"object": "file", "bytes": 1, "created_at": 0, "filename": "train.jsonl", "purpose": "fine-tune"}
        return 200, f if self.upload == "noid" else {**f, "id": "file-1", "status": "processed"}

    def _job(self, status: str) -> dict:
        done = status == "succeeded"
        return {"id": "ftjob-1", "object": "fine_tuning.job", "created_at": 0, "model": "m", "status": status,
                "fine_tuned_model": "ft:m:org:ok:abc" if done else None, "finished_at": None, "result_files": [],
                "hyperparameters": {"n_epochs": 1}, "organization_id": "org", "seed": 1, "trained_tokens": None,
                "training_file": "file-1", "validation_file": None, "error": None}  # fmt: skip

    def _events(self) -> dict:
        def event(i: int, **fields) -> dict:
            base = {"id": f"ev-{i}", "object": "fine_tuning.job.event", "created_at": 1700000000 + i,
                    "level": "info", "message": f"Step {i}/2: training loss=1.0", "type": "metrics",
                    "data": {"step": i, "total_steps": 2, "train_loss": 1.0}}  # fmt: skip
            return {**base, **fields}

        if self.events == "loop":
            return {"object": "list", "has_more": True, "data": [event(1)]}
        if self.events == "null":
            return {"object": "list", "has_more": False, "data": None}
        if self.events == "badfields":
            odd = [event(2, created_at="yesterday", message="odd \x1b[31mred"), event(1, created_at=None, message=None)]
            return {"object": "list", "has_more": False, "data": odd}
        return {"object": "list", "has_more": False, "data": [event(2), event(1)]}

    def _checkpoints(self) -> dict:
        cp = {"id": "cp-1", "object": "fine_tuning.job.checkpoint", "created_at": 0, "step_number": 1,
              "fine_tuning_job_id": "ftjob-1", "fine_tuned_model_checkpoint": CHECKPOINT_MODEL,
              "metrics": {"train_loss": 0.5}}  # fmt: skip
        if self.checkpoints == "null":
            return {"object": "list", "has_more": False, "data": None}
        if self.checkpoints == "fresh":  # has_more for ever, a new id on every page
            with self.lock:
                self.fresh += 1
            cp = {**cp, "id": f"cp-{self.fresh}"}
        return {"object": "list", "has_more": self.checkpoints in ("loop", "fresh"), "data": [cp]}

    def _handler(self) -> type:
        import http.server

        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = provider.answer(self.command, self.path.split("?")[0])
                html = isinstance(payload, bytes)
                data = payload if html else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if html else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _any

        return Handler


@pytest.fixture()
def hostile():
    with HostedProvider() as p:
        yield p


@pytest.fixture()
def prepared(pool: Path, tmp_path: Path) -> Path:
    return _prepared(pool, tmp_path, n_validation=0)


def _start_at(provider: HostedProvider, prepared: Path, *args: object) -> subprocess.CompletedProcess:
    """`hosted start` against the provider (the course's base model, so the files are checked as for OpenAI)."""
    return cli("hosted", "start", "--from", prepared, "--base-url", provider.url, "--key-env", STUB_KEY_ENV,
               "--model", "gpt-4o-mini-2024-07-18", "--plain", "--interval", 0.1, *args, env=STUB_ENV,
               timeout=300)  # fmt: skip


@pytest.mark.parametrize("upload", ["html", "noid"])
def test_an_upload_answered_with_something_else_fails_the_run(hostile, prepared: Path, upload: str):
    hostile.upload = upload
    r = _start_at(hostile, prepared)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("error:") == 1 and "ending in /v1" in r.stderr
    (run,) = RunStore().list()
    assert run.status == "failed" and "ending in /v1" in run.error and hostile.calls.get("create") is None


def test_events_and_checkpoints_that_always_have_more_are_cut_short(hostile, prepared: Path):
    """A provider that answers `has_more` with the same page forever: the walk stops at the page that adds
    nothing, says so, and the job is followed to its end all the same."""
    hostile.job, hostile.events, hostile.checkpoints = "succeeded", "loop", "loop"
    r = _start_at(hostile, prepared)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "says has_more but adds nothing new" in r.stderr and hostile.calls["events"] < 10
    (run,) = RunStore().list()
    assert (
        run.status == "succeeded"
        and [e.message for e in RunStore().events(run.id)].count("Step 1/2: training loss=1.0") == 1
    )
    cps = cli("hosted", "checkpoints", "last", env=STUB_ENV, timeout=300)
    assert cps.returncode == 0, cps.stderr
    assert "says has_more but adds nothing new" in cps.stderr and hostile.calls["checkpoints"] == 2
    assert CHECKPOINT_MODEL in cps.stdout and "0.5000" in cps.stdout


def test_lists_without_data_or_without_end_do_not_stop_the_follower(hostile, prepared: Path):
    """A re-probe: `"data": null` crashed the follower and `hosted checkpoints` with a traceback, and a list that
    says `has_more` for ever with new ids on every page was walked for ever."""
    from appraiser.hosted.jobs import MAX_PAGES

    hostile.job, hostile.events, hostile.checkpoints = "succeeded", "null", "null"
    r = _start_at(hostile, prepared)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    cps = cli("hosted", "checkpoints", "last", env=STUB_ENV, timeout=300)
    assert cps.returncode == 0 and "Traceback" not in cps.stderr, cps.stderr
    hostile.checkpoints = "fresh"
    cps = cli("hosted", "checkpoints", "last", env=STUB_ENV, timeout=300)
    assert cps.returncode == 0 and f"goes on past {MAX_PAGES} pages" in cps.stderr, cps.stderr
    assert hostile.fresh == MAX_PAGES


def test_events_with_fields_that_cannot_be_read_are_recorded_without_them(hostile, prepared: Path):
    hostile.job, hostile.events = "succeeded", "badfields"
    r = _start_at(hostile, prepared)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    (run,) = RunStore().list()
    messages = [e.message for e in RunStore().events(run.id)]
    assert "odd \\x1b[31mred" in messages  # the time of "yesterday" is the time it was mirrored
    assert "(metrics event without a message)" in messages
    assert RunStore().series(run.id, "loss")[0] == [1, 2]


def test_a_job_the_provider_does_not_know_fails_the_run_until_it_answers_again(hostile, prepared: Path):
    """A 404 for the job: the run fails with a message that says so (watch and cancel end non-zero, they do
    not retry); when the job answers again (the key that made it), a watch takes the run back."""
    hostile.job = "missing"
    r = _start_at(hostile, prepared)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "has no job ftjob-1" in r.stderr and f"${STUB_KEY_ENV} is not the key" in r.stderr
    (run,) = RunStore().list()
    assert run.status == "failed" and "has no job ftjob-1" in run.error
    for again in (
        cli("hosted", "watch", run.id, "--plain", env=STUB_ENV, timeout=300),
        cli("hosted", "cancel", run.id, env=STUB_ENV, timeout=300),
    ):
        assert again.returncode == 2 and "has no job ftjob-1" in again.stderr, again.stderr
    hostile.job = "succeeded"
    back = cli("hosted", "watch", run.id, "--plain", "--interval", 0.1, env=STUB_ENV, timeout=300)
    assert back.returncode == 0, back.stderr
    assert RunStore().get(run.id).status == "succeeded"


def test_a_job_that_keeps_answering_500_is_given_up_on(hostile, prepared: Path, monkeypatch):
    """429/5xx back off and poll again, but not forever: `max_tries` failures of one call in a row stop the
    follower with a message that says the job itself may be fine."""
    from appraiser.api import ApiError
    from appraiser.hosted.follow import Follower
    from appraiser.hosted.jobs import client_for, endpoint_of

    r = _start_at(hostile, prepared, "--detach")
    assert r.returncode == 0, r.stderr
    hostile.job = "500"
    monkeypatch.setenv(STUB_KEY_ENV, "sk-stub")
    store = RunStore()
    (run,) = store.list()
    said: list[str] = []
    follower = Follower(store, run.id, client_for(endpoint_of(run), max_retries=0), max_backoff=0.01, max_tries=3,
                        say=said.append)  # fmt: skip
    with pytest.raises(ApiError, match="gave up after 3 failed tries in a row"):
        follower.run()
    assert hostile.calls["job"] == 3 and len(said) == 2 and store.get(run.id).status == "running"


def test_an_evaluation_where_every_item_failed_is_not_done(hostile, prepared: Path, data_dir: Path, tmp_path: Path):
    """`--eval-on-finish` where no test item got a price (every answer empty): an error naming the reason,
    no leaderboard row, nothing recorded as evaluated, so `hosted watch` tries again."""
    from appraiser.evaluation.store import LeaderboardStore

    hostile.job = "succeeded"
    test = tmp_path / "test.jsonl"
    write_items(read_items(data_dir / "validation.jsonl", limit=2), test)
    r = _start_at(hostile, prepared, "--eval-on-finish", "--test", test, "--size", 2)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "every one of the 2 test items failed" in r.stderr and "an empty answer" in r.stderr
    assert "(final): MAE" not in r.stdout and hostile.calls["chat"] == 2
    (run,) = RunStore().list()
    assert not [e for e in RunStore().events(run.id) if e.message.startswith("Evaluated ")]
    with LeaderboardStore() as lb:
        assert lb.rows() == []
    again = cli("hosted", "watch", run.id, "--plain", env=STUB_ENV, timeout=300)
    assert again.returncode == 2 and "already evaluated" not in again.stderr, again.stderr
    assert hostile.calls["chat"] == 4
