"""The training loss, and the `Trainer` subclass that uses it.

`price_loss` runs the base transformer once for hidden states, then applies the LM head only at the
positions whose next token is labelled (the price and EOS) and, with a regression head, the head at
the last prompt position. `PriceTrainer` is the stock `Trainer` with that loss, seeded length-grouped
batches and an optional separate learning rate for the head.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from appraiser.inference.head import HEAD_MODULE, find_head, head_module, last_prompt_positions
from appraiser.training.dataset import IGNORE_INDEX, LengthGroupedSampler


def _causal_lm(model: Any) -> Any:
    """The transformers causal LM inside a PEFT wrapper (LoRA layers are injected into its modules)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def completion_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Cross-entropy on labelled tokens, with the LM head applied at those positions only.

    Equal to the model's own causal-LM loss (mean over labelled tokens, or sum / `num_items` when the
    Trainer counts tokens across accumulated micro-batches), at a fraction of the cost: the head is
    the largest matrix product of a small model, and only ~7 of ~100 positions per row are trained.
    """
    return price_loss(model, input_ids, attention_mask, labels, num_items)


def price_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
    *,
    prices: torch.Tensor | None = None,
    lm_weight: float = 1.0,
    head_weight: float = 0.0,
    rows_in_step: int | None = None,
) -> torch.Tensor:
    """`lm_weight` x completion cross-entropy + `head_weight` x the regression head's Huber loss.

    One pass of the transformer serves both: the LM head is applied at labelled positions only, the
    regression head at the last prompt position of each row (on the standardised log price, so an
    error of 10% costs the same at $5 as at $500). `rows_in_step` (rows in the whole accumulated
    step) scales the Huber mean like `num_items` scales the cross-entropy.
    """
    lm = _causal_lm(model)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    loss = hidden.new_zeros((), dtype=torch.float32)
    if lm_weight:
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        ce = F.cross_entropy(logits, targets[keep], reduction="sum")
        denom = num_items if num_items is not None else keep.sum().clamp(min=1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(ce.device)
        loss = loss + lm_weight * ce / denom
    if head_weight:
        if prices is None:
            raise ValueError("the regression head needs the batch's prices")
        inner = head_module(model)
        prompt_mask = attention_mask.bool() & (labels == IGNORE_INDEX)
        features = inner.features(hidden, prompt_mask, last_prompt_positions(labels))
        z = find_head(model)(features).float()
        target = inner.standardise(prices.to(hidden.device))
        huber = F.huber_loss(z, target, reduction="sum", delta=1.0) / (rows_in_step or len(labels))
        loss = loss + head_weight * huber
    return loss


class PriceTrainer(Trainer):
    """`Trainer` with completion-only loss at labelled positions and seeded length-grouped batches."""

    # compute_loss already divides by the token count of the whole accumulated step.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        group_by_length: bool = True,
        lm_weight: float = 1.0,
        head_weight: float = 0.0,
        head_lr: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.lm_weight = lm_weight
        self.head_weight = head_weight
        self.head_lr = head_lr

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """Train nothing once `max_steps` is reached. A run killed after its last checkpoint (while its final
        adapter was written) resumes at global_step == max_steps, and the stock loop trains one step before it
        first checks the limit: each resume would add a step past the end (and a cosine schedule's lr rises)."""
        if 0 < self.state.max_steps <= self.state.global_step:
            return None
        return super()._run_epoch(*args, **kwargs)

    def create_optimizer(self, model: Any = None) -> Any:
        """The stock AdamW, with the regression head (if any) in its own group at `head_lr`."""
        optimizer = super().create_optimizer(model)
        if self.head_weight and self.head_lr:
            head = {id(p) for n, p in self.model.named_parameters() if HEAD_MODULE in n and p.requires_grad}
            moved = []
            for group in optimizer.param_groups:
                moved += [p for p in group["params"] if id(p) in head]
                group["params"] = [p for p in group["params"] if id(p) not in head]
            if moved:
                optimizer.add_param_group({"params": moved, "lr": self.head_lr, "weight_decay": 0.0})
        return optimizer

    def _get_train_sampler(self, train_dataset: Any = None) -> LengthGroupedSampler:
        """Length-grouped batches of the *global* batch size (per-device batch x processes), in one order for
        every process (it depends on seed and epoch only, never on the rank).

        The DataLoader cuts that order into per-device batches and accelerate deals them out round-robin
        (`BatchSamplerShard`: per-device batch k goes to process k mod N), so process r trains slice r of each
        global batch, and N processes see the same examples in the same global batches as one process with an
        N times larger batch. (Only the last, short batch of an epoch can differ: accelerate fills it up with
        examples from the start of the epoch so every process has a batch.)
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        global_batch = self.args.per_device_train_batch_size * max(self.args.world_size, 1)
        return LengthGroupedSampler(dataset.lengths, global_batch, self.args.seed, group=self.group_by_length)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        prices = inputs.pop("prices", None)
        processes = max(self.accelerator.num_processes, 1)
        accumulation = self.current_gradient_accumulation_steps
        if num_items_in_batch is None:  # not counted by the Trainer: this micro-batch's tokens, as if all were alike
            n = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
            if processes > 1:
                n = self.accelerator.gather(n.reshape(1)).sum()
            num_items_in_batch = (n * accumulation).clamp(min=1)
        elif processes > 1 and not self.args.average_tokens_across_devices:
            raise ValueError("training on several processes needs average_tokens_across_devices (the default)")
        # With N processes `num_items_in_batch` counts the whole global step and DDP averages the N gradients:
        # x N makes the sum of the processes' losses the global mean, like one process with N times the batch.
        scale = processes
        rows = len(inputs["labels"]) * accumulation * processes  # rows in the global step (the Huber mean)
        autocast = (
            torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16)
            if self.args.bf16
            else contextlib.nullcontext()
        )

        def loss_of(net: Any, **batch: Any) -> torch.Tensor:
            with autocast:
                return scale * price_loss(
                    net,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["labels"],
                    num_items_in_batch,
                    prices=batch.get("prices"),
                    lm_weight=self.lm_weight,
                    head_weight=self.head_weight,
                    rows_in_step=rows,
                )

        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
        if prices is not None:
            batch["prices"] = prices
        if model is self.accelerator.unwrap_model(model):
            loss = loss_of(model, **batch)
        else:
            loss = _through_wrapper(model, loss_of, batch)
        return (loss, None) if return_outputs else loss


def _through_wrapper(wrapper: Any, loss_of: Any, batch: dict[str, Any]) -> torch.Tensor:
    """`loss_of(inner model, **batch)`, run as the forward of the model's distributed wrapper.

    DDP (and DeepSpeed's engine) sync gradients only for a backward that follows a call of the wrapper
    itself: its forward prepares the gradient reduction. Calling the inner model directly would train each
    process on its own gradients, silently. So the wrapper is called, with the inner module's `forward`
    swapped for our loss for that one call: DDP's bookkeeping runs as usual around the same completion-only
    loss as on one process (no full logits; the regression head works too).
    """
    inner = getattr(wrapper, "module", None)
    if not isinstance(inner, torch.nn.Module):
        raise NotImplementedError(f"cannot train through a {type(wrapper).__name__} (it has no .module)")
    missing = object()
    saved = inner.__dict__.get("forward", missing)  # accelerate's mixed-precision forward, if any

    def forward(**kwargs: Any) -> torch.Tensor:
        return loss_of(inner, **kwargs)

    inner.forward = forward
    try:
        return wrapper(**batch)
    finally:
        if saved is missing:
            del inner.forward
        else:
            inner.forward = saved
