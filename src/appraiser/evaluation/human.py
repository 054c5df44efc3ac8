"""Guesses made outside Appraiser — by a person or another tool — scored like any pricer.

A human baseline answers "is the model better than a careful person?": `export_human` writes test
items to a CSV with an empty price column; whoever fills it in needs nothing but a spreadsheet.
`read_guesses` reads such a CSV, or any CSV/JSONL of (item id or exact text) → guess, including
Appraiser's own predictions JSONL, and `match_guesses` lines the guesses up with a test set.
A blank or unreadable guess is a failure, counted and shown, never a zero. A CSV saved by Excel
need not be UTF-8: it is read as UTF-8 (with or without a BOM), else as Windows-1252, else Latin-1,
with a warning saying which.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appraiser.data.io import DataError, LoadError, iter_json_lines
from appraiser.items import MAX_SANE_PRICE, Item
from appraiser.pricers.base import Prediction

ID_COLUMNS = ("id", "item_id")
TEXT_COLUMNS = ("text", "prompt", "description")
PRICE_COLUMNS = ("price", "guess", "prediction", "predicted_price", "estimate")
#: Tried in order for a CSV: UTF-8 (a BOM is dropped), then what Excel writes on Windows, then Latin-1
#: (which decodes any bytes, so it is the last resort).
CSV_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")

log = logging.getLogger(__name__)


@dataclass
class Guess:
    """One row of an external file: which item (id and/or text) and the guess as written."""

    line: int
    id: str | None
    text: str | None
    value: str | float | None


@dataclass
class MatchReport:
    """How an external file lined up with the test set."""

    matched_by_id: int = 0
    matched_by_text: int = 0
    unmatched: list[int] = field(default_factory=list)  # file lines that match no test item
    duplicates: list[int] = field(default_factory=list)  # file lines for an item already guessed
    missing: int = 0  # test items with no guess (scored as failures)
    unreadable: int = 0  # guesses that are not a price (scored as failures)
    blank: int = 0  # empty guesses (scored as failures)


def export_human(items: Sequence[Item], path: str | Path) -> Path:
    """Write items as a CSV (id, title, text, price) with the price column left empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "text", "price"])
        for it in items:
            w.writerow([it.id, it.title or "", it.text, ""])
    return path


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lower = {c.strip().lower(): c for c in columns if c}
    return next((lower[n] for n in names if n in lower), None)


def read_guesses(path: str | Path) -> list[Guess]:
    """Rows of a CSV or JSONL file with an id or text column and a price/guess column."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a .csv, .tsv or .jsonl file")
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json")):
        bad: list[LoadError] = []
        rows = [(line, rec) for line, rec in iter_json_lines(path, bad)]
        if bad:  # a guess on an unreadable line would drop its item from the score without a trace
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"{bad[0]}{more}; fix the file and import it again (nothing was recorded)")
        columns = sorted({k for _, rec in rows for k in rec})
    elif name.endswith((".csv", ".tsv")):
        reader = csv.DictReader(
            io.StringIO(read_csv_text(path), newline=""), delimiter="\t" if name.endswith(".tsv") else ","
        )
        try:
            columns = list(reader.fieldnames or [])
            rows = [(i, rec) for i, rec in enumerate(reader, start=2)]
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not a readable CSV ({e})") from e
    else:
        raise DataError(f"{path}: unknown format; use .csv, .tsv or .jsonl")
    id_col, text_col = _pick(columns, ID_COLUMNS), _pick(columns, TEXT_COLUMNS)
    price_cols = _price_columns(columns)
    if not price_cols:
        raise DataError(f"{path}: no price column (expected one of: {', '.join(PRICE_COLUMNS)})")
    if id_col is None and text_col is None:
        raise DataError(f"{path}: no id or text column to match items by")

    def get(rec: dict, col: str | None) -> str | None:
        v = rec.get(col) if col else None
        return None if v is None or str(v).strip() == "" else str(v).strip()

    def guess(line: int, rec: dict) -> str | float | None:
        """The row's one filled price cell: the exported `price` left empty and a `guess` column filled in
        is that guess; two different filled ones are refused, since either could be the one meant."""
        filled = [(c, rec[c]) for c in price_cols if get(rec, c) is not None]
        if len({str(v).strip() for _, v in filled}) > 1:
            shown = ", ".join(f"{c}={v!r}" for c, v in filled)
            raise DataError(f"{path}:{line}: two price columns hold values ({shown}); keep one of them")
        return filled[0][1] if filled else rec.get(price_cols[0])

    return [Guess(line, get(rec, id_col), get(rec, text_col), guess(line, rec)) for line, rec in rows]


def _price_columns(columns: Sequence[str]) -> list[str]:
    """The file's price-like columns, in `PRICE_COLUMNS` order."""
    lower = {c.strip().lower(): c for c in columns if c}
    return [lower[n] for n in PRICE_COLUMNS if n in lower]


