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
    assert "leaderboard.png" in index
    rows = LeaderboardStore(out / "leaderboard.db").rows()
    assert len(rows) == 5
    assert len({r.test_fingerprint for r in rows}) == 1
    preds = sorted((out / "predictions").glob("*.jsonl"))
    assert len(preds) == 5
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
    assert "report:" in result.output
    # the head was refit in closed form after training (training.refit) and probed again
    from appraiser.runs.store import RunStore

    store = RunStore()
    events = [e.message for e in store.events(store.get("demo-smollm2-135m").id)]
    assert any(e.startswith("Head refit (kernel) on 16 training items") for e in events)


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
