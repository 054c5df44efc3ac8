"""`appraiser serve`: an OpenAI-compatible HTTP server for Appraiser's own models.

Routes: `GET /health`; `GET /v1/models`, `GET /v1/models/{id}`; `POST /v1/chat/completions` (non-streaming
and `stream: true` as server-sent events; `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`,
`seed`, `stop`, `logprobs` + `top_logprobs`, `stream_options.include_usage`; `usage` filled) for packaged
base models and fine-tuned runs; and Appraiser's own `POST /v1/price` (items in; price, interval and the
pricer's name out), which batches concurrent requests into one `predict` call. The official `openai` SDK
works against it unchanged: `OPENAI_BASE_URL=http://127.0.0.1:8321/v1`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from appraiser import config
from appraiser.server import dashboard, errors, finetune
from appraiser.server.batcher import PriceBatcher
from appraiser.server.batches import BatchRunner
from appraiser.server.chat import (
    ChatRequest,
    chat_messages,
    check_chat,
    check_context,
    complete_chat,
    generation_args,
    usage_of,
)
from appraiser.server.engine import ModelPool, stream_pieces
from appraiser.server.errors import OpenAIError, TextBody
from appraiser.server.security import Guard, SameOrigin
from appraiser.server.store import FILE_PURPOSES, ServerStore

DEFAULT_PORT = 8321


@dataclass
class ServerSettings:
    """What a server allows. Keys are digest → owner (see `security.key_table`)."""

    keys: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 1_000_000
    max_tokens_cap: int = 512
    max_prompt_tokens: int = 4096  # a CPU forward grows with the square of the prompt and holds the model's lock
    max_items: int = 256  # per /v1/price request
    max_loaded: int = 2
    max_waiting: int = 64  # generation requests queued or running before a 429
    device: str | None = None
    root: Path | None = None  # where files and batches live (default: <home>/server)
    # fine-tuning jobs (server.finetune)
    max_jobs: int = 1  # jobs training at once, each in its own worker process
    webhook_url: str | None = None  # where fine_tuning.job.* webhooks go
    webhook_secret: str | None = None  # whsec_... that signs them
    job_save_every: int | None = None  # checkpoint every N steps (default: once per epoch, as OpenAI)
    job_max_steps: int | None = None  # cap on a job's steps (tests, benchmarks)
    job_threads: int | None = None  # torch threads of a job's worker (default: torch's choice)
    notify: list[str] = field(default_factory=list)  # Apprise URLs told when any job ends (per job: metadata)
    allowed_hosts: list[str] | None = None  # Host header names answered (security.SameOrigin); None: any


# ---------------------------------------------------------------- request bodies


class PriceItem(BaseModel):
    text: Annotated[str, Field(min_length=1)]
    title: str | None = None
    category: str | None = None
    id: str | None = None


class BatchRequest(TextBody):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class PriceRequest(TextBody):
    model: str = "smollm2-135m"
    items: Annotated[list[PriceItem], Field(min_length=1)]


# ---------------------------------------------------------------- the app


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    store = ServerStore(settings.root or config.home() / "server")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.resume_unfinished()  # batches a killed server left unfinished
        async with contextlib.AsyncExitStack() as stack:
            for hook in app.state.lifespan_hooks:  # e.g. the fine-tuning worker: started here, stopped here
                await stack.enter_async_context(hook(app))
            yield

    app = FastAPI(
        title="Appraiser", version="0.1.0", summary="OpenAI-compatible API for Appraiser's models", lifespan=lifespan
    )
    errors.install(app)
    pool = ModelPool(settings.max_loaded, settings.device)
    batchers: dict[str, PriceBatcher] = {}
    waiting = Waiting(settings.max_waiting)
    runner = BatchRunner(store, pool, settings)
    app.state.settings, app.state.pool, app.state.batchers, app.state.store = settings, pool, batchers, store
    app.state.lifespan_hooks = []

    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        if getattr(request.state, "owner", None) is None:  # keys configured and none given: liveness only
            return {"status": "ok"}
        return {"status": "ok", "models": pool.stats()}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_obj(c) for c in pool.cards()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        return _model_obj(pool.card(model_id))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        check_chat(req, settings)
        slot = waiting.take()  # before the first await, so a burst cannot all pass the check at once
        if slot is None:
            raise OpenAIError(
                429, "The server is busy; retry shortly.", code="rate_limit_exceeded", headers={"Retry-After": "1"}
            )
        handed_over = False
        try:
            lm = await anyio.to_thread.run_sync(pool.get, req.model)
            await anyio.to_thread.run_sync(check_context, lm, req, settings)
            if not req.stream:
                return await anyio.to_thread.run_sync(complete_chat, lm, req)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            cancel = threading.Event()

            def finished() -> None:  # the response is over: sent in full, or cut off by its client
                cancel.set()  # a generation still running stops at its next token, not at max_tokens
                slot.release()

            async def client_left(_: Any) -> None:  # at once, not after the next piece of text
                cancel.set()

            stream = _chat_stream(lm, req, include_usage, cancel, finished)
            response = EventSourceResponse(
                stream, ping=15, background=BackgroundTask(finished), client_close_handler_callable=client_left
            )
            handed_over = True
            return response
        finally:
            if not handed_over:  # an answer, an error, or a client gone before its stream began
                slot.release()

    # ------------------------------------------------------------ files and batches

    @app.post("/v1/files")
    async def upload_file(request: Request, file: UploadFile, purpose: Annotated[str, Form()]) -> dict[str, Any]:
        if purpose not in FILE_PURPOSES:
            raise OpenAIError(
                400, f"purpose must be one of {', '.join(FILE_PURPOSES)}", code="invalid_value", param="purpose"
            )
        data = await file.read()
        return store.add_file(_owner(request), file.filename or "upload", purpose, data)

    @app.get("/v1/files")
    def list_files(
        request: Request,
        purpose: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> dict[str, Any]:
        rows = store.list_files(_owner(request), purpose, limit + 1, after, order)
        return _page(rows, limit)

    @app.get("/v1/files/{file_id}")
    def get_file(request: Request, file_id: str) -> dict[str, Any]:
        return store.get_file(_owner(request), file_id)

    @app.get("/v1/files/{file_id}/content")
    def file_content(request: Request, file_id: str) -> Response:
        return Response(store.read_file(_owner(request), file_id), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    def delete_file(request: Request, file_id: str) -> dict[str, Any]:
        return store.delete_file(_owner(request), file_id)

    @app.post("/v1/batches")
    def create_batch(request: Request, body: BatchRequest) -> dict[str, Any]:
        return runner.create(_owner(request), body.input_file_id, body.endpoint, body.completion_window, body.metadata)

    @app.get("/v1/batches")
    def list_batches(
        request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
    ) -> dict[str, Any]:
        rows = store.list_batches(_owner(request))
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        return _page(rows[: limit + 1], limit)

    @app.get("/v1/batches/{batch_id}")
    def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
        return store.get_batch(_owner(request), batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
        return runner.cancel(_owner(request), batch_id)

    @app.post("/v1/price")
    async def price(req: PriceRequest) -> dict[str, Any]:
        if len(req.items) > settings.max_items:
            raise OpenAIError(
                400,
                f"{len(req.items)} items; at most {settings.max_items} per request.",
                code="invalid_value",
                param="items",
            )
        if req.model.startswith("ft:"):  # another key's fine-tuned model is a 404, even when it is loaded
            await anyio.to_thread.run_sync(pool.card, req.model)
        batcher = batchers.get(req.model)
        if batcher is None:
            pricer, lock = await anyio.to_thread.run_sync(_pricer_for, pool, req.model)
            batcher = batchers.setdefault(req.model, PriceBatcher(pricer, lock=lock))
        from appraiser.items import Item

        items = [
            Item(id=p.id or f"item-{i}", title=p.title, category=p.category, text=p.text, price=1.0)
            for i, p in enumerate(req.items)
        ]
        preds = await batcher.price(items)
        return {
            "object": "list",
            "model": req.model,
            "pricer": batcher.pricer.label,
            "data": [
                {
                    "index": i,
                    "id": it.id,
                    "price": p.price,
                    "low": p.low,
                    "high": p.high,
                    "error": p.raw if p.price is None else None,
                }
                for i, (it, p) in enumerate(zip(items, preds, strict=True))
            ],
        }

    finetune.install(app, store, pool, settings)  # /v1/fine_tuning/jobs*
    dashboard.install(app, store, pool, settings)  # the web dashboard

    return _guarded(app, settings)


def _guarded(app: FastAPI, settings: ServerSettings) -> Any:
    # added first, so it runs inside Guard: its refusals are logged with a request id, and keys are still
    # checked before anything else
    app.add_middleware(SameOrigin, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(Guard, keys=settings.keys, max_body_bytes=settings.max_body_bytes)
    return app


def _owner(request: Request) -> str:
    return getattr(request.state, "owner", "default")


def _page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    from appraiser.server.jobs import page_after  # one OpenAI list page shape for files, batches and jobs

    return page_after(rows, None, limit)


def _model_obj(card: Any) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": card.owned_by}


class Waiting:
    """Generation requests waiting or running, at most `limit`: a place is taken before a request's first
    await and given back exactly once (from the event loop or a worker thread, hence the lock)."""

    def __init__(self, limit: int):
        self.limit, self.n, self._lock = limit, 0, threading.Lock()

    def take(self) -> _Slot | None:
        with self._lock:
            if self.n >= self.limit:
                return None
            self.n += 1
        return _Slot(self)

    def _give_back(self) -> None:
        with self._lock:
            self.n -= 1


class _Slot:
    """One request's place in `Waiting`; `release` is safe to call more than once."""

    def __init__(self, waiting: Waiting):
        self._waiting: Waiting | None = waiting
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting._give_back()


