"""Mail feedback: JSON reports, ARF complaints (RFC 5965) and DSN bounces (RFC 3464)
become Feedback with the relay's suppression rules (5.1.x and hard bounces suppress, 4.x.x and
other 5.x.x never, every complaint does); every malformed report is an InvalidEvent."""

from __future__ import annotations

import base64
import email
from email.message import Message
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from rtserver.errors import InvalidEvent
from rtserver.mail.feedback import MAX_REPORTS, Feedback, _fields, _original, parse_feedback

JSON = "application/json"


def js(value: Any) -> bytes:
    return orjson.dumps(value)


def bounce(**fields: Any) -> dict[str, Any]:
    return {"type": "bounce", "email": "ann@example.com", **fields}


# --- MIME builders ---------------------------------------------------------------------------

BOUNDARY = "----=_Report_0042"


def original_headers(
    *,
    to: str | None = "Ann Example <ann@example.com>",
    message_id: str | None = "<r7-3@shop.example>",
    mail_id: str | None = "r7-3",
) -> str:
    """The headers of a mail rtserver sent, as a report quotes them."""
    lines = ["From: Shop <news@shop.example>"]
    if to is not None:
        lines.append(f"To: {to}")
    lines += ["Subject: Your cart is waiting", "Date: Fri, 15 Jan 2027 08:00:00 +0000"]
    if message_id is not None:
        lines.append(f"Message-ID: {message_id}")
    if mail_id is not None:
        lines.append(f"X-RT-Mail-ID: {mail_id}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    return "\r\n".join(lines) + "\r\n"


def report(
    report_type: str, parts: list[tuple[str, str]], *, extra_part_headers: str = ""
) -> bytes:
    """A multipart/report mail with ``parts`` ((content type, content) pairs)."""
    head = (
        "From: Mailbox Feedback <fbl@mailbox.example>\r\n"
        "To: <abuse@shop.example>\r\n"
        "Subject: Report\r\n"
        "Date: Fri, 15 Jan 2027 09:00:00 +0000\r\n"
        "Message-ID: <report-1@mailbox.example>\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type={report_type};\r\n"
        f'\tboundary="{BOUNDARY}"\r\n'
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        "\r\n"
    )
    body = "".join(
        f"--{BOUNDARY}\r\nContent-Type: {ctype}\r\n{extra_part_headers if i == 2 else ''}"
        f"\r\n{content}\r\n"
        for i, (ctype, content) in enumerate(parts)
    )
    return (head + body + f"--{BOUNDARY}--\r\n").encode()


def arf(
    *,
    rcpt_to: str | None = "<ann@example.com>",
    feedback_type: str | None = "abuse",
    original: str | None = None,
    original_type: str = "message/rfc822",
) -> bytes:
    """An RFC 5965 feedback report about the mail of ``original`` (default: r7-3)."""
    fields = []
    if feedback_type is not None:
        fields.append(f"Feedback-Type: {feedback_type}")
    fields += [
        "User-Agent: MailboxFBL/2.1",
        "Version: 1",
        "Original-Mail-From: <bounces@shop.example>",
    ]
    if rcpt_to is not None:
        fields.append(f"Original-Rcpt-To: {rcpt_to}")
    fields += [
        "Arrival-Date: Fri, 15 Jan 2027 08:00:05 +0000",
        "Reported-Domain: shop.example",
        "Source-IP: 192.0.2.25",
    ]
    quoted = original_headers() if original is None else original
    if quoted and original_type == "message/rfc822":
        quoted += "\r\nHi Ann, your cart is waiting.\r\n"
    parts = [
        (
            "text/plain; charset=us-ascii",
            "This is an email abuse report for a message received from 192.0.2.25.\r\n",
        ),
        ("message/feedback-report", "\r\n".join(fields) + "\r\n"),
    ]
    if quoted:
        parts.append((original_type, quoted))
    return report("feedback-report", parts)


def recipient(
    *,
    final: str | None = "rfc822; bob@example.com",
    original: str | None = None,
    action: str = "failed",
    status: str | None = "5.1.1",
    diagnostic: str | None = "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected",
) -> str:
    """One per-recipient block of a delivery-status part."""
    lines = []
    if original is not None:
        lines.append(f"Original-Recipient: {original}")
    if final is not None:
        lines.append(f"Final-Recipient: {final}")
    lines.append(f"Action: {action}")
    if status is not None:
        lines.append(f"Status: {status}")
    lines.append("Remote-MTA: dns; mx.example.com")
    if diagnostic is not None:
        lines.append(f"Diagnostic-Code: {diagnostic}")
    return "\r\n".join(lines) + "\r\n"


def dsn(*blocks: str, original: str | None = None) -> bytes:
    """An RFC 3464 delivery status notification with per-recipient ``blocks``, quoting the
    headers of ``original`` (default: mail r7-3) as text/rfc822-headers."""
    per_message = (
        "Reporting-MTA: dns; relay.shop.example\r\n"
        "X-Postfix-Queue-ID: 4F2A81C0042\r\n"
        "Arrival-Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"
    )
    quoted = original_headers(to="bob@example.com") if original is None else original
    parts = [
        ("text/plain; charset=us-ascii", "Your message could not be delivered.\r\n"),
        ("message/delivery-status", "\r\n".join([per_message, *blocks])),
    ]
    if quoted:
        parts.append(("text/rfc822-headers", quoted))
    return report("delivery-status", parts)


def content_type_of(raw: bytes) -> str:
    """The Content-Type header of a built report, as a relay would send it along."""
    return " ".join(str(email.message_from_bytes(raw)["Content-Type"]).split())


def parsed(raw: bytes) -> list[Feedback]:
    return parse_feedback(raw, content_type_of(raw))


# --- JSON --------------------------------------------------------------------------------------


def test_a_single_json_bounce() -> None:
    """One JSON report: a 5.1.1 bounce suppresses the address as a hard bounce."""
    body = js(bounce(status="5.1.1", bounce_type="hard", mail_id="r1-2", reason="user unknown"))
    assert parse_feedback(body, JSON) == [
        Feedback("bounce", "ann@example.com", "r1-2", "5.1.1", "hard_bounce", "user unknown")
    ]


def test_a_json_events_list() -> None:
    """{"events": [...]} gives one Feedback per report, in order."""
    body = js(
        {
            "events": [
                bounce(status="5.1.1"),
                {"type": "complaint", "email": "bob@example.com", "mail_id": "r2-1"},
                bounce(email="carol@example.com", status="4.2.2"),
            ]
        }
    )
    assert parse_feedback(body, "application/json; charset=utf-8") == [
        Feedback("bounce", "ann@example.com", None, "5.1.1", "hard_bounce"),
        Feedback("complaint", "bob@example.com", "r2-1", "abuse", "complaint"),
        Feedback("bounce", "carol@example.com", None, "4.2.2", None),
    ]


@pytest.mark.parametrize(
    ("fields", "status", "suppress"),
    [
        ({"status": "5.1.1"}, "5.1.1", "hard_bounce"),
        ({"status": "5.1.10"}, "5.1.10", "hard_bounce"),
        ({"status": "5.1.1", "bounce_type": "soft"}, "5.1.1", "hard_bounce"),
        ({"status": "4.2.2"}, "4.2.2", None),
        ({"status": "4.2.2", "bounce_type": "hard"}, "4.2.2", None),
        ({"status": "4.1.1"}, "4.1.1", None),
        ({"status": "5.7.1"}, "5.7.1", None),
        ({"status": "5.2.2", "bounce_type": "hard"}, "5.2.2", None),
        ({"status": "2.0.0"}, "2.0.0", None),
        ({"bounce_type": "hard"}, "hard", "hard_bounce"),
        ({"bounce_type": "soft"}, "soft", None),
        ({}, "soft", None),
        ({"status": ""}, "soft", None),
        ({"status": None, "bounce_type": "hard"}, "hard", "hard_bounce"),
    ],
    ids=[
        "5.1.1-no-mailbox",
        "5.1.10-three-digits",
        "5.1.1-status-wins-over-soft",
        "4.2.2-mailbox-full-never",
        "4.2.2-status-wins-over-hard",
        "4.1.1-temporary",
        "5.7.1-policy",
        "5.2.2-hard-but-mailbox-full",
        "2.0.0-success-code",
        "hard-without-status",
        "soft-without-status",
        "nothing-defaults-to-soft",
        "empty-status",
        "null-status",
    ],
)
def test_bounce_suppression_rules(
    fields: dict[str, Any], status: str, suppress: str | None
) -> None:
    """Only 5.1.x, or a hard bounce without a status, suppresses; 4.x.x never does."""
    [report_] = parse_feedback(js(bounce(**fields)), JSON)
    assert (report_.kind, report_.status, report_.suppress) == ("bounce", status, suppress)


@pytest.mark.parametrize(
    ("status", "suppress"),
    [("5.1.1", "hard_bounce"), ("5.7.1", None), ("4.4.1", None)],
    ids=["5.1.1", "5.7.1", "4.4.1"],
)
def test_default_bounce_type_follows_the_status(status: str, suppress: str | None) -> None:
    """Without bounce_type a 5.x.x status counts as hard and 4.x.x as soft; the status is kept."""
    assert parse_feedback(js(bounce(status=status)), JSON)[0].suppress == suppress


@settings(deadline=None, max_examples=100)
@given(
    status=st.from_regex(r"\A[245]\.\d{1,3}\.\d{1,3}\Z"),
    bounce_type=st.sampled_from([None, "hard", "soft"]),
)
def test_any_valid_status_suppresses_exactly_when_5_1_x(
    status: str, bounce_type: str | None
) -> None:
    """For every enhanced status code, the address is suppressed iff the code is 5.1.x."""
    fields = {"status": status} | ({"bounce_type": bounce_type} if bounce_type else {})
    [report_] = parse_feedback(js(bounce(**fields)), JSON)
    assert report_.status == status
    assert report_.suppress == ("hard_bounce" if status.startswith("5.1.") else None)


def test_a_complaint() -> None:
    """A complaint always suppresses, with feedback_type 'abuse' unless given."""
    assert parse_feedback(js({"type": "complaint", "email": "ann@example.com"}), JSON) == [
        Feedback("complaint", "ann@example.com", None, "abuse", "complaint")
    ]
    given_type = {"type": "complaint", "email": "ann@example.com", "feedback_type": "fraud"}
    assert parse_feedback(js(given_type), JSON)[0].status == "fraud"
    long_type = {**given_type, "feedback_type": "x" * 100, "status": "5.1.1"}
    assert parse_feedback(js(long_type), JSON)[0].status == "x" * 40


@pytest.mark.parametrize(
    ("fields", "mail_id"),
    [
        ({"mail_id": "r1-2"}, "r1-2"),
        ({"message_id": "<r1-2@shop.example>"}, "r1-2"),
        ({"message_id": "Re: <r1-2@shop.example> (resent)"}, "r1-2"),
        ({"mail_id": "r9-9", "message_id": "<r1-2@shop.example>"}, "r9-9"),
        ({"mail_id": "", "message_id": "<r1-2@shop.example>"}, "r1-2"),
        ({"mail_id": 12, "message_id": "<r1-2@shop.example>"}, "r1-2"),
        ({"mail_id": "m" * 300}, "m" * 200),
        ({"message_id": "r1-2@shop.example"}, None),
        ({"message_id": "<CAF+x=y@mail.gmail.example>"}, None),
        ({"message_id": 42}, None),
        ({}, None),
    ],
    ids=[
        "mail-id",
        "message-id",
        "message-id-in-text",
        "mail-id-wins",
        "empty-mail-id-falls-back",
        "non-string-mail-id-falls-back",
        "mail-id-truncated",
        "message-id-without-brackets",
        "foreign-message-id",
        "non-string-message-id",
        "neither",
    ],
)
def test_the_mail_is_found_by_mail_id_or_message_id(
    fields: dict[str, Any], mail_id: str | None
) -> None:
    """mail_id is taken as given, else the local part of an rtserver Message-ID."""
    assert parse_feedback(js(bounce(**fields)), JSON)[0].mail_id == mail_id


def test_a_report_by_mail_id_alone_has_no_address() -> None:
    """Without email the address is None: the recipient of the mail is meant."""
    for fields in ({"mail_id": "r1-2"}, {"message_id": "<r1-2@shop.example>"}):
        [report_] = parse_feedback(js({"type": "complaint", **fields}), JSON)
        assert (report_.address, report_.mail_id) == (None, "r1-2")
    [report_] = parse_feedback(js({"type": "bounce", "email": "", "mail_id": "r1-2"}), JSON)
    assert report_.address is None


@pytest.mark.parametrize(
    ("given_", "normalised"),
    [
        ("ann@EXAMPLE.com", "ann@example.com"),
        ("Ann@Example.COM", "Ann@example.com"),
        ("  ann@example.com\t", "ann@example.com"),
        ("<ann@example.com>", "ann@example.com"),
        ("rfc822; ann@example.com", "ann@example.com"),
        ("RFC822;<Ann@Example.com>", "Ann@example.com"),
        ("ann@bücher.example", "ann@bücher.example"),
    ],
    ids=[
        "upper-domain",
        "mixed-case",
        "spaces",
        "angle-brackets",
        "rfc822-prefix",
        "prefix-and-brackets",
        "idn",
    ],
)
def test_the_address_is_normalised(given_: str, normalised: str) -> None:
    """The address is check_address()'s normal form: domain lowercased, local part kept."""
    assert parse_feedback(js(bounce(email=given_)), JSON)[0].address == normalised


def test_the_reason_is_kept_and_truncated() -> None:
    """reason becomes the detail, cut at 500 characters; a missing one is ''."""
    assert (
        parse_feedback(js(bounce(reason="mailbox unavailable")), JSON)[0].detail
        == "mailbox unavailable"
    )
    assert parse_feedback(js(bounce(reason="é" * 600)), JSON)[0].detail == "é" * 500
    assert parse_feedback(js(bounce(reason=None)), JSON)[0].detail == ""
    assert parse_feedback(js(bounce()), JSON)[0].detail == ""


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([bounce()], r"^report: a report must be a json object$"),
        ("bounce", r"^report: a report must be a json object$"),
        (None, r"^report: a report must be a json object$"),
        (bounce(type="delivery"), r"^report: type must be 'bounce' or 'complaint', not 'delivery'"),
        ({"email": "ann@example.com"}, r"^report: type must be .*, not None$"),
        ({"type": "bounce"}, r"^report: needs email, mail_id or message_id$"),
        (bounce(email="", mail_id=""), r"^report: needs email, mail_id or message_id$"),
        (bounce(email="not-an-address"), r"^report: invalid address 'not-an-address': "),
        (bounce(email="ann@example.com\r\nBcc: x@y.z"), r"^report: line break in address"),
        (bounce(email=" "), r"^report: invalid address ''"),
        (bounce(email=42), r"^report: email must be a string$"),
        (bounce(email=["ann@example.com"]), r"^report: email must be a string$"),
        (bounce(status="5.1"), r"^report: status must be an enhanced status code like '5.1.1'$"),
        (bounce(status="550"), r"^report: status must be an enhanced status code"),
        (bounce(status="3.1.1"), r"^report: status must be an enhanced status code"),
        (bounce(status="5.1.1 user unknown"), r"^report: status must be an enhanced status"),
        (bounce(status="5.1.1234"), r"^report: status must be an enhanced status code"),
        (bounce(status=511), r"^report: status must be an enhanced status code"),
        (bounce(bounce_type="permanent"), r"^report: bounce_type must be 'hard' or 'soft'$"),
        (bounce(bounce_type="HARD"), r"^report: bounce_type must be 'hard' or 'soft'$"),
        (bounce(bounce_type=None), r"^report: bounce_type must be 'hard' or 'soft'$"),
        (bounce(bounce_type=["hard"]), r"^report: bounce_type must be 'hard' or 'soft'$"),
        ({"events": []}, r"^events must be a non-empty list$"),
        ({"events": {"0": bounce()}}, r"^events must be a non-empty list$"),
        ({"events": "bounce"}, r"^events must be a non-empty list$"),
        ({"events": [bounce(), "x"]}, r"^events\[1\]: a report must be a json object$"),
        ({"events": [bounce(), bounce(email="x")]}, r"^events\[1\]: invalid address 'x'"),
        (
            {"events": [bounce()] * (MAX_REPORTS + 1)},
            rf"^more than {MAX_REPORTS} reports$",
        ),
    ],
    ids=[
        "a-list",
        "a-string",
        "null",
        "wrong-type",
        "no-type",
        "no-email-nor-mail",
        "empty-email-and-mail-id",
        "invalid-email",
        "header-injection",
        "blank-email",
        "email-a-number",
        "email-a-list",
        "status-two-parts",
        "status-smtp-code",
        "status-class-3",
        "status-with-text",
        "status-four-digits",
        "status-a-number",
        "bounce-type-unknown",
        "bounce-type-upper-case",
        "bounce-type-null",
        "bounce-type-a-list",
        "events-empty",
        "events-an-object",
        "events-a-string",
        "events-item-not-an-object",
        "events-item-invalid-email",
        "too-many-reports",
    ],
)
def test_malformed_json_is_refused(payload: Any, message: str) -> None:
    """Each malformed JSON report is an InvalidEvent saying what is wrong and where."""
    with pytest.raises(InvalidEvent, match=message):
        parse_feedback(js(payload), JSON)


