"""Fine-tuning jobs as OpenAI shows them: the job object, its events, checkpoints, result file and models.

A job is a row of the server store (the OpenAI job object as JSON, plus private `_` fields: its run id in
the server's run store, its owner) and one run of the server's own run store (`<server root>/runs.db`,
apart from the user's `appraiser runs`: another key must not see it as a model). Everything a client
reads about a job's progress comes from that run store, so a restarted server tells the same story:

- metrics events ("Step 3/12: training loss=1.92") are made from the run's per-step metrics, which hold
  one row per step (a resumed run drops the steps after its checkpoint and redoes them): no step is
  missing or doubled, and its event id is derived from (job, step), so it is stable across restarts;
- message events ("Fine-tuning job started", "Checkpoint created at step N ...") are `claim`ed state keys
  of the run (`ftevent:<key>`): each is recorded exactly once, however often a resumed worker reaches it;
- checkpoints are `ftckpt:<step>` state keys, their adapters copied to `RUN/snapshots/step-N/` (the
  Trainer's own checkpoints rotate away).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import re
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appraiser.runs.store import RunStore
from appraiser.server.engine import ModelCard
from appraiser.server.errors import OpenAIError, TextBody
from appraiser.server.store import ServerStore, new_id

BASE_LEARNING_RATE = 2e-4  # TrainConfig's default: what learning_rate_multiplier 1 means here
AUTO_BATCH_SIZE = 8
FINISHED = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running")
LEVELS = {"info": "info", "warning": "warn", "warn": "warn", "error": "error", "debug": "info"}

# ---------------------------------------------------------------- request bodies


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=10)] = "auto"


class Supervised(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    type: str
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobRequest(TextBody):
    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: Annotated[str, Field(max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


def requested_hyperparameters(req: JobRequest) -> Hyperparameters:
    """`method.supervised.hyperparameters`, else the older top-level `hyperparameters`, else all auto."""
    if req.method is not None:
        if req.method.type != "supervised":
            raise OpenAIError(
                400,
                f"method.type {req.method.type!r} is not supported here; only 'supervised'",
                code="invalid_value",
                param="method.type",
            )
        if req.method.supervised and req.method.supervised.hyperparameters:
            return req.method.supervised.hyperparameters
    return req.hyperparameters or Hyperparameters()


def resolve_hyperparameters(hp: Hyperparameters, n_examples: int) -> dict[str, Any]:
    """Concrete values for "auto": OpenAI's default-epochs rule, a batch of 8 (the CPU default), multiplier 1."""
    from appraiser.hosted.validate import default_epochs

    return {
        "n_epochs": default_epochs(n_examples) if hp.n_epochs == "auto" else hp.n_epochs,
        "batch_size": min(AUTO_BATCH_SIZE, max(1, n_examples)) if hp.batch_size == "auto" else hp.batch_size,
        "learning_rate_multiplier": 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier,
    }


def ft_model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's `ft:{base}:{org}:{suffix}:{id}` (the suffix part empty when none was given)."""
    org = re.sub(r"[^A-Za-z0-9_.-]", "-", owner)
    suf = re.sub(r"[^A-Za-z0-9_.-]", "-", suffix or "")
    return f"ft:{base}:{org}:{suf}:{job_id.removeprefix('ftjob-')[:8]}"


def checkpoint_model(ft_name: str, step: int) -> str:
    return f"{ft_name}:ckpt-step-{step}"


def new_job(owner: str, req: JobRequest, run_id: str) -> dict[str, Any]:
    hp = requested_hyperparameters(req)
    jid = new_id("ftjob-")
    hparams = hp.model_dump()
    return {
        "id": jid,
        "object": "fine_tuning.job",
        "created_at": int(time.time()),
        "error": None,
        "fine_tuned_model": None,
        "finished_at": None,
        "hyperparameters": hparams,
        "model": req.model,
        "organization_id": f"org-{owner}",
        "result_files": [],
        "seed": req.seed if req.seed is not None else 42,
        "status": "validating_files",
        "trained_tokens": None,
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "estimated_finish": None,
        "integrations": req.integrations or [],
        "metadata": req.metadata,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hparams}},
        "user_provided_suffix": req.suffix,
        "_owner": owner,
        "_run_id": run_id,
        "_ft_name": ft_model_name(req.model, owner, req.suffix, jid),
        "_attempts": 0,
    }


