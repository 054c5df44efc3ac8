"""The trend verdict on loss curves with a known shape and noise (seeded), and TensorBoard's smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from appraiser.runs.trend import debiased_ema, noise_band, steps_without_decrease, verdict


def _curve(kind: str, n: int = 300, noise: float = 0.3, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = {"falling": 2.0 - 0.002 * t, "flat": np.full(n, 1.5), "rising": 1.0 + 0.004 * t}[kind]
    return list(base + rng.normal(0, noise, n))


def test_debiased_ema_matches_tensorboards_formula():
    y = [3.0, 1.0, 2.0, 5.0]
    s = 0.6
    last, want = 0.0, []
    for i, v in enumerate(y, 1):
        last = last * s + (1 - s) * v
        want.append(last / (1 - s**i))
    assert debiased_ema(y, s) == pytest.approx(want)
    assert debiased_ema(y, s)[0] == pytest.approx(3.0)  # debiased: starts at the first value, not near zero
    assert debiased_ema(y, 0.0) == y
    with pytest.raises(ValueError):
        debiased_ema(y, 1.0)


def test_noise_band_brackets_most_raw_values():
    y = _curve("flat")
    sm = debiased_ema(y, 0.9)
    band = noise_band(y, sm)
    inside = sum(lo <= v <= hi for v, (lo, hi) in zip(y[50:], band[50:], strict=True))
    assert 0.5 < inside / len(y[50:]) < 0.9  # about one standard deviation either side


@pytest.mark.parametrize("seed", range(5))
def test_verdicts_name_the_shape_of_the_curve(seed):
    assert verdict(_curve("falling", seed=seed)).state == "falling"
    assert verdict(_curve("rising", seed=seed)).state == "rising"
    assert verdict(_curve("flat", seed=seed)).state in ("flat", "falling", "rising")


def test_flat_curves_are_mostly_called_flat():
    states = [verdict(_curve("flat", seed=s)).state for s in range(40)]
    assert states.count("flat") >= 30  # "falling" needs P >= 0.9: at most ~10-20% false alarms on noise


def test_one_bad_batch_does_not_hide_a_decrease():
    y = _curve("falling", noise=0.1)
    y[-3] = 40.0  # a spike near the end
    v = verdict(y)
    assert v.p_decrease_robust is not None and v.p_decrease_robust > 0.9 and v.state == "falling"


def test_too_early_and_diverging():
    assert verdict([2.0] * 5).state == "too early"
    assert verdict(_curve("falling")[:-1] + [math.nan]).state == "diverging"
    blowup = _curve("falling", noise=0.05) + [50.0] * 30
    assert verdict(blowup).state == "diverging"
    assert "P(decrease)" in verdict(_curve("falling")).message


def test_steps_without_decrease_counts_back_from_the_end():
    y = list(np.linspace(3, 1, 100)) + [1.0 + 0.01 * ((-1) ** i) for i in range(60)]
    n = steps_without_decrease(y)
    assert 40 <= n <= 80  # the flat tail, not the whole curve
    assert steps_without_decrease(list(np.linspace(3, 1, 100))) <= 3


@pytest.mark.parametrize("kind,state", [("falling", "falling"), ("rising", "rising")])
def test_runs_show_and_watch_print_the_verdict(kind, state):
    from typer.testing import CliRunner

    from appraiser.cli import app
    from appraiser.runs.store import RunStore

    store = RunStore()
    run = store.create(name=f"trend-{kind}", model="smollm2-135m", config={}, max_steps=300)
    for step, loss in enumerate(_curve(kind, noise=0.1), 1):
        store.log_metrics(run.id, step, {"loss": loss})
    for step, mae in ((50, 150.0), (100, 140.0), (150, 131.0)):
        store.log_metrics(run.id, step, {"probe_mae": mae})
    runner = CliRunner()
    shown = runner.invoke(app, ["runs", "show", run.id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "loss trend" in shown.output and f"{state}: P(decrease) = " in shown.output
    assert "probe MAE trend" in shown.output and "too early" not in shown.output.split("probe MAE trend")[0]
    watched = runner.invoke(app, ["runs", "watch", run.id, "--once"], env={"COLUMNS": "200"})
    assert watched.exit_code == 0 and f"loss trend: {state}" in watched.output
