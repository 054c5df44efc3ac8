"""How much of the price is linearly (or kernel-) readable from a model's features, frozen or fine-tuned.

    python benchmarks/readout.py --model gemma3-270m                  # the frozen base model
    python benchmarks/readout.py --model smollm2-135m --pooling both
    python benchmarks/readout.py --model RUN_FOLDER/final             # a fine-tune (its prompt settings)

Extracts the features the regression head reads (`inference.head`: the prompt mean, the last prompt
position, or both) for `--n-train` training items, drawn like the recipe draws them (validation-matched
price weighting, benchmark categories only), and for the first `--test-size` validation items; then
fits the two closed-form read-outs of `training.refit` (ridge, and RBF kernel ridge with its penalty
chosen by leave-one-out on the training items) and scores both on the validation items, beside the
fine-tune's own trained head when there is one. Same features, same items: the rows differ only in
the read-out. This is the measurement behind the recipe's choice of model, pooling and refit.

`--support unseen` fits the read-outs on the benchmark-category training items outside the draw
instead: items a fine-tune on that draw never saw, whose features are as new to it as validation's.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m", help="a packaged model, or a fine-tune's adapter folder")
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data"))
    )
    ap.add_argument("--n-train", type=int, default=2500, help="weighted draws from train.jsonl (distinct kept)")
    ap.add_argument("--n-support", type=int, default=None, help="fit the read-outs on the first N support items")
    ap.add_argument("--test-size", type=int, default=400, help="first N validation items scored")
    ap.add_argument("--pooling", default="mean", choices=["last", "mean", "both"], help="for a base model")
    ap.add_argument("--max-text-tokens", type=int, default=100, help="for a base model")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--support",
        choices=["draw", "unseen"],
        default="draw",
        help="items the read-outs are fit on: the draw (what a fine-tune on it trained on), or the in-category "
        "training items outside the draw (never seen by such a fine-tune)",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from appraiser.data.io import read_items
    from appraiser.data.prompts import PromptConfig, make_prompt
    from appraiser.evaluation.metrics import bootstrap_mean_ci
    from appraiser.inference.head import attach_head, head_module, log_stats
    from appraiser.models import find_adapter, finetune_info, load_model
    from appraiser.training.dataset import choose_items
    from appraiser.training.refit import fit_head, fit_kernel_head, prompt_features, refit_items

    torch.set_num_threads(args.threads)
    validation = read_items(args.data / "validation.jsonl")
    test = validation[: args.test_size]
    pool = read_items(args.data / "train.jsonl")
    draw = choose_items(pool, args.n_train, "match", args.seed, validation, 0.0)
    train, _ = refit_items(draw, len(draw))
    if args.support == "unseen":
        seen = {id(it) for it in train}
        in_category = choose_items(pool, None, "none", args.seed, validation, 0.0)
        train = [it for it in in_category if id(it) not in seen]
    train = train[: args.n_support]

    adapter = find_adapter(args.model)
    model, tok = load_model(args.model)
    if adapter is not None:
        info = finetune_info(adapter)
        prompt = PromptConfig.of_finetune(info)
        if not info.get("head"):
            raise SystemExit(f"{adapter}: this fine-tune has no regression head to read features for")
        pooling = info.get("head_pooling", "last")
    else:
        prompt, pooling = PromptConfig(max_text_tokens=args.max_text_tokens), args.pooling
        attach_head(model, *log_stats([it.price for it in train]), pooling=pooling)
    print(
        f"{args.model}: pooling {pooling}, {prompt.max_text_tokens} text tokens, "
        f"read-outs fit on {len(train)} training items ({args.support})"
    )

    t0 = time.perf_counter()
    x_train = prompt_features(model, tok, [make_prompt(it, tok, prompt) for it in train])
    x_test = prompt_features(model, tok, [make_prompt(it, tok, prompt) for it in test])
    print(f"features: {len(train) + len(test)} prompts in {time.perf_counter() - t0:.0f} s")
    truth = np.array([it.price for it in test])
    head = head_module(model)

    def score(name: str, h) -> None:
        with torch.no_grad():
            prices = h.to_price(h(torch.as_tensor(x_test, dtype=torch.float32))).numpy()
        errors = np.abs(prices - truth)
        lo, hi = bootstrap_mean_ci(errors.tolist())
        print(f"  {name:<44} MAE ${errors.mean():7.2f}  (95% CI ${lo:.2f}–${hi:.2f})")

    print(f"first {len(test)} validation items:")
    if adapter is not None and not head.kernel_rows:
        score("the fine-tune's own trained head", head)
    prices = [it.price for it in train]
    for kind in ("ridge", "kernel"):
        h = copy.deepcopy(head)
        holder = torch.nn.Module()
        holder.price_head = h
        res = fit_head(holder, x_train, prices) if kind == "ridge" else fit_kernel_head(holder, x_train, prices)
        score(f"{kind} read-out (penalty {res.alpha:.3g})", h)


if __name__ == "__main__":
    main()
