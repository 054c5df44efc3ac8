"""Notifications through real endpoints: an aiosmtpd SMTP server and an http.server webhook receiver,
both started here on localhost, and a dead port. Real training runs (SmolLM2, a few real items).

What must hold: one email per terminal state with the right subject, body and the loss-curve PNG; a
webhook gets the same card; a dead endpoint is retried with backoff and the run still succeeds; a run
that is cancelled, resumed and finished sends each state once; a NaN loss stops a run at once; a webhook's
tokens (path, headers) are never shown or stored; a sender killed mid-send does not lose its card, and
parallel senders still send it once; a stall card that failed is sent once the endpoint is back.
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
            server.requests.append((self.path, dict(self.headers)))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    """(json:// URL, server) of a real HTTP receiver; `server.posts` holds the JSON bodies it accepted and
    `server.fail_first` makes its first N requests answer 500."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    server.posts, server.requests, server.hits, server.fail_first = [], [], 0, 0
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


def test_notify_run_exits_1_when_a_card_did_not_go_out(webhook):
    """A re-probe: `notify run` said "nothing sent … or failed" and exited 0, so a script could not tell a card
    that was already delivered from one that failed; `notify test` exits 1 in that case, and so does it now."""
    url, server = webhook
    store = RunStore()
    run = store.create(name="card", status="succeeded")
    dead = f"json://127.0.0.1:{_free_port()}/x"
    both = runner.invoke(app, ["notify", "run", "card", url, dead])
    assert both.exit_code == 1 and "sent the succeeded card" in both.output, both.output
    assert len(server.posts) == 1
    again = runner.invoke(app, ["notify", "run", run.id, url])  # delivered before: nothing to do, and that is fine
    assert again.exit_code == 0 and "nothing sent" in again.output and len(server.posts) == 1


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


# ------------------------------------------------------------------------------------------ secrets


def _webhook_variants(host: str) -> list[tuple[str, list[str]]]:
    """(URL, its secrets) on every generic webhook scheme: tokens in the path, headers, payload, GET args."""
    out = []
    for sch in ("json", "jsons", "form", "forms", "xml", "xmls"):
        out.append(
            (
                f"{sch}://{host}/hook/TOKENinPATH?+Authorization=Bearer%20TOKENinHEADER&+X-Api-Key=APIKEYvalue"
                "&-sig=GETsecret&:field=PAYLOADsecret",
                ["TOKENinPATH", "TOKENinHEADER", "APIKEYvalue", "GETsecret", "PAYLOADsecret"],
            )
        )
    return out


def test_webhook_tokens_in_the_path_and_headers_are_masked():
    """Apprise's own privacy view masks only the password of json:// / form:// / xml:// URLs."""
    for url, secrets in [
        *_webhook_variants("hooks.example.com:8443"),
        ("json://user:PASSWORDx@hooks.example.com/PATHtoken", ["PASSWORDx", "PATHtoken"]),
        ("ntfy://TOPICname", ["TOPICname"]),  # a token in the host's place
        (
            "nosuchscheme://bob:hunter2@TOKENhost/PATHtoken?anything=QUERYsecret",
            ["hunter2", "TOKENhost", "QUERYsecret"],
        ),
    ]:
        shown = redact(url)
        assert not [s for s in secrets if s in shown], (url, shown)
    shown = redact("json://hooks.example.com:8443/hook/x?+Authorization=Bearer%20t")
    assert shown.startswith("json://hooks.example.com:8443/") and "+Authorization=****" in shown  # still legible


def test_a_webhook_url_s_secrets_never_reach_events_the_store_or_the_log(webhook, caplog):
    url, server = webhook
    base = url.rsplit("/hooks/", 1)[0]
    caplog.set_level("DEBUG")  # Apprise and urllib3 log the URL they post to at DEBUG
    store = RunStore()
    run = store.create(name="secretive")
    store.set_status(run.id, "succeeded")
    dead = f"json://127.0.0.1:{_free_port()}/hook/DEADtoken?+Authorization=Bearer%20DEADheader"
    live, secrets = _webhook_variants(base.removeprefix("json://"))[0]
    assert notify_run(store, run.id, [live, dead], retries=0) is True

    [(path, headers)] = server.requests  # the real request still carries them
    assert path.startswith("/hook/TOKENinPATH") and headers["Authorization"] == "Bearer TOKENinHEADER"
    secrets += ["DEADtoken", "DEADheader"]
    events = " ".join(e.message for e in store.events(run.id))
    assert "sent to json://127.0.0.1:" in events and "failed after 1 tries" in events
    stored = b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))
    for s in secrets:
        assert s not in events and s.encode() not in stored, s
        assert s not in caplog.text, s


# ------------------------------------------------------------------------------------------ claims


