"""API keys, request-size caps and request ids, as ASGI middleware so they run before any route.

Keys: `--api-key K` (repeatable) or a keys file of SHA-256 hex digests (`appraiser serve --hash-key K` prints
one), one per line with an optional owner name (`<digest> <owner>`); only digests are kept in memory, compared
in constant time. Owners are what keeps one key's data from another's, so a name is never given twice by
accident: a key with no name owns its data alone (`key-` and its digest's first 12 hex digits, whatever its
position or the other keys), a keys-file owner shaped like such a name, the placeholder older `--hash-key`
printed, or a key given twice is refused at startup. Two lines naming the same owner share it on purpose.
(Before 2026-12-07 plain `--api-key`s were owners `key1`, `key2`, … by position; to keep the data they made,
put their digests in a keys file with those names.)

With keys configured every route but `/health` needs `Authorization: Bearer K`; the owner a key maps to is
`request.state.owner`, which is how later routes keep one key's files and jobs from another's. Logs carry a
request id, method, path, status and time — never a key or a prompt.

Browsers cannot send a Bearer header from a link, so the dashboard has a login page (`/dashboard/login`)
that stores the key in an HttpOnly, SameSite=Strict cookie scoped to `/dashboard`. The cookie is honoured
only for GET/HEAD under `/dashboard` (the dashboard never changes anything), so a page elsewhere can neither
read it nor use it to call the API; a browser that asks for a dashboard page without a key is sent to the
login page instead of getting a JSON 401.
Logging in or out from a page on another site is refused (`SameOrigin`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appraiser.data.io import DataError
from appraiser.server.errors import error_response

log = logging.getLogger("appraiser.server")

#: /dashboard/logout only deletes the browser's cookie, so it needs none (a browser holds no Bearer key).
OPEN_PATHS = ("/health", "/dashboard/login", "/dashboard/logout")
#: Public files of the dashboard (its scripts and styles; no data): the login page needs them.
OPEN_PREFIXES = ("/dashboard/static/",)
DASHBOARD = "/dashboard"
COOKIE = "appraiser_key"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys_file(path: str | Path) -> dict[str, str]:
    """digest → owner from a keys file (lines `<sha256 hex> [owner]`, `#` comments)."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{p}: no such keys file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read keys file ({e})") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        digest = parts[0].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"{p}:{n}: expected a SHA-256 hex digest (appraiser serve --hash-key KEY prints one)")
        if len(parts) > 1 and (parts[1] == PLACEHOLDER_OWNER or _default_name(parts[1])):
            raise DataError(
                f"{p}:{n}: {parts[1]!r} cannot be an owner name ({_why_reserved(parts[1])}): "
                "write who the key belongs to, or nothing for an owner of its own"
            )
        if digest in out:
            raise DataError(f"{p}:{n}: this key is on an earlier line too; give each key once")
        out[digest] = parts[1] if len(parts) > 1 else default_owner(digest)
    if not out:
        raise DataError(f"{p}: no keys in the keys file")
    return out


#: What `--hash-key` printed after the digest before owners were checked; two keys pasted with it shared data.
PLACEHOLDER_OWNER = "owner-name"


def default_owner(digest: str) -> str:
    """The owner of a key that names none: its own, from its digest. Never from its position (`key1`, as
    `--api-key`s once were): a restart with one key fewer would hand the next key the data of the one removed."""
    return f"key-{digest[:12]}"


def _default_name(name: str) -> bool:
    """Whether `name` has the shape of a name given by default (`key-<hex>`), which another key may hold."""
    return name.startswith("key-") and all(c in "0123456789abcdef" for c in name[4:])


def _why_reserved(name: str) -> str:
    if name == PLACEHOLDER_OWNER:
        return "it is the placeholder older `appraiser serve --hash-key` printed"
    return "key-<hex> names are given to keys by default, and another key may already have it"


def key_table(keys: Iterable[str] = (), keys_file: str | Path | None = None) -> dict[str, str]:
    """digest → owner for plain keys (each its own owner, `default_owner`) and a keys file (see the module doc)."""
    table: dict[str, str] = {}
    for k in keys:
        if not k:
            continue
        if hash_key(k) in table:
            raise DataError("the same --api-key is given twice; give each key once")
        table[hash_key(k)] = default_owner(hash_key(k))
    if keys_file is not None:
        from_file = read_keys_file(keys_file)
        both = sorted(set(table) & set(from_file))
        if both:
            raise DataError(f"{keys_file}: a key given with --api-key is in the keys file too; give it once")
        table.update(from_file)
    return table


