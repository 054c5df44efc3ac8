"""The server's generation engine in-process on the real SmolLM2: a request that fails inside a shared batch
fails alone, and a stream whose client went away stops generating."""

from __future__ import annotations

import threading

import pytest

from appraiser.models import load_model
from appraiser.server.engine import ChatBatcher, Loaded, ModelCard, stream_pieces

ASK = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def lm(one_thread_module):
    model, tok = load_model("smollm2-135m", device="cpu")
    loaded = Loaded(ModelCard("smollm2-135m", 0, "appraiser", "smollm2-135m"), model, tok)
    loaded.batcher = ChatBatcher(loaded, wait_s=1.0)  # a whole second to gather: the two requests share a batch
    return loaded


def test_a_request_that_breaks_the_batch_fails_alone(lm):
    """A seed torch cannot take (the HTTP route refuses it; a library caller may not) fails its own request;
    the request batched with it still gets the answer it gets alone."""
    results: dict[str, object] = {}

    def ask(name: str, seed: int) -> None:
        try:
            results[name] = lm.batcher.generate(ASK, max_tokens=4, temperature=0.0, seed=seed)
        except Exception as e:  # noqa: BLE001 - the failure is what is checked
            results[name] = e

    before = lm.batcher.batches
    threads = [threading.Thread(target=ask, args=("bad", 2**70)), threading.Thread(target=ask, args=("good", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert lm.batcher.batches == before + 1  # they were gathered into one batch
    assert isinstance(results["bad"], (ValueError, RuntimeError, OverflowError)), results["bad"]
    alone = lm.batcher.generate(ASK, max_tokens=4, temperature=0.0, seed=1)
    assert results["good"].text == alone.text and results["good"].completion_tokens == 4


def test_closing_a_stream_stops_its_generation(lm):
    """The client of a stream goes away after the first piece: generation ends at the next token, not at
    max_tokens, so the model is free for the others."""
    finished: list = []

    def answer(on_token, cancel):
        g = lm.batcher.generate(ASK, max_tokens=200, temperature=0.0, on_token=on_token, cancel=cancel)
        finished.append(g)
        return g

    pieces = stream_pieces(answer)
    kind, _ = next(pieces)
    assert kind == "piece"
    pieces.close()  # what the response does when its client disconnects
    for _ in range(600):
        if finished:
            break
        threading.Event().wait(0.1)
    assert finished and finished[0].finish_reason == "cancelled"
    assert finished[0].completion_tokens < 20


def test_a_price_request_that_breaks_the_batch_fails_alone():
    """/v1/price gathers concurrent requests into one predict call; if that call fails, each request is
    priced alone, so only the one that breaks it gets the error."""
    import asyncio

    from appraiser.items import Item
    from appraiser.pricers.base import Prediction, Pricer
    from appraiser.server.batcher import PriceBatcher

    class Picky(Pricer):  # a pricer that cannot price one kind of item
        name = "picky"

        def predict(self, items):
            if any(it.text == "unpriceable" for it in items):
                raise ValueError("cannot price that")
            return [Prediction(price=float(len(it.text))) for it in items]

    async def both():
        batcher = PriceBatcher(Picky(), wait_s=0.5)
        good = batcher.price([Item(id="a", text="a drill", price=1.0)])
        bad = batcher.price([Item(id="b", text="unpriceable", price=1.0)])
        return await asyncio.gather(good, bad, return_exceptions=True), batcher.calls

    (good, bad), calls = asyncio.run(both())
    assert calls == 1  # one gathered call, which failed; then each request alone
    assert [p.price for p in good] == [7.0] and isinstance(bad, ValueError)


def test_the_context_is_checked_against_the_model(lm):
    """Past the model's own context (SmolLM2: 8,192 tokens, prompt + max_tokens), whatever the server's cap:
    OpenAI's 400 `context_length_exceeded`, before any generation."""
    from types import SimpleNamespace

    from appraiser.server.chat import ChatRequest, check_context
    from appraiser.server.errors import OpenAIError

    no_cap = SimpleNamespace(max_prompt_tokens=None)
    check_context(lm, ChatRequest(model="smollm2-135m", messages=ASK, max_tokens=10), no_cap)
    long = ChatRequest(model="smollm2-135m", messages=[{"role": "user", "content": "price " * 8300}], max_tokens=10)
    with pytest.raises(OpenAIError) as e:
        check_context(lm, long, no_cap)
    assert e.value.status == 400 and e.value.code == "context_length_exceeded" and "8192 tokens" in e.value.message
    with pytest.raises(OpenAIError) as e:
        check_context(lm, ChatRequest(model="smollm2-135m", messages=ASK), SimpleNamespace(max_prompt_tokens=5))
    assert "at most 5" in e.value.message
