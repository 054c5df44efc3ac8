"""Largest-Triangle-Three-Buckets (Steinarsson, 2013): fewer points that still look like the curve.

A 10,000-step run has 10,000 loss points; a chart a thousand pixels wide cannot show more than about two
per pixel, yet sending and drawing all of them is what makes a run page slow. LTTB keeps the first and
last points and, from each of `n - 2` equal buckets between them, the point that spans the largest
triangle with the point kept before it and the mean of the next bucket: spikes and the overall shape
survive, where taking every k-th point would drop the spikes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def lttb_indices(xs: Sequence[float], ys: Sequence[float], n: int) -> list[int]:
    """Indices of the (at most) `n` points LTTB keeps, in order; all indices when there are no more than `n`.

    Non-finite y values are never chosen inside a bucket (they cannot span a triangle), but the first and
    last points are kept whatever they are.
    """
    size = len(xs)
    if len(ys) != size:
        raise ValueError(f"xs and ys differ in length ({size} vs {len(ys)})")
    if n >= size or size <= 2:
        return list(range(size))
    if n < 3:
        raise ValueError(f"keep at least 3 points, got n={n}")
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    finite = np.isfinite(y)
    y_safe = np.where(finite, y, 0.0)
    # Bucket edges over the inner points 1 .. size-2.
    edges = np.linspace(1, size - 1, n - 1).astype(int)
    keep = [0]
    a = 0
    for i in range(n - 2):
        lo, hi = int(edges[i]), max(int(edges[i + 1]), int(edges[i]) + 1)
        nxt_lo, nxt_hi = hi, int(edges[i + 2]) if i + 2 < len(edges) else size
        nxt_hi = max(nxt_hi, nxt_lo + 1)
        ok = finite[nxt_lo:nxt_hi]
        cx = float(x[nxt_lo:nxt_hi].mean())
        cy = float(y_safe[nxt_lo:nxt_hi][ok].mean()) if ok.any() else float(y_safe[a])
        bx, by = x[lo:hi], y_safe[lo:hi]
        area = np.abs((x[a] - cx) * (by - y_safe[a]) - (x[a] - bx) * (cy - y_safe[a]))
        area = np.where(finite[lo:hi], area, -1.0)
        a = lo + int(np.argmax(area))
        keep.append(a)
    keep.append(size - 1)
    return keep


def lttb(xs: Sequence[float], ys: Sequence[float], n: int) -> tuple[list[float], list[float]]:
    """(xs, ys) downsampled to at most `n` points with LTTB."""
    idx = lttb_indices(xs, ys, n)
    return [xs[i] for i in idx], [ys[i] for i in idx]
