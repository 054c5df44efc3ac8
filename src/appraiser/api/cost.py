"""Dollar cost of API calls from a price table that users extend (a JSON file, `$APPRAISER_PRICES`, flags).

Prices are US dollars per million tokens, (input, output), as providers publish them; a model name matches
its longest listed prefix, so `gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`. An unlisted model has an
unknown cost (None), never a made-up $0 — except models served locally (`appraiser serve`, Ollama …),
which users list at 0 or pass `free=True`. The Batch API is half price at OpenAI (`batch=True`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from appraiser.data.io import DataError

#: Published list prices, $ per 1M tokens (input, output). Edit your own copy rather than this table.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "ft:gpt-4o-mini": (0.30, 1.20),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
    "llama-3.3-70b-versatile": (0.59, 0.79),
    # Appraiser's own models, served by `appraiser serve`: they cost the user's electricity only.
    "smollm2-135m": (0.0, 0.0),
    "gemma3-270m": (0.0, 0.0),
}


@dataclass
class PriceTable:
    """Model → ($/1M input, $/1M output), longest-prefix match."""

    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def rate(self, model: str) -> tuple[float, float] | None:
        keys = [k for k in self.prices if model == k or model.startswith(k)]
        return self.prices[max(keys, key=len)] if keys else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float | None:
        """Dollars for one call, None when the model is not in the table."""
        rate = self.rate(model)
        if rate is None:
            return None
        dollars = (prompt_tokens * rate[0] + completion_tokens * rate[1]) / 1e6
        return dollars / 2 if batch else dollars


def load_prices(path: str | Path | None = None, extra: dict[str, tuple[float, float]] | None = None) -> PriceTable:
    """The default table, updated from a JSON file (`{"model": [input, output], ...}`; default
    `$APPRAISER_PRICES`) and then from `extra` (flags)."""
    table = PriceTable()
    path = path or os.environ.get("APPRAISER_PRICES")
    if path:
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{p}: no such price table") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{p}: not a JSON price table ({e})") from None
        table.prices.update(_validated(data, str(p)))
    if extra:
        table.prices.update(_validated(extra, "prices"))
    return table


def _validated(data: object, where: str) -> dict[str, tuple[float, float]]:
    if not isinstance(data, dict):
        raise DataError(f'{where}: a price table is an object {{"model": [input, output]}} in $ per 1M tokens')
    out = {}
    for model, rate in data.items():
        ok = isinstance(rate, list | tuple) and len(rate) == 2 and all(isinstance(x, int | float) for x in rate)
        if not ok or min(rate) < 0:
            raise DataError(f"{where}: {model!r} needs [input, output] dollars per 1M tokens, got {rate!r}")
        out[str(model)] = (float(rate[0]), float(rate[1]))
    return out
