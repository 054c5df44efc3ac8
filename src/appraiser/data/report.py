"""The curation report: what went in, what was dropped and why, and what came out.

`stats.json` holds the numbers (counts per drop reason and per category, price and text-length
summaries); PNG charts show the price distribution before and after the flattening sample, the
text lengths and the categories; `report.md` ties them together and `errors.txt` lists every
malformed line as `file:line: reason`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from appraiser.data.curate import CurateConfig, ScanResult


def summary(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """count, min, p10, median, mean, p90, max of a list of numbers (just count when empty)."""
    xs = np.asarray(values, dtype=np.float64)
    if xs.size == 0:
        return {"count": 0}
    q = np.quantile(xs, [0.1, 0.5, 0.9])
    return {
        "count": int(xs.size),
        "min": round(float(xs.min()), 2),
        "p10": round(float(q[0]), 2),
        "median": round(float(q[1]), 2),
        "mean": round(float(xs.mean()), 2),
        "p90": round(float(q[2]), 2),
        "max": round(float(xs.max()), 2),
    }


def build_stats(result: ScanResult, config: CurateConfig, parts: dict[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """The numbers of a curation run, as written to `stats.json`."""
    from appraiser.data.curate import REASONS, category_key

    store = result.store
    prices = np.frombuffer(store.prices, dtype=np.float64) if len(store) else np.zeros(0)
    lens = np.asarray(store.text_lens, dtype=np.int64)
    kept_idx = np.concatenate([parts[s] for s in parts]) if parts else np.zeros(0, dtype=np.int64)
    cats_all = Counter(category_key(store.category_of(i)) for i in range(len(store)))
    cats_kept = Counter(category_key(store.category_of(int(i))) for i in kept_idx)
    dropped: Counter[str] = Counter({r: 0 for r in REASONS})
    for c in result.dropped.values():
        dropped.update(c)
    records = sum(result.records.values())
    by_category = {
        cat: {
            "records": result.records.get(cat, 0),
            "dropped": dict(result.dropped.get(cat, {})),
            "candidates": cats_all.get(cat, 0),
            "kept": cats_kept.get(cat, 0),
        }
        for cat in sorted(set(result.records) | set(cats_all))
    }
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [{"path": s.label, "category": s.category} for s in result.sources],
        "format": fmt,
        "config": config.model_dump(mode="json"),
        "records": records,
        "dropped": dict(dropped),
        "dropped_total": sum(dropped.values()),
        "malformed_lines": result.n_errors,
        "candidates": len(store),
        "not_sampled": len(store) - int(kept_idx.size),
        "kept": int(kept_idx.size),
        "splits": {name: int(idx.size) for name, idx in parts.items()},
        "by_category": by_category,
        "price": {"candidates": summary(prices), "kept": summary(prices[kept_idx] if prices.size else [])},
        "text_length": {"candidates": summary(lens), "kept": summary(lens[kept_idx] if lens.size else [])},
        "scan_seconds": round(result.seconds, 3),
        "records_per_second": round((records - result.resumed_from) / result.seconds, 1) if result.seconds else None,
        "workers": config.workers,
        "resumed_from_records": result.resumed_from,
    }


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def price_chart(candidates: np.ndarray, kept: np.ndarray, path: Path) -> None:
    """Histogram of prices before (outline) and after (filled) sampling."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, renders with Agg

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    top = max(float(candidates.max()) if candidates.size else 1.0, 1.0)
    bins = np.linspace(0, top, 41)
    ax.hist(
        candidates,
        bins=bins,
        histtype="step",
        linewidth=1.5,
        label=f"after checks and dedupe ({candidates.size:,})",
    )
    ax.hist(kept, bins=bins, alpha=0.6, label=f"kept in the splits ({kept.size:,})")
    ax.set_xlabel("price ($)")
    ax.set_ylabel("items")
    ax.set_title("Price distribution")
    ax.legend()
    _save(fig, path)


