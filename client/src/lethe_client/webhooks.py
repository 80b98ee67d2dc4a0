"""Checking that a webhook delivery came from Lethe (Standard Webhooks signatures).

    from lethe_client.webhooks import verify

    event = verify(secret, request.headers, request.body)   # raises if forged or stale

The signature is ``v1,`` + base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}." +
body)), the key being the base64 after ``whsec_`` in the endpoint's secret; the
``webhook-signature`` header may carry several, separated by spaces (during a key rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from lethe_client.errors import LetheError

TOLERANCE_SECONDS = 300


class WebhookVerificationError(LetheError):
    """The delivery's signature does not match, or its timestamp is too far from now."""


def sign(secret: str, message_id: str, timestamp: int, body: bytes | str) -> str:
    if isinstance(body, str):
        body = body.encode()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, *,
           tolerance: float = TOLERANCE_SECONDS, now: float | None = None) -> dict[str, Any]:
    """The delivery's event (its JSON body) if its signature is Lethe's and its timestamp
    within ``tolerance`` seconds of ``now``; :class:`WebhookVerificationError` otherwise."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        message_id, stamp = lower["webhook-id"], lower["webhook-timestamp"]
        signatures = lower["webhook-signature"].split()
        timestamp = int(stamp)
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook-* headers") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookVerificationError(f"timestamp {timestamp} is more than {tolerance} s "
                                       "from now (a replay?)")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise WebhookVerificationError("no signature matches: not from this endpoint's "
                                       "secret, or the body was altered")
    return json.loads(body)
