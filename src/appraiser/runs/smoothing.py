"""Smoothing for noisy per-step losses, so a trend is visible in a chart or a progress line.

A batch of 8 items gives a loss that jumps by ±50% from step to step; what matters is the trend.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def ema(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average with bias correction (like TensorBoard's smoothing).

    Bias correction (pandas' `adjust=True`) keeps the first points near the first values instead of
    dragging them toward zero, so a curve that starts at 3.0 starts smoothed at 3.0 too.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if len(values) == 0:
        return []
    return pd.Series(values, dtype=float).ewm(alpha=alpha, adjust=True, ignore_na=True).mean().tolist()


def rolling_mean(values: Sequence[float], window: int = 20) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if len(values) == 0:
        return []
    return pd.Series(values, dtype=float).rolling(window, min_periods=1).mean().tolist()
