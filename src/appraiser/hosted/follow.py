"""Follow a hosted job: mirror its events and metrics into the run store (and trackers) as they appear.

The provider lists events newest first, a page at a time (`after` = the oldest id of the previous page).
Each poll walks pages from the newest down to the page holding the cursor (the newest event id seen by the
last complete poll, kept in the run store's `state`), records the events not yet mirrored oldest first,
then moves the cursor. Each event is claimed by id with its line and metrics in one transaction
(`RunStore.add_event_once`): two followers of one job
(`hosted start` and a `runs watch` elsewhere) or a rerun after Ctrl-C never record an event twice. 429,
5xx and lost connections that outlast the SDK's own retries back off (2 s doubling to 60 s) and poll
again, up to `max_tries` failures of one call in a row (then the follower stops and says so); other errors
stop the follower. A 404 for the job itself fails the run with that message (the provider has no such job,
or not for this key); a later follower that reaches the job again takes the run back. A page that adds
no new event (a server that always answers `has_more`, or ignores `after`) ends the walk with a warning.
Events with fields we cannot read (a time that is not a number, no message) are recorded as far as they
can be: without their time, with a placeholder message.

At the end: the result file (CSV) fills in the steps the events did not carry, the fine-tuned model is
recorded on the run, and the run takes the job's final status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from appraiser.api import ApiClient, ApiError
from appraiser.hosted.events import LEVEL, event_time, metric_values, printable, result_rows, run_status
from appraiser.hosted.jobs import MAX_PAGES, MISSING, call, job_missing, retryable

CURSOR = "hosted:event_cursor"
TRACKED = "hosted:tracked_step"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_ABSENT = object()


def _event_key(event_id: str) -> str:
    return f"hosted:event:{event_id}"


class Follower:
    """Mirrors one hosted run's job into the store until the job ends or `stop` is set."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        client: ApiClient,
        *,
        interval: float = 5.0,
        page_size: int = 100,
        trackers: Sequence[Any] = (),
        say: Callable[[str], None] | None = None,
        max_backoff: float = 60.0,
        max_tries: int = 10,
    ):
        self.store, self.run_id, self.client = store, run_id, client
        self.interval, self.page_size, self.trackers = interval, page_size, list(trackers)
        self.say = say or (lambda _msg: None)
        self.max_backoff, self.max_tries = max_backoff, max_tries
        self.warned: set[str] = set()
        self.stop = threading.Event()
        self.job: Any = None
        self.error: BaseException | None = None
        run = store.get(run_id)
        if not run.external_id:
            from appraiser.data.io import DataError

            raise DataError(f"run {run_id} has no provider job to follow")
        self.job_id = run.external_id

    # ---- one API call, backing off on what is worth waiting for

    def _api(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """The call, backed off and tried again while it fails in a passing way, at most `max_tries` times in
        a row: a provider that answers 5xx for hours is reported, not polled forever."""
        wait, tries = min(2.0, self.max_backoff), 0
        while True:
            try:
                return call(fn, *args, **kwargs)
            except ApiError as e:
                tries += 1
                if not retryable(e) or self.stop.is_set():
                    raise
                if tries >= self.max_tries:
                    raise self._gave_up(tries, e) from None
                self.say(f"{e}; retrying in {wait:.0f} s")
                if self.stop.wait(wait):
                    raise
                wait = min(wait * 2, self.max_backoff)

    def _gave_up(self, tries: int, e: ApiError) -> ApiError:
        return ApiError(
            f"gave up after {tries} failed tries in a row ({e}); the job itself may be fine: "
            f"rerun `appraiser hosted watch {self.run_id}` later to continue",
            e.status,
            e.code,
        )

    def _warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            self.say(message)

    # ---- events

    def new_events(self) -> tuple[list[Any], str | None]:
        """(events not yet mirrored, oldest first; the newest event id), walking newest-first pages down to
        the page that holds the cursor. That whole page is read, so an event a server lists just below the
        cursor (same second, computed order) is not missed; the per-event claims keep it from doubling."""
        cursor = self.store.get_state(self.run_id, CURSOR)
        found: list[Any] = []
        seen: set[str] = set()
        newest: str | None = None
        after: str | None = None
        for _ in range(MAX_PAGES):
            kwargs: dict[str, Any] = {"limit": self.page_size}
            if after is not None:
                kwargs["after"] = after
            page = self._api(self.client.sdk.fine_tuning.jobs.list_events, self.job_id, **kwargs)
            data = list(getattr(page, "data", None) or [])  # `"data": null` from a broken server: no events
            if newest is None and data:
                newest = data[0].id
            fresh = [ev for ev in data if ev.id not in seen]
            seen.update(ev.id for ev in fresh)
            found.extend(ev for ev in fresh if not self._mirrored(ev.id))
            if not data or not page.has_more or any(ev.id == cursor for ev in data):
                return found[::-1], newest
            if not fresh or data[-1].id == after:
                self._warn_once(f"the event list of job {self.job_id} says has_more but adds nothing new")
                return found[::-1], newest
            after = data[-1].id
        self._warn_once(f"the event list of job {self.job_id} goes on past {MAX_PAGES} pages; read in part")
        return found[::-1], newest

    def _mirrored(self, event_id: str) -> bool:
        return self.store.get_state(self.run_id, _event_key(event_id), _ABSENT) is not _ABSENT

    def record(self, ev: Any) -> bool:
        """Mirror one event (message, metrics, progress, trackers) unless some follower already did."""
        store, run_id = self.store, self.run_id
        step, total, values = metric_values(ev.data) if ev.type in (None, "metrics") else (None, None, {})
        level = LEVEL.get(ev.level, "info") if isinstance(ev.level, str) else "info"
        message = printable(ev.message) or f"({ev.type or 'an'} event without a message)"
        key = _event_key(ev.id)
        at = event_time(ev.created_at)
        if not store.add_event_once(run_id, key, message, level=level, step=step, at=at, metrics=values):
            return False
        if step is not None and values:
            self._progress(step, total, values)
            self._track(step, values)
        return True

    def _progress(self, step: int, total: int | None, values: dict[str, float]) -> None:
        run = self.store.get(self.run_id)
        fields: dict[str, Any] = {"step": max(run.step, step)}
        if total:
            fields["max_steps"] = total
        self.store.update(self.run_id, **fields)
        # The best validation loss so far: the full validation pass where the provider runs one, else
        # the per-step (sampled) validation loss.
        if "full_valid_loss" in values:
            name = "full_valid_loss"
        elif "valid_loss" in values and run.best_metric in (None, "valid_loss"):
            name = "valid_loss"
        else:
            return
        if run.best_metric != name or run.best_value is None or values[name] < run.best_value:
            self.store.set_best(self.run_id, name, values[name], step)

    def _track(self, step: int, values: dict[str, float]) -> None:
        if not self.trackers:
            return
        done = self.store.get_state(self.run_id, TRACKED, 0)
        if step <= done:
            return
        for t in self.trackers:
            t.log(step, values)
        self.store.set_state(self.run_id, TRACKED, step)

    def poll(self) -> int:
        """Record the events that appeared since the last poll; how many were new. The cursor moves only
        once all of them are recorded (a stop half way re-reads them next time; the claims skip the done)."""
        events, newest = self.new_events()
        n = 0
        for ev in events:
            if self.stop.is_set():
                return n
            n += self.record(ev)
        if newest is not None:
            self.store.set_state(self.run_id, CURSOR, newest)
        return n

    # ---- the job

    def sync_job(self) -> Any:
        """Fetch the job and carry its status (not yet a final one) onto the run. A 404 fails the run (the
        provider has no such job) and stops the follower; a run failed that way that reaches its job again
        (the right key this time) takes the job's status back."""
        try:
            self.job = self._api(self.client.sdk.fine_tuning.jobs.retrieve, self.job_id)
        except ApiError as e:
            if e.status == 404:
                raise job_missing(self.store, self.store.get(self.run_id), e) from None
            raise
        status = run_status(self.job.status)
        run = self.store.get(self.run_id)
        if self.store.get_state(self.run_id, MISSING):
            self._found_again(status)
        elif status not in TERMINAL and status != run.status and not run.finished:
            self.store.update(self.run_id, status=status)
        return self.job

    def _found_again(self, status: str) -> None:
        """A run failed by a 404 whose job answers now: an unfinished job takes the run back at once; a
        finished one does in `finish` (the 404 never claimed the run's end)."""
        self.store.unclaim(self.run_id, MISSING)
        if status not in TERMINAL:
            self.store.update(self.run_id, status=status, error=None)
            self.store.add_event(self.run_id, f"Job {self.job_id} answers again ({self.job.status})")

    def finish(self, job: Any) -> None:
        """The end of a job: the result CSV into metrics, the fine-tuned model and final status onto the run."""
        store, run_id = self.store, self.run_id
        status = run_status(job.status)
        run = store.get(run_id)
        cfg = dict(run.config)
        if job.fine_tuned_model:
            cfg["fine_tuned_model"] = job.fine_tuned_model
        if job.trained_tokens is not None:
            cfg["trained_tokens"] = job.trained_tokens
        cfg["result_files"] = list(job.result_files or [])
        store.update(run_id, config=cfg)
        for file_id in job.result_files or []:
            self._result_file(file_id)
        if store.claim(run_id, "hosted:finished"):
            error = job.error.message if job.error is not None and job.error.message else None
            done = f"Job {job.status}" + (f": {job.fine_tuned_model}" if job.fine_tuned_model else "")
            store.set_status(run_id, status, message=done, error=error)

    def _result_file(self, file_id: str) -> None:
        content = self._api(self.client.sdk.files.content, file_id).read()
        rows = result_rows(content)
        run = self.store.get(self.run_id)
        if run.folder is not None and rows:
            from appraiser.atomic import replacing

            with replacing(run.folder / f"{file_id}.csv") as tmp:
                tmp.write_bytes(content)
        for step, values in rows:
            if values:
                self.store.log_metrics(self.run_id, step, values)
                self._progress(step, run.max_steps, values)
                self._track(step, values)

    def run(self) -> Any:
        """Follow until the job ends (returns the final job) or `stop` is set (returns None)."""
        while not self.stop.is_set():
            job = self.sync_job()
            self.poll()
            if run_status(job.status) in TERMINAL and not self.stop.is_set():
                self.poll()  # the events written as the job ended
                self.finish(job)
                return job
            self.stop.wait(self.interval)
        return None

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # a tracker that fails to flush must not hide the job's outcome
                self.say(f"tracker {type(t).__name__} did not close: {e}")


class Background:
    """A follower in a thread, for a live view in the foreground: `with Background(f): ...`.

    On leaving (normally or by Ctrl-C) the follower is asked to stop and joined, so it never stops half way
    through recording an event; the thread's own error is re-raised in the caller.
    """

    def __init__(self, follower: Follower):
        self.follower = follower
        self.thread = threading.Thread(target=self._main, name=f"follow-{follower.run_id}", daemon=True)

    def _main(self) -> None:
        try:
            self.follower.run()
        except BaseException as e:  # handed to the foreground, which reports it
            self.follower.error = e

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def __exit__(self, *exc: Any) -> None:
        self.follower.stop.set()
        self.thread.join(timeout=30)
        self.follower.close()
        if exc[0] is None and self.follower.error is not None:
            raise self.follower.error


def wait_done(bg: Background, tick: Callable[[], None], interval: float = 0.5) -> None:
    """Call `tick` every `interval` seconds until the follower's thread has ended."""
    while not bg.done:
        tick()
        time.sleep(interval)
    tick()
