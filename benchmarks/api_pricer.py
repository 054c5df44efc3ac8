"""The frontier pricer's concurrency and its cache, against a local OpenAI-compatible endpoint.

A few lines below stand in for a provider: an HTTP server on loopback that answers every chat completion
with a price after a fixed delay (`--delay`, default 0.2 s, about a frontier model's latency for a
4-token answer). The `api` pricer then evaluates the same items at concurrency 1 and 16 (target ≥ 10×),
and a second evaluation of the same items with the cache on shows how many requests it makes (target 0).

    python benchmarks/api_pricer.py [--n 160] [--delay 0.2] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from appraiser.data.io import read_items
from appraiser.evaluation import LeaderboardStore, evaluate
from appraiser.pricers.api import ApiPricer


def fixed_delay_endpoint(delay: float) -> tuple[ThreadingHTTPServer, list[int]]:
    """An OpenAI-shaped chat-completions endpoint that sleeps `delay` s and says "$42.00"."""
    hits = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hits[0] += 1
            time.sleep(delay)
            body = json.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "bench",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "42.00"},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 60, "completion_tokens": 3, "total_tokens": 63},
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    args = ap.parse_args()
    items = read_items(args.data / "validation.jsonl", limit=args.n)
    server, hits = fixed_delay_endpoint(args.delay)
    url = f"http://127.0.0.1:{server.server_port}/v1"
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["APPRAISER_HOME"] = tmp  # a cold prediction cache
        for conc in (1, 16):
            with LeaderboardStore(Path(tmp) / f"lb{conc}.db") as store:
                p = ApiPricer(model="gpt-4o-mini", base_url=url, concurrency=conc, max_retries=0)
                start = time.perf_counter()
                evaluate(p, items, show=False, store=store, record=False, cache=conc == 16)
                rates[conc] = len(items) / (time.perf_counter() - start)
                print(
                    f"concurrency {conc:>2}: {rates[conc]:7.2f} items/s   ({p.usage()['requests']} requests, "
                    f"${p.usage()['dollars']:.5f} at gpt-4o-mini list prices)"
                )
        print(f"concurrency 16 vs 1: {rates[16] / rates[1]:.1f}x   (target >= 10x; ceiling 16x at this delay)")
        with LeaderboardStore(Path(tmp) / "lb16.db") as store:
            before = hits[0]
            p = ApiPricer(model="gpt-4o-mini", base_url=url, concurrency=16, max_retries=0)
            evaluate(p, items, show=False, store=store, record=False)
            print(
                f"second evaluation of the same {len(items)} items: {hits[0] - before} requests "
                f"(the evaluator's cache; target 0)"
            )
    server.shutdown()


if __name__ == "__main__":
    main()
