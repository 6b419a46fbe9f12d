"""Bounces and complaints in the relays' own webhook formats, with their own signatures.

The big relays post their events their way, not as Standard Webhooks, so each gets a source of
its own (``POST /v1/webhooks/mailgun``, ``/v1/webhooks/sendgrid``). Each is verified the way
its relay signs, checked for freshness on the injected clock, given an id for the replay check,
and translated into :mod:`rtserver.mail.feedback`'s JSON reports, so the suppression rules are
the same for every relay:

``mailgun``
    One event a request: ``{"signature": {"timestamp", "token", "signature"}, "event-data":
    {...}}``; the signature is the hex HMAC-SHA256 of ``timestamp + token`` with the webhook
    signing key (``keys.mailgun_signing_key``); the token is the replay id. ``failed`` events
    are bounces (``permanent`` ones hard), ``complained`` ones complaints; others are ignored.
``sendgrid``
    A JSON array of events, signed with ECDSA (P-256, SHA-256) over ``timestamp + body``:
    headers ``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER) and ``-Timestamp``; the
    verification key is ``keys.sendgrid_public_key`` (base64 DER, from SendGrid's settings).
    ``bounce`` events are bounces (type ``bounce`` hard, ``blocked`` soft), ``deferred`` soft
    ones, ``spamreport`` complaints; others are ignored. The replay id is the signature's hash.
``postmark``
    One record a request, authenticated by the route (HTTP basic auth, an optional address
    allow-list). ``Bounce`` records of ``Type`` ``HardBounce`` or ``BadEmailAddress`` are hard
    bounces; ``SoftBounce``, ``Transient``, ``DnsError``, ``Blocked`` and the other delivery
    failures soft ones; auto-replies, address changes, (un)subscribe requests and Postmark's
    own errors are ignored; ``SpamComplaint`` records (or bounces of that type) are complaints;
    other records (Delivery, Open, Click, SubscriptionChange) are ignored. The replay id is
    the record type and its ``ID``. Postmark's ``MessageID`` is its own, so the mail is found by
    an ``rt-mail-id`` metadata key, else the ``X-RT-Mail-ID`` header in the bounce ``Content``
    (when the webhook includes it); the ``Email`` is suppressed either way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature as BadECDSA
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from rtserver.errors import InvalidEvent, InvalidSignature
from rtserver.mail.feedback import MAX_REPORTS, Feedback, from_json
from rtserver.model import decode_json

__all__ = [
    "SENDGRID_SIGNATURE",
    "SENDGRID_TIMESTAMP",
    "mailgun",
    "postmark",
    "sendgrid",
    "sendgrid_key",
]

SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


def _fresh(stamp: Any, now: float, tolerance_s: float) -> None:
    text = str(stamp)
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise InvalidSignature("timestamp must be Unix seconds")
    if abs(now - int(text)) > tolerance_s:
        raise InvalidSignature(f"timestamp more than {tolerance_s:g} s from now")


def _bracketed(message_id: Any) -> str | None:
    if not isinstance(message_id, str) or not message_id:
        return None
    return message_id if message_id.startswith("<") else f"<{message_id}>"


def mailgun(
    body: bytes, signing_key: str, now: float, tolerance_s: float
) -> tuple[str, list[Feedback]]:
    """The replay id and the reports of a Mailgun webhook.

    Raises:
        InvalidSignature: no valid signature, or a stale one.
        InvalidEvent: the body is not a Mailgun event.
    """
    payload = decode_json(body)
    signature = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(signature, dict):
        raise InvalidSignature("missing signature")
    stamp, token, offered = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not (isinstance(token, str) and token and isinstance(offered, str)):
        raise InvalidSignature("missing signature token")
    _fresh(stamp, now, tolerance_s)
    expected = hmac.new(signing_key.encode(), f"{stamp}{token}".encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), offered.lower()):
        raise InvalidSignature("no valid signature")
    event = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(event, dict):
        raise InvalidEvent("event-data must be a json object")
    kind = event.get("event")
    message = event.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = _bracketed(headers.get("message-id")) if isinstance(headers, dict) else None
    report: dict[str, Any] = {"email": event.get("recipient"), "message_id": message_id}
    if kind == "complained":
        return token, [from_json({**report, "type": "complaint"}, "mailgun")]
    if kind != "failed":
        return token, []  # delivered, opened, ...: rtserver counts those itself
    status = event.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    enhanced = status.get("enhanced-code")
    report |= {
        "type": "bounce",
        "status": enhanced if isinstance(enhanced, str) else "",
        "bounce_type": "hard" if event.get("severity") == "permanent" else "soft",
        "reason": str(status.get("description") or status.get("message") or event.get("reason")),
    }
    return token, [from_json(report, "mailgun")]


def sendgrid_key(public_key: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key from its base64 DER form.

    Raises:
        ValueError: not a base64 DER elliptic-curve public key.
    """
    try:
        key = load_der_public_key(base64.b64decode(public_key, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 DER public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


_SENDGRID_KINDS = {"bounce": "bounce", "deferred": "bounce", "spamreport": "complaint"}


def _sendgrid_report(event: Any, where: str) -> Feedback | None:
    if not isinstance(event, dict):
        raise InvalidEvent(f"{where}: an event must be a json object")
    kind = _SENDGRID_KINDS.get(str(event.get("event")))
    if kind is None:
        return None  # processed, delivered, open, click, dropped, ...
    report: dict[str, Any] = {
        "type": kind,
        "email": event.get("email"),
        "message_id": _bracketed(event.get("smtp-id")),
    }
    if kind == "bounce":
        hard = event.get("event") == "bounce" and event.get("type", "bounce") == "bounce"
        status = event.get("status")
        report |= {
            "status": status if isinstance(status, str) else "",
            "bounce_type": "hard" if hard else "soft",
            "reason": str(event.get("reason") or event.get("response") or ""),
        }
    return from_json(report, where)


def sendgrid(
    body: bytes, headers: Mapping[str, str], public_key: str, now: float, tolerance_s: float
) -> tuple[str, list[Feedback]]:
    """The replay id and the reports of a SendGrid signed event webhook.

    Raises:
        InvalidSignature: no valid signature, or a stale one.
        InvalidEvent: the body is not a list of SendGrid events.
    """
    offered, stamp = headers.get(SENDGRID_SIGNATURE, ""), headers.get(SENDGRID_TIMESTAMP, "")
    if not offered or not stamp:
        raise InvalidSignature(f"missing {SENDGRID_SIGNATURE} or {SENDGRID_TIMESTAMP}")
    _fresh(stamp, now, tolerance_s)
    try:
        signature = base64.b64decode(offered, validate=True)
        sendgrid_key(public_key).verify(signature, stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, BadECDSA):
        raise InvalidSignature("no valid signature") from None
    events = decode_json(body)
    if not isinstance(events, list):
        raise InvalidEvent("expected a json array of events")
    if len(events) > MAX_REPORTS * 10:
        raise InvalidEvent(f"more than {MAX_REPORTS * 10} events")
    reports = [_sendgrid_report(e, f"events[{i}]") for i, e in enumerate(events)]
    replay = "sendgrid-" + hashlib.sha256(signature).hexdigest()[:32]
    return replay, [r for r in reports if r is not None]


_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress"})
_POSTMARK_IGNORED = frozenset(
    {
        "AutoResponder",
        "AddressChange",
        "Subscribe",
        "Unsubscribe",
        "OpenRelayTest",
        "ChallengeVerification",
        "ManuallyDeactivated",
        "InboundError",
        "SMTPApiError",
        "TemplateRenderingFailed",
    }
)
"""Bounce types that say nothing about the recipient's mailbox."""
_POSTMARK_MAIL_ID = re.compile(r"^X-RT-Mail-ID:[ \t]*([A-Za-z0-9._-]{1,200})\r?$", re.I | re.M)


def _postmark_mail_id(record: dict[str, Any]) -> str | None:
    metadata = record.get("Metadata")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if str(key).lower().replace("_", "-") == "rt-mail-id" and isinstance(value, str):
                return value
    content = record.get("Content")
    match = _POSTMARK_MAIL_ID.search(content) if isinstance(content, str) else None
    return match.group(1) if match else None


def postmark(body: bytes) -> tuple[str, list[Feedback]]:
    """The replay id and the reports of one Postmark webhook record.

    Raises:
        InvalidEvent: the body is not a Postmark record, or a bounce or complaint without an
            ``ID``.
    """
    record = decode_json(body)
    if not isinstance(record, dict):
        raise InvalidEvent("expected a json object (one Postmark record)")
    kind, bounce_type = record.get("RecordType"), record.get("Type")
    complaint = kind == "SpamComplaint" or (kind == "Bounce" and bounce_type == "SpamComplaint")
    if not complaint and (kind != "Bounce" or bounce_type in _POSTMARK_IGNORED):
        return "postmark-" + hashlib.sha256(body).hexdigest()[:32], []
    record_id = record.get("ID")
    if isinstance(record_id, bool) or not isinstance(record_id, int | str) or not str(record_id):
        raise InvalidEvent(f"a Postmark {kind} record needs an ID")
    replay = f"postmark-{kind}-{str(record_id)[:64]}"
    report: dict[str, Any] = {
        "email": record.get("Email"),
        "mail_id": _postmark_mail_id(record),
        "message_id": _bracketed(record.get("MessageID")),
    }
    if complaint:
        return replay, [from_json({**report, "type": "complaint"}, "postmark")]
    report |= {
        "type": "bounce",
        "bounce_type": "hard" if bounce_type in _POSTMARK_HARD else "soft",
        "reason": str(record.get("Details") or record.get("Description") or bounce_type or ""),
    }
    return replay, [from_json(report, "postmark")]
