"""The demo's `index.html`: the results as pictures on one page, not a wall of links.

What the course's lecture is about, inline and offline (plotly.js written once beside the page, no CDN):
the leaderboard with each MAE's 95% CI; the best pricer's scatter (guess vs truth) and running error; and
the fine-tune's loss curve with its smoothed trend (debiased EMA), noise band, probe MAE and the trend
verdict (`runs.trend`). The table and every file (charts, predictions) stay below, for whoever wants them.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appraiser.evaluation.charts import (
    leaderboard_figure,
    loss_figure,
    running_figure,
    save_loss_chart,
    scatter_figure,
    slug,
)
from appraiser.evaluation.evaluator import EvalResult
from appraiser.evaluation.metrics import mae_rank
from appraiser.items import fingerprint

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
td,th{padding:4px 10px;text-align:left}tr:nth-child(even){background:#f4f4f4}
.verdict{font-size:1.1em;font-weight:600}.falling{color:#2ca02c}.flat{color:#b8860b}
.rising,.diverging{color:#d62728}.muted{color:#777}details{margin:1em 0}"""


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _plotly_js(out: Path) -> str:
    """Copy plotly.js from the plotly wheel beside the page (once) and return its relative name."""
    import plotly

    target = out / "plotly.min.js"
    if not target.exists():
        shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", target)
    return target.name


