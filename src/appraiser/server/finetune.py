"""The OpenAI fine-tuning API (`/v1/fine_tuning/jobs*`) on top of Appraiser's own trainer.

Routes: `POST /v1/fine_tuning/jobs` (model, training_file, validation_file, suffix, seed, method.supervised
.hyperparameters or the older top-level hyperparameters, integrations, metadata); `GET /v1/fine_tuning/jobs`
(`after`, `limit`, `has_more`); `GET …/{id}`; `POST …/{id}/cancel|pause|resume`; `GET …/{id}/events`
(newest first, `after` pages toward older ones); `GET …/{id}/checkpoints`. A finished job's model
(`ft:{base}:{owner}:{suffix}:{id}`) and its checkpoints (`…:ckpt-step-N`) answer `/v1/chat/completions`
and `/v1/price` for the key that made them and are a 404 for every other key, like every job and file.

The pieces: `server.jobs` (the objects), `server.jobrunner` (validation, scheduling, control, webhooks),
`server.jobworker` (the training process), `server.webhooks` (signing).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Query, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from appraiser.server import jobs
from appraiser.server.engine import current_owner
from appraiser.server.jobrunner import JobRunner


class OwnerContext:
    """Puts the request's owner (set by `security.Guard`, which runs first) into `engine.current_owner`,
    so model lookups anywhere below a route see whose request it is."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = current_owner.set((scope.get("state") or {}).get("owner"))
        try:
            await self.app(scope, receive, send)
        finally:
            current_owner.reset(token)


def _owner(request: Request) -> str:
    return getattr(request.state, "owner", None) or "default"


def install(app: FastAPI, store: Any, pool: Any, settings: Any) -> None:
    """Add the fine-tuning routes, the owner context, the `ft:` models and a lifespan hook for the runner."""
    runner = JobRunner(store, settings)
    app.state.jobs = runner
    pool.owned.append(jobs.JobModels(store, runner.runs))
    app.add_middleware(OwnerContext)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(runner.stop)

    app.state.lifespan_hooks.append(lifespan)

    def view(job: dict[str, Any]) -> dict[str, Any]:
        return jobs.public(job, runner.runs)

    @app.post("/v1/fine_tuning/jobs")
    def create_job(request: Request, body: jobs.JobRequest) -> dict[str, Any]:
        return view(runner.create(_owner(request), body))

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        rows = [view(j) for j in store.list_jobs(_owner(request))]
        return jobs.page_after(rows, after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(request: Request, job_id: str) -> dict[str, Any]:
        return view(store.get_job(_owner(request), job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        return view(runner.cancel(_owner(request), job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(request: Request, job_id: str) -> dict[str, Any]:
        return view(runner.pause(_owner(request), job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(request: Request, job_id: str) -> dict[str, Any]:
        return view(runner.resume(_owner(request), job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(
        request: Request, job_id: str, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> dict[str, Any]:
        job = store.get_job(_owner(request), job_id)
        return jobs.page_after(jobs.job_events(runner.runs, job), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(
        request: Request, job_id: str, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> dict[str, Any]:
        job = store.get_job(_owner(request), job_id)
        return jobs.page_after(jobs.job_checkpoints(runner.runs, job), after, limit)
