"""The models `appraiser serve` answers for, loaded on demand and kept warm, and text generation on them.

A model id is a packaged base model (`smollm2-135m`, `gemma3-270m` when installed) or a fine-tuned run of
the run store (its name or id: its `best/` adapter; `RUN/final` for the last one), or a model of the
fine-tuning API (`ft:…`, `ft:…:ckpt-step-N`), which only the API key owner whose job made it can see: the
owner of the request in progress is `current_owner` (set per request by `server.finetune`), and an
`ft:` id of someone else is a 404 like one that does not exist. At most `max_loaded`
models stay in memory (least recently used goes). One lock per model serialises generation on it: torch
already uses every core for one forward on a CPU, so two at once would only interleave.
"""

from __future__ import annotations

import collections
import contextvars
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from appraiser.server.errors import OpenAIError

#: The API key owner of the request being answered (None outside a request).
current_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("appraiser_owner", default=None)

OWNED_PREFIX = "ft:"


class OwnedModels(Protocol):
    """Models that belong to one owner (the fine-tuning jobs' models)."""

    def cards(self, owner: str | None) -> list[ModelCard]: ...

    def card(self, model_id: str, owner: str | None) -> ModelCard | None: ...


@dataclass
class ModelCard:
    id: str
    created: int
    owned_by: str
    source: str  # what `models.load_model` takes: a packaged name or an adapter folder


