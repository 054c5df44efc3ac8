"""How fast `llm-kernel` reads a frozen model's prompt features, fp32 against bf16, and how far apart they are.

    python benchmarks/feature_speed.py [--model gemma3-270m] [--items 64] [--data ../shared/data]

The first validation items' prompts (128 text tokens, as `llm-kernel` builds them) are pooled by the model in
fp32 and in bf16 (the latter only means something on a CPU with native bf16: `models.cpu_has_bf16`); printed:
seconds per item for each (after one warm-up batch), the speed-up, and the cosine between the two features.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    args = ap.parse_args()

    import torch

    from appraiser.data.io import read_items
    from appraiser.data.prompts import PromptConfig, make_prompt
    from appraiser.inference.head import attach_head
    from appraiser.models import cpu_has_bf16, load_model
    from appraiser.training.refit import prompt_features

    items = read_items(args.data / "validation.jsonl", limit=args.items)
    print(f"{args.model}, {len(items)} prompts, {torch.get_num_threads()} threads, native bf16: {cpu_has_bf16()}")
    feats, speed = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tok = load_model(args.model, dtype=dtype)
        attach_head(model, pooling="mean")
        prompts = [make_prompt(it, tok, PromptConfig(max_text_tokens=128)) for it in items]
        prompt_features(model, tok, prompts[:16])  # warm-up
        start = time.perf_counter()
        feats[name] = prompt_features(model, tok, prompts)
        speed[name] = (time.perf_counter() - start) / len(prompts)
        print(f"{name}: {speed[name]:.3f} s/item")
        del model
    a, b = feats["fp32"], feats["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"bf16 vs fp32: {speed['fp32'] / speed['bf16']:.2f}x; cosine min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
