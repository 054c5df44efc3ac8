"""Evaluation: metrics, the evaluator, charts, the leaderboard store, comparisons, the human baseline."""

from appraiser.evaluation.charts import leaderboard_chart, save_charts
from appraiser.evaluation.compare import Comparison, paired_compare
from appraiser.evaluation.evaluator import (
    DEFAULT_TEST_SIZE,
    EvalResult,
    ItemResult,
    evaluate,
    load_test_items,
    record_result,
    score,
    write_predictions,
)
from appraiser.evaluation.metrics import bootstrap_mean_ci, colour, compute_metrics
from appraiser.evaluation.store import LeaderboardStore, PredictionCache, Row

__all__ = [
    "Comparison",
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
    "leaderboard_chart",
    "load_test_items",
    "paired_compare",
    "record_result",
    "save_charts",
    "score",
    "write_predictions",
]
