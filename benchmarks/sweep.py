"""Train and score several variants of a recipe side by side (on one GPU they run in parallel).

    python benchmarks/sweep.py --check                                     # build every variant's config, no training
    python benchmarks/sweep.py --out /tmp/sweep --config recipes/smollm2-head.json --max-steps 600
    python benchmarks/sweep.py --out /tmp/sweep --only last,both --parallel 1 --max-steps 20 --test-size 20

Each variant is `benchmarks/recipe.py --no-baseline --adapter final --config CONFIG` with the variant's own
`--set` overrides on that recipe config (`--config`, default `recipes/smollm2-head.json`: SmolLM2-135M with
a regression head), its own APPRAISER_HOME and log; the table at the end reads their summary files.
`--max-steps N` sets every variant's schedule (before the variant's own overrides, so `both-long` keeps its
1,000 steps); without it each variant runs the config's `max_steps`. `--check` builds every selected
variant's TrainConfig exactly as recipe.py will (config, `--max-steps`, the variant's overrides, `--set`)
and prints the settings that differ between variants, without training; it exits 1 if any is invalid.

It exists to choose the recipe's levers on validation (probe: last 100 items, score: first 400), e.g. on
a GPU lent for a few minutes, before the recipe itself is run on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "smollm2-head.json"

VARIANTS: dict[str, list[str]] = {
    "last": ["head_pooling=last"],
    "both": ["head_pooling=both"],
    "mean": ["head_pooling=mean"],
    "both-mlp": [
        "head_pooling=both",
        'target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]',
    ],
    "both-long": ["head_pooling=both", "max_steps=1000", "n_train=8000"],
    # no head: nothing to refit either (a head_refit in the config would fail validation)
    "lm-only": ["head_weight=0", "head_refit=none", "probe_method=expected"],
    "head-only": ["head_pooling=both", "lm_weight=0"],
    "both-qlora": ["head_pooling=both", "load_in_4bit=true"],
}
#: the settings --check prints for each variant
SHOWN = (
    "model",
    "max_steps",
    "n_train",
    "batch_size",
    "max_text_tokens",
    "head_pooling",
    "head_weight",
    "lm_weight",
    "head_refit",
    "probe_method",
    "load_in_4bit",
    "target_modules",
)


def variant_sets(name: str, max_steps: int | None, extra: list[str]) -> list[str]:
    """The `--set` overrides recipe.py gets for a variant, in the order it applies them."""
    base = [f"max_steps={max_steps}"] if max_steps is not None else []
    return base + VARIANTS[name] + extra


def _recipe_config():
    """recipe.py's own config builder (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("recipe", REPO / "benchmarks" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.recipe_config


def check(names: list[str], config: Path, max_steps: int | None, extra: list[str], data: Path) -> int:
    """Build every variant's TrainConfig as recipe.py will; print their settings; 0 if all are valid, else 1."""
    build = _recipe_config()
    bad = 0
    print(f"config {config}" + (f", --max-steps {max_steps}" if max_steps is not None else ""))
    for name in names:
        try:
            cfg = build(config, variant_sets(name, max_steps, extra), data)
        except Exception as e:  # noqa: BLE001 - report every invalid variant, not just the first
            bad += 1
            print(f"{name:<12} INVALID: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        shown = cfg.model_dump(mode="json")
        print(f"{name:<12} " + " ".join(f"{k}={json.dumps(shown[k], separators=(',', ':'))}" for k in SHOWN))
    print(f"{len(names) - bad} of {len(names)} variants valid")
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="logs, summaries, homes (required unless --check)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the recipe config the variants modify")
    ap.add_argument("--max-steps", type=int, default=None, help="every variant's steps (default: the config's)")
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--parallel", type=int, default=len(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="override for every variant (after its own)")
    ap.add_argument("--test-size", type=int, default=400)
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data"))
    )
    ap.add_argument("--timeout", type=float, default=None, help="seconds before a variant is stopped")
    ap.add_argument("--check", action="store_true", help="build and print every variant's config; do not train")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.check:
        sys.exit(check(names, args.config, args.max_steps, args.set, args.data))
    if args.out is None:
        ap.error("--out is required (or --check)")
    if check(names, args.config, args.max_steps, args.set, args.data):
        sys.exit("some variants are invalid: nothing started")
    args.out.mkdir(parents=True, exist_ok=True)
    pending, running, started = list(names), {}, time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            cmd = [sys.executable, str(REPO / "benchmarks" / "recipe.py"), "--no-baseline", "--no-charts"]
            cmd += ["--config", str(args.config)]
            cmd += ["--adapter", "final"]  # the end of the schedule: variants compared at equal steps
            cmd += ["--home", str(args.out / f"home-{name}"), "--out", str(args.out / name)]
            cmd += ["--summary", str(args.out / f"{name}.json"), "--test-size", str(args.test_size)]
            cmd += ["--data", str(args.data)]
            for kv in variant_sets(name, args.max_steps, args.set):
                cmd += ["--set", kv]
            log = open(args.out / f"{name}.log", "w")  # noqa: SIM115 - closed when the process ends
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time())
            print(f"[{time.perf_counter() - started:5.0f} s] started {name}", flush=True)
        time.sleep(2)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is None and args.timeout and time.time() - t0 > args.timeout:
                proc.kill()
            if proc.poll() is not None:
                log.close()
                del running[name]
                print(f"[{time.perf_counter() - started:5.0f} s] {name} ended (exit {proc.returncode})", flush=True)
    print(
        f"\n{'variant':<12} {'steps':>5} {'train s':>8} {'tok/s':>8} {'probe':>8} {'MAE final':>10} {'CI':>17} "
        f"{'hit':>6} {'LM MAE':>8}"
    )
    for name in names:
        f = args.out / f"{name}.json"
        if not f.exists():
            print(f"{name:<12} failed: see {args.out / (name + '.log')}")
            continue
        s = json.loads(f.read_text())
        m = s.get("finetune-final", {})
        lm = s.get("finetune-final-lm", {})
        print(
            f"{name:<12} {s.get('steps', 0):>5} {s.get('train_seconds', 0):>8.0f} {s.get('tokens_per_s', 0):>8.0f} "
            f"{s.get('best_probe_mae') or float('nan'):>8.2f} {m.get('mae', float('nan')):>10.2f} "
            f"{m.get('mae_ci_low', float('nan')):>8.2f}-{m.get('mae_ci_high', float('nan')):<8.2f} "
            f"{m.get('hit_rate', float('nan')):>6.1%} {lm.get('mae', float('nan')):>8.2f}"
        )


if __name__ == "__main__":
    main()
