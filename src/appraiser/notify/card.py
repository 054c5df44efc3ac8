"""The result card of a run: what a person needs from a finished (or stalled) training job, in one message.

Status and duration; the final smoothed loss with its trend verdict; the best probe MAE and where that
would stand on the leaderboard next to the best baseline on one test set; the model and how to use it;
the last error lines when it failed. `loss_png` draws the loss curve that goes with it by email.

Everything is read from the run store (and the leaderboard, when there is one), so a card can be built by
any process: the training itself, a watcher, the server, after a restart.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appraiser.runs.store import Run, RunStore

#: TensorBoard-style debiased EMA weight of the card's "smoothed loss" (≈ the watch chart's EMA 0.1).
SMOOTHING = 0.9


@dataclass
class Card:
    """A run's result card: `title` (an email subject) and `text()` (the message body)."""

    run_id: str
    status: str
    title: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        width = max((len(k) for k, _ in self.lines), default=0)
        out = [f"{k + ':':<{width + 1}} {v}" for k, v in self.lines]
        if self.error_lines:
            out += ["", "Last error lines:", *(f"  {line}" for line in self.error_lines)]
        return "\n".join(out) + "\n"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _started(store: RunStore, run: Run) -> float:
    """When training first started (the first "Training started" event), else when the run was created."""
    for e in store.events(run.id, limit=50):
        if e.message.startswith("Training started"):
            return e.time
    return run.created


def _loss_lines(store: RunStore, run: Run) -> list[tuple[str, str]]:
    from appraiser.runs.trend import debiased_ema, verdict

    out = []
    _, losses = store.series(run.id, "loss")
    if losses:
        finite = [v for v in losses if math.isfinite(v)]
        smooth = [v for v in debiased_ema(losses, SMOOTHING) if math.isfinite(v)]
        final = f"{smooth[-1]:.4f}" if smooth else "-"
        raw = f"{losses[-1]:.4f}" if math.isfinite(losses[-1]) else str(losses[-1])
        out.append(("Final loss", f"{final} smoothed (last raw {raw}, {len(finite)} steps)"))
        out.append(("Loss verdict", verdict(losses).message))
    _, eval_losses = store.series(run.id, "eval_loss")
    if len(eval_losses) >= 3:
        out.append(
            (
                "Validation loss",
                f"{eval_losses[-1]:.4f}; " + verdict(eval_losses, min_points=3, metric="validation loss").message,
            )
        )
    return out


def _probe_lines(store: RunStore, run: Run) -> tuple[list[tuple[str, str]], float | None]:
    steps, maes = store.series(run.id, "probe_mae")
    pairs = [(s, m) for s, m in zip(steps, maes, strict=True) if math.isfinite(m)]
    if not pairs:
        return [], None
    best_step, best = min(pairs, key=lambda sm: (sm[1], sm[0]))
    n = run.config.get("probe_size")
    where = f" ({n} validation items)" if n else ""
    line = f"${best:,.2f} at step {best_step}{where}; last ${pairs[-1][1]:,.2f} at step {pairs[-1][0]}"
    return [("Best probe MAE", line)], best


def _leaderboard_line(run: Run, best_mae: float | None) -> tuple[str, str] | None:
    """Where the model would stand among the newest leaderboard rows of one test set (the one this run's
    model was evaluated on, else the one with the most rows), next to the best baseline there."""
    from appraiser.evaluation.store import LeaderboardStore, default_path

    path = default_path()
    if not path.exists():
        return ("Leaderboard", "none yet (appraiser baseline / appraiser eval fill it)")
    try:
        from appraiser.pricers import registry

        baselines = set(registry.names("baseline"))
        with LeaderboardStore(path) as lb:
            rows = [r for r in lb.rows(latest_only=True) if math.isfinite(r.metrics.get("mae", math.nan))]
    except Exception as e:  # noqa: BLE001 - a damaged leaderboard must not stop the notification
        return ("Leaderboard", f"cannot read it ({type(e).__name__})")
    if not rows:
        return ("Leaderboard", "no evaluations yet")
    own = [r for r in rows if run.id in r.label or run.id in str(r.config)]
    if own:
        fp = own[0].test_fingerprint
    else:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.test_fingerprint] = counts.get(r.test_fingerprint, 0) + 1
        fp = max(counts, key=lambda k: counts[k])
    board = sorted((r for r in rows if r.test_fingerprint == fp and r not in own), key=lambda r: r.metrics["mae"])
    size = max((r.test_size for r in rows if r.test_fingerprint == fp), default=0)
    base = next((r for r in board if r.pricer in baselines), None)
    base_text = f"best baseline {base.label} ${base.metrics['mae']:,.2f}" if base else "no baseline on it yet"
    if own:
        mae = own[0].metrics["mae"]
        rank = 1 + sum(r.metrics["mae"] < mae for r in board)
        return (
            "Leaderboard",
            f"MAE ${mae:,.2f} on the test set ({size} items): #{rank} of {len(board) + 1}; {base_text}",
        )
    if best_mae is None:
        return ("Leaderboard", f"test set of {size} items: {base_text}")
    rank = 1 + sum(r.metrics["mae"] < best_mae for r in board)
    text = f"if the probe MAE held on the test set ({size} items): #{rank} of {len(board) + 1}; {base_text}"
    if base is not None:
        text += " (beaten)" if best_mae < base.metrics["mae"] else " (not beaten)"
    return ("Leaderboard", text + f"; measure it: appraiser eval llm -o model={run.id}")


