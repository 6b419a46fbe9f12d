"""Relay webhooks as Mailgun and SendGrid send them, at a fixed time: Mailgun bodies signed
with an HMAC key (:func:`mailgun_body`, :func:`failed` for a failure event), SendGrid requests
signed with an ECDSA key (:func:`sendgrid_request`, :func:`public_b64` for the key as configured)
and a batch of SendGrid events (:data:`SENDGRID_EVENTS`); the sample payloads of
``tests/fixtures`` (:func:`fixture`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rtserver.mail.providers import SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP

NOW = 1_800_000_000
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"


def mailgun_body(event: dict[str, Any], *, at: int = NOW, key: str = MAILGUN_KEY) -> bytes:
    """A Mailgun webhook body for ``event``, signed with ``key`` at ``at``."""
    token = hashlib.sha256(orjson.dumps(event) + str(at).encode()).hexdigest()[:50]
    digest = hmac.new(key.encode(), f"{at}{token}".encode(), hashlib.sha256).hexdigest()
    signature = {"timestamp": str(at), "token": token, "signature": digest}
    return orjson.dumps({"signature": signature, "event-data": event})


def failed(severity: str, code: str | None = "5.1.1") -> dict[str, Any]:
    status: dict[str, Any] = {"code": 550, "description": "mailbox does not exist"}
    if code is not None:
        status["enhanced-code"] = code
    return {
        "event": "failed",
        "severity": severity,
        "recipient": "ann@example.com",
        "delivery-status": status,
        "message": {"headers": {"message-id": "r1-2@shop.example"}},
    }


def public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sendgrid_request(
    key: ec.EllipticCurvePrivateKey, events: Any, at: int = NOW
) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(events)
    signature = key.sign(str(at).encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP: str(at),
    }
    return body, headers


SENDGRID_EVENTS = [
    {"event": "bounce", "type": "bounce", "email": "ann@example.com", "status": "5.1.1",
     "reason": "550 5.1.1 unknown user", "smtp-id": "<r1-2@shop.example>"},
    {"event": "bounce", "type": "blocked", "email": "bob@example.com", "status": "5.7.1"},
    {"event": "deferred", "email": "cy@example.com", "status": "4.2.2", "response": "full"},
    {"event": "spamreport", "email": "di@example.com"},
    {"event": "delivered", "email": "ed@example.com"},
    {"event": "dropped", "email": "fi@example.com", "reason": "Bounced Address"},
]  # fmt: skip


def fixture(name: str) -> dict[str, Any]:
    """A sample payload of ``tests/fixtures`` (``ses/bounce-permanent.json``), its ``_source``
    note dropped."""
    data: dict[str, Any] = orjson.loads((FIXTURES / name).read_bytes())
    data.pop("_source", None)
    return data
