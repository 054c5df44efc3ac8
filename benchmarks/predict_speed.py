"""How fast Appraiser reads prices out of a model, and what batching and KV-cache reuse buy.

Part 1 (each of --part1-models, by default --models; zero-shot, real validation prompts): items/second of
the expected-price digit beam
  - naive: one item at a time, no KV cache (each beam step re-reads the prompt for every hypothesis;
    what a first hand-written loop does),
  - one item at a time with the KV cache (`predict_prices(..., batch_size=1)`),
  - batched (`predict_prices(..., batch_size=B)`),
  and checks that all three give the same prices. It also times the batch-1 prompt prefill alone:
  batching cannot shorten a prefill that already keeps the CPU busy, so batch-1 time / prefill time
  is the most batching can buy on this machine (on a GPU, where a batch-1 step leaves it idle, far more).
Part 2: wall time to score N validation items (expected method) with each embedded model.

Usage: python benchmarks/predict_speed.py [--models smollm2-135m gemma3-270m] [--part1-models M ...] [--n 250]
       [--batch-size 16] [--skip-part1] [--skip-part2]
Timings depend on the machine and on what else runs on it; the script prints its thread count and load.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch

from appraiser.data.io import read_items
from appraiser.data.prompts import PromptConfig, make_prompt
from appraiser.inference.decode import encode_prompts, number_vocab, predict_prices, prefill, summarize
from appraiser.models import load_model

DATA = Path(os.environ.get("APPRAISER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def naive_beam(model, tok, prompt: str, beam_width: int = 8, max_new_tokens: int = 8):
    """The same digit beam without a KV cache: every step runs the full prompt + digits of each hypothesis."""
    v = number_vocab(tok, model)
    stop = v.end_ids + [v.dot_id]
    p_ids = tok(prompt)["input_ids"]
    live = [("", [], 0.0)]  # digits, token ids, log-prob
    finished: dict[str, float] = {}
    for step in range(max_new_tokens):
        ids = torch.tensor([p_ids + t for _, t, _ in live], device=model.device)
        with torch.inference_mode():
            logp = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
        cands = []
        for r, (text, toks, lp) in enumerate(live):
            if step > 0:
                finished[text] = math.exp(lp + float(torch.logsumexp(logp[r, stop], 0)))
            for i, d in zip(v.number_ids, v.number_text, strict=True):
                cands.append((lp + float(logp[r, i]), text + d, toks + [i]))
        if step + 1 >= max_new_tokens:
            break
        cands.sort(key=lambda c: -c[0])
        live = [(t, k, lp) for lp, t, k in cands[:beam_width] if lp > math.log(1e-7)]
        if not live:
            break
    return summarize(finished, 0.8, None)


def timed(fn):
    """Wall time of fn(); on CUDA, waits for queued kernels before and after so the time is real."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def prefill_only(model, tok, prompts: list[str]) -> None:
    """The first forward pass of each prompt alone, as `predict_prices(..., batch_size=1)` runs it."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        for p in prompts:
            prefill(model, *encode_prompts(tok, [p], device))


def part1(name: str, items, batch_size: int, n_naive: int, n_single: int, n_batched: int) -> None:
    model, tok = load_model(name)
    prompts = [make_prompt(it, tok, PromptConfig()) for it in items[: max(n_naive, n_single, n_batched)]]
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    where = f"{name} ({model.device}, {next(model.parameters()).dtype})"
    print(f"\n## Part 1: expected-price decoding speed, {where}, prompts of {statistics.mean(lengths):.0f} tokens")
    predict_prices(model, tok, prompts[:2], batch_size=2)  # warm-up

    naive, t_naive = timed(lambda: [naive_beam(model, tok, p) for p in prompts[:n_naive]])
    single, t_single = timed(lambda: predict_prices(model, tok, prompts[:n_single], batch_size=1))
    batched, t_batched = timed(lambda: predict_prices(model, tok, prompts[:n_batched], batch_size=batch_size))
    _, t_prefill = timed(lambda: prefill_only(model, tok, prompts[:n_single]))

    rate = {
        "naive (per item, no KV cache)": n_naive / t_naive,
        "per item, KV cache (batch 1)": n_single / t_single,
        f"batched (batch {batch_size}), KV cache": n_batched / t_batched,
    }
    base = rate["naive (per item, no KV cache)"]
    one = rate["per item, KV cache (batch 1)"]
    print(f"{'method':42s} {'items':>5s} {'items/s':>8s} {'vs naive':>9s} {'vs batch 1':>10s}")
    for (name, r), n in zip(rate.items(), (n_naive, n_single, n_batched), strict=True):
        print(f"{name:42s} {n:5d} {r:8.3f} {r / base:8.1f}x {r / one:9.1f}x")
    ceiling = t_single / t_prefill
    print(
        f"batch-1 prefill alone: {t_prefill / n_single:.3f} s/item of {t_single / n_single:.3f} s/item "
        f"({t_prefill / t_single:.0%}); batching can at most remove the rest: ceiling {ceiling:.1f}x vs batch 1, "
        f"reached {rate[f'batched (batch {batch_size}), KV cache'] / one / ceiling:.0%} of it"
    )
    worst = max(abs(a.mean - b.mean) / max(1.0, abs(a.mean)) for a, b in zip(naive, batched[:n_naive], strict=True))
    worst1 = max(abs(a.mean - b.mean) / max(1.0, abs(a.mean)) for a, b in zip(single, batched[:n_single], strict=True))
    print(f"same prices: max relative difference of the mean, naive vs batched {worst:.1e}, ", end="")
    print(f"batch 1 vs batched {worst1:.1e}")


def part2(items, models: list[str], batch_size: int) -> None:
    print(f"\n## Part 2: score {len(items)} validation items (expected method, batch {batch_size})")
    head = ("model", "load s", "score s", "items/s", "failed", "mean mass", "MAE $")
    print(f"{head[0]:16s} " + " ".join(f"{h:>9s}" for h in head[1:]))
    for name in models:
        start = time.perf_counter()
        model, tok = load_model(name)
        t_load = time.perf_counter() - start
        prompts = [make_prompt(it, tok, PromptConfig()) for it in items]
        start = time.perf_counter()
        dists = predict_prices(model, tok, prompts, batch_size=batch_size)
        t = time.perf_counter() - start
        ok = [(d, it) for d, it in zip(dists, items, strict=True) if d is not None]
        mae = statistics.mean(abs(d.mean - it.price) for d, it in ok) if ok else float("nan")
        mass = statistics.mean(d.mass for d, _ in ok) if ok else float("nan")
        fails = len(items) - len(ok)
        print(f"{name:16s} {t_load:9.1f} {t:9.1f} {len(items) / t:9.2f} {fails:9d} {mass:9.2f} {mae:9.2f}")
        del model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--n", type=int, default=250, help="validation items scored per model in part 2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--naive", type=int, default=4, help="items for the naive decoder (slow)")
    ap.add_argument("--single", type=int, default=16, help="items decoded one at a time")
    ap.add_argument("--batched", type=int, default=64, help="items decoded in batches")
    ap.add_argument("--part1-models", nargs="+", default=None, help="models timed in part 1 (default: --models)")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--skip-part2", action="store_true")
    args = ap.parse_args()

    items = read_items(DATA / "validation.jsonl")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load:.1f}")
    if not args.skip_part1:
        for name in args.part1_models or args.models:
            part1(name, items, args.batch_size, args.naive, args.single, args.batched)
    if not args.skip_part2:
        part2(items[: args.n], args.models, args.batch_size)


if __name__ == "__main__":
    main()
