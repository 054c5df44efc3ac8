"""What `appraiser serve` keeps on disk: uploaded files and batches, per API-key owner, in one SQLite file.

A killed server loses nothing: file bytes are written to a temporary name and renamed before their row
exists, a batch's finished requests are appended to its partial output as they complete, and on start
the server picks up every batch still `in_progress`, skipping the requests already answered. Every read
is filtered by owner, so one key never sees — or learns the existence of — another key's files or batches.

Fine-tuning jobs (`server.jobs`) are rows here too, the OpenAI job object as JSON; their runs, events and
metrics live in the server's own run store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appraiser import atomic
from appraiser.server.errors import OpenAIError

FILE_PURPOSES = (
    "fine-tune",
    "batch",
    "assistants",
    "vision",
    "user_data",
    "evals",
    "batch_output",
    "fine-tune-results",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'processed'
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL
);
"""


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class ServerStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "server.db"
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30)
            db.row_factory = sqlite3.Row
            try:
                yield db
                db.commit()
            finally:
                db.close()

    # ------------------------------------------------------------ files

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(self, owner: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        fid = new_id("file-")
        atomic.write_bytes(self.file_path(fid), data)
        now = int(time.time())
        with self._db() as db:
            db.execute(
                "INSERT INTO files (id, owner, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (fid, owner, filename, purpose, len(data), now),
            )
        return self.get_file(owner, fid)

    def get_file(self, owner: str, file_id: str) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
        if row is None:
            raise OpenAIError(404, f"No such File object: {file_id}", code="file_not_found", param="file_id")
        return _file_obj(row)

    def list_files(
        self, owner: str, purpose: str | None = None, limit: int = 10000, after: str | None = None, order: str = "desc"
    ) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM files WHERE owner = ?", [owner]
        if purpose:
            sql += " AND purpose = ?"
            params.append(purpose)
        sql += (
            f" ORDER BY created_at {'ASC' if order == 'asc' else 'DESC'}, rowid {'ASC' if order == 'asc' else 'DESC'}"
        )
        with self._db() as db:
            rows = [_file_obj(r) for r in db.execute(sql, params).fetchall()]
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        return rows[:limit]

    def read_file(self, owner: str, file_id: str) -> bytes:
        self.get_file(owner, file_id)
        return self.file_path(file_id).read_bytes()

    def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        with self._db() as db:
            gone = db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount
        if not gone:  # never there, another key's, or deleted a moment ago by a concurrent request
            raise OpenAIError(404, f"No such File object: {file_id}", code="file_not_found", param="file_id")
        self.file_path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # ------------------------------------------------------------ batches

    def add_batch(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._db() as db:
            db.execute(
                "INSERT INTO batches (id, owner, created_at, status, body) VALUES (?, ?, ?, ?, ?)",
                (body["id"], owner, body["created_at"], body["status"], json.dumps(body)),
            )
        return body

    def get_batch(self, owner: str | None, batch_id: str) -> dict[str, Any]:
        with self._db() as db:
            if owner is None:
                row = db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
            else:
                row = db.execute("SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner)).fetchone()
        if row is None:
            raise OpenAIError(404, f"No such Batch object: {batch_id}", code="batch_not_found", param="batch_id")
        return json.loads(row["body"])

    def batch_owner(self, batch_id: str) -> str:
        with self._db() as db:
            return db.execute("SELECT owner FROM batches WHERE id = ?", (batch_id,)).fetchone()["owner"]

    def update_batch(self, batch_id: str, **fields: Any) -> dict[str, Any]:
        with self._db() as db:
            row = db.execute("SELECT body FROM batches WHERE id = ?", (batch_id,)).fetchone()
            body = {**json.loads(row["body"]), **fields}
            db.execute(
                "UPDATE batches SET status = ?, body = ? WHERE id = ?", (body["status"], json.dumps(body), batch_id)
            )
        return body

    def list_batches(self, owner: str, status: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT body FROM batches WHERE owner = ?", [owner]
        if status:
            sql += " AND status = ?"
            params.append(status)
        with self._db() as db:
            return [json.loads(r["body"]) for r in db.execute(sql + " ORDER BY created_at DESC, rowid DESC", params)]

    def unfinished_batches(self) -> list[str]:
        with self._db() as db:
            return [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"
                )
            ]

    # ------------------------------------------------------------ fine-tuning jobs

    def add_job(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, created_at, status, body) VALUES (?, ?, ?, ?, ?)",
                (body["id"], owner, body["created_at"], body["status"], json.dumps(body)),
            )
        return body

    def get_job(self, owner: str | None, job_id: str) -> dict[str, Any]:
        """A job's stored body; another owner's job is a 404, exactly like one that does not exist."""
        with self._db() as db:
            if owner is None:
                row = db.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
            else:
                row = db.execute("SELECT body FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
        if row is None:
            raise OpenAIError(
                404, f"Fine-tuning job {job_id} not found", code="fine_tune_not_found", param="fine_tuning_job_id"
            )
        return json.loads(row["body"])

    def job_owner(self, job_id: str) -> str:
        with self._db() as db:
            return db.execute("SELECT owner FROM jobs WHERE id = ?", (job_id,)).fetchone()["owner"]

    def update_job(self, job_id: str, *, expect: tuple[str, ...] | None = None, **fields: Any) -> dict[str, Any] | None:
        """Merge `fields` into a job's body. With `expect`, only while its status is one of those (None
        otherwise): a compare-and-set, so a worker never overwrites a cancel that arrived meanwhile."""
        with self._db() as db:
            row = db.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
            body = json.loads(row["body"])
            if expect is not None and body["status"] not in expect:
                return None
            body = {**body, **fields}
            db.execute("UPDATE jobs SET status = ?, body = ? WHERE id = ?", (body["status"], json.dumps(body), job_id))
        return body

    def list_jobs(self, owner: str | None = None, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Jobs newest first (oldest first when listing by status, the order they run in)."""
        sql, params = "SELECT body FROM jobs WHERE 1 = 1", []
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        if statuses:
            sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        order = "ASC" if statuses else "DESC"
        with self._db() as db:
            rows = db.execute(sql + f" ORDER BY created_at {order}, rowid {order}", params)
            return [json.loads(r["body"]) for r in rows]


def _file_obj(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "expires_at": None,
        "status_details": None,
    }
