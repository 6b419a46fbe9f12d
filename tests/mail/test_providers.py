"""The relays' own webhook formats: Mailgun (HMAC of timestamp + token) and SendGrid (ECDSA over
timestamp + body), verified on an explicit clock and turned into feedback reports; Postmark's
records (authenticated by the route) turned into reports."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rtserver.errors import InvalidEvent, InvalidSignature
from rtserver.mail.feedback import Feedback
from rtserver.mail.providers import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    mailgun,
    postmark,
    sendgrid,
    sendgrid_key,
)
from tests.support.relays import (
    MAILGUN_KEY,
    NOW,
    SENDGRID_EVENTS,
    failed,
    fixture,
    mailgun_body,
    public_b64,
    sendgrid_request,
)

TOLERANCE = 300.0


def test_a_mailgun_permanent_failure_is_a_hard_bounce() -> None:
    """A permanent 5.1.1 failure suppresses; its message-id names the mail; the token is the
    replay id."""
    body = mailgun_body(failed("permanent"))
    token, reports = mailgun(body, MAILGUN_KEY, NOW + 10, TOLERANCE)
    assert token == orjson.loads(body)["signature"]["token"]
    assert reports == [
        Feedback(
            "bounce", "ann@example.com", "r1-2", "5.1.1", "hard_bounce", "mailbox does not exist"
        )
    ]


@pytest.mark.parametrize(
    ("event", "suppress"),
    [
        (failed("temporary", "4.2.2"), None),
        (failed("permanent", "5.7.1"), None),
        (failed("permanent", None), "hard_bounce"),
        (failed("temporary", None), None),
        ({"event": "complained", "recipient": "ann@example.com"}, "complaint"),
    ],
    ids=["temporary", "policy", "permanent-no-code", "temporary-no-code", "complaint"],
)
def test_mailgun_events_follow_the_suppression_rules(
    event: dict[str, Any], suppress: str | None
) -> None:
    """The same rules as every relay's: only 5.1.x (or a hard bounce without a code) and
    complaints suppress."""
    (report,) = mailgun(mailgun_body(event), MAILGUN_KEY, NOW, TOLERANCE)[1]
    assert report.suppress == suppress and report.address == "ann@example.com"


def test_other_mailgun_events_are_ignored() -> None:
    """delivered, opened, clicked: rtserver counts those itself."""
    for kind in ("delivered", "opened", "clicked", "accepted"):
        event = {"event": kind, "recipient": "ann@example.com"}
        assert mailgun(mailgun_body(event), MAILGUN_KEY, NOW, TOLERANCE)[1] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (mailgun_body(failed("permanent"), key="key-another-one-entirely-0000"), "no valid"),
        (mailgun_body(failed("permanent"), at=NOW - 301), "from now"),
        (mailgun_body(failed("permanent"), at=NOW + 301), "from now"),
        (orjson.dumps({"event-data": failed("permanent")}), "missing signature"),
        (orjson.dumps({"signature": {"timestamp": str(NOW)}}), "missing signature token"),
        (orjson.dumps([1, 2]), "missing signature"),
    ],
    ids=["wrong-key", "stale", "future", "unsigned", "no-token", "not-an-object"],
)
def test_a_forged_or_stale_mailgun_webhook_is_refused(body: bytes, message: str) -> None:
    """A wrong key, a timestamp more than the tolerance away, a missing signature: refused."""
    with pytest.raises(InvalidSignature, match=message):
        mailgun(body, MAILGUN_KEY, NOW, TOLERANCE)


def test_a_signed_mailgun_body_that_is_no_event_is_malformed() -> None:
    """Signed, but its event-data is not an object, or a report lacks a recipient: 400s."""
    signed = orjson.loads(mailgun_body({"event": "failed"}))
    with pytest.raises(InvalidEvent, match="event-data must be a json object"):
        mailgun(orjson.dumps({**signed, "event-data": [1]}), MAILGUN_KEY, NOW, TOLERANCE)
    with pytest.raises(InvalidEvent, match="needs email"):
        mailgun(mailgun_body({"event": "failed"}), MAILGUN_KEY, NOW, TOLERANCE)


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_sendgrid_events_become_reports(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """Bounces (hard and blocked), deferrals and spam reports become reports with the
    suppression rules applied; the rest are ignored; the replay id is the signature's hash."""
    body, headers = sendgrid_request(signing_key, SENDGRID_EVENTS)
    replay, reports = sendgrid(body, headers, public_b64(signing_key), NOW, TOLERANCE)
    assert replay.startswith("sendgrid-") and len(replay) == len("sendgrid-") + 32
    assert [(r.kind, r.address, r.status, r.suppress, r.mail_id) for r in reports] == [
        ("bounce", "ann@example.com", "5.1.1", "hard_bounce", "r1-2"),
        ("bounce", "bob@example.com", "5.7.1", None, None),
        ("bounce", "cy@example.com", "4.2.2", None, None),
        ("complaint", "di@example.com", "abuse", "complaint", None),
    ]
    assert reports[0].detail == "550 5.1.1 unknown user" and reports[2].detail == "full"


