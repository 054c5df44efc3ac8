"""Start a hosted fine-tuning job and record it as a `hosted` run; cancel it; list its checkpoints.

Everything goes through `appraiser.api.ApiClient.sdk` (the official `openai` client), so the same calls
reach OpenAI and `appraiser serve`. The run records where the job lives (provider, base URL, the *name*
of the key's environment variable — never the key), the uploaded file ids, the hyperparameters and the
cost estimate, so `appraiser hosted watch RUN` can pick the job up later from the run store alone.

A failure at any step of `start` fails the run with its message (never a run left `queued`); a 404 for the
job (`job_missing`) fails the run too, saying the provider has no such job for this key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appraiser.api import ApiClient, ApiError, Endpoint, resolve_endpoint
from appraiser.api.client import checked, describe_error
from appraiser.api.providers import PROVIDERS
from appraiser.data.io import DataError

#: State key of a run failed because the provider answered 404 for its job (a follower that reaches the
#: job again takes the run back).
MISSING = "hosted:job_missing"


def endpoint_config(endpoint: Endpoint) -> dict[str, Any]:
    """What a run stores to reach its job again (no key)."""
    return {"provider": endpoint.provider.name, "base_url": endpoint.base_url, "key_env": endpoint.key_env}


def endpoint_of(run: Any) -> Endpoint:
    """The endpoint a hosted run's job lives on, from its stored config."""
    cfg = run.config.get("endpoint") or {}
    if not cfg.get("base_url"):
        raise DataError(f"run {run.id} is not a hosted job started by `appraiser hosted start`")
    provider = cfg.get("provider") if cfg.get("provider") in PROVIDERS else None
    return resolve_endpoint(provider, cfg["base_url"], cfg.get("key_env"))


def client_for(endpoint: Endpoint, *, max_retries: int = 3, timeout: float = 120.0) -> ApiClient:
    return ApiClient(endpoint, concurrency=1, max_retries=max_retries, timeout=timeout)


