"""The evaluator on real validation items: scoring, resume after an interrupt, concurrency, files, charts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import pytest

from appraiser.data.io import DataError, read_items, write_items
from appraiser.evaluation import LeaderboardStore, evaluate, load_test_items, write_predictions
from appraiser.evaluation.charts import save_charts
from appraiser.evaluation.evaluator import score
from appraiser.evaluation.metrics import compute_metrics
from appraiser.evaluation.store import PredictionCache
from appraiser.items import Item, fingerprint
from appraiser.pricers.base import Prediction, Pricer


class TextLengthPricer(Pricer):
    """Guesses from the text length (deterministic, different per item), counting what it is asked."""

    name = "text-length"

    def __init__(self, scale: float = 0.1, batch_size: int = 5, concurrency: int = 1, fail_after: int | None = None):
        self.scale = scale
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.fail_after = fail_after  # raise once this many items have been predicted
        self.seen: list[str] = []
        self.threads: set[int] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def config(self):
        return {"scale": self.scale}

    def __getstate__(self):  # locks do not pickle
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def guess(self, item: Item) -> float:
        return round(len(item.text) * self.scale, 2)

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        with self._lock:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise ConnectionError("simulated API outage")
            self.seen.extend(it.id for it in items)
            self.threads.add(threading.get_ident())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.concurrency > 1:
            time.sleep(0.02)  # an API call's wait, so the pool's workers overlap
        with self._lock:
            self.in_flight -= 1
        return [Prediction(price=self.guess(it), raw=f"Price is ${self.guess(it)}") for it in items]


class SometimesFailingPricer(Pricer):
    name = "flaky"

    def predict(self, items):
        out = []
        for i, _ in enumerate(items):
            out.append([Prediction(price=None, raw="no idea"), Prediction(price=float("nan")), 100.0][i % 3])
        return out


class WrongLengthPricer(Pricer):
    name = "wrong-length"

    def predict(self, items):
        return [Prediction(price=1.0)]


@pytest.fixture(scope="module")
def items(data_dir) -> list[Item]:
    return load_test_items(data_dir / "validation.jsonl", size=30)


def test_scores_every_item_in_order(items):
    p = TextLengthPricer()
    r = evaluate(p, items, show=False, cache=False, record=False)
    assert [x.id for x in r.results] == [it.id for it in items]
    assert [x.guess for x in r.results] == [p.guess(it) for it in items]
    assert [x.truth for x in r.results] == [it.price for it in items]
    assert r.metrics == compute_metrics([it.price for it in items], [p.guess(it) for it in items])
    assert r.test_fingerprint == fingerprint(items)
    assert r.pricer == "text-length" and r.config == {"scale": 0.1} and r.run_id is None
    assert len(p.seen) == 30 and r.seconds >= 0


def test_failures_are_counted_never_zero(items):
    r = evaluate(SometimesFailingPricer(), items[:9], show=False, cache=False, record=False)
    assert r.metrics["failures"] == 6  # None and NaN both fail
    assert [x.guess for x in r.results][:3] == [None, None, 100.0]
    assert r.results[0].raw == "no idea" and r.results[0].color == "failed"
    assert r.metrics["coverage"] == pytest.approx(3 / 9)


def test_wrong_number_of_predictions_is_an_error(items):
    with pytest.raises(RuntimeError, match="1 predictions for"):
        evaluate(WrongLengthPricer(), items[:3], show=False, cache=False, record=False)


def test_empty_test_set_is_an_error():
    with pytest.raises(DataError):
        evaluate(TextLengthPricer(), [], show=False)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_interrupted_evaluation_resumes_where_it_stopped(items, concurrency):
    """A pricer that dies after 10 items; the rerun predicts only what is missing."""
    store = LeaderboardStore()
    flaky = TextLengthPricer(batch_size=5, concurrency=concurrency, fail_after=10)
    with pytest.raises(ConnectionError):
        evaluate(flaky, items, show=False, store=store)
    assert store.rows() == []  # nothing half-done on the leaderboard
    cache = PredictionCache(store.path.with_name("cache.db"))
    saved = cache.lookup("text-length", _hash({"scale": 0.1}))
    cache.close()
    assert 10 <= len(saved) < 30
    assert {k[0] for k in saved} == set(flaky.seen)  # every prediction made was kept

    fixed = TextLengthPricer(batch_size=5, concurrency=concurrency)
    r = evaluate(fixed, items, show=False, store=store)
    assert len(fixed.seen) == 30 - len(saved)
    assert set(fixed.seen).isdisjoint(k[0] for k in saved)
    assert r.cached == len(saved)
    full = evaluate(TextLengthPricer(), items, show=False, cache=False, record=False)
    assert r.metrics == full.metrics
    assert len(store.rows()) == 1

    again = TextLengthPricer(batch_size=5, concurrency=concurrency)
    r3 = evaluate(again, items, show=False, store=store)
    assert again.seen == [] and r3.cached == 30
    store.close()


def _hash(cfg):
    from appraiser.evaluation.evaluator import config_hash

    return config_hash(cfg)


def test_cache_is_keyed_by_config_and_item_text(items):
    evaluate(TextLengthPricer(scale=0.1), items[:10], show=False, record=False)
    other = TextLengthPricer(scale=0.2)
    evaluate(other, items[:10], show=False, record=False)
    assert len(other.seen) == 10  # a different config is a different pricer
    edited = [items[0].model_copy(update={"text": items[0].text + " (edited)"}), *items[1:10]]
    p = TextLengthPricer(scale=0.1)
    r = evaluate(p, edited, show=False, record=False)
    assert p.seen == [items[0].id]  # only the edited item is predicted again
    assert r.results[0].guess == p.guess(edited[0])


class FittedPricer(TextLengthPricer):
    """Fits a random offset, so a refit model really is a different model with the same config."""

    def fit(self, train, validation=None):
        import random

        self.offset = random.random()
        self.fit_info = {"offset": self.offset, "seconds": 2.5}
        return self

    def guess(self, item):
        return round(len(item.text) * self.scale + self.offset, 2)


def test_a_refit_model_gets_a_fresh_cache_and_a_reloaded_one_keeps_it(items, tmp_path):
    first = FittedPricer().fit(items)
    r1 = evaluate(first, items[:8], show=False, record=False)
    assert r1.fit_seconds == 2.5
    refit = FittedPricer().fit(items)
    r2 = evaluate(refit, items[:8], show=False, record=False)
    assert len(refit.seen) == 8 and r2.cached == 0
    assert [x.guess for x in r2.results] == [refit.guess(it) for it in items[:8]]
    reloaded = Pricer.load(refit.save(tmp_path / "m.pkl"))
    reloaded.seen = []
    r3 = evaluate(reloaded, items[:8], show=False, record=False)
    assert reloaded.seen == [] and r3.cached == 8


def test_no_cache_predicts_everything(items):
    evaluate(TextLengthPricer(), items[:10], show=False, record=False)
    p = TextLengthPricer()
    evaluate(p, items[:10], show=False, record=False, cache=False)
    assert len(p.seen) == 10


def test_concurrent_pricer_runs_in_a_pool_and_keeps_order(items):
    p = TextLengthPricer(batch_size=1, concurrency=4)
    r = evaluate(p, items[:20], show=False, cache=False, record=False)
    assert len(p.threads) > 1 and p.max_in_flight > 1
    assert [x.guess for x in r.results] == [p.guess(it) for it in items[:20]]


def test_record_stores_the_run(items):
    store = LeaderboardStore()
    r = evaluate(TextLengthPricer(), items, show=False, store=store, cost=0.25)
    assert r.run_id is not None
    row = store.get(r.run_id)
    assert row.label == "text-length" and row.test_fingerprint == fingerprint(items) and row.test_size == 30
    assert row.cost == 0.25 and row.metrics["mae"] == pytest.approx(r.metrics["mae"])
    assert [x.guess for x in store.predictions(r.run_id)] == [x.guess for x in r.results]
    store.close()


def test_default_store_lives_in_the_project_home(items, tmp_path):
    r = evaluate(TextLengthPricer(), items[:5], show=False, name="custom name")
    store = LeaderboardStore()
    assert store.path == tmp_path / "appraiser-home" / "leaderboard.db"
    assert store.latest("custom name").run_id == r.run_id
    store.close()


def test_predictions_jsonl_format(items, tmp_path):
    out = tmp_path / "preds" / "p.jsonl"
    r = evaluate(SometimesFailingPricer(), items[:6], show=False, record=False, cache=False, predictions_path=out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6
    assert all(set(rec) == {"id", "price", "truth", "low", "high", "raw"} for rec in lines)
    assert lines[0] == {
        "id": items[0].id,
        "price": None,
        "truth": items[0].price,
        "low": None,
        "high": None,
        "raw": "no idea",
    }
    assert lines[2]["price"] == 100.0
    write_predictions(r, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def test_console_shows_each_item_and_a_summary(items, capsys):
    evaluate(TextLengthPricer(), items[:4], show=True, record=False, cache=False)
    out = capsys.readouterr().out
    assert out.count("truth") >= 4 and "MAE" in out and "hit rate" in out
    assert (items[0].title or "")[:15] in out


def test_show_false_prints_nothing(items, capsys):
    evaluate(TextLengthPricer(), items[:4], show=False)
    assert capsys.readouterr().out == ""


def test_charts_are_written_as_png_and_html(items, tmp_path):
    r = evaluate(TextLengthPricer(), items, show=False, record=False, charts_dir=tmp_path / "charts")
    assert len(r.charts) == 6
    for p in r.charts:
        data = p.read_bytes()
        assert len(data) > 1000
        if p.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert b"<html" in data and b"plotly.min.js" in data
    assert (tmp_path / "charts" / "plotly.min.js").stat().st_size > 100_000  # opens offline
    names = {p.name for p in r.charts}
    assert {"text-length-scatter.png", "text-length-running.html", "text-length-breakdown.png"} <= names


def test_charts_survive_a_pricer_that_always_fails(items, tmp_path):
    r = score(items[:5], [None] * 5, name="nothing")
    paths = save_charts(r, tmp_path, log=False)
    assert all(p.stat().st_size > 0 for p in paths)


def test_load_test_items_is_a_fixed_slice(data_dir, tmp_path):
    first = load_test_items(data_dir / "validation.jsonl")
    assert len(first) == 250
    assert [it.id for it in first] == [it.id for it in read_items(data_dir / "validation.jsonl", limit=250)]
    assert load_test_items(data_dir, size=10) == first[:10]  # a folder: no test split, so validation
    assert load_test_items(data_dir / "validation.jsonl", size=5, offset=3) == first[3:8]
    n = sum(1 for line in (data_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(load_test_items(data_dir / "validation.jsonl", size=None)) == n  # the whole file
    with pytest.raises(DataError, match=f"holds {n}"):
        load_test_items(data_dir / "validation.jsonl", size=n + 100)
    write_items(first[:3], tmp_path / "test.jsonl")
    assert load_test_items(tmp_path, size=3) == first[:3]  # a folder's test split wins
