"""Items and dataset IO on the shared real files, and bad input that must lose nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from appraiser.data.clean import parse_price, parse_weight, weight_from_details
from appraiser.data.io import (
    DataError,
    LoadReport,
    from_dataset_dict,
    load_splits,
    read_items,
    save_splits,
    to_dataset_dict,
    write_items,
)
from appraiser.items import Item, fingerprint, make_id


def raw_records(path) -> list[dict]:
    """The JSON objects of a .jsonl file's non-empty lines, read without the loader: the expected counts
    come from the file itself, so a refreshed data set does not break the tests."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_shared_train_and_validation_load(data_dir):
    report = LoadReport()
    train = read_items(data_dir / "train.jsonl", report)
    validation = read_items(data_dir / "validation.jsonl", report)
    raw_train, raw_validation = raw_records(data_dir / "train.jsonl"), raw_records(data_dir / "validation.jsonl")
    assert len(train) == len(raw_train) > 0  # every record of the shared files is good: none dropped
    assert len(validation) == len(raw_validation) > 0
    assert report.errors == []
    assert report.loaded == len(raw_train) + len(raw_validation)
    assert [it.id for it in validation] == [r["id"] for r in raw_validation]
    summaries = [it for it in train if it.format == "summary"]
    assert len(summaries) == sum(r.get("format") == "summary" for r in raw_train)
    assert sum(1 for it in train if not it.price_exact) == sum(r.get("price_exact") is False for r in raw_train)
    assert all(0 < it.price < 1000 for it in train + validation)
    # validation carries details as a JSON string; weight is derived from its "Item Weight"
    pairs = zip(validation, raw_validation, strict=True)
    with_weight = [(it, r) for it, r in pairs if "Item Weight" in r.get("details", "")]
    for it, r in with_weight:
        pounds = weight_from_details(r["details"])
        assert it.weight == (pytest.approx(pounds) if pounds is not None else None)
    assert sum(1 for it in validation if it.weight is not None) > len(validation) / 2  # most records list one


def test_load_splits_from_shared_folder(data_dir):
    splits = load_splits(data_dir)
    assert set(splits) == {"train", "validation"}
    assert len(splits["validation"]) == len(raw_records(data_dir / "validation.jsonl"))


def test_malformed_lines_are_reported_and_good_lines_kept(data_dir, tmp_path):
    lines = (data_dir / "validation.jsonl").read_text().splitlines()[:20]
    bad = list(lines)
    bad.insert(3, "{not json")  # line 4
    bad.insert(8, json.dumps({"id": "x", "text": "a thing", "price": None}))  # line 9: missing price
    bad.insert(12, "[1, 2, 3]")  # line 13: not an object
    bad.insert(15, json.dumps({"id": "y", "text": "a thing", "price": -4}))  # line 16: non-positive price
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(bad) + "\n")
    report = LoadReport()
    items = read_items(p, report)
    assert [it.id for it in items] == [json.loads(line)["id"] for line in lines]
    assert [(e.line, e.path) for e in report.errors] == [(4, str(p)), (9, str(p)), (13, str(p)), (16, str(p))]
    assert "malformed JSON" in report.errors[0].reason
    assert "price" in report.errors[1].reason
    assert "expected a JSON object" in report.errors[2].reason
    assert str(report.errors[0]).startswith(f"{p}:4: ")


def test_absurd_prices_are_refused_and_a_byte_order_mark_loses_nothing(tmp_path):
    """A probe's findings: `"price": true` was read as $1.00, `1e308` was kept (one such row moved a mean
    baseline by hundreds of dollars), and a UTF-8 byte-order mark made the first record malformed."""
    p = tmp_path / "windows.jsonl"
    rows = [
        {"id": "a", "text": "first", "price": 3},
        {"id": "b", "text": "a bool", "price": True},
        {"id": "c", "text": "cents?", "price": 1e308},
        {"id": "d", "text": "last", "price": 999_999.0},
    ]
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    report = LoadReport()
    assert [it.id for it in read_items(p, report)] == ["a", "d"]
    assert [e.line for e in report.errors] == [2, 3]
    assert "true/false" in report.errors[0].reason and "beyond any product" in report.errors[1].reason


def test_round_trips_jsonl_gz_parquet(data_dir, tmp_path):
    items = read_items(data_dir / "validation.jsonl", limit=50)
    for name in ("a.jsonl", "a.jsonl.gz", "a.parquet"):
        path = tmp_path / name
        assert write_items(items, path) == 50
        assert read_items(path) == items
    assert not list(tmp_path.glob(".*tmp*")), "atomic writes leave no temp files"


