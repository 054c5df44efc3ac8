"""Curation: raw Amazon-Reviews-2023 metadata records → clean, deduplicated, price-flattened splits.

The pipeline, as the course does it but reusable and configurable (every threshold is a field of
`CurateConfig`):

1. **Record → item** (`record_to_item`): keep $0.50 ≤ price ≤ $999.49; text = title + description +
   features + details (minus noise keys), part-number-like tokens stripped, whitespace collapsed,
   each field capped at 3,000 chars and the whole at 4,000; too-short texts dropped; weight in
   pounds from "Item Weight". A record that can't become an item gives a drop *reason*, never an
   exception, so one odd record never stops a 1.6M-record run.
2. **Scan** (`scan`): stream the input in blocks of whole lines through a process pool (JSON
   parsing and text cleaning are the cost, so they happen in the workers), take results back in
   input order and dedupe by title and by text in the parent. Only the kept items are stored, on
   disk (`<out>/.partial/kept.jsonl`), with a few numbers per kept item in memory, so memory does
   not grow with the input, only (slowly) with what is kept. After each chunk a checkpoint is
   appended; an interrupted run resumes from the last one.
3. **Sample and split** (`sample_indices`, `split_counts`): a seeded weighted sample that flattens
   the price distribution (and weights categories), then a seeded train/validation/test split.
4. **Write** (`curate`): the splits (atomically) and a stats report (`appraiser.data.report`).

Sources are local `.jsonl`/`.jsonl.gz` files or `hub:<Category>`, which downloads the raw
`raw/meta_categories/meta_<Category>.jsonl` file of McAuley-Lab/Amazon-Reviews-2023 (recent
`datasets` releases refuse that dataset's loading script, so the raw file is read directly).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import shutil
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appraiser.data.clean import parse_details, parse_price, weight_from_details
from appraiser.data.io import (
    JSONL_SUFFIXES,
    DataError,
    check_compression,
    gzip_problem,
    json_problem,
    read_available,
    write_items,
)
from appraiser.items import MAX_PRICE, MIN_PRICE, Item, make_id

log = logging.getLogger(__name__)

HUB_REPO = "McAuley-Lab/Amazon-Reviews-2023"
HUB_PREFIX = "hub:"
OUTPUT_FORMATS = ("jsonl", "jsonl.gz", "parquet")
SPLIT_NAMES = ("train", "validation", "test")

# Why a record was dropped, in the order the checks run.
LINE_REASONS = ("malformed_json", "not_object")
RECORD_REASONS = ("no_price", "price_out_of_range", "no_title", "too_short", "invalid")
DEDUPE_REASONS = ("duplicate_title", "duplicate_text")
REASONS = LINE_REASONS + RECORD_REASONS + DEDUPE_REASONS

DEFAULT_NOISE_KEYS = (
    "Part Number",
    "Manufacturer Part Number",
    "Best Sellers Rank",
    "Batteries Included?",
    "Batteries Required?",
    "Item model number",
)


class CurateConfig(BaseModel):
    """Every threshold of the curation. The record-stage fields decide which records survive;
    the rest decide how many of the survivors are kept and how they are split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # record stage
    min_price: float = MIN_PRICE
    max_price: float = MAX_PRICE
    min_chars: int = Field(default=600, ge=0, description="drop items whose text is shorter than this")
    max_field_chars: int = Field(
        default=3000, ge=1, description="cap on each field: title, description, features, details"
    )
    max_text_chars: int = Field(default=4000, ge=1, description="cap on the whole text")
    noise_keys: tuple[str, ...] = DEFAULT_NOISE_KEYS
    part_number_min_len: int = Field(default=7, ge=2, description="shortest token taken for a part number")
    # sampling and splitting
    size: int | None = Field(default=None, ge=0, description="how many items to keep; None keeps all")
    seed: int = 42
    band_width: float = Field(default=10.0, gt=0, description="width in dollars of the price bands flattened")
    flatten: float = Field(default=1.0, ge=0, description="0 keeps the price distribution, 1 makes bands equal")
    category_weights: dict[str, float] = Field(default_factory=dict, description="sampling weight per category")
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # execution
    workers: int = Field(default=2, ge=1)
    chunk_bytes: int = Field(default=4_000_000, ge=1, description="bytes of whole lines per work unit")

    @field_validator("category_weights")
    @classmethod
    def _finite_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        """A NaN weight compares false to everything, so `< 0` let it through and it silently left a
        category out (NaN keys never win the sample); inf would crowd out every other category."""
        for name, w in weights.items():
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weight of {name!r} is {w}: expected a finite number >= 0")
        return weights

    def record_stage(self) -> dict[str, Any]:
        """The fields that decide a record's fate: a resumed run must use the same ones."""
        keys = (
            "min_price",
            "max_price",
            "min_chars",
            "max_field_chars",
            "max_text_chars",
            "noise_keys",
            "part_number_min_len",
        )
        return {k: getattr(self, k) for k in keys}


