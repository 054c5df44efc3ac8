"""The leaderboard store round trip, test-set separation, and paired comparisons."""

from __future__ import annotations

import sqlite3

import pytest

from appraiser.evaluation import LeaderboardStore, load_test_items
from appraiser.evaluation.charts import leaderboard_chart
from appraiser.evaluation.compare import paired_compare
from appraiser.evaluation.evaluator import ItemResult, score
from appraiser.evaluation.store import PredictionCache
from appraiser.items import fingerprint
from appraiser.pricers.base import Prediction


@pytest.fixture(scope="module")
def items(data_dir):
    return load_test_items(data_dir / "validation.jsonl", size=40)


def _result(items, name, factor, **kw):
    preds = [Prediction(price=round(it.price * factor, 2), low=it.price, high=it.price * 2, raw="r") for it in items]
    preds[0] = Prediction(price=None, raw="no idea")
    return score(items, preds, name=name, config={"factor": factor}, seconds=1.5, **kw)


def test_round_trip(items, tmp_path):
    db = tmp_path / "lb.db"
    store = LeaderboardStore(db)
    r = _result(items, "half", 0.5, cost=0.12, pricer_name="scaler")
    run_id = store.add(r)
    store.close()

    store = LeaderboardStore(db)  # reopened: it persisted
    row = store.get(run_id)
    assert (row.pricer, row.label, row.config) == ("scaler", "half", {"factor": 0.5})
    assert row.test_fingerprint == fingerprint(items) and row.test_size == 40
    assert row.metrics == r.metrics and row.seconds == 1.5 and row.cost == 0.12
    assert store.predictions(run_id) == r.results
    back = store.result(run_id)
    assert back.results == r.results and back.metrics == r.metrics and back.run_id == run_id
    assert store.latest("half").run_id == run_id and store.latest("nobody") is None
    assert store.delete(run_id) and store.get(run_id) is None and store.predictions(run_id) == []
    store.close()


