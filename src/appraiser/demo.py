"""`appraiser demo`: the whole course capstone in one command, on the embedded small model.

Baselines → zero-shot base model → a short LoRA fine-tune (live progress) → the fine-tuned model,
all on one fixed test set, with a leaderboard and charts written to one report folder whose
`index.html` shows them inline (see `demo_report`). The same code runs on a GPU with a large model (`--model`).

The test set is the first `test_size` items of the data's test split (or of validation, when the
data has no test split, as the shared data does). The fine-tune's probe set — which picks the best
checkpoint — is taken from the items *after* the test set, so no checkpoint is chosen on test items.

Last, a blend (`pricers.blend`) of the fine-tune (head and digits) with the TF-IDF baseline: `blend_size`
training items are set aside before anything is fitted, every member prices them, and non-negative weights in
log space are learned there — different model families err differently, so the blend is usually better than
either. Neither the test nor the probe items reach any fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appraiser.data.io import DataError, load_splits, write_items
from appraiser.demo_report import write_index
from appraiser.evaluation.charts import leaderboard_chart, slug
from appraiser.evaluation.evaluator import EvalResult, evaluate
from appraiser.evaluation.store import LeaderboardStore
from appraiser.items import Item
from appraiser.models import DEFAULT_MODEL
from appraiser.pricers import registry


@dataclass
class DemoConfig:
    """What the demo does. `quick` shrinks every stage to a few items and steps (CI runs it)."""

    data: str
    out: Path = Path("appraiser-demo")
    model: str = DEFAULT_MODEL
    test_size: int = 100
    baseline: str = "tfidf-ridge"
    n_train: int = 1200
    max_steps: int = 150
    batch_size: int = 8
    max_text_tokens: int = 100
    learning_rate: float = 2e-4
    probe_size: int = 50
    probe_every: int = 50
    weighting: str = "match"
    seed: int = 42
    method: str = "expected"  # how the zero-shot model and the fine-tune's own digits are read
    head_weight: float = 1.0  # a regression head trained with the adapters (0: LM digits only)
    head_pooling: str = "both"
    head_refit: str = "kernel"  # after training, refit the head in closed form (training.refit)
    head_refit_items: int = 1200
    blend_size: int = 400  # training items kept out of every fit, to learn the blend's weights on
    quick: bool = False
    baseline_train_limit: int | None = None

    @classmethod
    def quick_config(cls, data: str, out: Path, model: str = DEFAULT_MODEL) -> DemoConfig:
        return cls(
            data=data,
            out=out,
            model=model,
            test_size=8,
            n_train=32,
            max_steps=6,
            batch_size=4,
            max_text_tokens=48,
            probe_size=4,
            probe_every=3,
            head_refit_items=16,
            blend_size=24,
            quick=True,
            baseline_train_limit=2000,
        )


@dataclass
class DemoResult:
    out: Path
    index: Path
    results: list[EvalResult] = field(default_factory=list)
    run_id: str | None = None
    seconds: float = 0.0


def split_test_and_probe(splits: dict[str, list[Item]], test_size: int, probe_size: int):
    """(train, test, probe): test = first `test_size` of test (or validation); probe = the items after it."""
    if "train" not in splits:
        raise DataError("the data has no train split (train.jsonl): the demo needs items to learn from")
    held = splits.get("test") or splits.get("validation")
    if not held:
        raise DataError("the data has neither a test nor a validation split to evaluate on")
    if len(held) < test_size + 1:
        raise DataError(f"the evaluation split has {len(held)} items; the demo needs more than {test_size}")
    test = held[:test_size]
    probe = held[test_size : test_size + max(probe_size, 1)]
    # Items that appear in the held-out split must not be trained on.
    held_ids = {it.id for it in held}
    train = [it for it in splits["train"] if it.id not in held_ids]
    return train, test, probe


def split_blend(train: list[Item], size: int, seed: int, weighting: str, reference: list[Item]):
    """(rest, blend): `size` training items drawn like the fine-tune's own draw, kept out of every fit."""
    from appraiser.training.dataset import choose_items

    if size <= 0:
        return train, []
    if len(train) < 2 * size:
        raise DataError(f"the training split has {len(train)} items; the demo keeps {size} aside for its blend")
    drawn = choose_items(train, size, weighting, seed + 1, reference=reference)
    ids = {it.id for it in drawn}
    blend = [it for it in train if it.id in ids]
    return [it for it in train if it.id not in ids], blend