class Guard:
    """Request id, key check and body cap for every HTTP request, before routing."""

    def __init__(self, app: ASGIApp, keys: dict[str, str], max_body_bytes: int):
        self.app, self.keys, self.max_body = app, keys, max_body_bytes

    def _owner(self, scope: Scope) -> str | None:
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return owner_of(self.keys, token.strip())
        if _dashboard_read(scope):
            key = _cookie(headers.get(b"cookie", b"").decode("latin-1"), COOKIE)
            if key:
                return owner_of(self.keys, key)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = f"req_{uuid.uuid4().hex[:16]}"
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        start = time.perf_counter()
        status_seen = {"status": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            path = scope.get("path", "")
            if self.keys and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
                owner = self._owner(scope)
                if owner is None and _dashboard_read(scope) and _wants_html(scope):
                    await _redirect(f"{DASHBOARD}/login")(scope, receive, send_with_id)
                    return
                if owner is None:
                    resp = error_response(
                        401,
                        "Incorrect or missing API key. Pass it as 'Authorization: Bearer KEY'.",
                        code="invalid_api_key",
                    )
                    await resp(scope, receive, send_with_id)
                    return
                state["owner"] = owner
            elif self.keys:  # an open path: who asks (if anyone) decides what it shows
                state["owner"] = self._owner(scope)
            else:
                state["owner"] = "default"
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self._too_large(scope, receive, send_with_id)
                return
            if length is None and b"transfer-encoding" in headers:  # chunked: size unknown until it is read
                body = await self._read_capped(receive)
                if body is None:
                    await self._too_large(scope, receive, send_with_id)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s %d %.0fms",
                rid,
                _log_field(str(scope.get("method")), 16),
                _log_field(scope.get("path", ""), 300),
                status_seen["status"],
                (time.perf_counter() - start) * 1000,
            )

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(
            413, f"Request body too large: the limit is {self.max_body:,} bytes.", code="request_too_large"
        )
        await resp(scope, receive, send)

    async def _read_capped(self, receive: Receive) -> list[Message] | None:
        """A chunked body's messages, read whole before routing (at most the cap, so little memory); None
        once it passes the cap. Answering 413 here, before any route parses the body, is what keeps it a 413:
        an error raised inside FastAPI's body parsing would become its generic 400."""
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                return None
            if not message.get("more_body", False):
                return messages


#: Host names a loopback-bound server answers to; `--allow-host` adds more (a reverse proxy's public name).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class SameOrigin:
    """Refuses what a web page on another site can make a visitor's browser send to this server.

    * DNS rebinding: a page whose own host name is made to resolve to 127.0.0.1 reads a loopback server
      as same-origin. With `allowed_hosts` (set whenever the server binds loopback) a request whose `Host` is
      not one of them is a 400, so such a page reads nothing.
    * Cross-site writes: a page can POST a form or a no-cors `fetch` to any address (a login that swaps the
      visitor's dashboard key for the attacker's, a file upload to a key-less server). Browsers name the
      page's origin on every such request (`Origin`, or at least `Sec-Fetch-Site`); a request that changes
      anything and comes from another origin is a 403. Clients that are not browsers (the openai SDK, curl)
      send neither header and are unaffected.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None):
        self.app = app
        # bare names (an address like ::1 has no port to split off)
        names = None if allowed_hosts is None else (h.strip().lower().strip("[]").rstrip(".") for h in allowed_hosts)
        self.allowed = None if names is None else frozenset(names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed is not None and _split_host(host)[0] not in self.allowed:
            resp = error_response(
                400,
                "Unknown Host header: this server answers to the names it was started with "
                "(appraiser serve --allow-host NAME adds one).",
                code="invalid_host",
            )
        elif scope.get("method") not in SAFE_METHODS and _cross_site(headers, host, self.allowed):
            resp = error_response(
                403,
                "Cross-site request refused: a page on another site cannot change anything here.",
                code="cross_site_request",
            )
        else:
            await self.app(scope, receive, send)
            return
        await resp(scope, receive, send)


def _split_host(host: str) -> tuple[str | None, int | None]:
    """A `Host` value (`name[:port]`, `[v6]:port`) as (bare name in lower case without a trailing dot, port);
    (None, None) for one that does not parse."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit("//" + host.strip())
        return (url.hostname or "").rstrip("."), url.port
    except ValueError:
        return None, None


def _cross_site(headers: dict[bytes, bytes], host: str, allowed: frozenset[str] | None = None) -> bool:
    """Whether a browser says the request comes from a page of another origin.

    `Sec-Fetch-Site` first: the browser computes it from the page and no page can set it, and it stays right
    behind a reverse proxy that rewrites `Host` (nginx sends `Host: 127.0.0.1:PORT` by default, while the page
    is https://public.example). Browsers without it: `Origin` against `Host`, where an `Origin` naming an
    allowed host (`--allow-host`, the proxy's public name) is this server's own."""
    from urllib.parse import urlsplit

    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if fetch_site:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if origin:
        if origin == "null":  # a sandboxed frame or a local file: never this server's own page
            return True
        try:
            o = urlsplit(origin)
            o_port = o.port
        except ValueError:
            return True
        o_host = (o.hostname or "").rstrip(".")
        if allowed is not None and o_host in allowed and o_host not in LOOPBACK_NAMES:
            return False  # the proxy's public name, named by --allow-host
        name, written = _split_host(host)
        if o_host != name:
            return True
        o_port = o_port if o_port is not None else {"http": 80, "https": 443}.get(o.scheme)
        if written is None:  # a Host without a port is the scheme's default one (either, behind a TLS proxy)
            return o_port not in (80, 443)
        return o_port != written
    return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that hands out the messages already read, then the connection's own (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _log_field(text: str, limit: int) -> str:
    """A request's path as a log field: control characters escaped, so a crafted URL (`%0A`, `%00`) cannot
    forge a log line or make the log binary; cut at `limit` characters."""
    out = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= limit else out[:limit] + "…"


def owner_of(keys: dict[str, str], key: str) -> str | None:
    """The owner of a plain key (constant-time against every digest), or None."""
    digest = hash_key(key)
    found = None
    for known, owner in keys.items():
        if hmac.compare_digest(known, digest):
            found = owner
    return found


def _dashboard_read(scope: Scope) -> bool:
    path = scope.get("path", "")
    return scope.get("method") in ("GET", "HEAD") and (path == DASHBOARD or path.startswith(DASHBOARD + "/"))


def _wants_html(scope: Scope) -> bool:
    accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
    return "text/html" in accept


def _cookie(header: str, name: str) -> str | None:
    from http.cookies import CookieError, SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def _redirect(location: str) -> ASGIApp:
    from starlette.responses import RedirectResponse

    return RedirectResponse(location, status_code=303)