def _chat_stream(lm: Any, req: ChatRequest, include_usage: bool, cancel: threading.Event, finished: Any) -> Any:
    """SSE events: a role chunk, content chunks as tokens arrive, a finish chunk, usage, then [DONE]."""
    cid, created, kwargs = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), generation_args(req)
    messages = chat_messages(req)

    def chunk(
        delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, usage: Any = None, choices: bool = True
    ) -> str:
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "system_fingerprint": "appraiser",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}] if choices else [],
        }
        if include_usage:
            body["usage"] = usage
        return json.dumps(body)

    def answer(on_token: Any, cancel: Any) -> Any:
        return lm.batcher.generate(messages, on_token=on_token, cancel=cancel, **kwargs)

    pieces = stream_pieces(answer, cancel)
    try:
        yield {"data": chunk({"role": "assistant", "content": ""})}
        sent = 0  # logprob entries already streamed with their pieces
        for kind, value in pieces:
            if kind == "piece":
                text, logprobs = value
                lp = {"content": logprobs, "refusal": None} if logprobs is not None else None
                sent += len(logprobs or [])
                yield {"data": chunk({"content": text}, logprobs=lp)}
            elif kind == "result":
                lp = {"content": value.logprobs[sent:], "refusal": None} if value.logprobs is not None else None
                yield {"data": chunk({}, value.finish_reason, lp)}
                if include_usage:
                    yield {"data": chunk({}, usage=usage_of(value), choices=False)}
            else:
                err = errors.error_body(500, f"generation failed: {type(value).__name__}")
                yield {"data": json.dumps(err)}
                return
        yield {"data": "[DONE]"}
    finally:  # `finished` also runs after the response; here it covers a response that raised instead
        pieces.close()
        finished()


def _pricer_for(pool: ModelPool, model: str) -> tuple[Any, Any]:
    """(pricer, lock) that `/v1/price` uses for `model`: a saved fitted pricer (`<home>/models/NAME.pkl`), or
    a local LLM on the pool's own copy of the model (a packaged model, or a run: read by its head when it has
    one), sharing that model's lock with chat completions."""
    from appraiser.pricers.base import Pricer
    from appraiser.pricers.llm import LLMPricer

    saved = config.home() / "models" / f"{model}.pkl"
    if "/" not in model and saved.exists():
        return Pricer.load(saved), None
    lm = pool.get(model)
    return LLMPricer(model=lm.card.source).use_model(lm.model, lm.tokenizer), lm.lock
