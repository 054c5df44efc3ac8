"""LoRA / QLoRA fine-tuning on price prompts, built on the transformers `Trainer`; read top-down.

The `Trainer` gives checkpointing, exact resume (optimizer, scheduler, RNG and data position),
accelerate (CUDA, bf16), `report_to` (W&B, trackio, MLflow ...) and gradient accumulation. We change
only what makes it slow or blind here:

- **Loss at the completion only** (`training.loss`). The stock causal-LM forward computes logits for
  every position (batch x length x vocabulary: 8 x 128 x 49k floats for SmolLM2) and then throws
  away all but the ~7 price tokens per row. `completion_loss` runs the base transformer for hidden
  states, gathers the positions whose next token is labelled, and applies the LM head there only.
  What that buys against TRL's `SFTTrainer` on the same model, LoRA and data is measured by
  `python benchmarks/train_speed.py` (README, "Benchmarks").
- **Length-grouped batches, padded to their own longest row** (no fixed 128 padding), in an order
  that depends only on (seed, epoch), so a resumed run sees the same batches (`training.dataset`).
- **Watching** (`training.callbacks`): every step goes to the run store (loss, lr, grad norm,
  tokens/s, ETA, an event line); every `probe_every` steps the live model prices a probe set with
  the real decoder, and the best adapter by probe MAE is kept as `RUN/best/` (apart from checkpoint
  rotation), with optional early stopping.
- **Checkpoints that survive a kill** (`training.checkpoints`): a checkpoint counts only once its
  completion marker is written, after the Trainer's own save; `resume` validates the newest one and
  falls back to the previous one if it is damaged. `best/` and `final/` are replaced atomically.

This module is the run itself, in the order it happens: `prepare_data` (read, draw, tokenize, audit)
→ `_run` (build the model, train, optionally refit the head, save `final/`) → `start` / `resume`.
The model is built in `training.model`.

A run folder holds `config.json`, `appraiser.json` (base model + prompt settings, what
`models.load_finetuned` reads), `checkpoint-N/`, `best/` and `final/`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, ProgressCallback, TrainingArguments

from appraiser import config as app_config
from appraiser.data.io import DataError, read_items, read_pool
from appraiser.data.prompts import PromptConfig
from appraiser.inference.head import head_module, log_stats
from appraiser.items import Item, fingerprint
from appraiser.models import FINETUNE_INFO
from appraiser.runs.store import Run, RunStore
from appraiser.training import distributed
from appraiser.training.callbacks import CheckpointMarker, Listener, ProbeCallback, StoreCallback
from appraiser.training.checkpoints import (
    CHECKPOINT_PREFIX,
    checkpoint_step,
    checkpoints,
    choose_checkpoint,
    describe_finetune,
    recover_folder,
    save_adapter,
    write_json_atomic,
)
from appraiser.training.config import TrainConfig
from appraiser.training.dataset import (
    AuditReport,
    Collator,
    Example,
    ExampleDataset,
    audit,
    choose_items,
    encode,
    encode_items,
    full_prompt,
    rag_contexts,
    rag_index_path,
)
from appraiser.training.loss import PriceTrainer, completion_loss, price_loss
from appraiser.training.model import build_model, device_and_dtype

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "Listener",
    "PreparedData",
    "PriceTrainer",
    "ProbeCallback",
    "StoreCallback",
    "TrainResult",
    "build_model",
    "checkpoints",
    "completion_loss",
    "describe_finetune",
    "device_and_dtype",
    "prepare_data",
    "price_loss",
    "resolve_paths",
    "resume",
    "save_adapter",
    "start",
    "train_prepared",
]


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
    # A caller that makes its own examples (the server's fine-tuning jobs, from chat files) also gives the
    # probe's prompts and examples; None: made from `probe_items` with the course prompt.
    probe_prompts: list[str] | None = None
    probe_examples: list[Example] | None = None
    # A RAG fine-tune's context per training item id (training.dataset.rag_contexts) and its index's pool.
    contexts: dict[str, str] = field(default_factory=dict)
    index_pool: str | None = None


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
            "train": (
                [Path(t).expanduser().resolve() for t in train]
                if isinstance(train, list)
                else Path(train).expanduser().resolve()
            ),
            "validation": Path(validation).expanduser().resolve() if validation else None,
            "model": model,
            "index": rag_index_path(cfg),
        }
    )


def prepare_data(cfg: TrainConfig, tokenizer: Any, progress: Callable[[int], None] | None = None) -> PreparedData:
    """Read, draw (by the weighting), tokenize and audit the training items; pick the probe items."""
    if cfg.train is None:
        raise DataError("no training file given (--train)")
    pool = read_pool(cfg.train)
    validation: list[Item] = []
    if cfg.validation is not None:
        validation = read_items(cfg.validation)
    elif cfg.weighting == "match" or cfg.probe_every or cfg.off_category_weight != 1.0:
        raise DataError("no validation file given (--validation): probes and --weighting match need it")
    if cfg.validation is not None and not validation:
        # An empty file would silently turn probes (and --patience) off, or fail deep in the weighting.
        needs = [
            what
            for what, wanted in (
                (f"probes (probe_every {cfg.probe_every})", cfg.probe_every),
                ("weighting 'match'", cfg.weighting == "match"),
                ("off_category_weight", cfg.off_category_weight != 1.0),
            )
            if wanted
        ]
        if needs:
            raise DataError(f"{cfg.validation}: holds no items; validation items are needed for {', '.join(needs)}")
    train_items = choose_items(
        pool,
        cfg.n_train,
        cfg.weighting,
        cfg.seed,
        validation or None,
        cfg.off_category_weight,
        cfg.sources,
        cfg.off_source_weight,
    )
    prompt = cfg.prompt_config()
    probe_items = validation[-cfg.probe_size :] if cfg.probe_every else []
    rag = rag_contexts(cfg, pool, train_items, probe_items, tokenizer) if cfg.rag else None
    contexts = [rag.contexts[it.id] for it in train_items] if rag else None
    examples = encode_items(train_items, tokenizer, prompt, progress=progress, contexts=contexts)
    report = audit(
        train_items,
        examples,
        tokenizer,
        prompt,
        max_length=cfg.max_length,
        batch_size=cfg.batch_size,
        contexts=contexts,
    )
    # The probe picks the best checkpoint, so it comes from the END of the validation file: the fixed
    # test set that `appraiser eval` scores is the START of a split file (first 250 items by default),
    # and a checkpoint chosen on test items would flatter itself.
    data = PreparedData(train_items, examples, probe_items, report, prompt, fingerprint(train_items))
    if rag is not None:
        data.contexts, data.index_pool = rag.contexts, rag.pool
        data.probe_prompts = [full_prompt(it, tokenizer, prompt, rag.contexts[it.id]) for it in probe_items]
        data.probe_examples = [encode(it, tokenizer, prompt, rag.contexts[it.id]) for it in probe_items]
    return data


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
        save_total_limit=None,  # CheckpointMarker rotates, after the new checkpoint is marked complete
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
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    folder = Path(run.folder)  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    try:
        _set_threads(cfg)
        stage("loading model")
        head_stats = log_stats([it.price for it in data.train_items]) if cfg.has_head else None
        model, tokenizer = build_model(cfg, head_stats)
        info = {**describe_finetune(cfg, run.id), **cfg.rag_info()}
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
        if data.probe_prompts is not None:
            probe_cb.prompts = list(data.probe_prompts)
        if resume_from is not None:
            probe_cb.restore(checkpoint_step(resume_from) or 0)
        trainer = PriceTrainer(
            model=model,
            args=_training_args(cfg, folder, run.id),
            train_dataset=ExampleDataset(data.examples),
            data_collator=Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            # the marker first (see CheckpointMarker); it also rotates the checkpoints
            callbacks=[CheckpointMarker(cfg.keep_checkpoints), store_cb, probe_cb, *callbacks],
            group_by_length=cfg.length_grouping,
            lm_weight=cfg.lm_weight,
            head_weight=cfg.head_weight,
            head_lr=cfg.head_lr,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        store.set_status(run.id, "running", message="Training started" if resume_from is None else "Training resumed")
        stage("training")
        if resume_from is not None and probe_cb.patience_spent:
            output = _already_stopped(trainer, resume_from, probe_cb, store, run)
        else:
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        if cfg.head_refit != "none":
            _refit(cfg, data, model, tokenizer, store, run, info, stage)
            if probe_cb.enabled:  # the refit head is probed like a checkpoint (best/ if it wins)
                probe_cb.probe(model, trainer.state, trainer.control)
        final = save_adapter(model, folder / "final", {**info, "step": step}, extra={"step": step})
        stopped = bool(trainer.control.should_training_stop and step < trainer.state.max_steps)
        best = folder / "best" if (folder / "best").exists() else None
        train_loss = float(output.training_loss)
        if resume_from is not None:  # the Trainer averages this process's steps only: the whole run's instead
            logged = [v for v in store.series(run.id, "loss")[1] if v is not None and math.isfinite(v)]
            train_loss = sum(logged) / len(logged) if logged else train_loss
        msg = f"Training finished at step {step}: mean training loss {train_loss:.4f}"
        if probe_cb.best is not None:
            msg += f"; best probe MAE ${probe_cb.best:,.2f} at step {probe_cb.best_step}"
        store.set_status(run.id, "succeeded", message=msg)
        return TrainResult(
            run_id=run.id,
            folder=folder,
            steps=step,
            train_loss=train_loss,
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
        store.set_status(run.id, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise
    finally:
        torch.set_num_threads(threads)  # an in-process run leaves the caller's setting as it was


def _already_stopped(trainer: Any, checkpoint: Path, probe_cb: ProbeCallback, store: RunStore, run: Run) -> Any:
    """The checkpoint's model and state, without a further step: the run had stopped early at this step.

    A run that stops early still saves the checkpoint of its last step; killed after that save (before
    `final/`), it resumes from there. `Trainer.train` cannot be told to stop before the first step it
    resumes with (it resets `control.should_training_stop` and checks it only after a step), so it is not
    called: the weights are loaded as it would load them, and the run ends as the uninterrupted one did
    (head refit, `final/`)."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    trainer.control.should_training_stop = True
    step = trainer.state.global_step
    store.add_event(
        run.id,
        f"Early stopping at step {step} stands: no better probe MAE in {probe_cb.since_best} probes "
        + (
            f"(best ${probe_cb.best:,.2f} at step {probe_cb.best_step})"
            if probe_cb.best is not None
            else "(no probe has priced an item)"
        )
        + "; no further step trained",
        level="warning",
        step=step,
    )
    return TrainOutput(step, float("nan"), {})


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
    beat = [time.monotonic()]

    def heartbeat(done: int) -> None:  # minutes of feature reading write no step: without it, a "stall"
        if time.monotonic() - beat[0] >= 10:
            store.touch(run.id)
            beat[0] = time.monotonic()

    result = refit_head(
        model,
        tokenizer,
        data.train_items,
        lambda it: full_prompt(it, tokenizer, data.prompt, data.contexts.get(it.id, "")),
        cfg.head_refit,
        cfg.head_refit_items,
        cfg.probe_batch_size,
        progress=heartbeat,
    )
    info["head_support"] = head_module(model).kernel_rows  # shared with the probe's saves of best/
    store.add_event(run.id, result.describe())