def test_max_reports_is_allowed() -> None:
    """Exactly MAX_REPORTS reports are taken."""
    assert MAX_REPORTS == 100
    reports = parse_feedback(
        js({"events": [bounce(mail_id=f"r{i}") for i in range(MAX_REPORTS)]}), JSON
    )
    assert [r.mail_id for r in reports] == [f"r{i}" for i in range(MAX_REPORTS)]


def test_null_events_is_not_a_list() -> None:
    """{"events": null} is refused as an events list that is not a list."""
    with pytest.raises(InvalidEvent, match="^events must be a non-empty list$"):
        parse_feedback(js({"events": None}), JSON)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'type': 'bounce'}", b"\xff\xfe{}", b"[1,]", b"NaN"],
    ids=["empty", "truncated", "single-quotes", "not-utf8", "trailing-comma", "nan"],
)
@pytest.mark.parametrize("content_type", [JSON, "text/plain", ""], ids=["json", "text", "none"])
def test_a_body_that_is_not_json_is_refused(body: bytes, content_type: str) -> None:
    """A body that is no report type and not JSON is an InvalidEvent, whatever it is labelled."""
    with pytest.raises(InvalidEvent, match="^malformed json: "):
        parse_feedback(body, content_type)


# --- ARF complaints (RFC 5965) ---------------------------------------------------------------


