"""Where an OpenAI-compatible endpoint is, and which environment variable holds its key.

Presets name the endpoints users of the course reach for; anything else is `base_url=...`. The key is read
from the environment at call time and never written to disk, logs or a pricer's stored config: a pricer
stores the *name* of the variable (`key_env`), not its value.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from appraiser.data.io import DataError


@dataclass(frozen=True)
class Provider:
    """A named OpenAI-compatible endpoint and what it accepts."""

    name: str
    base_url: str
    key_env: str | None  # None: a local server that takes any key
    #: Accepts a trailing assistant message as the start of its answer ("Price is $").
    prefill: bool = True
    #: Honours `seed` (reproducible sampling where the provider offers it).
    seed: bool = True
    #: Returns `logprobs` / `top_logprobs` on chat completions.
    logprobs: bool = True


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        # Anthropic's and Gemini's OpenAI-compatibility endpoints ignore seed and return no logprobs.
        Provider("anthropic", "https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY", seed=False, logprobs=False),
        Provider(
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "GEMINI_API_KEY",
            seed=False,
            logprobs=False,
        ),
        Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", logprobs=False),
        Provider("ollama", "http://127.0.0.1:11434/v1", None),
        Provider("vllm", "http://127.0.0.1:8000/v1", None),
        Provider("llamacpp", "http://127.0.0.1:8080/v1", None),
        # `appraiser serve` (its default port); the key only when the server was started with one.
        Provider("appraiser", "http://127.0.0.1:8321/v1", "APPRAISER_API_KEY"),
    )
}

#: What the SDK needs as a key for servers that check none (it refuses an empty one).
NO_KEY = "not-needed"


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: URL, the provider's capabilities, and where the key comes from."""

    base_url: str
    provider: Provider
    key_env: str | None

    def api_key(self) -> str:
        """The key, read from the environment now; a clear error when a remote provider needs one."""
        if self.key_env is not None:
            value = os.environ.get(self.key_env)
            if value:
                if self.base_url.startswith("http://") and not _is_loopback(self.base_url):
                    _warn_cleartext(self.base_url, self.key_env)
                return value
            if self.provider.key_env is not None and not _is_loopback(self.base_url):
                raise DataError(f"{self.base_url} needs an API key: set ${self.key_env}")
        return NO_KEY


@functools.cache
def _warn_cleartext(url: str, key_env: str) -> None:
    """Once per endpoint: a key sent over plain http to another machine can be read on the way."""
    logging.getLogger("appraiser.api").warning(
        "%s is plain http:// on another machine: $%s is sent unencrypted (use https://)", url, key_env
    )


def _is_loopback(url: str) -> bool:
    """Whether `url` points at this machine."""
    from urllib.parse import urlparse

    return is_loopback_host(urlparse(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address is this machine: localhost or a loopback address (127.0.0.0/8, ::1; not
    a name like 127.evil.example). The one test for clients (is a key leaving the machine?) and servers (may
    this address be bound without keys?)."""
    import ipaddress

    host = host.strip().lower().strip("[]").rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_endpoint(provider: str | None = None, base_url: str | None = None, key_env: str | None = None) -> Endpoint:
    """Pick the endpoint: explicit `base_url`, else the named preset, else `$OPENAI_BASE_URL`, else OpenAI.

    A `base_url` with no provider borrows a preset's capabilities when it is that preset's URL, else it is
    treated as a generic OpenAI-compatible server (prefill, seed and logprobs assumed; the server ignores
    what it does not support) whose key is `$OPENAI_API_KEY` unless `key_env` names another variable.
    """
    if provider is not None and provider not in PROVIDERS:
        raise DataError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)} (or pass base_url=...)")
    if provider is not None:
        preset = PROVIDERS[provider]
        url = base_url or preset.base_url
    else:
        url = base_url or os.environ.get("OPENAI_BASE_URL") or PROVIDERS["openai"].base_url
        match = [p for p in PROVIDERS.values() if url.rstrip("/") == p.base_url.rstrip("/")]
        preset = match[0] if match else Provider("openai-compatible", url, "OPENAI_API_KEY")
    if not url.startswith(("http://", "https://")):
        raise DataError(f"base_url {url!r} must start with http:// or https://")
    return Endpoint(base_url=url.rstrip("/"), provider=preset, key_env=key_env or preset.key_env)
