"""Training pools from several files, and the retrieval index: no leakage, exact against FAISS, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest

from appraiser.data.io import DataError, pool_files, read_items, read_pool, write_items

# ---------------------------------------------------------------- --train: several files or a folder


def test_pool_of_a_folder_reads_its_train_files_never_validation(data_dir: Path):
    files = pool_files(data_dir)
    assert files[0] == data_dir / "train.jsonl" and data_dir / "extra" / "train.jsonl" in files
    assert all(f.name.startswith("train.") for f in files)  # validation.jsonl and raw/ are never read


def test_pool_of_several_files_is_one_pool_without_repeats(data_dir: Path, tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "sub" / "b.jsonl"
    items = read_items(data_dir / "train.jsonl", limit=30)
    write_items(items[:20], a)
    write_items(items[10:], b)  # 10 ids in both files
    pool = read_pool([a, b])
    assert [it.id for it in pool] == [it.id for it in items]
    assert pool_files([a, a]) == [a]
    # a folder without train.* files gives its data files, not its validation/test ones
    write_items(items[:3], tmp_path / "sub" / "validation.jsonl")
    assert pool_files(tmp_path / "sub") == [b]


def test_pool_errors_name_the_path(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        read_pool([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training files"):
        pool_files(tmp_path / "empty")