def parts_of(message: Message) -> list[Message]:
    """The parsed sub-parts of a multipart or message/* part."""
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def test_the_built_reports_are_real_reports() -> None:
    """Python's parser sees the builders' output as multipart/report with a message/
    feedback-report or message/delivery-status part and the original (sanity check)."""
    complaint = email.message_from_bytes(arf())
    assert complaint.get_content_type() == "multipart/report"
    assert complaint.get_param("report-type") == "feedback-report"
    text, fields, quoted = parts_of(complaint)
    assert [p.get_content_type() for p in (text, fields, quoted)] == [
        "text/plain",
        "message/feedback-report",
        "message/rfc822",
    ]
    assert parts_of(fields)[0]["Original-Rcpt-To"] == "<ann@example.com>"
    assert parts_of(quoted)[0]["X-RT-Mail-ID"] == "r7-3"

    status = email.message_from_bytes(dsn(recipient(), recipient(action="delivered")))
    assert status.get_param("report-type") == "delivery-status"
    text, delivery, headers = parts_of(status)
    assert [p.get_content_type() for p in (text, delivery, headers)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = parts_of(delivery)
    assert blocks[0]["Reporting-MTA"] == "dns; relay.shop.example"
    assert [b["Action"] for b in blocks[1:]] == ["failed", "delivered"]


def test_an_arf_complaint_with_the_original_message() -> None:
    """An ARF complaint quoting the whole original: a complaint about its recipient and mail."""
    raw = arf()
    assert content_type_of(raw).startswith("multipart/report; report-type=feedback-report;")
    assert parsed(raw) == [Feedback("complaint", "ann@example.com", "r7-3", "abuse", "complaint")]


def test_an_arf_complaint_with_only_the_original_headers() -> None:
    """text/rfc822-headers instead of message/rfc822 finds the mail the same way."""
    raw = arf(original_type="text/rfc822-headers")
    assert b"Content-Type: text/rfc822-headers" in raw
    assert parsed(raw) == [Feedback("complaint", "ann@example.com", "r7-3", "abuse", "complaint")]


@pytest.mark.parametrize(
    ("feedback_type", "status"),
    [("fraud", "fraud"), ("  Abuse  ", "Abuse"), (None, "abuse"), ("x" * 60, "x" * 40)],
    ids=["fraud", "stripped", "missing-defaults-to-abuse", "truncated"],
)
def test_the_feedback_type_is_the_status(feedback_type: str | None, status: str) -> None:
    """Feedback-Type becomes the status (default 'abuse'); a complaint always suppresses."""
    [report_] = parsed(arf(feedback_type=feedback_type))
    assert (report_.status, report_.suppress) == (status, "complaint")


def test_an_arf_without_rcpt_to_takes_the_original_to() -> None:
    """Without Original-Rcpt-To and with no way to find the mail, the address is the To of
    the original."""
    original = original_headers(
        to="ann@example.com", message_id="<CAF+x=1@mail.other.example>", mail_id=None
    )
    assert parsed(arf(rcpt_to=None, original=original)) == [
        Feedback("complaint", "ann@example.com", None, "abuse", "complaint")
    ]


def test_an_arf_without_rcpt_to_takes_a_display_name_to() -> None:
    """The To fallback reads the address out of a To with a display name."""
    original = original_headers(to="Ann Example <ann@example.com>", message_id=None, mail_id=None)
    [report_] = parsed(arf(rcpt_to=None, original=original))
    assert report_.address == "ann@example.com"


@pytest.mark.parametrize(
    ("original", "mail_id"),
    [
        (original_headers(), "r7-3"),
        (original_headers(message_id=None), "r7-3"),
        (original_headers(mail_id=None), "r7-3"),
        (original_headers(message_id="<r7-3@shop.example>", mail_id="r9-1"), "r9-1"),
    ],
    ids=["both", "x-rt-mail-id-only", "message-id-only", "x-rt-mail-id-wins"],
)
def test_an_arf_without_rcpt_to_names_the_mail(original: str, mail_id: str) -> None:
    """Without Original-Rcpt-To but with the mail found, the address is left to the mail
    (None), even when the original has a To."""
    assert parsed(arf(rcpt_to=None, original=original)) == [
        Feedback("complaint", None, mail_id, "abuse", "complaint")
    ]


def test_rcpt_to_wins_over_the_original_to() -> None:
    """Original-Rcpt-To is the address even when the original's To names someone else."""
    original = original_headers(to="other@example.com", message_id=None, mail_id=None)
    [report_] = parsed(arf(rcpt_to="<Ann@Example.COM>", original=original))
    assert report_.address == "Ann@example.com"


def test_an_arf_without_the_original() -> None:
    """A report without the original part still names the recipient."""
    raw = arf(original="")
    assert b"message/rfc822" not in raw and b"rfc822-headers" not in raw
    assert parsed(raw) == [Feedback("complaint", "ann@example.com", None, "abuse", "complaint")]


def test_a_bare_feedback_report() -> None:
    """A body whose own type is message/feedback-report (no multipart) is one complaint."""
    raw = (
        b"Content-Type: message/feedback-report\r\n"
        b"\r\n"
        b"Feedback-Type: abuse\r\n"
        b"User-Agent: MailboxFBL/2.1\r\n"
        b"Version: 1\r\n"
        b"Original-Rcpt-To: <ann@example.com>\r\n"
    )
    assert parse_feedback(raw, "message/feedback-report") == [
        Feedback("complaint", "ann@example.com", None, "abuse", "complaint")
    ]


@pytest.mark.parametrize(
    "content_type",
    [
        "Multipart/Report; report-type=feedback-report",
        "  multipart/report  ",
        "MESSAGE/FEEDBACK-REPORT",
        "multipart/report;boundary=other",
    ],
    ids=["mixed-case", "spaces", "upper-case", "other-params"],
)
def test_the_content_type_only_routes(content_type: str) -> None:
    """Any spelling of the two report types reads the body as a report (the body's own
    headers describe its structure)."""
    assert parse_feedback(arf(), content_type)[0].mail_id == "r7-3"


def test_the_boundary_may_come_with_the_http_content_type() -> None:
    """A multipart/report body without its own headers is read with the boundary of the
    Content-Type it was posted with."""
    raw = arf()
    content_type = content_type_of(raw)
    body = raw[raw.index(b"\r\n\r\n") + 4 :]
    assert body.startswith(b"This is a multi-part message")
    assert parse_feedback(body, content_type)[0].mail_id == "r7-3"


def test_encoded_original_headers_are_decoded() -> None:
    """A base64-encoded text/rfc822-headers part still names the mail."""
    encoded = base64.encodebytes(original_headers().encode()).decode()
    raw = report(
        "feedback-report",
        [
            ("text/plain", "A complaint.\r\n"),
            ("message/feedback-report", "Feedback-Type: abuse\r\nVersion: 1\r\n"),
            ("text/rfc822-headers", encoded),
        ],
        extra_part_headers="Content-Transfer-Encoding: base64\r\n",
    )
    assert parsed(raw) == [Feedback("complaint", None, "r7-3", "abuse", "complaint")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            arf(rcpt_to=None, original=original_headers(to=None, message_id=None, mail_id=None)),
            "^the report names neither the recipient nor the original mail$",
        ),
        (arf(rcpt_to=None, original=""), "^the report names neither the recipient nor "),
        (arf(rcpt_to="<not-an-address>"), "^feedback report: invalid address 'not-an-address'"),
        (
            report("feedback-report", [("text/plain", "Just text, no fields.\r\n")]),
            "^no feedback-report or failed delivery-status in the report$",
        ),
        (b"", "^no feedback-report or failed delivery-status in the report$"),
        (b"\xff\xfe garbage \x00", "^no feedback-report or failed delivery-status in the report$"),
    ],
    ids=[
        "nothing-names-anyone",
        "no-original-no-rcpt-to",
        "invalid-rcpt-to",
        "no-feedback-part",
        "empty-body",
        "garbage-body",
    ],
)
def test_unusable_arf_is_refused(raw: bytes, message: str) -> None:
    """An ARF report naming no one, naming an invalid address, or without a feedback part
    is an InvalidEvent."""
    with pytest.raises(InvalidEvent, match=message):
        parse_feedback(raw, "multipart/report; report-type=feedback-report")


