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
    assert f"api[{run.config['fine_tuned_model']}]" in labels
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
    watcher = subprocess.Popen(
        [EXE, "hosted", "watch", run.id, "--interval", "0.3", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.time() + 600
    while time.time() < deadline and not store.series(run.id, "loss")[0] and watcher.poll() is None:
        time.sleep(0.2)
    watcher.send_signal(signal.SIGINT)
    stdout, stderr = watcher.communicate(timeout=120)
    if watcher.returncode == 0:
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
