"""Experiment trackers fed by a hosted job's metrics as they arrive, as `report_to` feeds them for local runs.

W&B's own OpenAI integration syncs only once a job has ended; here each step goes to the trackers the
moment its metrics event is mirrored into the run store. A tracker run is named by the run store's id and
opened with resume, so a follower that is stopped and rerun continues the same tracker run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from appraiser.data.io import DataError

SUPPORTED = ("trackio", "wandb")


def check_report_to(names: Sequence[str]) -> list[str]:
    """The tracker names to use (`none` drops out); a DataError for one that is unknown or not installed."""
    import importlib.util

    wanted = [n for n in names if n and n != "none"]
    for n in wanted:
        if n not in SUPPORTED:
            raise DataError(f"--report-to {n}: hosted runs report to {', '.join(SUPPORTED)}")
        if importlib.util.find_spec(n) is None:
            raise DataError(f"--report-to {n}: not installed here (pip install {n})")
    return wanted


class Tracker:
    """One tracker's run: `log(step, values)` per step, `close()` at the end."""

    def log(self, step: int, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TrackioTracker(Tracker):
    """trackio: local-first (SQLite under `$TRACKIO_DIR`); the project is `$TRACKIO_PROJECT` or "appraiser"."""

    def __init__(self, run_id: str, config: Mapping[str, Any]):
        import trackio

        project = os.environ.get("TRACKIO_PROJECT", "appraiser")
        self.run = trackio.init(project=project, name=run_id, config=dict(config), resume="allow", embed=False)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


class WandbTracker(Tracker):
    """Weights & Biases: the run id is the store's, so a rerun resumes the same W&B run."""

    def __init__(self, run_id: str, config: Mapping[str, Any]):
        import wandb

        project = os.environ.get("WANDB_PROJECT", "appraiser")
        self.run = wandb.init(project=project, id=run_id, name=run_id, config=dict(config), resume="allow")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: Sequence[str], run_id: str, config: Mapping[str, Any]) -> list[Tracker]:
    kinds = {"trackio": TrackioTracker, "wandb": WandbTracker}
    return [kinds[n](run_id, config) for n in check_report_to(names)]