# --- DSN bounces (RFC 3464) ------------------------------------------------------------------


def test_a_failed_dsn_suppresses_a_hard_bounce() -> None:
    """Action: failed with Status 5.1.1: a bounce suppressing the final recipient, the
    diagnostic kept as the detail, the mail found in the quoted headers."""
    assert parsed(dsn(recipient())) == [
        Feedback(
            "bounce",
            "bob@example.com",
            "r7-3",
            "5.1.1",
            "hard_bounce",
            "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected",
        )
    ]


@pytest.mark.parametrize(
    ("block", "status", "suppress"),
    [
        (recipient(action="delayed", status="4.4.1"), "4.4.1", None),
        (recipient(action="failed", status="4.4.7"), "4.4.7", None),
        (recipient(action="failed", status="5.7.1"), "5.7.1", None),
        (recipient(action="failed", status="5.2.2"), "5.2.2", None),
        (recipient(action="Failed", status=" 5.1.2 "), "5.1.2", "hard_bounce"),
        (recipient(action=" FAILED ", status="5.1.10"), "5.1.10", "hard_bounce"),
        (recipient(status="5.1.1 (user unknown)"), "5.1.1 (user unknown)", None),
        (recipient(status=None), "", None),
    ],
    ids=[
        "delayed-4.4.1",
        "failed-4.4.7",
        "failed-5.7.1-policy",
        "failed-5.2.2-full",
        "action-case-and-space",
        "action-upper-5.1.10",
        "status-with-comment",
        "no-status",
    ],
)
def test_dsn_suppression_rules(block: str, status: str, suppress: str | None) -> None:
    """Failed and delayed recipients become bounces; only a 5.1.x status suppresses."""
    [report_] = parsed(dsn(block))
    assert (report_.kind, report_.status, report_.suppress) == ("bounce", status, suppress)


