"""Closed-form refits of the regression head (training.refit): exact maths, and a run that uses one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from appraiser.data.io import read_items
from appraiser.inference.head import PriceHead, head_module
from appraiser.training.refit import fit_head, fit_kernel_head, refit_items


def holder(dim: int, center: float = 3.0, scale: float = 1.5) -> nn.Module:
    """A module carrying a real PriceHead where `find_head` looks for it."""
    m = nn.Module()
    m.price_head = PriceHead(dim, center, scale)
    return m


def data(n: int = 14, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.1])[:d]
    prices = np.expm1(3.0 + x[:, 0] + 0.1 * x[:, 1] + rng.normal(scale=0.3, size=n))
    return x, prices


def test_ridge_refit_folds_the_standardisation_into_the_linear_layer():
    from sklearn.linear_model import Ridge

    x, prices = data()
    m = holder(3)
    res = fit_head(m, x, prices, alphas=[2.0])
    head = head_module(m)
    z = head.standardise(torch.tensor(prices)).numpy()
    xs = (x - x.mean(0)) / x.std(0)
    want = Ridge(alpha=2.0).fit(xs, z).predict(xs)
    got = head(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    assert got == pytest.approx(want, abs=1e-4)
    assert res.kind == "ridge" and res.items == 14 and res.alpha == 2.0 and res.mae > 0


def test_kernel_refit_leave_one_out_is_exact_and_the_head_predicts_the_fit():
    x, prices = data()
    m = holder(3)
    res = fit_kernel_head(m, x, prices, alphas=[0.5])
    head = head_module(m)
    assert head.kernel_rows == 14
    z = head.standardise(torch.tensor(prices)).numpy()
    xs = (x - x.mean(0)) / x.std(0)
    gamma, bias = 1.0 / 3, z.mean()

    def k(a, b):
        return np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    dual = np.linalg.solve(k(xs, xs) + 0.5 * np.eye(14), z - bias)
    pred = head(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    assert pred == pytest.approx(k(xs, xs) @ dual + bias, abs=1e-4)
    # leave-one-out by brute force: refit without item i, predict item i
    loo = []
    for i in range(14):
        keep = np.arange(14) != i
        d_i = np.linalg.solve(k(xs[keep], xs[keep]) + 0.5 * np.eye(13), z[keep] - bias)
        loo.append(float((k(xs[i : i + 1], xs[keep]) @ d_i)[0] + bias))
    loo_mae = np.mean(np.abs(head.to_price(torch.tensor(loo)).numpy() - prices))
    assert res.mae == pytest.approx(loo_mae, rel=1e-6)
    # the penalty with the smallest leave-one-out error wins
    alphas = [1e-3, 0.5, 1e3]
    each = {a: fit_kernel_head(holder(3), x, prices, alphas=[a]).mae for a in alphas}
    best = fit_kernel_head(holder(3), x, prices, alphas=alphas)
    assert len(set(each.values())) == 3 and best.mae == min(each.values()) and each[best.alpha] == best.mae
    fit_head(m, x, prices)  # a later linear refit replaces the kernel read-out
    assert head.kernel_rows == 0


def test_refit_items_are_distinct_in_draw_order_with_counts():
    from appraiser.items import Item

    a, b, c = (Item(id=s, text=s, price=1.0) for s in "abc")
    chosen, counts = refit_items([b, a, b, c, b], 2)
    assert [it.id for it in chosen] == ["b", "a"] and counts == [3.0, 1.0]


def test_kernel_refit_run_saves_reloads_and_is_probed(small_split):
    from appraiser.inference.decode import predict_prices
    from appraiser.models import load_finetuned
    from appraiser.pricers.llm import LLMPricer
    from appraiser.runs.store import RunStore
    from appraiser.training.config import TrainConfig
    from appraiser.training.trainer import start

    train, validation = small_split(24, 4)
    with pytest.raises(ValueError, match="head_refit needs"):
        TrainConfig(head_refit="kernel")
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=24,
        max_steps=2,
        batch_size=4,
        max_text_tokens=12,
        head_weight=1.0,
        head_pooling="mean",
        head_refit="kernel",
        head_refit_items=20,
        probe_every=2,
        probe_size=4,
        probe_method="head",
        name="refit",
        threads=1,
    )
    start(cfg)
    store = RunStore()
    run = store.get("refit")
    events = [e.message for e in store.events(run.id)]
    assert any(e.startswith("Head refit (kernel) on 20 training items: penalty") for e in events)
    assert sum(e.startswith("Probe at step 2:") for e in events) == 2  # before and after the refit
    final = Path(run.folder) / "final"
    model, tok = load_finetuned(final)
    assert head_module(model).kernel_rows == 20
    val = read_items(validation)
    preds = LLMPricer(model=str(final)).predict(val)
    from appraiser.data.prompts import make_prompt

    again = predict_prices(model, tok, [make_prompt(it, tok, cfg.prompt_config()) for it in val], method="head")
    assert [d.mean for d in again] == pytest.approx([p.price for p in preds], rel=1e-4)
    assert len({round(p.price, 2) for p in preds}) > 1  # a kernel read-out, not the constant centre
