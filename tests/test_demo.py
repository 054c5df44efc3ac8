"""The README's main job, end to end, in quick mode: real data, the real embedded model, real training."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import DataError
from appraiser.demo import split_test_and_probe
from appraiser.evaluation.store import LeaderboardStore
from appraiser.items import Item


def test_quick_demo_end_to_end(data_dir, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["demo", "--quick", "--data", str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    for name in ("constant-mean", "tfidf-ridge", "smollm2-135m zero-shot", "smollm2-135m LoRA", "(head)", "digits)"):
        assert name in index
    assert "blend: tfidf-ridge + fine-tune head + fine-tune expected" in index
    assert "Best model-based pricer" in index and "Best model-based pricer" in result.output
    assert "leaderboard.png" in index
    rows = LeaderboardStore(out / "leaderboard.db").rows()
    assert len(rows) == 6
    assert len({r.test_fingerprint for r in rows}) == 1
    preds = sorted((out / "predictions").glob("*.jsonl"))
    assert len(preds) == 6
    for p in preds:
        lines = [json.loads(line) for line in p.read_text().splitlines()]
        assert len(lines) == 8
        assert {"id", "price", "truth", "low", "high", "raw"} <= set(lines[0])
    head = next(p for p in preds if "LoRA" in p.name and "head" in p.name)
    assert all(json.loads(line)["price"] > 0 for line in head.read_text().splitlines())  # one forward, always a price
    tuned = next(p for p in preds if "LoRA" in p.name and "digits" in p.name)
    guesses = [json.loads(line)["price"] for line in tuned.read_text().splitlines()]
    assert sum(g is not None for g in guesses) >= 6  # the fine-tuned model writes prices too
    # the probe set that picked the checkpoint is disjoint from the test set
    test_ids = {json.loads(line)["id"] for line in (out / "data" / "test.jsonl").read_text().splitlines()}
    probe_ids = {json.loads(line)["id"] for line in (out / "data" / "probe.jsonl").read_text().splitlines()}
    assert test_ids and probe_ids and not (test_ids & probe_ids)
    # the blend's weights were learned on training items no member was fitted on, and it reloads the same
    read = lambda name: [json.loads(line) for line in (out / "data" / name).read_text().splitlines()]  # noqa: E731
    blend_ids = {r["id"] for r in read("blend.jsonl")}
    train_ids = {r["id"] for r in read("train.jsonl")}
    assert len(blend_ids) == 24 and not blend_ids & (train_ids | test_ids | probe_ids)
    from appraiser.data.io import read_items
    from appraiser.pricers.base import Pricer

    blend = Pricer.load(out / "blend.pkl")
    assert set(blend.weights_) == {"tfidf-ridge", "fine-tune head", "fine-tune expected"}
    assert all(w >= 0 for w in blend.weights_.values())
    test_items = read_items(out / "data" / "test.jsonl")
    saved = next(p for p in preds if "blend" in p.name)
    before = [json.loads(line)["price"] for line in saved.read_text().splitlines()]
    after = [p.price for p in blend.predict(test_items)]
    assert after == pytest.approx(before, rel=1e-3)
    assert "report:" in result.output
    # the head was refit in closed form after training (training.refit) and probed again
    from appraiser.runs.store import RunStore

    store = RunStore()
    events = [e.message for e in store.events(store.get("demo-smollm2-135m").id)]
    assert any(e.startswith("Head refit (kernel) on 16 training items") for e in events)
    # the fine-tune's progress line is closed when it ends, as it ended: not left live (and stale) under the rest
    after_training = result.output.split("fine-tuned smollm2-135m (run")[1]
    assert "smoothed" not in after_training and "refitting the head" not in after_training
    assert json.loads((out / "demo.json").read_text())["fine_tune"] == store.get("demo-smollm2-135m").id
    # a run with other settings, stopped before it ends, leaves no report linking to its new files
    from appraiser.demo import DemoConfig, run_demo

    def stop(msg: str) -> None:
        if msg.startswith("baseline"):
            raise KeyboardInterrupt

    cfg = DemoConfig.quick_config(str(data_dir), out)
    cfg.test_size = 10
    with pytest.raises(KeyboardInterrupt):
        run_demo(cfg, show=False, stage=stop)
    assert not (out / "index.html").exists() and not (out / "predictions").exists() and not (out / "charts").exists()


def test_an_interrupted_demo_resumes_its_fine_tune(data_dir, tmp_path):
    """Stopped during training, the demo run again resumes the same fine-tune (no second run, no orphan)."""
    from appraiser.demo import DemoConfig, run_demo
    from appraiser.runs.store import RunStore

    out = tmp_path / "report"

    def stop(step: int, total: int, values: dict) -> None:
        if step >= 4 and "loss" in values:  # after checkpoint-3 (probe_every = save_every = 3)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoConfig.quick_config(str(data_dir), out), show=False, train_listeners=(stop,))
    run_id = json.loads((out / "demo.json").read_text())["fine_tune"]
    store = RunStore()
    assert store.get(run_id).status == "cancelled" and not (out / "index.html").exists()
    result = run_demo(DemoConfig.quick_config(str(data_dir), out), show=False)
    assert result.run_id == run_id and [r.id for r in store.list()] == [run_id]
    assert store.get(run_id).status == "succeeded" and store.get(run_id).step == 6
    assert any(e.message.startswith("Resuming from checkpoint-3") for e in store.events(run_id))
    assert (out / "index.html").exists() and run_id in (out / "index.html").read_text()


def test_split_test_and_probe_rules():
    def item(i: int) -> Item:
        return Item(id=f"i{i}", text=f"thing {i}", price=10 + i)

    held = [item(i) for i in range(10)]
    train = [item(i) for i in range(5, 30)]  # overlaps the held-out items 5..9
    tr, test, probe = split_test_and_probe({"train": train, "validation": held}, 4, 3)
    assert [it.id for it in test] == ["i0", "i1", "i2", "i3"]
    assert [it.id for it in probe] == ["i4", "i5", "i6"]
    assert not ({it.id for it in tr} & {it.id for it in held})
    with pytest.raises(DataError, match="no train split"):
        split_test_and_probe({"validation": held}, 4, 3)
    with pytest.raises(DataError, match="needs more than"):
        split_test_and_probe({"train": train, "validation": held}, 10, 3)


def _report(data_dir, tmp_path):
    """A demo report from two real evaluations and a run store holding a fine-tune's loss and probes."""
    import math

    from appraiser.data.io import read_items
    from appraiser.demo import DemoConfig
    from appraiser.demo_report import write_index
    from appraiser.evaluation.evaluator import evaluate
    from appraiser.pricers import registry
    from appraiser.runs.store import RunStore
    from appraiser.training.trainer import TrainResult

    out = tmp_path / "report"
    train = read_items(data_dir / "train.jsonl", limit=300)
    test = read_items(data_dir / "validation.jsonl", limit=24)
    results = []
    for name in ("constant-mean", "tfidf-ridge"):
        pricer = registry.create(name)
        pricer.fit(train)
        results.append(evaluate(pricer, test, name=name, show=False, charts_dir=out / "charts" / name))
    store = RunStore(tmp_path / "runs.db")
    run = store.create(name="demo-report", max_steps=120)
    for s in range(1, 121):
        store.log_metrics(run.id, s, {"loss": 1 + 2 * math.exp(-s / 30) + 0.2 * math.sin(s)})
        if s % 40 == 0:
            store.log_metrics(run.id, s, {"probe_mae": 200 - s})
    trained = TrainResult(run.id, tmp_path, 120, 1.5, tmp_path / "final", tmp_path / "best", 80.0, 120)
    cfg = DemoConfig(data=str(data_dir), out=out)
    return write_index(out, cfg, results, [], trained, store), results, store, run