def test_dsn_recipients_that_were_delivered_are_skipped() -> None:
    """delivered, relayed and expanded recipients give nothing; the others come in order."""
    raw = dsn(
        recipient(action="delivered", status="2.0.0", final="rfc822; ann@example.com"),
        recipient(final="rfc822; bob@example.com"),
        recipient(action="relayed", status="2.0.0", final="rfc822; carol@example.com"),
        recipient(action="delayed", status="4.2.2", final="rfc822; dan@example.com"),
        recipient(action="expanded", status="2.0.0", final="rfc822; list@example.com"),
    )
    assert [(r.address, r.status, r.suppress) for r in parsed(raw)] == [
        ("bob@example.com", "5.1.1", "hard_bounce"),
        ("dan@example.com", "4.2.2", None),
    ]


@pytest.mark.parametrize(
    ("block", "address"),
    [
        (recipient(final="rfc822;Bob@Example.COM"), "Bob@example.com"),
        (recipient(final="RFC822; <bob@example.com>"), "bob@example.com"),
        (recipient(final=None, original="rfc822; bob@example.com"), "bob@example.com"),
        (recipient(original="rfc822; alias@example.com"), "bob@example.com"),
        (recipient(final=None), None),
    ],
    ids=[
        "normalised",
        "brackets",
        "original-recipient-fallback",
        "final-wins",
        "no-recipient-but-mail",
    ],
)
def test_the_dsn_address(block: str, address: str | None) -> None:
    """The address is the Final-Recipient, else the Original-Recipient, else None (the mail's)."""
    [report_] = parsed(dsn(block))
    assert (report_.address, report_.mail_id) == (address, "r7-3")


