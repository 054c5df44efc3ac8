"""The documented recipe: its config is valid, and `benchmarks/recipe.py` runs it end to end (shrunk)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appraiser.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_recipe_configs_are_valid_head_recipes():
    """Both recipes load, read prices by their head and probe on 100 validation items drawn like the benchmark.
    How long they take is a measurement, not a property of the file: the README quotes it with its command."""
    old = TrainConfig.load(REPO / "recipes" / "smollm2-head.json")
    assert old.model == "smollm2-135m" and old.has_head and old.probe_method == "head"
    assert old.weighting == "match" and old.probe_size == 100
    cfg = TrainConfig.load(REPO / "recipes" / "gemma3-kernel.json")  # the documented recipe (recipe.py's default)
    assert cfg.model == "gemma3-270m" and cfg.has_head and cfg.head_refit == "kernel"
    assert cfg.weighting == "match" and cfg.probe_size == 100 and cfg.off_category_weight == 0


def sweep(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # the default suite's time budget; `python -m pytest -m slow` runs it
def test_sweep_check_builds_every_variant_of_both_recipes(data_dir):
    for config in ("recipes/smollm2-head.json", "recipes/gemma3-kernel.json"):
        proc = sweep("--config", str(REPO / config), "--max-steps", "600", "--data", str(data_dir))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = [line for line in proc.stdout.splitlines() if "max_steps=" in line]
        assert len(rows) == 8 and "8 of 8 variants valid" in proc.stdout
        model = TrainConfig.load(REPO / config).model
        assert all(f'model="{model}"' in row for row in rows)  # the variants modify the config named
        steps = {row.split()[0]: row.split("max_steps=")[1].split()[0] for row in rows}
        assert steps.pop("both-long") == "1000" and set(steps.values()) == {"600"}  # --max-steps is applied
        lm_only = next(row for row in rows if row.startswith("lm-only"))
        assert "head_weight=0.0" in lm_only and 'head_refit="none"' in lm_only


def test_sweep_check_reports_an_invalid_variant_and_fails(data_dir):
    # no head but a kernel refit: every variant that keeps the config's refit is invalid, lm-only is not
    proc = sweep(
        "--config",
        str(REPO / "recipes" / "gemma3-kernel.json"),
        "--only",
        "last,lm-only",
        "--set",
        "head_weight=0",
        "--data",
        str(data_dir),
    )
    assert proc.returncode == 1
    assert "last         INVALID" in proc.stdout and "1 of 2 variants valid" in proc.stdout


def test_recipe_script_trains_scores_and_writes_predictions(data_dir, tmp_path):
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "recipe.py"), "--home", str(tmp_path / "home")]
    cmd += ["--data", str(data_dir), "--out", str(out), "--summary", str(summary), "--test-size", "4"]
    cmd += ["--no-baseline", "--no-charts"]
    # the documented recipe's code path (kernel head refit) on the model CI installs
    for kv in (
        "model=smollm2-135m",
        "max_steps=2",
        "n_train=16",
        "batch_size=4",
        "max_text_tokens=24",
        "probe_every=1",
        "probe_size=3",
        "save_every=1",
        "threads=1",
        "head_refit_items=12",
    ):
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


@pytest.mark.slow  # the default suite's time budget; `python -m pytest -m slow` runs it
def test_readout_benchmark_can_fit_on_items_outside_the_draw(data_dir):
    cmd = [sys.executable, str(REPO / "benchmarks" / "readout.py"), "--model", "smollm2-135m", "--data", str(data_dir)]
    cmd += ["--n-train", "24", "--support", "unseen", "--n-support", "20", "--test-size", "6"]
    cmd += ["--max-text-tokens", "16", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "read-outs fit on 20 training items (unseen)" in proc.stdout
    assert proc.stdout.count("MAE $") == 2
