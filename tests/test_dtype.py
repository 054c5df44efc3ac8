"""The dtype choice: bf16 where the hardware multiplies it natively, fp32 elsewhere, and the bf16 path end to end.

The rest of the suite runs in fp32 (conftest pins APPRAISER_DTYPE) so its exact identities hold on every
machine; here the bf16 path runs for real. On a CPU without native bf16 torch emulates it many times slower
than fp32, Appraiser never picks it there, and the end-to-end tests skip.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from appraiser.data.io import read_items
from appraiser.data.prompts import PromptConfig, make_prompt
from appraiser.inference.decode import predict_prices
from appraiser.models import cpu_has_bf16, default_device, default_dtype, load_finetuned, load_model

native = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (Appraiser uses fp32 here)")
# training runs where Appraiser trains: on CUDA when there is one, else on the CPU
trains_in_bf16 = pytest.mark.skipif(
    not (torch.cuda.is_bf16_supported() if default_device() == "cuda" else cpu_has_bf16()),
    reason="the training device has no native bf16 (Appraiser uses fp32 there)",
)


def test_the_cpu_default_follows_the_hardware_and_the_override(monkeypatch):
    monkeypatch.delenv("APPRAISER_DTYPE")
    assert default_dtype("cpu") == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    for value, want in (("fp32", torch.float32), ("BF16", torch.bfloat16), ("float32", torch.float32)):
        monkeypatch.setenv("APPRAISER_DTYPE", value)
        assert default_dtype("cpu") == want
        assert default_dtype("cuda") == want
    monkeypatch.setenv("APPRAISER_DTYPE", "fp8")
    with pytest.raises(ValueError, match="APPRAISER_DTYPE='fp8'"):
        default_dtype("cpu")


@native
def test_bf16_reads_the_same_prices_as_fp32(data_dir):
    """bf16 logits carry ~3 significant digits: each digit's probability moves a little, and so does a price.

    The mean weighs the thin tail of high prices, so on one item it can move a lot (measured on the first
    30 validation items on the development machine: 3% on the median item, 24% at worst, mass within 0.02),
    so the bound is on the typical item (the median over 12 items) and on the mass, not on the worst item."""
    items = read_items(data_dir / "validation.jsonl", limit=12)
    got = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = load_model("smollm2-135m", dtype=dtype, device="cpu")
        assert next(model.parameters()).dtype == dtype
        prompts = [make_prompt(it, tok, PromptConfig(max_text_tokens=40)) for it in items]
        got[dtype] = predict_prices(model, tok, prompts, batch_size=3)
    pairs = list(zip(got[torch.float32], got[torch.bfloat16], strict=True))
    assert all(a is not None and b is not None for a, b in pairs)
    assert statistics.median(abs(b.mean - a.mean) / a.mean for a, b in pairs) <= 0.06
    for a, b in pairs:
        assert b.mass == pytest.approx(a.mass, abs=0.03)


@trains_in_bf16
def test_a_bf16_training_run_learns_saves_and_prices(small_split, monkeypatch):
    from appraiser.runs import RunStore
    from appraiser.training import TrainConfig
    from appraiser.training.trainer import device_and_dtype, start

    monkeypatch.setenv("APPRAISER_DTYPE", "bf16")
    assert device_and_dtype() == (default_device(), torch.bfloat16)  # CUDA where there is one, else the CPU
    train, validation = small_split(16, 4)
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=8,
        max_steps=3,
        batch_size=2,
        max_text_tokens=12,
        probe_every=3,
        probe_size=2,
        head_weight=1.0,  # the regression head trains beside the LM loss: both must run in bf16
        save_every=3,
        name="bf16",
        threads=1,
    )
    result = start(cfg)
    store = RunStore()
    run = store.get("bf16")
    assert run.status == "succeeded" and result.steps == 3
    _, losses = store.series(run.id, "loss")
    assert len(losses) == 3 and all(0 < v < 30 for v in losses)
    assert store.latest(run.id)["probe_mae"] > 0
    saved = json.loads((run.folder / "final" / "adapter_config.json").read_text())
    assert saved["r"] == cfg.lora_r
    model, tok = load_finetuned(run.folder / "final")
    assert next(model.parameters()).dtype == torch.bfloat16
    prompt = make_prompt(read_items(validation, limit=1)[0], tok, PromptConfig(max_text_tokens=12))
    dist = predict_prices(model, tok, [prompt], method="head")[0]
    assert dist is not None and dist.mean > 0
