"""The leaderboard: every evaluation, with its per-item predictions, in one SQLite file.

SQLite because it is one file in the project folder, needs no server, survives crashes (each
evaluation is one transaction) and can be read by any tool. Rows carry the fingerprint of their
test set, and every query that ranks pricers filters on it, so numbers measured on different test
sets are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appraiser import config
from appraiser.data.io import DataError

if TYPE_CHECKING:
    from appraiser.evaluation.evaluator import EvalResult, ItemResult

#: Titles and categories are stored once per item, not once per evaluation: they dominate a row's size.
#: Keyed by the item's content (`item_key`), not its id alone: test sets reuse ids ("0", "1", …) for other
#: items, and keyed by id the first set's titles were read back for every later one.
ITEMS_TABLE = """CREATE TABLE IF NOT EXISTS items (
    item_key TEXT PRIMARY KEY,     -- item_key(id, title, category); "id:<id>" for rows from before it existed
    item_id TEXT NOT NULL,
    title TEXT,
    category TEXT
) WITHOUT ROWID"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pricer TEXT NOT NULL,          -- the pricer's kind (Pricer.name, e.g. "tfidf-ridge")
    label TEXT NOT NULL,           -- the name shown on the leaderboard
    config TEXT NOT NULL,          -- JSON of Pricer.config()
    test_fingerprint TEXT NOT NULL,
    test_size INTEGER NOT NULL,
    metrics TEXT NOT NULL,         -- JSON of compute_metrics()
    seconds REAL NOT NULL,
    cost REAL NOT NULL DEFAULT 0,
    created TEXT NOT NULL,         -- ISO time, UTC
    fit_seconds REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS evaluations_fp ON evaluations (test_fingerprint, label);
{ITEMS_TABLE};
CREATE TABLE IF NOT EXISTS predictions (
    run_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    truth REAL NOT NULL,
    guess REAL,                    -- NULL: the pricer failed on this item
    low REAL,
    high REAL,
    raw TEXT,
    item_key TEXT,                 -- the items row; NULL in rows from before it existed (read by id)
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
"""

#: How a prediction stored before `item_key` existed finds its items row: by id, as it was written.
_LEGACY_KEY_SQL = "'id:' || {}"


def item_key(item_id: str, title: str | None, category: str | None) -> str:
    """The items row of one item: a hash of its id, title and category, so two test sets that give one id to
    different items each read back their own. 16 hex digits: 64 bits make a clash between two items a
    non-event, and each prediction row carries one (a full hash would add a third to its size); hex digits
    only, so never equal to a legacy "id:…" key."""
    return hashlib.sha1(json.dumps([item_id, title, category]).encode()).hexdigest()[:16]


@dataclass
class Row:
    """One stored evaluation (without its per-item predictions)."""

    run_id: int
    pricer: str
    label: str
    config: dict[str, Any]
    test_fingerprint: str
    test_size: int
    metrics: dict[str, float]
    seconds: float
    cost: float
    created: str
    fit_seconds: float = 0.0


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    """Open with write-ahead logging: each commit is then an append, not an fsync of the whole file, so
    saving every finished batch stays cheap, and a crash of the process still loses no committed batch.

    A path that is a folder, not an SQLite file or not writable is the user's to fix: a DataError naming it.
    """
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a database file")
    try:
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(schema)
    except sqlite3.DatabaseError as e:
        raise DataError(f"{path}: cannot use it as a database ({e})") from None
    return conn


def default_path() -> Path:
    return config.home() / "leaderboard.db"


class LeaderboardStore:
    """Read and write the leaderboard database (`config.home()/leaderboard.db` unless given a path)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path, SCHEMA)
        self._conn.execute("PRAGMA foreign_keys = ON")
        if self._outdated():
            self._upgrade()

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}

    def _outdated(self) -> bool:
        return (
            "fit_seconds" not in self._columns("evaluations")
            or "item_key" not in self._columns("items")
            or "item_key" not in self._columns("predictions")
        )

    def _upgrade(self) -> None:
        """Bring a database written by an older version up to SCHEMA, keeping every row.

        One transaction that takes the write lock first and looks again, so two processes opening one old
        file do not both alter it (the second would fail on a column the first added), and a crash leaves it
        as it was. The old items table (keyed by id alone) is copied under legacy keys "id:<id>", which the
        predictions stored before the upgrade (item_key NULL) are read by: they read what they read before.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if "fit_seconds" not in self._columns("evaluations"):  # from before fit times were recorded
                self._conn.execute("ALTER TABLE evaluations ADD COLUMN fit_seconds REAL NOT NULL DEFAULT 0")
            if "item_key" not in self._columns("items"):  # from before items were keyed by their content
                self._conn.execute("ALTER TABLE items RENAME TO items_by_id")
                self._conn.execute(ITEMS_TABLE)
                self._conn.execute(
                    "INSERT INTO items SELECT "
                    + _LEGACY_KEY_SQL.format("item_id")
                    + ", item_id, title, category FROM items_by_id"
                )
                self._conn.execute("DROP TABLE items_by_id")
            if "item_key" not in self._columns("predictions"):
                self._conn.execute("ALTER TABLE predictions ADD COLUMN item_key TEXT")
            self._conn.commit()
        except sqlite3.DatabaseError as e:  # e.g. locked by another writer for the whole wait
            self._conn.rollback()
            self._conn.close()
            raise DataError(
                f"{self.path}: cannot upgrade this leaderboard database ({e}); it was left as it was"
            ) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LeaderboardStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def add(self, result: EvalResult) -> int:
        """Store an evaluation and its predictions in one transaction; returns its run id."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO evaluations (pricer, label, config, test_fingerprint, test_size, metrics, seconds, "
                "cost, created, fit_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    result.pricer_name or result.pricer,
                    result.pricer,
                    json.dumps(result.config, sort_keys=True, default=str),
                    result.test_fingerprint,
                    len(result.results),
                    json.dumps(result.metrics),
                    result.seconds,
                    result.cost,
                    created,
                    result.fit_seconds,
                ),
            )
            run_id = int(cur.lastrowid)
            keys = [item_key(r.id, r.title, r.category) for r in result.results]
            self._conn.executemany(
                "INSERT OR IGNORE INTO items (item_key, item_id, title, category) VALUES (?, ?, ?, ?)",
                [(k, r.id, r.title, r.category) for k, r in zip(keys, result.results, strict=True)],
            )
            self._conn.executemany(
                "INSERT INTO predictions (run_id, idx, item_id, truth, guess, low, high, raw, item_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, i, r.id, r.truth, r.guess, r.low, r.high, r.raw, k)
                    for i, (r, k) in enumerate(zip(result.results, keys, strict=True))
                ],
            )
        return run_id

    def delete(self, run_id: int) -> bool:
        with self._conn:
            self._conn.execute("DELETE FROM predictions WHERE run_id = ?", (run_id,))
            cur = self._conn.execute("DELETE FROM evaluations WHERE id = ?", (run_id,))
        return cur.rowcount > 0

    # ------------------------------------------------------------ reading

    _COLUMNS = "id, pricer, label, config, test_fingerprint, test_size, metrics, seconds, cost, created, fit_seconds"

    @staticmethod
    def _row(r: tuple) -> Row:
        return Row(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]), r[7], r[8], r[9], r[10])

    def rows(self, test_fingerprint: str | None = None, latest_only: bool = False) -> list[Row]:
        """Evaluations, newest first; only those on one test set when `test_fingerprint` is given.

        `latest_only` keeps the newest row per (label, test set), which is what a leaderboard shows.
        """
        sql = f"SELECT {self._COLUMNS} FROM evaluations"
        args: tuple = ()
        if test_fingerprint is not None:
            sql += " WHERE test_fingerprint = ?"
            args = (test_fingerprint,)
        rows = [self._row(r) for r in self._conn.execute(sql + " ORDER BY id DESC", args)]
        if latest_only:
            seen: set[tuple[str, str]] = set()
            kept = []
            for r in rows:
                if (r.label, r.test_fingerprint) not in seen:
                    seen.add((r.label, r.test_fingerprint))
                    kept.append(r)
            rows = kept
        return rows

    def get(self, run_id: int) -> Row | None:
        r = self._conn.execute(f"SELECT {self._COLUMNS} FROM evaluations WHERE id = ?", (run_id,)).fetchone()
        return self._row(r) if r else None

    def latest(self, label: str, test_fingerprint: str | None = None) -> Row | None:
        """The newest evaluation of `label` (on one test set, when given)."""
        sql = f"SELECT {self._COLUMNS} FROM evaluations WHERE label = ?"
        args: tuple = (label,)
        if test_fingerprint is not None:
            sql += " AND test_fingerprint = ?"
            args += (test_fingerprint,)
        r = self._conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return self._row(r) if r else None

    def fingerprints(self) -> list[tuple[str, int, int, str]]:
        """(fingerprint, test size, evaluations, newest time) for each test set, newest first."""
        return list(
            self._conn.execute(
                "SELECT test_fingerprint, MAX(test_size), COUNT(*), MAX(created) FROM evaluations "
                "GROUP BY test_fingerprint ORDER BY MAX(id) DESC"
            )
        )

    def predictions(self, run_id: int) -> list[ItemResult]:
        """The per-item results of one evaluation, in test-set order."""
        from appraiser.evaluation.evaluator import ItemResult

        return [
            ItemResult(*r)
            for r in self._conn.execute(
                "SELECT p.item_id, i.title, i.category, p.truth, p.guess, p.low, p.high, p.raw "
                "FROM predictions p LEFT JOIN items i ON i.item_key = COALESCE(p.item_key, "
                + _LEGACY_KEY_SQL.format("p.item_id")
                + ") WHERE p.run_id = ? ORDER BY p.idx",
                (run_id,),
            )
        ]

    def result(self, run_id: int) -> EvalResult:
        """A stored evaluation as an EvalResult (for charts, comparisons and re-export)."""
        from appraiser.evaluation.evaluator import EvalResult

        row = self.get(run_id)
        if row is None:
            raise KeyError(f"no evaluation with run id {run_id}")
        return EvalResult(
            pricer=row.label,
            config=row.config,
            test_fingerprint=row.test_fingerprint,
            results=self.predictions(run_id),
            metrics=row.metrics,
            seconds=row.seconds,
            cost=row.cost,
            fit_seconds=row.fit_seconds,
            run_id=run_id,
            pricer_name=row.pricer,
        )


