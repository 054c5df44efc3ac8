"""A hosted job's own words turned into the run store's: its events' levels, its metric events, its
result CSV, its statuses.

OpenAI sends a metrics event per step (`type: "metrics"`, `data: {"step": 118, "total_steps": 500,
"train_loss": 1.92, ...}`, message "Step 118/500: training loss=1.92") and, at the end, a result file
(CSV, one row per step; base64-encoded CSV at OpenAI). Both land as the same metric rows, so a step seen
live and again in the CSV is one row, not two. `train_loss` is also stored as `loss`, the series every
`runs` view charts for local runs.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
from typing import Any

#: The provider's job status → the run store's.
STATUS = {
    "validating_files": "queued",
    "queued": "queued",
    "running": "running",
    "paused": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}

#: The provider's event level → the run store's.
LEVEL = {"info": "info", "warn": "warning", "warning": "warning", "error": "error", "debug": "debug"}

#: Keys of a metrics event's data that are not metrics.
NOT_METRICS = frozenset({"step", "total_steps"})


def run_status(job_status: str) -> str:
    """The run store's status for a job status (a status we do not know yet counts as running)."""
    return STATUS.get(job_status, "running")


def metric_values(data: Any) -> tuple[int | None, int | None, dict[str, float]]:
    """(step, total_steps, {name: value}) from a metrics event's `data`; (None, None, {}) when it has none."""
    if not isinstance(data, dict) or not _number(data.get("step")):
        return None, None, {}
    step = int(data["step"])
    total = data.get("total_steps")
    total = int(total) if _number(total) else None
    values = {k: float(v) for k, v in data.items() if k not in NOT_METRICS and _number(v)}
    if "train_loss" in values:
        values["loss"] = values["train_loss"]
    return step, total, values


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def event_time(created_at: Any) -> float | None:
    """An event's `created_at` as Unix seconds, or None (recorded at the time it is mirrored) when the
    provider sent something else ("yesterday", null, NaN): one odd field must not stop the follower."""
    return float(created_at) if _number(created_at) and created_at >= 0 else None


def printable(text: Any) -> str:
    """A provider's message as one line of plain text: control characters (an ANSI colour, a bell, a
    carriage return that rewrites the terminal line) escaped, anything not a string made one."""
    if text is None:
        return ""
    text = text if isinstance(text, str) else str(text)
    return "".join(c if c.isprintable() or c in " \t\n" else repr(c)[1:-1] for c in text)


def result_rows(content: bytes) -> list[tuple[int, dict[str, float]]]:
    """(step, {name: value}) per row of a job's result file: CSV, or base64 of a CSV (OpenAI's)."""
    text = _csv_text(content)
    rows = []
    for rec in csv.DictReader(io.StringIO(text)):
        try:
            step = int(float(rec.get("step") or ""))
        except ValueError:
            continue
        values: dict[str, float] = {}
        for k, v in rec.items():
            if k is None or k == "step" or v in (None, ""):
                continue
            try:
                x = float(v)
            except ValueError:
                continue
            if math.isfinite(x):
                values[k.strip()] = x
        if "train_loss" in values:
            values["loss"] = values["train_loss"]
        rows.append((step, values))
    return rows


def _csv_text(content: bytes) -> str:
    text = content.decode("utf-8", errors="replace").lstrip("\ufeff")
    if text.lstrip().startswith("step"):
        return text
    try:
        decoded = base64.b64decode(content.strip(), validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return text
    return decoded if decoded.lstrip().startswith("step") else text
