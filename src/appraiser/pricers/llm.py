"""A local causal LM as a pricer: zero-shot on a base model, or a fine-tuned LoRA adapter from a run.

The model writes the number after "Price is $"; `inference.decode` reads it either greedily or as the
model's own distribution over prices (mean as the guess, with an 80% interval). A run fine-tuned with a
regression head (`inference.head`) is read through that head by default (`method="auto"`). `model` is a packaged
name (`smollm2-135m`, `gemma3-270m`), a hub id, a local model folder, an adapter folder, a training
run folder (its `best/` adapter, else `final/`), or a run of the run store by id or name (`RUN`,
`RUN/final`). A fine-tuned model is prompted exactly as it was
trained: the prompt settings come from the run's `appraiser.json`.

With `rag=K` each prompt starts with the item's K most similar training items and their prices
(`pricers.rag.local_context`, from the retrieval index). A run fine-tuned that way (`appraiser train --rag K`)
is read with the same context by default: its K, its index folder (or `index=`, which must then be built
from the same pool: its fingerprint is checked against the one trained with) and its title budget.
The model loads on first use and is never pickled (a saved pricer stores only its settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from appraiser.data.io import DataError
from appraiser.data.prompts import PromptConfig, make_prompt
from appraiser.inference.decode import METHODS, PriceDistribution, predict_prices
from appraiser.items import Item
from appraiser.models import DEFAULT_MODEL, check_model, find_adapter, finetune_info, load_model
from appraiser.pricers.base import Prediction, Pricer
from appraiser.pricers.rag import TITLE_TOKENS, Retriever, local_contexts, rag_count
from appraiser.pricers.registry import register

#: Which summary of the price distribution is the guess: the mean (the expected price; best for MAE when the
#: model is calibrated) or the median (robust to the long tail of absurd prices a zero-shot model spreads).
POINTS = ("mean", "median")


def _file_digest(folder: Path) -> str:
    """A short hash of an adapter's weights, so a retrained `best/` never reuses cached predictions."""
    h = hashlib.sha1()
    for f in sorted(folder.glob("adapter_model.*")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def run_adapter(ref: str) -> Path | None:
    """The adapter of a training run named in the run store: `RUN` (its best/, else final/), `RUN/final`
    or `RUN/best`, where RUN is an id, an id prefix, a name or `last`. None when `ref` names no run."""
    from appraiser import config
    from appraiser.models import PACKAGED
    from appraiser.runs.store import RunNotFound, RunStore

    if ref in PACKAGED or Path(ref).expanduser().exists() or not (config.home() / "runs.db").exists():
        return None
    name, _, sub = ref.partition("/")
    if sub not in ("", "best", "final"):
        return None
    try:
        run = RunStore().get(name)
    except RunNotFound:
        return None
    if run.folder is None:
        raise DataError(
            f"{ref}: run {run.id} is a hosted fine-tuning job, with no local adapter: price its fine-tuned model "
            "with `appraiser eval api -o model=MODEL`"
        )
    adapter = find_adapter(Path(run.folder) / sub if sub else Path(run.folder))
    if adapter is None:
        # Say what is missing, instead of treating a run's name as a hub id (a minute of network timeouts, then
        # "unknown model").
        if sub == "best":
            raise DataError(f"{ref}: run {run.id} has no best/ adapter (best/ is saved at probes); read {name}/final")
        status = run.display_status
        hint = (
            f"resume it with `appraiser train --resume {run.id}`"
            if status in ("killed", "failed", "cancelled")
            else "final/ is written when the run ends, best/ at its probes"
        )
        raise DataError(f"{ref}: run {run.id} ({status}) has no saved adapter yet: {hint}")
    return adapter


@register(
    "llm",
    "A local causal LM read as a price distribution: a packaged/hub model zero-shot, or a fine-tuned run",
    kind="llm",
    needs_fit=False,
)
class LLMPricer(Pricer):
    name: ClassVar[str] = "llm"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        method: str = "auto",
        max_text_tokens: int | None = None,
        batch_size: int = 16,
        beam_width: int = 8,
        max_new_tokens: int = 8,
        interval: float = 0.8,
        load_in_4bit: bool = False,
        device: str | None = None,
        point: str = "mean",
        rag: int | None = None,
        index: str | None = None,
    ):
        if method not in (*METHODS, "auto"):
            raise ValueError(f"method must be one of auto, {', '.join(METHODS)}, not {method!r}")
        if point not in POINTS:
            raise ValueError(f"point must be one of {', '.join(POINTS)}, not {point!r}")
        sizes = {"batch_size": batch_size, "beam_width": beam_width, "max_new_tokens": max_new_tokens}
        for option, value in sizes.items():
            if int(value) < 1:
                raise ValueError(f"{option} must be at least 1, not {value}")
        if max_text_tokens is not None and int(max_text_tokens) < 1:
            raise ValueError(f"max_text_tokens must be at least 1, not {max_text_tokens}")
        self.point = point
        if rag is not None:
            rag_count(rag)
        self.model = str(model)
        self.batch_size = int(batch_size)
        self.beam_width = int(beam_width)
        self.max_new_tokens = int(max_new_tokens)
        self.interval = float(interval)
        self.load_in_4bit = bool(load_in_4bit)
        self.device = device
        self.adapter = find_adapter(self.model) or run_adapter(self.model)
        if self.adapter is None:
            check_model(self.model)  # a typo fails here, in a second, not when the first batch loads the model
        info = finetune_info(self.adapter) if self.adapter is not None else {}
        self._auto_method = "head" if info.get("head") else "expected"  # the label names any other
        if method == "auto":  # a fine-tune's regression head when it has one: trained for exactly this
            method = self._auto_method
        elif method == "head" and not info.get("head"):
            raise ValueError(f"{self.model}: method 'head' needs a run fine-tuned with a regression head")
        self.method = method
        self._set_rag(info.get("rag"), rag, index)
        prompt = PromptConfig.of_finetune(info)
        self._own_text_tokens = prompt.max_text_tokens  # the model's own; the label names another
        if max_text_tokens is not None:
            prompt = dataclasses.replace(prompt, max_text_tokens=int(max_text_tokens))
        self.prompt_config = prompt
        self.base_model = info.get("base_model") if self.adapter is not None else self.model
        self.fit_info: dict[str, Any] = {"adapter_digest": _file_digest(self.adapter)} if self.adapter else {}
        self._model: Any = None
        self._tokenizer: Any = None

    def _set_rag(self, trained: dict[str, Any] | None, rag: int | None, index: str | None) -> None:
        """The retrieval context: a RAG fine-tune's own (refusing another K), else `rag`/`index` as given."""
        self.title_tokens = TITLE_TOKENS
        if trained:
            k = int(trained["k"])
            if rag is not None and rag_count(rag) != k:
                raise ValueError(
                    f"{self.model} was fine-tuned with rag={k} (its {k} nearest training items in every prompt); "
                    f"read it with the same context (leave rag unset), not rag={rag}"
                )
            self.rag = k
            self.title_tokens = int(trained.get("title_tokens") or TITLE_TOKENS)
            self.retriever: Retriever | None = Retriever(index or trained.get("index"), pool=trained.get("pool"))
            self.retriever.index  # noqa: B018 - a missing or foreign index fails now, before the model loads
            return
        self.rag = rag_count(rag or 0, index)
        self.retriever = Retriever(index) if self.rag else None

    # ------------------------------------------------------------ identity

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": str(self.adapter) if self.adapter is not None else self.model,
            "base_model": self.base_model,
            "method": self.method,
            "beam_width": self.beam_width,
            "max_new_tokens": self.max_new_tokens,
            "interval": self.interval,
            "point": self.point,
            "load_in_4bit": self.load_in_4bit,
            "prompt": vars(self.prompt_config),
            **({"rag": self.rag, **self.retriever.describe()} if self.retriever else {}),
            **({"rag_title_tokens": self.title_tokens} if self.title_tokens != TITLE_TOKENS else {}),
        }

    @property
    def label(self) -> str:
        """`llm[MODEL]`, with the run's name for fine-tuned models, the method when not the model's default
        (its head, else the expected value), and every other reading setting that differs from its default:
        the leaderboard keeps one row per label, so two readings of one model must not share one."""
        if self.adapter is not None:
            run = self.adapter.parent if self.adapter.name in ("best", "final") else self.adapter
            what = f"{run.name}/{self.adapter.name}" if run != self.adapter else self.adapter.name
        else:
            what = self.model
        extra = "" if self.method == getattr(self, "_auto_method", self.method) else f",{self.method}"
        extra += "" if self.point == "mean" or self.method in ("greedy", "head") else f",{self.point}"
        extra += f",rag={self.rag}" if self.rag else ""
        own_tokens = getattr(self, "_own_text_tokens", self.prompt_config.max_text_tokens)  # older pickles: none
        settings = {
            "max_text_tokens": (self.prompt_config.max_text_tokens, own_tokens),
            "beam_width": (self.beam_width, 8),
            "max_new_tokens": (self.max_new_tokens, 8),
            "interval": (self.interval, 0.8),
        }
        extra += "".join(f",{k}={v:g}" for k, (v, default) in settings.items() if v != default)
        extra += ",4bit" if self.load_in_4bit else ""
        return f"{self.name}[{what}{extra}]"

    # ------------------------------------------------------------ model

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """The (model, tokenizer), loaded on first use."""
        if self._model is None:
            source = str(self.adapter) if self.adapter is not None else self.model
            self._model, self._tokenizer = load_model(source, load_in_4bit=self.load_in_4bit, device=self.device)
        return self._model, self._tokenizer

    def use_model(self, model: Any, tokenizer: Any) -> LLMPricer:
        """Price with an already loaded (model, tokenizer) of the same source — the server's, say — instead
        of loading a second copy."""
        self._model, self._tokenizer = model, tokenizer
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        state["_tokenizer"] = None
        return state

    # ------------------------------------------------------------ predict

    def prompts(self, items: Sequence[Item], tokenizer: Any) -> list[str]:
        """The prompts the model reads: the fine-tune's own, after the RAG context when `rag` > 0."""
        prompts = [make_prompt(it, tokenizer, self.prompt_config) for it in items]
        if self.retriever is not None:  # similar training items and their prices before the question
            contexts = local_contexts(items, tokenizer, self.retriever, self.rag, self.title_tokens)
            prompts = [c + p for c, p in zip(contexts, prompts, strict=True)]
        return prompts

    def distributions(self, items: Sequence[Item], progress: Any = None) -> list[PriceDistribution | None]:
        """The full price distribution per item (None where the model wrote no number)."""
        model, tokenizer = self.model_and_tokenizer()
        prompts = self.prompts(items, tokenizer)
        return predict_prices(
            model,
            tokenizer,
            prompts,
            method=self.method,
            batch_size=self.batch_size,
            beam_width=self.beam_width,
            max_new_tokens=self.max_new_tokens,
            interval=self.interval,
            progress=progress,
        )

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        if not items:
            return []
        out = []
        for d in self.distributions(items):
            if d is None:
                out.append(Prediction(price=None, raw="no number"))
            elif self.method == "greedy":
                out.append(Prediction(price=d.greedy, raw=d.raw))
            else:
                price = d.median if self.point == "median" else d.mean
                out.append(Prediction(price=price, low=d.low, high=d.high, raw=d.raw))
        return out
