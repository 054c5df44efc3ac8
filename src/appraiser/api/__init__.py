"""The one OpenAI-client layer: every call Appraiser makes to an OpenAI-compatible endpoint goes through here.

`Endpoint` says where (a provider preset, `--base-url`, or `OPENAI_BASE_URL`) and with which key (always read
from the environment, never stored); `ApiClient` wraps the official `openai` SDK (its own retries on 429/5xx
with Retry-After) with a client-side limit on concurrency and requests/tokens per minute, and counts tokens
and dollars (`cost`). Pricers, summaries and hosted jobs all use it, so limits and costs are in one place.
"""

from appraiser.api.client import ApiClient, ApiError, Usage
from appraiser.api.cost import PriceTable, load_prices
from appraiser.api.limits import RateLimiter
from appraiser.api.providers import PROVIDERS, Endpoint, Provider, resolve_endpoint

__all__ = [
    "PROVIDERS",
    "ApiClient",
    "ApiError",
    "Endpoint",
    "PriceTable",
    "Provider",
    "RateLimiter",
    "Usage",
    "load_prices",
    "resolve_endpoint",
]
