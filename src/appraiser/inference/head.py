"""A regression head: log price read straight from the model's hidden state at the end of the prompt.

Why: the tokenizers of the embedded models write a price digit by digit, so the LM's answer is a chain
of ten-way classifications in which "$99" and "$100" share nothing. A linear head on the hidden state
where the model is about to write the price ("... Price is $") sees the whole description and is
trained on a loss that knows $99 is close to $100 (Huber on the standardised log price). It is trained
jointly with the LoRA adapters and the usual completion cross-entropy (`TrainConfig.head_weight`), so
the same fine-tune can still write its price; prediction is one forward pass, no decoding.

What the head reads (`pooling`): "last", the hidden state at the last prompt position (where the LM
is about to write the price); "mean", the mean over the prompt's tokens (a direct gradient path to every
word of the description, which helps a short fine-tune); or "both", the two concatenated.

The head is attached to the causal LM as the module `price_head` and declared in LoRA's
`modules_to_save`, so PEFT saves, reloads and resumes it with the adapter, and `merge_and_unload`
keeps it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import nn

HEAD_MODULE = "price_head"
HeadPooling = Literal["last", "mean", "both"]
POOLINGS: tuple[str, ...] = get_args(HeadPooling)


class PriceHead(nn.Module):
    """z = w·h + b, with log1p(price) = center + scale · z (center/scale: the training prices' log stats).

    After training, `training.refit` may replace the linear read-out by a kernel one fitted in closed
    form (kernel ridge regression with an RBF kernel): z = Σ_i dual_i · exp(-gamma ‖x - support_i‖²) + b,
    x the features standardised by `feat_mean`/`feat_std`. Its arrays are buffers, so PEFT saves and
    reloads them with the adapter; `support` rows tells `attach_head` their size at load time.
    """

    def __init__(
        self, hidden_size: int, center: float = 0.0, scale: float = 1.0, pooling: str = "last", support: int = 0
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown head pooling {pooling!r}; one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        dim = hidden_size * (2 if pooling == "both" else 1)
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)  # starts at the mean log price: no random first guesses
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("center", torch.tensor(float(center)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.set_kernel(torch.zeros(support, dim), torch.zeros(dim), torch.ones(dim), torch.zeros(support), 0.0, 0.0)

    def clear_kernel(self) -> None:
        """Back to the linear read-out."""
        dim = self.proj.in_features
        self.set_kernel(torch.zeros(0, dim), torch.zeros(dim), torch.ones(dim), torch.zeros(0), 0.0, 0.0)

    def set_kernel(
        self,
        support: torch.Tensor,
        feat_mean: torch.Tensor,
        feat_std: torch.Tensor,
        dual: torch.Tensor,
        gamma: float,
        bias: float,
    ) -> None:
        """Install a kernel read-out (no support rows: the linear one is used)."""
        like = self.proj.weight
        for name, value in [
            ("support", support),
            ("feat_mean", feat_mean),
            ("feat_std", feat_std),
            ("dual", dual),
            ("gamma", torch.tensor(float(gamma))),
            ("kernel_bias", torch.tensor(float(bias))),
        ]:
            self.register_buffer(name, value.detach().to(device=like.device, dtype=torch.float32).clone())

    @property
    def kernel_rows(self) -> int:
        return int(self.support.shape[0])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Standardised log price z per row of `hidden` (…, features) → (…)."""
        if self.kernel_rows:
            # in fp32 whatever the model's dtype: distances in bf16 lose the differences that matter
            x = (hidden.float() - self.feat_mean.float()) / self.feat_std.float()
            d2 = torch.cdist(x.reshape(-1, x.shape[-1]), self.support.float()).square()
            z = torch.exp(-self.gamma.float() * d2) @ self.dual.float() + self.kernel_bias.float()
            return z.reshape(x.shape[:-1])
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)

    def features(self, hidden: torch.Tensor, prompt_mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(rows, features) read from `hidden` (rows, seq, hidden): `last` holds each row's last prompt
        position, `prompt_mask` marks its prompt tokens (not padding, not the completion)."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        parts = []
        if self.pooling in ("last", "both"):
            parts.append(hidden[rows, last.to(hidden.device)])
        if self.pooling in ("mean", "both"):
            m = prompt_mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
            parts.append((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def standardise(self, prices: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(prices.float()) - self.center) / self.scale

    def to_price(self, z: torch.Tensor) -> torch.Tensor:
        return torch.expm1(self.center + self.scale * z.float()).clamp(min=0.0)


def log_stats(prices: list[float]) -> tuple[float, float]:
    """(mean, standard deviation) of log1p(price): the head's centre and scale."""
    logs = [math.log1p(p) for p in prices]
    mean = sum(logs) / len(logs)
    var = sum((x - mean) ** 2 for x in logs) / max(len(logs) - 1, 1)
    return mean, max(math.sqrt(var), 1e-3)


def attach_head(
    causal_lm: Any, center: float = 0.0, scale: float = 1.0, pooling: str = "last", support: int = 0
) -> PriceHead:
    """Give a transformers causal LM a fresh `price_head` (before PEFT wraps it); `support`: rows of a
    kernel read-out to be loaded into it (from a saved adapter)."""
    hidden = causal_lm.config.get_text_config().hidden_size
    param = next(causal_lm.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    head = PriceHead(hidden, center, scale, pooling, support).to(device=param.device, dtype=dtype)
    setattr(causal_lm, HEAD_MODULE, head)
    return head


def find_head(model: Any) -> Any:
    """The model's price head (PEFT's wrapper forwards to the trained copy), or None."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(lm, HEAD_MODULE, None)


def head_module(model: Any) -> PriceHead:
    """The PriceHead itself (inside PEFT's modules_to_save wrapper when there is one), for its buffers."""
    head = find_head(model)
    if head is None:
        raise ValueError("this model has no price head")
    if isinstance(head, PriceHead):
        return head
    inner = getattr(head, "modules_to_save", None)
    if inner is not None:
        return next(iter(inner.values())) if len(inner) else head.original_module
    return head  # pragma: no cover


def last_prompt_positions(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Per row, the position just before the first labelled token: where the model is about to write the price."""
    labelled = labels != ignore_index
    first = labelled.float().argmax(dim=1)
    if not bool(labelled.any(dim=1).all()):
        raise ValueError("a training row has no labelled token")
    return (first - 1).clamp(min=0)


def head_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(rows, features) the head reads for left-padded prompts: one forward pass of the decoder."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, dtype=torch.long, device=hidden.device)
    return head_module(model).features(hidden, attention_mask.bool(), last)


def predict_with_head(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Prices for left-padded prompts: one forward pass of the decoder, the head at the last position."""
    z = find_head(model)(head_features(model, input_ids, attention_mask))
    return head_module(model).to_price(z)
