"""Every curation rule, asserted on the real raw sample (untouched Amazon-Reviews-2023 records).

The expected counts of the whole sample (records, priced, too short, duplicate titles, kept; the
`expect` fixture) are derived from the file itself: its non-empty lines, the records with a price,
and the rules applied one record at a time in file order, first of each title kept. So the pipeline
(chunks, workers, dedupe, stats, splits) is checked against its rules record by record, and a
refreshed sample does not break the tests. (On the sample as shipped: 1,714 records, 239 priced,
110 too short, 2 duplicate titles, 127 kept.) Where the sample has no example of a rule (a price
over $999.49, a 5,000-character description), a real record is copied and that one field changed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from appraiser.data.clean import parse_price
from appraiser.data.curate import (
    CurateConfig,
    Source,
    category_from_name,
    curate,
    download_category,
    record_to_item,
    resolve_sources,
    sample_indices,
    scan,
    split_counts,
    text_key,
    title_key,
)
from appraiser.data.io import DataError, read_items
from appraiser.items import Item


@pytest.fixture(scope="module")
def records(raw_sample: Path) -> list[dict]:
    """The raw records, indexed by line number (records[0] is line 1)."""
    with open(raw_sample, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@dataclass(frozen=True)
class Expected:
    records: int  # non-empty lines of the sample
    priced: int  # records whose price field is set
    reasons: dict[str, int]  # record_to_item's drop reasons, record by record, at the defaults
    duplicate_titles: dict[int, int]  # line of a duplicate -> line of the first record with its title
    kept: list[Item]  # the survivors, first of each title and text, in file order

    @property
    def too_short(self) -> int:
        return self.reasons.get("too_short", 0)


@pytest.fixture(scope="module")
def expect(raw_sample: Path, records: list[dict]) -> Expected:
    n_lines = sum(1 for row in raw_sample.read_text(encoding="utf-8").splitlines() if row.strip())
    reasons: dict[str, int] = {}
    titles: dict[int, int] = {}
    texts: set[int] = set()
    duplicates: dict[int, int] = {}
    kept: list[Item] = []
    for n, rec in enumerate(records, start=1):
        out = record_to_item(rec)
        if not isinstance(out, Item):
            reasons[out] = reasons.get(out, 0) + 1
        elif title_key(out.title) in titles:
            duplicates[n] = titles[title_key(out.title)]
        elif text_key(out.text) in texts:
            reasons["duplicate_text"] = reasons.get("duplicate_text", 0) + 1
        else:
            titles[title_key(out.title)] = n
            texts.add(text_key(out.text))
            kept.append(out)
    priced = sum(rec.get("price") is not None for rec in records)
    return Expected(n_lines, priced, reasons, duplicates, kept)


def line(records: list[dict], n: int) -> dict:
    """A deep copy of the record on line `n`, safe to modify."""
    return copy.deepcopy(records[n - 1])


@pytest.fixture(scope="module")
def curated(raw_sample: Path, tmp_path_factory) -> Path:
    """The sample curated once with the defaults (serially, charts off), for the tests that read outputs."""
    out = tmp_path_factory.mktemp("curated")
    curate([raw_sample], out, CurateConfig(workers=1), charts=False)
    return out


def stats_of(folder: Path) -> dict:
    return json.loads((folder / "report" / "stats.json").read_text())


def all_items(folder: Path, fmt: str = "jsonl") -> dict[str, list[Item]]:
    return {s: read_items(folder / f"{s}.{fmt}") for s in ("train", "validation", "test")}


# ---------------------------------------------------------------- counts on the whole sample


def test_counts_on_the_raw_sample(curated: Path, records: list[dict], expect: Expected):
    stats = stats_of(curated)
    assert stats["records"] == len(records) == expect.records
    assert stats["dropped"]["no_price"] == expect.records - expect.priced == expect.reasons["no_price"]
    assert stats["dropped"]["price_out_of_range"] == expect.reasons.get("price_out_of_range", 0)
    assert stats["dropped"]["too_short"] == expect.too_short > 0
    assert stats["dropped"]["duplicate_title"] == len(expect.duplicate_titles) > 0
    assert stats["dropped"]["duplicate_text"] == expect.reasons.get("duplicate_text", 0)
    kept = len(expect.kept)
    assert stats["candidates"] == stats["kept"] == kept > 0
    assert stats["records"] == stats["dropped_total"] + stats["candidates"]
    assert stats["by_category"]["Health_and_Personal_Care"]["kept"] == kept
    split = split_counts(kept, (0.8, 0.1, 0.1))
    assert stats["splits"] == dict(zip(("train", "validation", "test"), split, strict=True))
    prices = [it.price for it in expect.kept]
    assert stats["price"]["kept"]["min"] == min(prices) and stats["price"]["kept"]["max"] == max(prices)


def test_kept_items_obey_every_rule(curated: Path, expect: Expected):
    items = [it for split in all_items(curated).values() for it in split]
    assert sorted(it.id for it in items) == sorted(it.id for it in expect.kept)
    for it in items:
        assert 0.5 <= it.price <= 999.49
        assert 600 <= len(it.text) <= 4000
        assert all(len(part) <= 3000 for part in it.text.split("\n"))
        assert "  " not in it.text and "\t" not in it.text
        assert it.text.count("\n") <= 3  # title, description, features, details
        assert not re.search(r"(?<![A-Za-z0-9])(?=[A-Z]*\d)[A-Z0-9]{7,}(?![A-Za-z0-9])", it.text)
        assert "item model number" not in it.text.lower() and "best sellers rank" not in it.text.lower()
        assert it.category == "Health_and_Personal_Care"
        assert it.source.startswith("meta_Health_and_Personal_Care.sample.jsonl:")
        assert it.text.startswith(it.title[:50])
    assert len({it.id for it in items}) == len(expect.kept)


# ---------------------------------------------------------------- record → item, rule by rule


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        (None, "no_price"),
        ("None", "no_price"),
        ("", "no_price"),
        ("—", "no_price"),
        ("$1,299.00", "price_out_of_range"),
        ("from 9.99", 9.99),
        ("$24.95", 24.95),
        ("$999.49", 999.49),
        (999.5, "price_out_of_range"),
        (0.49, "price_out_of_range"),
        ("0.50", 0.5),
        (0, "no_price"),
        (-5, "no_price"),
        ([19.99], "no_price"),
        ({"value": 19.99}, "no_price"),
        (True, "no_price"),
    ],
)
def test_price_forms(records: list[dict], price, expected):
    rec = line(records, 85)  # a real priced record that survives every other rule
    rec["price"] = price
    result = record_to_item(rec)
    if isinstance(expected, str):
        assert result == expected
    else:
        assert isinstance(result, Item) and result.price == pytest.approx(expected)
    assert parse_price("$1,299.00") == 1299.0  # parsed right, then dropped by the range rule


def test_range_is_configurable(records: list[dict]):
    rec = line(records, 85)
    assert record_to_item(rec).price == 31.66
    assert record_to_item(rec, config=CurateConfig(max_price=30)) == "price_out_of_range"
    assert record_to_item(rec, config=CurateConfig(min_price=40)) == "price_out_of_range"


def test_noise_keys_removed(records: list[dict]):
    rec = line(records, 85)  # has "Item model number" and a "Best Sellers Rank"
    assert "Item model number" in rec["details"] and "Best Sellers Rank" in rec["details"]
    text = record_to_item(rec).text
    assert "Item model number" not in text and "B075DLLC4V" not in text and "Best Sellers" not in text
    assert "Brand: Amazon Elements" in text and "Primary Supplement Type: Multivitamins" in text
    # other spellings of the noise keys, matched case-insensitively, and any "... Part Number"
    rec["details"].update(
        {
            "BATTERIES REQUIRED?": "No",
            "batteries included ?": "No",
            "Manufacturer Part Number": "AB-77",
            "OEM part number": "XY-1",
            "Part Number": "ZZ-9",
        }
    )
    text = record_to_item(rec).text
    for gone in ("BATTERIES", "batteries", "Part Number", "part number", "AB-77", "XY-1", "ZZ-9"):
        assert gone not in text
    kept = record_to_item(rec, config=CurateConfig(noise_keys=())).text
    assert "BATTERIES REQUIRED?: No" in kept and "batteries included ?: No" in kept
    assert "Manufacturer Part Number" not in kept  # "... part number" keys always go


def test_details_as_json_string_gives_the_same_item(records: list[dict]):
    rec = line(records, 85)
    as_dict = record_to_item(rec)
    rec["details"] = json.dumps(rec["details"])
    as_string = record_to_item(rec)
    assert isinstance(as_string, Item) and as_string.text == as_dict.text and as_string.weight == as_dict.weight
    rec["details"] = "{not json"
    assert isinstance(record_to_item(rec), Item)  # unreadable details: still an item, just without them


def test_part_numbers_stripped(records: list[dict]):
    rec = line(records, 74)  # details has "UPC": "811079030528"
    assert rec["details"]["UPC"] == "811079030528"
    text = record_to_item(rec).text
    assert "811079030528" not in text and "UPC" not in text  # the value was only a part number
    rec = line(records, 1300)  # "Item model number": "1181508 VIGL 8Pack", kept when noise keys are off
    text = record_to_item(rec, config=CurateConfig(noise_keys=())).text
    assert "Item model number: VIGL 8Pack" in text and "1181508" not in text
    rec = line(records, 85)
    rec["title"] = "Amazon Elements B07XJ8C8F5 Women's Multi CSC2A2CH8540 size 4X Vitamin-D3 2000IU"
    item = record_to_item(rec)
    first_line = item.text.split("\n")[0]
    assert first_line == "Amazon Elements Women's Multi size 4X Vitamin-D3 2000IU"  # short or lowercase tokens stay
    assert item.title == rec["title"]  # the title field itself is kept as listed


def test_whitespace_collapsed(records: list[dict]):
    rec = line(records, 85)
    rec["title"] = "  Amazon\tElements \n\n Women's   Multi  "
    rec["features"] = ["  first\n\nfeature  ", "\tsecond   feature"] + rec["features"]
    text = record_to_item(rec).text
    assert text.startswith("Amazon Elements Women's Multi\n")
    assert "first feature second feature" in text
    assert "  " not in text and "\t" not in text


def test_field_and_total_caps(records: list[dict]):
    rec = line(records, 37)  # the longest real features in the sample (2,359 chars) ...
    rec["description"] = records[666 - 1]["description"] * 3  # ... and the longest description (1,952)
    rec["features"] = rec["features"] * 2
    text = record_to_item(rec).text
    parts = text.split("\n")
    assert len(parts[1]) == 3000 or len(parts[1]) == 2999  # capped (then stripped of a trailing space)
    assert len(text) <= 4000 and len(text) >= 3990
    small = record_to_item(rec, config=CurateConfig(max_field_chars=100, max_text_chars=250, min_chars=0)).text
    assert all(len(p) <= 100 for p in small.split("\n")) and len(small) <= 250


def test_min_length(records: list[dict], expect: Expected):
    rec = line(records, 764)  # the shortest survivor at the default: 610 characters
    n = len(record_to_item(rec).text)
    assert n == 610
    assert isinstance(record_to_item(rec, config=CurateConfig(min_chars=n)), Item)
    assert record_to_item(rec, config=CurateConfig(min_chars=n + 1)) == "too_short"
    survivors = [r for r in records if isinstance(record_to_item(r, config=CurateConfig(min_chars=0)), Item)]
    assert len(survivors) == expect.priced - expect.reasons.get("price_out_of_range", 0)
    at_default = [r for r in records if isinstance(record_to_item(r), Item)]
    assert len(at_default) == len(survivors) - expect.too_short


@pytest.mark.parametrize(
    ("lineno", "listed", "pounds"),
    [
        (85, "5.3 ounces", 5.3 / 16),
        (126, "0.24 Pounds", 0.24),
        (129, "1000 Grams", 1000 / 453.59237),
        (380, "0.07 Kilograms", 0.07 * 2.20462262),
        (306, "120 Milligrams", 120 / 453592.37),
        (1, None, None),
    ],
)
def test_weight_in_pounds(records: list[dict], lineno, listed, pounds):
    rec = line(records, lineno)
    assert rec["details"].get("Item Weight") == listed
    rec["price"] = rec["price"] or 10.0
    item = record_to_item(rec, config=CurateConfig(min_chars=0))
    assert item.weight == pytest.approx(pounds) if pounds else item.weight is None


def test_weight_in_hundredths_pounds(records: list[dict]):
    rec = line(records, 85)
    rec["details"]["Item Weight"] = "45 hundredths pounds"
    assert record_to_item(rec).weight == pytest.approx(0.45)


def test_not_a_record():
    for junk in (None, [], "text", 3, [{"price": 10}]):
        assert record_to_item(junk) == "not_object"


# ---------------------------------------------------------------- sources


def test_category_from_file_name_or_option(raw_sample: Path):
    assert category_from_name(raw_sample) == "Health_and_Personal_Care"
    assert category_from_name(Path("raw_meta_Toys_and_Games.jsonl.gz")) == "Toys_and_Games"
    assert category_from_name(Path("products.jsonl")) is None
    assert resolve_sources([raw_sample])[0].category == "Health_and_Personal_Care"
    assert resolve_sources([raw_sample], category="Beauty")[0].category == "Beauty"


def test_bad_sources_fail_with_one_line(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        resolve_sources([tmp_path / "missing.jsonl"])
    (tmp_path / "meta_X.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file format '.csv'"):
        resolve_sources([tmp_path / "meta_X.csv"])
    with pytest.raises(DataError, match="is a folder"):
        resolve_sources([tmp_path])
    with pytest.raises(DataError, match="no input"):
        resolve_sources([])


def test_hub_category_fails_clearly_without_the_hub(tmp_path: Path):
    """The real download path (hf_hub_download of the raw file); this machine has no hub access."""
    with pytest.raises(DataError) as e:
        download_category("Appliances", cache_dir=tmp_path, local_files_only=True)
    msg = str(e.value)
    assert "hub:Appliances" in msg and "raw/meta_categories/meta_Appliances.jsonl" in msg
    assert "McAuley-Lab/Amazon-Reviews-2023" in msg and "\n" not in msg
    with pytest.raises(DataError, match="not a category name"):
        resolve_sources(["hub:../etc"])


def test_gzip_input_gives_the_same_result(raw_sample: Path, tmp_path: Path, curated: Path, expect: Expected):
    import gzip

    gz = tmp_path / "meta_Health_and_Personal_Care.jsonl.gz"
    gz.write_bytes(gzip.compress(raw_sample.read_bytes()))
    out = tmp_path / "out"
    curate([gz], out, CurateConfig(workers=1), charts=False)
    assert stats_of(out)["kept"] == len(expect.kept)
    ids = {s: [it.id for it in items] for s, items in all_items(out).items()}
    assert ids == {s: [it.id for it in items] for s, items in all_items(curated).items()}


# ---------------------------------------------------------------- dedupe


def test_dedupe_by_title_keeps_the_first(raw_sample: Path, records: list[dict], tmp_path: Path, expect: Expected):
    assert expect.duplicate_titles  # the sample holds some (lines 1564 and 802 repeat 562 and 683)
    for dup, first in expect.duplicate_titles.items():
        assert first < dup and records[dup - 1]["title"].lower() == records[first - 1]["title"].lower()
    result = scan([Source(raw_sample, str(raw_sample), "H")], CurateConfig(workers=1), tmp_path / "w")
    sources = {it.source.rsplit(":", 1)[1] for it in result.store.iter_items(range(len(result.store)))}
    assert {str(n) for n in expect.duplicate_titles.values()} <= sources
    assert not {str(n) for n in expect.duplicate_titles} & sources


def test_dedupe_by_text(records: list[dict], tmp_path: Path):
    """Two listings whose titles differ only in a part number: different titles, the same text."""
    a, b = line(records, 85), line(records, 85)
    a["title"] += " B0ABC12345"
    b["title"] += " B0XYZ67890"
    c = line(records, 126)
    c["title"] = a["title"].replace("B0ABC12345", "b0abc12345!")  # same title once normalized
    path = tmp_path / "meta_Dupes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (a, b, c)))
    result = scan(resolve_sources([path]), CurateConfig(workers=1), tmp_path / "w")
    assert len(result.store) == 1
    assert result.dropped["Dupes"] == {"duplicate_text": 1, "duplicate_title": 1}


# ---------------------------------------------------------------- sampling and splitting


@pytest.fixture(scope="module")
def kept_prices(curated: Path) -> np.ndarray:
    return np.array(sorted(it.price for items in all_items(curated).values() for it in items))


def test_sampler_is_deterministic(kept_prices: np.ndarray):
    cats = ["H"] * len(kept_prices)
    a = sample_indices(kept_prices, cats, CurateConfig(seed=7), 50)
    b = sample_indices(kept_prices, cats, CurateConfig(seed=7), 50)
    c = sample_indices(kept_prices, cats, CurateConfig(seed=8), 50)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == len(set(a.tolist())) == 50
    everything = sample_indices(kept_prices, cats, CurateConfig(seed=7), None)
    assert sorted(everything.tolist()) == list(range(len(kept_prices)))


def test_sampler_flattens_prices(kept_prices: np.ndarray):
    """Most real items cost under $30; the flattened sample takes relatively more expensive ones."""
    cats = ["H"] * len(kept_prices)
    cheap_all = float(np.mean(kept_prices < 30))
    flat, plain = [], []
    for seed in range(20):
        flat.append(np.mean(kept_prices[sample_indices(kept_prices, cats, CurateConfig(seed=seed), 40)] < 30))
        idx = sample_indices(kept_prices, cats, CurateConfig(seed=seed, flatten=0), 40)
        plain.append(np.mean(kept_prices[idx] < 30))
    assert cheap_all > 0.6
    assert np.mean(flat) < cheap_all - 0.15  # clearly thinned
    assert abs(np.mean(plain) - cheap_all) < 0.08  # flatten=0 is a plain random sample
    # every item above $60 (sparse bands, the highest weights) is taken in a sample of 40
    rich = set(np.flatnonzero(kept_prices > 60).tolist())
    assert rich <= set(sample_indices(kept_prices, cats, CurateConfig(seed=0), 40).tolist())


def test_sampler_category_weights(kept_prices: np.ndarray):
    cats = ["A" if i % 2 else "B" for i in range(len(kept_prices))]
    none_b = sample_indices(kept_prices, cats, CurateConfig(category_weights={"B": 0.0}), None)
    assert {cats[i] for i in none_b} == {"A"} and len(none_b) == sum(c == "A" for c in cats)
    more_b = sample_indices(kept_prices, cats, CurateConfig(category_weights={"B": 5.0}), 40)
    assert sum(cats[i] == "B" for i in more_b) > 28


def test_split_counts():
    assert split_counts(127, (0.8, 0.1, 0.1)) == (101, 13, 13)
    assert split_counts(100, (0.5, 0.2, 0.1)) == (50, 20, 10)  # fractions summing < 1 use part of the items
    assert split_counts(127, (100, 10, 5)) == (100, 10, 5)
    with pytest.raises(DataError, match="only 127 survived"):
        split_counts(127, (100, 20, 10))
    with pytest.raises(DataError):
        split_counts(127, (1.5, 0.5, 2.5))


def test_size_and_split_of_outputs(raw_sample: Path, tmp_path: Path, expect: Expected):
    out = tmp_path / "out"
    config = CurateConfig(workers=1, size=60, split=(40, 10, 10), seed=3)
    curate([raw_sample], out, config, charts=False)
    splits = all_items(out)
    assert {s: len(v) for s, v in splits.items()} == {"train": 40, "validation": 10, "test": 10}
    ids = [{it.id for it in v} for v in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    stats = stats_of(out)
    assert stats["kept"] == 60 and stats["not_sampled"] == len(expect.kept) - 60
    assert stats["price"]["kept"]["median"] > stats["price"]["candidates"]["median"]  # flattened
    again = tmp_path / "again"
    curate([raw_sample], again, config, charts=False)
    for s in ("train", "validation", "test"):
        assert (again / f"{s}.jsonl").read_bytes() == (out / f"{s}.jsonl").read_bytes()


def test_fraction_split_is_disjoint_and_complete(curated: Path, expect: Expected):
    splits = all_items(curated)
    ids = [{it.id for it in v} for v in splits.values()]
    assert sum(len(s) for s in ids) == len(set().union(*ids)) == len(expect.kept)


def test_parquet_output(raw_sample: Path, tmp_path: Path, expect: Expected):
    curate([raw_sample], tmp_path, CurateConfig(workers=1), fmt="parquet", charts=False)
    assert sum(len(v) for v in all_items(tmp_path, "parquet").values()) == len(expect.kept)
    with pytest.raises(DataError, match="unknown output format"):
        curate([raw_sample], tmp_path / "x", CurateConfig(workers=1), fmt="csv")


# ---------------------------------------------------------------- parallel, bad lines, resume, report


def test_parallel_equals_serial(raw_sample: Path, tmp_path: Path):
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        curate([raw_sample], out, CurateConfig(workers=workers, chunk_bytes=200_000, size=100), charts=False)
        outs[workers] = out
    for s in ("train", "validation", "test"):
        assert (outs[1] / f"{s}.jsonl").read_bytes() == (outs[2] / f"{s}.jsonl").read_bytes()
    a, b = stats_of(outs[1]), stats_of(outs[2])
    for key in ("records", "dropped", "candidates", "kept", "splits", "by_category", "price"):
        assert a[key] == b[key]


def test_malformed_lines_reported_and_good_records_kept(
    raw_sample: Path, tmp_path: Path, curated: Path, expect: Expected
):
    lines = raw_sample.read_bytes().splitlines(keepends=True)
    bad = {
        11: b"{not json at all\n",
        502: b"[1, 2, 3]\n",
        1003: lines[84][:200] + b"\n",  # a real record cut short (line 85 stays, in its place below)
        1500: b"\xff\xfe garbage \x80\n",
    }
    out_lines, n = [], 0
    for original in lines:
        n += 1
        while n in bad:
            out_lines.append(bad[n])
            n += 1
        out_lines.append(original)
    out_lines.insert(700, b"   \n")  # blank lines are not records and not errors
    path = tmp_path / "meta_Health_and_Personal_Care.jsonl"
    path.write_bytes(b"".join(out_lines))
    out = tmp_path / "out"
    result = curate([path], out, CurateConfig(workers=2, chunk_bytes=300_000), charts=False)
    by_line = {int(e.split(":")[1]): e for e in result.error_examples}
    assert set(by_line) == {11, 502, 1004, 1501}  # the blank line inserted before them shifts the last two
    assert by_line[11] == f"{path}:11: malformed JSON (Expecting property name enclosed in double quotes at column 2)"
    assert by_line[502] == f"{path}:502: expected a JSON object, got list"
    assert "malformed JSON" in by_line[1004] and "malformed JSON" in by_line[1501]
    stats = stats_of(out)
    assert stats["records"] == expect.records + 4 and stats["malformed_lines"] == 4
    assert stats["dropped"]["malformed_json"] == 3 and stats["dropped"]["not_object"] == 1
    assert stats["kept"] == len(expect.kept)
    kept = {it.id for items in all_items(out).values() for it in items}
    assert kept == {it.id for items in all_items(curated).values() for it in items}
    errors_txt = (out / "report" / "errors.txt").read_text().splitlines()
    assert sorted(errors_txt) == sorted(result.error_examples)


def test_interrupted_run_resumes(raw_sample: Path, tmp_path: Path, curated: Path, expect: Expected):
    out = tmp_path / "out"
    config = CurateConfig(workers=1, chunk_bytes=500_000)
    calls = []

    def interrupt_after_three_chunks(done: int, total: int, records: int, kept: int) -> None:
        calls.append(records)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curate([raw_sample], out, config, progress=interrupt_after_three_chunks, charts=False)
    assert not (out / "train.jsonl").exists()
    assert (out / ".partial" / "checkpoints.jsonl").read_text().count("\n") == 3
    result = curate([raw_sample], out, config, charts=False)
    assert 0 < calls[2] < expect.records and result.stats["resumed_from_records"] == calls[2]
    assert result.stats["records"] == expect.records and result.stats["kept"] == len(expect.kept)
    assert result.stats["dropped"] == stats_of(curated)["dropped"]
    for s in ("train", "validation", "test"):
        assert (out / f"{s}.jsonl").read_bytes() == (curated / f"{s}.jsonl").read_bytes()
    assert not (out / ".partial").exists()


def test_blocks_cut_at_any_size_give_the_same_records(
    raw_sample: Path, tmp_path: Path, curated: Path, expect: Expected
):
    """Blocks smaller than a line, CRLF line ends and no newline at the end of the file."""
    data = raw_sample.read_bytes().replace(b"\n", b"\r\n").rstrip()
    path = tmp_path / "meta_Health_and_Personal_Care.jsonl"
    path.write_bytes(data)
    result = curate([path], tmp_path / "out", CurateConfig(workers=1, chunk_bytes=1000), charts=False)
    assert result.stats["records"] == expect.records and result.n_errors == 0
    assert result.stats["kept"] == len(expect.kept)
    for s in ("train", "validation", "test"):
        assert [(it.id, it.source) for it in read_items(tmp_path / "out" / f"{s}.jsonl")] == [
            (it.id, it.source.replace(raw_sample.name, path.name)) for it in read_items(curated / f"{s}.jsonl")
        ]


def test_changed_config_starts_fresh(raw_sample: Path, tmp_path: Path, expect: Expected):
    out = tmp_path / "out"

    def stop(done: int, total: int, records: int, kept: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curate([raw_sample], out, CurateConfig(workers=1, chunk_bytes=500_000), progress=stop, charts=False)
    result = curate([raw_sample], out, CurateConfig(workers=1, chunk_bytes=500_000, min_chars=300), charts=False)
    assert result.stats["resumed_from_records"] == 0
    assert result.stats["dropped"]["too_short"] < expect.too_short


def test_damaged_work_folder_starts_over(raw_sample: Path, tmp_path: Path, curated: Path, expect: Expected):
    out = tmp_path / "out"

    def stop(done: int, total: int, records: int, kept: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curate([raw_sample], out, CurateConfig(workers=1, chunk_bytes=500_000), progress=stop, charts=False)
    (out / ".partial" / "errors.txt").unlink()
    result = curate([raw_sample], out, CurateConfig(workers=1, chunk_bytes=500_000), charts=False)
    assert result.stats["resumed_from_records"] == 0 and result.stats["kept"] == len(expect.kept)
    assert (out / "train.jsonl").read_bytes() == (curated / "train.jsonl").read_bytes()


def test_report_files(raw_sample: Path, tmp_path: Path):
    result = curate([raw_sample], tmp_path, CurateConfig(workers=1))
    report = tmp_path / "report"
    for name in ("stats.json", "report.md", "errors.txt", "price.png", "text_length.png", "categories.png"):
        assert (report / name).exists() and (name == "errors.txt" or (report / name).stat().st_size > 100)
    assert (report / "price.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert "](price.png)" in md and "| too_short | 110 |" in md and "Health_and_Personal_Care" in md
    assert result.stats["text_length"]["kept"]["min"] >= 600
