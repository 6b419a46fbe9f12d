"""What a relay reports after it took a mail: bounces and complaints, as :class:`Feedback`.

The ``mail`` webhook (``POST /v1/webhooks/mail``) takes three forms:

- JSON, one report or ``{"events": [...]}``::

      {"type": "bounce", "email": "ann@example.com", "status": "5.1.1",
       "bounce_type": "hard", "mail_id": "r1-2", "reason": "user unknown"}
      {"type": "complaint", "email": "ann@example.com", "message_id": "<r1-2@shop.example>"}

- an ARF complaint (RFC 5965, ``multipart/report; report-type=feedback-report``), as mailbox
  providers' feedback loops send it;
- a DSN bounce (RFC 3464, ``multipart/report; report-type=delivery-status``).

The rules are the SMTP ones of :mod:`rtserver.mail.smtp`: a bounce with a 5.1.x status (no such
mailbox), or a ``hard`` one without a status, suppresses the address (``hard_bounce``); 4.x.x
never does, nor do other 5.x.x (policy, mailbox full); every complaint suppresses
(``complaint``). The mail is found by ``mail_id``, the ``Message-ID`` rtserver gave it, or
the ``X-RT-Mail-ID`` header of the original in a report; the address, when a report leaves it
out, is the recipient of that mail.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.message import Message
from typing import Any, Literal

from rtserver.errors import InvalidEvent, MailError
from rtserver.mail.render import check_address
from rtserver.model import decode_json

__all__ = ["MAX_REPORTS", "Feedback", "from_json", "parse_feedback"]

MAX_REPORTS = 100
"""Most reports in one JSON webhook."""

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_NO_MAILBOX = re.compile(r"5\.1\.\d{1,3}")
_MESSAGE_ID = re.compile(r"<([A-Za-z0-9._-]{1,200})@[^<>@\s]+>")
_REPORT_TYPES = ("multipart/report", "message/feedback-report")


@dataclass(frozen=True, slots=True)
class Feedback:
    """One bounce or complaint about one recipient."""

    kind: Literal["bounce", "complaint"]
    address: str | None
    """Normalised; None: the recipient of ``mail_id``."""
    mail_id: str | None
    status: str
    """The enhanced status code of a bounce (``5.1.1``), the feedback type of a complaint."""
    suppress: str | None
    """The suppression reason (``hard_bounce``, ``complaint``), or None: recorded only."""
    detail: str = ""


def _address(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{where}: email must be a string")
    bare = value.strip()
    if bare.lower().startswith("rfc822;"):
        bare = bare[7:].strip()
    if "\r" not in bare and "\n" not in bare:  # check_address refuses those, with the reason
        bare = email.utils.parseaddr(bare)[1] or bare.strip("<>")
    try:
        return check_address(bare)
    except MailError as exc:
        raise InvalidEvent(f"{where}: {exc}") from None


def _mail_id(mail_id: Any, message_id: Any) -> str | None:
    if isinstance(mail_id, str) and mail_id:
        return mail_id[:200]
    if isinstance(message_id, str):
        match = _MESSAGE_ID.search(message_id)
        if match:
            return match.group(1)
    return None


def _bounce_suppression(status: str, bounce_type: str) -> str | None:
    if status:
        return "hard_bounce" if _NO_MAILBOX.fullmatch(status) else None
    return "hard_bounce" if bounce_type == "hard" else None


def from_json(item: Any, where: str) -> Feedback:
    """One report in the JSON form (the module docstring), checked; ``where`` prefixes errors.

    Raises:
        InvalidEvent: the report is malformed.
    """
    if not isinstance(item, dict):
        raise InvalidEvent(f"{where}: a report must be a json object")
    kind = item.get("type")
    address = _address(item.get("email"), where)
    mail_id = _mail_id(item.get("mail_id"), item.get("message_id"))
    if address is None and mail_id is None:
        raise InvalidEvent(f"{where}: needs email, mail_id or message_id")
    detail = str(item.get("reason") or "")[:500]
    if kind == "complaint":
        feedback_type = str(item.get("feedback_type") or "abuse")[:40]
        return Feedback("complaint", address, mail_id, feedback_type, "complaint", detail)
    if kind != "bounce":
        raise InvalidEvent(f"{where}: type must be 'bounce' or 'complaint', not {kind!r}")
    status = item.get("status") or ""
    if not isinstance(status, str) or (status and not _STATUS.fullmatch(status)):
        raise InvalidEvent(f"{where}: status must be an enhanced status code like '5.1.1'")
    bounce_type = item.get("bounce_type", "hard" if status.startswith("5.") else "soft")
    if bounce_type not in ("hard", "soft"):
        raise InvalidEvent(f"{where}: bounce_type must be 'hard' or 'soft'")
    suppress = _bounce_suppression(status, bounce_type)
    return Feedback("bounce", address, mail_id, status or bounce_type, suppress, detail)


def _fields(part: Message) -> list[Message]:
    """The field blocks of a ``message/feedback-report`` or ``message/delivery-status`` part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    return [email.message_from_string(block) for block in re.split(r"\n\s*\n", text) if block]


