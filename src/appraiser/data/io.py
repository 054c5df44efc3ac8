"""Reading and writing items: JSONL (optionally gzipped), Parquet, and Hugging Face datasets.

Bad input never loses good input: a malformed line is reported as `file:line: reason`, counted,
and skipped, and every other line still loads. A `.jsonl.gz` cut short (a killed download, a full
disk) loads every complete record before the break and reports the break the same way, as one more
`file:line: reason`. A file that cannot be read at all (not gzip, not Parquet, a folder, gzip data
named .jsonl) is a `DataError` naming it. A file's first 10 bad records are logged, then a count.
Writes are atomic (temp file + rename), so an interrupted write never leaves a half file where a good
one was.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from appraiser.data.clean import weight_from_details
from appraiser.items import Item

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Endings that make a name a file path, never a hub id: `data/train.jsonl` mistyped is a missing file,
#: not 24 s of hub retries ending in a ConnectionError.
_FILE_ENDINGS = (".jsonl", ".json", ".ndjson", ".gz", ".parquet", ".csv")
GZIP_MAGIC = b"\x1f\x8b"
#: Bad records of one file logged as warnings; the rest are counted in one line (all are in the report).
SHOWN_WARNINGS = 10


class DataError(Exception):
    """A problem with input data or paths, with a message fit to show a user as one line."""


@dataclass
class LoadError:
    """One bad record: where it is and why it was skipped."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LoadReport:
    """What a load did: how many items it kept and the errors it skipped."""

    loaded: int = 0
    errors: list[LoadError] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.errors)


class _FileWarnings:
    """Where the bad records of one file go: every one to `errors` (when given), the first SHOWN_WARNINGS
    also to the log as they are found, the rest only counted, in one line when the file is done. A gzip file
    named .jsonl was 41,088 warning lines on a terminal; `data curate` likewise shows 10 and a count."""

    def __init__(self, path: Path, errors: list[LoadError] | None):
        self.path, self.errors, self.count = str(path), errors, 0

    def append(self, err: LoadError) -> None:
        self.count += 1
        if self.count <= SHOWN_WARNINGS:
            log.warning("%s", err)
        if self.errors is not None:
            self.errors.append(err)

    def close(self) -> None:
        if self.count > SHOWN_WARNINGS:
            log.warning("%s: %s more bad records not shown", self.path, f"{self.count - SHOWN_WARNINGS:,}")


#: A list of errors to add to, a file's capped warnings, or None (log each one).
ErrorSink = list[LoadError] | _FileWarnings | None


@contextmanager
def _file_warnings(path: Path, errors: ErrorSink) -> Iterator[_FileWarnings]:
    """`errors` wrapped for one file (as is when the caller already wrapped it)."""
    if isinstance(errors, _FileWarnings):
        yield errors
        return
    sink = _FileWarnings(path, errors)
    try:
        yield sink
    finally:
        sink.close()


def _default_hint(path: Path) -> str:
    """A hint when a missing file is in the default data folder: a command run from another directory than
    the README's looks for `../shared/data` relative to it, and the fix is a flag or `APPRAISER_DATA`."""
    from appraiser.config import default_data_dir

    if path.parent != default_data_dir():
        return ""
    return f" ({path.parent} is the default data folder: set APPRAISER_DATA to yours, or pass the file's path)"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _check_file(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder{_default_hint(path)}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a .jsonl, .jsonl.gz or .parquet file")
    suffix = _suffix(path)
    if suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unknown file format {suffix or '(no extension)'!r}; use .jsonl, .jsonl.gz or .parquet"
        )
    if suffix in JSONL_SUFFIXES:
        check_compression(path)
    return suffix


