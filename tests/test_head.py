"""The regression head: trained jointly with LoRA, saved with the adapter, read back by the pricer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from appraiser.data.io import read_items, write_items
from appraiser.data.prompts import PromptConfig
from appraiser.inference.head import find_head, head_module, last_prompt_positions, log_stats
from appraiser.runs.store import RunStore
from appraiser.training.config import TrainConfig
from appraiser.training.dataset import IGNORE_INDEX, Collator, encode_items
from appraiser.training.trainer import build_model, price_loss, start

PROMPT = PromptConfig(max_text_tokens=16)


@pytest.fixture(scope="module")
def items(data_dir):
    return read_items(data_dir / "train.jsonl", limit=40)


def test_log_stats_and_positions():
    mean, sd = log_stats([math.expm1(1.0), math.expm1(3.0)])
    assert mean == pytest.approx(2.0) and sd == pytest.approx(math.sqrt(2.0))
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    assert last_prompt_positions(labels).tolist() == [1, 0]
    with pytest.raises(ValueError, match="no labelled token"):
        last_prompt_positions(torch.full((1, 3), IGNORE_INDEX))


def test_head_pooling_reads_the_prompt_only():
    from appraiser.inference.head import PriceHead

    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    # row 0: left padding at 0, prompt 1-2, completion 3; row 1: prompt 0-1, completion 2-3
    mask = torch.tensor([[False, True, True, False], [True, True, False, False]])
    last = torch.tensor([2, 1])
    assert PriceHead(2, pooling="last").features(hidden, mask, last).tolist() == [[4.0, 5.0], [10.0, 11.0]]
    assert PriceHead(2, pooling="mean").features(hidden, mask, last).tolist() == [[3.0, 4.0], [9.0, 10.0]]
    both = PriceHead(2, pooling="both")
    assert both.proj.in_features == 4
    assert both.features(hidden, mask, last).tolist() == [[4.0, 5.0, 3.0, 4.0], [10.0, 11.0, 9.0, 10.0]]
    with pytest.raises(ValueError, match="pooling"):
        PriceHead(2, pooling="max")


def test_config_rejects_nothing_to_train_and_head_probe_without_head():
    with pytest.raises(ValueError, match="nothing to train"):
        TrainConfig(lm_weight=0)
    with pytest.raises(ValueError, match="needs a regression head"):
        TrainConfig(probe_method="head")
    assert TrainConfig(lm_weight=0, head_weight=1).probe_method == "head"


def test_joint_loss_trains_head_and_adapters_and_head_starts_at_the_mean(items, one_thread):
    center, scale = log_stats([it.price for it in items])
    model, tok = build_model(TrainConfig(head_weight=1.0, lora_dropout=0.0), (center, scale))
    batch = Collator(tok.pad_token_id)(encode_items(items[:4], tok, PROMPT))
    model.train()
    lm_only = price_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    joint = price_loss(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], prices=batch["prices"], head_weight=2.0
    )
    # A zero-initialised head predicts the centre (z = 0): its Huber loss is that of the standardised prices.
    z = head_module(model).standardise(batch["prices"])
    huber = torch.nn.functional.huber_loss(torch.zeros_like(z), z, reduction="mean")
    assert float((joint - lm_only).detach()) == pytest.approx(2.0 * float(huber), rel=1e-4)
    joint.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any("price_head" in n and g is not None and float(g.abs().sum()) > 0 for n, g in grads.items())
    assert any("lora_B" in n and g is not None and float(g.abs().sum()) > 0 for n, g in grads.items())
    with pytest.raises(ValueError, match="prices"):
        price_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], head_weight=1.0)


def test_head_run_learns_saves_and_prices_through_the_pricer(items, data_dir, tmp_path):
    from appraiser.inference.decode import predict_prices
    from appraiser.pricers.llm import LLMPricer

    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    write_items(items[:8], train)
    write_items(read_items(data_dir / "validation.jsonl", limit=3), validation)
    cfg = TrainConfig(
        train=train,
        validation=validation,
        n_train=8,
        max_steps=12,
        batch_size=4,
        max_text_tokens=12,
        head_weight=1.0,
        lm_weight=0.0,  # head only: its loss is the whole training loss
        head_lr=0.005,
        head_pooling="both",  # last position and prompt mean: the widest head round-trips through the store
        learning_rate=1e-3,
        probe_every=6,
        probe_size=3,
        save_every=6,
        name="head",
        threads=1,
    )
    result = start(cfg)
    store = RunStore()
    run = store.get("head")
    steps, losses = store.series(run.id, "loss")
    assert len(steps) == 12
    assert sum(losses[-3:]) < sum(losses[:3])  # the head fits 8 prices
    assert any(e.message.startswith("Probe at step 6: MAE $") for e in store.events(run.id))
    assert result.best_probe_mae is not None

    pricer = LLMPricer(model=str(Path(run.folder) / "final"))
    assert pricer.method == "head"
    # A run of the store is named by its name (or id), with best/ preferred, or /final explicitly.
    assert LLMPricer(model="head/final").adapter == pricer.adapter
    assert LLMPricer(model="head").adapter == Path(run.folder) / "best"
    val = read_items(validation)
    preds = pricer.predict(val)
    assert all(p.price is not None and p.price > 0 and p.low is None for p in preds)
    # What the saved, reloaded and merged model says is what the trained model said.
    model, tok = build_model(cfg, log_stats([it.price for it in items[:8]]))
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(run.folder) / "final" / "adapter_model.safetensors")))
    assert find_head(model) is not None
    from appraiser.data.prompts import make_prompt

    live = predict_prices(model, tok, [make_prompt(it, tok, pricer.prompt_config) for it in val], method="head")
    assert [d.mean for d in live] == pytest.approx([p.price for p in preds], rel=1e-3)
    with pytest.raises(ValueError, match="regression head"):
        LLMPricer(model="smollm2-135m", method="head")