def public(job: dict[str, Any], runs: RunStore | None = None) -> dict[str, Any]:
    """The job as the API shows it: private fields dropped, `estimated_finish` from the run's ETA."""
    out = {k: v for k, v in job.items() if not k.startswith("_")}
    if runs is not None and job["status"] == "running":
        eta = runs.latest(job["_run_id"]).get("eta_s")
        if eta is not None and math.isfinite(eta):
            out["estimated_finish"] = int(time.time() + eta)
    return out


def control_path(root: Path, job_id: str) -> Path:
    """The file through which the server tells a job's worker to `cancel` or `pause`."""
    return Path(root) / "jobs" / f"{job_id}.control"


# ---------------------------------------------------------------- events


def _stable_id(prefix: str, *parts: Any) -> str:
    return prefix + hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:24]


def add_message(
    runs: RunStore, job: dict[str, Any], key: str, message: str, *, level: str = "info", data: Any = None
) -> bool:
    """Record a message event once (False: it was already recorded under `key`)."""
    value = {"message": message, "level": level, "data": data, "created_at": time.time()}
    return runs.claim(job["_run_id"], f"ftevent:{key}", value)


def _state_rows(runs: RunStore, run_id: str, prefix: str) -> list[tuple[str, Any]]:
    """(key, value) of a run's state keys that start with `prefix`. The run store has no prefix listing,
    so its state table is read here directly (read-only)."""
    db = sqlite3.connect(runs.path, timeout=30)
    try:
        rows = db.execute(
            "SELECT key, value FROM state WHERE run_id = ? AND substr(key, 1, ?) = ?", (run_id, len(prefix), prefix)
        ).fetchall()
    finally:
        db.close()
    return [(k[len(prefix) :], json.loads(v)) for k, v in rows]


def step_metrics(runs: RunStore, run_id: str) -> dict[int, dict[str, Any]]:
    """step -> {name: value, '_time': when its loss was logged} for every trained step."""
    steps: dict[int, dict[str, Any]] = {}
    for m in runs.metrics(run_id):
        row = steps.setdefault(m.step, {})
        row[m.name] = m.value
        if m.name == "loss":
            row["_time"] = m.time
    return {s: v for s, v in steps.items() if "loss" in v}


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def metrics_data(step: int, total: int | None, row: dict[str, Any]) -> dict[str, Any]:
    """A metrics event's `data`, in OpenAI's names; the probe's MAE and hit rate as Appraiser extras."""
    data: dict[str, Any] = {
        "step": step,
        "total_steps": total,
        "train_loss": _num(row.get("loss")),
        "train_mean_token_accuracy": None,
    }
    if "eval_loss" in row:  # a validation step: the whole validation file is scored
        loss = _num(row.get("eval_loss"))
        data.update(
            valid_loss=loss,
            valid_mean_token_accuracy=None,
            full_valid_loss=loss,
            full_valid_mean_token_accuracy=None,
            probe_mae=_num(row.get("probe_mae")),
            probe_hit_rate=_num(row.get("probe_hit_rate")),
        )
    return data


def metrics_message(data: dict[str, Any]) -> str:
    msg = f"Step {data['step']}/{data['total_steps']}: training loss={data['train_loss'] or 0:.2f}"
    if data.get("valid_loss") is not None:
        msg += f", validation loss={data['valid_loss']:.2f}, full validation loss={data['full_valid_loss']:.2f}"
    return msg


