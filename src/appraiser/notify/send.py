"""Send one message to notification URLs through Apprise, with retries, never raising.

Apprise gives one URL scheme per service (`mailto://` email, `json://` webhooks, `slack://`, `discord://`,
`tgram://`, `ntfy://`, ...), so nothing here knows any service. What we add: a retry with exponential
backoff per URL, a `Delivery` record per URL (so a caller can log what happened), and URLs shown with
their secrets masked, because a notification URL often holds a password or a token.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Schemes whose messages carry attachments well (the loss-curve PNG goes by email only).
EMAIL_SCHEMES = ("mailto", "mailtos")


@dataclass
class Delivery:
    """What happened to one URL: delivered or not, after how many tries, and the last error."""

    url: str  # redacted: safe to print and store
    ok: bool
    attempts: int
    error: str | None = None
    seconds: float = 0.0


_USERINFO = re.compile(r"^([a-z0-9+.-]+://)([^/@?#]*)@", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"([?&](?:pass|password|token|key|apikey|secret|pw)=)[^&#]*", re.IGNORECASE)


_quiet = threading.local()


class _DropWhileParsing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


_apprise_log = logging.getLogger("apprise")
_apprise_log.addFilter(_DropWhileParsing())


@contextlib.contextmanager
def _parsing() -> Iterator[None]:
    """Apprise logs a URL it cannot parse in full ("Unparseable URL mailto://user:password@…"), secrets and
    all; while this thread parses a URL, those lines are dropped (the caller reports the URL redacted)."""
    before = getattr(_quiet, "on", False)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = before


def instantiate(url: str) -> object | None:
    """Apprise's plugin for `url`, or None, without Apprise logging the URL."""
    import apprise

    with _parsing():
        return apprise.Apprise.instantiate(url)


def redact(url: str) -> str:
    """The URL with its secrets masked (Apprise's own privacy view when it knows the scheme)."""
    try:
        obj = instantiate(url)
        if obj is not None:
            return _without_defaults(obj.url(privacy=True))
    except Exception:  # noqa: BLE001 - redaction must never fail; fall back to the regexes below
        pass

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}{':****' if sep else ''}@"

    masked = _USERINFO.sub(userinfo, url, count=1)
    return _SECRET_QUERY.sub(r"\1****", masked)


#: Query parameters Apprise writes into every URL it prints: noise in a log line.
_DEFAULT_PARAMS = frozenset({"overflow", "retry", "wait", "optional", "cto", "rto", "method", "format", "verify"})


def _without_defaults(url: str) -> str:
    base, sep, query = url.partition("?")
    kept = [p for p in query.split("&") if p and p.partition("=")[0] not in _DEFAULT_PARAMS]
    return base + ("?" + "&".join(kept) if kept else "")


def scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def is_email(url: str) -> bool:
    return scheme(url) in EMAIL_SCHEMES


def check_url(url: str) -> str | None:
    """Why Apprise cannot use `url` (None when it can): checked when a command starts, not when training ends."""

    if "://" not in url:
        return f"{url!r} is not a notification URL (e.g. mailto://user:pass@example.com, json://host/path)"
    if instantiate(url) is None:
        return f"{redact(url)}: Apprise does not accept this URL (unknown scheme or missing parts)"
    return None


def _send_once(url: str, title: str, body: str, attachments: Sequence[Path]) -> tuple[bool, str | None]:
    import apprise

    notifier = apprise.Apprise()
    with _parsing():
        added = notifier.add(url)
    if not added:
        return False, "Apprise does not accept this URL"
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        result = notifier.notify(
            body=body,
            title=title,
            body_format=apprise.NotifyFormat.TEXT,
            attach=[str(a) for a in attachments] or None,
        )
    if result:
        return True, None
    text = captured.getvalue().strip().splitlines()
    return False, (text[-1] if text else "the service did not accept the message")


def send(
    urls: Iterable[str],
    title: str,
    body: str,
    attachments: Sequence[str | Path] = (),
    *,
    retries: int = 3,
    backoff: float = 1.0,
) -> list[Delivery]:
    """Send `title`/`body` (and files) to every URL; one Delivery each. Never raises for an endpoint.

    A URL that fails is tried `retries` more times, waiting `backoff`, 2×`backoff`, 4×`backoff` ... seconds
    between tries. The caller decides where this runs: training calls it from a background thread
    (`RunNotifier`), so a slow or dead endpoint costs the run nothing.
    """
    files = [Path(a) for a in attachments if Path(a).is_file()]
    out = []
    for url in urls:
        shown = redact(url)
        t0 = time.monotonic()
        attempts, error = 0, None
        for attempt in range(retries + 1):
            attempts = attempt + 1
            try:
                ok, error = _send_once(url, title, body, files)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not reach training
                ok, error = False, f"{type(e).__name__}: {e}"
            if ok:
                break
            if attempt < retries:
                time.sleep(backoff * 2**attempt)
        else:
            ok = False
        if not ok:
            log.warning("notification to %s failed after %d tries: %s", shown, attempts, error)
        out.append(Delivery(shown, ok, attempts, None if ok else error, time.monotonic() - t0))
    return out
