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

The report folder holds `demo.json` (MANIFEST): the settings of its last run and its fine-tune's run id. It marks
the folder as the demo's (any other non-empty folder is refused, so no one's files are replaced), and lets a run
stopped part way (Ctrl-C, a kill) be run again to finish: results already priced come from the evaluation cache,
and the same fine-tune is resumed from its last checkpoint (or reused, once finished) instead of started anew.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appraiser import atomic
from appraiser.data.io import DataError, load_splits, write_items
from appraiser.demo_report import write_index
from appraiser.evaluation.charts import leaderboard_chart, slug
from appraiser.evaluation.evaluator import EvalResult, evaluate
from appraiser.evaluation.store import LeaderboardStore
from appraiser.items import Item, fingerprint
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


#: The file that makes a folder a demo report (see the module's docstring).
MANIFEST = "demo.json"
#: What a demo report holds: a folder of these alone, with a leaderboard.db, is a demo's from before the MANIFEST.
DEMO_FILES = frozenset(
    {MANIFEST, "index.html", "plotly.min.js", "blend.pkl", "cache.db", "charts", "data", "predictions"}
    | {f"leaderboard.db{end}" for end in ("", "-shm", "-wal", "-journal")}
    | {f"cache.db{end}" for end in ("-shm", "-wal", "-journal")}
)


def check_paths(cfg: DemoConfig) -> None:
    """Refuse (one line), before anything is written, an --out or --data the demo must not use.

    The demo writes its own splits to `out/data`. Were that the --data folder (or inside it, or around it),
    the user's train.jsonl would lose the blend's items and test/probe/blend files would join it, which the
    next run then reads as its data. And an existing folder that no demo made is someone's work, whose
    index.html and data/ the report would replace: only a new or empty folder, or an earlier demo's, is used.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; --out needs a folder")
    source = Path(cfg.data)
    if source.is_file():
        raise DataError(f"{source}: --data needs a folder (train.jsonl + validation.jsonl) or a hub id, not a file")
    if source.is_dir():
        src, dst = source.resolve(), (out / "data").resolve()
        if src == dst or src in dst.parents or dst in src.parents:
            raise DataError(
                f"--out {out} would write the demo's splits into {out / 'data'}, which is (or overlaps) --data "
                f"{source}: choose an --out outside the data folder"
            )
    if out.is_dir() and not (out / MANIFEST).is_file() and not _earlier_demo(out) and any(out.iterdir()):
        raise DataError(
            f"{out} is not empty and holds no demo report ({MANIFEST}): give --out a new or empty folder, "
            "or an earlier demo's"
        )


def _earlier_demo(out: Path) -> bool:
    """A report of a demo from before the MANIFEST: its leaderboard.db, and nothing the demo does not write."""
    names = {p.name for p in out.iterdir()}
    return "leaderboard.db" in names and names <= DEMO_FILES


def _manifest(out: Path) -> dict[str, Any]:
    """The folder's MANIFEST ({} when there is none, or it is damaged: then nothing of the last run is reused)."""
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def _write_manifest(out: Path, settings: dict[str, Any], run_id: str | None) -> None:
    atomic.write_text(out / MANIFEST, json.dumps({"settings": settings, "fine_tune": run_id}, indent=2) + "\n")


def _settings(cfg: DemoConfig, **splits: list[Item]) -> dict[str, Any]:
    """What the results depend on: the options (not where they go) and the items of each split. Two runs with
    the same settings make the same report, so one may finish what the other began."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    settings["items"] = {name: fingerprint(items) for name, items in splits.items()}
    return settings


def _earlier_fine_tune(run_id: str | None, tcfg: Any) -> Any:
    """The run an earlier demo with the same settings trained (`run_id`) when it can serve this one: same
    training config, and if finished, its adapter still there. None: train anew."""
    from appraiser.runs.store import RunNotFound, RunStore
    from appraiser.training.trainer import resolve_paths

    if not run_id:
        return None
    try:
        run = RunStore().get(run_id)
    except RunNotFound:  # deleted since, or another APPRAISER_HOME
        return None
    if run.id != run_id or run.kind != "local" or run.folder is None or not Path(run.folder).is_dir():
        return None
    wanted = resolve_paths(tcfg).model_dump(mode="json")
    if any(run.config.get(k) != v for k, v in wanted.items()):
        return None
    if run.status == "succeeded" and not (Path(run.folder) / "final").is_dir():
        return None
    return run


def _finished(run: Any) -> Any:
    """The TrainResult of a run that already succeeded, from the run store and its folder."""
    from appraiser.runs.store import RunStore
    from appraiser.training.trainer import TrainResult

    folder = Path(run.folder)
    losses = [v for v in RunStore().series(run.id, "loss")[1] if v is not None]
    probe = run.best_metric == "probe_mae"
    return TrainResult(
        run_id=run.id,
        folder=folder,
        steps=run.step,
        train_loss=sum(losses) / len(losses) if losses else float("nan"),
        final=folder / "final",
        best=folder / "best" if (folder / "best").is_dir() else None,
        best_probe_mae=run.best_value if probe else None,
        best_step=run.best_step if probe else None,
    )


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
    check_paths(cfg)
    # every option and the data are checked before --out gets anything: a refused run leaves no folder behind
    splits = load_splits(cfg.data)
    train, test, probe = split_test_and_probe(splits, cfg.test_size, cfg.probe_size)
    # the probe items stand in for the test's price histogram (weighting "match"): never the test items
    train, blend_items = split_blend(train, cfg.blend_size, cfg.seed, cfg.weighting, probe)
    settings = _settings(cfg, train=train, test=test, probe=probe, blend=blend_items)
    earlier = _manifest(out)
    same = earlier.get("settings") == settings
    index = out / "index.html"
    if not same and index.exists():
        # its predictions and charts are about to be rewritten with other results: a run stopped part way must not
        # leave the old page linking to them, and the old page's files would linger beside the new ones
        index.unlink()
        for folder in (out / "predictions", out / "charts"):
            shutil.rmtree(folder, ignore_errors=True)
        stage(f"the old report (other settings) is removed: {index}, its predictions and charts")
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, settings, earlier.get("fine_tune") if same else None)
    store = LeaderboardStore(out / "leaderboard.db")
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
    run = _earlier_fine_tune(earlier.get("fine_tune") if same else None, tcfg)
    if run is None:
        stage(f"fine-tuning {cfg.model} with LoRA for {cfg.max_steps} steps")
        trained = trainer.start(
            tcfg,
            listeners=train_listeners,
            data_progress=train_progress,
            on_stage=train_stage,
            # recorded at once: a run stopped during training is resumed by the next, not left behind
            on_created=lambda r: _write_manifest(out, settings, r.id),
        )
    elif run.status == "succeeded":
        stage(f"fine-tune {run.id}: finished by an earlier run of this demo, reused")
        trained = _finished(run)
    else:
        stage(f"fine-tuning {cfg.model}: resuming run {run.id} (stopped at step {run.step} of {cfg.max_steps})")
        trained = trainer.resume(run.id, listeners=train_listeners, data_progress=train_progress, on_stage=train_stage)

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
