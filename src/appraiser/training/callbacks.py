"""What the `Trainer` calls back into: the run store, the probe, the checkpoint marker.

- `StoreCallback` writes every logged step to the run store (loss, lr, grad norm, tokens/s, ETA, an
  event line) and tells listeners (the CLI's progress view).
- `ProbeCallback` prices a probe set with the live model every `probe_every` steps and keeps the best
  adapter as `RUN/best/` (optional early stopping).
- `CheckpointMarker` marks a checkpoint complete after the Trainer has written all of it.

On several processes (`training.distributed`) every process runs these callbacks: the store they get writes
on rank 0 only, listeners are told on rank 0 only, and every process runs the probe (the weights are the
same everywhere, so each reaches the same early-stopping decision and none waits for a stopped one) while
rank 0 alone saves `best/`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from appraiser.data.io import DataError
from appraiser.data.prompts import make_prompt
from appraiser.items import Item
from appraiser.runs.store import Run, RunStore
from appraiser.training import distributed
from appraiser.training.checkpoints import CHECKPOINT_PREFIX, mark_checkpoint, rotate_checkpoints, save_adapter
from appraiser.training.config import TrainConfig
from appraiser.training.dataset import IGNORE_INDEX, Collator, Example
from appraiser.training.loss import completion_loss

#: Called with (step, max_steps, values) after every logged step and every probe.
Listener = Callable[[int, int, dict[str, float]], None]


class NonFiniteLoss(DataError):
    """The training loss became NaN or infinite: the run stops at once and is marked failed (a DataError:
    the CLI prints it as one line and exits with code 2). Every later step would only train on garbage."""


class StoreCallback(TrainerCallback):
    """Writes every logged step to the run store: metrics, an event line, progress; tells listeners.

    A non-finite loss stops the run at once (`NonFiniteLoss`), after it is recorded, so the store shows it.
    """

    def __init__(self, store: RunStore, run_id: str, listeners: Sequence[Listener] = ()):
        self.store = store
        self.run_id = run_id
        self.listeners = list(listeners)
        self._t0 = time.time()
        self._step0 = 0
        self._tokens0 = 0
        self._updated = False  # has any step so far run with a learning rate above 0 (moved the weights)?

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.time()
        self._step0 = state.global_step
        self._tokens0 = state.num_input_tokens_seen or 0
        steps, lrs = self.store.series(self.run_id, "lr")  # a resumed run's earlier steps count too
        self._updated = any(s <= state.global_step and v is not None and v > 0 for s, v in zip(steps, lrs, strict=True))
        self.store.update(self.run_id, max_steps=state.max_steps, step=state.global_step)
        # The Trainer's default logs the window's mean in place of a NaN/inf loss (a NaN logged as 0.0 at
        # logging_steps=1): it would hide exactly what must stop the run.
        args.logging_nan_inf_filter = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return
        step, total = state.global_step, state.max_steps
        elapsed = max(time.time() - self._t0, 1e-9)
        done = max(step - self._step0, 1)
        values = {
            "loss": float(logs["loss"]),
            "lr": float(logs.get("learning_rate", float("nan"))),
            "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
            "tokens_per_s": ((state.num_input_tokens_seen or 0) - self._tokens0) / elapsed,
            "eta_s": (total - step) * elapsed / done,
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
        }
        self.store.log_metrics(self.run_id, step, values)
        self.store.update(self.run_id, step=step)
        self.store.add_event(self.run_id, f"Step {step}/{total}: training loss={values['loss']:.4f}", step=step)
        if not math.isfinite(values["loss"]):
            raise NonFiniteLoss(
                f"training loss is {values['loss']} at step {step}/{total}: run {self.run_id} stopped; "
                + self._causes(values["lr"])
            )
        if values["lr"] > 0:  # the loss logged at step N was computed before step N's update
            self._updated = True
        if not state.is_world_process_zero:  # the logged loss is already every process's mean
            return
        for listener in self.listeners:
            listener(step, total, values)

    def _causes(self, lr: float) -> str:
        """What can make the loss non-finite, honestly: a learning rate only if the weights were updated.

        The loss at step N is computed with the weights of steps 1..N-1; if none of them had a learning rate
        above 0 (`--lr` near 0, the first step, a warmup from 0), the weights are the base model's, and
        "try a lower --lr" would send the user the wrong way."""
        precision = "an overflow in bf16/fp16 (APPRAISER_DTYPE=fp32 rules it out)"
        if not self._updated:
            return (
                "the weights were not updated before it (learning rate 0 so far), so the learning rate is not "
                f"the cause: look at {precision} or the items (--dry-run shows their tokens)"
            )
        return f"usual causes: a learning rate too high ({lr:.2e} at this step; try a lower --lr), {precision}"

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        self.store.add_event(self.run_id, f"Checkpoint saved: {CHECKPOINT_PREFIX}{step}", step=step)


class ProbeCallback(TrainerCallback):
    """Prices the probe set with the live model every `probe_every` steps; keeps the best adapter.

    The probe uses the real decoder (`inference.decode.predict_prices`), so its MAE is the number
    that matters, not a proxy. The best-so-far state comes from the run store, so it survives a
    resume (metrics after the resumed checkpoint are discarded and recomputed).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        items: Sequence[Item],
        examples: Sequence[Example],
        tokenizer: Any,
        store: RunStore,
        run: Run,
        info: dict[str, Any],
        listeners: Sequence[Listener] = (),
    ):
        self.cfg = cfg
        self.items = list(items)
        self.examples = list(examples)
        self.prompts = [make_prompt(it, tokenizer, cfg.prompt_config()) for it in self.items]
        self.tokenizer = tokenizer
        self.store = store
        self.run = run
        self.info = info
        self.listeners = list(listeners)
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0
        self.last_step: int | None = None

    def restore(self, step: int) -> None:
        """Best MAE and patience count as they were at `step`, from the store.

        The patience count alone is not the early stop: the stop lived in the Trainer's `control`, which a
        resume does not restore, so a run killed after the checkpoint of the step it stopped at would train on.
        `patience_spent` tells the trainer so (`trainer._run` then trains no further step)."""
        steps, maes = self.store.series(self.run.id, "probe_mae")
        history = [(s, m) for s, m in zip(steps, maes, strict=True) if s <= step]
        if not history:
            return
        priced = [(s, m) for s, m in history if not math.isnan(m)]
        if priced:
            self.best_step, self.best = min(priced, key=lambda sm: (sm[1], sm[0]))
        # counted as the live probes count them: a probe that priced nothing (NaN) is no improvement either
        self.since_best = sum(1 for s, _ in history if self.best_step is None or s > self.best_step)
        self.last_step = max(s for s, _ in history)

    @property
    def patience_spent(self) -> bool:
        """True when the probes so far already called for the early stop (after `restore`: at that step)."""
        return bool(self.cfg.patience and self.since_best >= self.cfg.patience)

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.probe_every and self.items)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        step = state.global_step
        if self.enabled and logs and "loss" in logs and step % self.cfg.probe_every == 0 and step != self.last_step:
            self.probe(kwargs["model"], state, control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.enabled and state.global_step != self.last_step and state.global_step > 0:
            self.probe(kwargs["model"], state, control)

    def probe(self, model: Any, state: Any, control: Any) -> dict[str, float]:
        from appraiser.evaluation.metrics import GREEN, colour
        from appraiser.inference.decode import predict_prices

        step = state.global_step
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                dists = predict_prices(
                    model,
                    self.tokenizer,
                    self.prompts,
                    method=self.cfg.probe_method,
                    batch_size=self.cfg.probe_batch_size,
                )
                eval_loss = self._eval_loss(model)
        finally:
            model.train(was_training)
        guesses = [d.price if d is not None else None for d in dists]
        pairs = [(g, it.price) for g, it in zip(guesses, self.items, strict=True) if g is not None and g == g]
        mae = sum(abs(g - t) for g, t in pairs) / len(pairs) if pairs else float("nan")
        hits = sum(1 for g, t in pairs if colour(g, t) == GREEN)
        values = {
            "probe_mae": mae,
            "probe_hit_rate": hits / len(self.items),
            "probe_failures": float(len(self.items) - len(pairs)),
            "eval_loss": eval_loss,
        }
        self.store.log_metrics(self.run.id, step, values)
        self.last_step = step
        msg = f"Probe at step {step}: MAE ${mae:,.2f}, hit rate {values['probe_hit_rate']:.0%}"
        msg += f", eval loss {eval_loss:.4f} ({len(self.items)} validation items"
        msg += f", {len(self.items) - len(pairs)} failed)" if len(pairs) < len(self.items) else ")"
        if not math.isnan(mae) and (self.best is None or mae < self.best):
            self.best, self.best_step, self.since_best = mae, step, 0
            save_adapter(
                model,
                Path(self.run.folder) / "best",
                {**self.info, "step": step},
                extra={"step": step, **values, "probe_items": len(self.items)},
            )
            self.store.set_best(self.run.id, "probe_mae", mae, step)
            msg += " - new best, saved to best/"
        else:
            self.since_best += 1
        self.store.add_event(self.run.id, msg, step=step)
        if self.cfg.patience and self.since_best >= self.cfg.patience and not control.should_training_stop:
            control.should_training_stop = True
            self.store.add_event(
                self.run.id,
                f"Early stopping at step {step}: no better probe MAE in {self.since_best} probes "
                + (
                    f"(best ${self.best:,.2f} at step {self.best_step})"
                    if self.best is not None
                    else "(no probe has priced an item yet)"
                ),
                level="warning",
                step=step,
            )
        if state.is_world_process_zero:
            for listener in self.listeners:
                listener(step, state.max_steps, values)
        return values

    def _eval_loss(self, model: Any) -> float:
        """Mean completion loss of the probe items (teacher forcing), a smooth companion to the MAE."""
        if not self.examples:
            return float("nan")
        collate = Collator(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for s in range(0, len(self.examples), self.cfg.probe_batch_size):
            batch = {k: v.to(device) for k, v in collate(self.examples[s : s + self.cfg.probe_batch_size]).items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            loss = completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total += float(loss) * n
            count += n
        return total / max(count, 1)


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it (`checkpoints.mark_checkpoint`).

    `on_save` runs after the Trainer's own save (adapter, optimizer, scheduler, RNG, trainer_state.json),
    so a checkpoint without the marker is one a kill cut short. Put it first among the callbacks, so the
    marker is written before anything else reacts to the save. On several processes each writes its own
    RNG state into the checkpoint: all wait for each other first, then rank 0 writes the marker.
    """

    def __init__(self, keep: int | None = None):
        self.keep = keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        distributed.barrier()
        path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if path.is_dir() and args.should_save:
            mark_checkpoint(path, state.global_step)
            if self.keep:  # only now that the new one is complete (see rotate_checkpoints)
                rotate_checkpoints(Path(args.output_dir), self.keep)
