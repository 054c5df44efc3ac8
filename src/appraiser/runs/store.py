"""The run store: one SQLite file for every training job, local or hosted, and its live progress.

Tables:
- `runs`: one row per job: kind (local / hosted), name, status, model, config (JSON), folder, progress
  (step / max_steps), the best metric so far, the process id that runs it (to tell a killed run from
  a live one) and, for hosted jobs, the provider's job id.
- `events`: the job's log as a person reads it ("Step 118/500: training loss=1.92"), like a hosted
  fine-tuning job's event list.
- `metrics`: numbers per step (loss, lr, grad_norm, tokens_per_s, eta_s, probe_mae, ...), one row per
  (run, name, step), so a resumed run overwrites the steps it redoes.
- `state`: small named values per run that must survive a restart: a hosted job's event cursor, which
  notifications were already sent (`claim` is an atomic insert-if-absent: exactly once, across
  processes and resumes).

WAL mode lets a watcher (`appraiser runs watch`, a dashboard, a notifier) read while training writes.
Each call opens its own short connection: safe across threads and processes, and cheap next to a
training step.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from appraiser import config
from appraiser.data.io import DataError

KINDS = ("local", "hosted")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
LEVELS = ("debug", "info", "warning", "error")
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'local',
    name TEXT,
    status TEXT NOT NULL DEFAULT 'queued',
    model TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    folder TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    max_steps INTEGER,
    best_metric TEXT,
    best_value REAL,
    best_step INTEGER,
    external_id TEXT,
    pid INTEGER,
    host TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    time REAL NOT NULL,
    level TEXT NOT NULL DEFAULT 'info',
    message TEXT NOT NULL,
    step INTEGER
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, name, step)
);
CREATE TABLE IF NOT EXISTS state (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
"""

#: Columns of `runs` that `update` may set.
_UPDATABLE = frozenset(
    {
        "name",
        "status",
        "model",
        "config",
        "folder",
        "step",
        "max_steps",
        "best_metric",
        "best_value",
        "best_step",
        "external_id",
        "pid",
        "host",
        "error",
    }
)


class RunNotFound(DataError):
    """No run matches what the user typed (a DataError: the CLI shows it as one line)."""


@dataclass
class Run:
    """One training job as the store knows it."""

    id: str
    kind: str
    name: str | None
    status: str
    model: str | None
    config: dict[str, Any]
    folder: Path | None
    created: float
    updated: float
    step: int = 0
    max_steps: int | None = None
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    external_id: str | None = None
    pid: int | None = None
    host: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def alive(self) -> bool | None:
        """Whether the process running this local job still exists (None when it cannot be told).

        A run killed with `kill -9` never writes its own end, so its status stays `running`; this is
        how a reader tells it apart from a live one.
        """
        if self.kind != "local" or self.pid is None or self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @property
    def display_status(self) -> str:
        """The status, with `killed` for a running (or not yet started) local job whose process is gone."""
        if self.status in ("running", "queued") and self.alive() is False:
            return "killed"
        return self.status


@dataclass
class Event:
    id: int
    run_id: str
    time: float
    level: str
    message: str
    step: int | None = None

    def __str__(self) -> str:
        stamp = datetime.fromtimestamp(self.time).strftime("%Y-%m-%d %H:%M:%S")
        return f"{stamp}  {self.level:<7} {self.message}"


@dataclass
class Metric:
    run_id: str
    step: int
    name: str
    value: float | None
    time: float = field(default=0.0)


def _to_db(v: float | None) -> float | str | None:
    """A metric value as stored. SQLite turns a float NaN into NULL, which reads back as "not logged": a loss that
    went NaN would vanish from its series, and the verdict would call the run "falling". So NaN is stored as the
    text 'nan' (a REAL column keeps text that is no number as text), and `metric_value` reads it back."""
    if v is None:
        return None
    v = float(v)
    return "nan" if math.isnan(v) else v


