"""Chat completions on Appraiser's models: the request body, its checks, and one complete answer.

Shared by `POST /v1/chat/completions` and by the batch runner (a batch line is the same request), so a
request means the same thing whichever way it arrives.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from appraiser.server.engine import Generation, Loaded
from appraiser.server.errors import OpenAIError, TextBody

#: max_tokens when a request names none (the price is a few tokens; chat answers want more).
DEFAULT_MAX_TOKENS = 16
#: A seed is a signed 64-bit integer, as at OpenAI (torch's generator takes no wider one).
SEED_RANGE = (-(2**63), 2**63 - 1)


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


class ChatRequest(TextBody):
    model_config = ConfigDict(extra="allow")  # the SDK sends fields we ignore (user, metadata, store …)
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])] | None = None
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


def check_chat(req: ChatRequest, settings: Any) -> None:
    """Refuse what the body's schema allows but this server does not (a 400 naming the parameter)."""
    max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
    if max_tokens > settings.max_tokens_cap:
        raise OpenAIError(
            400,
            f"max_tokens is {max_tokens}; this server allows at most {settings.max_tokens_cap}.",
            code="invalid_value",
            param="max_tokens",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise OpenAIError(400, "top_logprobs needs logprobs: true.", code="invalid_value", param="top_logprobs")


def check_context(lm: Loaded, req: ChatRequest, settings: Any) -> None:
    """Refuse a prompt that does not fit: the model's context (prompt + max_tokens), or the server's
    `max_prompt_tokens`. A CPU forward grows with the square of the prompt, and it holds the model's lock, so
    one huge prompt would stall every other client of that model. Tokenises the prompt (blocking)."""
    from appraiser.server.engine import chat_prompt_ids

    try:
        with lm.lock:  # the pricer switches the shared tokenizer's padding under this lock
            n = len(chat_prompt_ids(lm.tokenizer, chat_messages(req)))
    except Exception as e:  # e.g. a template that requires alternating roles: the messages' fault
        from jinja2 import TemplateError

        why = str(e) if isinstance(e, TemplateError) else type(e).__name__
        raise OpenAIError(400, f"The model's chat template refused these messages: {why}", param="messages") from e
    max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
    context = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0)
    if context and n + max_tokens > context:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested {n + max_tokens} "
            f"tokens ({n} in the messages, {max_tokens} in the completion). Please reduce the length of the messages "
            "or completion.",
            code="context_length_exceeded",
            param="messages",
        )
    cap = settings.max_prompt_tokens
    if cap and n > cap:
        raise OpenAIError(
            400,
            f"Your messages came to {n} tokens; this server allows at most {cap} (appraiser serve "
            "--max-prompt-tokens).",
            code="context_length_exceeded",
            param="messages",
        )


def chat_messages(req: ChatRequest) -> list[dict[str, str]]:
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]


def generation_args(req: ChatRequest) -> dict[str, Any]:
    return {
        "max_tokens": req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": req.top_p or 1.0,
        "seed": req.seed,
        "stop": req.stop,
        "top_logprobs": (req.top_logprobs or 0) if req.logprobs else None,
    }


def usage_of(g: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def complete_chat(lm: Loaded, req: ChatRequest) -> dict[str, Any]:
    """A whole `chat.completion` object (blocking: run it off the event loop)."""
    g = lm.batcher.generate(chat_messages(req), **generation_args(req))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
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
        "usage": usage_of(g),
    }
