"""Data stage: raw Amazon metadata → items → splits, and dataset IO."""

from appraiser.data.io import DataError, LoadError, LoadReport, load_splits, read_items, save_splits, write_items

__all__ = ["DataError", "LoadError", "LoadReport", "load_splits", "read_items", "save_splits", "write_items"]