def test_a_long_diagnostic_is_truncated() -> None:
    """The diagnostic code is cut at 500 characters; a missing one is ''."""
    [long_, none] = parsed(
        dsn(recipient(diagnostic="smtp; 550 " + "x" * 600), recipient(diagnostic=None))
    )
    assert long_.detail == ("smtp; 550 " + "x" * 600)[:500]
    assert none.detail == ""


def test_a_dsn_with_the_whole_original() -> None:
    """A DSN quoting the original as message/rfc822 finds the mail there too."""
    per_message = "Reporting-MTA: dns; relay.shop.example\r\n"
    raw = report(
        "delivery-status",
        [
            ("text/plain", "Undeliverable.\r\n"),
            ("message/delivery-status", per_message + "\r\n" + recipient()),
            ("message/rfc822", original_headers(mail_id="r5-5") + "\r\nHello\r\n"),
        ],
    )
    assert [(r.address, r.mail_id) for r in parsed(raw)] == [("bob@example.com", "r5-5")]


def test_a_dsn_without_the_original_has_no_mail() -> None:
    """Without the original the bounce names only the recipient."""
    [report_] = parsed(dsn(recipient(), original=""))
    assert (report_.address, report_.mail_id, report_.suppress) == (
        "bob@example.com",
        None,
        "hard_bounce",
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            dsn(recipient(action="delivered", status="2.0.0")),
            "^no feedback-report or failed delivery-status in the report$",
        ),
        (dsn(), "^no feedback-report or failed delivery-status in the report$"),
        (
            dsn(recipient(final=None), original=""),
            "^the report names neither the recipient nor the original mail$",
        ),
        (
            dsn(recipient(final=None), original=original_headers(message_id=None, mail_id=None)),
            "^the report names neither the recipient nor the original mail$",
        ),
        (
            dsn(recipient(), recipient(final=None), original=""),
            "^the report names neither the recipient nor the original mail$",
        ),
        (dsn(recipient(final="rfc822; bob")), r"^dsn: invalid address 'bob'"),
        (dsn(recipient(final="x-unknown; bob@example.com")), r"^dsn: invalid address"),
    ],
    ids=[
        "only-delivered",
        "no-recipient-blocks",
        "no-recipient-no-original",
        "no-recipient-original-unknown",
        "one-of-two-unnamed",
        "invalid-final-recipient",
        "unknown-address-type",
    ],
)
def test_unusable_dsn_is_refused(raw: bytes, message: str) -> None:
    """A DSN with nothing failed, naming no one, or with a bad address is an InvalidEvent."""
    with pytest.raises(InvalidEvent, match=message):
        parsed(raw)


