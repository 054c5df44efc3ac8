"""Stalled runs: a running job that has written nothing for k × its median step time.

A hung data loader, a deadlock, a machine that swaps, a provider that stopped sending events: the run's
status still says `running`, and only the silence tells. The median time between logged steps is the
run's own clock (a probe or a checkpoint is slower than a step, so the factor is generous and there is a
floor). A killed process is not a stall: `Run.alive()` already tells that apart.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from appraiser.runs.store import Run, RunStore

#: How many median step times of silence make a stall, and the least silence that does (seconds).
FACTOR = 20.0
MIN_SECONDS = 120.0


@dataclass
class Stall:
    step: int
    silent_s: float  # seconds since the run last wrote anything
    median_step_s: float
    limit_s: float

    @property
    def message(self) -> str:
        from appraiser.notify.card import fmt_duration

        return (
            f"Stalled at step {self.step}: nothing written for {fmt_duration(self.silent_s)} "
            f"(more than {self.limit_s / self.median_step_s:.0f} × the median step time "
            f"{self.median_step_s:.1f}s)"
        )


def median_step_seconds(store: RunStore, run_id: str) -> float | None:
    """The median time between consecutive logged steps (None before 3 steps)."""
    times = [m.time for m in store.metrics(run_id, "loss")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return statistics.median(gaps) if len(gaps) >= 2 else None


def last_write(store: RunStore, run: Run) -> float:
    """When the run last wrote anything: a metric, an event or a change to its row."""
    metrics = store.metrics(run.id, "loss", since_step=max(run.step - 1, -1))
    return max([run.updated, *(m.time for m in metrics)])


def check_stall(
    store: RunStore,
    run: Run | str,
    *,
    factor: float = FACTOR,
    min_seconds: float = MIN_SECONDS,
    now: float | None = None,
) -> Stall | None:
    """The stall of a running, live run, or None (finished, killed, too young to tell, or writing)."""
    run = store.get(run) if isinstance(run, str) else run
    if run.status != "running" or run.alive() is False:
        return None
    median = median_step_seconds(store, run.id)
    if median is None:
        return None
    limit = max(factor * median, min_seconds)
    silent = (time.time() if now is None else now) - last_write(store, run)
    return Stall(run.step, silent, median, limit) if silent > limit else None


def record_stall(store: RunStore, run_id: str, stall: Stall) -> bool:
    """Log the stall as a warning event, once per run and step (True for the caller that logged it).

    This says only who logs the stall, not whether its card reached anyone: `RunNotifier` keeps sending a
    stall card that failed (`notify.pending`) for as long as the run stays stalled, whatever this answers.
    """
    if not store.claim(run_id, f"stalled:{stall.step}", {"silent_s": stall.silent_s}):
        return False
    store.add_event(run_id, stall.message, level="warning", step=stall.step)
    return True