# ---------------------------------------------------------------- record → item

_WS = re.compile(r"\s+")
_KEY_WS = re.compile(r"[\s:?]+")
_TITLE_KEY = re.compile(r"[\W_]+")
_PART_NUMBERS: dict[int, re.Pattern[str]] = {}


def _part_number_re(min_len: int) -> re.Pattern[str]:
    """Tokens of `min_len`+ uppercase letters and digits, at least one a digit (ASINs, SKUs, UPCs)."""
    if min_len not in _PART_NUMBERS:
        _PART_NUMBERS[min_len] = re.compile(rf"(?<![A-Za-z0-9])(?=[A-Z]*\d)[A-Z0-9]{{{min_len},}}(?![A-Za-z0-9])")
    return _PART_NUMBERS[min_len]


def strip_part_numbers(text: str, min_len: int = 7) -> str:
    """Remove part-number-like tokens: they are noise to a pricer and bloat the token budget."""
    return _part_number_re(min_len).sub("", text)


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def clean_field(text: str, config: CurateConfig) -> str:
    """One field made ready for the text: part numbers out, whitespace collapsed, capped."""
    return collapse_whitespace(strip_part_numbers(text, config.part_number_min_len))[: config.max_field_chars].strip()


def as_text(value: Any) -> str:
    """Text from a field that should be a string or a list of strings but may be anything.

    Strings and numbers are kept, lists are flattened, dicts and other objects are ignored: a
    wrong type means "no usable text here", not an error.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        return str(value) if math.isfinite(value) else ""
    if isinstance(value, list | tuple):
        return " ".join(t for v in value if (t := as_text(v)))
    return ""


def _norm_key(key: str) -> str:
    return _KEY_WS.sub(" ", key.lower()).strip()


@lru_cache(maxsize=32)
def _noise_set(noise_keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_norm_key(n) for n in noise_keys)


def is_noise_key(key: str, noise_keys: Sequence[str]) -> bool:
    """Case-insensitive match of a details key against the noise list; any "... part number" too."""
    k = _norm_key(key)
    return k.endswith("part number") or k in _noise_set(tuple(noise_keys))


def details_text(details: dict[Any, Any], noise_keys: Sequence[str], part_number_min_len: int = 7) -> str:
    """Details as "Key: value; Key: value", without the noise keys and without entries whose value
    was nothing but a part number (a bare "UPC: " teaches nothing)."""
    parts = []
    for key, value in details.items():
        k = as_text(key)
        if not k or is_noise_key(k, noise_keys):
            continue
        v = collapse_whitespace(strip_part_numbers(as_text(value), part_number_min_len))
        if v:
            parts.append(f"{k}: {v}")
    return "; ".join(parts)


def build_text(record: dict[str, Any], details: dict[Any, Any], config: CurateConfig) -> str:
    """Title, description, features and details, one cleaned and capped field per line."""
    fields = (
        as_text(record.get("title")),
        as_text(record.get("description")),
        as_text(record.get("features")),
        details_text(details, config.noise_keys, config.part_number_min_len),
    )
    text = "\n".join(c for f in fields if (c := clean_field(f, config)))
    return text[: config.max_text_chars].strip()


def record_price(value: Any) -> float | None:
    """A usable price from a raw `price` field, or None (numbers and strings only)."""
    if not isinstance(value, str | int | float):
        return None
    try:
        price = parse_price(value)
    except (ValueError, OverflowError):
        return None
    return price if price is not None and math.isfinite(price) else None


def record_weight(details: dict[Any, Any]) -> float | None:
    try:
        w = weight_from_details(details)
    except (ValueError, OverflowError):
        return None
    return w if w is not None and math.isfinite(w) and w > 0 else None


def record_to_item(
    record: Any, category: str | None = None, config: CurateConfig | None = None, source: str | None = None
) -> Item | str:
    """An `Item` from one raw metadata record, or the reason it was dropped (one of `RECORD_REASONS`
    or "not_object"). Never raises on odd input."""
    config = config or CurateConfig()
    if not isinstance(record, dict):
        return "not_object"
    price = record_price(record.get("price"))
    if price is None:
        return "no_price"
    if not config.min_price <= price <= config.max_price:
        return "price_out_of_range"
    title = collapse_whitespace(as_text(record.get("title")))
    if not title:
        return "no_title"
    details = parse_details(record.get("details"))
    text = build_text(record, details, config)
    if len(text) < max(config.min_chars, 1):
        return "too_short"
    try:
        return Item(
            id=make_id(title, text),
            title=title,
            category=category,
            text=text,
            price=price,
            weight=record_weight(details),
            source=source,
        )
    except ValidationError:
        return "invalid"


def title_key(title: str | None) -> int:
    """A 64-bit hash of the normalized title (case, punctuation and spacing ignored)."""
    return _hash64(_TITLE_KEY.sub(" ", (title or "").lower()).strip())


def text_key(text: str) -> int:
    return _hash64(" ".join(text.lower().split()))


def _hash64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


# ---------------------------------------------------------------- sources


def category_key(category: str | None) -> str:
    """The name a category goes by in counts and reports (None becomes "(none)")."""
    return category if category else "(none)"


@dataclass(frozen=True)
class Source:
    """One input file: where it is, what to call it in messages, and its category."""

    path: Path
    label: str
    category: str | None


_CATEGORY_FROM_NAME = re.compile(r"^(?:raw_)?meta_([A-Za-z0-9_&-]+)")


def category_from_name(path: Path) -> str | None:
    """ "meta_Health_and_Personal_Care.sample.jsonl" → "Health_and_Personal_Care"."""
    m = _CATEGORY_FROM_NAME.match(path.name)
    return m.group(1) if m else None


def hub_filename(category: str) -> str:
    return f"raw/meta_categories/meta_{category}.jsonl"


def download_category(category: str, cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """The raw metadata file of one category from the hub (downloaded once, then cached)."""
    if not re.fullmatch(r"[A-Za-z0-9_&-]+", category):
        raise DataError(f"{HUB_PREFIX}{category}: not a category name (e.g. hub:Appliances)")
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(
            repo_id=HUB_REPO,
            repo_type="dataset",
            filename=hub_filename(category),
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=local_files_only,
        )
    except Exception as e:  # network, unknown category, auth: one clear line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"{HUB_PREFIX}{category}: could not download {hub_filename(category)} from {HUB_REPO} "
            f"({type(e).__name__}: {first})"
        ) from e
    return Path(path)


def resolve_sources(inputs: Sequence[str | Path], category: str | None = None) -> list[Source]:
    """Check every input before any work starts: a typo fails in a second, not after an hour."""
    if not inputs:
        raise DataError("no input given: pass raw metadata .jsonl/.jsonl.gz files or hub:<Category>")
    sources = []
    for given in inputs:
        s = str(given)
        if s.startswith(HUB_PREFIX):
            cat = s[len(HUB_PREFIX) :]
            path = download_category(cat)
            sources.append(Source(path, f"{HUB_REPO}/{hub_filename(cat)}", category or cat))
            continue
        path = Path(given)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            raise DataError(f"{path}: is a folder, expected a raw metadata .jsonl or .jsonl.gz file")
        name = path.name.lower()
        if not name.endswith(JSONL_SUFFIXES):
            fmt = "".join(path.suffixes[-2:]) or "(no extension)"
            raise DataError(f"{path}: unknown file format {fmt!r}; raw metadata must be .jsonl or .jsonl.gz")
        check_compression(path)  # plain text named .gz (or gzip named .jsonl) is the wrong file, not damage
        sources.append(Source(path, str(path), category or category_from_name(path)))
    return sources


# ---------------------------------------------------------------- chunks (run in worker processes)


@dataclass
class Chunk:
    """A block of whole consecutive lines of one source, sent to a worker as one bytes object
    (cheap to pickle: the parent only cuts blocks at newlines and counts them)."""

    source_index: int
    label: str
    item_source: str
    category: str | None
    first_line: int
    data: bytes
    config: CurateConfig
    end_line: int = 0  # line number after the chunk
    end_byte: int = 0  # uncompressed offset after the chunk (where a resumed run seeks to)
    end_raw: int = 0  # on-disk offset after the chunk (for progress)
    broken: str | None = None  # `file:line: reason` when a damaged .gz stops after this chunk


@dataclass
class Candidate:
    """An item that passed the record checks, serialized in the worker; keys for dedupe."""

    title_key: int
    text_key: int
    price: float
    text_len: int
    line: bytes


@dataclass
class ChunkResult:
    records: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


def process_chunk(chunk: Chunk) -> ChunkResult:
    """Parse and curate one chunk of lines. Malformed lines become `file:line: reason` messages."""
    out = ChunkResult()
    if chunk.broken:
        out.errors.append(chunk.broken)
    lines = chunk.data.split(b"\n")
    if chunk.data.endswith(b"\n"):
        lines.pop()
    for offset, raw in enumerate(lines):
        if not raw.strip():
            continue
        lineno = chunk.first_line + offset
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as Windows tools save UTF-8
            raw = raw[3:]
        out.records += 1
        try:
            obj = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            out.dropped["malformed_json"] += 1
            out.errors.append(f"{chunk.label}:{lineno}: {json_problem(e)}")
            continue
        except (ValueError, RecursionError) as e:
            out.dropped["malformed_json"] += 1
            out.errors.append(f"{chunk.label}:{lineno}: malformed JSON ({type(e).__name__})")
            continue
        if not isinstance(obj, dict):
            out.dropped["not_object"] += 1
            out.errors.append(f"{chunk.label}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        result = record_to_item(obj, chunk.category, chunk.config, f"{chunk.item_source}:{lineno}")
        if isinstance(result, str):
            out.dropped[result] += 1
            continue
        line = (json.dumps(result.to_record(), ensure_ascii=False) + "\n").encode("utf-8")
        out.candidates.append(
            Candidate(title_key(result.title), text_key(result.text), result.price, len(result.text), line)
        )
    return out


# ---------------------------------------------------------------- the store of kept items


class KeptStore:
    """Kept items on disk (one JSON line each) plus, in memory, only what sampling and dedupe need:
    offset, price, text length and category per item, and two sets of 64-bit keys."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets = array("q")
        self.prices = array("d")
        self.text_lens = array("l")
        self.category_ids = array("l")
        self.categories: list[str | None] = []
        self._category_index: dict[str | None, int] = {}
        self.titles: set[int] = set()
        self.texts: set[int] = set()
        self._f: IO[bytes] | None = None
        self.size = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def open(self, truncate_to: int | None = None) -> None:
        """Open for appending; with `truncate_to`, first cut the file back and reload what it holds."""
        if truncate_to is None:
            self._f = open(self.path, "wb")
            self.size = 0
            return
        with open(self.path, "r+b") as f:
            f.truncate(truncate_to)
        with open(self.path, "rb") as f:
            pos = 0
            for line in f:
                rec = json.loads(line)
                self._add(rec.get("title"), rec["text"], rec["price"], rec.get("category"), pos)
                pos += len(line)
        self._f = open(self.path, "ab")
        self.size = truncate_to

    def _add(self, title: str | None, text: str, price: float, category: str | None, offset: int) -> None:
        self.titles.add(title_key(title))
        self.texts.add(text_key(text))
        self._append_meta(offset, price, len(text), category)

    def _append_meta(self, offset: int, price: float, text_len: int, category: str | None) -> None:
        if category not in self._category_index:
            self._category_index[category] = len(self.categories)
            self.categories.append(category)
        self.offsets.append(offset)
        self.prices.append(price)
        self.text_lens.append(text_len)
        self.category_ids.append(self._category_index[category])

    def add(self, c: Candidate, category: str | None) -> str | None:
        """Store a candidate unless it duplicates a kept one; returns the drop reason if it does."""
        if c.title_key in self.titles:
            return "duplicate_title"
        if c.text_key in self.texts:
            return "duplicate_text"
        assert self._f is not None, "store not open"
        self.titles.add(c.title_key)
        self.texts.add(c.text_key)
        self._append_meta(self.size, c.price, c.text_len, category)
        self._f.write(c.line)
        self.size += len(c.line)
        return None

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def category_of(self, i: int) -> str | None:
        return self.categories[self.category_ids[i]]

    def iter_items(self, indices: Sequence[int]) -> Iterator[Item]:
        """The stored items at `indices`, in that order, read back one at a time."""
        with open(self.path, "rb") as f:
            for i in indices:
                f.seek(self.offsets[int(i)])
                yield Item.model_validate_json(f.readline())


