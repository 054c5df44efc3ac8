"""LoRA / QLoRA fine-tuning on price prompts, built on the transformers `Trainer`.

The `Trainer` gives checkpointing, exact resume (optimizer, scheduler, RNG and data position),
accelerate (CUDA, bf16), `report_to` (W&B, trackio, MLflow ...) and gradient accumulation. We change
only what makes it slow or blind here:

- **Loss at the completion only.** The stock causal-LM forward computes logits for every position
  (batch x length x vocabulary: 8 x 128 x 49k floats for SmolLM2) and then throws away all but the
  ~7 price tokens per row. `completion_loss` runs the base transformer for hidden states, gathers the
  positions whose next token is labelled, and applies the LM head there only (4.3 s/step instead of
  5.5 s with full logits on 2 CPU threads; TRL's SFTTrainer: 10.2 s).
- **Length-grouped batches, padded to their own longest row** (no fixed 128 padding), in an order
  that depends only on (seed, epoch), so a resumed run sees the same batches.
- **Watching**: every step goes to the run store (loss, lr, grad norm, tokens/s, ETA, an event line);
  every `probe_every` steps the live model prices a probe set with the real decoder, and the best
  adapter by probe MAE is kept as `RUN/best/` (apart from checkpoint rotation), with optional early
  stopping.

A run folder holds `config.json`, `appraiser.json` (base model + prompt settings, what
`models.load_finetuned` reads), `checkpoint-N/`, `best/` and `final/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from appraiser import config as app_config
from appraiser.data.io import DataError, read_items
from appraiser.data.prompts import PromptConfig, make_prompt
from appraiser.inference.head import HEAD_MODULE, find_head, head_module, last_prompt_positions, log_stats
from appraiser.items import Item, fingerprint
from appraiser.runs.store import Run, RunStore
from appraiser.training.config import TrainConfig
from appraiser.training.dataset import (
    IGNORE_INDEX,
    AuditReport,
    Collator,
    Example,
    ExampleDataset,
    LengthGroupedSampler,
    audit,
    choose_items,
    encode_items,
)

log = logging.getLogger(__name__)

FINETUNE_INFO = "appraiser.json"
CHECKPOINT_PREFIX = "checkpoint-"
#: Called with (step, max_steps, values) after every logged step and every probe.
Listener = Callable[[int, int, dict[str, float]], None]


# ------------------------------------------------------------------------------------------ data


@dataclass
class PreparedData:
    """The audited training examples and the probe items of a run."""

    train_items: list[Item]
    examples: list[Example]
    probe_items: list[Item]
    audit: AuditReport
    prompt: PromptConfig
    fingerprint: str


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with absolute paths (defaults from the data folder), so a resume works from anywhere."""
    data_dir = app_config.default_data_dir()
    train = cfg.train or data_dir / "train.jsonl"
    validation = cfg.validation
    if validation is None and (data_dir / "validation.jsonl").exists():
        validation = data_dir / "validation.jsonl"
    model = cfg.model
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    return cfg.model_copy(
        update={
            "train": Path(train).expanduser().resolve(),
            "validation": Path(validation).expanduser().resolve() if validation else None,
            "model": model,
        }
    )


def prepare_data(
    cfg: TrainConfig, tokenizer: Any, progress: Callable[[int], None] | None = None
) -> PreparedData:
    """Read, draw (by the weighting), tokenize and audit the training items; pick the probe items."""
    if cfg.train is None:
        raise DataError("no training file given (--train)")
    pool = read_items(cfg.train)
    validation: list[Item] = []
    if cfg.validation is not None:
        validation = read_items(cfg.validation)
    elif cfg.weighting == "match" or cfg.probe_every or cfg.off_category_weight != 1.0:
        raise DataError("no validation file given (--validation): probes and --weighting match need it")
    train_items = choose_items(
        pool, cfg.n_train, cfg.weighting, cfg.seed, validation or None, cfg.off_category_weight
    )
    prompt = cfg.prompt_config()
    examples = encode_items(train_items, tokenizer, prompt, progress=progress)
    report = audit(
        train_items, examples, tokenizer, prompt, max_length=cfg.max_length, batch_size=cfg.batch_size
    )
    # The probe picks the best checkpoint, so it comes from the END of the validation file: the fixed
    # test set that `appraiser eval` scores is the START of a split file (first 250 items by default),
    # and a checkpoint chosen on test items would flatter itself.
    probe_items = validation[-cfg.probe_size :] if cfg.probe_every else []
    return PreparedData(train_items, examples, probe_items, report, prompt, fingerprint(train_items))


