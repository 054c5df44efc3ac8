"""`appraiser data curate | prompts | stats` through the real typer app, on the real raw sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.io import read_items

runner = CliRunner()


@pytest.fixture(scope="module")
def curated(raw_sample: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cli") / "out"
    result = runner.invoke(app, ["data", "curate", str(raw_sample), "--out", str(out), "--workers", "2"])
    return out, result


def test_curate_writes_splits_and_report(curated):
    out, result = curated
    assert result.exit_code == 0, result.output
    assert "kept" in result.stdout and "127" in result.stdout
    sizes = {s: len(read_items(out / f"{s}.jsonl")) for s in ("train", "validation", "test")}
    assert sizes == {"train": 101, "validation": 13, "test": 13}
    stats = json.loads((out / "report" / "stats.json").read_text())
    assert stats["records"] == 1714 and stats["kept"] == 127 and stats["workers"] == 2
    assert stats["dropped"]["no_price"] == 1475 and stats["dropped"]["too_short"] == 110
    assert stats["dropped"]["duplicate_title"] == 2
    assert stats["by_category"]["Health_and_Personal_Care"]["records"] == 1714
    assert stats["inputs"][0]["category"] == "Health_and_Personal_Care"
    for chart in ("price.png", "text_length.png", "categories.png", "report.md"):
        assert (out / "report" / chart).stat().st_size > 100
    assert not (out / ".partial").exists()


def test_curate_options(raw_sample: Path, tmp_path: Path):
    args = ["data", "curate", str(raw_sample), "--out", str(tmp_path), "--workers", "1", "--size", "50"]
    args += ["--split", "30,10,10", "--format", "parquet", "--category", "Beauty", "--min-chars", "300"]
    args += ["--seed", "5", "--no-charts", "--category-weight", "Beauty=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [len(read_items(tmp_path / f"{s}.parquet")) for s in ("train", "validation", "test")] == [
        30,
        10,
        10,
    ]
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["config"]["min_chars"] == 300 and stats["config"]["seed"] == 5
    assert stats["dropped"]["too_short"] < 110 and set(stats["by_category"]) == {"Beauty"}
    assert not (tmp_path / "report" / "price.png").exists()


def test_malformed_lines_listed_on_stderr(raw_sample: Path, tmp_path: Path):
    lines = raw_sample.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(4, '{"title": "cut short", "price": \n')
    bad = tmp_path / "meta_Health_and_Personal_Care.jsonl"
    bad.write_text("".join(lines), encoding="utf-8")
    result = runner.invoke(app, ["data", "curate", str(bad), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"{bad}:5: malformed JSON" in result.stderr
    stats = json.loads((tmp_path / "o" / "report" / "stats.json").read_text())
    assert stats["malformed_lines"] == 1 and stats["kept"] == 127


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/meta_X.jsonl"], "/no/such/meta_X.jsonl: no such file or folder"),
        (["{sample}", "--format", "csv"], "unknown output format"),
        (["{sample}", "--split", "0.8,0.2"], "expected three non-negative numbers"),
        (["{sample}", "--split", "500,100,100"], "only 127 survived"),
        (["{sample}", "--category-weight", "Beauty"], "CATEGORY=WEIGHT"),
        (["{readme}"], "unknown file format '.md'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(raw_sample: Path, tmp_path: Path, args, message):
    args = [a.format(sample=raw_sample, readme=raw_sample.parents[1] / "README.md") for a in args]
    result = runner.invoke(app, ["data", "curate", *args, "--out", str(tmp_path / "o"), "--workers", "1"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_stats_command(curated):
    out, _ = curated
    result = runner.invoke(app, ["data", "stats", str(out)])
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "101" in result.stdout and "validation" in result.stdout
    one = runner.invoke(app, ["data", "stats", str(out / "train.jsonl")], env={"COLUMNS": "200"})
    assert one.exit_code == 0 and "│ train.jsonl │" in one.stdout and "│ test " not in one.stdout  # not a test split
    missing = runner.invoke(app, ["data", "stats", str(out / "nope")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr


def test_prompts_command(curated):
    out, _ = curated
    result = runner.invoke(app, ["data", "prompts", str(out / "test.jsonl"), "--limit", "5", "--max-tokens", "40"])
    assert result.exit_code == 0, result.output
    assert "prompt" in result.stdout and "completion" in result.stdout
    assert "What does this cost to the nearest dollar?" in result.stdout and "Price is $" in result.stdout
    assert "5 items" in result.stdout and "texts over 40 tokens (truncated): 5 (100.0%)" in result.stdout
    first = read_items(out / "test.jsonl")[0]
    assert f"{round(first.price)}.00" in result.stdout