# ---------------------------------------------------------------- scan: stream, curate, dedupe, checkpoint


@dataclass
class ScanResult:
    store: KeptStore
    sources: list[Source]
    records: Counter[str]  # per category
    dropped: dict[str, Counter[str]]  # per category: reason → count
    n_errors: int
    error_examples: list[str]
    errors_path: Path
    seconds: float
    resumed_from: int = 0  # records already done by an earlier, interrupted run


ProgressFn = Callable[[int, int, int, int], None]  # (bytes done, bytes in all, records done, kept)
MAX_ERROR_EXAMPLES = 20


def _open_binary(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(line reader, raw file) — the raw file's position drives the progress bar for .gz too."""
    raw = open(path, "rb")
    if path.name.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def _chunks(
    sources: list[Source], config: CurateConfig, start: tuple[int, int, int], base_raw: list[int]
) -> Iterator[Chunk]:
    """Chunks of lines from the sources, starting at (source index, line, uncompressed byte)."""
    start_source, start_line, start_byte = start
    for si in range(start_source, len(sources)):
        src = sources[si]
        item_source = src.label if src.label != str(src.path) else src.path.name
        reader, raw = _open_binary(src.path)
        with raw, reader:
            line_no, pos = 1, 0
            if si == start_source and start_byte:
                reader.seek(start_byte)
                line_no, pos = start_line, start_byte
            carry = b""
            while True:
                block, damage = read_available(reader, config.chunk_bytes)
                if damage is not None:  # a damaged .gz: keep the whole lines before the break, report it
                    data = carry + block
                    body = data[: data.rfind(b"\n") + 1]
                    n_lines = body.count(b"\n")
                    yield Chunk(
                        si,
                        src.label,
                        item_source,
                        src.category,
                        line_no,
                        body,
                        config,
                        end_line=line_no + n_lines,
                        end_byte=pos + len(body),
                        end_raw=base_raw[si] + raw.tell(),
                        broken=f"{src.label}:{line_no + n_lines}: {gzip_problem(damage)}; the lines before it are kept",
                    )
                    break
                if not block and not carry:
                    break
                data = carry + block
                cut = data.rfind(b"\n") + 1 if block else len(data)  # at the end: a last, unterminated line
                if cut == 0:
                    carry = data  # no newline yet: a very long line, keep reading
                    continue
                body, carry = data[:cut], data[cut:]
                n_lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
                yield Chunk(
                    si,
                    src.label,
                    item_source,
                    src.category,
                    line_no,
                    body,
                    config,
                    end_line=line_no + n_lines,
                    end_byte=pos + len(body),
                    end_raw=base_raw[si] + raw.tell(),
                )
                line_no += n_lines
                pos += len(body)


def _mp_context() -> BaseContext:
    """fork on Linux: workers start at once with the modules already imported, and scripts that call
    `curate` need no `if __name__ == "__main__"` guard. The pool forks at the first submit, before
    the progress bar starts its thread. Elsewhere, spawn (fork is unsafe on macOS)."""
    if sys.platform.startswith("linux") and "fork" in get_all_start_methods():
        return get_context("fork")
    return get_context("spawn")


def _collect(chunk: Chunk, future: Future[ChunkResult]) -> tuple[Chunk, ChunkResult]:
    result = future.result()
    chunk.data = b""  # only now: the pool pickles the chunk in a background thread
    return chunk, result


def _results(chunks: Iterator[Chunk], workers: int) -> Iterator[tuple[Chunk, ChunkResult]]:
    """Chunk results in input order; at most 2 chunks per worker in flight (bounded memory)."""
    if workers <= 1:
        for chunk in chunks:
            yield chunk, process_chunk(chunk)
        return
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
    pending: deque[tuple[Chunk, Future[ChunkResult]]] = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, executor.submit(process_chunk, chunk)))
            if len(pending) >= 2 * workers:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _fingerprint(sources: list[Source], config: CurateConfig) -> str:
    state = {
        "sources": [[s.label, s.category, s.path.stat().st_size, s.path.stat().st_mtime_ns] for s in sources],
        "config": config.record_stage(),
    }
    return hashlib.sha1(json.dumps(state, sort_keys=True, default=list).encode()).hexdigest()