def test_a_sender_killed_mid_send_does_not_lose_the_card(webhook):
    """kill -9 between claiming and delivering left `notified:<state>:…` claimed for ever: nothing sent."""
    _, server = webhook
    store = RunStore()
    run = store.create(name="killme")
    store.set_status(run.id, "succeeded")
    silent = socket.socket()  # accepts connections, never answers: the sender hangs mid-send
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    url = f"json://127.0.0.1:{port}/hook"
    code = (
        "import sys; from appraiser.runs.store import RunStore; from appraiser.notify import notify_run; "
        "notify_run(RunStore(sys.argv[1]), sys.argv[2], [sys.argv[3]])"
    )
    sender = subprocess.Popen([sys.executable, "-c", code, str(store.path), run.id, url])
    try:
        deadline = time.time() + 60
        while not [k for k in _state_keys(store, run.id) if k.startswith("notified:")]:
            assert time.time() < deadline and sender.poll() is None, "the sender never claimed"
            time.sleep(0.05)
        time.sleep(0.3)  # mid-send
    finally:
        sender.kill()
        sender.wait()
        silent.close()
    assert not server.posts

    # the same URL, now answered: the card of the dead sender goes out once
    receiver = ThreadingHTTPServer(("127.0.0.1", port), _Hooks)
    receiver.posts, receiver.requests, receiver.hits, receiver.fail_first = [], [], 0, 0
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        assert notify_run(store, run.id, [url], retries=0) is True
        assert notify_run(store, run.id, [url], retries=0) is False
        assert [p["title"] for p in receiver.posts] == [f"Appraiser: run killme ({run.id}) succeeded"]
    finally:
        receiver.shutdown()
        receiver.server_close()


def _state_keys(store: RunStore, run_id: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(store.path) as db:
        return [k for (k,) in db.execute("SELECT key FROM state WHERE run_id = ?", (run_id,))]


def test_a_live_sender_s_claim_is_respected_and_only_a_dead_one_s_is_taken_over(webhook):
    import socket as sock

    from appraiser.notify import claim_is_stale, url_key

    url, server = webhook
    store = RunStore()
    run = store.create(name="claims")
    store.set_status(run.id, "failed")
    key = url_key("failed", url)
    now = time.time()
    me = {"state": "failed", "pid": os.getpid(), "host": sock.gethostname(), "since": now, "nonce": "a"}
    elsewhere = {**me, "host": "another-host-" + me["host"]}
    assert not claim_is_stale(me) and not claim_is_stale(elsewhere)  # alive, or cannot be told yet: wait
    assert claim_is_stale({**elsewhere, "since": now - 2 * 3600})  # ... but not for ever
    assert claim_is_stale({"state": "failed"})  # written before claims named their owner
    assert not claim_is_stale({"state": "failed", "ok": True, "url": "json://…"})  # delivered: never again

    store.set_state(run.id, key, me)  # this (live) process is sending it: another call stands back
    assert notify_run(store, run.id, [url], retries=0) is False and not server.posts

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.set_state(run.id, key, {**me, "pid": gone.pid})  # its sender was killed
    assert notify_run(store, run.id, [url], retries=0) is True
    assert notify_run(store, run.id, [url], retries=0) is False and len(server.posts) == 1


@pytest.mark.parametrize("abandoned", [False, True])
def test_parallel_senders_deliver_once(webhook, abandoned):
    """4 processes at once, on a fresh card and on one whose first sender died: one message."""
    from appraiser.notify import url_key

    url, server = webhook
    store = RunStore()
    run = store.create(name="raced")
    store.set_status(run.id, "succeeded")
    if abandoned:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        owner = {"state": "succeeded", "pid": gone.pid, "host": socket.gethostname(), "since": time.time()}
        store.set_state(run.id, url_key("succeeded", url), owner)
    code = (
        "import sys, time; from appraiser.runs.store import RunStore; from appraiser.notify import notify_run; "
        "time.sleep(float(sys.argv[4]) - time.time()); "
        "print(notify_run(RunStore(sys.argv[1]), sys.argv[2], [sys.argv[3]], retries=0))"
    )
    start = str(time.time() + 2.0)  # all four claim at the same moment
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(store.path), run.id, url, start], stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    answers = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert sorted(answers) == ["False", "False", "False", "True"], answers
    assert len(server.posts) == 1
    assert sum(e.message.startswith("Notification (succeeded) sent") for e in store.events(run.id)) == 1


# ------------------------------------------------------------------------------------------ stall retries


def test_a_failed_stall_card_is_sent_once_the_endpoint_is_back(webhook):
    """record_stall answers True once per step, so a stall card that failed was never tried again."""
    url, server = webhook
    server.fail_first = 1  # the first try fails (retries=0: that is the whole send)
    store = RunStore()
    run = store.create(name="stuck", max_steps=100)
    store.set_status(run.id, "running")
    t0 = time.time() - 5
    for step in range(1, 6):
        store.log_metrics(run.id, step, {"loss": 2.0}, at=t0 + 0.01 * step)
    store.update(run.id, step=5)
    seen = []
    notifier = RunNotifier(
        store,
        run.id,
        [url],
        interval=0.05,
        retries=0,
        backoff=0.5,  # first retry after 0.5 × 2 s = 1 s, then 2 s, ...
        stall_factor=10,
        stall_min_seconds=0.2,
        on_stall=seen.append,
    )
    time.sleep(0.3)
    assert notifier.check() is None and server.hits == 1 and not server.posts  # failed
    assert notifier.check() is None and server.hits == 1  # backoff: not at every poll
    time.sleep(1.1)
    assert notifier.check() is None and server.hits == 2 and len(server.posts) == 1  # retried: delivered
    time.sleep(1.1)
    assert notifier.check() is None and notifier.check() is None and server.hits == 2  # never twice
    assert notifier.sent == ["stalled"] and len(seen) == 1
    assert [p["title"] for p in server.posts] == [f"Appraiser: run stuck ({run.id}) stalled"]
    warnings = [e.message for e in store.events(run.id) if e.level == "warning"]
    assert len(warnings) == 2 and warnings[0].startswith("Stalled at step 5") and "failed" in warnings[1]
