"""Amazon SES bounces and complaints, delivered by SNS (``POST /v1/webhooks/ses``).

SES publishes its notifications to an SNS topic; SNS posts each one to our endpoint wrapped in
its signed JSON envelope (``Content-Type: text/plain``, JSON all the same). Here:

- :func:`sns_message` reads the envelope: ``Type`` (``Notification``,
  ``SubscriptionConfirmation`` or ``UnsubscribeConfirmation``), the fields signed for that type,
  ``SignatureVersion`` 1 (SHA1withRSA) or 2 (SHA256withRSA), and a ``SigningCertURL`` (and
  ``SubscribeURL``) on an SNS host: ``https://sns.<region>.amazonaws.com[.cn]/…``, the
  certificate a ``.pem`` file, no port, no user, nothing else. A body without the envelope (SNS
  *raw message delivery*) is refused: the signature is in the envelope, so raw messages cannot be
  authenticated.
- :func:`check_fresh` refuses a message signed more than an hour ago (SNS's retries end sooner).
- :class:`Sns` verifies the signature with the certificate at ``SigningCertURL`` (fetched through
  an injected :data:`Fetch`, cached by URL) and confirms a subscription by fetching its
  ``SubscribeURL``. The caller checks the topic against its allow-list before either: a valid
  signature only proves that SNS sent a message, and anyone can subscribe our URL to a topic.
- :func:`ses_reports` reads SES's notification (the envelope's ``Message``), both kinds: identity
  notifications (``notificationType``) and configuration-set events (``eventType``). A
  ``Permanent`` bounce is hard (with a recipient ``status``, only 5.1.x suppresses, as for every
  relay), others are recorded; a complaint suppresses; every other kind (Delivery, Send,
  Reject, Open, ...) is ignored. The mail is found by its ``X-RT-Mail-ID`` (in ``mail.headers``
  when the notification includes the original headers) or its ``Message-ID``.

Everything but the fetch is pure.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature as BadRSA
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from rtserver.errors import InvalidEvent, InvalidSignature
from rtserver.mail.feedback import _STATUS, MAX_REPORTS, Feedback, from_json
from rtserver.model import decode_json

__all__ = [
    "MAX_AGE_S",
    "Fetch",
    "FetchFailed",
    "Sns",
    "SnsMessage",
    "check_fresh",
    "ses_reports",
    "sns_message",
]

Fetch = Callable[[str], Awaitable[bytes]]
"""``url -> body``: a GET through the outbound guard; raises :class:`FetchFailed`."""

MAX_AGE_S = 3600.0
"""The oldest signature taken (SNS stamps each message when it first sends it)."""

_HOST = r"sns\.[a-z]{2}(?:-[a-z]+)+-\d{1,2}\.amazonaws\.com(?:\.cn)?"
_CERT_URL = re.compile(rf"https://{_HOST}/[A-Za-z0-9_.-]{{1,200}}\.pem")
_SUBSCRIBE_URL = re.compile(rf"https://{_HOST}/\?[A-Za-z0-9_.~%&=:+-]{{1,4000}}")
_MESSAGE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")

_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED["UnsubscribeConfirmation"] = _SIGNED["SubscriptionConfirmation"]
_OPTIONAL = {"Subject"}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

RAW_DELIVERY = (
    "not an SNS message (no signed envelope): turn raw message delivery off on the "
    "subscription, rtserver authenticates SNS's envelope"
)


class FetchFailed(Exception):
    """A certificate or a subscription URL could not be fetched (the guard refused it, or the
    request failed): try again later."""


@dataclass(frozen=True, slots=True)
class SnsMessage:
    """One SNS message, its envelope checked (not yet its signature)."""

    type: str
    message_id: str
    topic_arn: str
    timestamp: float
    """Unix seconds."""
    message: str
    """The payload: SES's notification (JSON) for a ``Notification``."""
    signed: bytes
    """The string SNS signed (the type's fields, ``name\\nvalue\\n`` each, in order)."""
    signature: bytes
    version: str
    cert_url: str
    subscribe_url: str | None


