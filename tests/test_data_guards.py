"""A probe's findings on data input: bad input is one line and exit 2, and never costs good output.

Each test here failed before its fix: a curation of bad input wiped the splits of a good one, stale
split files of another format were read, a gzip file named .jsonl gave 41,088 warnings, and so on.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appraiser.cli import app
from appraiser.data.curate import Chunk, CurateConfig, curate, parse_split, process_chunk, resolve_sources, split_counts
from appraiser.data.io import DataError, LoadReport, find_split_file, load_splits, read_items, read_pool, write_items

runner = CliRunner()


def _one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def sample_lines(raw_sample: Path) -> list[bytes]:
    return raw_sample.read_bytes().splitlines(keepends=True)


# ---------------------------------------------------------------- 1: bad input never wipes good splits


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("meta_Fake.jsonl.gz", b'{"title": "plain text"}\n', "meta_Fake.jsonl.gz: not a readable gzip file"),
        ("meta_Arr.json", b'[{"title": "a", "price": 3}]\n', "must be JSON Lines"),
        ("meta_Empty.jsonl", b"", "no records in the input"),
        ("meta_Junk.jsonl", b"{nope\n{nope\n", "all 2 records were dropped (malformed_json 2)"),
    ],
)
def test_curating_bad_input_is_an_error_and_keeps_the_earlier_splits(
    raw_sample: Path, tmp_path: Path, name: str, content: bytes, message: str
):
    out = tmp_path / "c1"
    first = runner.invoke(app, ["data", "curate", str(raw_sample), "-o", str(out), "--workers", "1", "--no-charts"])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    bad = tmp_path / name
    bad.write_bytes(content)
    result = runner.invoke(app, ["data", "curate", str(bad), "-o", str(out), "--workers", "1", "--no-charts"])
    _one_line_error(result, message)
    assert "nothing written" in result.stderr or "gzip" in result.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before
    assert len(before["train.jsonl"].splitlines()) == 101


def test_a_curation_that_samples_nothing_names_why(raw_sample: Path, tmp_path: Path):
    with pytest.raises(DataError, match="every category of the 127 candidates has weight 0"):
        curate([raw_sample], tmp_path / "o", CurateConfig(workers=1, category_weights={"Health_and_Personal_Care": 0}))
    assert not (tmp_path / "o" / "train.jsonl").exists()
    with pytest.raises(DataError, match="--size 0"):
        curate([raw_sample], tmp_path / "o", CurateConfig(workers=1, size=0), charts=False)


# ---------------------------------------------------------------- 4: one split in two formats


def test_recurating_in_another_format_removes_the_stale_splits(raw_sample: Path, tmp_path: Path):
    out = tmp_path / "c2"
    curate([raw_sample], out, CurateConfig(workers=1), charts=False)
    curate([raw_sample], out, CurateConfig(workers=1, size=50), fmt="parquet", charts=False)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    assert sum(len(v) for v in load_splits(out).values()) == 50


def test_readers_refuse_a_split_in_two_formats(data_dir: Path, tmp_path: Path):
    items = read_items(data_dir / "train.jsonl", limit=6)
    write_items(items[:3], tmp_path / "train.jsonl")
    write_items(items[3:], tmp_path / "train.parquet")
    with pytest.raises(DataError, match="holds train.jsonl and train.parquet, one split in two files"):
        find_split_file(tmp_path, "train")
    with pytest.raises(DataError, match="one split in two files"):
        load_splits(tmp_path)
    with pytest.raises(DataError, match="one split in two files"):
        read_pool(tmp_path)


# ---------------------------------------------------------------- 5: an id in two --train files


def test_a_duplicate_id_across_train_files_is_dropped_with_a_warning(data_dir: Path, tmp_path: Path, caplog):
    items = read_items(data_dir / "train.jsonl", limit=30)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_items(items[:20], a)
    write_items([*items[19:], items[25]], b)  # one id of a.jsonl, and one twice in b.jsonl
    with caplog.at_level(logging.WARNING):
        pool = read_pool([a, b])
    assert [it.id for it in pool] == [it.id for it in items]  # the first of each id wins
    assert f"{b}: 1 item dropped, its id is already in {a}" in caplog.text
    assert f"{b}: 1 item dropped, its id is already earlier in the same file" in caplog.text


# ---------------------------------------------------------------- 6: a mistyped path is not a hub id


@pytest.mark.parametrize("name", ["data/train.jsonl", "data/train.parquet", "owner/items.jsonl.gz", "x/y.csv"])
def test_a_path_like_name_is_a_missing_file_not_a_hub_id(name: str, monkeypatch, tmp_path: Path):
    import appraiser.data.io as io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(io, "load_hub_splits", lambda *a, **k: pytest.fail("asked the hub"))
    with pytest.raises(DataError, match=f"^{name}: no such file or folder$"):
        load_splits(name)


# ---------------------------------------------------------------- 8: category weights


@pytest.mark.parametrize("weight", ["nan", "inf", "-1"])
def test_a_non_finite_or_negative_category_weight_is_refused(raw_sample: Path, tmp_path: Path, weight: str):
    args = ["data", "curate", str(raw_sample), "-o", str(tmp_path / "o"), "--category-weight", f"Test={weight}"]
    _one_line_error(runner.invoke(app, args), "finite WEIGHT >= 0")
    with pytest.raises(ValueError, match="finite number"):
        CurateConfig(category_weights={"Test": float(weight)})


def test_a_category_weight_for_no_category_of_the_input_warns(raw_sample: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        curate([raw_sample], tmp_path / "o", CurateConfig(workers=1, category_weights={"Tset": 0.5}), charts=False)
    assert "Tset: not a category of the input" in caplog.text and "Health_and_Personal_Care" in caplog.text


# ---------------------------------------------------------------- 11: gzip data named .jsonl; warnings capped


def test_gzip_data_named_jsonl_is_one_error(data_dir: Path, raw_sample: Path, tmp_path: Path):
    p = tmp_path / "items.jsonl"
    p.write_bytes(gzip.compress((data_dir / "validation.jsonl").read_bytes()[:20_000]))
    with pytest.raises(DataError, match=r"items\.jsonl: is gzip-compressed: name it items\.jsonl\.gz$"):
        read_items(p)
    result = runner.invoke(app, ["data", "stats", str(p)])
    _one_line_error(result, "is gzip-compressed")
    raw = tmp_path / "meta_X.jsonl"
    raw.write_bytes(gzip.compress(raw_sample.read_bytes()))
    with pytest.raises(DataError, match="is gzip-compressed"):
        resolve_sources([raw])


def test_warnings_are_capped_per_file_but_every_error_is_reported(tmp_path: Path, caplog):
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(f"{{bad {i}\n" for i in range(25)))
    report = LoadReport()
    with caplog.at_level(logging.WARNING):
        assert read_items(p, report) == []
    assert report.skipped == 25
    assert len(caplog.records) == 11 and f"{p}: 15 more bad records not shown" in caplog.text
    result = runner.invoke(app, ["data", "stats", str(p)])
    assert result.exit_code == 2 and "no items: all 25 records were bad" in result.stderr


# ---------------------------------------------------------------- 12: small ones


def _chunk(data: bytes) -> Chunk:
    return Chunk(0, "meta_X.jsonl", "meta_X.jsonl", "X", 1, data, CurateConfig())


def test_a_byte_order_mark_does_not_cost_curation_its_first_record(sample_lines: list[bytes]):
    plain = process_chunk(_chunk(sample_lines[84]))  # line 85: a record that survives every rule
    assert len(plain.candidates) == 1
    with_bom = process_chunk(_chunk(b"\xef\xbb\xbf" + sample_lines[84]))
    assert len(with_bom.candidates) == 1 and not with_bom.errors and not with_bom.dropped


def test_an_all_zero_split_is_refused(raw_sample: Path, tmp_path: Path):
    with pytest.raises(DataError, match="all three are 0"):
        parse_split("0,0,0")
    with pytest.raises(DataError, match="all three are 0"):
        split_counts(100, (0, 0, 0))
    args = ["data", "curate", str(raw_sample), "-o", str(tmp_path / "o"), "--split", "0,0,0"]
    _one_line_error(runner.invoke(app, args), "all three are 0")
    assert not (tmp_path / "o").exists()


def test_a_nan_price_is_said_to_be_not_a_number(tmp_path: Path):
    p = tmp_path / "nan.jsonl"
    rows = ['{"id": "a", "text": "t", "price": NaN}', json.dumps({"id": "b", "text": "t", "price": "NaN"})]
    p.write_text("\n".join(rows) + "\n")
    report = LoadReport()
    assert read_items(p, report) == []
    assert [e.reason for e in report.errors] == ["invalid price: price must be a finite number, not NaN"] * 2
    assert math.isnan(json.loads(rows[0])["price"])


def test_a_json_error_does_not_read_at_at(tmp_path: Path):
    p = tmp_path / "ctl.jsonl"
    p.write_text('{"id": "a", "text": "x\x01y", "price": 3}\n')
    report = LoadReport()
    read_items(p, report)
    (err,) = report.errors
    assert "Invalid control character at column" in err.reason and "at at" not in err.reason
    (msg,) = process_chunk(_chunk(p.read_bytes())).errors
    assert "Invalid control character at column" in msg and "at at" not in msg
