"""The documented recipe: its config is valid, and `benchmarks/recipe.py` runs it end to end (shrunk)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appraiser.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_recipe_configs_are_valid_head_recipes_within_the_cpu_budget():
    old = TrainConfig.load(REPO / "recipes" / "smollm2-head.json")
    assert old.model == "smollm2-135m" and old.has_head and old.probe_method == "head"
    assert old.weighting == "match" and old.probe_size == 100
    # ~3 s per step of 8 on 2 cores: the recipe must stay inside 90 minutes of training
    assert old.max_steps * old.batch_size <= 1800 * 8
    cfg = TrainConfig.load(REPO / "recipes" / "gemma3-kernel.json")  # the documented recipe (recipe.py's default)
    assert cfg.model == "gemma3-270m" and cfg.has_head and cfg.head_refit == "kernel"
    assert cfg.weighting == "match" and cfg.probe_size == 100 and cfg.off_category_weight == 0
    # ~3.7 s per step of 8 (128-token texts) plus ~0.16 s per refit item on 2 cores: inside 90 minutes
    assert cfg.max_steps * 3.7 + (cfg.head_refit_items or cfg.n_train) * 0.16 <= 80 * 60


def test_recipe_script_trains_scores_and_writes_predictions(data_dir, tmp_path):
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "recipe.py"), "--home", str(tmp_path / "home")]
    cmd += ["--data", str(data_dir), "--out", str(out), "--summary", str(summary), "--test-size", "4"]
    cmd += ["--no-baseline", "--no-charts"]
    # the documented recipe's code path (kernel head refit) on the model CI installs
    for kv in ("model=smollm2-135m", "max_steps=2", "n_train=16", "batch_size=4", "max_text_tokens=24",
               "probe_every=1", "probe_size=3", "save_every=1", "threads=1", "head_refit_items=12"):
        cmd += ["--set", kv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["steps"] == 2 and s["config"]["head_refit"] == "kernel" and s["config"]["model"] == "smollm2-135m"
    for name in ("finetune-best", "finetune-best-lm"):
        assert s[name]["mae"] > 0
        lines = (out / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 4 and all(json.loads(line)["truth"] > 0 for line in lines)


def test_readout_benchmark_scores_both_closed_form_readouts(data_dir):
    cmd = [sys.executable, str(REPO / "benchmarks" / "readout.py"), "--model", "smollm2-135m", "--data", str(data_dir)]
    cmd += ["--n-train", "24", "--test-size", "6", "--max-text-tokens", "16", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("first 6 validation items:", "ridge read-out (penalty", "kernel read-out (penalty"):
        assert line in proc.stdout
    assert proc.stdout.count("MAE $") == 2
    assert "read-outs fit on 24 training items (draw)" in proc.stdout


def test_readout_benchmark_can_fit_on_items_outside_the_draw(data_dir):
    cmd = [sys.executable, str(REPO / "benchmarks" / "readout.py"), "--model", "smollm2-135m", "--data", str(data_dir)]
    cmd += ["--n-train", "24", "--support", "unseen", "--n-support", "20", "--test-size", "6"]
    cmd += ["--max-text-tokens", "16", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "read-outs fit on 20 training items (unseen)" in proc.stdout
    assert proc.stdout.count("MAE $") == 2
