"""Webhooks for fine-tuning jobs, signed per Standard Webhooks as OpenAI signs them.

`fine_tuning.job.succeeded|failed|cancelled` events, `{id, object: "event", type, created_at, data: {id}}`,
POSTed to `--webhook-url` with `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">` keyed by the `whsec_` secret (base64 after the prefix), so the official SDK's
`client.webhooks.unwrap(body, headers, secret=...)` verifies them. The event id is derived from the job and
its status: a retry, or a resend after a restart, carries the same id, so a receiver can drop duplicates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

log = logging.getLogger("appraiser.server")

EVENT_TYPES = {s: f"fine_tuning.job.{s}" for s in ("succeeded", "failed", "cancelled")}


def new_secret() -> str:
    """A fresh `whsec_` secret (32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(_key(secret), f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def job_event(job_id: str, status: str, at: int | None = None) -> dict[str, Any]:
    eid = "evt_" + hashlib.sha256(f"{job_id}:{status}".encode()).hexdigest()[:24]
    return {
        "id": eid,
        "object": "event",
        "type": EVENT_TYPES[status],
        "created_at": int(at or time.time()),
        "data": {"id": job_id},
    }


def deliver(url: str, secret: str | None, event: dict[str, Any], tries: int = 5, timeout: float = 10.0) -> bool:
    """POST one event, retrying with backoff on failure (non-2xx or no connection); True once delivered."""
    import httpx

    body = json.dumps(event, separators=(",", ":"))
    delay = 0.5
    for attempt in range(1, tries + 1):
        ts = int(time.time())  # re-signed per try: a receiver rejects stale timestamps
        headers = {"content-type": "application/json", "webhook-id": event["id"], "webhook-timestamp": str(ts)}
        if secret:
            headers["webhook-signature"] = sign(secret, event["id"], ts, body)
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=timeout)
            if 200 <= r.status_code < 300:
                return True
            log.warning(
                "webhook %s for %s: HTTP %d (try %d)", event["type"], event["data"]["id"], r.status_code, attempt
            )
        except httpx.HTTPError as e:
            log.warning("webhook %s for %s: %s (try %d)", event["type"], event["data"]["id"], type(e).__name__, attempt)
        if attempt < tries:
            time.sleep(delay)
            delay *= 2
    return False
