"""What `appraiser serve` costs on top of the library, and what its request batching buys.

Starts `appraiser serve` as a real process on a loopback port, then measures each pair side by side,
interleaved, so that the shared machine's drift hits both sides alike:

1. `/v1/price` at concurrency 1 (one item per request) against the library's own one-item call
   (`LLMPricer.predict([item])` in this process), item by item in turn: per-item time, p50/p99 latency
   (target: the server adds ≤ 10%).
2. `/v1/price` at concurrency 8 and 32 (one item per request, as clients send them) against the library's
   batched call on the same items (`LLMPricer.predict(items)`, batch 16), round by round: items/s
   (target at 8: ≥ 80% of the library's, because the server batches concurrent requests).
3. Chat completions, greedy, `--chat-tokens` tokens, against a direct `model.generate`, prompt by prompt:
   tokens/s; then 8 concurrent chat requests (the server batches them into one forward per token).

    python benchmarks/serve.py [--n 48] [--rounds 3] [--model smollm2-135m] [--chat-tokens 32]

Run it on an idle machine: the server and this process share the CPU, one at a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

from appraiser.data.io import read_items
from appraiser.pricers.llm import LLMPricer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = shutil.which("appraiser") or str(Path(sys.executable).parent / "appraiser")
    log = open(home / "serve.log", "w")
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "APPRAISER_HOME": str(home)},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx2.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx2.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {(home / 'serve.log').read_text()}")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--chat-tokens", type=int, default=32)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    items = read_items(args.data / "validation.jsonl", limit=args.n)
    payload = [{"text": it.text, "title": it.title, "category": it.category} for it in items]
    lib = LLMPricer(model=args.model)
    lib.predict(items[:2])  # load and warm up
    model, tok = lib.model_and_tokenizer()
    print(f"{args.model}, {model.dtype}, {torch.get_num_threads()} threads, {len(items)} validation items")

    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(Path(tmp))
        client = httpx2.Client(timeout=600)

        def price(batch: list[dict]) -> None:
            client.post(f"{base}/v1/price", json={"model": args.model, "items": batch}).raise_for_status()

        try:
            price(payload[:2])  # the server loads and warms up too
            # 1. concurrency 1 vs the library's one-item call, item by item
            lib_t, srv_t = [], []
            for it, p in zip(items, payload, strict=True):
                lib_t.append(timed(lib.predict, [it]))
                srv_t.append(timed(price, [p]))
            over = sum(srv_t) / sum(lib_t) - 1
            print(
                f"/v1/price concurrency  1: {len(items) / sum(srv_t):5.2f} items/s, p50 {pct(srv_t, 0.5):.3f} s, "
                f"p99 {pct(srv_t, 0.99):.3f} s | library one-item call {len(items) / sum(lib_t):5.2f} items/s, "
                f"p50 {pct(lib_t, 0.5):.3f} s -> the server adds {100 * over:+.1f}% per item (target <= +10%)"
            )
            # 2. concurrency 8 and 32 vs the library's batched call, round by round
            lib8 = LLMPricer(model=args.model, batch_size=8).use_model(model, tok)  # what 8 in flight can batch
            for conc in (8, 32):
                ratios, rates, lat, ceil, libs = [], [], [], [], []
                for _ in range(args.rounds):
                    lib_rate = len(items) / timed(lib.predict, items)
                    libs.append(lib_rate)
                    if conc == 8:
                        ceil.append(len(items) / timed(lib8.predict, items))

                    def one(p: dict, lat: list[float] = lat) -> None:
                        lat.append(timed(price, [p]))

                    with ThreadPoolExecutor(conc) as pool:
                        start = time.perf_counter()
                        list(pool.map(one, payload))
                        rate = len(items) / (time.perf_counter() - start)
                    rates.append(rate)
                    ratios.append(rate / lib_rate)
                print(
                    f"/v1/price concurrency {conc:>2}: {statistics.median(rates):5.2f} items/s, "
                    f"p50 {pct(lat, 0.5):.3f} s, p99 {pct(lat, 0.99):.3f} s -> "
                    f"{100 * statistics.median(ratios):.0f}% of the library's batched throughput "
                    f"(median of {args.rounds} paired rounds"
                    f"{'; target >= 80%' if conc == 8 else ''})"
                )
                if ceil:
                    c8, c16, srv = (statistics.median(x) for x in (ceil, libs, rates))
                    print(
                        f"    the ceiling at concurrency 8: the library at batch 8 makes {c8:.2f} items/s "
                        f"({100 * c8 / c16:.0f}% of batch 16); the server reaches {100 * srv / c8:.0f}% of it"
                    )
            # 3. chat completions vs direct generate, prompt by prompt
            prompts = [f"Describe product {i} in one sentence." for i in range(4)]
            warm = {"model": args.model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}
            client.post(f"{base}/v1/chat/completions", json=warm).raise_for_status()  # first-call costs, both sides
            with torch.inference_mode():
                model.generate(
                    **tok.apply_chat_template(
                        warm["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
                    ),
                    max_new_tokens=4,
                )
            lib_tok = lib_s = srv_tok = srv_s = 0.0
            for p in prompts:
                msgs = [{"role": "user", "content": p}]
                ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
                start = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(
                        **ids, max_new_tokens=args.chat_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                    )
                lib_s += time.perf_counter() - start
                lib_tok += out.shape[1] - ids["input_ids"].shape[1]
                start = time.perf_counter()
                r = client.post(
                    f"{base}/v1/chat/completions",
                    json={"model": args.model, "messages": msgs, "max_tokens": args.chat_tokens, "temperature": 0},
                ).json()
                srv_s += time.perf_counter() - start
                srv_tok += r["usage"]["completion_tokens"]
            print(
                f"chat completions: {srv_tok / srv_s:.1f} tokens/s through the server vs {lib_tok / lib_s:.1f} with "
                f"direct generate ({srv_tok / srv_s / (lib_tok / lib_s):.2f}x; {int(srv_tok)} vs {int(lib_tok)} tokens)"
            )

            def chat(p: str) -> int:
                r = client.post(
                    f"{base}/v1/chat/completions",
                    json={
                        "model": args.model,
                        "max_tokens": args.chat_tokens,
                        "temperature": 0,
                        "messages": [{"role": "user", "content": p}],
                    },
                )
                return r.json()["usage"]["completion_tokens"]

            many = [f"Describe product {i} in one sentence." for i in range(8)]
            start = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                n_tok = sum(pool.map(chat, many))
            print(
                f"chat completions, 8 concurrent: {n_tok / (time.perf_counter() - start):.1f} tokens/s in all "
                f"(batched into shared forward passes; GET /health: {httpx2.get(base + '/health').json()['models']})"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
