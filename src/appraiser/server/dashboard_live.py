"""The run page's live stream: new loss points, probe MAEs, log lines and status over server-sent events.

Each SSE message carries an id `<metrics rowid>.<event id>`: the position in the store after it. A browser's
EventSource sends the last one back as `Last-Event-ID` when it reconnects, and the stream resumes from
there, so a dropped connection loses nothing (a point sent twice is harmless: the page keys points by step).
SQLite gives every new metrics row a larger rowid (`INSERT OR REPLACE` of a re-logged step too); the one
exception, rows deleted by a resume (`discard_after`), is seen as the step going back, and the stream
then tells the page to reload its curves (`reset`).

The store is polled every `POLL_S` seconds: a training step is hundreds of milliseconds at least, and a
poll is one indexed query, so a point reaches the page well within a second without any hook in training.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from typing import Any

import anyio

from appraiser.runs.store import RunNotFound, RunStore, metric_value
from appraiser.server.dashboard_data import CURVES, Smoother, _connect, checkpoints_of, run_summary

POLL_S = 0.1
#: Status, verdict and checkpoints are re-read at most this often (they change slowly and cost more).
SUMMARY_S = 2.0
#: Rows read per poll, so a reconnect after a long gap streams in pieces rather than one huge message.
BATCH = 2000


def parse_cursor(text: str | None) -> tuple[int, int] | None:
    """(metrics rowid, event id) from `"123.45"`; None for anything else (the stream then starts over),
    numbers past SQLite's 64-bit integers included."""
    if not text:
        return None
    m, _, e = text.strip().partition(".")
    if not all(x.isascii() and x.isdigit() and len(x) <= 18 for x in (m, e)):  # "²" is a digit too; < 2**63
        return None
    return int(m), int(e)


class LiveRun:
    """One connection's view of a run: where it is in the store, and the trend line's state."""

    def __init__(self, store: RunStore, run_id: str, cursor: tuple[int, int]):
        self.store, self.run_id = store, run_id
        self.metric_id, self.event_id = cursor
        self.smoother = Smoother()
        self._prime()

    def _prime(self) -> None:
        """Continue the EMA from every loss point up to the cursor (the page already has those)."""
        self.smoother = Smoother()
        with closing(_connect(self.store.path)) as db:
            rows = db.execute(
                "SELECT step, value FROM metrics WHERE run_id = ? AND name = 'loss' AND rowid <= ? ORDER BY step",
                (self.run_id, self.metric_id),
            ).fetchall()
        for r in rows:
            self.smoother.add(r["step"], metric_value(r["value"]))

    def poll(self) -> list[dict[str, Any]]:
        """SSE messages for what the store gained since the last poll (possibly none)."""
        out: list[dict[str, Any]] = []
        with closing(_connect(self.store.path)) as db:
            top = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics").fetchone()[0]
            rows = db.execute(
                "SELECT rowid AS rid, step, name, value FROM metrics WHERE rowid > ? AND run_id = ? "
                "ORDER BY rowid LIMIT ?",
                (self.metric_id, self.run_id, BATCH),
            ).fetchall()
            events = db.execute(
                "SELECT id, time, level, message, step FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                (self.run_id, self.event_id, BATCH),
            ).fetchall()
        if top < self.metric_id or self._went_back(rows):
            self.store.get(self.run_id)  # a run deleted with its metrics is gone (RunNotFound), not resumed
            return self._reset()
        points = self._points(rows)
        if rows:
            self.metric_id = rows[-1]["rid"]
        if events:
            self.event_id = events[-1]["id"]
        if points:
            out.append(self._message("metrics", {"points": points}))
        if events:
            out.append(self._message("log", {"events": [dict(e) for e in events]}))
        return out

    def _went_back(self, rows: list[sqlite3.Row]) -> bool:
        last = self.smoother.last_step
        return last is not None and any(r["name"] == "loss" and r["step"] <= last for r in rows)

    def _reset(self) -> list[dict[str, Any]]:
        with closing(_connect(self.store.path)) as db:
            self.metric_id = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics").fetchone()[0]
        self._prime()
        return [self._message("reset", {"reason": "the run redid steps (resumed); reload the curves"})]

    def _points(self, rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
        """Loss rows gain their EMA and band; probe MAE rows pass as they are; other metrics are not drawn."""
        points = []
        for r in rows:
            if r["name"] not in CURVES:
                continue
            v = metric_value(r["value"])
            v = v if v is not None and math.isfinite(v) else None
            p: dict[str, Any] = {"name": r["name"], "step": r["step"], "value": v}
            if r["name"] == "loss":
                p["ema"], p["low"], p["high"] = self.smoother.add(r["step"], v)
            points.append(p)
        return points

    def summary(self) -> dict[str, Any]:
        run = self.store.get(self.run_id)
        s = run_summary(self.store, run)
        s["latest"] = {k: v for k, v in self.store.latest(self.run_id).items() if v is None or math.isfinite(v)}
        s["checkpoints"] = checkpoints_of(run)
        s["finished"] = run.finished or run.display_status == "killed"
        return s

    def cursor(self) -> str:
        return f"{self.metric_id}.{self.event_id}"

    def _message(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"event": event, "id": self.cursor(), "data": json.dumps(data, allow_nan=False)}


async def stream(live: LiveRun, is_disconnected: Any) -> AsyncIterator[dict[str, Any]]:
    """The messages of one connection until the client leaves or the run has ended and everything is sent.

    Points are what must arrive fast, so the summary (status, verdict, checkpoints: tens of milliseconds on a
    long run) is computed in a worker thread beside the polling, never in its way.
    """
    loop = asyncio.get_running_loop()
    yield {"event": "hello", "id": live.cursor(), "retry": 1000, "data": json.dumps({"cursor": live.cursor()})}
    pending: asyncio.Future | None = loop.run_in_executor(None, live.summary)
    next_summary = loop.time() + SUMMARY_S
    last_summary: str | None = None
    quiet_after_end = 0  # summaries that saw the run ended and nothing new: two, so its last lines are in
    sent_since_summary = False
    while not await is_disconnected():
        try:
            messages = await anyio.to_thread.run_sync(live.poll)
        except RunNotFound:  # deleted while watched: say so and close, as for a run that ended
            yield {"event": "end", "id": live.cursor(), "data": json.dumps({"deleted": True})}
            return
        for m in messages:
            yield m
        sent_since_summary = sent_since_summary or bool(messages)
        if pending is not None and pending.done():
            try:
                summary = pending.result()
            except RunNotFound:  # deleted while watched: say so and close, as for a run that ended
                yield {"event": "end", "id": live.cursor(), "data": json.dumps({"deleted": True})}
                return
            pending = None
            text = json.dumps(summary, allow_nan=False, default=str)
            if text != last_summary:
                last_summary = text
                yield {"event": "run", "id": live.cursor(), "data": text}
            quiet_after_end = quiet_after_end + 1 if summary["finished"] and not sent_since_summary else 0
            sent_since_summary = False
            if quiet_after_end >= 2:
                yield {"event": "end", "id": live.cursor(), "data": "{}"}
                return
        if pending is None and loop.time() >= next_summary:
            pending = loop.run_in_executor(None, live.summary)
            next_summary = loop.time() + SUMMARY_S
        await anyio.sleep(POLL_S)
