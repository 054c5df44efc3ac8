"""Everything that defines a fine-tuning run, in one validated object saved beside the run.

Saved as `RUN/config.json`, it is what `--resume` reloads, so a resumed run trains exactly the run
that was started. Defaults suit the embedded SmolLM2 on a 2-core CPU; on a GPU raise the batch, the
text budget and `n_train`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from appraiser.data.io import DataError
from appraiser.data.prompts import PromptConfig
from appraiser.inference.head import HeadPooling

Weighting = Literal["none", "price_flat", "match"]
ProbeMethod = Literal["expected", "greedy", "head"]
HeadRefit = Literal["none", "ridge", "kernel"]
#: The transformers `SchedulerType` values this trainer can run: the others need what a TrainConfig cannot
#: give (`lr_scheduler_kwargs`: cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay) or an
#: evaluation metric the Trainer never computes here (reduce_lr_on_plateau, greedy). Checked here, not when
#: the Trainer is built, so an unknown name is one line before a run exists (tests/test_train_guards.py
#: checks that each is a SchedulerType transformers builds).
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
#: Seeds numpy's and torch's generators take (numpy refuses a negative seed or one of 2**32 and more).
MAX_SEED = 2**32 - 1
#: `TrainConfig.load` validates with this context: a saved run keeps the settings it started with, so checks
#: added later for a fresh run's options (see `_check`) do not make an older run impossible to resume.
SAVED = {"saved": True}


#: The most passes over the drawn items a run may ask for (`--epochs`).
MAX_EPOCHS = 1000


class TrainConfig(BaseModel):
    """A LoRA / QLoRA prompt-completion fine-tune of a causal LM on price prompts."""

    # allow_inf_nan=False: every float must be finite. `--epochs inf` overflowed when the Trainer counted its
    # steps (after the run was created), and an infinite lr, weight or decay only trains NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # What to train
    model: str = Field("smollm2-135m", description="a named model, a local folder or a hub id")
    train: Path | list[Path] | None = Field(
        None, description="training items: a file, a folder or several files; default <data dir>/train.jsonl"
    )
    validation: Path | None = Field(
        None, description="validation items (probe set); default <data dir>/validation.jsonl"
    )
    n_train: int | None = Field(2000, ge=1, description="items drawn from the training pool (None: all)")
    weighting: Weighting = Field(
        "none",
        description="how the n_train items are drawn: uniformly, flat over $50 price bins, or to match the "
        "validation price histogram",
    )
    off_category_weight: float = Field(
        1.0,
        ge=0,
        description="weight of items whose category is not among the validation categories (0: drop them)",
    )
    sources: list[str] | None = Field(
        None,
        description="source prefixes of the rows to lean on ('benchmark': the rows curated like the benchmark)",
    )
    off_source_weight: float = Field(
        1.0, ge=0, description="weight of items whose source is not among `sources` (0: drop them)"
    )
    name: str | None = None

    # Prompts (see data.prompts.PromptConfig)
    max_text_tokens: int = Field(100, ge=1, description="description budget in tokens (CPU-friendly default)")
    exact_cents: bool = False
    use_summary: bool = True
    max_length: int | None = Field(
        None, ge=8, description="refuse examples longer than this many tokens (the RAG context included)"
    )

    # Retrieval-augmented fine-tuning (pricers.rag.local_context): each item's K most similar training items
    rag: int = Field(
        0,
        ge=0,
        description="show each training prompt its K nearest training items' titles and prices first (0: none)",
    )
    index: Path | None = Field(
        None, description="the retrieval index of the training pool (appraiser index build); default <home>/index"
    )
    index_pool: str | None = Field(
        None, description="the index's pool fingerprint, recorded when the run starts (reading checks it)"
    )
    rag_title_tokens: int = Field(24, ge=1, description="tokens of each neighbour's title in the RAG context")

    # LoRA
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    load_in_4bit: bool = Field(False, description="QLoRA: NF4 base weights (needs bitsandbytes)")

    # Regression head (inference.head): log price from the hidden state at the end of the prompt
    head_weight: float = Field(
        0.0,
        ge=0,
        description="weight of a regression head's Huber loss on the standardised log price, trained with "
        "the adapters (0: no head)",
    )
    lm_weight: float = Field(
        1.0, ge=0, description="weight of the completion cross-entropy (0 with a head: train the head's path only)"
    )
    head_lr: float | None = Field(
        1e-3, gt=0, description="learning rate of the head (it starts from zero; None: the adapters' rate)"
    )
    head_pooling: HeadPooling = Field(
        "last", description="what the head reads: the last prompt position, the mean over the prompt, or both"
    )
    head_refit: HeadRefit = Field(
        "none",
        description="after training, refit the head in closed form on the fine-tuned model's features of the "
        "training items: ridge (linear) or kernel (RBF kernel ridge); see training.refit",
    )
    head_refit_items: int | None = Field(
        4000, ge=3, description="distinct training items the head refit reads (None: all of the draw)"
    )

    # Optimisation
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: LrScheduler = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    # capped: 1e12 epochs is finite, and started a run that could never end; OpenAI's own limit is 50
    epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, ge=0)
    seed: int = Field(42, ge=0, le=MAX_SEED, description="seed of sampling, order, LoRA init and dropout")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")
    length_grouping: bool = Field(True, description="batch items of similar length together (less padding)")

    # Watching
    probe_every: int = Field(50, ge=0, description="score the probe set every N steps (0: never)")
    probe_size: int = Field(100, ge=1, description="validation items probed: the LAST N of the file")
    probe_method: ProbeMethod = Field(
        "expected", description="how the probe reads a price (default: 'head' with head_refit, else 'expected')"
    )
    probe_batch_size: int = Field(16, ge=1)
    save_every: int = Field(50, ge=1, description="checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept (best/ is kept apart)")
    patience: int | None = Field(None, ge=1, description="stop after N probes without a better probe MAE")
    report_to: list[str] = Field(default_factory=list, description="wandb, trackio, mlflow, tensorboard ...")

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TrainConfig:
        saved = bool(info.context and info.context.get("saved"))
        if self.name is not None:  # a name is typed back later: `--resume NAME`, `--model NAME/final`
            if self.name in ("last", "latest") or "/" in self.name or not self.name.isprintable() or not self.name:
                raise ValueError(
                    f"name {self.name!r} cannot be used: not 'last' or 'latest', no '/', no control characters"
                )
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if self.lm_weight == 0 and self.head_weight == 0:
            raise ValueError("lm_weight and head_weight are both 0: nothing to train")
        if self.head_refit != "none" and not self.head_weight:
            raise ValueError("head_refit needs a regression head (head_weight > 0)")
        if self.probe_method == "head" and not self.head_weight:
            raise ValueError("probe_method 'head' needs a regression head (head_weight > 0)")
        if self.index is not None and not self.rag:
            raise ValueError("index is only read with rag > 0 (the number of similar items to show)")
        if self.sources is not None and not any(s.strip() for s in self.sources):
            raise ValueError("sources names no source prefix (give prefixes, or 'benchmark')")
        if self.off_source_weight != 1.0 and not self.sources:
            raise ValueError("off_source_weight needs sources (source prefixes, or 'benchmark')")
        if self.head_refit != "none" and self.probe_method != "head" and self.probe_every:
            # The refit changes the head only: a probe by digits scores it exactly as the last checkpoint, so it
            # ties and never becomes best/, and reading the run (its best/, by its head) would use the head
            # before the refit. A refit run is read by its head, so its probes are too.
            if "probe_method" not in self.model_fields_set:
                self.probe_method = "head"
            elif not saved:  # a run saved before this check resumes as it started
                raise ValueError(
                    f"probe_method {self.probe_method!r} cannot judge head_refit (the refit changes the head, "
                    "not the digits the LM writes, so best/ would never hold it): use probe_method 'head' "
                    "(the default with head_refit)"
                )
        if self.patience is not None and not self.probe_every and not saved:
            raise ValueError("patience counts probes: it needs probe_every > 0")
        if self.lm_weight == 0 and self.probe_method != "head":
            self.probe_method = "head"  # the LM's own answer is not trained
        return self

    @property
    def has_head(self) -> bool:
        return self.head_weight > 0

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            max_text_tokens=self.max_text_tokens, exact_cents=self.exact_cents, use_summary=self.use_summary
        )

    def rag_info(self) -> dict[str, object]:
        """What `appraiser.json` records of the RAG context (empty without one), so that reading the run
        (`LLMPricer`) builds exactly the prompts it was trained on."""
        if not self.rag:
            return {}
        return {
            "rag": {
                "k": self.rag,
                "index": str(self.index) if self.index is not None else None,
                "pool": self.index_pool,
                "title_tokens": self.rag_title_tokens,
            }
        }

    def save(self, path: str | Path) -> None:
        """Write the config as JSON, atomically (temp file + rename: a kill never leaves half a file)."""
        from appraiser.atomic import write_text

        write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """A saved config; a missing, damaged or invalid file is a DataError naming it (one line)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{path}: damaged, not a readable JSON config ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object of training options, got {type(data).__name__}")
        try:
            return cls.model_validate(data, context=SAVED)
        except ValidationError as e:
            from appraiser.errors import validation_message

            raise DataError(f"{path}: {validation_message(e, 'invalid training option')}") from None
