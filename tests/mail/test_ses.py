"""SES through SNS: the SNS envelope checked (type, fields, certificate and subscription URLs,
signature version), the signature verified with the certificate at its URL (SignatureVersion 1
and 2, cached by URL), and SES's notifications (the AWS guides' examples) turned into reports."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rtserver.errors import InvalidEvent, InvalidSignature
from rtserver.mail.feedback import Feedback
from rtserver.mail.ses import (
    MAX_AGE_S,
    FetchFailed,
    Sns,
    SnsMessage,
    check_fresh,
    ses_reports,
    sns_message,
)
from tests.support.relays import fixture
from tests.support.sns import CERT_URL, SNS_HOST, TOPIC, LocalSns

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> LocalSns:
    return LocalSns.create(tmp_path_factory.mktemp("sns"))


class Certificates:
    """The fetch :class:`Sns` is given: serves PEM bodies by URL and counts the requests."""

    def __init__(self, **bodies: bytes) -> None:
        self.bodies = bodies
        self.asked: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.asked.append(url)
        if url not in self.bodies:
            raise FetchFailed("404 Not Found")
        return self.bodies[url]


def message(envelope: dict[str, Any]) -> SnsMessage:
    return sns_message(orjson.dumps(envelope))


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_signed_notification_verifies_with_either_signature_version(
    local: LocalSns, version: str
) -> None:
    """SignatureVersion 1 (SHA1withRSA) and 2 (SHA256withRSA) both verify; the fields come out
    checked."""
    fetch = Certificates(**{CERT_URL: local.signing_pem})
    signed = message(local.notification({"notificationType": "Delivery"}, at=NOW, version=version))
    await Sns(fetch).verify(signed)
    assert (signed.type, signed.topic_arn, signed.version) == ("Notification", TOPIC, version)
    assert signed.timestamp == NOW
    assert signed.subscribe_url is None


async def test_a_subject_is_signed_when_present(local: LocalSns) -> None:
    fetch = Certificates(**{CERT_URL: local.signing_pem})
    signed = message(local.notification({}, at=NOW, Subject="Amazon SES Email Event"))
    assert b"Subject\nAmazon SES Email Event\n" in signed.signed
    await Sns(fetch).verify(signed)


@pytest.mark.parametrize(
    "change",
    [
        {"Message": '{"notificationType": "Complaint"}'},
        {"TopicArn": "arn:aws:sns:us-east-1:123456789012:other"},
        {"Timestamp": "2027-01-15T08:00:01.000Z"},
        {"Subject": "added after signing"},
        {"SignatureVersion": "2"},
        {"Signature": base64.b64encode(b"\0" * 256).decode()},
    ],
)
async def test_a_changed_field_or_signature_does_not_verify(
    local: LocalSns, change: dict[str, str]
) -> None:
    fetch = Certificates(**{CERT_URL: local.signing_pem})
    envelope = local.notification({"notificationType": "Bounce"}, at=NOW) | change
    with pytest.raises(InvalidSignature, match="no valid SNS signature"):
        await Sns(fetch).verify(message(envelope))


@pytest.mark.parametrize(
    "url",
    [
        f"http://{SNS_HOST}/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-abc.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://s3.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.amazonaws.com/SimpleNotificationService-abc.pem",
        f"https://{SNS_HOST}/SimpleNotificationService-abc.crt",
        f"https://{SNS_HOST}/SimpleNotificationService-abc.pem?x=1",
        f"https://{SNS_HOST}/SimpleNotificationService-abc.pem#x",
        f"https://{SNS_HOST}:8443/SimpleNotificationService-abc.pem",
        f"https://user@{SNS_HOST}/SimpleNotificationService-abc.pem",
        f"https://{SNS_HOST}/../evil/abc.pem",
        f"https://{SNS_HOST}/",
        f"https://{SNS_HOST.upper()}/SimpleNotificationService-abc.pem",
        f"https://{SNS_HOST}/SimpleNotificationService-abc.pem\n",
        None,
    ],
)
def test_a_certificate_url_off_the_sns_hosts_is_refused(local: LocalSns, url: str | None) -> None:
    """Only ``https://sns.<region>.amazonaws.com[.cn]/<name>.pem``: http, another host (or one
    that only starts or ends like it), a port, a user, a query, another suffix: all refused
    before anything is fetched."""
    envelope = local.notification({}, at=NOW, SigningCertURL=url)
    with pytest.raises(InvalidSignature, match="SigningCertURL"):
        message(envelope)


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-7506a1e35b36ef5a444dd1a8e7cc3ed8.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3242f6ec0f5c2f8b3bc8b2f3c32f3e1a.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    ],
)
def test_certificate_urls_of_every_partition_are_taken(local: LocalSns, url: str) -> None:
    assert message(local.notification({}, at=NOW, SigningCertURL=url)).cert_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=1",
        "https://evil.example/?Action=ConfirmSubscription&Token=1",
        "https://sns.us-east-1.amazonaws.com:444/?Action=ConfirmSubscription&Token=1",
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=<script>",
    ],
)
def test_a_subscribe_url_off_the_sns_hosts_is_refused(local: LocalSns, url: str) -> None:
    envelope = local.confirmation(at=NOW) | {"SubscribeURL": url}
    with pytest.raises(InvalidSignature, match="SubscribeURL"):
        message(envelope)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (fixture("ses/bounce-permanent.json"), "raw message delivery"),
        ({"Type": "Notification"}, "raw message delivery"),
        ([1, 2], "raw message delivery"),
        ({"Type": "Event", "Signature": "x"}, "unknown SNS message Type 'Event'"),
        ({"Type": 7, "Signature": "x"}, "unknown SNS message Type 7"),
    ],
)
def test_a_body_without_the_sns_envelope_is_malformed(body: Any, reason: str) -> None:
    """SES's notification posted raw (raw message delivery on) lacks the signed envelope: the
    answer says to turn raw delivery off."""
    with pytest.raises(InvalidEvent, match=reason):
        sns_message(orjson.dumps(body))


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"Message": None}, InvalidEvent, "without Message"),
        ({"TopicArn": 5}, InvalidEvent, "without TopicArn"),
        ({"MessageId": "../1"}, InvalidEvent, "MessageId must be"),
        ({"Timestamp": "yesterday"}, InvalidEvent, "ISO 8601"),
        ({"Timestamp": "2027-01-15T08:00:00"}, InvalidEvent, "with a time zone"),
        ({"SignatureVersion": "3"}, InvalidSignature, "unsupported SignatureVersion '3'"),
        ({"SignatureVersion": None}, InvalidSignature, "unsupported SignatureVersion None"),
        ({"Signature": "not base64!"}, InvalidSignature, "not base64"),
    ],
)
def test_a_malformed_envelope_is_refused_with_the_reason(
    local: LocalSns, change: dict[str, Any], error: type[Exception], reason: str
) -> None:
    envelope = local.notification({}, at=NOW) | change
    with pytest.raises(error, match=reason):
        message(envelope)


def test_a_confirmation_needs_its_subscribe_url(local: LocalSns) -> None:
    envelope = local.confirmation(at=NOW)
    del envelope["SubscribeURL"]
    with pytest.raises(InvalidEvent, match="without SubscribeURL"):
        message(envelope)


def test_only_a_message_of_the_last_hour_is_fresh(local: LocalSns) -> None:
    signed = message(local.notification({}, at=NOW))
    check_fresh(signed, NOW + MAX_AGE_S, 300)
    check_fresh(signed, NOW - 300, 300)
    with pytest.raises(InvalidSignature, match="more than 1 hour old"):
        check_fresh(signed, NOW + MAX_AGE_S + 1, 300)
    with pytest.raises(InvalidSignature, match="more than 300 s ahead"):
        check_fresh(signed, NOW - 301, 300)


async def test_certificates_are_fetched_once_per_url_and_the_cache_is_bounded(
    local: LocalSns,
) -> None:
    """A second message signed with the same certificate fetches nothing; past the cache's
    size the least recently used certificate goes."""
    urls = [f"https://{SNS_HOST}/SimpleNotificationService-{n}.pem" for n in "abc"]
    fetch = Certificates(**{url: local.signing_pem for url in urls})
    sns = Sns(fetch, cache_size=2)
    for url in (urls[0], urls[0], urls[1], urls[0], urls[2], urls[0], urls[1]):
        await sns.verify(message(local.notification({}, at=NOW, SigningCertURL=url)))
    assert fetch.asked == [urls[0], urls[1], urls[2], urls[1]]


def _ec_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    moment = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(moment)
        .not_valid_after(moment + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>not a certificate</html>", "holds no PEM certificate"),
        (_ec_certificate(), "has no RSA key"),
    ],
)
async def test_a_certificate_url_without_an_rsa_certificate_fails(
    local: LocalSns, body: bytes, reason: str
) -> None:
    fetch = Certificates(**{CERT_URL: body})
    with pytest.raises(InvalidSignature, match=reason):
        await Sns(fetch).verify(message(local.notification({}, at=NOW)))


async def test_a_certificate_that_cannot_be_fetched_is_a_fetch_failure(local: LocalSns) -> None:
    with pytest.raises(FetchFailed):
        await Sns(Certificates()).verify(message(local.notification({}, at=NOW)))


async def test_a_confirmation_fetches_its_subscribe_url(local: LocalSns) -> None:
    """Confirming GETs the SubscribeURL; a Notification confirms nothing."""
    confirmation = message(local.confirmation(at=NOW))
    assert confirmation.subscribe_url is not None
    fetch = Certificates(**{confirmation.subscribe_url: b"<ConfirmSubscriptionResponse/>"})
    await Sns(fetch).confirm(confirmation)
    assert fetch.asked == [confirmation.subscribe_url]
    with pytest.raises(InvalidEvent, match="confirms no subscription"):
        await Sns(fetch).confirm(message(local.notification({}, at=NOW)))


def _with_headers(notification: dict[str, Any], **headers: str) -> dict[str, Any]:
    mail = notification["mail"]
    names = {name.lower().replace("_", "-") for name in headers}
    kept = [h for h in mail.get("headers", []) if h["name"].lower() not in names]
    mail["headers"] = kept + [{"name": k.replace("_", "-"), "value": v} for k, v in headers.items()]
    return notification


def test_a_permanent_bounce_suppresses_and_names_the_mail_by_its_header() -> None:
    """The SES guide's bounce (Permanent, 5.1.1): a hard bounce of the recipient; the mail is
    found by the X-RT-Mail-ID header SES passed on."""
    notification = _with_headers(fixture("ses/bounce-permanent.json"), X_RT_Mail_ID="r1-2")
    (report,) = ses_reports(orjson.dumps(notification).decode())
    assert report == Feedback(
        "bounce",
        "jane@example.com",
        "r1-2",
        "5.1.1",
        "hard_bounce",
        "smtp; 550 5.1.1 <jane@example.com>... User",
    )


def test_the_message_id_names_the_mail_when_the_header_is_missing() -> None:
    """Without X-RT-Mail-ID, rtserver's Message-ID (in the headers, else commonHeaders) does."""
    notification = _with_headers(
        fixture("ses/bounce-permanent.json"), Message_ID="<r1-3@shop.example>"
    )
    assert ses_reports(orjson.dumps(notification).decode())[0].mail_id == "r1-3"
    notification = fixture("ses/event-bounce.json")
    notification["mail"]["commonHeaders"]["messageId"] = "<r1-4@shop.example>"
    (report,) = ses_reports(orjson.dumps(notification).decode())
    assert (report.mail_id, report.suppress, report.address) == (
        "r1-4",
        "hard_bounce",
        "recipient@example.com",
    )