def _last_checkpoint(path: Path) -> dict[str, Any] | None:
    last = None
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    last = json.loads(line)
                except json.JSONDecodeError:
                    break  # a checkpoint cut short by the interruption
    return last


def scan(
    sources: list[Source],
    config: CurateConfig,
    work_dir: Path,
    resume: bool = True,
    progress: ProgressFn | None = None,
) -> ScanResult:
    """Stream every source through the record checks and dedupe, keeping survivors in `work_dir`.

    Resumable: after each chunk the kept items and errors are flushed and a checkpoint line is
    appended to `work_dir/checkpoints.jsonl`. A rerun with the same inputs and record-stage config
    continues after the last checkpoint; anything else starts fresh.
    """
    t0 = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    manifest, ckpt_path = work_dir / "manifest.json", work_dir / "checkpoints.jsonl"
    errors_path = work_dir / "errors.txt"
    fp = _fingerprint(sources, config)
    store = KeptStore(work_dir / "kept.jsonl")
    records: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = {}
    n_errors, examples = 0, []
    start = (0, 1, 0)
    errors_file: IO[bytes] | None = None
    ckpt = None
    try:
        if resume and manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") == fp:
            ckpt = _last_checkpoint(ckpt_path)
        if ckpt is not None:
            store.open(truncate_to=ckpt["kept_bytes"])
            with open(errors_path, "r+b") as ef:
                ef.truncate(ckpt["errors_bytes"])
            with open(errors_path, encoding="utf-8") as ef:
                examples = [ln.rstrip("\n") for _, ln in zip(range(MAX_ERROR_EXAMPLES), ef, strict=False)]
            errors_file = open(errors_path, "ab")
            records.update(ckpt["records"])
            dropped = {k: Counter(v) for k, v in ckpt["dropped"].items()}
            n_errors = ckpt["errors"]
            start = (ckpt["source"], ckpt["line"], ckpt["byte"])
    except (OSError, ValueError, KeyError, TypeError) as e:  # damaged work folder: start over
        log.warning("%s: cannot resume (%s: %s); starting over", work_dir, type(e).__name__, e)
        store.close()
        store = KeptStore(work_dir / "kept.jsonl")
        records, dropped, n_errors, examples, start, ckpt = Counter(), {}, 0, [], (0, 1, 0), None
    if ckpt is None:
        for p in (ckpt_path, errors_path):
            p.unlink(missing_ok=True)
        manifest.write_text(json.dumps({"fingerprint": fp, "record_stage": config.record_stage()}, default=list))
        store.open()
        errors_file = open(errors_path, "wb")
    assert errors_file is not None
    resumed_from = sum(records.values())

    sizes = [s.path.stat().st_size for s in sources]
    base_raw = [sum(sizes[:i]) for i in range(len(sources))]
    try:
        with open(ckpt_path, "a", encoding="utf-8") as ckpt_file:
            for chunk, res in _results(_chunks(sources, config, start, base_raw), config.workers):
                cat = category_key(chunk.category)
                records[cat] += res.records
                drops = dropped.setdefault(cat, Counter())
                drops.update(res.dropped)
                for c in res.candidates:
                    if reason := store.add(c, chunk.category):
                        drops[reason] += 1
                if res.errors:
                    errors_file.write("".join(e + "\n" for e in res.errors).encode("utf-8"))
                    examples.extend(res.errors[: max(0, MAX_ERROR_EXAMPLES - len(examples))])
                    n_errors += len(res.errors)
                store.flush()
                errors_file.flush()
                ckpt_file.write(
                    json.dumps(
                        {
                            "source": chunk.source_index,
                            "line": chunk.end_line,
                            "byte": chunk.end_byte,
                            "kept_bytes": store.size,
                            "errors_bytes": errors_file.tell(),
                            "errors": n_errors,
                            "records": records,
                            "dropped": dropped,
                        }
                    )
                    + "\n"
                )
                ckpt_file.flush()
                if progress:
                    progress(chunk.end_raw, sum(sizes), sum(records.values()), len(store))
    finally:
        store.close()
        errors_file.close()
    if progress:
        progress(sum(sizes), sum(sizes), sum(records.values()), len(store))
    return ScanResult(
        store,
        sources,
        records,
        dropped,
        n_errors,
        examples,
        errors_path,
        time.perf_counter() - t0,
        resumed_from,
    )


