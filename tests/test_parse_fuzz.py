"""Fuzzing the raw-record parser: whatever a record holds, the result is an item or a drop reason.

Raw Amazon metadata has every kind of surprise (null prices, details as strings, numbers where
lists should be). Hypothesis builds records from real ones with fields replaced by arbitrary JSON
values, fully random dicts and non-dicts, and whole lines of random bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appraiser.data.curate import (
    RECORD_REASONS,
    Chunk,
    CurateConfig,
    process_chunk,
    record_to_item,
)
from appraiser.items import Item

FIELDS = ("title", "price", "details", "features", "description", "categories", "store")
PART_NUMBER = re.compile(r"(?<![A-Za-z0-9])(?=[A-Z]*\d)[A-Z0-9]{7,}(?![A-Za-z0-9])")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | st.sampled_from(["None", "$1,299.00", "from 9.99", "9.99 - 19.99", "12 Ounces", "{}", '{"Item Weight": "3 kg"}']),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def real_records(raw_sample: Path) -> list[dict]:
    """Some real priced records (they survive unless fuzzing breaks them) and some unpriced ones."""
    with open(raw_sample, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    priced = [r for r in records if r["price"] is not None]
    return priced[:40] + records[:10]


def check(result: object, config: CurateConfig) -> None:
    if isinstance(result, Item):
        assert config.min_price <= result.price <= config.max_price
        assert max(config.min_chars, 1) <= len(result.text) <= config.max_text_chars
        assert "  " not in result.text and not PART_NUMBER.search(result.text)
        assert result.title and result.id
    else:
        assert result in RECORD_REASONS or result == "not_object", result


@FUZZ
@given(data=st.data(), replace=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=4))
def test_real_records_with_fields_replaced(real_records, data, replace):
    record = dict(data.draw(st.sampled_from(real_records)))
    record.update(replace)
    config = CurateConfig()
    check(record_to_item(record, "Fuzz", config), config)


@FUZZ
@given(
    record=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=8),
    min_chars=st.integers(min_value=0, max_value=50),
)
def test_random_records(record, min_chars):
    config = CurateConfig(min_chars=min_chars)
    check(record_to_item(record, None, config), config)


@FUZZ
@given(value=json_values)
def test_non_dicts_and_anything(value):
    result = record_to_item(value)
    assert isinstance(result, Item | str)
    if not isinstance(value, dict):
        assert result == "not_object"


@FUZZ
@given(lines=st.lists(st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v).encode()), max_size=12))
def test_chunks_of_random_lines(lines):
    """A worker never raises on a chunk; every non-blank line is counted as kept, dropped or reported."""
    lines = [ln.replace(b"\n", b" ") + b"\n" for ln in lines]
    chunk = Chunk(0, "fuzz.jsonl", "fuzz.jsonl", "Fuzz", 1, b"".join(lines), CurateConfig(min_chars=0))
    out = process_chunk(chunk)
    assert out.records == sum(1 for ln in lines if ln.strip())
    assert out.records == sum(out.dropped.values()) + len(out.candidates)
    malformed = out.dropped["malformed_json"] + out.dropped["not_object"]
    assert len(out.errors) == malformed
    assert all(re.match(r"fuzz\.jsonl:\d+: ", e) for e in out.errors)
    for c in out.candidates:
        assert isinstance(Item.model_validate_json(c.line), Item)
