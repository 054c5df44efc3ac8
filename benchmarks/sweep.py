"""Train and score several variants of a recipe side by side (on one GPU they run in parallel).

    python benchmarks/sweep.py --out /tmp/sweep                       # every variant below
    python benchmarks/sweep.py --out /tmp/sweep --only base,both --parallel 1 --set max_steps=20

Each variant is `benchmarks/recipe.py --no-baseline` with its own `--set` overrides on the recipe config
(`recipes/smollm2-head.json`), its own APPRAISER_HOME and log; the table at the end reads their summary
files. It exists to choose the recipe's levers on validation (probe: last 100 items, score: first 400),
e.g. on a GPU lent for a few minutes, before the recipe itself is run on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "last": ["head_pooling=last"],
    "both": ["head_pooling=both"],
    "mean": ["head_pooling=mean"],
    "both-mlp": [
        "head_pooling=both",
        'target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]',
    ],
    "both-long": ["head_pooling=both", "max_steps=1000", "n_train=8000"],
    "lm-only": ["head_weight=0", "probe_method=expected"],
    "head-only": ["head_pooling=both", "lm_weight=0"],
    "both-qlora": ["head_pooling=both", "load_in_4bit=true"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--parallel", type=int, default=len(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="override for every variant (after its own)")
    ap.add_argument("--test-size", type=int, default=400)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=None, help="seconds before a variant is stopped")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    args.out.mkdir(parents=True, exist_ok=True)
    pending, running, started = list(names), {}, time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            cmd = [sys.executable, str(REPO / "benchmarks" / "recipe.py"), "--no-baseline", "--no-charts"]
            cmd += ["--adapter", "final"]  # the end of the schedule: variants compared at equal steps
            cmd += ["--home", str(args.out / f"home-{name}"), "--out", str(args.out / name)]
            cmd += ["--summary", str(args.out / f"{name}.json"), "--test-size", str(args.test_size)]
            if args.data is not None:
                cmd += ["--data", str(args.data)]
            for kv in VARIANTS[name] + args.set:
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
    print(f"\n{'variant':<12} {'steps':>5} {'train s':>8} {'tok/s':>8} {'probe':>8} {'MAE final':>10} {'CI':>17} "
          f"{'hit':>6} {'LM MAE':>8}")
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