def test_a_permanent_bounce_follows_the_status_rules() -> None:
    """As for every relay: with a status, only 5.1.x suppresses; without one, Permanent does."""
    notification = fixture("ses/bounce-permanent.json")
    recipient = notification["bounce"]["bouncedRecipients"][0]
    recipient["status"] = "5.7.1"
    assert ses_reports(orjson.dumps(notification).decode())[0].suppress is None
    recipient["status"] = "smtp; 550"  # not an enhanced status code: the bounce type decides
    del recipient["diagnosticCode"]
    (report,) = ses_reports(orjson.dumps(notification).decode())
    assert (report.status, report.suppress, report.detail) == ("hard", "hard_bounce", "General")


def test_a_transient_bounce_is_recorded_not_suppressed() -> None:
    (report,) = ses_reports(orjson.dumps(fixture("ses/bounce-transient.json")).decode())
    assert (report.kind, report.status, report.suppress, report.mail_id) == (
        "bounce",
        "4.2.2",
        None,
        None,
    )


def test_a_complaint_suppresses_its_recipients() -> None:
    notification = _with_headers(fixture("ses/complaint.json"), X_RT_Mail_ID="r1-2")
    (report,) = ses_reports(orjson.dumps(notification).decode())
    assert report == Feedback("complaint", "richard@example.com", "r1-2", "abuse", "complaint")
    del notification["complaint"]["complaintFeedbackType"]
    notification["eventType"] = notification.pop("notificationType")
    assert ses_reports(orjson.dumps(notification).decode())[0].status == "abuse"