# ------------------------------------------------------------------------------------------ model


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
    hidden = lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
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
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(
            dataset.lengths, self.args.per_device_train_batch_size, self.args.seed, group=self.group_by_length
        )

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        prices = inputs.pop("prices", None)
        if self.accelerator.unwrap_model(model) is not model:
            # Wrapped for distributed training: the wrapper's forward does the gradient sync, so use it
            # (full logits; the loss still sums over the step's tokens like ours; no regression head).
            if self.head_weight:
                raise NotImplementedError("the regression head is not supported with a wrapped (distributed) model")
            outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        if num_items_in_batch is None:  # not counted by the Trainer: mean over this micro-batch's tokens
            n = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum() * self.current_gradient_accumulation_steps
            num_items_in_batch = n.clamp(min=1)
        autocast = (
            torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16)
            if self.args.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            loss = price_loss(
                model,
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["labels"],
                num_items_in_batch,
                prices=prices,
                lm_weight=self.lm_weight,
                head_weight=self.head_weight,
                rows_in_step=len(inputs["labels"]) * self.current_gradient_accumulation_steps,
            )
        return (loss, None) if return_outputs else loss


# ------------------------------------------------------------------------------------------ saving


def finetune_info(cfg: TrainConfig, run_id: str | None = None, step: int | None = None) -> dict[str, Any]:
    """What `models.load_finetuned` needs to use an adapter: the base model, the prompt settings and
    whether it has a regression head (attached to the base before the adapter loads)."""
    info: dict[str, Any] = {"base_model": cfg.model, "prompt": dataclasses.asdict(cfg.prompt_config())}
    if cfg.has_head:
        info["head"] = True
        info["head_pooling"] = cfg.head_pooling
    if run_id is not None:
        info["run_id"] = run_id
    if step is not None:
        info["step"] = step
    return info


