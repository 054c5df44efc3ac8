"""The QLoRA path on CPU: bitsandbytes (a `dev` dependency) quantizes the embedded SmolLM2 to NF4 on the CPU,
so loading in 4-bit, reading a price and a few training steps run here as they would on a GPU."""

from __future__ import annotations

import json
import math

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from appraiser.data.io import read_items
from appraiser.models import load_model
from appraiser.pricers.llm import LLMPricer
from appraiser.runs.store import RunStore
from appraiser.training import TrainConfig, start

NAME = "smollm2-135m"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def nf4():
    return load_model(NAME, load_in_4bit=True, device="cpu")


def test_4bit_load_quantizes_every_decoder_linear_to_nf4_on_cpu(nf4):
    model, _ = nf4
    layers = model.model.layers
    quantized = {n: m for n, m in model.named_modules() if n.endswith(PROJECTIONS)}
    assert len(quantized) == len(layers) * len(PROJECTIONS)
    for name, module in quantized.items():
        assert isinstance(module, bnb.nn.Linear4bit), name
        assert module.weight.device.type == "cpu"
        assert module.weight.dtype == torch.uint8, name  # packed: two 4-bit codes per byte
        assert module.weight.quant_state.quant_type == "nf4"
        assert module.weight.numel() * 2 == module.in_features * module.out_features
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # transformers keeps the LM head in full precision
    assert getattr(model, "is_loaded_in_4bit", False)


def test_4bit_model_stays_close_to_the_full_precision_one_and_prices_an_item(nf4, data_dir):
    model, tokenizer = nf4
    full, _ = load_model(NAME, device="cpu")
    prompt = "What does this cost to the nearest dollar?\n\nA stainless steel mug\n\nPrice is $"
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        q, f = model(**ids).logits[0, -1].float(), full(**ids).logits[0, -1].float()
    # NF4 rounds every weight, so the logits move, but the quantized model is still the same model
    # (a randomly initialised one correlates ~0 with it)
    assert torch.corrcoef(torch.stack([q, f]))[0, 1] > 0.9
    assert len(set(q.topk(10).indices.tolist()) & set(f.topk(10).indices.tolist())) >= 5

    item = read_items(data_dir / "validation.jsonl", limit=1)[0]
    pricer = LLMPricer(NAME, load_in_4bit=True, device="cpu")
    pricer._model, pricer._tokenizer = model, tokenizer  # the module's NF4 model, not a second load
    (guess,) = pricer.predict([item])
    assert guess.price is not None and math.isfinite(guess.price) and guess.price > 0
    assert guess.low is not None and 0 < guess.low <= guess.high  # the beam's 80% interval


def test_qlora_trains_two_steps_on_cpu_with_finite_loss(small_split):
    train, validation = small_split(16, 4)
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=8,
        max_steps=2,
        batch_size=2,
        max_text_tokens=12,
        load_in_4bit=True,
        probe_every=0,
        save_every=10,
        name="qlora",
        threads=1,
    )
    result = start(cfg)
    assert result.steps == 2
    steps, losses = RunStore().series(result.run_id, "loss")
    assert steps == [1, 2] and all(math.isfinite(v) and v > 0 for v in losses)
    assert math.isfinite(result.train_loss)
    adapter = load_file(str(result.final / "adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().sum()) > 0 for t in lora_b)  # B starts at zero: the steps moved it
    assert json.loads((result.folder / "config.json").read_text())["load_in_4bit"] is True
