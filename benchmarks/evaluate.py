"""How much does the evaluation harness cost on top of the pricer? And the leaderboard per row?

Evaluates a cheap pricer (a per-category mean lookup) on 10,000 items (validation + train items
replicated with fresh ids) and prints items/second for:

- the bare `pricer.predict` loop over batches (what the pricer itself costs),
- `evaluate(show=False, cache=False, record=False)` (scoring, bootstrap CI, item hashing),
- `evaluate(show=False, cache=True, record=True)` on a cold cache (also writes the cache and the
  leaderboard) and on a warm cache (every prediction served from the cache),

then the store's cost: milliseconds per `add` of a 10,000-item evaluation, and bytes on disk per
evaluation row and per prediction row (from SQLite's dbstat table, so indexes are counted).

    python benchmarks/evaluate.py [--n 10000] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from appraiser.data.io import read_items
from appraiser.evaluation import LeaderboardStore, evaluate
from appraiser.items import make_id
from appraiser.pricers.base import Prediction, Pricer


class CategoryMeanPricer(Pricer):
    """A lookup: the mean training price of the item's category. About as cheap as a pricer gets."""

    name = "category-mean"
    batch_size = 256

    def fit(self, train, validation=None):
        sums: dict[str | None, list[float]] = defaultdict(list)
        for it in train:
            sums[it.category].append(it.price)
        self.means = {k: statistics.fmean(v) for k, v in sums.items()}
        self.overall = statistics.fmean(it.price for it in train)
        return self

    def predict(self, items):
        return [Prediction(price=self.means.get(it.category, self.overall)) for it in items]


def table_bytes(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("APPRAISER_DATA", "../shared/data")))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    train = read_items(args.data / "train.jsonl")
    pool = read_items(args.data / "validation.jsonl") + train
    items = [
        pool[i % len(pool)].model_copy(update={"id": make_id("bench", str(i), pool[i % len(pool)].id)})
        for i in range(args.n)
    ]
    pricer = CategoryMeanPricer().fit(train)
    print(f"{len(items):,} items, pricer {pricer.label!r} (batch size {pricer.batch_size})")

    def bare() -> None:
        for s in range(0, len(items), pricer.batch_size):
            pricer.predict(items[s : s + pricer.batch_size])

    def best_of(fn, repeats: int = args.repeats) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["APPRAISER_HOME"] = tmp
        t_bare = best_of(bare)
        t_plain = best_of(lambda: evaluate(pricer, items, show=False, cache=False, record=False))
        store = LeaderboardStore(Path(tmp) / "leaderboard.db")
        # Cold cache: a fresh cache file each repeat (a new name = new cache keys).
        counter = iter(range(1000))
        t_cold = best_of(
            lambda: evaluate(
                pricer, items, show=False, cache=True, record=True, store=store, name=f"cold-{next(counter)}"
            )
        )
        evaluate(pricer, items, show=False, cache=True, record=True, store=store, name="warm")
        t_warm = best_of(lambda: evaluate(pricer, items, show=False, cache=True, record=True, store=store, name="warm"))

        n = len(items)
        print(f"\n{'':48}{'items/s':>12}{'seconds':>10}{'x bare':>9}")
        for label, t in [
            ("bare pricer.predict loop", t_bare),
            ("evaluate(cache=False, record=False)", t_plain),
            ("evaluate(cache=True, record=True), cold cache", t_cold),
            ("evaluate(cache=True, record=True), warm cache", t_warm),
        ]:
            print(f"{label:48}{n / t:>12,.0f}{t:>10.3f}{t / t_bare:>9.1f}")
        print(f"harness overhead per item (cold, record): {(t_cold - t_bare) / n * 1e6:,.1f} µs")

        # ---- store cost per row
        result = evaluate(pricer, items, show=False, cache=False, record=False)
        before = table_bytes(store.path)
        runs = 10
        start = time.perf_counter()
        for _ in range(runs):
            store.add(result)
        t_add = (time.perf_counter() - start) / runs
        after = table_bytes(store.path)
        store.close()
        grow = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        eval_bytes = sum(v for k, v in grow.items() if k.startswith(("evaluations", "sqlite_autoindex_evaluations")))
        pred_bytes = grow.get("predictions", 0)
        print(
            f"\nstore.add of a {n:,}-item evaluation: {t_add * 1e3:,.1f} ms "
            f"({t_add / n * 1e6:,.2f} µs per prediction row)"
        )
        print(f"bytes per evaluation row (with its index): {eval_bytes / runs:,.0f}")
        print(f"bytes per prediction row: {pred_bytes / (runs * n):,.1f}")
        print(f"item titles/categories, stored once per item: {after.get('items', 0) / n:,.1f} bytes per item")
        cache_db = Path(tmp) / "cache.db"
        cache_rows = sqlite3.connect(cache_db).execute("SELECT COUNT(*) FROM cache").fetchone()[0]
        print(
            f"prediction cache: {table_bytes(cache_db).get('cache', 0) / cache_rows:,.1f} bytes per cached prediction"
        )
        print(
            f"leaderboard file: {store.path.stat().st_size / 1e6:,.1f} MB after "
            f"{len(LeaderboardStore(store.path).rows())} "
            f"evaluations of {n:,} items"
        )


if __name__ == "__main__":
    main()
