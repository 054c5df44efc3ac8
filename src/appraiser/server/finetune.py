"""The OpenAI fine-tuning API (`/v1/fine_tuning/jobs*`) on top of Appraiser's own trainer."""

from __future__ import annotations

from typing import Any


def install(app: Any, store: Any, pool: Any, settings: Any) -> None:
    """Add this module's routes to `app` (and, if needed, a lifespan hook to `app.state.lifespan_hooks`)."""
