"""API keys, request-size caps and request ids, as ASGI middleware so they run before any route.

Keys: `--api-key K` (repeatable) or a keys file of SHA-256 hex digests (`appraiser serve --hash-key K`
prints one), one per line with an optional owner name (`<digest> <owner>`); only digests are kept in
memory, compared in constant time. With keys configured every route but `/health` needs
`Authorization: Bearer K`; the owner a key maps to is `request.state.owner`, which is how later routes keep
one key's files and jobs from another's. Logs carry a request id, method, path, status and time — never a
key or a prompt.
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
from appraiser.server.errors import BodyTooLarge, error_response

log = logging.getLogger("appraiser.server")

OPEN_PATHS = ("/health",)


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
        out[digest] = parts[1] if len(parts) > 1 else f"key{n}"
    if not out:
        raise DataError(f"{p}: no keys in the keys file")
    return out


def key_table(keys: Iterable[str] = (), keys_file: str | Path | None = None) -> dict[str, str]:
    """digest → owner for plain keys (owners key1, key2, …) and a keys file."""
    table = {hash_key(k): f"key{i}" for i, k in enumerate(keys, 1) if k}
    if keys_file is not None:
        table.update(read_keys_file(keys_file))
    return table


class Guard:
    """Request id, key check and body cap for every HTTP request, before routing."""

    def __init__(self, app: ASGIApp, keys: dict[str, str], max_body_bytes: int):
        self.app, self.keys, self.max_body = app, keys, max_body_bytes

    def _owner(self, scope: Scope) -> str | None:
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hash_key(token.strip())
        for known, owner in self.keys.items():
            if hmac.compare_digest(known, digest):
                return owner
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
            if self.keys and path not in OPEN_PATHS:
                owner = self._owner(scope)
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
            await self.app(scope, self._capped(receive), send_with_id)
        finally:
            log.info(
                "%s %s %s %d %.0fms",
                rid,
                scope.get("method"),
                scope.get("path"),
                status_seen["status"],
                (time.perf_counter() - start) * 1000,
            )

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(
            413, f"Request body too large: the limit is {self.max_body:,} bytes.", code="request_too_large"
        )
        await resp(scope, receive, send)

    def _capped(self, receive: Receive) -> Receive:
        """A chunked body (no Content-Length) is counted as it arrives and cut at the cap."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return wrapped