@dataclass
class Loaded:
    card: ModelCard
    model: Any
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: Any = None  # its ChatBatcher


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length (| cancelled: its stream's client went away)
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None


def packaged_cards() -> list[ModelCard]:
    from appraiser.models import PACKAGED, package_dir

    return [
        ModelCard(name, 0, "appraiser", name) for name, pm in PACKAGED.items() if package_dir(pm.package) is not None
    ]


def run_cards() -> list[ModelCard]:
    """Every run of the store with an adapter on disk, named by its name (or id), plus `NAME/final`."""
    from appraiser import config
    from appraiser.models import find_adapter
    from appraiser.runs.store import RunStore

    if not (config.home() / "runs.db").exists():
        return []
    cards = []
    for run in RunStore().list():
        if run.folder is None:
            continue
        best = find_adapter(run.folder)
        if best is None:
            continue
        name = run.name or run.id
        cards.append(ModelCard(name, int(run.created), "appraiser-runs", str(best)))
        final = run.folder / "final"
        if (final / "adapter_config.json").exists() and final != best:
            cards.append(ModelCard(f"{name}/final", int(run.created), "appraiser-runs", str(final)))
    return cards


class ModelPool:
    """Model ids → loaded (model, tokenizer), on demand, least recently used evicted."""

    def __init__(self, max_loaded: int = 2, device: str | None = None):
        self.max_loaded, self.device = max_loaded, device
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.owned: list[OwnedModels] = []  # e.g. server.jobs: `ft:` models, each visible to its owner only

    def cards(self) -> list[ModelCard]:
        owner = current_owner.get()
        return packaged_cards() + run_cards() + [c for o in self.owned for c in o.cards(owner)]

    def stats(self) -> dict[str, dict[str, int]]:
        """Loaded models and how their chat requests were batched."""
        with self._lock:
            stats = {
                k: {
                    "chat_requests": v.batcher.requests,
                    "chat_batches": v.batcher.batches,
                    "chat_cancelled": v.batcher.cancelled,
                }
                for k, v in self._loaded.items()
            }
        return {k: v for k, v in stats.items() if self._visible(k)}  # another key's ft: model stays unseen

    def _visible(self, model_id: str) -> bool:
        if not model_id.startswith(OWNED_PREFIX):
            return True
        try:
            self.card(model_id)
        except OpenAIError:
            return False
        return True

    def card(self, model_id: str) -> ModelCard:
        if model_id.startswith(OWNED_PREFIX):  # straight to their owner's models: no scan of the run store
            owner = current_owner.get()
            for o in self.owned:
                found = o.card(model_id, owner)
                if found is not None:
                    return found
        else:
            for c in packaged_cards() + run_cards():
                if c.id == model_id:
                    return c
        raise OpenAIError(
            404,
            f"The model '{model_id}' does not exist (GET /v1/models lists them).",
            code="model_not_found",
            param="model",
        )

    def get(self, model_id: str) -> Loaded:
        if model_id.startswith(OWNED_PREFIX):
            self.card(model_id)  # loaded for one owner is still a 404 for every other
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
        card = self.card(model_id)
        from appraiser.models import load_model

        with self._lock:  # one load at a time: two loads of a 270M model at once would only double the memory
            if model_id not in self._loaded:
                model, tokenizer = load_model(card.source, device=self.device)
                loaded = Loaded(card, model, tokenizer)
                loaded.batcher = ChatBatcher(loaded)  # concurrent chat requests share its forward passes
                self._loaded[model_id] = loaded
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
            return self._loaded[model_id]


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation; a trailing assistant message is continued, not answered anew
    (that is how "Price is $" pre-fills the answer)."""
    continue_final = bool(messages) and messages[-1]["role"] == "assistant"
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
            tokenize=True,
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages)
    return tokenizer.encode(text)


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass
class GenRequest:
    """One chat request's decoding state inside a batch."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    top_logprobs: int | None = None
    on_token: Any = None
    cancel: Any = None  # a threading.Event: once set, the request ends at its next token (finish "cancelled")
    # filled while decoding
    ids: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    logprobs_sent: int = 0
    finish: str | None = None


def generate(lm: Loaded, messages: list[dict[str, str]], **params: Any) -> Generation:
    """Generate one chat answer (see `generate_batch` for the parameters)."""
    return generate_batch(lm, [GenRequest(messages, **params)])[0]


def generate_batch(lm: Loaded, reqs: list[GenRequest]) -> list[Generation]:
    """Answer several chat requests in one batched forward per token (left-padded prompts, one KV cache).

    Each request keeps its own sampling (`temperature`, `top_p`, a seeded generator), `stop` strings (they end
    the answer and are not part of it, as at OpenAI), `max_tokens`, `top_logprobs` (0–20: each token's
    logprob and its alternatives) and `on_token(text_piece, logprobs_since_the_last_piece)` for streaming. A
    finished request's row is fed padding until the longest one ends; its answer is already complete. In fp32
    a request's greedy answer is the same alone or in a batch.
    """
    import torch

    tok, model = lm.tokenizer, lm.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for r in reqs:  # decoding starts afresh (a request retried alone after a failed batch carries its state)
        r.out_ids, r.logprobs, r.text, r.emitted, r.logprobs_sent, r.finish = [], [], "", 0, 0, None
    with lm.lock:  # the pricer switches the shared tokenizer's padding under this lock
        for r in reqs:
            r.ids = chat_prompt_ids(tok, r.messages)
            r.stop = [x for x in (r.stop or []) if x]
    width = max(len(r.ids) for r in reqs)
    dev = model.device
    input_ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in reqs], device=dev)
    mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in reqs], device=dev)
    gens = []
    for r in reqs:
        g = torch.Generator(device="cpu")
        g.manual_seed(r.seed if r.seed is not None else int(time.time_ns() % (2**31)))
        gens.append(g)
    with lm.lock, torch.inference_mode():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1
        )
        for _ in range(max(r.max_tokens for r in reqs)):
            logits = out.logits[:, -1].float()
            nxt = []
            for i, r in enumerate(reqs):
                if r.finish is None and r.cancel is not None and r.cancel.is_set():
                    r.finish = "cancelled"  # nobody is reading it any more
                if r.finish is not None:
                    nxt.append(pad)
                    continue
                token = _pick(logits[i], r, gens[i])
                nxt.append(token)
                _advance(tok, r, token, logits[i], eos)
            if all(r.finish is not None for r in reqs):
                break
            mask = torch.cat([mask, mask.new_ones((len(reqs), 1))], dim=1)
            step = torch.tensor([[t] for t in nxt], device=dev)
            out = model(
                input_ids=step,
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                past_key_values=out.past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )
    results = []
    for r in reqs:
        if r.finish is None:
            r.finish = "length"
        if r.on_token is not None and len(r.text) > r.emitted:
            _emit(r, r.text[r.emitted :])
        results.append(
            Generation(r.text, r.finish, len(r.ids), len(r.out_ids), r.logprobs if r.top_logprobs is not None else None)
        )
    return results