def test_a_report_with_both_parts() -> None:
    """A report carrying a feedback-report and a delivery-status part gives both, in order."""
    raw = report(
        "feedback-report",
        [
            ("message/feedback-report", "Feedback-Type: abuse\r\nVersion: 1\r\n"),
            ("message/delivery-status", "Reporting-MTA: dns; x\r\n\r\n" + recipient()),
            ("text/rfc822-headers", original_headers()),
        ],
    )
    assert [(r.kind, r.address, r.mail_id) for r in parsed(raw)] == [
        ("complaint", None, "r7-3"),
        ("bounce", "bob@example.com", "r7-3"),
    ]


# --- robustness --------------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(data=st.data())
def test_a_corrupted_report_is_a_reason_never_a_crash(data: st.DataObject) -> None:
    """Any single-byte change of a valid ARF or DSN gives reports or an InvalidEvent."""
    raw = data.draw(
        st.sampled_from([arf(), arf(original_type="text/rfc822-headers"), dsn(recipient())]),
        label="report",
    )
    at = data.draw(st.integers(0, len(raw) - 1), label="at")
    byte = data.draw(st.integers(0, 255), label="byte")
    corrupted = raw[:at] + bytes([byte]) + raw[at + 1 :]
    try:
        reports = parse_feedback(corrupted, "multipart/report")
    except InvalidEvent:
        return
    assert reports and all(isinstance(r, Feedback) for r in reports)


