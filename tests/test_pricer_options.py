"""What a probe of the baselines, the ensemble and the evaluator found: options of the wrong kind, a cache that
served a model refitted on other data, labels that hid each other on the leaderboard, test items in the pool."""

from __future__ import annotations

import numpy as np
import pytest

from appraiser.data.io import DataError, read_items, write_items
from appraiser.evaluation.evaluator import evaluate, fit_and_evaluate, score, summary_table
from appraiser.evaluation.store import LeaderboardStore
from appraiser.pricers import registry
from appraiser.pricers.conformal import Conformal, weighted_quantile


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("knn-embed", {"k": 0}, "k must be a whole number at least 1"),  # was a ZeroDivisionError at predict time
        ("knn-embed", {"k": 1.5}, "k must be a whole number"),  # was a TypeError at predict time
        ("mlp", {"threads": 0}, "threads must be a whole number at least 1"),
        ("xgboost", {"n_estimators": 0}, "n_estimators must be a whole number at least 1"),  # a constant model
        ("random-forest", {"n_estimators": -5}, "n_estimators must be a whole number at least 1"),
        ("knn-embed", {"k": None}, "k must be a whole number at least 1"),  # was torch's RuntimeError
        ("xgboost", {"n_estimators": True}, "must be a finite number"),  # "true" trained one tree
        ("xgboost", {"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ("tfidf-ridge", {"off_category_weight": float("nan"), "categories": "benchmark"}, "finite number at least 0"),
        ("tfidf-ridge", {"off_category_weight": -1, "categories": "benchmark"}, "finite number at least 0"),
        ("ensemble", {"members": "xgboost:learning_rate=NaN,constant-mean"}, "learning_rate must be a finite"),
        ("ensemble", {"off_source_weight": float("inf"), "sources": "benchmark"}, "finite number at least 0"),
        ("ensemble", {"members": "tfidf-ridge:weighting=match,knn"}, "the ensemble never does"),
        ("knn", {"k": 2.7}, "k must be a whole number"),  # was read as 2 under the label knn[k=2.7]
        ("api", {"rag": True}, "a whole number, not true or false"),  # was rag=1
        ("llm", {"batch_size": True}, "a whole number, not true or false"),
        ("api", {"index": "/no/such/index"}, "needs rag=K"),  # was ignored: no prompt reads it without rag
        ("llm", {"index": "/no/such/index"}, "needs rag=K"),
    ],
)
def test_an_option_of_the_wrong_kind_is_refused_when_the_pricer_is_made(name, options, message):
    with pytest.raises(DataError, match=message):
        registry.create(name, **options)


def test_options_that_take_a_name_or_a_count_keep_it():
    assert registry.create("random-forest", max_features="sqrt").params["max_features"] == "sqrt"
    assert registry.create("random-forest", max_features=5).params["max_features"] == 5  # 5 features, not 5.0
    assert registry.create("xgboost", n_estimators=3.0).params["n_estimators"] == 3
    # what sklearn and xgboost take besides a number of the default's kind (the review found these refused)
    assert registry.create("random-forest", max_features=None).params["max_features"] is None
    assert registry.create("random-forest", min_samples_leaf=0.01).params["min_samples_leaf"] == 0.01
    assert registry.create("xgboost", max_depth=None, n_jobs=None).params["max_depth"] is None
    assert registry.create("tfidf-ridge", max_features=None).params["max_features"] is None


def test_a_quantile_with_no_weight_is_a_clear_error():
    with pytest.raises(ValueError, match="no calibration item"):
        weighted_quantile(np.array([0.1, 0.2]), np.zeros(2), 0.8)


def test_a_model_refitted_on_other_data_is_not_served_from_the_cache(data_dir, tmp_path):
    """A constant refitted on another pool of the same size had the same cache key ({n_train, seconds}), so the
    second evaluation showed the first model's guesses ("20 cached")."""
    pool = read_items(data_dir / "train.jsonl", limit=200)
    test = read_items(data_dir / "validation.jsonl", limit=10)
    with LeaderboardStore(tmp_path / "lb.db") as store:
        first = registry.create("constant-mean").fit(pool[:100])
        a = evaluate(first, test, show=False, store=store, record=False)
        second = registry.create("constant-mean").fit(pool[100:])
        b = evaluate(second, test, show=False, store=store, record=False)
        again = evaluate(registry.create("constant-mean").fit(pool[100:]), test, show=False, store=store, record=False)
    assert b.cached == 0 and b.guesses != a.guesses
    assert again.cached == 10 and again.guesses == b.guesses  # the same data: the cache still serves it
    # a re-probe: a category or an item weight is a feature too (the fingerprint hashed ids, prices and texts)
    moved = [it.model_copy(update={"category": "Automotive" if it.category != "Automotive" else "Toys_and_Games"})
             for it in pool[100:]]  # fmt: skip
    weighed = [it.model_copy(update={"weight": 123.0}) for it in pool[100:]]
    with LeaderboardStore(tmp_path / "lb.db") as store:
        for changed in (moved, weighed):
            refit = registry.create("linear").fit(changed)
            assert evaluate(refit, test, show=False, store=store, record=False).cached == 0
            assert evaluate(refit, test, show=False, store=store, record=False).cached == 10


