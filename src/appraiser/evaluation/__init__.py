"""Evaluation: metrics, the evaluator, charts, the leaderboard store, comparisons, the human baseline."""

from appraiser.evaluation.evaluator import (
    DEFAULT_TEST_SIZE,
    EvalResult,
    ItemResult,
    evaluate,
    load_test_items,
    write_predictions,
)
from appraiser.evaluation.metrics import bootstrap_mean_ci, colour, compute_metrics
from appraiser.evaluation.store import LeaderboardStore, PredictionCache, Row

__all__ = [
    "DEFAULT_TEST_SIZE",
    "EvalResult",
    "ItemResult",
    "LeaderboardStore",
    "PredictionCache",
    "Row",
    "bootstrap_mean_ci",
    "colour",
    "compute_metrics",
    "evaluate",
    "load_test_items",
    "write_predictions",
]