def test_the_report_shows_its_charts_inline_with_the_loss_trend_and_verdict(data_dir, tmp_path):
    from appraiser.runs.trend import verdict

    index, results, store, run = _report(data_dir, tmp_path)
    page = index.read_text()
    for div in ("leaderboard-chart", "best-scatter", "best-running", "loss-chart"):
        assert f'id="{div}"' in page
    assert '<script src="plotly.min.js">' in page and (index.parent / "plotly.min.js").stat().st_size > 1_000_000
    assert "cdn" not in page.lower() and "https://" not in page
    best = min(results, key=lambda r: r.metrics["mae"])
    assert f"The best pricer: {best.pricer}" in page
    expected = verdict(store.series(run.id, "loss")[1], metric="loss").message
    assert f"Loss trend: {expected}" in page
    assert "loss (EMA)" in page and "noise band" in page and "probe MAE" in page
    assert (index.parent / "charts" / "loss.png").exists() and (index.parent / "charts" / "loss.html").exists()


@pytest.mark.browser
def test_the_report_draws_in_a_browser_offline(data_dir, tmp_path):
    import shutil
    from pathlib import Path

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    index, *_ = _report(data_dir, tmp_path)
    artifacts = Path(__file__).parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(index.as_uri())
        page.wait_for_selector("#loss-chart .main-svg")
        assert page.locator(".main-svg").count() >= 4  # leaderboard, scatter, running error, loss
        page.screenshot(path=str(artifacts / "demo-report.png"), full_page=True)
        browser.close()


def test_the_verdict_line_says_beats_trails_or_ties():
    from appraiser.demo_report import model_vs_traditional
    from appraiser.evaluation.evaluator import EvalResult

    def row(name: str, mae: float) -> EvalResult:
        return EvalResult(name, {}, "fp", [], {"mae": mae}, 0.0)

    def line(model_mae: float) -> str:
        return model_vs_traditional([row("tfidf-ridge", 105.26), row("blend[lora+tfidf]", model_mae)])

    assert "beats the best traditional baseline tfidf-ridge ($105.26) by $1.26" in line(104.0)
    assert "trails the best traditional baseline tfidf-ridge ($105.26) by $3.43" in line(108.69)
    assert "ties with the best traditional baseline tfidf-ridge ($105.26) on" in line(105.261)