@pytest.mark.parametrize(
    "notification",
    [
        fixture("ses/delivery.json"),
        {"eventType": "Send", "mail": {}},
        {"eventType": "Open"},
        {"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"},
    ],
)
def test_other_notifications_are_ignored(notification: dict[str, Any]) -> None:
    assert ses_reports(orjson.dumps(notification).decode()) == []


@pytest.mark.parametrize(
    ("notification", "reason"),
    [
        ("Hello world!", "malformed json|not valid json|json"),
        ([], "not an SES notification"),
        ({"notificationType": "Bounce"}, "bounce must be a json object"),
        ({"notificationType": "Bounce", "bounce": {}}, "bouncedRecipients must be a non-empty"),
        (
            {"notificationType": "Bounce", "bounce": {"bouncedRecipients": ["a@example.com"]}},
            "must be json objects",
        ),
        (
            {"eventType": "Complaint", "complaint": {"complainedRecipients": [{}] * 101}},
            "more than 100 complainedRecipients",
        ),
        (
            {"eventType": "Complaint", "complaint": {"complainedRecipients": [{}]}},
            "needs email, mail_id or message_id",
        ),
        (
            {
                "notificationType": "Bounce",
                "mail": {"headers": [{"name": "X-RT-Mail-ID"}, "x"], "commonHeaders": []},
                "bounce": {"bouncedRecipients": [{"emailAddress": "not an address"}]},
            },
            "bouncedRecipients\\[0\\]",
        ),
    ],
)
def test_a_malformed_ses_notification_is_refused(notification: Any, reason: str) -> None:
    text = notification if isinstance(notification, str) else orjson.dumps(notification).decode()
    with pytest.raises(InvalidEvent, match=reason):
        ses_reports(text)


def test_the_fixtures_name_their_source() -> None:
    """Every sample payload says where its shape comes from."""
    folder = Path(__file__).resolve().parents[1] / "fixtures"
    for path in [*folder.glob("ses/*.json"), *folder.glob("postmark/*.json")]:
        assert "_source" in orjson.loads(path.read_bytes()), path.name