def _pick(logits: Any, r: GenRequest, gen: Any) -> int:
    import torch

    if r.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / r.temperature, dim=-1)
    if r.top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < r.top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _advance(tok: Any, r: GenRequest, token: int, logits: Any, eos: set[int]) -> None:
    """Add `token` to `r`: EOS, a stop string or `max_tokens` finish it; safe text is streamed."""
    import torch

    if token in eos:
        r.finish = "stop"
        return
    r.out_ids.append(token)
    if r.top_logprobs is not None:
        r.logprobs.append(_logprob_entry(tok, token, torch.log_softmax(logits, dim=-1), r.top_logprobs))
    text = tok.decode(r.out_ids, skip_special_tokens=True)
    cut, stopped = _cut_at_stop(text, r.stop or [])
    if stopped:
        r.text, r.finish = cut, "stop"
        return
    r.text = text
    safe = len(text) - max((len(x) for x in r.stop or []), default=0)
    if r.on_token is not None and safe > r.emitted and not text.endswith("\ufffd"):
        _emit(r, text[r.emitted : safe])
        r.emitted = safe
    if len(r.out_ids) >= r.max_tokens:
        r.finish = "length"


def _emit(r: GenRequest, piece: str) -> None:
    """Stream a piece of text with the logprobs of the tokens written since the last piece (None when the
    request asked for none), as OpenAI's chunks carry them: a client sums the chunks to get the whole answer."""
    logprobs = None
    if r.top_logprobs is not None:
        logprobs, r.logprobs_sent = r.logprobs[r.logprobs_sent :], len(r.logprobs)
    r.on_token(piece, logprobs)


class ChatBatcher:
    """Concurrent chat requests for one model become one `generate_batch` (up to `max_batch`, gathered
    for `wait_s`), from a worker thread; callers block on their own answer."""

    def __init__(self, lm: Loaded, max_batch: int = 8, wait_s: float = 0.005):
        import queue

        self.lm, self.max_batch, self.wait_s = lm, max_batch, wait_s
        self._queue: queue.Queue[tuple[GenRequest, Any]] = queue.Queue()
        # forward loops run, requests answered, and answers cut short because their stream's client went away
        self.batches = self.requests = self.cancelled = 0  # (GET /health shows them)
        threading.Thread(target=self._work, name=f"chat-{lm.card.id}", daemon=True).start()

    def generate(self, messages: list[dict[str, str]], **params: Any) -> Generation:
        from concurrent.futures import Future

        fut: Future[Generation] = Future()
        self._queue.put((GenRequest(messages, **params), fut))
        return fut.result()

    def _work(self) -> None:
        import queue

        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batches += 1
            self.requests += len(batch)
            try:
                results = generate_batch(self.lm, [r for r, _ in batch])
            except Exception as e:
                if len(batch) == 1:
                    batch[0][1].set_exception(e)
                    continue
                # one bad request must not fail the others it was batched with: answer each alone
                for r, fut in batch:
                    if r.emitted:  # its client already has part of an answer: do not send it twice
                        fut.set_exception(e)
                        continue
                    if r.cancel is not None and r.cancel.is_set():  # nobody is waiting for it any more
                        fut.set_exception(e)
                        continue
                    try:
                        fut.set_result(generate_batch(self.lm, [r])[0])
                    except Exception as alone:
                        fut.set_exception(alone)
                continue
            self.cancelled += sum(res.finish_reason == "cancelled" for res in results)
            for (_, fut), res in zip(batch, results, strict=True):
                fut.set_result(res)


def _logprob_entry(tok: Any, token_id: int, logp: Any, k: int) -> dict[str, Any]:
    import torch

    def piece(i: int) -> dict[str, Any]:
        s = tok.decode([i])
        return {"token": s, "logprob": _finite(float(logp[i])), "bytes": list(s.encode("utf-8"))}

    entry = piece(token_id)
    top = torch.topk(logp, k).indices.tolist() if k > 0 else []
    entry["top_logprobs"] = [piece(i) for i in top]
    return entry


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0


def stream_pieces(fn: Any, cancel: threading.Event | None = None) -> Iterator[str]:
    """Run `fn(on_token, cancel)` in a thread and yield what it reports: ("piece", (text, logprobs)) as
    tokens arrive, then ("result", its `Generation`) or ("error", the exception).
    `cancel` (a `threading.Event` the generation checks at every token; the caller may hold it too) is set when
    the iterator is closed, so an abandoned stream stops using the model instead of running to max_tokens. A
    server sets it itself once the response ends: an iterator left behind by a disconnected client is only
    closed when the garbage collector gets to it."""
    import queue

    q: queue.Queue[Any] = queue.Queue()
    done = object()
    cancel = cancel or threading.Event()

    def work() -> None:
        try:
            q.put(("result", fn(lambda piece, logprobs=None: q.put(("piece", (piece, logprobs))), cancel)))
        except BaseException as e:  # reported to the stream, which ends with an error event
            q.put(("error", e))
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    try:
        while (item := q.get()) is not done:
            yield item
    finally:
        cancel.set()
