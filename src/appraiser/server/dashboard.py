"""The web dashboard of `appraiser serve`: runs, live loss charts, the leaderboard."""

from __future__ import annotations

from typing import Any


def install(app: Any, store: Any, pool: Any, settings: Any) -> None:
    """Add this module's routes to `app` (and, if needed, a lifespan hook to `app.state.lifespan_hooks`)."""
