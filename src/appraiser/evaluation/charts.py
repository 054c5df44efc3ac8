"""Charts of an evaluation and of the leaderboard, as PNG (for READMEs and papers) and HTML (to explore).

PNGs are drawn with matplotlib's object API (no pyplot global state, so it works headless and from
threads). HTML charts are plotly with plotly.js written once beside them (`plotly.min.js`), so they
open offline — a CDN link would not.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from appraiser.evaluation.evaluator import EvalResult
from appraiser.evaluation.metrics import FAILED, mae_rank, money
from appraiser.evaluation.store import Row

COLOURS = {"green": "#2ca02c", "orange": "#ff8c00", "red": "#d62728", FAILED: "#7f7f7f"}
#: Upper edges of the price bands used to break the error down (the last band is open).
PRICE_BANDS = (25, 50, 100, 200, 500)


def slug(text: str) -> str:
    """A file-name-safe version of a pricer label."""
    return short_name(re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "pricer")


def short_name(name: str, limit: int = 150, sep: str = "-") -> str:
    """`name` cut to `limit` characters with a hash of the whole kept at its end, so that two long labels stay
    apart: a label names every non-default setting (an ensemble's can pass 300 characters), and file names
    stop at 255 bytes, with room needed for suffixes like `-scatter.html`."""
    if len(name) <= limit:
        return name
    import hashlib

    return f"{name[: limit - 10 - len(sep)]}{sep}{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def plotly_text(text: object) -> str:
    """Text for a plotly label, title or hover line, shown as written: plotly reads a subset of HTML in them
    (`<a href>` becomes a live link, `<b>` and `<br>` apply), so a pricer label or an item title of
    `<a href=...>` would otherwise draw a link, and the chart would say something else than the table.
    Plotly turns the entities back into the characters."""
    return html.escape(str(text), quote=False)


def mpl_text(text: object) -> str:
    """Text for a matplotlib title or label, shown as written: matplotlib reads what stands between two "$"
    as math, and every evaluation title has one "$" already (its MAE), so a label like "gpt $0.15/$0.60"
    turned the rest of the title into italic math with the dollars gone."""
    return str(text).replace("$", r"\$")


def _write_html(fig, path: Path) -> Path:
    fig.write_html(path, include_plotlyjs="directory", full_html=True)
    return path


def _save_png(fig, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # a layout that cannot fit is drawn as it is; the warning says nothing to a user
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def tick_label(label: str, limit: int = 60) -> str:
    """A label short enough for a chart's axis (`short_name`): two long labels stay two bars, and the others
    keep their room."""
    return short_name(label, limit, sep="…")


def band_label(price: float, bands: Sequence[float] = PRICE_BANDS) -> str:
    lo = 0
    for hi in bands:
        if price < hi:
            return f"${lo}–{hi}"
        lo = hi
    return f"${lo}+"


def running_error(errors: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running mean of the absolute errors and its normal-approximation 95% CI after each item."""
    e = np.asarray(errors, dtype=float)
    k = np.arange(1, e.size + 1)
    mean = np.cumsum(e) / k
    var = np.maximum(np.cumsum(e**2) / k - mean**2, 0) * k / np.maximum(k - 1, 1)
    half = 1.96 * np.sqrt(var / k)
    return mean, mean - half, mean + half


def _breakdown(result: EvalResult, key) -> tuple[list[str], list[float], list[int]]:
    groups: dict[str, list[float]] = {}
    for r in result.results:
        if r.error is not None:
            groups.setdefault(key(r), []).append(r.error)
    return list(groups), [float(np.mean(v)) for v in groups.values()], [len(v) for v in groups.values()]


def save_charts(result: EvalResult, folder: str | Path, log: bool = True) -> list[Path]:
    """Write the evaluation's charts to `folder`; returns the PNG and HTML paths.

    scatter (guess vs truth by colour band, with y = x; log axes unless `log=False`), running
    average error with its 95% CI band, and mean error by price band and by category; when the guesses
    carry their own distribution (the digit beam's quantiles), its calibration (`calibration_chart`).
    """
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = slug(result.pricer)
    ok = [r for r in result.results if r.guess is not None]
    # the label cut to fit (`tick_label`): a long one pushed the MAE off the image
    title = f"{tick_label(result.pricer)} — MAE {money(result.metrics['mae'])} on {len(result.results)} items"
    if result.metrics.get("failures"):
        title += f" ({int(result.metrics['failures'])} failed)"
    png_title = mpl_text(title.replace(" — ", "\n", 1))  # two lines: a long label leaves its MAE on the image
    paths: list[Path] = []

    # ---- predicted vs actual
    truths = np.array([r.truth for r in ok])
    guesses = np.array([r.guess for r in ok])
    cols = [COLOURS[r.color] for r in ok]
    lim_hi = float(max(truths.max(initial=1), guesses.max(initial=1))) * 1.1
    lim_lo = max(0.5, float(min(truths.min(initial=1), np.clip(guesses, 0.5, None).min(initial=1))) * 0.9)
    fig = Figure(figsize=(7, 7))
    ax = fig.add_subplot()
    ax.scatter(truths, np.clip(guesses, lim_lo, None) if log else guesses, c=cols, s=14, alpha=0.8)
    lo = lim_lo if log else 0
    ax.plot([lo, lim_hi], [lo, lim_hi], color="black", lw=1, ls="--", label="y = x")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set(xlabel="true price ($)", ylabel="guess ($)", title=png_title, xlim=(lo, lim_hi), ylim=(lo, lim_hi))
    ax.legend(loc="upper left")
    paths.append(_save_png(fig, folder / f"{stem}-scatter.png"))
    pfig = go.Figure()
    for band in ("green", "orange", "red"):
        sel = [r for r in ok if r.color == band]
        pfig.add_trace(
            go.Scatter(
                x=[r.truth for r in sel],
                y=[r.guess for r in sel],
                mode="markers",
                name=band,
                marker={"color": COLOURS[band], "size": 6},
                text=[plotly_text((r.title or r.id)[:80]) for r in sel],
                hovertemplate="%{text}<br>truth $%{x:,.2f}<br>guess $%{y:,.2f}<extra></extra>",
            )
        )
    pfig.add_trace(go.Scatter(x=[lo, lim_hi], y=[lo, lim_hi], mode="lines", name="y = x", line={"dash": "dash"}))
    axis_type = "log" if log else "linear"
    pfig.update_layout(
        title=plotly_text(title),
        xaxis={"title": "true price ($)", "type": axis_type},
        yaxis={"title": "guess ($)", "type": axis_type},
        width=800,
        height=750,
    )
    paths.append(_write_html(pfig, folder / f"{stem}-scatter.html"))

    # ---- running average error with its 95% CI
    mean, low, high = running_error([r.error for r in ok])
    x = np.arange(1, mean.size + 1)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    ax.fill_between(x, low, high, alpha=0.25, label="95% CI")
    ax.plot(x, mean, lw=1.5, label="running MAE")
    ax.set(xlabel="items scored", ylabel="mean absolute error ($)", title=png_title)
    ax.legend()
    paths.append(_save_png(fig, folder / f"{stem}-running.png"))
    pfig = go.Figure(
        [
            go.Scatter(x=x, y=high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
            go.Scatter(x=x, y=low, mode="lines", line={"width": 0}, fill="tonexty", name="95% CI"),
            go.Scatter(x=x, y=mean, mode="lines", name="running MAE"),
        ]
    )
    pfig.update_layout(title=plotly_text(title), xaxis_title="items scored", yaxis_title="mean absolute error ($)")
    paths.append(_write_html(pfig, folder / f"{stem}-running.html"))

    # ---- error by price band and by category
    band_order = [band_label(b - 1e-9) for b in PRICE_BANDS] + [band_label(PRICE_BANDS[-1])]
    names, maes, counts = _breakdown(result, lambda r: band_label(r.truth))
    by_band = {n: (m, c) for n, m, c in zip(names, maes, counts, strict=True)}
    bands = [b for b in band_order if b in by_band]
    cats, cat_maes, cat_counts = _breakdown(result, lambda r: r.category or "(none)")
    order = np.argsort(cat_maes)[::-1]
    cats = [cats[i] for i in order]
    cat_maes = [cat_maes[i] for i in order]
    cat_counts = [cat_counts[i] for i in order]
    fig = Figure(figsize=(12, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(bands, [by_band[b][0] for b in bands], color="#1f77b4")
    ax1.set(xlabel="true price band", ylabel="mean absolute error ($)", title="error by price band")
    ax1.tick_params(axis="x", labelrotation=30)
    ax1.margins(y=0.1)
    for i, b in enumerate(bands):
        ax1.annotate(f"n={by_band[b][1]}", (i, by_band[b][0]), ha="center", va="bottom", fontsize=8)
    ax2.barh([mpl_text(c) for c in cats], cat_maes, color="#9467bd")
    ax2.invert_yaxis()
    ax2.set(xlabel="mean absolute error ($)", title="error by category")
    ax2.margins(x=0.15)
    for i, (m, c) in enumerate(zip(cat_maes, cat_counts, strict=True)):
        ax2.annotate(f" n={c}", (m, i), va="center", fontsize=8)
    fig.suptitle(mpl_text(title))
    paths.append(_save_png(fig, folder / f"{stem}-breakdown.png"))
    from plotly.subplots import make_subplots

    pfig = make_subplots(rows=1, cols=2, subplot_titles=("error by price band", "error by category"))
    pfig.add_trace(
        go.Bar(x=bands, y=[by_band[b][0] for b in bands], text=[f"n={by_band[b][1]}" for b in bands], name="band"),
        row=1,
        col=1,
    )
    pfig.add_trace(
        go.Bar(
            x=cat_maes,
            y=[plotly_text(c) for c in cats],
            orientation="h",
            text=[f"n={c}" for c in cat_counts],
            name="category",
        ),
        row=1,
        col=2,
    )
    pfig.update_layout(title=plotly_text(title), showlegend=False)
    paths.append(_write_html(pfig, folder / f"{stem}-breakdown.html"))
    paths += calibration_chart(result, folder)
    return paths


def calibration_chart(result: EvalResult, folder: str | Path) -> list[Path]:
    """Reliability (nominal vs observed coverage of the central 10…90% intervals of each guess's own
    distribution, with the binomial 95% band around a calibrated model) and the PIT histogram (20 bins of 5%;
    flat when calibrated). Nothing is written when no guess carries quantiles."""
    import plotly.graph_objects as go
    from matplotlib.figure import Figure
    from plotly.subplots import make_subplots

    from appraiser.evaluation.metrics import RELIABILITY_LEVELS, reliability
    from appraiser.inference.decode import parse_quantiles

    rows = [(r.truth, parse_quantiles(r.raw)) for r in result.results if r.guess is not None]
    rel = reliability([t for t, _ in rows], [q for _, q in rows])
    if not rel:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = slug(result.pricer)
    n = int(rel["calib_n"])
    nominal = np.array(RELIABILITY_LEVELS)
    observed = np.array([rel[f"calib_cover_{round(lv * 100)}"] for lv in RELIABILITY_LEVELS])
    band = 1.96 * np.sqrt(nominal * (1 - nominal) / n)
    pit = np.array(rel["pit_bins"], dtype=float) / n
    centres = np.arange(20) * 0.05 + 0.025
    title = f"{tick_label(result.pricer)} — calibration of its own distribution ({n} items)"
    fig = Figure(figsize=(12, 5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.fill_between(nominal, nominal - band, nominal + band, alpha=0.2, color="grey", label="calibrated ±95%")
    ax1.plot([0, 1], [0, 1], color="black", lw=1, ls="--")
    ax1.plot(nominal, observed, marker="o", label="observed")
    ax1.set(xlabel="nominal coverage of the central interval", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1))
    ax1.set_title("reliability")
    ax1.legend(loc="upper left")
    ax2.bar(centres, pit, width=0.045, color="#1f77b4")
    ax2.axhline(0.05, color="black", lw=1, ls="--", label="calibrated (5% per bin)")
    ax2.set(xlabel="PIT: the model's CDF at the true price", ylabel="share of items", xlim=(0, 1))
    ax2.set_title("PIT histogram")
    ax2.legend(loc="upper center")
    fig.suptitle(mpl_text(title))
    paths = [_save_png(fig, folder / f"{stem}-calibration.png")]
    pfig = make_subplots(rows=1, cols=2, subplot_titles=("reliability", "PIT histogram"))
    pfig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line={"dash": "dash"}), 1, 1)
    pfig.add_trace(go.Scatter(x=nominal, y=observed, mode="lines+markers", name="observed"), 1, 1)
    pfig.add_trace(go.Bar(x=centres, y=pit, width=0.045, name="PIT"), 1, 2)
    pfig.add_hline(y=0.05, line_dash="dash", row=1, col=2)
    pfig.update_xaxes(title_text="nominal coverage", range=[0, 1], row=1, col=1)
    pfig.update_yaxes(title_text="observed coverage", range=[0, 1], row=1, col=1)
    pfig.update_xaxes(title_text="PIT", range=[0, 1], row=1, col=2)
    pfig.update_layout(title=plotly_text(title), showlegend=False)
    paths.append(_write_html(pfig, folder / f"{stem}-calibration.html"))
    return paths


def leaderboard_chart(rows: Sequence[Row], folder: str | Path, name: str = "leaderboard") -> list[Path]:
    """A horizontal bar chart of MAE (with its 95% CI) for leaderboard rows on one test set."""
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

    if len({r.test_fingerprint for r in rows}) > 1:
        raise ValueError("leaderboard rows from different test sets cannot share a chart")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: mae_rank(r.metrics))
    labels = bar_labels([r.label for r in rows], [r.run_id for r in rows])
    scored = [_finite(r.metrics.get("mae")) for r in rows]
    mae = np.array([m if ok else 0.0 for m, ok in scored])  # a row that failed on every item: no bar, a note
    err = np.array(
        [
            [m - r.metrics["mae_ci_low"] if ok else 0.0 for (m, ok), r in zip(scored, rows, strict=True)],
            [r.metrics["mae_ci_high"] - m if ok else 0.0 for (m, ok), r in zip(scored, rows, strict=True)],
        ]
    )
    notes = [f"${m:,.2f}" if ok else "all failed" for m, ok in scored]
    fp = rows[0].test_fingerprint if rows else "-"
    title = f"Mean absolute error on test set {fp} (lower is better)"
    fig = Figure(figsize=(9, 1.2 + 0.4 * max(len(rows), 1)))
    ax = fig.add_subplot()
    ax.barh([mpl_text(label) for label in labels], mae, xerr=err, color="#1f77b4", capsize=3)
    ax.invert_yaxis()
    for i, (note, hi) in enumerate(zip(notes, mae + err[1], strict=True)):
        ax.annotate(mpl_text(f"  {note}"), (hi, i), va="center", fontsize=8)
    ax.margins(x=0.15)
    ax.set(xlabel="MAE ($), bars: 95% CI", title=mpl_text(title))
    paths = [_save_png(fig, folder / f"{name}.png")]
    pfig = go.Figure(
        go.Bar(
            x=mae,
            y=[plotly_text(label) for label in labels],
            hovertext=[plotly_text(r.label) for r in rows],  # the whole label, where the axis shows a cut one
            orientation="h",
            error_x={"type": "data", "symmetric": False, "array": err[1], "arrayminus": err[0]},
            text=notes,
        )
    )
    pfig.update_layout(
        title=plotly_text(title), xaxis_title="MAE ($)", yaxis={"autorange": "reversed", "type": "category"}
    )
    paths.append(_write_html(pfig, folder / f"{name}.html"))
    return paths


def bar_labels(labels: Sequence[str], run_ids: Sequence[object]) -> list[str]:
    """One axis label per bar (`tick_label`): rows that share a label (`leaderboard --all-runs`) get their run
    id, since a category axis draws bars of one name over each other, the one MAE on top of the other's."""
    short = [tick_label(label) for label in labels]
    repeated = {x for x in short if short.count(x) > 1}
    return [f"{x} (run {run})" if x in repeated else x for x, run in zip(short, run_ids, strict=True)]


def _finite(v: object) -> tuple[float, bool]:
    """(value, True) for a finite number, else (nan, False): a pricer that failed on every item has no MAE."""
    ok = isinstance(v, int | float) and math.isfinite(v)
    return (float(v) if ok else float("nan")), ok


# ---------------------------------------------------------------- figures to embed (the demo report, inline)


def scatter_figure(result: EvalResult, log: bool = True):
    """Plotly guess-vs-truth scatter, coloured by band, with y = x (the HTML twin of `save_charts`' scatter)."""
    import plotly.graph_objects as go

    ok = [r for r in result.results if r.guess is not None]
    truths = np.array([r.truth for r in ok])
    guesses = np.array([r.guess for r in ok])
    hi = float(max(truths.max(initial=1), guesses.max(initial=1))) * 1.1
    lo = max(0.5, float(min(truths.min(initial=1), np.clip(guesses, 0.5, None).min(initial=1))) * 0.9) if log else 0
    fig = go.Figure()
    for band in ("green", "orange", "red"):
        sel = [r for r in ok if r.color == band]
        fig.add_trace(
            go.Scatter(
                x=[r.truth for r in sel],
                y=[max(r.guess, lo) if log else r.guess for r in sel],
                mode="markers",
                name=band,
                marker={"color": COLOURS[band], "size": 6},
                text=[plotly_text((r.title or r.id)[:80]) for r in sel],
                hovertemplate="%{text}<br>truth $%{x:,.2f}<br>guess $%{y:,.2f}<extra></extra>",
            )
        )
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dash"}))
    kind = "log" if log else "linear"
    fig.update_layout(
        title=plotly_text(f"{result.pricer}: guess vs truth"),
        xaxis={"title": "true price ($)", "type": kind},
        yaxis={"title": "guess ($)", "type": kind},
        height=520,
        margin={"t": 50},
    )
    return fig


def running_figure(result: EvalResult):
    """Plotly running MAE with its 95% CI band, item by item."""
    import plotly.graph_objects as go

    mean, low, high = running_error([r.error for r in result.results if r.guess is not None])
    x = np.arange(1, mean.size + 1)
    fig = go.Figure(
        [
            go.Scatter(x=x, y=high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
            go.Scatter(
                x=x, y=low, mode="lines", line={"width": 0}, fill="tonexty", fillcolor="rgba(31,119,180,0.2)",
                name="95% CI",
            ),
            go.Scatter(x=x, y=mean, mode="lines", name="running MAE", line={"color": "#1f77b4", "width": 2}),
        ]
    )  # fmt: skip
    fig.update_layout(
        title=plotly_text(f"{result.pricer}: running mean absolute error"),
        xaxis_title="items scored",
        yaxis_title="mean absolute error ($)",
        height=420,
        margin={"t": 50},
    )
    return fig


def leaderboard_figure(results: Sequence[EvalResult]):
    """Plotly MAE bars with asymmetric 95% CI whiskers, best first."""
    import plotly.graph_objects as go

    rows = sorted(results, key=lambda r: mae_rank(r.metrics))
    scored = [_finite(r.metrics.get("mae")) for r in rows]
    mae = [m if ok else 0.0 for m, ok in scored]
    fig = go.Figure(
        go.Bar(
            x=mae,
            y=[plotly_text(label) for label in bar_labels([r.pricer for r in rows], [r.run_id for r in rows])],
            orientation="h",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [
                    r.metrics.get("mae_ci_high", m) - m if ok else 0.0 for r, (m, ok) in zip(rows, scored, strict=True)
                ],
                "arrayminus": [
                    m - r.metrics.get("mae_ci_low", m) if ok else 0.0 for r, (m, ok) in zip(rows, scored, strict=True)
                ],
            },
            text=[f"${m:,.2f}" if ok else "all failed" for m, ok in scored],
            textposition="outside",
            marker={"color": "#1f77b4"},
        )
    )
    fig.update_layout(
        title="Mean absolute error with 95% CI (lower is better)",
        xaxis_title="MAE ($)",
        yaxis={"autorange": "reversed", "type": "category"},  # labels like "250" stay names, not numbers
        height=160 + 40 * len(rows),
        margin={"l": 260, "t": 50},
    )
    return fig


def loss_figure(
    steps: Sequence[int],
    losses: Sequence[float],
    probe_steps: Sequence[int] = (),
    probe_maes: Sequence[float] = (),
    title: str = "training loss",
    smoothing: float = 0.9,
    max_points: int = 2000,
):
    """Plotly loss curve: raw, the debiased EMA (runs.trend) and its ±1 sd noise band; probe MAE on a second
    axis. Downsampled with LTTB past `max_points` (the smoothing is computed on every point first)."""
    import plotly.graph_objects as go

    from appraiser.runs.downsample import lttb_indices
    from appraiser.runs.trend import debiased_ema, noise_band

    ema = debiased_ema(losses, smoothing)
    band = noise_band(losses, ema)
    idx = lttb_indices(list(steps), list(losses), max_points) if len(steps) > max_points else range(len(steps))
    x = [steps[i] for i in idx]
    fig = go.Figure(
        [
            go.Scatter(x=x, y=[band[i][1] for i in idx], mode="lines", line={"width": 0}, showlegend=False,
                       hoverinfo="skip"),
            go.Scatter(x=x, y=[band[i][0] for i in idx], mode="lines", line={"width": 0}, fill="tonexty",
                       fillcolor="rgba(31,119,180,0.18)", name="noise band (±1 sd)", hoverinfo="skip"),
            go.Scatter(x=x, y=[losses[i] for i in idx], mode="lines", name="loss (raw)",
                       line={"color": "rgba(31,119,180,0.35)", "width": 1}),
            go.Scatter(x=x, y=[ema[i] for i in idx], mode="lines", name="loss (EMA)",
                       line={"color": "#1f77b4", "width": 2.5}),
        ]
    )  # fmt: skip
    if probe_steps:
        fig.add_trace(
            go.Scatter(x=list(probe_steps), y=list(probe_maes), mode="lines+markers", name="probe MAE ($)",
                       yaxis="y2", line={"color": "#ff7f0e"})
        )  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis_title="step",
        yaxis_title="training loss",
        yaxis2={"title": "probe MAE ($)", "overlaying": "y", "side": "right", "showgrid": False},
        legend={"orientation": "h", "y": -0.2},
        height=460,
        margin={"t": 60, "r": 70},
    )
    return fig


def save_loss_chart(
    steps: Sequence[int],
    losses: Sequence[float],
    folder: str | Path,
    probe_steps: Sequence[int] = (),
    probe_maes: Sequence[float] = (),
    title: str = "training loss",
    smoothing: float = 0.9,
    name: str = "loss",
) -> list[Path]:
    """The loss curve as PNG (matplotlib: raw, EMA, band, probe MAE on a twin axis) and HTML (`loss_figure`)."""
    from matplotlib.figure import Figure

    from appraiser.runs.trend import debiased_ema, noise_band

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ema = debiased_ema(losses, smoothing)
    band = np.array(noise_band(losses, ema)) if len(losses) else np.zeros((0, 2))
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    if len(losses):
        ax.fill_between(steps, band[:, 0], band[:, 1], alpha=0.2, color="#1f77b4", label="noise band (±1 sd)")
    ax.plot(steps, losses, lw=0.8, alpha=0.4, color="#1f77b4", label="loss (raw)")
    ax.plot(steps, ema, lw=2, color="#1f77b4", label="loss (EMA)")
    ax.set(xlabel="step", ylabel="training loss", title=mpl_text(title))
    handles, labels = ax.get_legend_handles_labels()
    if len(probe_steps):
        ax2 = ax.twinx()
        ax2.plot(probe_steps, probe_maes, "o-", color="#ff7f0e", label="probe MAE ($)")
        ax2.set_ylabel("probe MAE ($)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    paths = [_save_png(fig, folder / f"{name}.png")]
    pfig = loss_figure(steps, losses, probe_steps, probe_maes, title, smoothing)
    paths.append(_write_html(pfig, folder / f"{name}.html"))
    return paths
