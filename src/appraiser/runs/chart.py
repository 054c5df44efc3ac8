"""A terminal line chart drawn with braille characters (2 x 4 dots per cell), for `runs watch`.

Small enough to own, so the live monitor needs no plotting dependency: several series over a shared
x axis, lines joined between points, the y range labelled on the left and the x range below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

_BRAILLE = 0x2800
# Bit of the dot at (row, column) inside one braille cell.
_DOT = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    style: str = "white"


def _fmt(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 10_000:
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.0f}"
    return f"{v:.2e}"


def line_chart(series: Sequence[Series], width: int = 60, height: int = 12) -> Text:
    """The series drawn into `width` x `height` character cells; later series are drawn on top."""
    pts = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True) if y is not None and math.isfinite(y)]
    out = Text()
    if not pts:
        out.append("(no data yet)", style="dim")
        return out
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width * 2, height * 4
    bits = [[0] * width for _ in range(height)]
    styles: list[list[str | None]] = [[None] * width for _ in range(height)]

    def pixel(x: float, y: float) -> tuple[int, int]:
        px = round((x - x0) / (x1 - x0) * (pw - 1))
        py = round((y1 - y) / (y1 - y0) * (ph - 1))
        return px, py

    def plot(px: int, py: int, style: str) -> None:
        r, c = py // 4, px // 2
        bits[r][c] |= _DOT[py % 4][px % 2]
        styles[r][c] = style

    for s in series:
        prev = None
        for x, y in zip(s.xs, s.ys, strict=True):
            if y is None or not math.isfinite(y):
                prev = None
                continue
            cur = pixel(x, y)
            if prev is None:
                plot(*cur, s.style)
            else:  # join consecutive points
                n = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1)
                for k in range(1, n + 1):
                    plot(
                        round(prev[0] + (cur[0] - prev[0]) * k / n),
                        round(prev[1] + (cur[1] - prev[1]) * k / n),
                        s.style,
                    )
            prev = cur

    labels = {0: _fmt(y1), height - 1: _fmt(y0), (height - 1) // 2: _fmt((y0 + y1) / 2)}
    pad = max(len(v) for v in labels.values())
    for r in range(height):
        out.append(f"{labels.get(r, ''):>{pad}} ┤", style="dim")
        for c in range(width):
            out.append(chr(_BRAILLE + bits[r][c]), style=styles[r][c] or "")
        out.append("\n")
    left, right = _fmt(x0), _fmt(x1)
    out.append(" " * pad + " └" + "─" * width + "\n", style="dim")
    out.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right + "\n", style="dim")
    for i, s in enumerate(series):
        out.append("  " if i else " " * (pad + 2))
        out.append("⣿⣿ ", style=s.style)
        out.append(s.label)
    return out
