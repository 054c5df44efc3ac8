"""`ApiClient`: the official `openai` SDK behind our limits, with token and dollar accounting.

One client per endpoint, shared by the evaluator's worker threads (the SDK client is thread-safe). The
SDK retries 429 and 5xx with backoff and honours Retry-After (`max_retries`); what still fails becomes an
`ApiError` with the provider's own message, which a pricer turns into a failed prediction with its reason.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from appraiser.api.cost import PriceTable, load_prices
from appraiser.api.limits import RateLimiter
from appraiser.api.providers import Endpoint
from appraiser.data.io import DataError


class ApiError(DataError):
    """A call that failed after the SDK's retries: the status and the provider's message, never the key."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class Usage:
    """What a client has spent: requests, failures, tokens, dollars (None once any model was unpriced)."""

    requests: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars: float | None = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, completion_tokens: int, dollars: float | None) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.dollars = None if dollars is None or self.dollars is None else self.dollars + dollars

    def fail(self) -> None:
        with self._lock:
            self.requests += 1
            self.failures += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "dollars": self.dollars,
        }


def describe_error(e: Exception) -> ApiError:
    """An SDK exception as one line: status, error code and the server's message — with the key that was
    sent blanked out of it, since some servers echo it ("Incorrect API key provided: sk-…") and the message
    is stored with the failed prediction."""
    import openai

    if isinstance(e, openai.APIStatusError):
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
        msg = str(err.get("message") or e.message)
        code = err.get("code") or err.get("type")
        code = str(code) if code is not None else None
        out = ApiError(f"{e.status_code} {code or 'error'}: {msg}", status=e.status_code, code=code)
    elif isinstance(e, openai.APITimeoutError):
        out = ApiError("timed out", code="timeout")
    elif isinstance(e, openai.APIConnectionError):
        out = ApiError(f"cannot connect ({e.__cause__ or e})", code="connection_error")
    else:
        out = ApiError(f"{type(e).__name__}: {e}")
    secret = _sent_key(e)
    if secret and secret in str(out):
        out = ApiError(str(out).replace(secret, "[the API key]"), status=out.status, code=out.code)
    return out


def _sent_key(e: Exception) -> str | None:
    """The bearer key of the request that failed, if the exception carries the request (long enough to be one:
    the placeholder sent to key-less local servers is not worth blanking)."""
    request = getattr(e, "request", None)
    try:
        header = request.headers.get("authorization", "") if request is not None else ""
    except Exception:  # an exception raised before the request existed
        return None
    token = header.partition(" ")[2].strip()
    return token if len(token) >= 8 else None


def _blank_key(resp: Any, key: str) -> None:
    """The key, should a server echo it in an answer, never reaches a prediction, the cache or the leaderboard."""
    if len(key) < 8:  # the placeholder sent to key-less local servers
        return
    for choice in getattr(resp, "choices", None) or []:
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if isinstance(content, str) and key in content:
            message.content = content.replace(key, "[the API key]")


#: Errors no retry of another item will get past: the key, the model, the server itself. A run that meets one
#: stops (what it priced is kept in the cache) instead of recording a failure for every item.
FATAL_STATUSES = (401, 404)  # not 403: providers answer it for one blocked prompt (a content policy) too
FATAL_CODES = ("connection_error", "not_the_api")


def is_fatal(e: ApiError) -> bool:
    return e.status in FATAL_STATUSES or e.code in FATAL_CODES


def not_the_api(what: str, got: Any) -> ApiError:
    """The error for a 200 whose body is not the OpenAI API's JSON object: a web page at a base_url without
    `/v1`, a captive portal, a proxy's maintenance page. The SDK hands such bodies back as text (or a list)."""
    kind = "a web page" if isinstance(got, str) and got.lstrip()[:1] == "<" else f"a {type(got).__name__}"
    return ApiError(
        f"the server answered {what} with {kind}, not the OpenAI API's JSON (is base_url the API's, ending in /v1?)",
        code="not_the_api",
    )


def checked(result: Any, what: str) -> Any:
    """`result` of an SDK call if it is one of the SDK's objects; an ApiError (`not_the_api`) if the server
    sent something else with its 200."""
    if isinstance(result, str | bytes | list | dict | int | float) or result is None:
        raise not_the_api(what, result)
    return result


class ApiClient:
    """Chat completions (and the rest of the SDK, via `.sdk`) against one endpoint, limited and costed."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        concurrency: int = 8,
        rpm: int | None = None,
        tpm: int | None = None,
        max_retries: int = 3,
        timeout: float = 60.0,
        prices: PriceTable | None = None,
    ):
        import openai

        self.endpoint = endpoint
        self.limiter = RateLimiter(concurrency, rpm, tpm)
        self.prices = prices or load_prices()
        self.usage = Usage()
        self.sdk = openai.OpenAI(
            base_url=endpoint.base_url, api_key=endpoint.api_key(), max_retries=max_retries, timeout=timeout
        )

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> Any:
        """One chat completion (a `ChatCompletion`), counted in `usage`; `ApiError` when it fails."""
        estimate = sum(len(str(m.get("content", ""))) for m in messages) // 4 + int(params.get("max_tokens") or 0)
        with self.limiter.slot(estimate):
            try:
                resp = checked(
                    self.sdk.chat.completions.create(model=model, messages=messages, **params), "a chat call"
                )
            except ApiError:
                self.usage.fail()
                raise
            except Exception as e:  # the SDK's errors, after its own retries
                self.usage.fail()
                raise describe_error(e) from None
        _blank_key(resp, self.endpoint.api_key())
        u = getattr(resp, "usage", None)
        prompt, completion = (getattr(u, "prompt_tokens", None), getattr(u, "completion_tokens", None))
        if not all(isinstance(t, int) and t >= 0 for t in (prompt, completion)):  # absent or nonsense: unknown
            self.usage.add(0, 0, None)
        else:
            self.usage.add(prompt, completion, self.prices.cost(model, prompt, completion))
        return resp