# ---------------------------------------------------------------- sample and split


def sampling_weights(prices: np.ndarray, categories: Sequence[str | None], config: CurateConfig) -> np.ndarray:
    """Per-item weights: (items in its price band)^-flatten × its category's weight.

    With flatten=1 every populated band has the same total weight, so a weighted sample takes
    roughly as many items from each band as it can: cheap items, which dominate Amazon, are thinned
    and expensive ones kept — the course's way of not training a model that always guesses $20.
    """
    bands = np.floor(prices / config.band_width).astype(np.int64)
    counts = np.bincount(bands)
    w = counts[bands].astype(np.float64) ** -config.flatten
    if config.category_weights:
        cw = np.array([config.category_weights.get(category_key(c), 1.0) for c in categories], dtype=np.float64)
        w *= cw
    return w


def sample_indices(
    prices: Sequence[float], categories: Sequence[str | None], config: CurateConfig, size: int | None = None
) -> np.ndarray:
    """A seeded weighted sample without replacement of `size` indices (all of them when None),
    in random order. Exponential-race sampling (Efraimidis–Spirakis): item i gets key E_i / w_i
    with E_i ~ Exp(1); the smallest keys win."""
    rng = np.random.default_rng(config.seed)
    p = np.asarray(prices, dtype=np.float64)
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    w = sampling_weights(p, categories, config)
    eligible = np.flatnonzero(w > 0)
    keys = rng.exponential(size=n)
    if size is None or size >= len(eligible):
        chosen = eligible
    else:
        order = np.argsort(keys[eligible] / w[eligible], kind="stable")
        chosen = eligible[order[:size]]
    return rng.permutation(chosen)


