"""The models `appraiser serve` answers for, loaded on demand and kept warm, and text generation on them.

A model id is a packaged base model (`smollm2-135m`, `gemma3-270m` when installed) or a fine-tuned run of
the run store (its name or id: its `best/` adapter; `RUN/final` for the last one). At most `max_loaded`
models stay in memory (least recently used goes). One lock per model serialises generation on it: torch
already uses every core for one forward on a CPU, so two at once would only interleave.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from appraiser.server.errors import OpenAIError


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


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length
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

    def cards(self) -> list[ModelCard]:
        return packaged_cards() + run_cards()

    def card(self, model_id: str) -> ModelCard:
        for c in self.cards():
            if c.id == model_id:
                return c
        raise OpenAIError(
            404,
            f"The model '{model_id}' does not exist (GET /v1/models lists them).",
            code="model_not_found",
            param="model",
        )

    def get(self, model_id: str) -> Loaded:
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
        card = self.card(model_id)
        from appraiser.models import load_model

        with self._lock:  # one load at a time: two loads of a 270M model at once would only double the memory
            if model_id not in self._loaded:
                model, tokenizer = load_model(card.source, device=self.device)
                self._loaded[model_id] = Loaded(card, model, tokenizer)
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


def generate(
    lm: Loaded,
    messages: list[dict[str, str]],
    *,
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    top_logprobs: int | None = None,
    on_token: Any = None,
) -> Generation:
    """Generate a chat answer. `top_logprobs` (0–20) asks for each token's logprob and alternatives;
    `on_token(text_piece)` is called as tokens arrive (streaming). `stop` strings end the answer and are
    not part of it, as at OpenAI."""
    import torch

    tok, model = lm.tokenizer, lm.model
    ids = chat_prompt_ids(tok, messages)
    stop = [s for s in (stop or []) if s]
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    sampled = temperature > 0
    out_ids: list[int] = []
    lps: list[dict[str, Any]] = []
    text, emitted, finish = "", 0, "length"
    hold = max((len(s) for s in stop), default=0)
    with lm.lock, torch.inference_mode():
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed if seed is not None else int(time.time_ns() % (2**31)))
        input_ids = torch.tensor([ids], device=model.device)
        past = None
        for _ in range(max_tokens):
            out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            if sampled:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    sp, si = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sp, 0) - sp < top_p
                    probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
                nxt = int(torch.multinomial(probs.cpu(), 1, generator=gen))
            else:
                nxt = int(torch.argmax(logits))
            if nxt in eos:
                finish = "stop"
                break
            out_ids.append(nxt)
            if top_logprobs is not None:
                entry = _logprob_entry(tok, nxt, logp, top_logprobs)
                lps.append(entry)
            text = tok.decode(out_ids, skip_special_tokens=True)
            cut, stopped = _cut_at_stop(text, stop)
            if stopped:
                text, finish = cut, "stop"
                break
            safe = len(text) - hold
            if on_token is not None and safe > emitted and not text.endswith("\ufffd"):
                on_token(text[emitted:safe])
                emitted = safe
            input_ids = torch.tensor([[nxt]], device=model.device)
    if on_token is not None and len(text) > emitted:
        on_token(text[emitted:])
    return Generation(text, finish, len(ids), len(out_ids), lps if top_logprobs is not None else None)


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


def stream_pieces(fn: Any) -> Iterator[str]:
    """Run `fn(on_token)` in a thread and yield the pieces it reports, then its `Generation` last."""
    import queue

    q: queue.Queue[Any] = queue.Queue()
    done = object()

    def work() -> None:
        try:
            q.put(("result", fn(lambda piece: q.put(("piece", piece)))))
        except BaseException as e:  # reported to the stream, which ends with an error event
            q.put(("error", e))
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        yield item