def _text(envelope: dict[str, Any], name: str) -> str:
    value = envelope.get(name)
    if not isinstance(value, str):
        raise InvalidEvent(f"SNS message without {name}")
    return value


def _timestamp(text: str) -> float:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent("SNS Timestamp must be ISO 8601") from None
    if stamp.tzinfo is None:
        raise InvalidEvent("SNS Timestamp must be ISO 8601 with a time zone")
    return stamp.timestamp()


def sns_message(body: bytes) -> SnsMessage:
    """The SNS message in ``body``, its envelope checked.

    Raises:
        InvalidEvent: not an SNS message (raw message delivery, or malformed).
        InvalidSignature: an unknown signature version, or a certificate or subscription URL
            that is not on an SNS host.
    """
    envelope = decode_json(body)
    if not isinstance(envelope, dict) or "Type" not in envelope or "Signature" not in envelope:
        raise InvalidEvent(RAW_DELIVERY)
    kind = envelope["Type"]
    fields = _SIGNED.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise InvalidEvent(f"unknown SNS message Type {kind!r}")
    signed = "".join(
        f"{name}\n{_text(envelope, name)}\n"
        for name in fields
        if name not in _OPTIONAL or envelope.get(name) is not None
    )
    message_id = _text(envelope, "MessageId")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise InvalidEvent("SNS MessageId must be letters, digits and dashes")
    version = envelope.get("SignatureVersion")
    if version not in _HASHES:
        raise InvalidSignature(f"unsupported SignatureVersion {version!r}: 1 and 2 are known")
    cert_url = envelope.get("SigningCertURL")
    if not (isinstance(cert_url, str) and _CERT_URL.fullmatch(cert_url)):
        raise InvalidSignature("SigningCertURL is not an https .pem URL on an SNS host")
    subscribe_url = None if kind == "Notification" else _text(envelope, "SubscribeURL")
    if subscribe_url is not None and not _SUBSCRIBE_URL.fullmatch(subscribe_url):
        raise InvalidSignature("SubscribeURL is not an https URL on an SNS host")
    try:
        signature = base64.b64decode(_text(envelope, "Signature"), validate=True)
    except binascii.Error:
        raise InvalidSignature("Signature is not base64") from None
    return SnsMessage(
        type=kind,
        message_id=message_id,
        topic_arn=_text(envelope, "TopicArn"),
        timestamp=_timestamp(_text(envelope, "Timestamp")),
        message=_text(envelope, "Message"),
        signed=signed.encode(),
        signature=signature,
        version=str(version),
        cert_url=cert_url,
        subscribe_url=subscribe_url,
    )


def check_fresh(message: SnsMessage, now: float, tolerance_s: float) -> None:
    """Refuse a message signed more than :data:`MAX_AGE_S` ago, or ``tolerance_s`` ahead.

    Raises:
        InvalidSignature: the message is stale or from the future.
    """
    if message.timestamp < now - MAX_AGE_S:
        raise InvalidSignature("SNS Timestamp more than 1 hour old")
    if message.timestamp > now + tolerance_s:
        raise InvalidSignature(f"SNS Timestamp more than {tolerance_s:g} s ahead")


class Sns:
    """SNS's signing certificates (fetched once per URL, the last ``cache_size`` kept) and
    subscription confirmations, both through ``fetch``."""

    def __init__(self, fetch: Fetch, cache_size: int = 32) -> None:
        self._fetch = fetch
        self._cache: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._cache_size = cache_size

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        key = self._cache.get(url)
        if key is not None:
            self._cache.move_to_end(url)
            return key
        pem = await self._fetch(url)
        try:
            found = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise InvalidSignature("SigningCertURL holds no PEM certificate") from None
        if not isinstance(found, rsa.RSAPublicKey):
            raise InvalidSignature("the SNS signing certificate has no RSA key")
        self._cache[url] = found
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    async def verify(self, message: SnsMessage) -> None:
        """Check ``message``'s signature with the certificate at its ``SigningCertURL``.

        Raises:
            InvalidSignature: the signature does not verify.
            FetchFailed: the certificate could not be fetched.
        """
        key = await self._key(message.cert_url)
        algorithm = _HASHES[message.version]()
        try:
            key.verify(message.signature, message.signed, padding.PKCS1v15(), algorithm)
        except BadRSA:
            raise InvalidSignature("no valid SNS signature") from None

    async def confirm(self, message: SnsMessage) -> None:
        """Confirm the subscription ``message`` asks for (GET its ``SubscribeURL``).

        Raises:
            InvalidEvent: ``message`` is a ``Notification`` (it has no ``SubscribeURL``).
            FetchFailed: the request failed.
        """
        if message.subscribe_url is None:
            raise InvalidEvent("a Notification confirms no subscription")
        await self._fetch(message.subscribe_url)


