"""Runs: every training job, local or hosted, with its status, event log and per-step metrics.

One SQLite store (`runs.db` in the state folder) serves everything that watches a run: the
training loop writes to it, while `appraiser runs watch`, a dashboard or a notifier read it at
the same time (WAL mode). Each run also has a folder for its files (checkpoints, adapters).
"""

from appraiser.runs.smoothing import ema, rolling_mean
from appraiser.runs.store import Event, Metric, Run, RunNotFound, RunStore

__all__ = ["Event", "Metric", "Run", "RunNotFound", "RunStore", "ema", "rolling_mean"]
