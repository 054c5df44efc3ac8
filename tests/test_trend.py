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


# ------------------------------------------------------------------------------------------ the story of a run


def _drop_then_plateau(n_drop: int = 40, n_flat: int = 160, noise: float = 0.15, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    drop = 3.0 - 1.5 * (1 - np.exp(-np.arange(n_drop) / 8))  # a fast, decaying drop from 3.0 toward 1.5
    return list(np.concatenate([drop, np.full(n_flat, drop[-1])]) + rng.normal(0, noise, n_drop + n_flat))


@pytest.mark.parametrize("seed", range(5))
def test_a_drop_then_a_plateau_is_told_as_falling_then_flat(seed):
    from appraiser.runs.trend import phases, story

    y = _drop_then_plateau(seed=seed)
    steps = list(range(1, len(y) + 1))
    ph = phases(steps, y)
    assert [p.state for p in ph] == ["falling", "flat"]
    assert 12 <= ph[1].first_step <= 60  # the drop has mostly happened by step 20 (e^-2.5 of it left)
    assert ph[0].start > 2.6 and ph[1].median == pytest.approx(1.6, abs=0.15)
    told = story(steps, y)
    assert told.startswith("loss: fast initial drop ") and ", then flat around " in told
    # live, the verdict changes as the run goes on: falling during the drop, flat on the plateau
    assert verdict(y[:35]).state == "falling"
    assert verdict(y).state == "flat"


def test_one_trend_is_one_phase_and_rising_tails_are_named():
    from appraiser.runs.trend import phases, story

    y = _curve("falling")
    assert [p.state for p in phases(range(len(y)), y)] == ["falling"]
    overfit = _drop_then_plateau(n_flat=0) + list(
        1.5 + 0.01 * np.arange(120) + np.random.default_rng(1).normal(0, 0.1, 120)
    )
    assert [p.state for p in phases(range(len(overfit)), overfit)] == ["falling", "rising"]
    assert story([1, 2], [3.0, 2.0]) == "loss: too early (steps 1–2)"
    assert "diverging" in story(list(range(30)), _curve("falling")[:29] + [math.nan])


def test_runs_show_verdict_tells_the_story_and_watch_shows_the_eta():
    from typer.testing import CliRunner

    from appraiser.cli import app
    from appraiser.runs.store import RunStore

    store = RunStore()
    run = store.create(name="story", model="smollm2-135m", config={}, max_steps=400)
    y = _drop_then_plateau(seed=3)
    for step, loss in enumerate(y, 1):
        store.log_metrics(run.id, step, {"loss": loss, "eta_s": 125.0})
    for step, (mae, ev) in enumerate(((150.0, 2.0), (120.0, 1.7), (119.0, 1.69), (121.0, 1.7)), 1):
        store.log_metrics(run.id, 50 * step, {"probe_mae": mae, "eval_loss": ev})
    store.update(run.id, step=len(y))
    runner = CliRunner()
    told = runner.invoke(app, ["runs", "show", run.id, "--verdict"], env={"COLUMNS": "250"})
    assert told.exit_code == 0, told.output
    assert "loss: fast initial drop" in told.output and "then flat around" in told.output
    assert "validation loss: " in told.output and "probe MAE: flat around $120.50" in told.output
    store.set_status(run.id, "running")  # this process: a live run
    watched = runner.invoke(app, ["runs", "watch", run.id, "--once"], env={"COLUMNS": "250"})
    assert watched.exit_code == 0 and "loss trend: flat" in watched.output and "(ETA 2:05)" in watched.output
    assert "validation loss trend:" in watched.output


def test_a_flat_verdict_with_a_significant_tiny_slope_says_so_instead_of_contradicting_itself():
    from appraiser.runs.trend import Verdict

    drifting = Verdict("flat", 1.0, 57, steps_without_decrease=57).message
    assert drifting.startswith("flat: still drifting down") and "less than its noise" in drifting
    assert Verdict("flat", 0.4, 57, steps_without_decrease=57).message.startswith("flat: no decrease beyond")


def test_steps_without_decrease_equals_one_regression_per_suffix():
    """The running-sum form gives the same count as fitting each suffix's line on its own (dlib's loop)."""
    from appraiser.runs.trend import _p_decrease, steps_without_decrease

    def direct(y):
        count = 0
        for n in range(3, len(y) + 1):
            if _p_decrease(np.arange(n, dtype=float), np.asarray(y[-n:], float))[2] < 0.51:
                count = n
        return count

    rng = np.random.default_rng(7)
    for t in range(120):
        n = int(rng.integers(3, 300))
        x = np.arange(n)
        y = [
            rng.normal(0, 1, n),
            2 + np.exp(-x / 40) + rng.normal(0, 0.1, n),
            np.round(rng.normal(3, 1, n), 1),
            np.where(x % 7 == 0, 1.6, 1.5),
        ][t % 4]
        assert steps_without_decrease(list(y)) == direct(list(y))


def test_a_loss_converging_towards_zero_is_not_diverging():
    """From a probe: the 3x-its-best rule alone called noise near zero "diverging" (0.003 is 3 times 0.001)."""
    rng = np.random.default_rng(0)
    converging = [2 * math.exp(-i / 15) + abs(rng.normal(0, 0.002)) for i in range(300)]
    assert verdict(converging).state == "flat"
    assert verdict(list(np.linspace(1, 0, 30)) + [0.0] * 10 + [1e-6] * 20).state != "diverging"
    assert verdict(list(np.linspace(3, 1, 50)) + list(np.linspace(1, 4, 30))).state == "diverging"  # a real rise


def test_a_constant_series_is_flat_not_rising():
    """From a probe: a slope of exactly 0 with no noise gave P(decrease) = 0, so identical probe MAEs "rose"."""
    for values, points in (([1.5] * 50, 20), ([42.0] * 5, 3)):
        v = verdict(values, min_points=points)
        assert v.state == "flat" and v.p_decrease == 0.5, v.message


def test_a_flat_verdict_never_says_for_0_steps():
    v = verdict(_curve("flat", seed=3))
    assert "for 0 steps" not in v.message
    from appraiser.runs.trend import Verdict

    assert Verdict("flat", 0.59, 200, steps_without_decrease=0).message == (
        "flat: no clear decrease (P(decrease) = 0.59 over the last 200 steps)"
    )


def test_the_story_puts_a_non_finite_value_where_it_was():
    """From a probe: an inf at step 10 of 60 that the run recovered from was told as "then diverging (steps
    60–60)"; a run that ended on NaN diverged from its first NaN on."""
    from appraiser.runs.trend import story

    rng = np.random.default_rng(1)
    spike = list(2 * np.exp(-np.arange(60) / 20) + 1 + rng.normal(0, 0.02, 60))
    spike[9] = math.inf
    told = story(list(range(1, 61)), spike)
    assert "diverging" not in told and told.endswith("(non-finite at step 10)"), told
    ended = list(np.linspace(3, 1, 50)) + [math.nan] * 3
    told = story(list(range(1, 54)), ended)
    assert told == "loss: falling 2.92 → 1.08 (steps 1–50), then diverging (steps 51–53)", told


def test_a_non_finite_value_the_run_recovered_from_is_not_a_divergence():
    """A re-probe: any NaN among the last 5 steps read "diverging", even when the run ended on its best loss,
    while the story said it recovered. Only a run that ends non-finite is diverging now."""
    falling = list(np.linspace(3, 1, 40))
    recovered = falling[:-3] + [math.nan] + falling[-2:]
    assert verdict(recovered).state == "falling"
    assert verdict(falling + [math.nan]).state == "diverging"