def test_fit_seconds_round_trip_and_old_databases_upgrade(items, tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the schema before fit times were recorded
        conn.executescript(
            "CREATE TABLE evaluations (id INTEGER PRIMARY KEY AUTOINCREMENT, pricer TEXT NOT NULL, "
            "label TEXT NOT NULL, config TEXT NOT NULL, test_fingerprint TEXT NOT NULL, test_size INTEGER NOT NULL, "
            "metrics TEXT NOT NULL, seconds REAL NOT NULL, cost REAL NOT NULL DEFAULT 0, created TEXT NOT NULL);"
            "INSERT INTO evaluations VALUES (1, 'p', 'p', '{}', 'fp', 1, '{}', 1.0, 0, '2026-01-01T00:00:00Z');"
        )
    store = LeaderboardStore(db)
    assert store.get(1).fit_seconds == 0.0
    r = _result(items, "fitted", 0.5)
    r.fit_seconds = 12.5
    assert store.get(store.add(r)).fit_seconds == 12.5
    store.close()


def _same_ids_other_items():
    from appraiser.items import Item

    laptops = [Item(id=str(i), title=f"Laptop {i}", text=f"a laptop model {i}", price=500 + i) for i in range(3)]
    pencils = [
        Item(id=str(i), title=f"Pencil {i}", text=f"a pencil pack {i}", price=2 + i, category="Office")
        for i in range(3)
    ]
    return laptops, pencils


def test_test_sets_that_reuse_item_ids_each_read_back_their_own_items(tmp_path):
    """A probe: items were stored keyed by id alone, so a second test set with ids "0", "1", … read back the first
    set's titles and categories ('Laptop 0', None for a 'Pencil 0' in 'Office')."""
    laptops, pencils = _same_ids_other_items()
    with LeaderboardStore(tmp_path / "lb.db") as store:
        r1 = score(laptops, [500.0] * 3, name="p")
        r2 = score(pencils, [3.0] * 3, name="p")
        id1, id2 = store.add(r1), store.add(r2)
        assert store.result(id2).results == r2.results
        assert [(r.title, r.category) for r in store.predictions(id2)][0] == ("Pencil 0", "Office")
        assert store.result(id1).results == r1.results  # the first set's are untouched
        store.add(score(pencils, [4.0] * 3, name="q"))  # the same items again share their rows
    with sqlite3.connect(tmp_path / "lb.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 6


def test_a_database_from_before_items_were_keyed_by_content_upgrades_and_keeps_its_rows(tmp_path):
    """A leaderboard written before items had a content key (items keyed by id, predictions without item_key)
    opens, reads back what it read before, and from then on keeps each test set's own items apart."""
    laptops, pencils = _same_ids_other_items()
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the schema as it was, with one evaluation of the laptops in it
        conn.executescript(
            "CREATE TABLE evaluations (id INTEGER PRIMARY KEY AUTOINCREMENT, pricer TEXT NOT NULL, "
            "label TEXT NOT NULL, config TEXT NOT NULL, test_fingerprint TEXT NOT NULL, test_size INTEGER NOT NULL, "
            "metrics TEXT NOT NULL, seconds REAL NOT NULL, cost REAL NOT NULL DEFAULT 0, created TEXT NOT NULL, "
            "fit_seconds REAL NOT NULL DEFAULT 0);"
            "CREATE TABLE items (item_id TEXT PRIMARY KEY, title TEXT, category TEXT) WITHOUT ROWID;"
            "CREATE TABLE predictions (run_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE, "
            "idx INTEGER NOT NULL, item_id TEXT NOT NULL, truth REAL NOT NULL, guess REAL, low REAL, high REAL, "
            "raw TEXT, PRIMARY KEY (run_id, idx)) WITHOUT ROWID;"
            "INSERT INTO evaluations VALUES (1, 'p', 'p', '{}', 'fp', 3, '{}', 1.0, 0, '2026-01-01T00:00:00Z', 0);"
        )
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(it.id, it.title, None) for it in laptops])
        conn.executemany(
            "INSERT INTO predictions VALUES (1, ?, ?, ?, ?, NULL, NULL, 'r')",
            [(k, it.id, it.price, 500.0) for k, it in enumerate(laptops)],
        )
    old = [ItemResult(it.id, it.title, None, it.price, 500.0, raw="r") for it in laptops]
    with LeaderboardStore(db) as store:
        assert store.predictions(1) == old
        r2 = score(pencils, [3.0] * 3, name="p")
        id2 = store.add(r2)
        assert store.predictions(id2) == r2.results and store.predictions(1) == old
    with LeaderboardStore(db) as store:  # opened again: already upgraded, nothing changes
        assert store.predictions(1) == old and store.predictions(id2) == r2.results
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "items_by_id" not in tables and conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 6


def test_rows_on_different_test_sets_are_never_mixed(items, tmp_path):
    store = LeaderboardStore(tmp_path / "lb.db")
    a, b = items[:20], items[20:]
    ids = {
        "a1": store.add(_result(a, "p", 0.5)),
        "a2": store.add(_result(a, "q", 0.9)),
        "b1": store.add(_result(b, "p", 0.5)),
        "a3": store.add(_result(a, "p", 0.8)),  # a newer run of p on set a
    }
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa != fb
    assert {r.run_id for r in store.rows(fa)} == {ids["a1"], ids["a2"], ids["a3"]}
    assert [r.run_id for r in store.rows(fb)] == [ids["b1"]]
    latest = store.rows(fa, latest_only=True)
    assert [(r.label, r.run_id) for r in latest] == [("p", ids["a3"]), ("q", ids["a2"])]
    assert store.latest("p", fb).run_id == ids["b1"] and store.latest("p", fa).run_id == ids["a3"]
    fps = store.fingerprints()
    assert [f[0] for f in fps] == [fa, fb] and fps[0][2] == 3  # newest set first, with its run count
    with pytest.raises(ValueError):
        leaderboard_chart(store.rows(), tmp_path)
    paths = leaderboard_chart(latest, tmp_path / "charts", name="lb")
    assert [p.name for p in paths] == ["lb.png", "lb.html"] and all(p.stat().st_size > 1000 for p in paths)
    store.close()


def _table_bytes(db):
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))


