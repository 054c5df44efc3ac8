"""Notifications through real endpoints: an aiosmtpd SMTP server and an http.server webhook receiver,
both started here on localhost, and a dead port. Real training runs (SmolLM2, a few real items).

What must hold: one email per terminal state with the right subject, body and the loss-curve PNG; a
webhook gets the same card; a dead endpoint is retried with backoff and the run still succeeds; a run
that is cancelled, resumed and finished sends each state once; a NaN loss stops a run at once.
"""

from __future__ import annotations

import email
import json
import os
import socket
import subprocess
import sys
import threading
import time
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.notify import RunNotifier, notify_run, redact, run_state, send
from appraiser.runs.stalls import check_stall
from appraiser.runs.store import RunStore

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def smtp():
    """(mailto URL, received messages as email.message.EmailMessage) of a real SMTP server on localhost."""
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []
            self.raw = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            self.raw.append(envelope.content)
            self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
            return "250 Message accepted for delivery"

    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    url = f"mailto://127.0.0.1:{port}?smtp=127.0.0.1&mode=insecure&from=appraiser@example.com&to=trainer@example.com"
    yield url, inbox
    controller.stop()


class _Hooks(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's hook name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        server.hits += 1
        if server.hits <= server.fail_first:
            self.send_response(500)
        else:
            server.posts.append(json.loads(body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    """(json:// URL, server) of a real HTTP receiver; `server.posts` holds the JSON bodies it accepted and
    `server.fail_first` makes its first N requests answer 500."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    server.posts, server.hits, server.fail_first = [], 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"json://127.0.0.1:{server.server_port}/hooks/appraiser", server
    server.shutdown()
    server.server_close()


def _tiny(train: Path, validation: Path, **extra) -> list[str]:
    opts = dict(
        train=train,
        validation=validation,
        n_train=4,
        batch_size=2,
        max_steps=3,
        max_text_tokens=8,
        probe_every=2,
        probe_size=2,
        probe_method="expected",
        save_every=1,
        threads=1,
        seed=3,
        **extra,
    )
    args = ["train"]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _baseline_on_leaderboard(validation: Path) -> None:
    """A real baseline row on a real test set, so the card can place the model against it."""
    from appraiser.data.io import read_items
    from appraiser.evaluation import evaluate
    from appraiser.pricers import registry

    items = read_items(validation)
    evaluate(registry.create("constant-median").fit(items), items, show=False, cache=False)


# ------------------------------------------------------------------------------------------ send


def test_send_retries_a_failing_endpoint_and_gives_up_on_a_dead_one(webhook):
    url, server = webhook
    server.fail_first = 2
    [d] = send([url], "title", "body", retries=3, backoff=0.01)
    assert d.ok and d.attempts == 3 and len(server.posts) == 1
    assert server.posts[0]["title"] == "title" and server.posts[0]["message"] == "body"
    dead = f"json://127.0.0.1:{_free_port()}/nobody-here"
    [d] = send([dead], "t", "b", retries=2, backoff=0.01)
    assert not d.ok and d.attempts == 3 and d.error
    [d] = send(["notascheme://x"], "t", "b", retries=0)
    assert not d.ok and d.attempts == 1  # never raises


def test_urls_are_shown_without_their_secrets():
    for url in (
        "mailto://bob:hunter2@example.com?smtp=127.0.0.1",
        "json://bob:hunter2@127.0.0.1:9/x",
        "whatever://bob:hunter2@host/path?token=hunter2",
    ):
        shown = redact(url)
        assert "hunter2" not in shown and "bob" in shown


def test_a_url_apprise_rejects_is_not_logged_by_apprise(caplog):
    """Apprise logs a URL it cannot parse ("Unparseable URL …"); the check reports it redacted instead."""
    from appraiser.notify.send import check_url

    caplog.set_level("DEBUG")
    for url in ("nosuchscheme://bob:hunter2@host/path", "mailto://bob:hunter2@"):
        problem = check_url(url)
        assert problem is not None and "hunter2" not in problem
    assert not [r for r in caplog.records if r.name.startswith("apprise")], caplog.text


def test_notify_test_command(webhook):
    url, server = webhook
    ok = runner.invoke(app, ["notify", "test", url])
    assert ok.exit_code == 0, ok.output
    assert "sent" in ok.output and server.posts[0]["title"] == "Appraiser: test notification"
    dead = runner.invoke(app, ["notify", "test", f"json://127.0.0.1:{_free_port()}/x"])
    assert dead.exit_code == 1 and "failed" in dead.output
    bad = runner.invoke(app, ["notify", "test", "not a url"])
    assert bad.exit_code == 2 and "not a notification URL" in bad.output


# ------------------------------------------------------------------------------------------ runs


def test_a_finished_run_emails_its_card_with_the_loss_curve_once(small_split, smtp, webhook, tmp_path):
    mail_url, inbox = smtp
    hook_url, server = webhook
    train, validation = small_split(8, 6)
    _baseline_on_leaderboard(validation)
    out = runner.invoke(app, [*_tiny(train, validation, name="notified"), "--notify", mail_url, "--notify", hook_url])
    assert out.exit_code == 0, out.output
    store = RunStore()
    run = store.get("notified")
    assert run.status == "succeeded"

    assert len(inbox.messages) == 1
    msg = inbox.messages[0]
    assert msg["Subject"] == f"Appraiser: run notified ({run.id}) succeeded"
    assert msg["To"] == "trainer@example.com" and msg["From"] == "appraiser@example.com"
    body = msg.get_body(preferencelist=("plain",)).get_content()
    for want in (
        "Status:",
        "succeeded",
        "Duration:",
        "(step 3/3)",
        "Final loss:",
        "smoothed",
        "Loss verdict:",
        "too early: 3 points of loss",
        "Best probe MAE:",
        "Leaderboard:",
        "best baseline constant-median $",
        "Model:",
        f"--model {run.id}",
    ):
        assert want in body, (want, body)
    [png] = [p for p in msg.iter_attachments() if p.get_content_type() == "image/png"]
    data = png.get_content()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000 and png.get_filename() == "loss.png"
    if os.environ.get("APPRAISER_SAVE_EMAIL"):  # the closing note's sample of a real message
        Path(os.environ["APPRAISER_SAVE_EMAIL"]).write_bytes(inbox.raw[0])

    assert len(server.posts) == 1 and server.posts[0]["title"] == msg["Subject"]
    assert "Best probe MAE" in server.posts[0]["message"] and not server.posts[0].get("attachments")
    events = [e.message for e in store.events(run.id)]
    assert sum(m.startswith("Notification (succeeded) sent to") for m in events) == 2

    # again, from here or any other process: nothing more is sent
    assert notify_run(store, run.id, [mail_url, hook_url]) is False
    assert len(inbox.messages) == 1 and len(server.posts) == 1


def test_a_dead_endpoint_is_retried_and_training_is_unaffected(small_split):
    from appraiser.training import TrainConfig, start

    train, validation = small_split(4, 2)
    dead = f"json://127.0.0.1:{_free_port()}/gone"
    store = RunStore()
    notifiers = []

    def created(run):
        notifiers.append(RunNotifier(store, run.id, [dead], interval=0.2, backoff=0.05).start())

    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=4,
        batch_size=2,
        max_steps=2,
        max_text_tokens=8,
        probe_every=0,
        threads=1,
    )
    result = start(cfg, store=store, on_created=created)
    notifiers[0].stop()
    assert result.steps == 2 and store.get(result.run_id).status == "succeeded"
    [warning] = [e for e in store.events(result.run_id) if e.message.startswith("Notification")]
    assert warning.level == "warning" and "failed after 4 tries" in warning.message
    assert notifiers[0].done and notifiers[0].sent == []


def test_a_resumed_run_sends_each_state_once(small_split, webhook):
    from appraiser.training import TrainConfig, resume, start

    url, server = webhook
    train, validation = small_split(4, 2)
    store = RunStore()
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=4,
        batch_size=2,
        max_steps=4,
        max_text_tokens=8,
        probe_every=0,
        save_every=1,
        threads=1,
        name="resumed",
    )

    def interrupt(step, total, values):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        start(cfg, store=store, listeners=[interrupt])
    run = store.get("resumed")
    assert run.status == "cancelled"
    first = RunNotifier(store, run.id, [url], interval=0.1).start()
    first.stop()
    assert first.sent == ["cancelled"]

    again = RunNotifier(store, run.id, [url], interval=0.1).start()  # e.g. a server restarted
    result = resume(run.id, store=store)
    again.stop()
    assert result.steps == 4 and store.get(run.id).status == "succeeded"
    assert again.sent == ["succeeded"]
    assert notify_run(store, run.id, [url], status="cancelled") is False
    assert notify_run(store, run.id, [url]) is False
    assert [p["title"].rsplit(" ", 1)[1] for p in server.posts] == ["cancelled", "succeeded"]


def test_a_nan_loss_stops_the_run_at_once(small_split):
    train, validation = small_split(4, 2)
    args = _tiny(train, validation, name="blowup", lr=1e30)  # Adam steps of 1e30: fp32 overflows
    args[args.index("--max-steps") + 1] = "20"
    args[args.index("--probe-every") + 1] = "0"
    out = runner.invoke(app, args)
    run = RunStore().get("blowup")
    assert out.exit_code == 2, out.output
    assert "training loss is nan" in out.output and "stopped" in out.output
    assert run.status == "failed" and run.error.startswith("NonFiniteLoss: training loss is nan")
    assert run.step < 20  # stopped at once, not after the remaining steps


# ------------------------------------------------------------------------------------------ stalls, kills


def test_a_silent_run_is_stalled_once_and_notified(webhook):
    url, server = webhook
    store = RunStore()
    run = store.create(name="silent", max_steps=100)
    store.set_status(run.id, "running")  # this process: alive
    t0 = time.time() - 5
    for step in range(1, 6):
        store.log_metrics(run.id, step, {"loss": 2.0}, at=t0 + 0.01 * step)
    store.update(run.id, step=5)
    assert check_stall(store, run.id, factor=10, min_seconds=60) is None  # the floor: not yet
    stall = check_stall(store, run.id, factor=10, min_seconds=60, now=time.time() + 61)
    assert stall is not None and stall.step == 5 and "Stalled at step 5" in stall.message

    seen = []
    notifier = RunNotifier(
        store, run.id, [url], interval=0.05, stall_factor=10, stall_min_seconds=0.2, on_stall=seen.append
    )
    time.sleep(0.3)  # the silence itself
    assert notifier.check() is None and notifier.check() is None
    assert len(seen) == 1 and notifier.sent == ["stalled"]
    warnings = [e for e in store.events(run.id) if e.level == "warning"]
    assert len(warnings) == 1 and warnings[0].message.startswith("Stalled at step 5")
    assert [p["title"] for p in server.posts] == [f"Appraiser: run silent ({run.id}) stalled"]


def test_a_heartbeat_is_not_a_stall():
    """A long stage that logs no step (the head refit reading features) touches the run: not stalled."""
    store = RunStore()
    run = store.create(name="refitting", max_steps=5)
    store.set_status(run.id, "running")
    t0 = time.time() - 5
    for step in range(1, 6):
        store.log_metrics(run.id, step, {"loss": 2.0}, at=t0 + 0.01 * step)
    store.update(run.id, step=5)
    time.sleep(0.3)
    assert check_stall(store, run.id, factor=10, min_seconds=0.2) is not None
    store.touch(run.id)
    assert check_stall(store, run.id, factor=10, min_seconds=0.2) is None


def test_a_killed_process_is_told_apart_and_notified(webhook):
    url, server = webhook
    store = RunStore()
    run = store.create(name="killed-one", max_steps=10)
    store.set_status(run.id, "running")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store.update(run.id, pid=proc.pid)  # the process that ran it is gone
    assert run_state(store, run.id) == "killed"
    assert notify_run(store, run.id, [url]) is True and notify_run(store, run.id, [url]) is False
    assert "killed" in server.posts[0]["title"] and len(server.posts) == 1
