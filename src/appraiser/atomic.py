"""Files written so that a kill at any instant leaves either the old file or the new one, never half of one.

Everything Appraiser saves that a later command reads (configs, fitted pricers, items, predictions,
checkpoint markers, uploaded files) goes through `replacing`: write to a temporary name beside the target,
fsync, then `os.replace`, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write instead of `path`; on success it is synced and renamed over `path`, on an
    error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if e.filename is None or os.fspath(e.filename) != os.fspath(tmp) or e.filename2 is not None:
                raise
            # the user gave `path` and never heard of `.path.tmp-…`: the error names the path they gave
            raise type(e)(e.errno, e.strerror, str(path)) from e
        os.replace(tmp, path)  # an error here names both; the CLI shows the target, `path`
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def end_on_whole_line(path: str | Path) -> None:
    """Make a JSON-lines file that is appended to end on a whole line. A kill mid-write leaves half a record
    without its newline; the next append would glue a record onto it and lose both for good, so it is cut off
    (whoever appends sees that record missing and writes it again). A whole JSON object that only lacks its
    newline (a hand-edited file) keeps its place and gets one."""
    import json

    try:
        fh = open(path, "rb+")
    except FileNotFoundError:
        return
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        start = _last_line_start(fh, size)
        fh.seek(start)
        try:
            whole = isinstance(json.loads(fh.read().decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = False
        if whole:
            fh.write(b"\n")
        else:
            fh.truncate(start)


def _last_line_start(fh, size: int, chunk: int = 65536) -> int:
    """Offset where the file's last line begins (read backwards, a chunk at a time)."""
    pos = size
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        i = fh.read(step).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0
