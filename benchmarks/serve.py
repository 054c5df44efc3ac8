"""What `appraiser serve` costs on top of the library, and what its request batching buys.

Starts `appraiser serve` as a real process on a loopback port, then in one run:

1. `/v1/price` at concurrency 1, 8 and 32 (one item per request, as clients send them): items/s and
   p50/p99 latency, against the library's own calls on the same items in this process — one item per
   call (what concurrency 1 should cost: target ≤ 10% more per item) and batched (`LLMPricer.predict`
   on all items, batch 16: what concurrency 8 should approach because the server batches concurrent
   requests: target ≥ 80% of its throughput).
2. Chat completions, greedy, N tokens: tokens/s through the server vs a direct `model.generate` call.

    python benchmarks/serve.py [--n 48] [--model smollm2-135m] [--chat-tokens 32]

Run it on an idle machine: the server and this process share the CPU, one at a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--chat-tokens", type=int, default=32)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    items = read_items(args.data / "validation.jsonl", limit=args.n)
    payload = [{"text": it.text, "title": it.title, "category": it.category} for it in items]

    # the library, in this process, before the server exists
    lib = LLMPricer(model=args.model)
    lib.predict(items[:2])  # load and warm up
    start = time.perf_counter()
    for it in items:
        lib.predict([it])
    one_s = (time.perf_counter() - start) / len(items)
    start = time.perf_counter()
    lib.predict(items)
    batched_rate = len(items) / (time.perf_counter() - start)
    model, tok = lib.model_and_tokenizer()
    prompts = [f"Describe product {i} in one sentence." for i in range(4)]
    import torch

    gen_tokens, start = 0, time.perf_counter()
    for p in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=args.chat_tokens,
                min_new_tokens=args.chat_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        gen_tokens += out.shape[1] - ids["input_ids"].shape[1]
    direct_tps = gen_tokens / (time.perf_counter() - start)
    del lib, model
    print(
        f"library: one item per call {one_s:.3f} s/item ({1 / one_s:.2f} items/s); "
        f"batched {batched_rate:.2f} items/s; generate {direct_tps:.1f} tokens/s"
    )

    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(Path(tmp))
        try:
            client = httpx2.Client(timeout=600)
            client.post(f"{base}/v1/price", json={"model": args.model, "items": payload[:2]})  # load, warm up
            for conc in (1, 8, 32):
                lat: list[float] = []

                def one(i: int, lat: list[float] = lat) -> None:
                    t = time.perf_counter()
                    r = client.post(f"{base}/v1/price", json={"model": args.model, "items": [payload[i]]})
                    r.raise_for_status()
                    lat.append(time.perf_counter() - t)

                start = time.perf_counter()
                with ThreadPoolExecutor(conc) as pool:
                    list(pool.map(one, range(len(items))))
                rate = len(items) / (time.perf_counter() - start)
                line = (
                    f"/v1/price concurrency {conc:>2}: {rate:6.2f} items/s, p50 {pct(lat, 0.5):.3f} s, "
                    f"p99 {pct(lat, 0.99):.3f} s"
                )
                if conc == 1:
                    line += (
                        f"; per item {1 / rate:.3f} s = {100 * (1 / rate / one_s - 1):+.1f}% vs the library's "
                        f"one-item call (target <= +10%)"
                    )
                else:
                    line += f"; {100 * rate / batched_rate:.0f}% of the library's batched throughput" + (
                        " (target >= 80%)" if conc == 8 else ""
                    )
                print(line)
            msgs = [[{"role": "user", "content": p}] for p in prompts]
            toks, start = 0, time.perf_counter()
            for m in msgs:
                r = client.post(
                    f"{base}/v1/chat/completions",
                    json={"model": args.model, "messages": m, "max_tokens": args.chat_tokens, "temperature": 0},
                ).json()
                toks += r["usage"]["completion_tokens"]
            served_tps = toks / (time.perf_counter() - start)
            print(
                f"chat completions: {served_tps:.1f} tokens/s through the server vs {direct_tps:.1f} direct "
                f"generate ({served_tps / direct_tps:.2f}x; {toks} tokens; the server stops at EOS)"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