# ---------------------------------------------------------------- prediction cache

CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    label TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    item_id TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    price REAL,
    low REAL,
    high REAL,
    raw TEXT,
    seconds REAL NOT NULL DEFAULT 0,   -- this item's share of the time its batch took
    PRIMARY KEY (label, config_hash, item_id, text_hash)
) WITHOUT ROWID;
"""


class PredictionCache:
    """Predictions already made, keyed by pricer label + config hash + item id + item text hash.

    The evaluator writes each batch as it completes, so an evaluation that is interrupted (Ctrl-C,
    a crashed API call, a killed job) resumes where it stopped and never pays twice for a guess.
    It lives in its own file beside the leaderboard so it can be deleted without losing results.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else config.home() / "cache.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path, CACHE_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def lookup(self, label: str, config_hash: str) -> dict[tuple[str, str], tuple]:
        """All cached predictions of one pricer: (item id, text hash) -> (price, low, high, raw, seconds)."""
        return {
            (r[0], r[1]): r[2:]
            for r in self._conn.execute(
                "SELECT item_id, text_hash, price, low, high, raw, seconds FROM cache "
                "WHERE label = ? AND config_hash = ?",
                (label, config_hash),
            )
        }

    def put(self, label: str, config_hash: str, rows: list[tuple]) -> None:
        """Save (item id, text hash, price, low, high, raw, seconds) rows in one transaction."""
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(label, config_hash, *r) for r in rows],
            )

    def clear(self, label: str | None = None) -> int:
        with self._conn:
            if label is None:
                cur = self._conn.execute("DELETE FROM cache")
            else:
                cur = self._conn.execute("DELETE FROM cache WHERE label = ?", (label,))
        return cur.rowcount