def metric_value(v: Any) -> float | None:
    """A metric value as read from the table (see `_to_db`): a stored NaN back as a float. Readers with their
    own SQL (the dashboard's live stream) pass each value through this too."""
    return float("nan") if v == "nan" else v


def _new_id(now: float) -> str:
    return f"{datetime.fromtimestamp(now):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


#: What SQLite says of a file that is not (or no longer) a sound database.
#: How long a write waits for another process's lock (SQLite's busy timeout) before giving up.
LOCK_WAIT_SECONDS = 30.0
_DAMAGE = ("malformed", "not a database", "no such table", "disk I/O error", "encrypted")


def _damaged(path: Path, e: Exception) -> DataError:
    return DataError(
        f"{path}: the run store cannot be read ({e}); move it aside to start a new one "
        "(the run folders beside it are kept)"
    )


class RunStore:
    """Runs, their events and metrics in one SQLite file (default: `<state folder>/runs.db`)."""

    def __init__(self, path: str | Path | None = None, runs_dir: str | Path | None = None):
        root = config.home()
        self.path = Path(path) if path is not None else root / "runs.db"
        self.runs_dir = Path(runs_dir) if runs_dir is not None else self.path.parent / "runs"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:  # only a new database is written to here, so readers never wait
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits (or rolls back) and closes; a damaged or foreign file is the user's to
        fix, and one another process keeps locked past the wait is the user's to know about: a DataError naming
        it, not a traceback (the transaction is rolled back, so nothing is half-written)."""
        try:
            db = sqlite3.connect(self.path, timeout=LOCK_WAIT_SECONDS)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None
        try:
            with db:  # commits, or rolls back on error
                yield db
        except sqlite3.DatabaseError as e:
            if "locked" in str(e):  # "database is locked": a writer held it for the whole wait
                raise DataError(
                    f"{self.path}: another process has kept the run store locked for {LOCK_WAIT_SECONDS:.0f} s; "
                    "try again when it is done (nothing was written)"
                ) from None
            if not any(sign in str(e) for sign in _DAMAGE):
                raise
            raise _damaged(self.path, e) from None
        finally:
            db.close()

    # ---- runs ----

    def create(
        self,
        *,
        kind: str = "local",
        name: str | None = None,
        model: str | None = None,
        config: Mapping[str, Any] | None = None,
        max_steps: int | None = None,
        external_id: str | None = None,
        status: str = "queued",
        folder: str | Path | None = None,
        pid: int | None = None,
    ) -> Run:
        """A new run; local runs get a folder `runs/<id>/` beside the database. `pid`: the process that will
        train it, when that is the one creating it, so a run killed before it starts reads as killed."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        now = time.time()
        for _ in range(1000):
            # An id is the second plus 4 random hex digits: runs made in the same second can draw the same one
            # (CI did, once). A folder of our own that already exists, or an id the table has, means drawing again.
            run_id = _new_id(now)
            own = folder is None and kind == "local"
            run_folder = self.runs_dir / run_id if own else folder
            if own:
                try:
                    Path(run_folder).mkdir(parents=True, exist_ok=False)  # type: ignore[arg-type]
                except FileExistsError:
                    continue
            elif run_folder is not None:
                Path(run_folder).mkdir(parents=True, exist_ok=True)
            try:
                self._insert(run_id, kind, name, status, model, config, run_folder, now, max_steps, external_id, pid)
            except sqlite3.IntegrityError:
                if own:
                    Path(run_folder).rmdir()  # type: ignore[arg-type]
                continue
            return self.get(run_id)
        raise RuntimeError("no free run id after 1,000 draws")

    def _insert(
        self,
        run_id: str,
        kind: str,
        name: str | None,
        status: str,
        model: str | None,
        config: Mapping[str, Any] | None,
        folder: str | Path | None,
        now: float,
        max_steps: int | None,
        external_id: str | None,
        pid: int | None,
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, kind, name, status, model, config, folder, created, updated,"
                " max_steps, external_id, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    kind,
                    name,
                    status,
                    model,
                    json.dumps(dict(config or {}), default=str),
                    str(Path(folder).resolve()) if folder is not None else None,
                    now,
                    now,
                    max_steps,
                    external_id,
                    pid,
                    socket.gethostname() if pid is not None else None,
                ),
            )

    @staticmethod
    def _run(row: sqlite3.Row) -> Run:
        d = dict(row)
        d["config"] = json.loads(d["config"] or "{}")
        d["folder"] = Path(d["folder"]) if d["folder"] else None
        return Run(**d)

    def get(self, ref: str) -> Run:
        """A run by id, name (the newest with that name), unique id prefix, or `last`."""
        with self._connect() as db:
            if ref in ("last", "latest"):
                row = db.execute("SELECT * FROM runs ORDER BY created DESC, rowid DESC LIMIT 1").fetchone()
                if row is None:
                    raise RunNotFound("there are no runs yet")
                return self._run(row)
            row = db.execute("SELECT * FROM runs WHERE id = ?", (ref,)).fetchone()
            if row is not None:
                return self._run(row)
            row = db.execute(  # a whole name before an id prefix: a run named "2026" is found by its name
                "SELECT * FROM runs WHERE name = ? ORDER BY created DESC, rowid DESC LIMIT 1", (ref,)
            ).fetchone()
            if row is not None:
                return self._run(row)
            rows = db.execute("SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(ref),)).fetchall()
            if len(rows) == 1:
                return self._run(rows[0])
            if len(rows) > 1:
                ids = ", ".join(r["id"] for r in rows[:5])
                raise RunNotFound(f"run {ref!r} is ambiguous: it starts {len(rows)} run ids ({ids}, ...)")
        raise RunNotFound(f"no run {ref!r} in {self.path} (see `appraiser runs list`)")

    def list(self, *, kind: str | None = None, status: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs, newest first."""
        sql, params = "SELECT * FROM runs WHERE 1=1", []
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY created DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._connect() as db:
            return [self._run(r) for r in db.execute(sql, params).fetchall()]

    def update(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run (see `_UPDATABLE`); `config` may be a dict."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = json.dumps(fields["config"], default=str)
        if "folder" in fields and fields["folder"] is not None:
            fields["folder"] = str(fields["folder"])
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE runs SET {cols}, updated = ? WHERE id = ?", (*fields.values(), time.time(), run_id)
            )
            if cur.rowcount == 0:
                raise RunNotFound(f"no run {run_id!r}")

    def set_status(self, run_id: str, status: str, *, message: str | None = None, error: str | None = None) -> None:
        """Change a run's status, logging `message` (or a default line) as an event."""
        fields: dict[str, Any] = {"status": status}
        if error is not None:
            fields["error"] = error
        if status == "running":
            fields.update(pid=os.getpid(), host=socket.gethostname())
        self.update(run_id, **fields)
        level = "error" if status == "failed" else "info"
        self.add_event(run_id, message or f"Run {status}" + (f": {error}" if error else ""), level=level)

    def set_best(self, run_id: str, metric: str, value: float, step: int) -> None:
        self.update(run_id, best_metric=metric, best_value=value, best_step=step)

    def delete(self, run_id: str) -> None:
        """Forget a run (its events and metrics too); its folder is left for the caller."""
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # ---- events ----

    def add_event(
        self,
        run_id: str,
        message: str,
        *,
        level: str = "info",
        step: int | None = None,
        at: float | None = None,
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        now = time.time() if at is None else at
        with self._connect() as db:
            db.execute(
                "INSERT INTO events (run_id, time, level, message, step) VALUES (?, ?, ?, ?, ?)",
                (run_id, now, level, message, step),
            )
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, run_id))

    def touch(self, run_id: str) -> None:
        """Mark the run as working without recording anything (a long stage's heartbeat: not a stall)."""
        with self._connect() as db:
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def add_event_once(
        self,
        run_id: str,
        key: str,
        message: str,
        *,
        level: str = "info",
        step: int | None = None,
        at: float | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> bool:
        """Claim `key` and add the event (and its step's metrics) in one transaction; False if already claimed.

        What a follower mirroring someone else's log needs: a kill between "claimed" and "written" can then
        neither lose the event nor let a rerun add it twice.
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        now = time.time() if at is None else at
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO state (run_id, key, value, time) VALUES (?, ?, 'true', ?)", (run_id, key, now)
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "INSERT INTO events (run_id, time, level, message, step) VALUES (?, ?, ?, ?, ?)",
                (run_id, now, level, message, step),
            )
            if metrics and step is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, step, n, _to_db(v), now) for n, v in metrics.items()],
                )
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, run_id))
        return True

    def events(self, run_id: str, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """Events in order; `after` (an event id) returns only newer ones, for tailing a live log."""
        sql = "SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id"
        params: list[Any] = [run_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._connect() as db:
            return [Event(**dict(r)) for r in db.execute(sql, params).fetchall()]

    # ---- metrics ----

    def log_metrics(
        self, run_id: str, step: int, values: Mapping[str, float | None], *, at: float | None = None
    ) -> None:
        """Record numbers for one step; a step logged again (after a resume) replaces the old values."""
        now = time.time() if at is None else at
        rows = [(run_id, step, name, _to_db(v), now) for name, v in values.items()]
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def metrics(self, run_id: str, name: str | None = None, *, since_step: int | None = None) -> list[Metric]:
        sql, params = "SELECT * FROM metrics WHERE run_id = ?", [run_id]
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        if since_step is not None:
            sql += " AND step > ?"
            params.append(since_step)
        sql += " ORDER BY step, name"
        with self._connect() as db:
            return [
                Metric(**{**dict(r), "value": metric_value(r["value"])}) for r in db.execute(sql, params).fetchall()
            ]

    def series(self, run_id: str, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, in step order, without missing values."""
        pts = [m for m in self.metrics(run_id, name) if m.value is not None]
        return [m.step for m in pts], [m.value for m in pts]  # type: ignore[misc]

    def latest(self, run_id: str) -> dict[str, float]:
        """The newest value of every metric of a run."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT name, value FROM metrics m WHERE run_id = ? AND step = "
                "(SELECT MAX(step) FROM metrics WHERE run_id = m.run_id AND name = m.name)",
                (run_id,),
            ).fetchall()
        return {r["name"]: metric_value(r["value"]) for r in rows}

    def discard_after(self, run_id: str, step: int) -> int:
        """Drop metrics logged after `step` (a resumed run redoes those steps); returns how many."""
        with self._connect() as db:
            cur = db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))
            return cur.rowcount

    # ---- state ----

    def get_state(self, run_id: str, key: str, default: Any = None) -> Any:
        """A value saved with `set_state` or `claim` (JSON-decoded), or `default`."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM state WHERE run_id = ? AND key = ?", (run_id, key)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set_state(self, run_id: str, key: str, value: Any) -> None:
        """Save a JSON-able value under `key` for this run (replacing the old one)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO state (run_id, key, value, time) VALUES (?, ?, ?, ?)",
                (run_id, key, json.dumps(value, default=str), time.time()),
            )

    def claim(self, run_id: str, key: str, value: Any = True) -> bool:
        """Record `key` if no one has yet; True for the one caller (any process) that did.

        What makes "exactly once" hold across threads, processes, resumes and server restarts: e.g.
        `claim(run, "notified:succeeded")` before sending a notification.
        """
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO state (run_id, key, value, time) VALUES (?, ?, ?, ?)",
                (run_id, key, json.dumps(value, default=str), time.time()),
            )
            return cur.rowcount == 1

    def unclaim(self, run_id: str, key: str) -> None:
        """Forget a key (e.g. a claimed send that then failed for good, so a later try may send)."""
        with self._connect() as db:
            db.execute("DELETE FROM state WHERE run_id = ? AND key = ?", (run_id, key))


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
