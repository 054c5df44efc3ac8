"""Damaged data files: every complete record before a break loads, and the break is reported.

Real items from the shared data are the content; the damage is what a killed download, a full disk
or Excel does to a file: a `.jsonl.gz` cut short or garbled, a Parquet file cut short or not Parquet,
a human-baseline CSV saved as Windows-1252 or Latin-1.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import pytest

from appraiser.data.io import DataError, LoadReport, load_splits, read_items, write_items
from appraiser.items import Item


@pytest.fixture(scope="module")
def real_items(data_dir: Path) -> list[Item]:
    return read_items(data_dir / "validation.jsonl", limit=60)


def _whole_lines(truncated_gz: bytes) -> int:
    """How many whole lines a truncated gzip holds, by zlib directly (no appraiser code)."""
    return zlib.decompressobj(wbits=31).decompress(truncated_gz).count(b"\n")


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_truncated_gzip_loads_every_complete_record_then_reports_the_break(
    real_items, tmp_path: Path, share: float, caplog
):
    whole = tmp_path / "whole.jsonl.gz"
    write_items(real_items, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: int(len(data) * share)])
    expected = _whole_lines(cut.read_bytes())
    assert 0 < expected < len(real_items)  # the cut really falls inside the records

    report = LoadReport()
    with caplog.at_level(logging.WARNING, logger="appraiser.data.io"):
        got = read_items(cut, report)

    assert [it.id for it in got] == [it.id for it in real_items[:expected]]
    assert got == real_items[:expected]  # the records themselves, not only their ids
    assert report.loaded == expected
    assert report.skipped == 1
    err = report.errors[0]
    assert (err.path, err.line) == (str(cut), expected + 1)
    assert "truncated" in err.reason
    assert str(err).startswith(f"{cut}:{expected + 1}: ")
    assert str(err) in caplog.text  # reported like a malformed line: a warning as well as in the report


def test_gzip_missing_only_its_trailer_keeps_every_record(real_items, tmp_path: Path):
    whole = tmp_path / "whole.jsonl.gz"
    write_items(real_items, whole)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[:-4])  # the size field of the trailer is gone
    report = LoadReport()
    assert read_items(cut, report) == real_items
    assert [e.line for e in report.errors] == [len(real_items) + 1]


def test_garbled_gzip_keeps_the_records_before_the_damage(real_items, tmp_path: Path):
    whole = tmp_path / "whole.jsonl.gz"
    write_items(real_items, whole)
    data = bytearray(whole.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(bytes(data))
    report = LoadReport()
    got = read_items(bad, report)  # no EOFError, zlib.error or BadGzipFile escapes
    assert report.skipped >= 1
    good = _whole_lines(bytes(data[:middle]))
    assert [it.id for it in got[:good]] == [it.id for it in real_items[:good]]
    assert len(got) < len(real_items)


def test_a_file_that_is_not_gzip_is_a_data_error(real_items, tmp_path: Path):
    plain = tmp_path / "items.jsonl"
    write_items(real_items[:3], plain)
    fake = tmp_path / "items.jsonl.gz"
    fake.write_bytes(plain.read_bytes())
    with pytest.raises(DataError, match=r"items\.jsonl\.gz: not a readable gzip file"):
        read_items(fake)


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b[:-10], lambda b: b"", lambda b: b"PAR1" + b"\x00" * 100],
    ids=["half", "no-footer", "empty", "garbage"],
)
def test_corrupt_parquet_is_a_data_error_naming_the_file(real_items, tmp_path: Path, damage):
    good = tmp_path / "good.parquet"
    write_items(real_items, good)
    bad = tmp_path / "train.parquet"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(DataError, match=r"train\.parquet: not a readable Parquet file") as e:
        read_items(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"train\.parquet"):  # the same through a split folder
        load_splits(tmp_path)


def test_parquet_honours_limit(real_items, tmp_path: Path):
    p = tmp_path / "items.parquet"
    write_items(real_items, p)
    assert read_items(p, limit=7) == real_items[:7]
    assert read_items(p, limit=len(real_items) + 5) == real_items
    report = LoadReport()
    assert read_items(p, report, limit=1) == real_items[:1]
    assert report.loaded == 1


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz", "items.parquet"])
def test_limit_zero_reads_no_items(real_items, tmp_path: Path, name: str):
    p = tmp_path / name
    write_items(real_items[:5], p)
    report = LoadReport()
    assert read_items(p, report, limit=0) == []
    assert report.loaded == 0
    assert read_items(p, limit=2) == real_items[:2]
    with pytest.raises(DataError, match="no such file"):  # a wrong path is still an error with limit=0
        read_items(tmp_path / "missing.jsonl", limit=0)


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz", "train.parquet"])
def test_wrong_path_folder_and_empty_file(tmp_path: Path, name: str):
    with pytest.raises(DataError, match="no such file"):
        read_items(tmp_path / name)
    (tmp_path / name).mkdir()
    with pytest.raises(DataError, match="is a folder"):
        read_items(tmp_path / name)
    (tmp_path / name).rmdir()
    (tmp_path / name).write_bytes(b"")
    if name.endswith(".parquet"):
        with pytest.raises(DataError, match="not a readable Parquet file"):
            read_items(tmp_path / name)
    else:
        assert read_items(tmp_path / name) == []


# ---------------------------------------------------------------- human baseline CSVs from Excel


def _non_ascii_items(data_dir: Path, encoding: str, n: int = 4) -> list[Item]:
    """Real items whose title has a non-ASCII character that `encoding` can write."""
    found = []
    for it in read_items(data_dir / "validation.jsonl"):
        title = it.title or ""
        if any(ord(c) > 127 for c in title):
            try:
                title.encode(encoding)
            except UnicodeEncodeError:
                continue
            found.append(it)
            if len(found) == n:
                break
    return found


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_human_baseline_csv_from_excel_loads(data_dir: Path, tmp_path: Path, encoding: str, caplog):
    import csv

    from appraiser.evaluation.human import match_guesses, read_guesses

    items = _non_ascii_items(data_dir, encoding)
    if len(items) < 2:
        pytest.skip(f"no real titles with non-ASCII characters that {encoding} can write")
    path = tmp_path / "human.csv"
    with open(path, "w", encoding=encoding, newline="") as f:  # what Excel's "Save as CSV" writes
        w = csv.writer(f)
        w.writerow(["id", "title", "price"])
        for i, it in enumerate(items):
            w.writerow([it.id, it.title, f"{10 + i}.50"])
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")  # the file really is not UTF-8

    with caplog.at_level(logging.WARNING, logger="appraiser.evaluation.human"):
        guesses = read_guesses(path)
    assert [g.id for g in guesses] == [it.id for it in items]
    preds, rep = match_guesses(items, guesses)
    assert rep.matched_by_id == len(items)
    assert [p.price for p in preds] == [10.5 + i for i in range(len(items))]
    assert "not UTF-8" in caplog.text and str(path) in caplog.text


def test_human_baseline_csv_latin1_only_bytes_fall_back_to_latin1(tmp_path: Path, caplog):
    from appraiser.evaluation.human import read_guesses

    path = tmp_path / "human.csv"
    # 0x81 and 0x9d are undefined in Windows-1252, so only Latin-1 decodes this file.
    path.write_bytes(b"id,text,price\r\nabc,Caf\xe9 \x81\x9d,12\r\n")
    with caplog.at_level(logging.WARNING, logger="appraiser.evaluation.human"):
        (g,) = read_guesses(path)
    assert (g.id, g.text, g.value) == ("abc", "Caf\xe9 \x81\x9d", "12")
    assert "Latin-1" in caplog.text


def test_human_baseline_utf8_with_bom_is_silent(tmp_path: Path, caplog):
    from appraiser.evaluation.human import read_guesses

    path = tmp_path / "human.csv"
    path.write_bytes("id,text,price\nabc,Café,12\n".encode("utf-8-sig"))
    with caplog.at_level(logging.WARNING):
        (g,) = read_guesses(path)
    assert (g.id, g.text) == ("abc", "Café")
    assert "not UTF-8" not in caplog.text


def test_human_baseline_folder_or_missing_file_is_a_data_error(tmp_path: Path):
    from appraiser.evaluation.human import read_guesses

    with pytest.raises(DataError, match="no such file"):
        read_guesses(tmp_path / "missing.csv")
    (tmp_path / "guesses.csv").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        read_guesses(tmp_path / "guesses.csv")


# ---------------------------------------------------------------- curation of a cut-short raw dump


def test_curate_keeps_the_lines_before_a_gzip_break(raw_sample: Path, tmp_path: Path):
    from appraiser.data.curate import CurateConfig, curate

    data = gzip.compress(raw_sample.read_bytes())
    gz = tmp_path / "meta_Health_and_Personal_Care.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    whole = _whole_lines(gz.read_bytes())
    curate([gz], tmp_path / "out", CurateConfig(workers=1), charts=False)
    errors = (tmp_path / "out" / "report" / "errors.txt").read_text().splitlines()
    assert f"{gz}:{whole + 1}: file ends early (truncated gzip" in "\n".join(errors)
    assert any(
        s.exists() and s.stat().st_size > 0 for s in (tmp_path / "out").glob("*.jsonl")
    )  # the records before the break were curated


def test_a_damaged_saved_dataset_dict_is_a_data_error(real_items, tmp_path: Path):
    from appraiser.data.io import to_dataset_dict

    folder = tmp_path / "saved"
    to_dataset_dict({"test": real_items[:5]}).save_to_disk(str(folder))
    assert load_splits(folder)["test"] == real_items[:5]
    for arrow in folder.rglob("*.arrow"):
        truncate_to = arrow.read_bytes()[:50]
        arrow.write_bytes(truncate_to)
    with pytest.raises(DataError, match=r"saved: not a readable saved dataset"):
        load_splits(folder)
