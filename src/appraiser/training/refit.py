"""Refit the regression head in closed form on the fine-tuned model's features (ridge or kernel ridge).

Why: the head is trained by AdamW alongside the adapters, from zero, on features whose scales differ
by 20x between dimensions (one of SmolLM2's hidden dimensions is ~50 where the rest are ~2), so after a
short CPU fine-tune it is still far from the best linear read-out of the features the adapters have
learnt. Once training is done the features are fixed, and the best linear head is a ridge regression
away: standardise the features, fit the standardised log price with scikit-learn's `RidgeCV` (the
penalty chosen by its efficient leave-one-out cross-validation on the training items themselves, so
no validation item is used), and fold the standardisation back into the head's one linear layer. The
model keeps its architecture and its file format; prediction is unchanged.

`kernel` goes one step further: kernel ridge regression with an RBF kernel on the standardised
features (the head keeps the training items' features as its support set), its penalty chosen by the
exact leave-one-out error in dollars, computed for every penalty from one eigendecomposition. On
validation the RBF read-out beats the linear one by several dollars of MAE on the same features.

Measured on validation (README, "Fine-tuning and reading a price"), not assumed: the refit is an
option (`TrainConfig.head_refit`, the number of training items it reads) and the trainer probes the
refit head like any checkpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from appraiser.inference.head import head_features, head_module
from appraiser.items import Item

#: Ridge penalties tried (on standardised features), by leave-one-out error on the training items.
ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(0, 5, 16))
#: Kernel ridge penalties tried (the RBF kernel's diagonal is 1).
KERNEL_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 1, 13))


@dataclass(frozen=True)
class RefitResult:
    kind: str  # "ridge" or "kernel"
    items: int
    alpha: float
    mae: float  # dollars on the refit items: leave-one-out for "kernel", in-sample for "ridge"

    def describe(self) -> str:
        how = "leave-one-out" if self.kind == "kernel" else "in-sample"
        return (
            f"Head refit ({self.kind}) on {self.items} training items: penalty {self.alpha:.3g}, "
            f"{how} MAE ${self.mae:,.2f}"
        )


def prompt_features(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(len(prompts), features) float64 array of what the head reads, batched by length, in order."""
    from appraiser.inference.decode import encode_prompts, length_batches

    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(prompts)
    done = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in length_batches(tokenizer, prompts, batch_size):
                input_ids, attention_mask = encode_prompts(tokenizer, [prompts[i] for i in batch], device)
                feats = head_features(model, input_ids, attention_mask).float().cpu().numpy()
                for i, row in zip(batch, feats, strict=True):
                    out[i] = row.astype(np.float64)
                done += len(batch)
                if progress is not None:
                    progress(done)
    finally:
        model.train(was_training)
    return np.stack(out)  # type: ignore[arg-type]