def check_compression(path: Path) -> None:
    """A DataError when a JSONL file's name and bytes disagree about gzip.

    Gzip data named `.jsonl` would be read as tens of thousands of lines of binary garbage (a warning each,
    then 0 items); plain text named `.gz` is the wrong file, not a damaged download to salvage the start of.
    Either way nothing useful would load, so say which and how to fix it. An empty file passes (it is empty).
    """
    with open(path, "rb") as f:
        head = f.read(2)
    gz = path.name.lower().endswith(".gz")
    if not gz and head == GZIP_MAGIC:
        raise DataError(f"{path}: is gzip-compressed: name it {path.name}.gz")
    if gz and head and head != GZIP_MAGIC:
        raise DataError(f"{path}: not a readable gzip file (it does not start with the gzip header 1f 8b)")


def json_problem(e: json.JSONDecodeError) -> str:
    """A JSON syntax error as a short reason. Some of json's messages end in "at" already ("Invalid control
    character at"), which read "... at at column 5" when the column was added."""
    return f"malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno})"


def open_text(path: Path) -> IO[str]:
    """Open a .jsonl or .jsonl.gz file for reading text (a damaged .gz raises on read: see `iter_lines`)."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


#: What a damaged gzip stream raises part-way: cut short (EOFError), bad header/CRC (BadGzipFile),
#: garbage in the deflate data (zlib.error).
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def gzip_problem(e: BaseException) -> str:
    """A damaged gzip stream's exception as a short reason."""
    if isinstance(e, EOFError):
        return "file ends early (truncated gzip: the compressed stream stops mid-way)"
    return f"corrupt gzip data ({e})"


def read_available(reader: IO[bytes], size: int) -> tuple[bytes, BaseException | None]:
    """Up to `size` bytes from a (possibly damaged) gzip or plain binary reader, and the gzip error
    that stopped it, if any. Reads with `read1`, so the bytes decompressed before a break are kept
    (a plain `read(size)` that fails part-way loses what it had gathered)."""
    parts: list[bytes] = []
    got = 0
    read1 = getattr(reader, "read1", reader.read)
    while got < size:
        try:
            block = read1(size - got)
        except GZIP_ERRORS as e:
            return b"".join(parts), e
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts), None