def job_events(runs: RunStore, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event of a job, newest first (OpenAI's order)."""
    run_id = job["_run_id"]
    events: list[tuple[float, int, dict[str, Any]]] = []
    for key, v in _state_rows(runs, run_id, "ftevent:"):
        events.append(
            (
                v["created_at"],
                1,
                {
                    "id": _stable_id("ftevent-", job["id"], "message", key),
                    "object": "fine_tuning.job.event",
                    "created_at": int(v["created_at"]),
                    "level": LEVELS.get(v.get("level", "info"), "info"),
                    "message": v["message"],
                    "data": v.get("data") or {},
                    "type": "message",
                },
            )
        )
    total = runs.get(run_id).max_steps
    by_step = step_metrics(runs, run_id)
    # A published event never changes (a follower copies each id once, as it may from OpenAI). The newest
    # step's validation loss and probe arrive after its training loss, so while the job still trains, that
    # step's event waits until the next step has begun: then its row is complete.
    settled = job.get("status") in (*FINISHED, "paused")
    newest = max(by_step, default=None)
    for step, row in by_step.items():
        if step == newest and not settled:
            continue
        data = metrics_data(step, total, row)
        events.append(
            (
                row["_time"],
                0,
                {
                    "id": _stable_id("ftevent-", job["id"], "step", step),
                    "object": "fine_tuning.job.event",
                    "created_at": int(row["_time"]),
                    "level": "info",
                    "message": metrics_message(data),
                    "data": data,
                    "type": "metrics",
                },
            )
        )
    events.sort(key=lambda e: (e[0], e[1]), reverse=True)
    return [e for _, _, e in events]


def page_after(rows: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page over a newest-first list: the `limit` rows after the one with id `after`."""
    if after:
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    page = rows[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(rows) > limit,
    }


# ---------------------------------------------------------------- checkpoints


def snapshot_dir(runs: RunStore, job: dict[str, Any], step: int) -> Path:
    folder = runs.get(job["_run_id"]).folder
    return Path(folder) / "snapshots" / f"step-{step}"  # type: ignore[arg-type]


def job_checkpoints(runs: RunStore, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's checkpoints, newest first."""
    out = []
    for key, v in _state_rows(runs, job["_run_id"], "ftckpt:"):
        step = int(key)
        out.append(
            {
                "id": _stable_id("ftckpt_", job["id"], step),
                "object": "fine_tuning.job.checkpoint",
                "created_at": int(v["created_at"]),
                "fine_tuned_model_checkpoint": checkpoint_model(job["_ft_name"], step),
                "fine_tuning_job_id": job["id"],
                "metrics": v["metrics"],
                "step_number": step,
            }
        )
    out.sort(key=lambda c: c["step_number"], reverse=True)
    return out


def checkpoint_metrics(step: int, row: dict[str, Any]) -> dict[str, Any]:
    data = metrics_data(step, None, row)
    data.pop("total_steps")
    data["step"] = float(step)
    return data


# ---------------------------------------------------------------- result file


def result_csv(runs: RunStore, run_id: str) -> bytes:
    """OpenAI's step metrics CSV (`step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`),
    base64-encoded as OpenAI serves it. Token accuracies are not measured here: left empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    for step, row in sorted(step_metrics(runs, run_id).items()):
        valid = _num(row.get("eval_loss"))
        w.writerow([step, f"{row['loss']:.5f}", "", "" if valid is None else f"{valid:.5f}", ""])
    return base64.b64encode(buf.getvalue().encode())


# ---------------------------------------------------------------- models


class JobModels:
    """The `ft:` models of the fine-tuning jobs, each visible to its owner only (an `engine.OwnedModels`)."""

    def __init__(self, store: ServerStore, runs: RunStore):
        self.store, self.runs = store, runs

    def _cards_of(self, job: dict[str, Any]) -> list[ModelCard]:
        cards = []
        run = self.runs.get(job["_run_id"])
        folder = Path(run.folder) if run.folder else None
        if folder is None:
            return []
        owned_by = job["organization_id"]
        if job["status"] == "succeeded" and (folder / "final" / "adapter_config.json").exists():
            cards.append(
                ModelCard(job["_ft_name"], job["finished_at"] or job["created_at"], owned_by, str(folder / "final"))
            )
        for ck in job_checkpoints(self.runs, job):
            path = folder / "snapshots" / f"step-{ck['step_number']}"
            if (path / "adapter_config.json").exists():
                cards.append(ModelCard(ck["fine_tuned_model_checkpoint"], ck["created_at"], owned_by, str(path)))
        return cards

    def cards(self, owner: str | None) -> list[ModelCard]:
        if owner is None:
            return []
        return [c for job in self.store.list_jobs(owner) for c in self._cards_of(job)]

    def card(self, model_id: str, owner: str | None) -> ModelCard | None:
        if owner is None:
            return None
        base = re.sub(r":ckpt-step-\d+$", "", model_id)
        for job in self.store.list_jobs(owner):
            if job["_ft_name"] == base:
                for c in self._cards_of(job):
                    if c.id == model_id:
                        return c
        return None


def not_found_model(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
