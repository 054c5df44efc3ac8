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
from urllib.parse import unquote, unquote_plus

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


#: Query parameters whose values only steer the service (formats, modes, retries) or name a mailbox: shown as
#: they are. Every other value is masked: a header (`+Authorization=`, `+X-Api-Key=`), a payload field
#: (`:key=`), a GET parameter (`-key=`) or a plugin option we do not know may all hold a token.
_HARMLESS_PARAMS = frozenset(
    {
        "format", "overflow", "method", "mode", "priority", "image", "avatar", "footer", "footer_logo", "tts",
        "fields", "batch", "timestamp", "blocks", "detect", "silent", "preview", "album", "content", "mdv",
        "sound", "auth", "verify", "retry", "wait", "optional", "cto", "rto", "smtp", "from", "to", "cc",
        "bcc", "name", "lang", "tz",
    }
)  # fmt: skip

#: Query parameters Apprise writes into every URL it prints: noise in a log line.
_DEFAULT_PARAMS = frozenset({"overflow", "retry", "wait", "optional", "cto", "rto", "method", "format", "verify"})

#: A host name or address (`hooks.example.com`, `127.0.0.1`, `[::1]`, `localhost`), or a token Apprise has
#: already shortened (`1...7`); anything else in the host's place is a token (`ntfy://mytopic`, a bot id).
_HOSTNAME = re.compile(r"^(\[[0-9a-f:.]+\]|localhost|[a-z0-9-]*(\.[a-z0-9-]*)+)$", re.IGNORECASE)

MASK = "****"


_quiet = threading.local()


#: The secret parts of every URL being sent right now, in any thread (Apprise sends from a worker thread of
#: its own, so what it logs cannot be matched to our thread): each with how many sends use it.
_sending_now: dict[str, int] = {}
_sending_lock = threading.Lock()


class _Guard(logging.Filter):
    """Apprise logs a URL it cannot parse in full ("Unparseable URL mailto://user:password@…"), and at DEBUG
    the URL it posts to ("JSON POST URL: http://host/hook/TOKEN"), as urllib3 does ("POST /hook/TOKEN"). While
    this thread parses a URL those lines are dropped; while any thread sends to one, the URL's secret parts
    are masked in them. The filter sits on the loggers themselves, so it holds whatever handlers the app adds."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_quiet, "on", False):
            return False
        with _sending_lock:
            secrets = sorted(_sending_now, key=len, reverse=True)
        if secrets:
            text = record.getMessage()
            masked = scrub(text, secrets)
            if masked != text:
                record.msg, record.args = masked, None
        return True


for _name in ("apprise", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_Guard())


@contextlib.contextmanager
def _parsing() -> Iterator[None]:
    """Drop what Apprise logs while this thread parses a URL (see `_Guard`)."""
    before = getattr(_quiet, "on", False)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = before


@contextlib.contextmanager
def _sending(url: str) -> Iterator[None]:
    """Mask `url`'s secret parts in what Apprise and urllib3 log while it is being sent (see `_Guard`)."""
    parts = secret_parts(url)
    with _sending_lock:
        for part in parts:
            _sending_now[part] = _sending_now.get(part, 0) + 1
    try:
        yield
    finally:
        with _sending_lock:
            for part in parts:
                _sending_now[part] -= 1
                if not _sending_now[part]:
                    del _sending_now[part]


def instantiate(url: str) -> object | None:
    """Apprise's plugin for `url`, or None, without Apprise logging the URL."""
    import apprise

    with _parsing():
        return apprise.Apprise.instantiate(url)


