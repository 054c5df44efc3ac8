"""Tell people when a run ends or stalls: exactly once per (run, state, URL), from any process.

`notify_run` claims `notified:<state>:<url hash>` in the run store before sending (an atomic
insert-if-absent), so the training process, a watcher, the server and a resumed run can all call it and
each message still goes out once. The claim names its owner (process id, host, process start, time): a
claim whose owner died before it delivered (`kill -9`, a training process that exited while its notifier
thread still waited on a slow server) is stale, and the next call takes it over (`_take_over`), so a
killed sender does not lose the message for ever. A delivered one is marked `"ok": true` and never sent
again. A send that fails for good gives its claim back (a later call may try again) and leaves a warning
event; it never raises. `RunNotifier` is the background thread that watches one run and calls it; it also
logs stalls (`runs.stalls`) and retries a stall card that failed, with backoff.

Only a digest of each URL is stored as the key, and only the masked URL (`redact`) in events and values:
a notification URL often holds a password or a token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from appraiser.notify.send import Delivery, is_email, send
from appraiser.runs.store import FINISHED, RunStore

log = logging.getLogger(__name__)

#: The states a card is sent for (`killed`: status still `running`, but its process is gone).
NOTIFY_STATES = ("succeeded", "failed", "cancelled", "stalled", "killed")


def url_key(state: str, url: str) -> str:
    """The state-table key that marks one state of a run as sent to one URL (the URL itself is not stored)."""
    return f"notified:{state}:{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def run_state(store: RunStore, run_id: str) -> str | None:
    """The notifiable state a run is in now (None while it runs normally or waits)."""
    run = store.get(run_id)
    if run.status in FINISHED:
        return run.status
    if run.display_status == "killed":
        return "killed"
    return None


#: An in-flight claim older than this is stale even when its owner cannot be checked (it runs on another
#: host, or its process id was reused): far longer than any send takes (4 tries of ~70 s each to an SMTP
#: server that never answers, for a handful of URLs, is minutes), short enough that a lost card still goes
#: out the same day.
CLAIM_TIMEOUT_S = 3600.0


def _process_start(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot, from /proc), None where that cannot be
    told: with the pid, it tells our process from a later one that got the same id."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner(state: str) -> dict[str, Any]:
    """What a claim records about the sender, so that another process can tell when it died mid-send."""
    pid = os.getpid()
    return {
        "state": state,
        "pid": pid,
        "host": socket.gethostname(),
        "started": _process_start(pid),
        "since": time.time(),
        "nonce": secrets.token_hex(8),  # two claims are never equal, so a takeover names one of them
    }


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def claim_is_stale(value: Any, *, now: float | None = None, timeout: float = CLAIM_TIMEOUT_S) -> bool:
    """Whether a `notified:` claim is an abandoned send: not delivered (`"ok"` absent) and its owner is gone.

    Gone: a process on this host that no longer exists (or whose id now belongs to a later process), else
    (another host, an owner that cannot be checked) a claim older than `timeout`. A claim written before
    claims named their owner (`{"state": ...}` alone) is stale: its sender is long gone.
    """
    if not isinstance(value, dict) or value.get("ok"):
        return False
    pid, since = value.get("pid"), value.get("since")
    if not isinstance(pid, int) or not isinstance(since, (int, float)):
        return True
    if (time.time() if now is None else now) - since > timeout:
        return True
    if value.get("host") != socket.gethostname():
        return False
    if _pid_gone(pid):
        return True
    started = value.get("started")
    return started is not None and _process_start(pid) not in (None, started)


def _take_over(store: RunStore, run_id: str, key: str, state: str) -> dict[str, Any] | None:
    """Claim `key` for this process: a new claim, or one whose owner is gone (`claim_is_stale`); the claim
    written, or None when someone else holds it (or has delivered).

    The takeover itself must be exactly-once too, and the store offers only insert-if-absent: so the taker
    first claims `<key>:retake:<digest of the stale value>`. Of several processes that find the same stale
    claim, one wins that key and rewrites the claim; the others see a fresh claim (or the retake key taken)
    and stand back. Retake keys stay behind (one small row per takeover): deleting one would let a slow
    process that read the stale value take it over again.
    """
    mine = _owner(state)
    if store.claim(run_id, key, mine):
        return mine
    held = store.get_state(run_id, key)
    if held is None:  # given back between our claim and our read: try once more
        return mine if store.claim(run_id, key, mine) else None
    if not claim_is_stale(held):
        return None
    digest = hashlib.sha256(json.dumps(held, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if not store.claim(run_id, f"{key}:retake:{digest}", {"state": state, "since": mine["since"]}):
        return None
    store.set_state(run_id, key, mine)
    log.info("run %s: took over a %s notification whose sender was gone", run_id, state)
    return mine


def _still_mine(store: RunStore, run_id: str, key: str, claim: dict[str, Any]) -> bool:
    held = store.get_state(run_id, key)
    return isinstance(held, dict) and held.get("nonce") == claim["nonce"]


def pending(store: RunStore, run_id: str, urls: Sequence[str], state: str) -> list[str]:
    """The URLs that have not been delivered `state`'s card yet (never tried, failed, or in flight)."""
    out = []
    for url in dict.fromkeys(urls):
        held = store.get_state(run_id, url_key(state, url))
        if not (isinstance(held, dict) and held.get("ok")):
            out.append(url)
    return out


