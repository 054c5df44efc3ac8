"""Evaluation: metrics, per-item report, charts, the leaderboard store."""