def run_demo(
    cfg: DemoConfig,
    *,
    show: bool = True,
    stage: Callable[[str], None] = lambda msg: None,
    train_listeners: tuple = (),
    train_progress: Callable[[int], None] | None = None,
    train_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage and write the report folder. Returns where it is and what was measured."""
    from appraiser.pricers.llm import LLMPricer
    from appraiser.training import trainer
    from appraiser.training.config import TrainConfig

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    store = LeaderboardStore(out / "leaderboard.db")
    splits = load_splits(cfg.data)
    train, test, probe = split_test_and_probe(splits, cfg.test_size, cfg.probe_size)
    # the probe items stand in for the test's price histogram (weighting "match"): never the test items
    train, blend_items = split_blend(train, cfg.blend_size, cfg.seed, cfg.weighting, probe)
    data_dir = out / "data"
    write_items(train, data_dir / "train.jsonl")
    write_items(test, data_dir / "test.jsonl")
    write_items(probe, data_dir / "probe.jsonl")
    if blend_items:
        write_items(blend_items, data_dir / "blend.jsonl")
    results: list[EvalResult] = []

    def run_eval(pricer, name: str) -> EvalResult:
        s = slug(name)
        r = evaluate(
            pricer,
            test,
            name=name,
            show=show,
            store=store,
            predictions_path=out / "predictions" / f"{s}.jsonl",
            charts_dir=out / "charts" / s,
        )
        results.append(r)
        return r

    # 1. Traditional baselines.
    baseline_train = train[: cfg.baseline_train_limit] if cfg.baseline_train_limit else train
    baselines = {}
    for name in ("constant-mean", cfg.baseline):
        stage(f"baseline {name}: fitting on {len(baseline_train):,} items")
        pricer = registry.create(name)
        pricer.fit(baseline_train)
        run_eval(pricer, name)
        baselines[name] = pricer

    # 2. The base model, zero-shot.
    stage(f"zero-shot {cfg.model}")
    run_eval(LLMPricer(cfg.model, method=cfg.method, max_text_tokens=cfg.max_text_tokens), f"{cfg.model} zero-shot")

    # 3. A short LoRA fine-tune.
    stage(f"fine-tuning {cfg.model} with LoRA for {cfg.max_steps} steps")
    tcfg = TrainConfig(
        model=cfg.model,
        train=data_dir / "train.jsonl",
        validation=data_dir / "probe.jsonl",
        n_train=min(cfg.n_train, len(train)),
        weighting=cfg.weighting,
        max_text_tokens=cfg.max_text_tokens,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        head_weight=cfg.head_weight,
        head_pooling=cfg.head_pooling,
        head_refit=cfg.head_refit if cfg.head_weight else "none",
        head_refit_items=cfg.head_refit_items,
        probe_method="head" if cfg.head_weight else cfg.method,
        probe_every=cfg.probe_every,
        probe_size=len(probe),
        save_every=cfg.probe_every,
        seed=cfg.seed,
        name=f"demo-{cfg.model}",
    )
    trained = trainer.start(tcfg, listeners=train_listeners, data_progress=train_progress, on_stage=train_stage)

    # 4. The fine-tuned model.
    stage(f"fine-tuned {cfg.model} (run {trained.run_id})")
    adapter = str(trained.best or trained.final)
    members: dict[str, object] = {cfg.baseline: baselines[cfg.baseline]}
    if cfg.head_weight:
        head = LLMPricer(adapter, method="head")
        run_eval(head, f"{cfg.model} LoRA {trained.run_id} (head)")
        members["fine-tune head"] = head
    # The same fine-tune writing its price digit by digit ("Price is $…"), read as the course reads it.
    digits = LLMPricer(adapter, method=cfg.method)
    run_eval(digits, f"{cfg.model} LoRA {trained.run_id} ({cfg.method} digits)")
    members[f"fine-tune {cfg.method}"] = digits

    # 5. The blend: weights learned on the items no member was fitted on.
    if blend_items:
        from appraiser.pricers.blend import BlendPricer

        stage(f"blend of {', '.join(members)}: weights from {len(blend_items):,} held-aside training items")
        blend = BlendPricer(list(members.values()), labels=list(members)).fit(blend_items)
        blend.save(out / "blend.pkl")
        run_eval(blend, f"blend: {' + '.join(members)}")

    rows = [store.get(r.run_id) for r in results if r.run_id is not None]
    chart_paths = leaderboard_chart(rows, out / "charts", name="leaderboard")
    index = write_index(out, cfg, results, chart_paths, trained)
    return DemoResult(out, index, results, trained.run_id, time.perf_counter() - t0)