def save_adapter(model: Any, folder: Path, info: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Save the LoRA adapter + appraiser.json into `folder`, replacing it atomically."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    (tmp / FINETUNE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if extra:
        (tmp / "metrics.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in a run folder, oldest first.

    A checkpoint is complete once the Trainer wrote `trainer_state.json`, its last file; a run killed
    mid-save leaves one without it, which resume ignores.
    """
    found = []
    for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = p.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (p / "trainer_state.json").exists():
            found.append((int(suffix), p))
    return sorted(found)


# ------------------------------------------------------------------------------------------ callbacks


class StoreCallback(TrainerCallback):
    """Writes every logged step to the run store: metrics, an event line, progress; tells listeners."""

    def __init__(self, store: RunStore, run_id: str, listeners: Sequence[Listener] = ()):
        self.store = store
        self.run_id = run_id
        self.listeners = list(listeners)
        self._t0 = time.time()
        self._step0 = 0
        self._tokens0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.time()
        self._step0 = state.global_step
        self._tokens0 = state.num_input_tokens_seen or 0
        self.store.update(self.run_id, max_steps=state.max_steps, step=state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
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
        self.store.add_event(
            self.run_id, f"Step {step}/{total}: training loss={values['loss']:.4f}", step=step
        )
        for listener in self.listeners:
            listener(step, total, values)

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
        """Best MAE and patience count as they were at `step`, from the store."""
        steps, maes = self.store.series(self.run.id, "probe_mae")
        history = [(s, m) for s, m in zip(steps, maes, strict=True) if s <= step and not math.isnan(m)]
        if not history:
            return
        self.best_step, self.best = min(history, key=lambda sm: (sm[1], sm[0]))
        self.since_best = sum(1 for s, _ in history if s > self.best_step)
        self.last_step = max(s for s, _ in history)

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.probe_every and self.items)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        step = state.global_step
        if (
            self.enabled
            and logs
            and "loss" in logs
            and step % self.cfg.probe_every == 0
            and step != self.last_step
        ):
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
                f"(best ${self.best:,.2f} at step {self.best_step})",
                level="warning",
                step=step,
            )
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
            batch = {
                k: v.to(device) for k, v in collate(self.examples[s : s + self.cfg.probe_batch_size]).items()
            }
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            loss = completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total += float(loss) * n
            count += n
        return total / max(count, 1)


# ------------------------------------------------------------------------------------------ runs


@dataclass
class TrainResult:
    run_id: str
    folder: Path
    steps: int
    train_loss: float
    final: Path
    best: Path | None
    best_probe_mae: float | None
    best_step: int | None
    stopped_early: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


def _training_args(cfg: TrainConfig, folder: Path, run_id: str) -> TrainingArguments:
    device, dtype = device_and_dtype()
    optim = "adamw_torch"
    if device == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            optim = "paged_adamw_32bit"
        except ImportError:
            pass
    return TrainingArguments(
        output_dir=str(folder),
        run_name=run_id,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        max_grad_norm=cfg.max_grad_norm,
        optim=optim,
        seed=cfg.seed,
        bf16=dtype == torch.bfloat16,
        use_cpu=device == "cpu",
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=cfg.keep_checkpoints,
        report_to=cfg.report_to or "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=device == "cuda",
    )


def _set_threads(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def _prepare(
    cfg: TrainConfig, data_progress: Callable[[int], None] | None, stage: Callable[[str], None]
) -> PreparedData:
    """Data for a run, audited: a failed audit raises before any run or model exists."""
    from appraiser.models import load_tokenizer

    stage("preparing data")
    data = prepare_data(cfg, load_tokenizer(cfg.model), progress=data_progress)
    data.audit.raise_if_failed()
    return data


def _run(
    store: RunStore,
    run: Run,
    cfg: TrainConfig,
    data: PreparedData,
    *,
    resume_from: Path | None,
    listeners: Sequence[Listener],
    stage: Callable[[str], None],
) -> TrainResult:
    folder = Path(run.folder)  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    try:
        _set_threads(cfg)
        stage("loading model")
        head_stats = log_stats([it.price for it in data.train_items]) if cfg.has_head else None
        model, tokenizer = build_model(cfg, head_stats)
        info = finetune_info(cfg, run.id)
        store_cb = StoreCallback(store, run.id, listeners)
        probe_cb = ProbeCallback(
            cfg,
            data.probe_items,
            _probe_examples(cfg, data, tokenizer),
            tokenizer,
            store,
            run,
            info,
            listeners,
        )
        if resume_from is not None:
            probe_cb.restore(int(resume_from.name[len(CHECKPOINT_PREFIX) :]))
        trainer = PriceTrainer(
            model=model,
            args=_training_args(cfg, folder, run.id),
            train_dataset=ExampleDataset(data.examples),
            data_collator=Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            callbacks=[store_cb, probe_cb],
            group_by_length=cfg.length_grouping,
            lm_weight=cfg.lm_weight,
            head_weight=cfg.head_weight,
            head_lr=cfg.head_lr,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        store.set_status(
            run.id, "running", message="Training started" if resume_from is None else "Training resumed"
        )
        stage("training")
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        if cfg.head_refit != "none":
            _refit(cfg, data, model, tokenizer, store, run, info, stage)
            if probe_cb.enabled:  # the refit head is probed like a checkpoint (best/ if it wins)
                probe_cb.probe(model, trainer.state, trainer.control)
        final = save_adapter(model, folder / "final", {**info, "step": step}, extra={"step": step})
        stopped = bool(trainer.control.should_training_stop and step < trainer.state.max_steps)
        best = folder / "best" if (folder / "best").exists() else None
        msg = f"Training finished at step {step}: mean training loss {output.training_loss:.4f}"
        if probe_cb.best is not None:
            msg += f"; best probe MAE ${probe_cb.best:,.2f} at step {probe_cb.best_step}"
        store.set_status(run.id, "succeeded", message=msg)
        return TrainResult(
            run_id=run.id,
            folder=folder,
            steps=step,
            train_loss=float(output.training_loss),
            final=final,
            best=best,
            best_probe_mae=probe_cb.best,
            best_step=probe_cb.best_step,
            stopped_early=stopped,
            metrics=dict(output.metrics),
        )
    except KeyboardInterrupt:
        store.set_status(run.id, "cancelled", message="Run cancelled (interrupted); resume it with --resume")
        raise
    except BaseException as e:
        store.set_status(
            run.id, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        raise
    finally:
        torch.set_num_threads(threads)  # an in-process run leaves the caller's setting as it was


def _refit(
    cfg: TrainConfig,
    data: PreparedData,
    model: Any,
    tokenizer: Any,
    store: RunStore,
    run: Run,
    info: dict[str, Any],
    stage: Callable[[str], None],
) -> None:
    """Refit the head on the trained model's features (training.refit); later saves carry its size."""
    from appraiser.training.refit import refit_head

    n = len({it.id for it in data.train_items})
    n = min(n, cfg.head_refit_items or n)
    stage(f"refitting the head ({cfg.head_refit}) on {n} training items")
    store.add_event(run.id, f"Head refit ({cfg.head_refit}): reading the features of {n} training items")
    result = refit_head(
        model,
        tokenizer,
        data.train_items,
        lambda it: make_prompt(it, tokenizer, data.prompt),
        cfg.head_refit,
        cfg.head_refit_items,
        cfg.probe_batch_size,
    )
    info["head_support"] = head_module(model).kernel_rows  # shared with the probe's saves of best/
    store.add_event(run.id, result.describe())


def _probe_examples(cfg: TrainConfig, data: PreparedData, tokenizer: Any) -> list[Example]:
    return encode_items(data.probe_items, tokenizer, data.prompt) if data.probe_items else []


def start(
    cfg: TrainConfig,
    *,
    store: RunStore | None = None,
    listeners: Sequence[Listener] = (),
    data_progress: Callable[[int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_created: Callable[[Run], None] | None = None,
) -> TrainResult:
    """Audit the data, create a run for `cfg` in the store and train it to the end."""
    store = store or RunStore()
    stage = on_stage or (lambda _msg: None)
    cfg = resolve_paths(cfg)
    data = _prepare(cfg, data_progress, stage)
    config = {**cfg.model_dump(mode="json"), "data_fingerprint": data.fingerprint}
    run = store.create(kind="local", name=cfg.name, model=cfg.model, config=config)
    folder = Path(run.folder)  # type: ignore[arg-type]
    cfg.save(folder / "config.json")
    (folder / FINETUNE_INFO).write_text(
        json.dumps(finetune_info(cfg, run.id), indent=2) + "\n", encoding="utf-8"
    )
    store.add_event(
        run.id, f"Run created: {cfg.model}, LoRA r={cfg.lora_r} on {','.join(cfg.target_modules)}"
    )
    store.add_event(run.id, data.audit.summary())
    if on_created is not None:
        on_created(run)
    return _run(store, run, cfg, data, resume_from=None, listeners=listeners, stage=stage)


def resume(
    ref: str,
    *,
    store: RunStore | None = None,
    listeners: Sequence[Listener] = (),
    data_progress: Callable[[int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Continue a killed, failed or cancelled run from its newest complete checkpoint (same data order)."""
    store = store or RunStore()
    stage = on_stage or (lambda _msg: None)
    run = store.get(ref)
    if run.kind != "local" or run.folder is None:
        raise DataError(f"run {run.id} is not a local training run")
    if run.status == "succeeded":
        raise DataError(f"run {run.id} already finished; nothing to resume")
    if run.status == "running" and run.alive():
        raise DataError(f"run {run.id} is still running (pid {run.pid})")
    folder = Path(run.folder)
    if not (folder / "config.json").exists():
        raise DataError(f"{folder}: no config.json; cannot resume run {run.id}")
    cfg = TrainConfig.load(folder / "config.json")
    data = _prepare(cfg, data_progress, stage)
    expected = run.config.get("data_fingerprint")
    if expected and expected != data.fingerprint:
        raise DataError(
            f"the training data changed since run {run.id} started (fingerprint {data.fingerprint}, "
            f"was {expected}); resume needs the same files"
        )
    complete = checkpoints(folder)
    for p in folder.glob(f"{CHECKPOINT_PREFIX}*"):  # half-written by the killed run
        if p.is_dir() and p not in {c for _, c in complete}:
            shutil.rmtree(p, ignore_errors=True)
    if complete:
        step, path = complete[-1]
        dropped = store.discard_after(run.id, step)
        store.add_event(
            run.id,
            f"Resuming from {path.name} (step {step}); {dropped} later metric values dropped",
            step=step,
        )
        resume_from: Path | None = path
    else:
        store.discard_after(run.id, 0)
        store.add_event(run.id, "No complete checkpoint; restarting from step 0")
        resume_from = None
    store.update(run.id, error=None)
    return _run(store, run, cfg, data, resume_from=resume_from, listeners=listeners, stage=stage)