def fit_head(
    model: Any,
    features: np.ndarray,
    prices: Sequence[float],
    weights: Sequence[float] | None = None,
    alphas: Sequence[float] = ALPHAS,
) -> RefitResult:
    """Set the model's head to the ridge fit of the standardised log price on standardised `features`."""
    from sklearn.linear_model import RidgeCV

    if len(features) < 2:
        raise ValueError("the head refit needs at least two items")
    inner = head_module(model)
    target = inner.standardise(torch.tensor(list(prices), dtype=torch.float64)).numpy()
    w = np.ones(len(features)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = np.average(features, axis=0, weights=w)
    std = np.sqrt(np.average((features - mean) ** 2, axis=0, weights=w))
    std[std < 1e-8] = 1.0  # a constant feature: any scale, its coefficient is ~0 anyway
    ridge = RidgeCV(alphas=list(alphas)).fit((features - mean) / std, target, sample_weight=w)
    coef = ridge.coef_ / std
    bias = float(ridge.intercept_ - coef @ mean)
    inner.clear_kernel()  # a refit replaces any earlier kernel read-out
    proj = inner.proj  # PEFT's trained, saved copy (modules_to_save) when the model is wrapped
    with torch.no_grad():
        proj.weight.copy_(torch.as_tensor(coef, dtype=proj.weight.dtype).view_as(proj.weight))
        proj.bias.fill_(bias)
    fitted = inner.to_price(torch.as_tensor(features @ coef + bias)).numpy()
    mae = float(np.average(np.abs(fitted - np.asarray(prices)), weights=w))
    return RefitResult("ridge", len(features), float(ridge.alpha_), mae)


def fit_kernel_head(
    model: Any,
    features: np.ndarray,
    prices: Sequence[float],
    alphas: Sequence[float] = KERNEL_ALPHAS,
    gamma_scale: float = 1.0,
) -> RefitResult:
    """Install an RBF kernel ridge read-out (gamma = gamma_scale / features) fit on `features`.

    The penalty is the one with the smallest leave-one-out MAE in dollars: with K = Q diag(l) Q', the
    dual coefficients are c = Q diag(1/(l+a)) Q' y and the leave-one-out residual of item i is
    c_i / [Q diag(1/(l+a)) Q']_ii, so one eigendecomposition serves every penalty.
    """
    n = len(features)
    if n < 3:
        raise ValueError("the kernel head refit needs at least three items")
    inner = head_module(model)
    y = inner.standardise(torch.tensor(list(prices), dtype=torch.float64)).numpy()
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std[std < 1e-8] = 1.0
    x = (features - mean) / std
    gamma = gamma_scale / x.shape[1]
    sq = np.einsum("ij,ij->i", x, x)
    kernel = np.exp(-gamma * np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    bias = float(y.mean())
    eigval, eigvec = np.linalg.eigh(kernel)
    del kernel
    qy = eigvec.T @ (y - bias)
    q2 = eigvec**2

    def dollars(z: np.ndarray) -> np.ndarray:
        return inner.to_price(torch.as_tensor(z)).numpy()

    truth = np.asarray(prices, dtype=np.float64)
    best: tuple[float, float, np.ndarray] | None = None
    for a in alphas:
        inv = 1.0 / (eigval + a)
        dual = eigvec @ (qy * inv)
        loo = y - dual / (q2 @ inv)  # leave-one-out predictions, standardised log price
        mae = float(np.mean(np.abs(dollars(loo) - truth)))
        if best is None or mae < best[0]:
            best = (mae, a, dual)
    assert best is not None
    mae, alpha, dual = best
    inner.set_kernel(
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(mean, dtype=torch.float32),
        torch.as_tensor(std, dtype=torch.float32),
        torch.as_tensor(dual, dtype=torch.float32),
        gamma,
        bias,
    )
    return RefitResult("kernel", n, float(alpha), mae)


def refit_items(items: Sequence[Item], limit: int) -> tuple[list[Item], list[float]]:
    """The distinct items of a weighted draw (in draw order, at most `limit`) and how often each was drawn."""
    counts = Counter(it.id for it in items)
    seen: dict[str, Item] = {}
    for it in items:
        if it.id not in seen:
            seen[it.id] = it
            if len(seen) >= limit:
                break
    chosen = list(seen.values())
    return chosen, [float(counts[it.id]) for it in chosen]


def refit_head(
    model: Any,
    tokenizer: Any,
    items: Sequence[Item],
    prompt: Callable[[Item], str],
    kind: str,
    limit: int | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> RefitResult:
    """Refit `model`'s head on the distinct `items` of a training draw (`prompt` makes an item's prompt)."""
    if kind not in ("ridge", "kernel"):
        raise ValueError(f"unknown head refit {kind!r}; ridge or kernel")
    chosen, counts = refit_items(items, limit or len(items))
    feats = prompt_features(model, tokenizer, [prompt(it) for it in chosen], batch_size, progress)
    prices = [it.price for it in chosen]
    if kind == "ridge":
        return fit_head(model, feats, prices, counts)
    return fit_kernel_head(model, feats, prices)