def parse_split(text: str) -> tuple[float, float, float]:
    """ "0.8,0.1,0.1" (fractions) or "8000,1000,1000" (counts) → a 3-tuple; DataError if malformed."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(not math.isfinite(x) or x < 0 for x in parts):
        raise DataError(f"--split {text!r}: expected three non-negative numbers, e.g. 0.8,0.1,0.1 or 8000,500,500")
    if not any(parts):
        raise DataError(f"--split {text!r}: all three are 0, so every split would be empty; e.g. 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def split_counts(n: int, split: Sequence[float]) -> tuple[int, int, int]:
    """Sizes of train/validation/test for `n` items. Values summing to ≤ 1 are fractions (when
    they sum to 1, train takes the rounding remainder); whole numbers are counts."""
    if len(split) != 3 or any(x < 0 for x in split):
        raise DataError(f"split {tuple(split)}: expected three non-negative numbers")
    if not any(split):
        raise DataError(f"split {tuple(split)}: all three are 0, so every split would be empty")
    total = sum(split)
    if total <= 1 + 1e-9:
        val, test = round(n * split[1]), round(n * split[2])
        train = n - val - test if abs(total - 1) < 1e-9 else round(n * split[0])
        return max(train, 0), val, test
    if any(x != int(x) for x in split):
        raise DataError(f"split {tuple(split)}: fractions must sum to at most 1; counts must be whole numbers")
    counts = tuple(int(x) for x in split)
    if sum(counts) > n:
        raise DataError(f"split {counts} asks for {sum(counts)} items but only {n} survived curation")
    return counts  # type: ignore[return-value]


def split_indices(indices: np.ndarray, split: Sequence[float]) -> dict[str, np.ndarray]:
    """Cut already-shuffled indices into train/validation/test (disjoint by construction)."""
    n_train, n_val, n_test = split_counts(len(indices), split)
    return {
        "train": indices[:n_train],
        "validation": indices[n_train : n_train + n_val],
        "test": indices[n_train + n_val : n_train + n_val + n_test],
    }


# ---------------------------------------------------------------- the whole pipeline


@dataclass
class CurateResult:
    out_dir: Path
    paths: dict[str, Path]
    report_paths: dict[str, Path]
    stats: dict[str, Any]
    error_examples: list[str]
    n_errors: int


def curate(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: CurateConfig | None = None,
    category: str | None = None,
    fmt: str = "jsonl",
    resume: bool = True,
    progress: ProgressFn | None = None,
    charts: bool = True,
) -> CurateResult:
    """Raw metadata files → `out_dir/{train,validation,test}.<fmt>` and `out_dir/report/`.

    Work in progress lives in `out_dir/.partial/` and is removed once the outputs are written, so
    an interrupted run can be resumed by running the same call again.

    A run that would keep nothing (bad input, every record dropped, weights or --size that sample
    none) is a DataError saying why, and writes nothing: empty splits over a good earlier curation
    would lose it. Split files of another format from an earlier run in `out_dir` are removed once
    the new ones are written, as readers could not tell which is current.
    """
    config = config or CurateConfig()
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"--format {fmt!r}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")
    split_counts(10**12, config.split)  # a malformed split fails now, not after the long scan
    sources = resolve_sources(inputs, category)
    out_dir = Path(out_dir)
    work_dir = out_dir / ".partial"
    result = scan(sources, config, work_dir, resume=resume, progress=progress)
    store = result.store

    prices = np.frombuffer(store.prices, dtype=np.float64) if len(store) else np.zeros(0)
    categories = [store.category_of(i) for i in range(len(store))]
    present = sorted({category_key(c) for c in store.categories})
    if unknown := sorted(set(config.category_weights) - set(present)):
        log.warning(
            "--category-weight %s: not a category of the input, so it does nothing (categories: %s)",
            ", ".join(unknown),
            ", ".join(present) or "none kept",
        )
    chosen = sample_indices(prices, categories, config, config.size)
    parts = split_indices(chosen, config.split)
    if not any(len(ix) for ix in parts.values()):
        if not len(store):  # nothing a rerun could reuse: leave no trace of this run in out_dir
            shutil.rmtree(work_dir, ignore_errors=True)
            if out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise DataError(f"{_why_nothing_kept(result, config, present)}; nothing written to {out_dir}")
    paths = {}
    for name in SPLIT_NAMES:
        p = out_dir / f"{name}.{fmt}"
        write_items(store.iter_items(parts[name]), p)
        paths[name] = p
    for other in set(OUTPUT_FORMATS) - {fmt}:  # an earlier run's splits in another format are stale now
        for name in SPLIT_NAMES:
            (out_dir / f"{name}.{other}").unlink(missing_ok=True)

    from appraiser.data import report

    stats = report.build_stats(result, config, parts, fmt)
    report_paths = report.write_report(stats, result, parts, out_dir / "report", charts=charts)
    shutil.rmtree(work_dir, ignore_errors=True)
    return CurateResult(out_dir, paths, report_paths, stats, result.error_examples, result.n_errors)


def _why_nothing_kept(result: ScanResult, config: CurateConfig, present: list[str]) -> str:
    """Why a curation kept no item, in one line: no records, every record dropped (the top reasons and
    the first problem found), or a sample of none from the candidates (size, weights, split)."""
    n_records = sum(result.records.values())
    first = f"; first problem: {result.error_examples[0]}" if result.error_examples else ""
    if n_records == 0:
        labels = ", ".join(s.label for s in result.sources)
        return f"{labels}: no records in the input (an empty file?){first}"
    if not len(result.store):
        reasons: Counter[str] = Counter()
        for drops in result.dropped.values():
            reasons.update(drops)
        top = ", ".join(f"{r} {n:,}" for r, n in reasons.most_common(3))
        hint = ""
        if reasons["malformed_json"] + reasons["not_object"] == n_records:
            hint = " (raw metadata must be JSON Lines: one JSON object per line)"
        every = "the one record was" if n_records == 1 else f"all {n_records:,} records were"
        return f"nothing kept: {every} dropped ({top}){hint}{first}"
    candidates = len(result.store)
    if config.size == 0:
        return f"nothing kept: --size 0 of {candidates:,} candidates"
    if config.category_weights and all(config.category_weights.get(c, 1.0) == 0 for c in present):
        return f"nothing kept: every category of the {candidates:,} candidates has weight 0 ({', '.join(present)})"
    return f"nothing kept: --split {','.join(f'{x:g}' for x in config.split)} of {candidates:,} candidates is none"