def _headers(mail: dict[str, Any]) -> dict[str, str]:
    """The mail's original headers SES passed on, by lowercase name (the first of each)."""
    found: dict[str, str] = {}
    headers = mail.get("headers")
    for header in headers if isinstance(headers, list) else ():
        if isinstance(header, dict):
            name, value = header.get("name"), header.get("value")
            if isinstance(name, str) and isinstance(value, str):
                found.setdefault(name.lower(), value)
    return found


def _recipients(section: dict[str, Any], name: str) -> list[dict[str, Any]]:
    recipients = section.get(name)
    if not isinstance(recipients, list) or not recipients:
        raise InvalidEvent(f"{name} must be a non-empty list")
    if len(recipients) > MAX_REPORTS:
        raise InvalidEvent(f"more than {MAX_REPORTS} {name}")
    if not all(isinstance(r, dict) for r in recipients):
        raise InvalidEvent(f"{name} must be json objects")
    return recipients


def _section(notification: dict[str, Any], name: str) -> dict[str, Any]:
    section = notification.get(name)
    if not isinstance(section, dict):
        raise InvalidEvent(f"SES {name} must be a json object")
    return section


def ses_reports(message: str) -> list[Feedback]:
    """The bounce and complaint reports of one SES notification (an SNS ``Message``).

    Raises:
        InvalidEvent: the message is not an SES notification, or a bounce or complaint in it
            is malformed.
    """
    notification = decode_json(message.encode())
    if not isinstance(notification, dict):
        raise InvalidEvent("the SNS Message is not an SES notification (a json object)")
    kind = notification.get("notificationType") or notification.get("eventType")
    if kind not in ("Bounce", "Complaint"):
        return []  # Delivery, Send, Reject, Open, a subscription's test message, ...
    mail = notification.get("mail")
    mail = mail if isinstance(mail, dict) else {}
    headers = _headers(mail)
    common = mail.get("commonHeaders")
    common = common if isinstance(common, dict) else {}
    base = {
        "mail_id": headers.get("x-rt-mail-id"),
        "message_id": headers.get("message-id") or common.get("messageId"),
    }
    if kind == "Complaint":
        complaint = _section(notification, "complaint")
        feedback_type = complaint.get("complaintFeedbackType") or "abuse"
        return [
            from_json(
                {
                    **base,
                    "type": "complaint",
                    "email": r.get("emailAddress"),
                    "feedback_type": feedback_type,
                },
                f"complainedRecipients[{i}]",
            )
            for i, r in enumerate(_recipients(complaint, "complainedRecipients"))
        ]
    bounce = _section(notification, "bounce")
    hard = bounce.get("bounceType") == "Permanent"
    reports = []
    for i, recipient in enumerate(_recipients(bounce, "bouncedRecipients")):
        status = recipient.get("status")
        report = {
            **base,
            "type": "bounce",
            "email": recipient.get("emailAddress"),
            "status": status if isinstance(status, str) and _STATUS.fullmatch(status) else "",
            "bounce_type": "hard" if hard else "soft",
            "reason": recipient.get("diagnosticCode") or bounce.get("bounceSubType") or "",
        }
        reports.append(from_json(report, f"bouncedRecipients[{i}]"))
    return reports