def length_chart(lengths: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.hist(lengths, bins=40)
    ax.set_xlabel("text length (characters)")
    ax.set_ylabel("items")
    ax.set_title(f"Text length of kept items ({lengths.size:,})")
    _save(fig, path)


def category_chart(by_category: dict[str, dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    names = sorted(by_category, key=lambda c: by_category[c]["kept"])
    fig = Figure(figsize=(8, max(2.5, 0.45 * len(names) + 1)))
    ax = fig.subplots()
    y = np.arange(len(names))
    ax.barh(y - 0.2, [by_category[c]["candidates"] for c in names], height=0.4, label="after checks and dedupe")
    ax.barh(y + 0.2, [by_category[c]["kept"] for c in names], height=0.4, label="kept in the splits")
    ax.set_yticks(y, names)
    ax.set_xlabel("items")
    ax.set_title("Items per category")
    ax.legend()
    _save(fig, path)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(stats: dict[str, Any], charts: bool, error_examples: list[str]) -> str:
    """A human-readable page of the run, linking the charts."""
    p_c, p_k = stats["price"]["candidates"], stats["price"]["kept"]
    out = [
        "# Curation report",
        "",
        "Inputs: " + ", ".join(f"`{i['path']}`" for i in stats["inputs"]),
        "",
        _table(
            [
                ("records read", f"{stats['records']:,}"),
                ("dropped", f"{stats['dropped_total']:,}"),
                ("candidates (passed checks and dedupe)", f"{stats['candidates']:,}"),
                ("not sampled", f"{stats['not_sampled']:,}"),
                ("kept", f"{stats['kept']:,}"),
                *((f"  {k}", f"{v:,}") for k, v in stats["splits"].items()),
            ],
            ("", "count"),
        ),
        "",
        "## Dropped, by reason",
        "",
        _table([(k, f"{v:,}") for k, v in stats["dropped"].items()], ("reason", "records")),
        "",
        "## Categories",
        "",
        _table(
            [
                (c, f"{v['records']:,}", f"{v['candidates']:,}", f"{v['kept']:,}")
                for c, v in stats["by_category"].items()
            ],
            ("category", "records", "candidates", "kept"),
        ),
        "",
        "## Prices",
        "",
        _table(
            [(k, p_c.get(k, ""), p_k.get(k, "")) for k in ("count", "min", "p10", "median", "mean", "p90", "max")],
            ("", "candidates", "kept"),
        ),
        "",
    ]
    if charts:
        out += [
            "![price distribution](price.png)",
            "",
            "![text length](text_length.png)",
            "",
            "![categories](categories.png)",
            "",
        ]
    if stats["malformed_lines"]:
        out += [
            f"## Malformed lines ({stats['malformed_lines']:,}; all in [errors.txt](errors.txt))",
            "",
            "```",
        ]
        out += error_examples + ["```", ""]
    return "\n".join(out)


def write_report(
    stats: dict[str, Any], result: ScanResult, parts: dict[str, np.ndarray], folder: Path, charts: bool = True
) -> dict[str, Path]:
    """Write stats.json, errors.txt, the PNG charts and report.md into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "stats": folder / "stats.json",
        "errors": folder / "errors.txt",
        "markdown": folder / "report.md",
    }
    _write_json(stats, paths["stats"])
    tmp = folder / f".errors.txt.tmp-{os.getpid()}"
    shutil.copyfile(result.errors_path, tmp)
    os.replace(tmp, paths["errors"])
    if charts:
        store = result.store
        prices = np.frombuffer(store.prices, dtype=np.float64) if len(store) else np.zeros(0)
        lens = np.asarray(store.text_lens, dtype=np.int64)
        kept_idx = np.concatenate(list(parts.values())) if parts else np.zeros(0, dtype=np.int64)
        paths["price_chart"] = folder / "price.png"
        paths["length_chart"] = folder / "text_length.png"
        paths["category_chart"] = folder / "categories.png"
        price_chart(prices, prices[kept_idx] if prices.size else prices, paths["price_chart"])
        length_chart(lens[kept_idx] if lens.size else lens, paths["length_chart"])
        category_chart(stats["by_category"], paths["category_chart"])
    tmp_md = folder / f".report.md.tmp-{os.getpid()}"
    tmp_md.write_text(markdown(stats, charts, result.error_examples), encoding="utf-8")
    os.replace(tmp_md, paths["markdown"])
    return paths
