"""`appraiser serve`: an OpenAI-compatible HTTP server for Appraiser's own models.

Routes: `GET /health`; `GET /v1/models`, `GET /v1/models/{id}`; `POST /v1/chat/completions` (non-streaming
and `stream: true` as server-sent events; `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`,
`seed`, `stop`, `logprobs` + `top_logprobs`, `stream_options.include_usage`; `usage` filled) for packaged
base models and fine-tuned runs; and Appraiser's own `POST /v1/price` (items in; price, interval and the
pricer's name out), which batches concurrent requests into one `predict` call. The official `openai` SDK
works against it unchanged: `OPENAI_BASE_URL=http://127.0.0.1:8321/v1`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette.sse import EventSourceResponse

from appraiser.server import errors
from appraiser.server.batcher import PriceBatcher
from appraiser.server.engine import ModelPool, generate, stream_pieces
from appraiser.server.errors import OpenAIError
from appraiser.server.security import Guard

DEFAULT_PORT = 8321


@dataclass
class ServerSettings:
    """What a server allows. Keys are digest → owner (see `security.key_table`)."""

    keys: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 1_000_000
    max_tokens_cap: int = 512
    max_items: int = 256  # per /v1/price request
    max_loaded: int = 2
    max_waiting: int = 64  # generation requests queued or running before a 429
    device: str | None = None


# ---------------------------------------------------------------- request bodies


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type", "text") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the SDK sends fields we ignore (user, metadata, store …)
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v


class PriceItem(BaseModel):
    text: Annotated[str, Field(min_length=1)]
    title: str | None = None
    category: str | None = None
    id: str | None = None


class PriceRequest(BaseModel):
    model: str = "smollm2-135m"
    items: Annotated[list[PriceItem], Field(min_length=1)]


# ---------------------------------------------------------------- the app


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    app = FastAPI(title="Appraiser", version="0.1.0", summary="OpenAI-compatible API for Appraiser's models")
    errors.install(app)
    pool = ModelPool(settings.max_loaded, settings.device)
    batchers: dict[str, PriceBatcher] = {}
    waiting = {"n": 0}
    app.state.settings, app.state.pool, app.state.batchers = settings, pool, batchers

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "loaded": list(pool._loaded)}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_obj(c) for c in pool.cards()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        return _model_obj(pool.card(model_id))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Any:
        max_tokens = req.max_completion_tokens or req.max_tokens or 16
        if max_tokens > settings.max_tokens_cap:
            raise OpenAIError(
                400,
                f"max_tokens is {max_tokens}; this server allows at most {settings.max_tokens_cap}.",
                code="invalid_value",
                param="max_tokens",
            )
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true.", code="invalid_value", param="top_logprobs")
        if waiting["n"] >= settings.max_waiting:
            raise OpenAIError(
                429, "The server is busy; retry shortly.", code="rate_limit_exceeded", headers={"Retry-After": "1"}
            )
        lm = await anyio.to_thread.run_sync(pool.get, req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        kwargs = dict(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=req.top_p or 1.0,
            seed=req.seed,
            stop=req.stop,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        )
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(
                _chat_stream(lm, messages, kwargs, cid, created, req.model, include_usage, waiting),
                ping=15,
            )
        waiting["n"] += 1
        try:
            g = await anyio.to_thread.run_sync(lambda: generate(lm, messages, **kwargs))
        finally:
            waiting["n"] -= 1
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "system_fingerprint": "appraiser",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": g.text, "refusal": None},
                    "logprobs": {"content": g.logprobs, "refusal": None} if g.logprobs is not None else None,
                    "finish_reason": g.finish_reason,
                }
            ],
            "usage": _usage(g),
        }

    @app.post("/v1/price")
    async def price(req: PriceRequest) -> dict[str, Any]:
        if len(req.items) > settings.max_items:
            raise OpenAIError(
                400,
                f"{len(req.items)} items; at most {settings.max_items} per request.",
                code="invalid_value",
                param="items",
            )
        batcher = batchers.get(req.model)
        if batcher is None:
            pricer = await anyio.to_thread.run_sync(_pricer_for, pool, req.model)
            batcher = batchers.setdefault(req.model, PriceBatcher(pricer))
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

    return _guarded(app, settings)


def _guarded(app: FastAPI, settings: ServerSettings) -> Any:
    app.add_middleware(Guard, keys=settings.keys, max_body_bytes=settings.max_body_bytes)
    return app


def _model_obj(card: Any) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": card.owned_by}


def _usage(g: Any) -> dict[str, int]:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def _chat_stream(
    lm: Any,
    messages: list[dict[str, str]],
    kwargs: dict[str, Any],
    cid: str,
    created: int,
    model: str,
    include_usage: bool,
    waiting: dict[str, int],
) -> Any:
    """SSE events: a role chunk, content chunks as tokens arrive, a finish chunk, usage, then [DONE]."""

    def chunk(
        delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, usage: Any = None, choices: bool = True
    ) -> str:
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "appraiser",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}] if choices else [],
        }
        if include_usage:
            body["usage"] = usage
        return json.dumps(body)

    waiting["n"] += 1
    try:
        yield {"data": chunk({"role": "assistant", "content": ""})}
        for kind, value in stream_pieces(lambda on_token: generate(lm, messages, on_token=on_token, **kwargs)):
            if kind == "piece":
                yield {"data": chunk({"content": value})}
            elif kind == "result":
                lp = {"content": value.logprobs, "refusal": None} if value.logprobs is not None else None
                yield {"data": chunk({}, value.finish_reason, lp)}
                if include_usage:
                    yield {"data": chunk({}, usage=_usage(value), choices=False)}
            else:
                err = errors.error_body(500, f"generation failed: {type(value).__name__}")
                yield {"data": json.dumps(err)}
                return
        yield {"data": "[DONE]"}
    finally:
        waiting["n"] -= 1


def _pricer_for(pool: ModelPool, model: str) -> Any:
    """The pricer `/v1/price` uses for `model`: a saved fitted pricer (`<home>/models/NAME.pkl`), or a
    local LLM (a packaged model, or a run: read by its head when it has one)."""
    from appraiser import config
    from appraiser.pricers.base import Pricer
    from appraiser.pricers.llm import LLMPricer

    saved = config.home() / "models" / f"{model}.pkl"
    if "/" not in model and saved.exists():
        return Pricer.load(saved)
    card = pool.card(model)
    return LLMPricer(model=card.source)