def redact(url: str) -> str:
    """The URL as it may be shown, logged and stored: scheme, host and port, the user name, the names of
    the query parameters; every other part masked.

    Why not Apprise's privacy view alone: it masks what each plugin declares secret, and the generic
    webhooks (`json://`, `form://`, `xml://`) declare nothing but the password, so a token in their path or
    in a header (`?+Authorization=Bearer …`) came out whole. So Apprise's view (when it knows the scheme:
    it already shortens a Discord or Telegram token in the host's place) is masked again by one rule for
    any URL: path segments and query values are masked unless the parameter is known to be harmless.
    """
    base = url
    try:
        obj = instantiate(url)
        if obj is not None:
            base = obj.url(privacy=True)
    except Exception:  # noqa: BLE001 - redaction must never fail; mask the URL as given
        pass
    try:
        return _mask(base)
    except Exception:  # noqa: BLE001 - an URL too odd to take apart is not shown at all
        return f"{scheme(url) or '?'}://{MASK}"


def _split(url: str) -> tuple[str, str, str, str, str, str, str]:
    """(scheme, user, password, host, port, path, query+fragment) of any `scheme://...` string, by hand:
    Apprise URLs put tokens where `urlsplit` expects a port (`tgram://123:ABC/`) and would raise."""
    sch, sep, rest = url.partition("://")
    if not sep:
        return "", "", "", "", "", "", url
    cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    path, query = tail, ""
    for mark in ("?", "#"):
        if mark in path:
            path, query = path[: path.index(mark)], tail[tail.index(mark) :]
            break
    userinfo, at, hostport = netloc.rpartition("@")
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    if hostport.startswith("["):
        host, _, port = hostport.partition("]")
        host, port = host + "]", port.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    return sch, user, password, host, port, path, query


def _mask(url: str) -> str:
    sch, user, password, host, port, path, query = _split(url)
    if not sch:
        return MASK
    shown_host = host if _HOSTNAME.match(host) else (MASK if host else "")
    shown_port = f":{port}" if port.isdigit() else (f":{MASK}" if port else "")
    userinfo = (user + (f":{MASK}" if password else "") + "@") if (user or password) else ""
    segments = path.split("/")
    shown_path = "/".join(MASK if seg else "" for seg in segments)
    query, _, fragment = query.lstrip("?").partition("#")
    params = []
    for part in query.split("&"):
        if not part:
            continue
        key, eq, _value = part.partition("=")
        name = unquote(key)
        if name in _DEFAULT_PARAMS:
            continue
        if not eq:
            params.append(MASK)
        elif name.lower() in _HARMLESS_PARAMS:
            params.append(part)
        else:
            params.append(f"{name}={MASK}")
    shown = f"{sch}://{userinfo}{shown_host}{shown_port}{shown_path}"
    return shown + ("?" + "&".join(params) if params else "") + (f"#{MASK}" if fragment else "")


def secret_parts(url: str) -> list[str]:
    """The pieces of `url` that `redact` masks (password, host token, path segments, query values), as
    written and percent-decoded, longest first: what `scrub` takes out of a service's error text."""
    sch, _user, password, host, port, path, query = _split(url)
    parts = [password, path.strip("/")]
    if not _HOSTNAME.match(host):
        parts.append(host)
    if port and not port.isdigit():
        parts.append(port)
    parts += path.split("/")
    query, _, fragment = query.lstrip("?").partition("#")
    parts.append(fragment)
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if not eq:
            parts.append(key)
        elif unquote(key).lower() not in _HARMLESS_PARAMS:
            parts += [value, *value.split("%20"), *value.split("+")]
    out = {p for piece in parts if len(piece) >= 3 for p in (piece, unquote(piece), unquote_plus(piece))}
    return sorted((p for p in out if len(p) >= 3), key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every one of `secrets` (longest first) replaced by the mask."""
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


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
        hidden = secret_parts(url)
        t0 = time.monotonic()
        attempts, error = 0, None
        for attempt in range(retries + 1):
            attempts = attempt + 1
            try:
                with _sending(url):
                    ok, error = _send_once(url, title, body, files)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not reach training
                ok, error = False, f"{type(e).__name__}: {e}"
            if error is not None:  # a service's error text may quote the URL it was given
                error = scrub(error, hidden)
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
