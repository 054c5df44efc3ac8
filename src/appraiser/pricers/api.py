"""A model behind an OpenAI-compatible API as a pricer: the course's frontier-model prompt, zero-shot.

System "You estimate prices of items. Reply only with the price, no explanation", user "How much does this
cost?\n\n{text}", and the assistant turn started with "Price is $" where the provider takes a prefill;
temperature 0 and a seed, a few output tokens, the number read by `parse_price_text`. One item per call
(`batch_size = 1`): the evaluator's worker pool supplies the concurrency, its cache means a repeated or
interrupted evaluation pays only for items it has not priced, and a failed call is a failed prediction
with its reason — never a $0 guess. An error no other item could get past (a refused key, an unknown model, a
server that cannot be reached or is not the API: `api.client.is_fatal`) stops the run instead, when no call
has succeeded yet or it comes twice in a row; what was priced stays in the cache. Once between successes it is
that item's failure: a guardrail that blocks one prompt must not stop every run at that item. An empty answer
(a refusal, a content filter) is a failure that is not cached either, so the next run asks again.

With `logprobs=true` the guess is the expected price over the first number token's alternatives (see
`expected_from_logprobs`). With `rag=K` the user turn starts with the course's frontier-agent context: the
item's K most similar training items (from `appraiser index build`'s index, or `index=FOLDER`) and their
prices (see `pricers.rag`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from appraiser.api import ApiClient, ApiError, load_prices, resolve_endpoint
from appraiser.api.client import is_fatal
from appraiser.items import Item
from appraiser.pricers.base import Prediction, Pricer, parse_price_text
from appraiser.pricers.rag import CONTEXT_INTRO, Retriever, api_context, rag_count
from appraiser.pricers.registry import register

SYSTEM = "You estimate prices of items. Reply only with the price, no explanation"
QUESTION = "How much does this cost?"
PREFILL = "Price is $"


def messages_for(item: Item, prefill: bool = True, context: str = "") -> list[dict[str, str]]:
    """The course's messages for one item (its text is what a pricer may see; never the price); `context`
    (the RAG block of similar items and their prices, see `pricers.rag.api_context`) goes before the question."""
    msgs = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{context}{QUESTION}\n\n{item.text}"},
    ]
    if prefill:
        msgs.append({"role": "assistant", "content": PREFILL})
    return msgs


def expected_from_logprobs(content: str, first: Any) -> float | None:
    """The expected price over the alternatives for the first token of the answer.

    `first` is the first generated token's logprob entry (`token`, `top_logprobs`). Each alternative that is
    all digits replaces the answer's leading digits, the rest of the answer kept ("1" + "29.99" → 129.99 for
    "129.99" read as "1","29",".99"), weighted by its probability renormalised over the numeric ones. That
    is the part of the model's uncertainty one request can show (the leading digits carry the magnitude).
    """
    lead = (first.token or "").strip().lstrip("$")
    body = content.strip().lstrip("$").replace(",", "")
    if not lead.isdigit() or not body.startswith(lead):
        return None
    rest = body[len(lead) :]
    total = value = 0.0
    for alt in first.top_logprobs or []:
        tok = (alt.token or "").strip().lstrip("$")
        if not tok.isdigit():
            continue
        guess = parse_price_text(tok + rest)
        if guess is None:
            continue
        p = math.exp(alt.logprob)
        total += p
        value += p * guess
    return value / total if total > 0 else None


@register(
    "api",
    "A model behind an OpenAI-compatible API, zero-shot with the course's prompt (-o model=… base_url=…)",
    kind="api",
    needs_fit=False,
)
class ApiPricer(Pricer):
    name: ClassVar[str] = "api"
    batch_size = 1

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        provider: str | None = None,
        base_url: str | None = None,
        key_env: str | None = None,
        seed: int = 42,
        max_tokens: int = 8,
        temperature: float = 0.0,
        prefill: bool | None = None,
        logprobs: bool = False,
        top_logprobs: int = 5,
        concurrency: int = 8,
        rpm: int | None = None,
        tpm: int | None = None,
        max_retries: int = 3,
        timeout: float = 60.0,
        prices: str | None = None,
        rag: int = 0,
        index: str | None = None,
    ):
        self.endpoint = resolve_endpoint(provider, base_url, key_env)
        self.model = str(model)
        self.seed, self.max_tokens, self.temperature = int(seed), int(max_tokens), float(temperature)
        self.prefill = self.endpoint.provider.prefill if prefill is None else bool(prefill)
        self.logprobs, self.top_logprobs = bool(logprobs), int(top_logprobs)
        if self.max_tokens < 1 or not 0 <= self.top_logprobs <= 20:
            raise ValueError("max_tokens must be at least 1 and top_logprobs between 0 and 20")
        self.concurrency = int(concurrency)
        checks = {
            "concurrency": self.concurrency >= 1,
            "rpm": rpm is None or int(rpm) >= 1,
            "tpm": tpm is None or int(tpm) >= 1,
            "max_retries": int(max_retries) >= 0,
            "timeout": float(timeout) > 0,
        }
        if bad := [k for k, ok in checks.items() if not ok]:  # checked now, not when the first call builds the client
            raise ValueError(
                f"bad {', '.join(bad)}: concurrency, rpm and tpm must be at least 1, max_retries at least 0, "
                "timeout more than 0"
            )
        self._client_args = {
            "concurrency": self.concurrency,
            "rpm": rpm,
            "tpm": tpm,
            "max_retries": int(max_retries),
            "timeout": float(timeout),
        }
        self.prices = load_prices(prices)
        self.rag = rag_count(rag, index)
        self.retriever = Retriever(index) if self.rag else None
        self._client: ApiClient | None = None
        self._lock = threading.Lock()
        self._fatal_streak, self._answered = 0, False  # see _stop_at

    def config(self) -> dict[str, Any]:
        """What makes two evaluations the same (cache key): endpoint and model, prompt, sampling. No key."""
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.endpoint.base_url,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "prefill": self.prefill,
            "logprobs": self.logprobs,
            "prompt": [SYSTEM, QUESTION, PREFILL if self.prefill else None],
            **({"rag": self.rag, **self.retriever.describe(), "context": CONTEXT_INTRO} if self.retriever else {}),
        }

    @property
    def label(self) -> str:
        """`api[MODEL]`, plus where it was asked unless that is OpenAI (`provider=NAME` at a preset's own URL,
        else `at=HOST:PORT`) and every sampling setting that differs from its default: the leaderboard keeps
        one row per label, so one model name at two servers, or at two temperatures, must be two rows."""
        from urllib.parse import urlsplit

        ep, parts = self.endpoint, [self.model]
        if ep.provider.name == "openai-compatible" or ep.base_url != ep.provider.base_url.rstrip("/"):
            url = urlsplit(ep.base_url)
            host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname or ""
            parts.append(f"at={host}" + (f":{url.port}" if url.port else ""))
        elif ep.provider.name != "openai":
            parts.append(f"provider={ep.provider.name}")
        settings = {
            "seed": (self.seed, 42),
            "max_tokens": (self.max_tokens, 8),
            "temperature": (self.temperature, 0.0),
            "prefill": (self.prefill, ep.provider.prefill),
        }
        parts += [f"{k}={v:g}" if not isinstance(v, bool) else f"{k}={v}" for k, (v, d) in settings.items() if v != d]
        parts += ["logprobs"] if self.logprobs else []
        parts += [f"rag={self.rag}"] if self.rag else []
        return f"{self.name}[{','.join(parts)}]"

    @property
    def client(self) -> ApiClient:
        with self._lock:  # the evaluator's worker threads share one client (one limiter, one usage count)
            if self._client is None:
                self._client = ApiClient(self.endpoint, prices=self.prices, **self._client_args)
            return self._client

    def usage(self) -> dict[str, Any]:
        """Requests, tokens and dollars spent by this pricer so far (the evaluator records them)."""
        from appraiser.api import Usage

        return (self._client.usage if self._client is not None else Usage()).as_dict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # a live HTTP client is not saved; the key never is
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def predict_one(self, item: Item) -> Prediction:
        context = api_context(self.retriever.neighbours([item], self.rag)[0]) if self.retriever else ""
        params: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.endpoint.provider.seed:
            params["seed"] = self.seed
        if self.logprobs and self.endpoint.provider.logprobs:
            params.update(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            resp = self.client.chat(self.model, messages_for(item, self.prefill, context), **params)
        except ApiError as e:
            if is_fatal(e) and self._stop_at(e):  # every other item would fail the same way: stop, and say why
                raise ApiError(f"{self.endpoint.base_url}: {e}", status=e.status, code=e.code) from None
            return Prediction(price=None, raw=f"error: {e}")
        with self._lock:
            self._fatal_streak, self._answered = 0, True
        if not resp.choices:
            return Prediction(price=None, raw="error: no choices in the response")
        choice = resp.choices[0]
        text = choice.message.content or ""
        if not text.strip():  # "error:": not cached, asked again next run
            return Prediction(price=None, raw=f"error: an empty answer (finish_reason {choice.finish_reason!r})")
        price = parse_price_text(text)
        if price is not None and self.logprobs and choice.logprobs is not None and choice.logprobs.content:
            price = expected_from_logprobs(text, choice.logprobs.content[0]) or price
        return Prediction(price=price, raw=text if price is not None else f"no number: {text[:80]!r}")

    def _stop_at(self, e: ApiError) -> bool:
        """Whether a fatal-looking error stops the run: before any answer, or after another one (see the module
        doc); otherwise it is one item's failure."""
        with self._lock:
            self._fatal_streak = getattr(self, "_fatal_streak", 0) + 1
            return not getattr(self, "_answered", False) or self._fatal_streak >= 2

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        return [self.predict_one(it) for it in items]