def test_a_forged_or_stale_sendgrid_webhook_is_refused(
    signing_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Another key, a changed body, a stale timestamp, missing or undecodable headers."""
    public = public_b64(signing_key)
    body, headers = sendgrid_request(signing_key, SENDGRID_EVENTS)
    other = ec.generate_private_key(ec.SECP256R1())
    forged_body, forged = sendgrid_request(other, SENDGRID_EVENTS)
    stale_body, stale = sendgrid_request(signing_key, SENDGRID_EVENTS, at=NOW - 301)
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (forged_body, forged, "no valid signature"),
        (body + b" ", headers, "no valid signature"),
        (stale_body, stale, "from now"),
        (body, {SENDGRID_TIMESTAMP: str(NOW)}, "missing"),
        (body, {**headers, SENDGRID_SIGNATURE: "!!not base64"}, "no valid signature"),
        (body, {**headers, SENDGRID_TIMESTAMP: "12.5"}, "Unix seconds"),
    ]
    for sent, sent_headers, message in cases:
        with pytest.raises(InvalidSignature, match=message):
            sendgrid(sent, sent_headers, public, NOW, TOLERANCE)


def test_a_signed_sendgrid_body_must_be_a_list_of_events(
    signing_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Signed but not a JSON array, or an event that is not an object: malformed."""
    public = public_b64(signing_key)
    for events, message in [({"event": "bounce"}, "json array"), ([1], "must be a json object")]:
        body, headers = sendgrid_request(signing_key, events)
        with pytest.raises(InvalidEvent, match=message):
            sendgrid(body, headers, public, NOW, TOLERANCE)
    body, headers = sendgrid_request(signing_key, [{"event": "open"}] * 1001)
    with pytest.raises(InvalidEvent, match="more than 1000 events"):
        sendgrid(body, headers, public, NOW, TOLERANCE)


def test_sendgrid_key_must_be_an_ec_public_key() -> None:
    """The configured key is base64 DER of an EC public key; anything else is refused."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    rsa_der = rsa_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an elliptic-curve public key"):
        sendgrid_key(base64.b64encode(rsa_der).decode())
    for bad in ("not base64!", base64.b64encode(b"not der").decode()):
        with pytest.raises(ValueError, match="not a base64 DER public key"):
            sendgrid_key(bad)


def _postmark(name: str, **change: Any) -> bytes:
    return orjson.dumps(fixture(f"postmark/{name}.json") | change)


def test_a_postmark_hard_bounce_suppresses() -> None:
    """Postmark's sample hard bounce: the Email suppressed, the replay id its type and ID, the
    mail found by the X-RT-Mail-ID header in the bounce content."""
    content = "Return-Path: <>\r\nX-RT-Mail-ID: r1-2\r\nSubject: Your cart\r\n"
    replay, (report,) = postmark(_postmark("bounce-hard", Content=content))
    assert replay == "postmark-Bounce-4323372036854775807"
    assert report == Feedback(
        "bounce", "john@example.com", "r1-2", "hard", "hard_bounce", "Test bounce details"
    )


@pytest.mark.parametrize(
    ("metadata", "content", "mail_id"),
    [
        ({"rt-mail-id": "r1-3"}, "X-RT-Mail-ID: r1-2", "r1-3"),
        ({"RT_Mail_ID": "r1-4"}, None, "r1-4"),
        ({"rt-mail-id": 7}, "x-rt-mail-id:\tr1-5\n", "r1-5"),
        ({"a_key": "a_value"}, "X-RT-Mail-ID: placeholder\n", "placeholder"),
        ("not a dict", "no header here", None),
    ],
)
def test_postmark_mail_ids_come_from_metadata_then_the_content(
    metadata: Any, content: str | None, mail_id: str | None
) -> None:
    body = _postmark("bounce-hard", Metadata=metadata, Content=content)
    assert postmark(body)[1][0].mail_id == mail_id


@pytest.mark.parametrize(
    ("kind", "suppress"),
    [
        ("HardBounce", "hard_bounce"),
        ("BadEmailAddress", "hard_bounce"),
        ("SoftBounce", None),
        ("Transient", None),
        ("DnsError", None),
        ("Blocked", None),
        ("SpamNotification", None),
        ("Unknown", None),
    ],
)
def test_postmark_bounce_types_follow_the_suppression_rules(
    kind: str, suppress: str | None
) -> None:
    (report,) = postmark(_postmark("bounce-soft", Type=kind))[1]
    assert (report.kind, report.suppress) == ("bounce", suppress)
    assert report.status == ("hard" if suppress else "soft")


def test_a_postmark_soft_bounce_is_recorded_with_its_details() -> None:
    replay, (report,) = postmark(_postmark("bounce-soft"))
    assert replay == "postmark-Bounce-4323372036854775808"
    assert report == Feedback(
        "bounce", "john@example.com", None, "soft", None, "smtp;452 4.2.2 mailbox full"
    )


def test_a_postmark_spam_complaint_suppresses() -> None:
    replay, (report,) = postmark(_postmark("spam-complaint"))
    assert replay == "postmark-SpamComplaint-42"
    assert report == Feedback("complaint", "john@example.com", None, "abuse", "complaint")
    body = _postmark("bounce-hard", Type="SpamComplaint", ID="77")
    replay, (report,) = postmark(body)
    assert (replay, report.kind) == ("postmark-Bounce-77", "complaint")


@pytest.mark.parametrize(
    "body",
    [
        _postmark("delivery"),
        _postmark("bounce-hard", Type="AutoResponder"),
        _postmark("bounce-hard", Type="Unsubscribe"),
        _postmark("bounce-hard", Type="ManuallyDeactivated"),
        orjson.dumps({"RecordType": "Open", "MessageID": "x"}),
    ],
)
def test_other_postmark_records_are_ignored(body: bytes) -> None:
    """Deliveries, opens and bounce types that say nothing of the mailbox: no report; the
    replay id is the body's hash."""
    replay, reports = postmark(body)
    assert reports == [] and replay.startswith("postmark-") and len(replay) == 41


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "one Postmark record"),
        (b"{", "json"),
        (_postmark("bounce-hard", ID=None), "needs an ID"),
        (_postmark("bounce-hard", ID=True), "needs an ID"),
        (_postmark("bounce-hard", ID=""), "needs an ID"),
        (_postmark("spam-complaint", ID=[1]), "SpamComplaint record needs an ID"),
        (_postmark("bounce-hard", Email=None, Content=None, Metadata={}), "needs email"),
    ],
)
def test_a_malformed_postmark_record_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        postmark(body)