def test_test_items_in_the_training_pool_are_refused(data_dir, tmp_path):
    """knn with k=1 scored $0.00 on test items concatenated into the training file."""
    pool = read_items(data_dir / "train.jsonl", limit=100)
    test = read_items(data_dir / "validation.jsonl", limit=10)
    write_items(pool + test[3:4], tmp_path / "leaky.jsonl")
    with pytest.raises(DataError, match="1 of the 10 test items are in the training pool"):
        fit_and_evaluate(registry.create("constant-mean"), test, train=tmp_path / "leaky.jsonl", show=False)
    copy = test[5].model_copy(update={"id": "another-id", "title": None})  # the same text under another id
    write_items([*pool, copy], tmp_path / "copy.jsonl")
    with pytest.raises(DataError, match="in the training pool"):
        fit_and_evaluate(registry.create("constant-mean"), test, train=tmp_path / "copy.jsonl", show=False)
    namesake = test[6].model_copy(update={"id": "namesake", "text": "another product entirely, same title"})
    write_items([*pool, namesake], tmp_path / "namesake.jsonl")
    heard = []
    fit_and_evaluate(
        registry.create("constant-mean"), test, train=tmp_path / "namesake.jsonl", show=False, record=False,
        say=heard.append,
    )  # fmt: skip
    assert any("1 of the 10 test items share a title" in line for line in heard)  # a warning, not a refusal


def test_texts_in_other_scripts_are_not_copies_of_each_other(data_dir, tmp_path):
    """A re-probe: the copy key kept ASCII letters and digits only, so every Japanese or Cyrillic text normalised
    to "" and all of them were copies of each other (and a test set was refused as leaked)."""
    from appraiser.items import Item
    from appraiser.retrieval.index import copy_keys

    ja = Item(id="ja", text="日本語の商品\nとても良い", price=10.0)
    zh = Item(id="zh", text="中文产品\n非常好", price=20.0)
    ru = Item(id="ru", text="Русский товар", price=30.0)
    assert not copy_keys(ja) & copy_keys(zh) and not copy_keys(zh) & copy_keys(ru)
    assert copy_keys(ja) == copy_keys(ja.model_copy(update={"id": "again", "text": "日本語の商品 とても良い"}))
    latin = Item(id="a", title="Bosch 18V Drill!", text="Bosch 18V drill, 2 batteries", price=99.0)
    assert copy_keys(latin) == copy_keys(latin.model_copy(update={"title": "bosch 18v drill", "id": "b"}))
    pool = read_items(data_dir / "train.jsonl", limit=50)
    write_items([*pool, ja], tmp_path / "pool.jsonl")
    fit_and_evaluate(registry.create("constant-mean"), [zh, ru], train=tmp_path / "pool.jsonl", show=False,
                     record=False)  # fmt: skip


def test_a_long_label_is_cut_on_a_chart_axis_and_stays_apart():
    from appraiser.evaluation.charts import tick_label

    a, b = "ensemble[" + "x" * 300 + "a]", "ensemble[" + "x" * 300 + "b]"
    assert len(tick_label(a)) <= 60 and tick_label(a) != tick_label(b) and tick_label("knn") == "knn"


def test_a_pricer_that_priced_nothing_shows_no_mae_not_nan(data_dir):
    from rich.console import Console

    test = read_items(data_dir / "validation.jsonl", limit=5)
    result = score(test, [None] * 5, name="broken")
    console = Console(record=True, width=120)
    console.print(summary_table(result))
    text = console.export_text()
    assert "no item was priced" in text and "nan" not in text.lower()
    from appraiser.evaluation.metrics import money

    assert money(result.metrics["mae"]) == "—" and money(12.5) == "$12.50" and money(1234.5, 0) == "$1,234"