@settings(deadline=None, max_examples=200)
@given(body=st.binary(max_size=300), content_type=st.sampled_from([JSON, "multipart/report"]))
def test_arbitrary_bytes_are_a_reason_never_a_crash(body: bytes, content_type: str) -> None:
    """Any body at all gives reports or an InvalidEvent, never another exception."""
    try:
        reports = parse_feedback(body, content_type)
    except InvalidEvent:
        return
    assert all(isinstance(r, Feedback) for r in reports)


# --- the helpers' defensive paths --------------------------------------------------------------


def test_fields_of_a_part_left_as_text() -> None:
    """A delivery-status part whose payload is still text (as a headers-only parser leaves
    it) is split into its blocks; Python's full parser never produces one."""
    part = Message()
    part.set_type("message/delivery-status")
    part.set_payload("Reporting-MTA: dns; x\n\nAction: failed\nStatus: 5.1.1\n\n\n")
    blocks = _fields(part)
    assert [dict(b.items()) for b in blocks] == [
        {"Reporting-MTA": "dns; x"},
        {"Action": "failed", "Status": "5.1.1"},
    ]
    nothing = Message()
    nothing.set_type("message/delivery-status")
    assert nothing.get_payload() is None
    assert _fields(nothing) == []


def test_original_skips_an_rfc822_part_without_a_message() -> None:
    """A message/rfc822 part whose payload is not a parsed mail is passed over."""
    outer = Message()
    outer.set_type("multipart/report")
    unparsed = Message()
    unparsed.set_type("message/rfc822")
    unparsed.set_payload("To: ann@example.com\n\nbody\n")
    empty = Message()
    empty.set_type("message/rfc822")
    empty.set_payload([])
    outer.set_payload([unparsed, empty])
    assert _original(outer) is None
