"""Where Appraiser keeps its state: a project-local folder, like git's `.git`.

`APPRAISER_HOME` overrides it; the default is `.appraiser/` in the current directory. The
leaderboard database, fitted models, prediction caches and run folders all live under it.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state folder (created on first use)."""
    p = Path(os.environ.get("APPRAISER_HOME", ".appraiser"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def default_data_dir() -> Path:
    """Where the shared real data lives unless told otherwise (`APPRAISER_DATA`)."""
    return Path(os.environ.get("APPRAISER_DATA", "../shared/data"))