def test_a_chart_of_a_pricer_that_priced_nothing_has_no_nan_in_its_title(data_dir, tmp_path):
    from appraiser.evaluation.charts import save_charts

    test = read_items(data_dir / "validation.jsonl", limit=5)
    paths = save_charts(score(test, [None] * 5, name="broken"), tmp_path)
    html = [p.read_text() for p in paths if p.suffix == ".html"]
    assert html and not any("$nan" in h for h in html) and any("MAE — on 5 items" in h for h in html)


def test_settings_that_change_a_pricer_change_its_label():
    """The leaderboard keeps one row per label: two ensembles differing only in folds shared one, and so did a
    plain and a difficulty-scaled interval."""
    labels = {registry.create("ensemble", members="constant-mean,linear", folds=f).label for f in (2, 3)} | {
        registry.create("ensemble", members="constant-mean,linear").label
    }
    assert len(labels) == 3
    assert registry.create("ensemble").label == "ensemble[xgboost+tfidf-ridge+knn]"  # the defaults: as before
    plain = Conformal(registry.create("tfidf-ridge"), scale="none").label
    scaled = Conformal(registry.create("tfidf-ridge"), scale="difficulty").label
    assert plain == "tfidf-ridge+ci80" and scaled == "tfidf-ridge+ci80:difficulty"


def test_a_long_label_still_makes_a_file_name():
    """A label names every non-default setting; an ensemble's can pass 300 characters, beyond a file name's 255."""
    from appraiser.cli.baseline import model_path
    from appraiser.evaluation.charts import slug

    options = dict(
        combine="linear", member_weighting=True, weighting="price_flat", categories="benchmark",
        off_category_weight=0, sources="benchmark", off_source_weight=0.03, interval=0.9, interval_scale="none",
    )  # fmt: skip
    e, other = (registry.create("ensemble", folds=folds, **options) for folds in (3, 4))
    assert len(e.label) > 255
    for name in (model_path(e.label).name, slug(e.label) + "-scatter.html"):
        assert len(name.encode()) < 255
    assert model_path(e.label) != model_path(other.label) and slug(e.label) != slug(other.label)


def test_two_readings_of_one_model_get_two_labels(tmp_path):
    """The leaderboard keeps one row per label: a head run read by its head and by digits were both
    `llm[RUN/best]`, and `api[MODEL]` at two servers or two temperatures one row; the newer hid the older."""
    import json

    from appraiser.models import FINETUNE_INFO
    from appraiser.pricers.api import ApiPricer
    from appraiser.pricers.llm import LLMPricer

    best = tmp_path / "head-run" / "best"
    best.mkdir(parents=True)
    (best / "adapter_config.json").write_text("{}")  # construction reads no weights
    (best / FINETUNE_INFO).write_text(json.dumps({"base_model": "smollm2-135m", "head": {"kind": "linear"}}))
    by_head = LLMPricer(model=str(best.parent))
    assert by_head.method == "head" and by_head.label == "llm[head-run/best]"
    labels = {
        by_head.label,
        LLMPricer(model=str(best.parent), method="expected").label,
        LLMPricer(model=str(best.parent), method="expected", beam_width=4).label,
        LLMPricer(model=str(best.parent), max_text_tokens=64).label,
    }
    assert len(labels) == 4, labels
    assert LLMPricer().label == "llm[smollm2-135m]"  # a zero-shot model's default is the expected value
    assert LLMPricer(method="expected", interval=0.8).label == "llm[smollm2-135m]"

    assert ApiPricer(model="m").label == "api[m]"  # OpenAI
    asked = [
        ApiPricer(model="m", provider="appraiser"),
        ApiPricer(model="m", provider="ollama"),
        ApiPricer(model="m", base_url="http://127.0.0.1:9000/v1"),
        ApiPricer(model="m", base_url="http://127.0.0.1:9001/v1"),
        ApiPricer(model="m", provider="appraiser", temperature=0.7),
        ApiPricer(model="m", provider="appraiser", seed=7),
    ]
    assert [p.label for p in asked] == [
        "api[m,provider=appraiser]",
        "api[m,provider=ollama]",
        "api[m,at=127.0.0.1:9000]",
        "api[m,at=127.0.0.1:9001]",
        "api[m,provider=appraiser,temperature=0.7]",
        "api[m,provider=appraiser,seed=7]",
    ]
