"""Standard Webhooks signatures (https://www.standardwebhooks.com) on inbound webhooks.

A signed request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>``) over
``id.timestamp.body``, the raw body as sent. The reference library (``standardwebhooks``) makes
the signature; this module adds what it leaves to the caller or does on its own clock: the
timestamp is checked against the injected clock, several secrets verify during a rotation, and
every malformed header is a reason, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from rtserver.errors import InvalidSignature

__all__ = ["TOLERANCE_S", "new_secret", "sign", "verify"]

TOLERANCE_S = 300
"""How far a timestamp may be from now, either way (replays older than this are refused)."""


def new_secret(random_bytes: bytes) -> str:
    """A secret in the ``whsec_`` form senders expect, from 32 random bytes."""
    return "whsec_" + base64.b64encode(random_bytes).decode()


def _signature(secret: str, webhook_id: str, timestamp: int, body: str) -> bytes:
    signed = Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, UTC), body)
    return base64.b64decode(signed.partition(",")[2])


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a request carrying ``body`` (for senders and tests)."""
    signature = base64.b64encode(_signature(secret, webhook_id, timestamp, body.decode()))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature.decode()}",
    }


def _offered(header: str) -> list[bytes]:
    """The v1 signatures of a ``webhook-signature`` header (other versions are skipped)."""
    found = []
    for item in header.split():
        version, _, value = item.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            continue
    return found


def verify(
    secrets: Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = TOLERANCE_S,
) -> str:
    """Check a webhook's signature and freshness; return its ``webhook-id``.

    ``headers`` is case-insensitive (Starlette's); ``body`` the raw bytes as received.

    Raises:
        InvalidSignature: a header missing or malformed, a timestamp more than ``tolerance_s``
            from ``now``, a body that is not UTF-8, or no signature made with any of ``secrets``.
    """
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    header = headers.get("webhook-signature", "")
    if not (webhook_id and stamp and header):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise InvalidSignature("webhook-timestamp must be Unix seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        raise InvalidSignature(f"webhook-timestamp more than {tolerance_s:g} s from now")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise InvalidSignature("body is not UTF-8") from None
    offered = _offered(header)
    for secret in secrets:
        expected = _signature(secret, webhook_id, timestamp, text)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return webhook_id
    raise InvalidSignature("no valid signature")