def test_bytes_per_row_stay_small(items, tmp_path):
    db = tmp_path / "lb.db"
    store = LeaderboardStore(db)
    store.add(_result(items, "p", 0.5))
    before = _table_bytes(db)
    for _ in range(20):
        store.add(_result(items, "p", 0.5))
    store.close()
    after = _table_bytes(db)
    per_prediction = (after["predictions"] - before["predictions"]) / (20 * 40)
    assert per_prediction < 100  # titles are stored once per item, not once per prediction
    assert after["items"] == before["items"]


def test_prediction_cache(tmp_path):
    c = PredictionCache(tmp_path / "c.db")
    c.put("p", "h1", [("id1", "t1", 10.0, None, None, "raw", 0.01), ("id2", "t2", None, None, None, None, 0.0)])
    c.put("p", "h2", [("id1", "t1", 99.0, 1.0, 2.0, None, 0.0)])
    assert c.lookup("p", "h1") == {
        ("id1", "t1"): (10.0, None, None, "raw", 0.01),
        ("id2", "t2"): (None, None, None, None, 0.0),
    }
    assert c.lookup("p", "h2")[("id1", "t1")][0] == 99.0
    assert c.lookup("other", "h1") == {}
    assert c.clear("p") == 3 and c.lookup("p", "h1") == {}
    c.close()


def _results(errors, truth=100.0):
    return [ItemResult(f"i{k}", None, None, truth, None if e is None else truth + e) for k, e in enumerate(errors)]


def test_paired_compare_hand_computed():
    a = _results([1, 2, 3, 4, None])
    b = _results([2, 2, -5, 1, 7])
    c = paired_compare(a, b, "A", "B")
    # d = |a| - |b| = [-1, 0, -2, 3] on the 4 items both priced; the failure is skipped.
    assert c.n == 4 and c.skipped == 1
    assert c.mae_a == pytest.approx(2.5) and c.mae_b == pytest.approx(2.5)
    assert c.mean_diff == pytest.approx(0.0)
    assert (c.a_better, c.b_better, c.ties) == (2, 1, 1)
    assert c.p_value == pytest.approx(1.0)  # 2 of 3 is no evidence
    assert c.ci_low <= 0 <= c.ci_high and "no significant" in c.verdict


def test_paired_compare_detects_a_consistent_winner():
    a = _results([10.0 + (k % 3) for k in range(30)])
    b = _results([20.0 + (k % 5) for k in range(30)])
    c = paired_compare(a, b, "A", "B")
    assert c.a_better == 30 and c.p_value == pytest.approx(2 * 0.5**30)
    assert c.ci_high < 0 and c.verdict.startswith("A is better")
    flipped = paired_compare(b, a, "B", "A")
    assert flipped.ci_low > 0 and flipped.verdict.startswith("A is better")


def test_paired_compare_only_pairs_shared_items():
    a = _results([1, 2, 3])
    b = _results([5, 5, 5, 5, 5])[1:]  # i1..i4
    c = paired_compare(a, b)
    assert c.n == 2
    assert paired_compare(a, []).n == 0


def test_the_leaderboard_chart_draws_every_row_as_written(items, tmp_path):
    """A probe's charts: `--all-runs` rows of one label were drawn over each other, a pricer that failed on
    every item showed as "$nan" (or vanished), and a "$" in a label turned the PNG's text into math."""
    from matplotlib.cbook import is_math_text

    from appraiser.evaluation.charts import mpl_text

    store = LeaderboardStore(tmp_path / "lb.db")
    a, b = store.add(_result(items[:20], "p", 0.5)), store.add(_result(items[:20], "p", 0.9))
    store.add(score(items[:20], [None] * 20, name="broken"))
    store.add(_result(items[:20], "gpt $0.15/$0.60", 0.7))
    rows = store.rows(fingerprint(items[:20]))
    (html,) = [p.read_text() for p in leaderboard_chart(rows, tmp_path / "c") if p.suffix == ".html"]
    assert f'"p (run {a})"' in html and f'"p (run {b})"' in html
    assert '"all failed"' in html and "$nan" not in html
    store.close()
    assert is_math_text("gpt $0.15/$0.60") and not is_math_text(mpl_text("gpt $0.15/$0.60 — MAE $3.00"))