def _original(report: Message) -> Message | None:
    """The headers of the mail a report is about (``message/rfc822`` or ``text/rfc822-headers``)."""
    for part in report.walk():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        if part.get_content_type() == "text/rfc822-headers":
            raw = part.get_payload(decode=True)  # undoes base64 or quoted-printable
            return email.message_from_bytes(raw if isinstance(raw, bytes) else b"")
    return None


def _report(body: bytes, content_type: str) -> Message:
    """The report: ``body`` as a mail, or, when it does not start with report headers of its
    own, ``body`` as the content of the HTTP ``Content-Type`` (which carries the boundary)."""
    report = email.message_from_bytes(body, policy=email.policy.compat32)
    if report.get_content_type() in _REPORT_TYPES:
        return report
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    return email.message_from_bytes(head + body, policy=email.policy.compat32)


def _from_report(body: bytes, content_type: str) -> list[Feedback]:
    report = _report(body, content_type)
    original = _original(report)
    mail_id = None
    to = None
    if original is not None:
        mail_id = _mail_id(original.get("X-RT-Mail-ID"), original.get("Message-ID"))
        to = original.get("To")
    found: list[Feedback] = []
    for part in report.walk():
        kind = part.get_content_type()
        if kind == "message/feedback-report":
            fields = {k.lower(): v for block in _fields(part) for k, v in block.items()}
            rcpt = fields.get("original-rcpt-to") or (None if mail_id else to)
            address = _address(rcpt, "feedback report")
            feedback_type = str(fields.get("feedback-type", "abuse")).strip()[:40]
            found.append(Feedback("complaint", address, mail_id, feedback_type, "complaint"))
        elif kind == "message/delivery-status":
            for block in _fields(part)[1:]:  # the first block is about the message
                action = str(block.get("Action", "")).strip().lower()
                if action not in ("failed", "delayed"):
                    continue
                status = str(block.get("Status", "")).strip()
                address = _address(
                    block.get("Final-Recipient") or block.get("Original-Recipient"), "dsn"
                )
                diagnostic = str(block.get("Diagnostic-Code", "")).strip()[:500]
                suppress = (
                    _bounce_suppression(status, "soft") if _STATUS.fullmatch(status) else None
                )
                found.append(Feedback("bounce", address, mail_id, status, suppress, diagnostic))
    if not found:
        raise InvalidEvent("no feedback-report or failed delivery-status in the report")
    if any(f.address is None and f.mail_id is None for f in found):
        raise InvalidEvent("the report names neither the recipient nor the original mail")
    return found


def parse_feedback(body: bytes, content_type: str) -> list[Feedback]:
    """The reports in a ``mail`` webhook body.

    Raises:
        InvalidEvent: the body is none of the three forms, or a report in it is malformed.
    """
    media = content_type.partition(";")[0].strip().lower()
    if media in _REPORT_TYPES:
        return _from_report(body, content_type)
    payload = decode_json(body)
    if not (isinstance(payload, dict) and "events" in payload):
        return [from_json(payload, "report")]
    items = payload["events"]
    if not isinstance(items, list) or not items:
        raise InvalidEvent("events must be a non-empty list")
    if len(items) > MAX_REPORTS:
        raise InvalidEvent(f"more than {MAX_REPORTS} reports")
    return [from_json(item, f"events[{i}]") for i, item in enumerate(items)]