def _probe_examples(cfg: TrainConfig, data: PreparedData, tokenizer: Any) -> list[Example]:
    if data.probe_examples is not None:
        return data.probe_examples
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
    if data.index_pool is not None:  # recorded, so that reading the run refuses another pool's index
        cfg = cfg.model_copy(update={"index_pool": data.index_pool})
    config = {**cfg.model_dump(mode="json"), **_resume_keys(data)}
    run = distributed.create_run(store, kind="local", name=cfg.name, model=cfg.model, config=config, pid=os.getpid())
    store = distributed.rank_store(store)  # one run, written by rank 0 only (training.distributed)
    folder = Path(run.folder)  # type: ignore[arg-type]
    cfg.save(folder / "config.json")
    write_json_atomic(folder / FINETUNE_INFO, {**describe_finetune(cfg, run.id), **cfg.rag_info()})
    store.add_event(run.id, f"Run created: {cfg.model}, LoRA r={cfg.lora_r} on {','.join(cfg.target_modules)}")
    store.add_event(run.id, data.audit.summary())
    if on_created is not None and distributed.is_main():
        on_created(run)
    return _run(store, run, cfg, data, resume_from=None, listeners=listeners, stage=stage)


def train_prepared(
    store: RunStore,
    run: Run,
    cfg: TrainConfig,
    data: PreparedData,
    *,
    resume: bool = False,
    listeners: Sequence[Listener] = (),
    callbacks: Sequence[Any] = (),
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train examples the caller made itself (the server's fine-tuning jobs train on chat files) as `run`,
    whose folder already holds `config.json` and `appraiser.json`. `resume`: from the newest complete
    checkpoint (step 0 when there is none), as `resume` does. `callbacks`: extra Trainer callbacks, after
    the run's own (a job's cancel/pause control)."""
    stage = on_stage or (lambda _msg: None)
    resume_from = _resume_point(store, run, Path(run.folder)) if resume else None  # type: ignore[arg-type]
    return _run(store, run, cfg, data, resume_from=resume_from, listeners=listeners, stage=stage, callbacks=callbacks)


def resume(
    ref: str,
    *,
    store: RunStore | None = None,
    listeners: Sequence[Listener] = (),
    data_progress: Callable[[int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Continue a killed, failed or cancelled run from its newest complete checkpoint (same data order)."""
    store = distributed.rank_store(store or RunStore())
    stage = on_stage or (lambda _msg: None)
    run = store.get(ref)
    if run.kind != "local" or run.folder is None:
        raise DataError(f"run {run.id} is not a local training run")
    if run.status == "succeeded":
        raise DataError(f"run {run.id} already finished; nothing to resume")
    if run.status in ("running", "queued") and run.alive():
        raise DataError(f"run {run.id} is still running (pid {run.pid})")
    folder = Path(run.folder)
    if not (folder / "config.json").exists():
        raise DataError(f"{folder}: no config.json; cannot resume run {run.id}")
    cfg = TrainConfig.load(folder / "config.json")  # damaged or invalid: a DataError naming the file
    _check_dtype(run)
    data = _prepare(cfg, data_progress, stage)
    expected = run.config.get("data_fingerprint")
    if expected and expected != data.fingerprint:
        raise DataError(
            f"the training data changed since run {run.id} started (fingerprint {data.fingerprint}, "
            f"was {expected}); resume needs the same files"
        )
    probes = run.config.get("probe_fingerprint")  # absent in runs made before it was recorded
    if probes and probes != _resume_keys(data)["probe_fingerprint"]:
        raise DataError(
            f"the probe items changed since run {run.id} started ({cfg.validation}): its best/ and patience "
            "were judged on the old ones, so new probe MAEs would not compare; resume needs the same validation file"
        )
    with distributed.main_first():  # rank 0 removes damaged checkpoints; then the others choose the same one
        resume_from = _resume_point(store, run, folder)
    store.update(run.id, error=None)
    return _run(store, run, cfg, data, resume_from=resume_from, listeners=listeners, stage=stage)


#: APPRAISER_DTYPE's name for each dtype a run records.
_DTYPE_FLAG = {"float32": "fp32", "bfloat16": "bf16"}


def _resume_keys(data: PreparedData) -> dict[str, str]:
    """What a run records (in the store's config) for `resume` to check: the training draw, the precision it
    trains in and the probe items. A resume that differs in any would not continue the same run: another
    draw; a bf16 run resumed in fp32 (or back) changes every later step; other probe items make the new
    probe MAEs incomparable with the kept best/ and the patience count."""
    _, dtype = device_and_dtype()
    return {
        "data_fingerprint": data.fingerprint,
        "dtype": str(dtype).removeprefix("torch."),
        "probe_fingerprint": fingerprint(data.probe_items),
    }


def _check_dtype(run: Run) -> None:
    """Refuse a resume in another precision than the run's (runs made before it was recorded: no check)."""
    was = run.config.get("dtype")
    if not was:
        return
    _, dtype = device_and_dtype()
    now = str(dtype).removeprefix("torch.")
    if now != was:
        flag = _DTYPE_FLAG.get(str(was))
        how = f"set APPRAISER_DTYPE={flag} to resume it as it started" if flag else "resume it where it started"
        raise DataError(f"run {run.id} trained in {was} and would resume in {now} here; {how}")


def _resume_point(store: RunStore, run: Run, folder: Path) -> Path | None:
    """The newest checkpoint that validates (None: start over); damaged newer ones are reported and removed.

    Also puts back what a kill during a save of `best/` or `final/` left half-swapped.
    """
    for saved in ("best", "final"):
        recover_folder(folder / saved)
    choice = choose_checkpoint(folder)
    for path, reason in choice.damaged:  # newest first; none of them can be resumed from
        msg = f"Skipping damaged {path.name}: {reason}"
        log.warning("%s: %s", folder, msg)
        store.add_event(run.id, msg, level="warning", step=checkpoint_step(path))
        shutil.rmtree(path, ignore_errors=True)
    if choice.path is None:
        store.discard_after(run.id, 0)
        store.add_event(run.id, "No complete checkpoint; restarting from step 0")
        return None
    step = choice.step or 0
    dropped = store.discard_after(run.id, step)
    store.add_event(
        run.id,
        f"Resuming from {choice.path.name} (step {step}); {dropped} later metric values dropped",
        step=step,
    )
    return choice.path
