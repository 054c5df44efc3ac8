"""The server's side of fine-tuning jobs: create, validate, schedule workers, cancel/pause/resume, webhooks.

- **Create** checks what it can at once (a packaged base model, the files exist for this owner and have
  purpose `fine-tune`: 400/404 with `param`), then answers `validating_files` and validates in the
  background with `hosted.validate` — the checks of `appraiser hosted prepare` — so a bad file fails the
  job with OpenAI's `error {code: "invalid_training_file", message, param: "training_file"}`.
- **Schedule**: at most `max_jobs` workers (`server.jobworker`, one process per job), oldest job first; a
  job left `running` by a killed server goes first and resumes from its checkpoint. A worker that dies
  without recording an end is retried (3 tries), then the job fails.
- **Cancel** marks the job `cancelled` at once and tells the worker through the control file (it stops
  at the next step); **pause** marks it `paused`, the worker saves a checkpoint and stops; **resume** queues
  it again and the next worker continues from that checkpoint.
- **Webhooks** for every job that ended, sent from a thread, once (the run store's `claim`), also after
  a restart for jobs that ended while no webhook was sent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from appraiser.runs.store import RunStore
from appraiser.server import jobs, webhooks
from appraiser.server.errors import OpenAIError
from appraiser.server.store import ServerStore

log = logging.getLogger("appraiser.server")

MAX_ATTEMPTS = 3


class JobRunner:
    def __init__(self, store: ServerStore, settings: Any):
        self.store, self.settings = store, settings
        self.root = store.root
        self.runs = RunStore(self.root / "runs.db", self.root / "runs")
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        self.max_jobs = max(1, int(getattr(settings, "max_jobs", 1) or 1))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._validate_q: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tokenizer: Any = None
        self._webhooked: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for jid in (j["id"] for j in self.store.list_jobs(statuses=("validating_files",))):
            self._validate_q.put(jid)  # validation a killed server left unfinished
        for target, name in ((self._validate_loop, "ft-validate"), (self._schedule_loop, "ft-schedule")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop scheduling and end the workers; their jobs stay `running` and resume on the next start."""
        self._stop.set()
        self._wake.set()
        self._validate_q.put("")
        with self._lock:
            procs = list(self.procs.values())
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for t in self._threads:
            t.join(timeout=5)

    # ------------------------------------------------------------ create

    def create(self, owner: str, req: jobs.JobRequest) -> dict[str, Any]:
        from appraiser.server.engine import packaged_cards

        bases = [c.id for c in packaged_cards()]
        if req.model not in bases:
            raise OpenAIError(
                400,
                f"Model {req.model} is not available for fine-tuning here; fine-tunable models: {', '.join(bases)}",
                code="model_not_available",
                param="model",
            )
        jobs.requested_hyperparameters(req)  # an unsupported method is a 400 now, not a failed job
        from appraiser.notify import check_url

        for url in notify_urls(req.metadata):  # a typo is a 400 now, not a silent end
            problem = check_url(url)
            if problem is not None:
                raise OpenAIError(400, f"metadata.notify: {problem}", code="invalid_value", param="metadata")
        for param, fid in (("training_file", req.training_file), ("validation_file", req.validation_file)):
            if fid is None:
                continue
            try:
                meta = self.store.get_file(owner, fid)
            except OpenAIError:
                raise OpenAIError(404, f"File {fid} not found", code="file_not_found", param=param) from None
            if meta["purpose"] != "fine-tune":
                raise OpenAIError(
                    400,
                    f"File {fid} has purpose {meta['purpose']!r}; a fine-tuning file needs purpose 'fine-tune'",
                    code="invalid_file_purpose",
                    param=param,
                )
        run = self.runs.create(kind="local", model=req.model, config={"fine_tuning_job": True, "owner": owner})
        job = jobs.new_job(owner, req, run.id)
        self.runs.update(run.id, name=job["id"])
        self.store.add_job(owner, job)
        jobs.add_message(self.runs, job, "created", f"Created fine-tuning job: {job['id']}")
        self._validate_q.put(job["id"])
        return job

    # ------------------------------------------------------------ validation

    def _tok(self) -> Any:
        if self._tokenizer is None:
            from appraiser.hosted.validate import embedded_tokenizer

            self._tokenizer = embedded_tokenizer()
        return self._tokenizer

    def _validate_loop(self) -> None:
        while not self._stop.is_set():
            jid = self._validate_q.get()
            if not jid:
                continue
            try:
                self.validate(jid)
            except Exception:
                log.exception("validating fine-tuning job %s failed", jid)
                self._fail(jid, "server_error", "The job failed due to an internal error while validating files.", None)

    def validate(self, job_id: str) -> None:
        from appraiser.hosted.validate import validate_chat

        job = self.store.get_job(None, job_id)
        if job["status"] != "validating_files":
            return
        reports = {}
        for param in ("training_file", "validation_file"):
            fid = job.get(param)
            if fid is None:
                continue
            label = "training" if param == "training_file" else "validation"
            jobs.add_message(self.runs, job, f"validating:{param}", f"Validating {label} file: {fid}")
            path = self.store.file_path(fid)
            if not path.exists():
                self._fail(job_id, "invalid_file", f"File {fid} was deleted before the job could use it", param)
                return
            report = validate_chat(path.read_bytes(), tokenizer=self._tok())
            error = report.error(param)
            if error is not None and (param == "training_file" or report.format_errors):
                self._fail(
                    job_id,
                    "invalid_training_file" if param == "training_file" else "invalid_validation_file",
                    error.message,
                    param,
                )
                return
            reports[param] = report
        n = reports["training_file"].n_examples
        hp = jobs.resolve_hyperparameters(jobs.Hyperparameters(**job["hyperparameters"]), n)
        cfg = self._train_config(job, hp, n, "validation_file" in reports)
        if self.store.get_job(None, job_id)["status"] == "validating_files":
            jobs.add_message(self.runs, job, "validated", "Files validated, moving job to queued state")
        self.store.update_job(
            job_id,
            expect=("validating_files",),
            status="queued",
            hyperparameters=hp,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},
            _config=cfg,
        )
        self._wake.set()

    def _train_config(self, job: dict[str, Any], hp: dict[str, Any], n: int, has_validation: bool) -> dict[str, Any]:
        """The TrainConfig of a job: epochs, batch and learning rate from the hyperparameters; a checkpoint
        (and, with a validation file, a validation step) once per epoch, as OpenAI does, unless the server
        says otherwise (`job_save_every`)."""
        per_epoch = max(1, math.ceil(n / hp["batch_size"]))
        every = getattr(self.settings, "job_save_every", None) or per_epoch
        cfg = {
            "model": job["model"],
            "train": str(self.store.file_path(job["training_file"])),
            "validation": str(self.store.file_path(job["validation_file"])) if has_validation else None,
            "n_train": None,
            "name": job["id"],
            "epochs": float(hp["n_epochs"]),
            "batch_size": hp["batch_size"],
            "learning_rate": jobs.BASE_LEARNING_RATE * hp["learning_rate_multiplier"],
            "seed": job["seed"],
            "save_every": every,
            "keep_checkpoints": 2,
            "probe_every": every if has_validation else 0,
            "probe_size": 10_000,
            "max_steps": getattr(self.settings, "job_max_steps", None),
            "threads": getattr(self.settings, "job_threads", None),
        }
        from appraiser.training.config import TrainConfig

        return TrainConfig.model_validate(cfg).model_dump(mode="json")

    def _fail(self, job_id: str, code: str, message: str, param: str | None) -> None:
        active = ("validating_files", "queued", "running")
        job = self.store.get_job(None, job_id)
        if job["status"] in active:  # the event first: a client that sees `failed` sees why
            jobs.add_message(self.runs, job, "failed", message, level="error")
        self.store.update_job(
            job_id,
            expect=active,
            status="failed",
            finished_at=int(time.time()),
            error={"code": code, "message": message, "param": param},
        )
        with contextlib.suppress(Exception):  # the job's run says why too (the result card reads it there)
            self.runs.update(job["_run_id"], status="failed", error=f"{code}: {message}")
        self._wake.set()

    # ------------------------------------------------------------ control

    def _control(self, job_id: str, what: str | None) -> None:
        path = jobs.control_path(self.root, job_id)
        if what is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(what)
            os.replace(tmp, path)

    def cancel(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.store.get_job(owner, job_id)
        cancellable = ("validating_files", "queued", "running", "paused")
        if job["status"] in cancellable:  # the event first, as for every end
            jobs.add_message(self.runs, job, "cancelled", "Fine-tuning job cancelled")
        updated = self.store.update_job(
            job_id,
            expect=cancellable,
            status="cancelled",
            finished_at=int(time.time()),
            estimated_finish=None,
        )
        if updated is None:
            raise OpenAIError(
                400,
                f"Job {job_id} has already {job['status']}; it cannot be cancelled",
                code="invalid_request",
                param="fine_tuning_job_id",
            )
        self._control(job_id, "cancel")
        self._wake.set()
        return updated

    def pause(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.store.get_job(owner, job_id)
        updated = self.store.update_job(job_id, expect=("queued", "running"), status="paused", estimated_finish=None)
        if updated is None:
            raise OpenAIError(
                400,
                f"Job {job_id} is {job['status']}; only a queued or running job can be paused",
                code="invalid_request",
                param="fine_tuning_job_id",
            )
        self._control(job_id, "pause")
        n = len([k for k in jobs._state_rows(self.runs, job["_run_id"], "ftevent:paused")])
        jobs.add_message(self.runs, job, f"paused{n}", "Fine-tuning job paused")
        return updated

    def resume(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.store.get_job(owner, job_id)
        with self._lock:
            alive = job_id in self.procs and self.procs[job_id].poll() is None
        updated = self.store.update_job(
            job_id, expect=("paused",), status="running" if alive else "queued", _attempts=0
        )
        if updated is None:
            raise OpenAIError(
                400,
                f"Job {job_id} is {job['status']}; only a paused job can be resumed",
                code="invalid_request",
                param="fine_tuning_job_id",
            )
        self._control(job_id, None)
        n = len([k for k in jobs._state_rows(self.runs, job["_run_id"], "ftevent:resumed")])
        jobs.add_message(self.runs, job, f"resumed{n}", "Fine-tuning job resumed")
        self._wake.set()
        return updated

    # ------------------------------------------------------------ scheduling

    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._launch()
                self._webhooks()
            except Exception:
                log.exception("fine-tuning scheduler")
            self._wake.wait(0.5)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            done = [(jid, p) for jid, p in self.procs.items() if p.poll() is not None]
            for jid, _ in done:
                del self.procs[jid]
        for jid, p in done:
            job = self.store.get_job(None, jid)
            if job["status"] == "running":  # the worker ended without recording an end
                if job["_attempts"] >= MAX_ATTEMPTS:
                    self._fail(jid, "server_error", "The job failed due to an internal error (worker exited).", None)
                else:
                    log.warning("fine-tuning job %s: worker exited (%s); it resumes", jid, p.returncode)
            if job["status"] == "cancelled":
                self._control(jid, None)  # a pause's file stays until resume removes it

    def _launch(self) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            busy = set(self.procs)
        if len(busy) >= self.max_jobs:
            return
        waiting = [j for j in self.store.list_jobs(statuses=("running",)) if j["id"] not in busy]
        waiting += self.store.list_jobs(statuses=("queued",))
        for job in waiting[: self.max_jobs - len(busy)]:
            log_path = self.root / "jobs" / f"{job['id']}.log"
            with open(log_path, "ab") as fh:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "appraiser.server.jobworker", str(self.root), job["id"], str(os.getpid())],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                )
            with self._lock:
                self.procs[job["id"]] = proc

    def _webhooks(self) -> None:
        """Tell the world a job ended: its signed webhook, and its result card to the `--notify` URLs and to
        the job's own (`metadata.notify`). Each exactly once, across restarts (claims in the run store)."""
        url = getattr(self.settings, "webhook_url", None)
        everyone = list(getattr(self.settings, "notify", None) or [])
        for job in self.store.list_jobs(statuses=jobs.FINISHED):
            if job["id"] in self._webhooked:
                continue
            self._webhooked.add(job["id"])
            if url and self.runs.claim(job["_run_id"], f"webhook:{job['status']}"):
                event = webhooks.job_event(job["id"], job["status"], job.get("finished_at"))
                threading.Thread(target=self._send, args=(url, event, job), daemon=True).start()
            urls = everyone + notify_urls(job.get("metadata"))
            if urls:
                threading.Thread(target=self._notify, args=(job, urls), daemon=True).start()

    def _notify(self, job: dict[str, Any], urls: list[str]) -> None:
        from appraiser.notify import notify_run

        try:
            if job.get("fine_tuned_model"):  # the card names the model the owner calls
                self.runs.set_state(job["_run_id"], "fine_tuned_model", job["fine_tuned_model"])
            notify_run(self.runs, job["_run_id"], urls, status=job["status"])
        except Exception:  # noqa: BLE001 - a notification never takes the scheduler down
            log.exception("fine-tuning job %s: notification", job["id"])

    def _send(self, url: str, event: dict[str, Any], job: dict[str, Any]) -> None:
        if not webhooks.deliver(url, getattr(self.settings, "webhook_secret", None), event):
            log.warning("webhook %s for %s not delivered", event["type"], job["id"])
            self.runs.unclaim(job["_run_id"], f"webhook:{job['status']}")  # the next start tries again


def notify_urls(metadata: dict[str, str] | None) -> list[str]:
    """The Apprise URLs a job asked to be told at (`metadata={"notify": "URL [URL ...]"}`: OpenAI's metadata
    values are strings, so several URLs are separated by spaces)."""
    value = (metadata or {}).get("notify") or ""
    return value.split() if isinstance(value, str) else []


def worker_log(root: Path, job_id: str) -> Path:
    return Path(root) / "jobs" / f"{job_id}.log"