def _inline(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def _cell(v: float | None, fmt: str) -> str:
    return "–" if v is None or v != v else fmt.format(v)


def _table(out: Path, rows: Sequence[EvalResult]) -> str:
    lines = []
    for r in rows:
        ci = f"${r.metrics['mae_ci_low']:,.0f}–${r.metrics['mae_ci_high']:,.0f}" if "mae_ci_low" in r.metrics else "–"
        files = " ".join(
            f'<a href="{html.escape(_rel(p, out))}">{html.escape(p.suffix[1:] + ":" + p.stem)}</a>' for p in r.charts
        )
        files += f' <a href="predictions/{html.escape(slug(r.pricer))}.jsonl">predictions</a>'
        lines.append(
            f"<tr><td>{html.escape(r.pricer)}</td><td>{_cell(r.metrics.get('mae'), '${:,.2f}')}</td><td>{ci}</td>"
            f"<td>{_cell(r.metrics.get('rmsle'), '{:.3f}')}</td><td>{_cell(r.metrics.get('hit_rate'), '{:.0%}')}</td>"
            f"<td>{int(r.metrics.get('failures', 0))}</td><td>{r.seconds:,.1f}s</td><td>{files}</td></tr>"
        )
    return "\n".join(lines)


def _fine_tune(out: Path, trained: Any, store: Any) -> tuple[str, str]:
    """(the fine-tune's section, its verdict line) from the run store: loss curve, trend, band, probes."""
    from appraiser.runs.trend import verdict

    run_id = html.escape(trained.run_id)
    adapter = html.escape(str(trained.best or trained.final))
    facts = (
        f"<p>Run <code>{run_id}</code>, {trained.steps} steps, adapter <code>{adapter}</code>"
        + (f"; best probe MAE ${trained.best_probe_mae:,.2f} at step {trained.best_step}" if trained.best_step else "")
        + f". Its log: <code>appraiser runs events {run_id}</code>; live: <code>appraiser dashboard</code>.</p>"
    )
    steps, losses = store.series(trained.run_id, "loss")
    if not steps:
        return facts + '<p class="muted">(no loss points were recorded)</p>', ""
    probe_steps, probe_maes = store.series(trained.run_id, "probe_mae")
    v = verdict(losses, metric="loss")
    title = f"fine-tune {trained.run_id}: loss trend — {v.message}"
    paths = save_loss_chart(steps, losses, out / "charts", probe_steps, probe_maes, title=title, name="loss")
    line = f'<p class="verdict {v.state.replace(" ", "-")}">Loss trend: {html.escape(v.message)}</p>'
    if len(probe_maes) >= 3:
        pv = verdict(probe_maes, metric="probe MAE", min_points=3)
        line += f'<p class="muted">Probe MAE trend: {html.escape(pv.message)}</p>'
    figure = _inline(loss_figure(steps, losses, probe_steps, probe_maes, title=title), "loss-chart")
    links = " ".join(f'<a href="{html.escape(_rel(p, out))}">{html.escape(p.name)}</a>' for p in paths)
    return facts + line + figure + f'<p class="muted">Also as {links}.</p>', line


TRADITIONAL = ("constant", "linear", "tfidf", "bow", "random-forest", "xgboost", "svr", "knn", "human", "ridge")


def is_traditional(name: str) -> bool:
    """A pricer with no language model in it (the demo's baselines), by its leaderboard name."""
    low = name.lower()
    return low.startswith(TRADITIONAL) and "lora" not in low and "blend" not in low


def model_vs_traditional(results: Sequence[EvalResult]) -> str:
    """One line: the best model-based pricer against the best traditional baseline on the same items."""
    scored = [r for r in results if mae_rank(r.metrics).mae < math.inf]  # a pricer that failed every item: no MAE
    trad = [r for r in scored if is_traditional(r.pricer)]
    model = [r for r in scored if not is_traditional(r.pricer)]
    if not trad or not model:
        return ""
    t = min(trad, key=lambda r: mae_rank(r.metrics))
    m = min(model, key=lambda r: mae_rank(r.metrics))
    diff = m.metrics["mae"] - t.metrics["mae"]
    gap = abs(diff)
    if f"{gap:,.2f}" == "0.00":  # e.g. a blend that gave the baseline all the weight
        verdict = "ties with"
    else:
        verdict = "beats" if diff < 0 else "trails"
    return (
        f"Best model-based pricer {m.pricer} (MAE ${m.metrics['mae']:,.2f}) {verdict} the best traditional baseline "
        f"{t.pricer} (${t.metrics['mae']:,.2f})"
        + ("" if verdict == "ties with" else f" by ${gap:,.2f}")
        + f" on these {len(m.results)} items."
    )


def write_index(
    out: Path,
    cfg: Any,
    results: list[EvalResult],
    chart_paths: list[Path],
    trained: Any,
    store: Any = None,
) -> Path:
    """Write `out/index.html` (and `out/plotly.min.js`, `out/charts/loss.*`); `store` is the run store the
    fine-tune logged to (default: the user's)."""
    from appraiser.runs.store import RunStore

    store = store or RunStore()
    out = Path(out)
    rows = sorted(results, key=lambda r: mae_rank(r.metrics))
    fp = results[0].test_fingerprint if results else fingerprint([])
    js = _plotly_js(out)
    board = " ".join(f'<a href="{html.escape(_rel(p, out))}">{html.escape(p.name)}</a>' for p in chart_paths)
    best = rows[0] if rows else None
    best_html = ""
    if best is not None and any(r.guess is not None for r in best.results):
        best_html = (
            f"<h2>The best pricer: {html.escape(best.pricer)}</h2>"
            + _inline(scatter_figure(best), "best-scatter")
            + _inline(running_figure(best), "best-running")
        )
    tune_html, _ = _fine_tune(out, trained, store) if trained is not None else ("", "")
    verdict = model_vs_traditional(results)
    verdict_html = f"<p><b>{html.escape(verdict)}</b></p>" if verdict else ""
    n_items = len(results[0].results) if results else 0
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Appraiser demo</title>
<script src="{js}"></script>
<style>{STYLE}</style></head>
<body><h1>Appraiser demo</h1>
<p>Data: <code>{html.escape(str(cfg.data))}</code>; test set: {n_items} items
(fingerprint <code>{fp}</code>); model <code>{html.escape(cfg.model)}</code>{" (quick mode)" if cfg.quick else ""}.</p>
<h2>Leaderboard</h2>
{verdict_html}
{_inline(leaderboard_figure(rows), "leaderboard-chart") if rows else ""}
{best_html}
<h2>The fine-tune</h2>
{tune_html}
<h2>All results</h2>
<table><tr><th>pricer</th><th>MAE</th><th>95% CI</th><th>RMSLE</th><th>hit rate</th><th>failures</th>
<th>time</th><th>files</th></tr>
{_table(out, rows)}
</table>
<p>Leaderboard chart: {board}</p>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