def notify_run(
    store: RunStore,
    run_id: str,
    urls: Sequence[str],
    *,
    status: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
) -> bool:
    """Send the run's result card for its current state (or `status`) to each URL not yet sent it.

    True when at least one URL got it now; False when there was nothing to send (not in a notifiable
    state, no URLs, or every URL already had it). Email gets the loss-curve PNG attached. Safe to call
    repeatedly and from several processes at once. A URL another process is sending to right now is
    skipped; one whose sender died before it delivered is sent again (`claim_is_stale`).
    """
    from appraiser.notify.card import build_card, loss_png

    urls = list(dict.fromkeys(urls))
    state = status or run_state(store, run_id)
    if not urls or state not in NOTIFY_STATES:
        return False
    run = store.get(run_id)
    claims = {u: c for u in urls if (c := _take_over(store, run.id, url_key(state, u), state)) is not None}
    mine = list(claims)
    if not mine:
        return False
    try:
        card = build_card(store, run.id, state)
        body = card.text()
        png = loss_png(store, run.id) if any(is_email(u) for u in mine) else None
    except Exception as e:  # noqa: BLE001 - a card that cannot be built still says the state
        log.warning("run %s: building the result card failed: %s", run.id, e)
        body, png = f"Run {run.id}: {state}\n(the result card could not be built: {type(e).__name__}: {e})\n", None
        card = None
    title = card.title if card is not None else f"Appraiser: run {run.id} {state}"
    emails = [u for u in mine if is_email(u)]
    others = [u for u in mine if not is_email(u)]
    deliveries: list[tuple[str, Delivery]] = []
    if emails:
        deliveries += zip(
            emails, send(emails, title, body, [png] if png else (), retries=retries, backoff=backoff), strict=True
        )
    if others:
        deliveries += zip(others, send(others, title, body, retries=retries, backoff=backoff), strict=True)
    sent = False
    for url, d in deliveries:
        key = url_key(state, url)
        if d.ok:
            sent = True
            store.set_state(run.id, key, {"state": state, "url": d.url, "attempts": d.attempts, "ok": True})
            store.add_event(run.id, f"Notification ({state}) sent to {d.url}")
        else:
            if _still_mine(store, run.id, key, claims[url]):  # not a claim another process took over since
                store.unclaim(run.id, key)
            store.add_event(
                run.id,
                f"Notification ({state}) to {d.url} failed after {d.attempts} tries: {d.error}",
                level="warning",
            )
    return sent


#: The longest wait between two tries of a stall card that keeps failing (seconds).
STALL_RETRY_MAX_S = 600.0


