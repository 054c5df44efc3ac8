"""The model a run trains: the base causal LM (optionally 4-bit), a regression head, fresh LoRA adapters.

`device_and_dtype` picks where and in what precision (CUDA where there is one; bf16 where the hardware
multiplies it natively, fp32 elsewhere; `APPRAISER_DTYPE` overrides), `build_model` assembles the
PEFT model the `Trainer` trains.
"""

from __future__ import annotations

from typing import Any

import torch

from appraiser.inference.head import HEAD_MODULE
from appraiser.training.config import TrainConfig


def device_and_dtype() -> tuple[str, torch.dtype]:
    """CUDA where there is one, else CPU; the dtype as `models.default_dtype` picks it (bf16 where the
    hardware multiplies it natively, fp32 elsewhere; `APPRAISER_DTYPE` overrides)."""
    from appraiser.models import default_device, default_dtype

    device = default_device()
    return device, default_dtype(device)


def build_model(cfg: TrainConfig, head_stats: tuple[float, float] | None = None) -> tuple[Any, Any]:
    """(PEFT model with fresh LoRA adapters, tokenizer); the base optionally in 4-bit (QLoRA).

    With `cfg.head_weight > 0` the model gets a regression head (`inference.head`), centred and scaled
    by `head_stats` (the training prices' log mean and deviation), trained and saved with the adapter.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    from appraiser.models import load_model

    device, dtype = device_and_dtype()
    model, tokenizer = load_model(cfg.model, load_in_4bit=cfg.load_in_4bit, dtype=dtype, device=device)
    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    set_seed(cfg.seed)  # LoRA's A matrices are drawn from the global RNG
    if cfg.has_head:
        from appraiser.inference.head import attach_head

        attach_head(model, *(head_stats or (0.0, 1.0)), pooling=cfg.head_pooling)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=[HEAD_MODULE] if cfg.has_head else None,
    )
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    return model, tokenizer
