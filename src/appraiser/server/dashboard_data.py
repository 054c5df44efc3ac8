"""What the dashboard's pages show, as JSON-able dicts: runs, one run's curves, the leaderboard, an evaluation.

Kept apart from the routes so the benchmark and the tests can call the same functions the pages do. The
loss curve carries its smoothed trend and noise band computed here (the same debiased EMA and band as
`runs.trend`), downsampled with LTTB at the same indices, so a 10,000-step run is a few hundred kilobytes.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections import deque
from contextlib import closing
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from appraiser.evaluation.metrics import mae_rank
from appraiser.runs.downsample import lttb_indices
from appraiser.runs.store import Run, RunStore
from appraiser.runs.trend import verdict

#: Smoothing of the trend line: TensorBoard's slider, higher is smoother (trend.debiased_ema's `s`).
SMOOTHING = 0.9
#: Residuals the noise band's standard deviation is taken over (trend.noise_band's `window`).
BAND_WINDOW = 50
#: Points a curve is downsampled to on first load (a chart is ~1,000 pixels wide).
DEFAULT_POINTS = 1500
#: Events sent with a run page on first load (newest); the live stream adds the rest.
EVENTS_ON_LOAD = 200
CURVES = ("loss", "probe_mae")


@dataclass
class Paths:
    """Where the dashboard reads from: the run store and the leaderboard database."""

    runs_db: Path
    leaderboard_db: Path
    #: `appraiser serve`'s own run store, where its fine-tuning jobs train (each run records its owner)
    job_runs_db: Path | None = None


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


class Smoother:
    """The debiased EMA and its noise band, one point at a time (so the live stream can continue a curve).

    Gives the same numbers as `trend.debiased_ema(values, s)` and `trend.noise_band(values, ema, window)`.
    """

    def __init__(self, s: float = SMOOTHING, window: int = BAND_WINDOW):
        self.s, self.last, self.n = s, 0.0, 0
        self.residuals: deque[float] = deque(maxlen=window)
        self.last_step: int | None = None
        self._sum = self._sq = 0.0  # of the finite residuals in the window: the sd in O(1) per point
        self._count = 0
        self._adds = 0

    def _push(self, r: float) -> None:
        if len(self.residuals) == self.residuals.maxlen:
            old = self.residuals[0]
            if math.isfinite(old):
                self._sum, self._sq, self._count = self._sum - old, self._sq - old * old, self._count - 1
        self.residuals.append(r)
        if math.isfinite(r):
            self._sum, self._sq, self._count = self._sum + r, self._sq + r * r, self._count + 1
        self._adds += 1
        if self._adds % 1000 == 0:  # re-add exactly now and then, so rounding never drifts
            finite = [v for v in self.residuals if math.isfinite(v)]
            self._sum, self._sq, self._count = sum(finite), sum(v * v for v in finite), len(finite)

    def add(self, step: int, y: float | None) -> tuple[float | None, float | None, float | None]:
        """(ema, low, high) after one more raw value."""
        self.last_step = step
        if y is None or not math.isfinite(y):
            self._push(float("nan"))
            return None, None, None
        self.n += 1
        self.last = self.last * self.s + (1 - self.s) * y
        m = self.last / (1 - self.s**self.n)
        self._push(y - m)
        k = self._count
        sd = math.sqrt(max(self._sq - self._sum * self._sum / k, 0.0) / (k - 1)) if k > 1 else 0.0
        return m, m - sd, m + sd


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection: the dashboard never writes to a store it watches."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    return db


# ---------------------------------------------------------------- who may see what


def visible(run: Run, owner: str | None, keys_configured: bool) -> bool:
    """Without keys everyone is the machine's user; with keys, a run that records an owner (a job made
    through the API) is shown to that owner only, and a run without one (made on this machine) to any key."""
    if not keys_configured:
        return True
    recorded = run.config.get("owner") if isinstance(run.config, dict) else None
    return recorded is None or recorded == owner


# ---------------------------------------------------------------- runs


def trend_of(store: RunStore, run_id: str) -> dict[str, Any]:
    """Loss and probe-MAE verdicts (state and one line), as `appraiser runs show` gives them."""
    out: dict[str, Any] = {}
    for name, label, min_points in (("loss", "loss", 20), ("probe_mae", "probe MAE", 3)):
        _, values = store.series(run_id, name)
        if values:
            v = verdict(values, metric=label, min_points=min_points)
            out[name] = {"state": v.state, "message": v.message}
    return out


@lru_cache(maxsize=512)
def _trend_cached(path: str, run_id: str, updated: float) -> str:
    return json.dumps(trend_of(RunStore(path), run_id))


def run_summary(store: RunStore, run: Run, with_trend: bool = True) -> dict[str, Any]:
    """One row of the runs list."""
    return {
        "id": run.id,
        "name": run.name,
        "kind": run.kind,
        "status": run.display_status,
        "model": run.model,
        "step": run.step,
        "max_steps": run.max_steps,
        "best": (
            {"metric": run.best_metric, "value": _finite(run.best_value), "step": run.best_step}
            if run.best_value is not None
            else None
        ),
        "external_id": run.external_id,
        "created": run.created,
        "updated": run.updated,
        "error": run.error,
        # a run that has not changed since has the same verdict: a list of finished runs costs nothing
        "trend": json.loads(_trend_cached(str(store.path), run.id, run.updated)) if with_trend else {},
    }


def runs_list(store: RunStore, owner: str | None, keys_configured: bool, limit: int = 200) -> list[dict[str, Any]]:
    """The newest `limit` runs this owner may see (filtered before the limit: another key's many newer runs
    must not push this key's own off the list)."""
    mine = (r for r in store.list() if visible(r, owner, keys_configured))
    return [run_summary(store, r) for r in itertools.islice(mine, limit)]


def cursor_now(store: RunStore, run_id: str) -> str:
    """The live stream's position now: `<metrics rowid>.<event id>` (see dashboard_live)."""
    with closing(_connect(store.path)) as db:
        m = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM metrics").fetchone()[0]
        e = db.execute("SELECT COALESCE(MAX(id), 0) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
    return f"{m}.{e}"


def last_events(store: RunStore, run_id: str, n: int = EVENTS_ON_LOAD) -> list[dict[str, Any]]:
    with closing(_connect(store.path)) as db:
        rows = db.execute(
            "SELECT id, time, level, message, step FROM events WHERE run_id = ? ORDER BY id DESC LIMIT ?", (run_id, n)
        ).fetchall()
    return [dict(r) for r in reversed(rows)]


#: training.checkpoints' names, repeated here: importing that package loads torch and transformers (seconds),
#: which a page listing folder names must not wait for. tests/test_dashboard.py checks they agree.
CHECKPOINT_PREFIX, CHECKPOINT_MARKER = "checkpoint-", "appraiser-checkpoint.json"


def checkpoints_of(run: Run) -> list[dict[str, Any]]:
    """The complete checkpoints of a local run (step and folder name), as `training.checkpoints.checkpoints`
    tells them (the marker is written last; runs from before markers: the Trainer's last file); none for a
    hosted run."""
    if run.folder is None or not Path(run.folder).is_dir():
        return []
    found = []
    for p in Path(run.folder).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = p.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isascii() and suffix.isdigit() and p.is_dir():
            found.append((int(suffix), p))
    marked = any((p / CHECKPOINT_MARKER).exists() for _, p in found)
    done = CHECKPOINT_MARKER if marked else "trainer_state.json"
    return [{"step": s, "name": p.name} for s, p in sorted(found) if (p / done).exists()]


def curve(steps: list[int], values: list[float], points: int | None, smooth: bool = True) -> dict[str, Any]:
    """A metric's steps and raw values, with EMA and band when `smooth`, downsampled (LTTB on the raw values)
    to `points` when given; the smoothing is computed on every point first, so it does not change."""
    out: dict[str, Any] = {"n": len(steps)}
    cols: dict[str, list[Any]] = {"step": steps, "raw": [_finite(v) for v in values]}
    if smooth:
        sm = Smoother()
        trio = [sm.add(s, v) for s, v in zip(steps, values, strict=True)]
        cols["ema"] = [t[0] for t in trio]
        cols["low"] = [t[1] for t in trio]
        cols["high"] = [t[2] for t in trio]
    if points is not None and len(steps) > points:
        idx = lttb_indices(steps, [v if v is not None else float("nan") for v in values], points)
        cols = {k: [col[i] for i in idx] for k, col in cols.items()}
    out.update(cols)
    out["downsampled"] = len(out["step"]) < len(steps)
    return out


def run_detail(store: RunStore, run: Run, points: int | None = DEFAULT_POINTS) -> dict[str, Any]:
    """Everything a run page draws on load, and the cursor its live stream continues from."""
    cursor = cursor_now(store, run.id)  # before reading: the stream may repeat a point, never skip one
    curves = {}
    for name in CURVES:
        steps, values = store.series(run.id, name)
        curves[name] = curve(steps, values, points, smooth=name == "loss")
    return {
        "run": run_summary(store, run),
        "latest": {k: _finite(v) for k, v in store.latest(run.id).items()},
        "curves": curves,
        "events": last_events(store, run.id),
        "checkpoints": checkpoints_of(run),
        "cursor": cursor,
        "smoothing": SMOOTHING,
    }


# ---------------------------------------------------------------- the leaderboard


def _leaderboard(path: Path) -> Any:
    from appraiser.evaluation.store import LeaderboardStore

    return LeaderboardStore(path)


def leaderboard(path: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """The newest row per pricer on one test set (the newest set unless `fingerprint`), best MAE first."""
    if not path.exists():
        return {"fingerprints": [], "fingerprint": None, "rows": []}
    with _leaderboard(path) as lb:
        sets = [{"fingerprint": f, "size": n, "evaluations": c, "newest": t} for f, n, c, t in lb.fingerprints()]
        fp = fingerprint or (sets[0]["fingerprint"] if sets else None)
        rows = lb.rows(fp, latest_only=True) if fp else []
    rows.sort(key=lambda r: mae_rank(r.metrics))
    return {
        "fingerprints": sets,
        "fingerprint": fp,
        "rows": [
            {
                "id": r.run_id,
                "label": r.label,
                "pricer": r.pricer,
                "n": r.test_size,
                "mae": _finite(r.metrics.get("mae")),
                "mae_ci_low": _finite(r.metrics.get("mae_ci_low")),
                "mae_ci_high": _finite(r.metrics.get("mae_ci_high")),
                "rmsle": _finite(r.metrics.get("rmsle")),
                "hit_rate": _finite(r.metrics.get("hit_rate")),
                "failures": int(r.metrics.get("failures", 0) or 0),
                "ranked_after": mae_rank(r.metrics).group == 1,  # priced under MIN_PRICED_SHARE: the page says so
                "seconds": r.seconds,
                "created": r.created,
            }
            for r in rows
        ],
    }


def compare(path: Path, a: int, b: int) -> dict[str, Any]:
    """The paired comparison of two stored evaluations (evaluation.compare.paired_compare)."""
    from appraiser.evaluation.compare import paired_compare

    if not path.exists():
        raise KeyError("no leaderboard yet")
    with _leaderboard(path) as lb:
        ra, rb = lb.get(a), lb.get(b)
        if ra is None or rb is None:
            raise KeyError(f"no evaluation {a if ra is None else b}")
        c = paired_compare(lb.predictions(a), lb.predictions(b), ra.label, rb.label)
    out = {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(c).items()}
    out["verdict"] = c.verdict
    return out


def evaluation_exists(path: Path, eval_id: int) -> bool:
    with _leaderboard(path) as lb:
        return lb.get(eval_id) is not None


def evaluation(path: Path, eval_id: int, points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """One evaluation's scatter (truth, guess, colour band, title) and running MAE with its 95% CI."""
    from appraiser.evaluation.charts import COLOURS, running_error

    with _leaderboard(path) as lb:
        res = lb.result(eval_id)
    ok = [r for r in res.results if r.guess is not None]
    mean, low, high = running_error([r.error for r in ok])
    x = list(range(1, len(mean) + 1))
    idx = lttb_indices(x, mean.tolist(), points) if len(x) > points else list(range(len(x)))
    return {
        "id": eval_id,
        "label": res.pricer,
        "fingerprint": res.test_fingerprint,
        "metrics": {k: _finite(v) if isinstance(v, float) else v for k, v in res.metrics.items()},
        "n": len(res.results),
        "scatter": {
            "truth": [r.truth for r in ok],
            "guess": [r.guess for r in ok],
            "colour": [COLOURS[r.color] for r in ok],
            "title": [(r.title or r.id)[:80] for r in ok],
        },
        "running": {  # a guess of 1e308 makes the running error infinite, which JSON cannot carry: a gap
            "n": [x[i] for i in idx],
            "mae": [_finite(float(mean[i])) for i in idx],
            "low": [_finite(float(low[i])) for i in idx],
            "high": [_finite(float(high[i])) for i in idx],
        },
    }