class RunNotifier:
    """A daemon thread that watches one run (local or hosted) and sends its card on a terminal state or a
    stall (a stall card that failed is tried again while the run stays stalled, with backoff); with no URLs
    it still logs stalls. `stop()` makes one last check (so a run that just ended is
    notified) and waits for the sending to finish, at most `timeout` seconds.

    The thread ends at the first terminal state it sees the run reach. Started on a run that is already
    finished (a resume about to begin, a server that restarted), it sends what was not sent yet for that
    state and keeps watching: the resumed run's own end is the one that ends it (or `stop()`).

        notifier = RunNotifier(store, run.id, ["mailto://..."]).start()
        ...train...
        notifier.stop()
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        urls: Sequence[str] = (),
        *,
        interval: float = 2.0,
        stall_factor: float | None = None,
        stall_min_seconds: float | None = None,
        on_stall: Callable[[str], None] | None = None,
        retries: int = 3,
        backoff: float = 1.0,
    ):
        from appraiser.runs import stalls

        self.store = store
        self.run_id = run_id
        self.urls = list(urls)
        self.interval = interval
        self.stall_factor = stalls.FACTOR if stall_factor is None else stall_factor
        self.stall_min_seconds = stalls.MIN_SECONDS if stall_min_seconds is None else stall_min_seconds
        self.on_stall = on_stall
        self.retries = retries
        self.backoff = backoff
        self.sent: list[str] = []  # the states this notifier sent
        # A stall card that failed is sent again on a later check: first after send()'s next backoff step,
        # then twice as long each time, at most STALL_RETRY_MAX_S (a dead endpoint is not hammered every poll).
        self._stall_first_delay = max(interval, backoff * 2 ** (retries + 1))
        self._stall_delay = self._stall_first_delay
        self._stall_retry_at = 0.0  # time.monotonic() from which the stall card may be tried again
        self._moved = True  # False while the run is still in the (finished or killed) state it had at start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"notify-{run_id}", daemon=True)

    def start(self) -> RunNotifier:
        self._moved = run_state(self.store, self.run_id) is None
        self._thread.start()
        return self

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():  # e.g. an SMTP server that never answers: the process may exit now
                log.warning(
                    "run %s: notifications still sending after %.0fs; if this process ends first, "
                    "`appraiser notify run %s URL...` sends what was not delivered",
                    self.run_id,
                    timeout,
                    self.run_id,
                )

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def check(self) -> str | None:
        """One look at the run: notify a terminal state (returns it) or log/notify a stall."""
        from appraiser.runs.stalls import check_stall, record_stall

        state = run_state(self.store, self.run_id)
        if state is None:
            self._moved = True
        elif state == "killed" and not self._moved:
            return None  # killed before we started (e.g. the run about to be resumed): not news
        else:
            if notify_run(self.store, self.run_id, self.urls, status=state, retries=self.retries, backoff=self.backoff):
                self.sent.append(state)
            return state if self._moved or self._stop.is_set() else None
        stall = check_stall(self.store, self.run_id, factor=self.stall_factor, min_seconds=self.stall_min_seconds)
        if stall is None:
            return None
        if record_stall(self.store, self.run_id, stall):  # a new stall: told once, sent at once
            if self.on_stall is not None:
                self.on_stall(stall.message)
            self._stall_retry_at, self._stall_delay = 0.0, self._stall_first_delay
        # Still stalled: a card that has not reached every URL (it failed, or a sender died) is tried again,
        # with backoff. record_stall answers True once per step, so it cannot be what decides this.
        now = time.monotonic()
        if not self.urls or now < self._stall_retry_at or not pending(self.store, self.run_id, self.urls, "stalled"):
            return None
        if notify_run(self.store, self.run_id, self.urls, status="stalled", retries=self.retries, backoff=self.backoff):
            self.sent.append("stalled")
        if pending(self.store, self.run_id, self.urls, "stalled"):
            self._stall_retry_at = time.monotonic() + self._stall_delay
            self._stall_delay = min(self._stall_delay * 2, STALL_RETRY_MAX_S)
        return None

    def _loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                if self.check() is not None:
                    return
            except Exception as e:  # noqa: BLE001 - a notifier problem never reaches training
                log.warning("run %s: notifier check failed: %s", self.run_id, e)
            if stopping:
                return
