"""Tell people when a run ends or stalls: exactly once per (run, state, URL), from any process.

`notify_run` claims `notified:<state>:<url hash>` in the run store before sending (an atomic
insert-if-absent), so the training process, a watcher, the server and a resumed run can all call it and
each message still goes out once. A send that fails for good gives its claim back (a later call may try
again) and leaves a warning event; it never raises. `RunNotifier` is the background thread that watches
one run and calls it; it also logs stalls (`runs.stalls`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

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
    repeatedly and from several processes at once.
    """
    from appraiser.notify.card import build_card, loss_png

    urls = list(dict.fromkeys(urls))
    state = status or run_state(store, run_id)
    if not urls or state not in NOTIFY_STATES:
        return False
    run = store.get(run_id)
    mine = [u for u in urls if store.claim(run.id, url_key(state, u), {"state": state})]
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
            store.unclaim(run.id, key)
            store.add_event(
                run.id,
                f"Notification ({state}) to {d.url} failed after {d.attempts} tries: {d.error}",
                level="warning",
            )
    return sent


class RunNotifier:
    """A daemon thread that watches one run (local or hosted) and sends its card on a terminal state or a
    stall; with no URLs it still logs stalls. `stop()` makes one last check (so a run that just ended is
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
        if stall is not None and record_stall(self.store, self.run_id, stall):
            if self.on_stall is not None:
                self.on_stall(stall.message)
            if notify_run(
                self.store, self.run_id, self.urls, status="stalled", retries=self.retries, backoff=self.backoff
            ):
                self.sent.append("stalled")
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
