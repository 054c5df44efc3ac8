"""`appraiser serve` as a real process on a loopback port, driven by the official `openai` SDK.

One server per test session (the embedded SmolLM2 loads once); two API keys configured, so every route
is also checked for its key handling. The `api` pricer and the client layer are run against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest
from conftest import KEY, OTHER_KEY

from appraiser.api import ApiClient, ApiError, resolve_endpoint
from appraiser.data.io import read_items
from appraiser.pricers.api import ApiPricer, expected_from_logprobs, messages_for
from appraiser.pricers.base import parse_price_text

MODEL = "smollm2-135m"


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0], api_key=KEY, max_retries=0, timeout=120)


def _ask(item_text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You estimate prices of items. Reply only with the price, no explanation"},
        {"role": "user", "content": f"How much does this cost?\n\n{item_text}"},
        {"role": "assistant", "content": "Price is $"},
    ]


def test_models_lists_the_embedded_model(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_continues_the_prefilled_price(client, data_dir):
    item = read_items(data_dir / "validation.jsonl", limit=1)[0]
    r = client.chat.completions.create(model=MODEL, messages=_ask(item.text[:400]), max_tokens=6, temperature=0, seed=1)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert parse_price_text("$" + choice.message.content) is not None  # it continues "Price is $" with digits


def test_stream_carries_the_same_text_as_the_plain_call(client):
    msgs = [{"role": "user", "content": "Name three colours."}]
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and len(chunks) > 3
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # with logprobs, each chunk carries its own tokens' logprobs (not all of them in the last chunk)
    ask = {"model": MODEL, "messages": msgs, "max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    plain = client.chat.completions.create(**ask)
    chunks = [c for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in plain.choices[0].logprobs.content]
    with_text = [c for c in chunks if c.choices[0].delta.content]
    assert len(with_text) > 3 and all(c.choices[0].logprobs.content for c in with_text[1:])


def test_concurrent_requests_share_forward_passes_and_answer_as_alone(client, server):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Name a fruit that starts with {c}." for c in "ABCDEF"]

    def ask(p: str) -> str:
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0
        )
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts]
    health, auth = server[0].removesuffix("/v1") + "/health", {"Authorization": f"Bearer {KEY}"}
    assert httpx2.get(health).json() == {"status": "ok"}  # without a key: liveness only
    before = httpx2.get(health, headers=auth).json()["models"][MODEL]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(ask, prompts))
    after = httpx2.get(health, headers=auth).json()["models"][MODEL]
    assert together == alone  # fp32, greedy: batching changes nothing in the answers
    assert after["chat_requests"] - before["chat_requests"] == 6
    assert after["chat_batches"] - before["chat_batches"] < 6  # some requests shared a forward pass


def test_stop_sequence_ends_the_answer_and_is_not_in_it(client):
    msgs = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert "," in text, text
    cut = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=24, temperature=0, stop=[","])
    assert cut.choices[0].message.content == text[: text.index(",")]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs_rank_the_greedy_token_first(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=_ask("Boss DS-1 Distortion guitar pedal"),
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for tok in content:
        tops = [t.logprob for t in tok.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert tok.token == tok.top_logprobs[0].token and tok.logprob == pytest.approx(tops[0])
    assert "".join(t.token for t in content) == r.choices[0].message.content
    # the expected price over the first token's alternatives lies within their range
    v = expected_from_logprobs(r.choices[0].message.content, content[0])
    if v is not None:
        rest = r.choices[0].message.content.strip()[len(content[0].token.strip()) :]
        alts = [parse_price_text(t.token.strip() + rest) for t in content[0].top_logprobs if t.token.strip().isdigit()]
        assert min(alts) <= v <= max(alts)


def test_seeded_sampling_repeats(client):
    msgs = [{"role": "user", "content": "Write a word."}]
    a, b = (
        client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=1.0, seed=7)
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


# ---------------------------------------------------------------- errors, in OpenAI's shape


def _shape(body: dict) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    assert _shape({"error": e.value.body})["code"] == "model_not_found"  # the SDK hands over the inner object


def test_keys_are_required_and_checked(server):
    base = server[0]
    r = httpx2.get(f"{base}/models")  # no key at all
    assert r.status_code == 401 and _shape(r.json())["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong-key", max_retries=0).models.list()
    assert [m.id for m in openai.OpenAI(base_url=base, api_key=OTHER_KEY).models.list()]  # the second key works
    assert httpx2.get(base.removesuffix("/v1") + "/health").status_code == 200  # health needs no key


def test_bad_requests_are_400s_never_500s(server):
    base, hdr = server[0], {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    cases = {
        "bad json": "{not json",
        "no messages": json.dumps({"model": MODEL, "messages": []}),
        "bad role": json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
        "n=2": json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}),
        "temperature 9": json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}),
        "max_tokens over the cap": json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000}
        ),
        "top_logprobs without logprobs": json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}
        ),
        "a list": json.dumps([1, 2]),
        "seed past 64 bits": json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": 2**64}
        ),
        "a lone surrogate": json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "\ud800"}]}),
        "nested past Python's stack": '{"model": "x", "messages": [], "x": ' + "[" * 3000 + "]" * 3000 + "}",
        "surrogate model": json.dumps({"model": "\ud800", "messages": [{"role": "user", "content": "x"}]}),
        "a prompt over --max-prompt-tokens": json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "price " * 2500}]}
        ),
    }
    for what, body in cases.items():
        r = httpx2.post(f"{base}/chat/completions", content=body, headers=hdr, timeout=60)
        assert r.status_code == 400, (what, r.status_code, r.text)
        _shape(r.json())
    r = httpx2.post(f"{base}/chat/completions", content="x" * 30000, headers=hdr)
    assert r.status_code == 413 and _shape(r.json())["code"] == "request_too_large"
    chunked = httpx2.post(f"{base}/chat/completions", content=iter([b"x" * 15000] * 2), headers=hdr)
    assert chunked.status_code == 413 and _shape(chunked.json())["code"] == "request_too_large"  # no Content-Length
    small = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}).encode()
    assert httpx2.post(f"{base}/chat/completions", content=iter([small[:9], small[9:]]), headers=hdr).status_code == 200
    r = httpx2.get(f"{base}/no/such/route", headers=hdr)
    assert r.status_code == 404 and _shape(r.json())
    price = json.dumps({"model": "\ud800", "items": [{"text": "a drill"}]})
    r = httpx2.post(f"{base}/price", content=price, headers=hdr)
    assert r.status_code == 400 and "model is not valid Unicode" in _shape(r.json())["message"]


def test_a_burst_past_max_waiting_gets_429s_and_the_count_comes_back(server):
    """120 requests at once against a limit of 64 waiting or running: some are told to retry (429 with
    Retry-After), none fails otherwise, and once they are answered the server takes requests again."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    hdr = {"Authorization": f"Bearer {KEY}"}

    def post(_: int) -> httpx2.Response:
        return httpx2.post(f"{server[0]}/chat/completions", json=body, headers=hdr, timeout=300)

    with ThreadPoolExecutor(120) as pool:  # they arrive faster than batches of 8 are answered
        answers = list(pool.map(post, range(120)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 429} and codes.count(200) >= 64, codes
    busy = [r for r in answers if r.status_code == 429]
    assert busy and all(r.headers["retry-after"] == "1" and _shape(r.json())["code"] for r in busy)
    assert post(0).status_code == 200


def test_failed_streams_give_their_place_back(server):
    """Streaming requests that fail before their stream begins (an unknown model, a prompt too long) give
    back their place in the count: more of them than the limit leaves the server answering, not busy."""
    hdr = {"Authorization": f"Bearer {KEY}"}
    asks = [
        {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "stream": True},
        {"model": MODEL, "messages": [{"role": "user", "content": "price " * 2500}], "stream": True},
    ]
    for i in range(70):  # the limit is 64
        r = httpx2.post(f"{server[0]}/chat/completions", json=asks[i % 2], headers=hdr, timeout=60)
        assert r.status_code in (400, 404), r.text
    ok = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    assert httpx2.post(f"{server[0]}/chat/completions", json=ok, headers=hdr, timeout=120).status_code == 200


def test_a_stream_whose_client_leaves_stops_generating(server, client):
    """The client reads the first piece of a long answer and closes the connection: the server ends that
    generation at its next token (GET /health counts it as cancelled) instead of writing on to max_tokens."""
    health = server[0].removesuffix("/v1") + "/health"

    def cancelled() -> int:
        stats = httpx2.get(health, headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()["models"]
        return stats.get(MODEL, {}).get("chat_cancelled", 0)

    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)  # loaded
    before = cancelled()
    count = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
    stream = client.chat.completions.create(model=MODEL, messages=count, max_tokens=64, temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    for _ in range(600):  # no time limit asserted: wait until the server has ended it one way or the other
        if cancelled() > before:
            break
        time.sleep(0.1)
    assert cancelled() == before + 1


def test_logs_carry_no_key_and_no_prompt(server, client):
    secret_prompt = "zebra-unicorn-secret-prompt"
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": secret_prompt}], max_tokens=1)
    httpx2.get(server[0] + "/x%0AINFO%20req_0000000000000000%20GET%20/forged%20200%201ms%00")  # a crafted path
    time.sleep(0.5)
    log = server[2].read_text()
    assert "req_" in log  # request ids are logged
    assert KEY not in log and OTHER_KEY not in log and secret_prompt not in log
    assert "\x00" not in log and not any(line.startswith("INFO req_0000000000000000") for line in log.splitlines())
    assert "/x\\nINFO req_0000000000000000" in log  # the path is logged, escaped


def test_price_route_prices_items(server):
    base, hdr = server[0], {"Authorization": f"Bearer {KEY}"}
    r = httpx2.post(
        f"{base}/price",
        json={"model": MODEL, "items": [{"text": "Boss DS-1 Distortion pedal"}, {"text": "USB-C cable, 1 m"}]},
        headers=hdr,
        timeout=180,
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and all(d["price"] > 0 for d in data)
    r = httpx2.post(f"{base}/price", json={"model": "nope", "items": [{"text": "x"}]}, headers=hdr)
    assert r.status_code == 404


# ---------------------------------------------------------------- the client layer and the api pricer


def test_api_pricer_evaluates_and_reuses_its_cache(server, data_dir, monkeypatch, tmp_path):
    from appraiser.evaluation.evaluator import evaluate
    from appraiser.evaluation.store import LeaderboardStore

    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    items = read_items(data_dir / "validation.jsonl", limit=4)
    pricer = ApiPricer(model=MODEL, base_url=server[0], key_env="TEST_SERVE_KEY", concurrency=4)
    with LeaderboardStore(tmp_path / "lb.db") as store:
        first = evaluate(pricer, items, show=False, store=store)
        assert pricer.usage()["requests"] == 4 and pricer.usage()["prompt_tokens"] > 0
        assert pricer.usage()["dollars"] == 0.0  # a local model is free in the price table
        assert sum(r.guess is not None for r in first.results) >= 3
        assert first.metrics["requests"] == 4 and first.metrics["tokens"] > 0  # recorded with the row
        assert store.get(first.run_id).metrics["tokens"] == first.metrics["tokens"]
        again = ApiPricer(model=MODEL, base_url=server[0], key_env="TEST_SERVE_KEY", concurrency=4)
        second = evaluate(again, items, show=False, store=store)
        assert again.usage()["requests"] == 0  # everything came from the cache
        assert [r.guess for r in second.results] == [r.guess for r in first.results]


def test_failed_calls_are_not_cached(server, data_dir, monkeypatch, tmp_path):
    """A refused key stops the run at its first answer (every item would be refused), and nothing of it is
    cached: with the right key the same items are all asked."""
    from appraiser.evaluation.evaluator import evaluate
    from appraiser.evaluation.store import LeaderboardStore

    items = read_items(data_dir / "validation.jsonl", limit=2)
    with LeaderboardStore(tmp_path / "lb.db") as store:
        monkeypatch.setenv("TEST_SERVE_KEY", "wrong")
        refused = ApiPricer(model=MODEL, base_url=server[0], key_env="TEST_SERVE_KEY", max_retries=0, concurrency=1)
        with pytest.raises(ApiError, match="401 invalid_api_key"):
            evaluate(refused, items, show=False, store=store, record=False)
        assert refused.usage()["requests"] == 1 and refused.usage()["failures"] == 1  # stopped at once
        monkeypatch.setenv("TEST_SERVE_KEY", KEY)
        p = ApiPricer(model=MODEL, base_url=server[0], key_env="TEST_SERVE_KEY", max_retries=0)
        evaluate(p, items, show=False, store=store, record=False)
        assert p.usage()["requests"] == 2  # the 401 was not kept as an answer


def test_a_failed_call_is_a_failed_prediction_with_its_reason(server, data_dir, monkeypatch):
    """One item the server refuses (a body past its --max-body) is that item's failure, with the server's reason;
    a refused key or an unknown model is every item's, so it stops the run with that reason instead."""
    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    item = read_items(data_dir / "validation.jsonl", limit=1)[0]
    p = ApiPricer(model=MODEL, base_url=server[0], key_env="TEST_SERVE_KEY", max_retries=0)
    assert p.predict([item])[0].price is not None  # an answer first: what follows is one item's trouble
    huge = item.model_copy(update={"id": "huge", "text": "word " * 20_000})
    pred = p.predict([huge])[0]
    assert pred.price is None and "413" in pred.raw and "request_too_large" in pred.raw
    with pytest.raises(ApiError, match="404 model_not_found"):
        ApiPricer(model="no-such-model", base_url=server[0], key_env="TEST_SERVE_KEY", max_retries=0).predict([item])
    monkeypatch.setenv("TEST_SERVE_KEY", "wrong")
    with pytest.raises(ApiError, match="401") as refused:
        ApiPricer(model=MODEL, base_url=server[0], key_env="TEST_SERVE_KEY", max_retries=0).predict([item])
    assert "wrong" not in str(refused.value)


def test_client_counts_tokens_and_raises_api_errors(server, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    c = ApiClient(resolve_endpoint(base_url=server[0], key_env="TEST_SERVE_KEY"), max_retries=0)
    r = c.chat(MODEL, [{"role": "user", "content": "hi"}], max_tokens=2)
    assert c.usage.prompt_tokens == r.usage.prompt_tokens and c.usage.requests == 1
    with pytest.raises(ApiError) as e:
        c.chat(MODEL, [{"role": "user", "content": "hi"}], max_tokens=1000)
    assert e.value.status == 400 and c.usage.failures == 1


def test_messages_are_the_courses_prompt(data_dir):
    item = read_items(data_dir / "validation.jsonl", limit=1)[0]
    msgs = messages_for(item)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"].endswith(item.text) and msgs[2]["content"] == "Price is $"
    assert str(item.price) not in msgs[1]["content"].replace(item.text, "")


# ---------------------------------------------------------------- files, batches, summaries


def test_files_belong_to_their_key(server):
    one = openai.OpenAI(base_url=server[0], api_key=KEY, max_retries=0)
    two = openai.OpenAI(base_url=server[0], api_key=OTHER_KEY, max_retries=0)
    f = one.files.create(file=("train.jsonl", b'{"a": 1}\n'), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == 9 and f.status == "processed"
    assert one.files.retrieve(f.id).filename == "train.jsonl"
    assert one.files.content(f.id).content == b'{"a": 1}\n'
    assert f.id in [x.id for x in one.files.list()]
    assert f.id not in [x.id for x in two.files.list()]  # the other key neither lists it …
    for call in (two.files.retrieve, two.files.content, two.files.delete):  # … nor reads or deletes it
        with pytest.raises(openai.NotFoundError):
            call(f.id)
    assert one.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        one.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError):
        one.files.create(file=("x.jsonl", b"{}"), purpose="no-such-purpose")


def test_a_batch_with_bad_lines_fails_and_names_them(server):
    c = openai.OpenAI(base_url=server[0], api_key=KEY, max_retries=0)
    good = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    }
    lines = [good, {**good, "custom_id": "a"}, {**good, "custom_id": "b", "url": "/v1/embeddings"}]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n{not json\n").encode()
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and [e.line for e in b.errors.data] == [2, 3, 4]
    with pytest.raises(openai.BadRequestError):  # a file uploaded for another purpose
        c.batches.create(
            input_file_id=c.files.create(file=("t.jsonl", data), purpose="fine-tune").id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )


def _summarize_client(server, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    return ApiClient(resolve_endpoint(base_url=server[0], key_env="TEST_SERVE_KEY"), concurrency=2, max_retries=0)


def test_summaries_are_parsed_from_the_real_summary_rows(data_dir):
    from appraiser.data.summaries import FIELDS, parse_summary

    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    summaries = [r["text"] for r in rows if r.get("format") == "summary"][:200]
    parsed = [parse_summary(s) for s in summaries]
    assert sum(p is not None for p in parsed) >= 0.95 * len(summaries)
    for p in filter(None, parsed):
        assert [line.split(":", 1)[0] for line in p.splitlines()] == list(FIELDS)
    assert parse_summary("Title: x\nBrand: y") is None and parse_summary("A nice pedal.") is None


@pytest.mark.slow  # the default suite's time budget; `python -m pytest -m slow` runs it
def test_summarize_plain_then_batch_against_the_server(server, data_dir, monkeypatch, tmp_path):
    """SmolLM2-135M rarely writes the five fields: what must hold is the bookkeeping. Every item is either
    written as a five-field summary or reported with its reason; a rerun asks again only for what failed;
    the batch path matches every answer back to its item by custom_id."""
    from appraiser.data.summaries import done_ids, parse_summary, summarize, summarize_batch

    items = read_items(data_dir / "validation.jsonl", limit=3)
    out = tmp_path / "summaries.jsonl"
    client = _summarize_client(server, monkeypatch)
    report = summarize(items, client, MODEL, out, max_tokens=48)
    assert report.written + len(report.failed) == 3 and client.usage.requests == 3
    assert all(reason for _, reason in report.failed)
    written = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    assert all(parse_summary(r["summary"]) == r["summary"] and r["text"] for r in written)
    again = _summarize_client(server, monkeypatch)
    report2 = summarize(items, again, MODEL, out, max_tokens=48)
    assert report2.skipped == report.written and again.usage.requests == len(report.failed)

    batch_out = tmp_path / "batch.jsonl"
    polls = []
    client = _summarize_client(server, monkeypatch)
    report = summarize_batch(
        items, client, MODEL, batch_out, max_tokens=48, poll_s=0.5, timeout_s=300, on_poll=polls.append
    )
    assert polls and polls[-1].status == "completed" and polls[-1].request_counts.total == 3
    assert report.written + len(report.failed) == 3
    assert all(why == "not a five-field summary" for _, why in report.failed)  # every answer was matched back
    assert client.usage.requests == 3 and client.usage.prompt_tokens > 0
    assert len(done_ids(batch_out)) == report.written
    assert not batch_out.with_name(batch_out.name + ".batch.json").exists()


# ---------------------------------------------------------------- the commands, end to end


def _appraiser(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
    return subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_summarize_dry_run_prices_before_sending(data_dir, tmp_path):
    r = _appraiser(
        "data",
        "summarize",
        str(data_dir / "validation.jsonl"),
        "--model",
        "gpt-4o-mini",
        "--out",
        str(tmp_path / "s.jsonl"),
        "--limit",
        "20",
        "--dry-run",
        "--batch",
    )
    assert r.returncode == 0, r.stderr
    assert "20 of 20 items" in r.stdout and "Batch API" in r.stdout and "about $0.0" in r.stdout
    assert not (tmp_path / "s.jsonl").exists()


def test_eval_api_and_summarize_batch_commands(server, data_dir, tmp_path):
    env = {"APPRAISER_HOME": str(tmp_path / "home"), "TEST_SERVE_KEY": KEY}
    r = _appraiser(
        "eval",
        "api",
        "-o",
        f"model={MODEL}",
        "-o",
        f"base_url={server[0]}",
        "-o",
        "key_env=TEST_SERVE_KEY",
        "--test",
        str(data_dir / "validation.jsonl"),
        "--size",
        "3",
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "API use" in r.stdout and "3 requests" in r.stdout
    r = _appraiser("leaderboard", env={**env, "COLUMNS": "200"})  # the label names the server: one line wide
    assert r.returncode == 0 and f"api[{MODEL},at=127.0.0.1:" in r.stdout
    out = tmp_path / "sum.jsonl"
    r = _appraiser(
        "data",
        "summarize",
        str(data_dir / "validation.jsonl"),
        "--limit",
        "2",
        "--model",
        MODEL,
        "--base-url",
        server[0],
        "--key-env",
        "TEST_SERVE_KEY",
        "--out",
        str(out),
        "--batch",
        "--poll",
        "0.5",
        "--max-tokens",
        "48",
        env=env,
    )
    # the batch went through the server's Batch API either way; SmolLM2 seldom writes the five fields a summary
    # needs, and a run that summarised nothing says so and exits 1
    said = r.stdout + r.stderr
    assert "completed" in r.stdout, said
    assert (r.returncode == 0 and "wrote" in r.stdout) or (r.returncode == 1 and "nothing was summarised" in said), said