def _model_lines(run: Run) -> list[tuple[str, str]]:
    out = [("Model", f"{run.model or '-'}" + (" (hosted)" if run.kind == "hosted" else " + LoRA adapter"))]
    if run.kind == "local" and run.folder is not None:
        folder = Path(run.folder)
        adapter = next((folder / d for d in ("best", "final") if (folder / d).exists()), None)
        if adapter is not None:
            out.append(("Adapter", str(adapter)))
            out.append(
                (
                    "Use it",
                    f'appraiser predict "DESCRIPTION" --model {run.id}   |   appraiser eval llm -o model={run.id}',
                )
            )
    elif run.kind == "hosted":
        model = run.config.get("fine_tuned_model") or run.config.get("result_model")
        if model:
            out.append(("Use it", f"the provider's model {model}"))
    return out


def _job_lines(store: RunStore, run: Run) -> list[tuple[str, str]]:
    """A fine-tuning job of `appraiser serve` (its run is named by the job id): how its owner uses the result."""
    job = run.name or run.id
    out = [("Base model", f"{run.model or '-'} + LoRA adapter")]
    model = store.get_state(run.id, "fine_tuned_model")
    if model:
        out.append(("Model", model))
        out.append(("Use it", f'client.chat.completions.create(model="{model}", messages=[...])'))
    out.append(("Follow", f'client.fine_tuning.jobs.list_events("{job}")'))
    return out


def _error_lines(store: RunStore, run: Run, n: int = 8) -> list[str]:
    lines = []
    if run.error:
        lines += run.error.splitlines()
    errors = [e.message for e in store.events(run.id) if e.level == "error"]
    for msg in errors[-n:]:
        for line in msg.splitlines():
            if line not in lines:
                lines.append(line)
    return lines[-n:]


def build_card(store: RunStore, run_id: str, status: str | None = None) -> Card:
    """The card of a run as the store has it now; `status` overrides what it reports (e.g. `stalled`)."""
    import time

    run = store.get(run_id)
    status = status or run.display_status
    name = f"{run.name} ({run.id})" if run.name else run.id
    card = Card(run.id, status, f"Appraiser: run {name} {status}")
    ended = run.updated if run.finished else time.time()
    card.lines.append(("Run", name + (f" [{run.kind}, {run.external_id}]" if run.external_id else "")))
    card.lines.append(("Status", status + (f" - {run.error.splitlines()[0]}" if run.error else "")))
    card.lines.append(
        ("Duration", f"{fmt_duration(ended - _started(store, run))} (step {run.step}/{run.max_steps or '?'})")
    )
    card.lines += _loss_lines(store, run)
    probe, best = _probe_lines(store, run)
    card.lines += probe
    board = _leaderboard_line(run, best)
    if board is not None:
        card.lines.append(board)
    if run.config.get("fine_tuning_job"):  # a job of appraiser serve: its client speaks the OpenAI API
        card.lines += _job_lines(store, run)
    else:
        card.lines += _model_lines(run)
        card.lines.append(("Follow", f"appraiser runs show {run.id}   |   appraiser runs watch {run.id}"))
    if status in ("failed", "killed", "stalled"):
        card.error_lines = _error_lines(store, run)
    return card


def loss_png(store: RunStore, run_id: str, path: str | Path | None = None) -> Path | None:
    """The loss curve (raw, smoothed, noise band; probe MAE on a second axis) as a PNG; None without losses.

    Written to `path`, else to the run's folder (`loss.png`), else to a temporary file.
    """
    from matplotlib.figure import Figure

    from appraiser.runs.trend import debiased_ema, noise_band

    run = store.get(run_id)
    steps, losses = store.series(run.id, "loss")
    if not losses:
        return None
    if path is None:
        if run.folder is not None and Path(run.folder).is_dir():
            path = Path(run.folder) / "loss.png"
        else:
            fd, name = tempfile.mkstemp(prefix=f"appraiser-{run.id}-", suffix=".png")
            os.close(fd)
            path = Path(name)
    path = Path(path)
    smooth = debiased_ema(losses, SMOOTHING)
    band = noise_band(losses, smooth)
    fig = Figure(figsize=(7, 3.6))
    ax: Any = fig.add_subplot()
    ax.plot(steps, losses, color="#bbbbbb", linewidth=0.8, label="loss")
    ax.fill_between(
        steps, [lo for lo, _ in band], [hi for _, hi in band], color="#1f77b4", alpha=0.15, label="noise band (±1 sd)"
    )
    ax.plot(steps, smooth, color="#1f77b4", linewidth=1.8, label=f"smoothed (debiased EMA, s={SMOOTHING})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    probe_steps, maes = store.series(run.id, "probe_mae")
    if maes:
        ax2 = ax.twinx()
        ax2.plot(probe_steps, maes, "o-", color="#ff8c00", label="probe MAE ($)")
        ax2.set_ylabel("probe MAE ($)")
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{run.name or run.id}: {run.display_status}, step {run.step}/{run.max_steps or '?'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