def iter_lines(path: Path, errors: ErrorSink = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a .jsonl or .jsonl.gz file, streamed.

    A gzip stream that breaks part-way (truncated, corrupt) yields every whole line before the break,
    then reports the break as `file:line: reason` (the line it cut) and stops. A file that is not
    gzip at all is a DataError.
    """
    if not path.name.lower().endswith(".gz"):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from enumerate(f, start=1)
        return
    with gzip.open(path, "rb") as f:
        carry, lineno = b"", 0
        while True:
            block, broken = read_available(f, 1 << 16)
            if broken is not None and lineno == 0 and not carry and not block and isinstance(broken, gzip.BadGzipFile):
                raise DataError(f"{path}: not a readable gzip file ({broken})") from broken
            data = carry + block
            *whole, carry = data.split(b"\n")
            for raw in whole:
                lineno += 1
                yield lineno, raw.decode("utf-8", errors="replace")
            if broken is not None:
                lineno += 1
                # A record cut exactly at its closing brace is whole: keep it if it parses.
                if carry.strip() and _is_json_object(carry):
                    yield lineno, carry.decode("utf-8", errors="replace")
                    reason = gzip_problem(broken) + f"; {lineno} lines read before it"
                else:
                    reason = gzip_problem(broken) + f"; {lineno - 1} whole lines read before it"
                _report(errors, LoadError(str(path), lineno, reason))
                return
            if not block:
                if carry.strip():
                    yield lineno + 1, carry.decode("utf-8", errors="replace")
                return


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode("utf-8", errors="replace")), dict)
    except (json.JSONDecodeError, RecursionError):
        return False


def iter_json_lines(path: str | Path, errors: ErrorSink = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each JSON object line; bad lines (and a break in a damaged
    .gz) go to `errors`."""
    path = Path(path)
    _check_file(path)
    with _file_warnings(path, errors) as sink:
        for lineno, line in iter_lines(path, sink):
            if lineno == 1 and line.startswith("\ufeff"):  # a byte-order mark, as Windows tools save UTF-8
                line = line[1:]
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                _report(sink, LoadError(str(path), lineno, json_problem(e)))
                continue
            except RecursionError:
                _report(sink, LoadError(str(path), lineno, "malformed JSON (nested too deeply)"))
                continue
            if not isinstance(obj, dict):
                _report(sink, LoadError(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}"))
                continue
            yield lineno, obj


def _report(errors: ErrorSink, err: LoadError) -> None:
    if isinstance(errors, _FileWarnings):
        errors.append(err)
        return
    log.warning("%s", err)
    if errors is not None:
        errors.append(err)


def record_to_item(record: dict[str, Any]) -> Item:
    """An Item from a stored record; derives `weight` from `details` when it is not given."""
    if record.get("weight") is None and record.get("details") is not None:
        record = {**record, "weight": weight_from_details(record["details"])}
    return Item.model_validate(record)


def _validation_reason(e: ValidationError) -> str:
    from appraiser.errors import validation_message  # the one formatter of pydantic errors

    return validation_message(e, "invalid")


def iter_parquet_records(
    path: Path, errors: ErrorSink = None, batch_size: int = 1024
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) of a Parquet file, read a batch at a time (so a `limit` reads little).

    A file Parquet cannot open (truncated, not Parquet, empty) is a DataError naming it; a row group
    that fails to decode part-way reports `file:row: reason` and stops, keeping the rows before it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    row = 0
    batches = pf.iter_batches(batch_size=batch_size)
    with pf:
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError) as e:
                _report(errors, LoadError(str(path), row + 1, f"corrupt Parquet data from here on ({e})"))
                return
            if batch is None:
                return
            for record in batch.to_pylist():
                row += 1
                yield row, record


def iter_items(path: str | Path, errors: ErrorSink = None) -> Iterator[Item]:
    """Stream items from a JSONL(.gz) or Parquet file, skipping (and reporting) bad records."""
    path = Path(path)
    suffix = _check_file(path)
    with _file_warnings(path, errors) as sink:
        records = iter_parquet_records(path, sink) if suffix in PARQUET_SUFFIXES else iter_json_lines(path, sink)
        for i, record in records:
            try:
                yield record_to_item(record)
            except ValidationError as e:
                _report(sink, LoadError(str(path), i, _validation_reason(e)))


def read_items(path: str | Path, report: LoadReport | None = None, limit: int | None = None) -> list[Item]:
    """Load the items of one file (at most `limit`; 0 gives none). Bad records are skipped and listed in
    `report`; a damaged .jsonl.gz gives the records before the break and lists the break too."""
    errors = report.errors if report is not None else None
    items: list[Item] = []
    if limit is not None and limit <= 0:
        _check_file(Path(path))  # a wrong path is still an error, even when nothing is asked for
        return items
    for item in iter_items(path, errors):
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if report is not None:
        report.loaded += len(items)
    return items


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_items(items: Iterable[Item], path: str | Path) -> int:
    """Write items to .jsonl, .jsonl.gz or .parquet (by extension), atomically. Returns the count."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unknown file format {suffix or '(no extension)'!r}; use .jsonl, .jsonl.gz or .parquet"
        )
    tmp = _atomic_path(path)
    n = 0
    try:
        if suffix in PARQUET_SUFFIXES:
            import pyarrow as pa
            import pyarrow.parquet as pq

            records = [_record(it) for it in items]
            n = len(records)
            pq.write_table(pa.Table.from_pylist(records), tmp)
        else:
            opener = (
                gzip.open(tmp, "wt", encoding="utf-8") if suffix == ".jsonl.gz" else open(tmp, "w", encoding="utf-8")
            )
            with opener as f:
                for it in items:
                    f.write(json.dumps(_record(it), ensure_ascii=False) + "\n")
                    n += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def _record(it: Any) -> dict[str, Any]:
    """An item's record to write; a dict is checked as an Item first, so what is written reads back."""
    if isinstance(it, Item):
        return it.to_record()
    if isinstance(it, dict):
        return record_to_item(it).to_record()
    raise TypeError(f"expected Items (or dicts of their fields) to write, got {type(it).__name__}")


# ---------------------------------------------------------------- splits and HF datasets


def find_split_file(folder: Path, split: str) -> Path | None:
    """The file holding `split` in a folder (train.jsonl, train.jsonl.gz, train.parquet, ...).

    Two files of one split (train.jsonl beside train.parquet, say a folder curated again in another
    format) are a DataError: which one is current cannot be told, and reading the stale one silently
    gives old numbers.
    """
    candidates = (folder / f"{split}{suffix}" for suffix in (".jsonl", ".jsonl.gz", ".parquet", ".json"))
    found = [p for p in candidates if p.exists()]
    _refuse_two_formats(found)
    return found[0] if found else None


def _refuse_two_formats(files: list[Path]) -> None:
    """A DataError naming them when `files` (one split of one folder) are more than one."""
    if len(files) > 1:
        names = " and ".join(p.name for p in files)
        raise DataError(f"{files[0].parent}: holds {names}, one split in two files: remove the stale one")


def load_splits(source: str | Path, report: LoadReport | None = None) -> dict[str, list[Item]]:
    """Splits from a local folder (split files or a saved DatasetDict) or a Hugging Face hub id.

    A folder needs at least one of train/validation/test as .jsonl, .jsonl.gz or .parquet. A hub
    id ("owner/name") is loaded with `datasets.load_dataset`, which needs the hub (or its cache).
    """
    path = Path(source)
    if path.exists():
        if path.is_file():
            return {"test": read_items(path, report)}
        if (path / "dataset_dict.json").exists():
            from datasets import load_from_disk

            try:
                dd = load_from_disk(str(path))
            except Exception as e:  # a damaged saved DatasetDict: arrow, JSON and OS errors alike
                raise DataError(f"{path}: not a readable saved dataset ({type(e).__name__}: {e})") from e
            return from_dataset_dict(dd, report)
        splits = {s: read_items(f, report) for s in SPLITS if (f := find_split_file(path, s))}
        if not splits:
            raise DataError(f"{path}: no train/validation/test .jsonl, .jsonl.gz or .parquet files in this folder")
        return splits
    if _looks_like_path(str(source)):
        raise DataError(f"{source}: no such file or folder{_default_hint(path)}")
    if _HUB_ID.match(str(source)):
        return load_hub_splits(str(source), report)
    raise DataError(f"{source}: no such file or folder (nor a hub dataset id like 'owner/name')")


def _looks_like_path(name: str) -> bool:
    """A name that is a path, never a hub id: it starts with ./ ../ / or ends like a data file."""
    return name.startswith((".", "/")) or name.lower().endswith(_FILE_ENDINGS)


def load_hub_splits(repo_id: str, report: LoadReport | None = None) -> dict[str, list[Item]]:
    """Load a dataset of items from the Hugging Face hub (real `datasets.load_dataset`)."""
    try:
        from datasets import load_dataset

        dd = load_dataset(repo_id)
    except Exception as e:  # network, auth, missing repo: one clear line, not a traceback
        raise DataError(f"{repo_id}: could not load from the Hugging Face hub ({type(e).__name__}: {e})") from e
    return from_dataset_dict(dd, report)


def to_dataset_dict(splits: dict[str, list[Item]]):
    """A `datasets.DatasetDict` of the splits, one column per Item field."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({name: Dataset.from_list([it.to_record() for it in items]) for name, items in splits.items()})


def from_dataset_dict(dd, report: LoadReport | None = None) -> dict[str, list[Item]]:
    """Items from a `datasets.DatasetDict` (or a dict of Datasets), skipping invalid rows."""
    out: dict[str, list[Item]] = {}
    for name in dd:
        items = []
        with _file_warnings(Path(f"<dataset:{name}>"), report.errors if report else None) as sink:
            for i, record in enumerate(dd[name], start=1):
                try:
                    items.append(record_to_item(dict(record)))
                except ValidationError as e:
                    _report(sink, LoadError(f"<dataset:{name}>", i, _validation_reason(e)))
        if report is not None:
            report.loaded += len(items)
        out[name] = items
    return out


def save_splits(splits: dict[str, list[Item]], folder: str | Path, fmt: str = "jsonl") -> dict[str, Path]:
    """Write each split to `folder/<split>.<fmt>` (jsonl, jsonl.gz or parquet)."""
    folder = Path(folder)
    paths = {}
    for name, items in splits.items():
        p = folder / f"{name}.{fmt}"
        write_items(items, p)
        paths[name] = p
    return paths


def push_to_hub(splits: dict[str, list[Item]], repo_id: str, private: bool = True, token: str | None = None) -> None:
    """Publish the splits as a dataset repo on the Hugging Face hub."""
    to_dataset_dict(splits).push_to_hub(repo_id, private=private, token=token)


# ---------------------------------------------------------------- training pools from several files


def _is_data_file(path: Path) -> bool:
    return path.is_file() and _suffix(path) in JSONL_SUFFIXES + PARQUET_SUFFIXES


def _split_name(path: Path) -> str:
    name = path.name.lower()
    for s in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return path.stem.lower()


def pool_files(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """The data files a `--train` names: files as given, and for a folder its training files.

    A folder gives every `train.*` split file in it and below it (so `data/` is `data/train.jsonl` plus
    `data/extra/train.jsonl`), or, when it holds none, its own data files except validation and test ones;
    a validation or test split is never read from a folder, so pointing `--train` at the data folder cannot
    leak the split the pricer is measured on. A file named twice counts once.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.is_dir():
            _check_file(path)
            found = [path]
        else:
            found = sorted(
                (p for p in path.rglob("train.*") if _is_data_file(p) and _split_name(p) == "train"),
                key=lambda p: (len(p.relative_to(path).parts), str(p)),
            )
            for parent in {p.parent for p in found}:  # train.jsonl beside train.parquet: which is current?
                _refuse_two_formats([p for p in found if p.parent == parent])
            if not found:
                found = sorted(
                    p for p in path.iterdir() if _is_data_file(p) and _split_name(p) not in ("validation", "test")
                )
            if not found:
                raise DataError(f"{path}: no training files (.jsonl, .jsonl.gz or .parquet) in this folder")
        for p in found:
            if p.resolve() not in {q.resolve() for q in out}:
                out.append(p)
    if not out:
        raise DataError("no training files given")
    return out


def read_pool(
    sources: str | Path | Iterable[str | Path], report: LoadReport | None = None, dedupe: bool = True
) -> list[Item]:
    """The items of every file `pool_files(sources)` names, in order; an id seen twice is kept once.

    This is what each command's `--train` reads, so several files or a folder make one training pool.
    The first item of an id wins; the later ones are counted and logged per file ("b.jsonl: 3 items
    dropped, their id is already in a.jsonl"), as a pool smaller than its files add up to is a surprise.
    """
    items: list[Item] = []
    seen: dict[str, Path] = {}
    for path in pool_files(sources):
        dropped: Counter[Path] = Counter()
        for it in read_items(path, report):
            if dedupe and it.id in seen:
                dropped[seen[it.id]] += 1
                continue
            seen[it.id] = path
            items.append(it)
        for first, n in dropped.items():
            where = "earlier in the same file" if first == path else f"in {first}"
            its = "its id is" if n == 1 else "their ids are"
            log.warning("%s: %s item%s dropped, %s already %s", path, f"{n:,}", "" if n == 1 else "s", its, where)
    return items


def describe_sources(sources: str | Path | Iterable[str | Path]) -> str:
    """A short, readable name for a training pool: one path, or `a + b + c`."""
    if isinstance(sources, (str, Path)):
        return str(sources)
    return " + ".join(str(s) for s in sources)