def test_dataset_dict_round_trip(data_dir, tmp_path):
    splits = {
        "train": read_items(data_dir / "train.jsonl", limit=30),
        "test": read_items(data_dir / "validation.jsonl", limit=10),
    }
    dd = to_dataset_dict(splits)
    assert dd["train"].num_rows == 30 and "price" in dd["train"].column_names
    assert from_dataset_dict(dd) == splits
    dd.save_to_disk(str(tmp_path / "saved"))
    assert load_splits(tmp_path / "saved") == splits
    save_splits(splits, tmp_path / "files", fmt="parquet")
    assert load_splits(tmp_path / "files") == splits


def test_bad_paths_and_formats_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        read_items(tmp_path / "missing.jsonl")
    (tmp_path / "items.csv").write_text("id,price\n")
    with pytest.raises(DataError, match="unknown file format '.csv'"):
        read_items(tmp_path / "items.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_items(tmp_path)
    with pytest.raises(DataError, match="no train/validation/test"):
        load_splits(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_splits(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown file format"):
        write_items([], tmp_path / "out.txt")


def test_hub_id_goes_through_datasets_and_fails_clearly_offline(monkeypatch):
    """The real `datasets.load_dataset` path, offline. Both libraries read HF_HUB_OFFLINE into module
    constants when first imported (an earlier test may have imported them), so the env alone is not enough:
    without the constants too, this retried the network for ~23 s before failing."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="could not load from the Hugging Face hub"):
        load_splits("appraiser-test/no-such-dataset")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (12.99, 12.99),
        ("$1,299.00", 1299.0),
        ("from 9.99", 9.99),
        ("9.99 - 19.99", 9.99),
        ("None", None),
        (None, None),
        ("", None),
        ("free", None),
        (0, None),
        (-3, None),
        (True, None),
        (float("nan"), None),
        # a probe's findings: "-20" was $20, "1e3" was $1 and "1.299,00" was $1.299
        ("-20", None),
        ("-$20", None),
        ("$-20", None),
        ("1e3", 1000.0),
        ("1.5E2", 150.0),
        ("1.299,00", None),
        ("12,50", None),
        ("1,299", 1299.0),
        ("Pack-2", 2.0),  # a hyphen, not a minus
    ],
)
def test_parse_price(raw, expected):
    assert parse_price(raw) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("raw", "pounds"),
    [
        ("10 pounds", 10.0),
        ("1.4 Pounds", 1.4),
        ("8 Ounces", 0.5),
        ("453.59237 grams", 1.0),
        ("2 Kilograms", 4.40924524),
        ("453592.37 milligrams", 1.0),
        ("150 hundredths pounds", 1.5),
        ("heavy", None),
    ],
)
def test_parse_weight(raw, pounds):
    got = parse_weight(raw)
    assert got == (pytest.approx(pounds) if pounds is not None else None)


def test_weight_from_details_dict_or_json():
    assert weight_from_details({"Item Weight": "12 ounces"}) == pytest.approx(0.75)
    assert weight_from_details('{"Item Weight": "3 pounds"}') == pytest.approx(3.0)
    assert weight_from_details("not json") is None


def test_item_ids_and_fingerprints():
    a = Item(id=make_id("t", "x"), text="x", price=3.0)
    b = Item(id=make_id("t", "y"), text="y", price=3.0)
    assert a.id != b.id and len(a.id) == 16
    assert fingerprint([a, b]) != fingerprint([b, a])
    assert fingerprint([a, b]) == fingerprint([a.model_copy(), b.model_copy()])
    with pytest.raises(ValueError):
        Item(id="z", text="x", price=float("inf"))


def test_shared_files_are_never_written(data_dir, tmp_path):
    # Loading copies nothing into the repo; writing goes only where asked.
    copy = tmp_path / "v.jsonl"
    shutil.copy(data_dir / "validation.jsonl", copy)
    write_items(read_items(copy, limit=5), copy)
    assert len(read_items(copy)) == 5


def test_an_appended_file_ends_on_a_whole_line_before_the_next_append(tmp_path):
    """Summaries and the server's batch answers append JSON lines; after a kill mid-write the half record is cut
    off (it is written again) and a whole record that only lacks its newline gets one."""
    from appraiser.atomic import end_on_whole_line

    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"id": "a"}\n{"id": "b", "te')
    end_on_whole_line(torn)
    assert torn.read_text() == '{"id": "a"}\n'
    whole = tmp_path / "whole.jsonl"
    whole.write_text('{"id": "a"}\n{"id": "b"}')
    end_on_whole_line(whole)
    assert whole.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    one = tmp_path / "one.jsonl"
    one.write_text('{"id": "a", "te')  # no newline at all: the only line is torn
    end_on_whole_line(one)
    assert one.read_text() == ""
    end_on_whole_line(tmp_path / "missing.jsonl")  # nothing to do
    assert not (tmp_path / "missing.jsonl").exists()