def read_csv_text(path: Path) -> str:
    """A CSV's text: UTF-8 if it is, else the first of `CSV_ENCODINGS` that decodes it (with a warning)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return data.decode(CSV_ENCODINGS[0])
    except UnicodeDecodeError as e:
        bad = e
    for encoding in CSV_ENCODINGS[1:]:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        log.warning(
            "%s:%d: not UTF-8 (byte 0x%02x); read the file as %s",
            path,
            data.count(b"\n", 0, bad.start) + 1,
            data[bad.start],
            "Windows-1252 (what Excel saves on Windows)" if encoding == "cp1252" else "Latin-1",
        )
        return text
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


_NEGATIVE = re.compile(r"^\s*\$?\s*[-−]\s*\$?\s*[\d.]")
_SCIENTIFIC = re.compile(r"\d\s*[eE]\s*[-+]?\d")
#: How people write one amount: US thousands ("1,299.99"), space thousands ("1 000"), a European decimal comma
#: ("1.299,00", "1,5": a comma followed by one or two digits is never a US thousands separator), plain ("45.5"),
#: each with an optional "k" (thousands: "2k", "1.5k").
_AMOUNT = (
    r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?"
    r"|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?:\.\d+)?"
    r"|\d{1,3}(?:\.\d{3})+,\d{1,2}|\d+,\d{1,2}"
    r"|\d+(?:\.\d+)?|\.\d+)(?:\s*k)?"
)
_ONE_AMOUNT = re.compile(_AMOUNT, re.IGNORECASE)
_AMOUNT_RANGE = re.compile(rf"({_AMOUNT})\s*(?:-|–|—|to|and)\s*({_AMOUNT})", re.IGNORECASE)
_EUROPEAN = re.compile(r"\d{1,3}(?:\.\d{3})+,\d{1,2}|\d+,\d{1,2}")
#: The cell's core runs from its first digit to its last (and a "k" right after it); the words around it
#: ("about", "dollars", "Price is") are dropped, but anything between two numbers must be a range's dash.
_CORE = re.compile(r"\.?\d(?:.*\d)?(?:\s*k(?![a-z]))?", re.IGNORECASE | re.DOTALL)


def _amount(token: str) -> float:
    token = token.strip()
    scale = 1000.0 if token[-1] in "kK" else 1.0
    number = token.rstrip("kK").strip()
    if _EUROPEAN.fullmatch(number):
        number = number.replace(".", "").replace(",", ".")
    else:
        number = re.sub(r"[,\s]", "", number)
    return float(number) * scale


def read_guess_text(text: str) -> float | None:
    """A price as a person types it into a cell, or None when the cell is not one amount or one range.

    Unlike the model-text parser (which finds the first number in a sentence), the whole cell must be read:
    "2k" is $2,000 and "1 000" is $1,000, never $2 or $1; a range ("20-30", "between 20 and 30") is its
    midpoint; words around the number ("about 45 dollars") are fine, but a cell with anything else between
    its numbers ("45 (was 50)") is unreadable, counted as a failure rather than guessed at."""
    m = _CORE.search(text.replace("$", " "))
    if m is None:
        return None
    core = m.group(0).strip()
    if _ONE_AMOUNT.fullmatch(core):
        return _amount(core)
    r = _AMOUNT_RANGE.fullmatch(core)
    if r:
        lo, hi = _amount(r.group(1)), _amount(r.group(2))
        return (lo + hi) / 2 if hi >= lo else None
    return None


def to_prediction(value: str | float | None) -> Prediction:
    """A guess cell as a Prediction: numbers as they are, text as a person writes a price (`read_guess_text`).

    A guess that is no price is a failure (counted, its cell kept in `raw`), never another number: zero or
    negative ("-5" is not $5), not finite, beyond any product's price (`MAX_SANE_PRICE`: "1e308" is not $1,
    and one such guess would make the MAE astronomical), or text that is not one amount or one range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Prediction(price=None, raw=None)
    if isinstance(value, bool):
        return Prediction(price=None, raw=json.dumps(value))
    if isinstance(value, int | float):
        price = _sane(float(value))
        return Prediction(price=price, raw=None if price is not None else str(value))
    text = str(value)
    if _NEGATIVE.search(text):
        return Prediction(price=None, raw=text)
    if _SCIENTIFIC.search(text):
        try:
            number: float | None = float(text.strip().lstrip("$").replace(",", "").strip())
        except ValueError:
            number = None
    else:
        number = read_guess_text(text)
    return Prediction(price=None if number is None else _sane(number), raw=text)


def _sane(v: float) -> float | None:
    return v if math.isfinite(v) and 0 < v <= MAX_SANE_PRICE else None


def match_guesses(items: Sequence[Item], guesses: Sequence[Guess]) -> tuple[list[Prediction], MatchReport]:
    """One prediction per test item: matched by id, else by exact (whitespace-trimmed) text.

    Test items without a guess are failures; file rows that match no test item are listed.
    """
    by_id = {it.id: i for i, it in enumerate(items)}
    by_text: dict[str, int] = {}
    for i, it in enumerate(items):
        by_text.setdefault(it.text.strip(), i)
    out: list[Prediction | None] = [None] * len(items)
    rep = MatchReport()
    for g in guesses:
        i = by_id.get(g.id) if g.id else None
        if i is not None:
            how = "id"
        else:
            i = by_text.get(g.text) if g.text else None
            how = "text"
        if i is None:
            rep.unmatched.append(g.line)
            continue
        if out[i] is not None:
            rep.duplicates.append(g.line)
            continue
        pred = to_prediction(g.value)
        out[i] = pred
        if how == "id":
            rep.matched_by_id += 1
        else:
            rep.matched_by_text += 1
        if pred.price is None:
            if pred.raw is None:
                rep.blank += 1
            else:
                rep.unreadable += 1
    rep.missing = sum(p is None for p in out)
    return [p if p is not None else Prediction(price=None, raw="(no guess)") for p in out], rep


def guessed_items(items: Sequence[Item], guesses: Sequence[Guess]) -> list[Item]:
    """The test items a file has rows for, in test-set order (a human scores only what was exported)."""
    ids = {g.id for g in guesses if g.id}
    texts = {g.text for g in guesses if g.text}
    return [it for it in items if it.id in ids or it.text.strip() in texts]