def retryable(e: ApiError) -> bool:
    """Worth waiting for: rate limits, server errors, timeouts and lost connections."""
    return e.status in (408, 409, 429) or (e.status or 0) >= 500 or e.code in ("timeout", "connection_error")


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One SDK call; what fails after the SDK's own retries is an ApiError with the provider's message."""
    try:
        return checked(fn(*args, **kwargs), "a request")
    except ApiError:
        raise
    except Exception as e:
        import openai

        if isinstance(e, openai.OpenAIError):
            raise describe_error(e) from None
        raise


def upload(client: ApiClient, path: Path, *, wait_s: float = 600.0, poll_s: float = 1.0) -> Any:
    """Upload a chat JSONL file (`purpose="fine-tune"`) and wait until the provider has processed it."""
    with open(path, "rb") as fh:
        f = _file(call(client.sdk.files.create, file=(path.name, fh), purpose="fine-tune"), "the upload")
    deadline = time.monotonic() + wait_s
    while f.status not in ("processed", "error"):
        if time.monotonic() > deadline:
            raise DataError(f"{path}: uploaded as {f.id} but not processed after {wait_s:.0f} s")
        time.sleep(poll_s)
        f = _file(call(client.sdk.files.retrieve, f.id), "a file's status")
    if f.status == "error":
        raise DataError(f"{path}: the provider could not process the upload ({f.status_details or 'no details'})")
    return f


def _file(f: Any, what: str) -> Any:
    """A file object as the files API sends it; a JSON answer without its id and status (some other API, a
    proxy's own JSON) is an ApiError, not an AttributeError later on."""
    if not isinstance(getattr(f, "id", None), str) or not isinstance(getattr(f, "status", None), str):
        raise ApiError(
            f"the server answered {what} without a file id and status, not as the files API does "
            "(is base_url the API's, ending in /v1?)",
            code="not_the_api",
        )
    return f


@dataclass
class JobSpec:
    """What a fine-tuning job is made of (`jobs.create`'s arguments)."""

    model: str
    train: Path
    validation: Path | None = None
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    seed: int | None = None
    suffix: str | None = None

    def hyperparameters(self) -> dict[str, Any]:
        hp = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        return {k: v for k, v in hp.items() if v is not None}


def start(
    store: Any,
    client: ApiClient,
    spec: JobSpec,
    *,
    name: str | None = None,
    estimate: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    say: Any = None,
) -> Any:
    """Upload the files, create the job, and return the new `hosted` run (status from the job).

    The run is created first (queued) so that a failure at any step is recorded on it with the
    provider's message; the job's metadata names the run (`appraiser_run`).
    """
    say = say or (lambda _msg: None)
    cfg: dict[str, Any] = {
        "endpoint": endpoint_config(client.endpoint),
        "base_model": spec.model,
        "train_path": str(spec.train),
        "validation_path": str(spec.validation) if spec.validation else None,
        "hyperparameters": spec.hyperparameters(),
        "seed": spec.seed,
        "suffix": spec.suffix,
        "estimate": estimate or {},
        **(extra_config or {}),
    }
    run = store.create(kind="hosted", name=name, model=spec.model, config=cfg, folder=spec.train.parent)
    try:
        say(f"uploading {spec.train}")
        train_file = upload(client, spec.train)
        cfg["training_file"] = train_file.id
        if spec.validation is not None:
            say(f"uploading {spec.validation}")
            cfg["validation_file"] = upload(client, spec.validation).id
        store.update(run.id, config=cfg)
        kwargs: dict[str, Any] = {
            "model": spec.model,
            "training_file": cfg["training_file"],
            "metadata": {"appraiser_run": run.id},
        }
        if cfg.get("validation_file"):
            kwargs["validation_file"] = cfg["validation_file"]
        if spec.hyperparameters():
            kwargs["method"] = {"type": "supervised", "supervised": {"hyperparameters": spec.hyperparameters()}}
        if spec.seed is not None:
            kwargs["seed"] = spec.seed
        if spec.suffix:
            kwargs["suffix"] = spec.suffix
        job = call(client.sdk.fine_tuning.jobs.create, **kwargs)
    except KeyboardInterrupt:
        store.set_status(run.id, "failed", error="interrupted before the job was created")
        raise
    except Exception as e:  # any failure, even an answer we cannot read, ends the run it left queued
        store.set_status(run.id, "failed", error=str(e) or type(e).__name__)
        raise
    from appraiser.hosted.events import run_status

    store.update(run.id, external_id=job.id, status=run_status(job.status))
    store.add_event(run.id, f"Created fine-tuning job {job.id} on {client.endpoint.base_url} ({spec.model})")
    return store.get(run.id)


def cancel(store: Any, run: Any, client: ApiClient | None = None) -> Any:
    """Cancel a hosted run's job; the run's status follows the job's answer."""
    from appraiser.hosted.events import run_status

    job_id = _job_id(run)
    client = client or client_for(endpoint_of(run))
    try:
        job = call(client.sdk.fine_tuning.jobs.cancel, job_id)
    except ApiError as e:
        if e.status == 404:
            raise job_missing(store, run, e) from None
        raise
    status = run_status(job.status)
    final = status in ("succeeded", "failed", "cancelled")
    # A final answer ends the run here; the follower then records no second end (same claim as its own).
    if status != store.get(run.id).status and (not final or store.claim(run.id, "hosted:finished")):
        store.set_status(run.id, status, message=f"Job {job.status} (cancel requested)")
    return job


def job_missing(store: Any, run: Any, e: ApiError) -> DataError:
    """The error for a 404 on the run's job, after failing the run with it (unless it already ended). The
    end is not claimed: a follower that reaches the job later (the key that made it) still records it."""
    cfg = run.config.get("endpoint") or {}
    where = cfg.get("base_url") or "the provider"
    key = f"${cfg['key_env']}" if cfg.get("key_env") else "this key"
    message = f"{where} has no job {run.external_id} ({e}): it was deleted, or {key} is not the key that made it"
    if not store.get(run.id).finished:
        store.set_state(run.id, MISSING, True)
        store.set_status(run.id, "failed", error=message)
    return DataError(message)


#: Pages one walk of a job's events or checkpoints reads at most (100 each): more than any real job has, and a
#: server that says `has_more` for ever, with new ids on every page, is stopped there.
MAX_PAGES = 1000


def checkpoints(run: Any, client: ApiClient | None = None, say: Callable[[str], None] | None = None) -> list[Any]:
    """The job's checkpoints (`fine_tuning.job.checkpoint`), oldest step first, every page. A page that adds
    no new checkpoint (a server that always answers `has_more`, or ignores `after`) ends the walk, with a
    warning to `say`."""
    job_id = _job_id(run)
    client = client or client_for(endpoint_of(run))
    say = say or (lambda _msg: None)
    page = call(client.sdk.fine_tuning.jobs.checkpoints.list, job_id, limit=100)
    data = list(getattr(page, "data", None) or [])  # `"data": null` from a broken server: none
    out = {c.id: c for c in data}
    pages = 1
    while page.has_more and data:
        if pages >= MAX_PAGES:
            say(f"the checkpoint list of job {job_id} goes on past {MAX_PAGES} pages; shown in part")
            break
        after = data[-1].id
        page = call(client.sdk.fine_tuning.jobs.checkpoints.list, job_id, limit=100, after=after)
        data, pages = list(getattr(page, "data", None) or []), pages + 1
        fresh = [c for c in data if c.id not in out]
        out.update((c.id, c) for c in fresh)
        if page.has_more and (not fresh or data[-1].id == after):
            say(f"the checkpoint list of job {job_id} says has_more but adds nothing new")
            break
    return sorted(out.values(), key=lambda c: c.step_number if isinstance(c.step_number, int) else 0)


def _job_id(run: Any) -> str:
    if run.kind != "hosted":
        raise DataError(f"run {run.id} is a {run.kind} run, not a hosted job")
    if not run.external_id:
        raise DataError(f"run {run.id} has no job: it failed before the job was created ({run.error or 'no error'})")
    return run.external_id
