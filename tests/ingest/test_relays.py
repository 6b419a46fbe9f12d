"""Amazon SES (through SNS) and Postmark webhooks against a real server: SNS messages signed
with a local signing certificate that the server fetches, through its outbound guard, from a
local HTTPS server posing as ``sns.us-east-1.amazonaws.com`` (a throwaway CA); mails sent over
a real SMTP server; suppressions and events read back from the real store."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from rtserver.config import Config
from rtserver.config.schema import PostmarkConfig, SesConfig
from rtserver.config.settings import Secret
from rtserver.ingest import guarded_fetch
from rtserver.ingest.relays import _allowed
from tests.support.events import shopper, tracked
from tests.support.mail import LAMP, smtp_config
from tests.support.relays import fixture
from tests.support.server import FakeClock, LiveServer, advance, make_config, run_server, sent
from tests.support.smtp_server import SMTPServer
from tests.support.sns import CERT_PATH, SNS_HOST, TOPIC, LocalSns

SNS_HEADERS = {"content-type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "x"}
POSTMARK_USER = "postmark-hooks"
POSTMARK_PASSWORD = "pm-0123456789abcdefghijklmnopqrstuv"


def with_relays(config: Config, *, allow_ips: tuple[str, ...] = ()) -> Config:
    """``config`` taking SES messages from :data:`TOPIC` and Postmark's webhooks."""
    keys = dataclasses.replace(config.keys, postmark_password=Secret(POSTMARK_PASSWORD))
    return dataclasses.replace(
        config,
        keys=keys,
        ses=SesConfig(topic_arns=(TOPIC,)),
        postmark=PostmarkConfig(username=POSTMARK_USER, allow_ips=allow_ips),
    )


async def mailed(live: LiveServer, clock: FakeClock, smtpd: SMTPServer) -> Any:
    """Ann's cart reminder, delivered over SMTP; its message."""
    async with live.ws() as ws:
        batch = [shopper("u1", "ann@example.com"), tracked("u1", "Product Added", **LAMP)]
        await ws.send(orjson.dumps({"batch": batch}).decode())
        await ws.recv()
    await advance(live, clock, 1800)
    (received,) = await smtpd.wait_for(1)
    await sent(live)
    return received.message


def ses_bounce(mail_id: str, address: str = "ann@example.com") -> dict[str, Any]:
    """The SES guide's permanent bounce, for ``address`` and the mail ``mail_id``."""
    notification = fixture("ses/bounce-permanent.json")
    notification["bounce"]["bouncedRecipients"][0]["emailAddress"] = address
    notification["mail"]["headers"].append({"name": "X-RT-Mail-ID", "value": mail_id})
    return notification


async def post_sns(live: LiveServer, envelope: dict[str, Any] | bytes) -> httpx.Response:
    """POST as SNS does: JSON labelled text/plain."""
    body = envelope if isinstance(envelope, bytes) else orjson.dumps(envelope)
    async with live.http() as http:
        return await http.post("/v1/webhooks/ses", content=body, headers=SNS_HEADERS)


@pytest.fixture
def local(tmp_path: Path) -> LocalSns:
    folder = tmp_path / "sns"
    folder.mkdir()
    return LocalSns.create(folder)


async def test_a_signed_ses_notification_from_an_allowed_topic_suppresses_once(
    tmp_path: Path, local: LocalSns
) -> None:
    """A Permanent bounce signed with SignatureVersion 1 suppresses Ann and records Email
    Bounced on her mail; replayed, it is a duplicate; a complaint signed with version 2 records
    Email Marked as Spam. The certificate is fetched once, through the guard, from the
    "SNS" host."""
    clock = FakeClock()
    async with SMTPServer() as smtpd, local.running() as sns:
        config = with_relays(smtp_config(tmp_path, smtpd))
        async with run_server(config, clock=clock, sns_fetch=local.fetch()) as live:
            message = await mailed(live, clock, smtpd)
            mail_id = message["X-RT-Mail-ID"]
            bounce = local.notification(ses_bounce(mail_id), at=clock(), message_id="b-1")
            answer = await post_sns(live, bounce)
            assert answer.json() == {"success": True, "processed": 1}, answer.text
            store = live.runtime.store
            assert await store.mail.suppressed("ann@example.com") == "hard_bounce"
            (bounced,) = await store.events_of("u:u1", limit=1)
            assert bounced["event"] == "Email Bounced"
            assert bounced["properties"]["mail_id"] == mail_id
            assert bounced["properties"]["status"] == "5.1.1"
            assert bounced["properties"]["suppressed"] is True
            for _ in range(3):
                again = await post_sns(live, bounce)
                assert again.json() == {"success": True, "duplicate": True}
            assert len(await store.events_of("u:u1", limit=10)) == 3  # signup, cart, bounce
            complaint = fixture("ses/complaint.json")
            complaint["complaint"]["complainedRecipients"][0]["emailAddress"] = "ann@example.com"
            complaint["mail"]["headers"][2]["value"] = message["Message-ID"]
            signed = local.notification(complaint, at=clock(), message_id="c-1", version="2")
            answer = await post_sns(live, signed)
            assert answer.json() == {"success": True, "processed": 1}, answer.text
            (spam, *_) = await store.events_of("u:u1", limit=1)
            assert spam["event"] == "Email Marked as Spam"
            assert spam["properties"]["mail_id"] == mail_id
            assert await store.webhook_seen("ses-c-1")
    assert sns.paths == [CERT_PATH]
    assert sns.arrived[0].headers["host"] == SNS_HOST


async def test_ses_refuses_foreign_topics_forged_certificates_and_old_messages(
    tmp_path: Path, local: LocalSns
) -> None:
    """A topic not in ses.topic_arns is a 403 (nothing fetched); a certificate URL that is not
    https on an SNS host, or not a .pem, a bad signature and a message older than an hour are
    401s; SES's notification posted raw (raw message delivery) is a 400 that says so. Nothing
    is suppressed."""
    clock = FakeClock()
    async with local.running() as sns:
        config = with_relays(make_config(tmp_path))
        async with run_server(config, clock=clock, sns_fetch=local.fetch()) as live:
            bounce = ses_bounce("r1-2")
            other = "arn:aws:sns:us-east-1:999999999999:someone-elses"
            answer = await post_sns(live, local.notification(bounce, at=clock(), topic=other))
            assert answer.status_code == 403
            assert "not in ses.topic_arns" in answer.json()["error"]
            assert sns.arrived == []
            for url in (
                f"http://{SNS_HOST}{CERT_PATH}",
                f"https://sns.us-east-1.amazonaws.com.evil.example{CERT_PATH}",
                f"https://{SNS_HOST}/SimpleNotificationService-0123.crt",
            ):
                forged = local.notification(bounce, at=clock(), SigningCertURL=url)
                answer = await post_sns(live, forged)
                assert answer.status_code == 401
                assert "SigningCertURL" in answer.json()["error"]
            assert sns.arrived == []
            tampered = local.notification(bounce, at=clock()) | {"Message": "{}"}
            answer = await post_sns(live, tampered)
            assert answer.status_code == 401 and "no valid SNS signature" in answer.text
            old = local.notification(bounce, at=clock() - 3601, message_id="old-1")
            answer = await post_sns(live, old)
            assert answer.status_code == 401 and "more than 1 hour old" in answer.text
            answer = await post_sns(live, orjson.dumps(bounce))
            assert answer.status_code == 400
            assert "turn raw message delivery off" in answer.json()["error"]
            garbled = local.notification({"notificationType": "Bounce"}, at=clock())
            answer = await post_sns(live, garbled)
            assert answer.status_code == 400 and "bounce must be a json object" in answer.text
            assert await live.runtime.store.mail.suppressed("ann@example.com") is None
            assert not await live.runtime.store.webhook_seen("ses-old-1")


async def test_a_subscription_is_confirmed_for_an_allowed_topic_only(
    tmp_path: Path, local: LocalSns, caplog: pytest.LogCaptureFixture
) -> None:
    """A SubscriptionConfirmation for a listed topic is confirmed: the local SNS sees the GET
    of its SubscribeURL, once even if it comes again; one for another topic is a 403 and
    confirms nothing; an UnsubscribeConfirmation is logged."""
    caplog.set_level(logging.INFO, logger="rtserver")
    clock = FakeClock()
    async with local.running() as sns:
        config = with_relays(make_config(tmp_path))
        async with run_server(config, clock=clock, sns_fetch=local.fetch()) as live:
            other = "arn:aws:sns:us-east-1:999999999999:someone-elses"
            answer = await post_sns(live, local.confirmation(at=clock(), topic=other))
            assert answer.status_code == 403
            assert sns.arrived == []
            confirmation = local.confirmation(at=clock())
            answer = await post_sns(live, confirmation)
            assert answer.json() == {"success": True, "processed": 0}, answer.text
            again = await post_sns(live, confirmation)
            assert again.json()["duplicate"] is True
            assert sns.paths == [CERT_PATH, "/"]
            assert sns.arrived[1].args["Action"] == "ConfirmSubscription"
            assert sns.arrived[1].args["TopicArn"] == TOPIC
            ours = [r.getMessage() for r in caplog.records if r.name.startswith("rtserver")]
            assert f"ses: confirmed the SNS subscription to {TOPIC}" in ours
            assert not [line for line in ours if "Token" in line]
            goodbye = local.confirmation(at=clock(), kind="UnsubscribeConfirmation")
            answer = await post_sns(live, goodbye)
            assert answer.json() == {"success": True, "processed": 0}
            assert f"unsubscribed this endpoint from {TOPIC}" in caplog.text
            assert sns.paths == [CERT_PATH, "/"]  # an unsubscription is not confirmed


async def test_unreachable_sns_urls_are_a_503_and_nothing_is_noted(
    tmp_path: Path, local: LocalSns
) -> None:
    """The guard refuses a certificate host resolving to a loopback address: 503, retried
    later; a SubscribeURL the local SNS refuses is a 503 too. Neither message is noted."""
    clock = FakeClock()
    config = with_relays(make_config(tmp_path))

    async def loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    refusing = guarded_fetch(resolve=loopback)
    async with run_server(config, clock=clock, sns_fetch=refusing) as live:
        bounce = local.notification(ses_bounce("r1-2"), at=clock(), message_id="b-2")
        answer = await post_sns(live, bounce)
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert "SNS signing certificate" in answer.json()["error"]
        assert not await live.runtime.store.webhook_seen("ses-b-2")
    (tmp_path / "again").mkdir()
    config = with_relays(make_config(tmp_path / "again"))
    async with local.running() as sns:
        async with run_server(config, clock=clock, sns_fetch=local.fetch()) as live:
            confirmation = local.confirmation(at=clock())
            confirmation["SubscribeURL"] = confirmation["SubscribeURL"].replace(
                "Action=ConfirmSubscription", "Action=Other"
            )
            answer = await post_sns(live, local.sign(confirmation))
            assert answer.status_code == 503 and "SNS SubscribeURL" in answer.text
            assert not await live.runtime.store.webhook_seen(f"ses-{confirmation['MessageId']}")
    assert sns.paths == [CERT_PATH, "/"]


async def test_ses_and_postmark_are_off_until_configured(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live:
        answer = await post_sns(live, b"{}")
        assert answer.status_code == 404 and "set ses.topic_arns" in answer.json()["error"]
        async with live.http() as http:
            answer = await http.post("/v1/webhooks/postmark", content=b"{}", auth=("a", "b"))
        assert answer.status_code == 404
        assert "postmark.username and keys.postmark_password" in answer.json()["error"]


def postmark_record(name: str, **change: Any) -> bytes:
    return orjson.dumps(fixture(f"postmark/{name}.json") | change)


async def post_postmark(
    live: LiveServer, body: bytes, auth: Any = (POSTMARK_USER, POSTMARK_PASSWORD)
) -> httpx.Response:
    async with live.http() as http:
        return await http.post(
            "/v1/webhooks/postmark",
            content=body,
            headers={"content-type": "application/json"},
            auth=auth,
        )


async def test_postmark_bounces_and_complaints_with_the_right_credentials(
    tmp_path: Path,
) -> None:
    """With the configured basic auth: a hard bounce suppresses and records Email Bounced on
    the mail its metadata names, once however often it comes; a soft bounce is recorded, not
    suppressed; a spam complaint suppresses; a delivery record is taken and ignored."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        config = with_relays(smtp_config(tmp_path, smtpd))
        async with run_server(config, clock=clock) as live:
            store = live.runtime.store
            message = await mailed(live, clock, smtpd)
            mail_id = message["X-RT-Mail-ID"]
            soft = postmark_record(
                "bounce-soft", Email="ann@example.com", Metadata={"rt-mail-id": mail_id}
            )
            answer = await post_postmark(live, soft)
            assert answer.json() == {"success": True, "processed": 1}, answer.text
            assert await store.mail.suppressed("ann@example.com") is None
            (bounced,) = await store.events_of("u:u1", limit=1)
            assert bounced["event"] == "Email Bounced"
            assert bounced["properties"]["suppressed"] is False
            hard = postmark_record(
                "bounce-hard", Email="ann@example.com", Metadata={"rt-mail-id": mail_id}
            )
            for _ in range(3):
                answer = await post_postmark(live, hard)
            assert answer.json() == {"success": True, "duplicate": True}
            assert await store.mail.suppressed("ann@example.com") == "hard_bounce"
            (bounced,) = await store.events_of("u:u1", limit=1)
            assert bounced["properties"]["suppressed"] is True
            assert bounced["properties"]["mail_id"] == mail_id
            assert len(await store.events_of("u:u1", limit=10)) == 4
            complaint = postmark_record("spam-complaint", Email="bob@example.com")
            answer = await post_postmark(live, complaint)
            assert answer.json() == {"success": True, "processed": 1}
            assert await store.mail.suppressed("bob@example.com") == "complaint"
            answer = await post_postmark(live, postmark_record("delivery"))
            assert answer.json() == {"success": True, "processed": 0}
            answer = await post_postmark(live, postmark_record("bounce-hard", ID=None))
            assert answer.status_code == 400 and "needs an ID" in answer.text


async def test_postmark_refuses_wrong_credentials_and_addresses_not_allowed(
    tmp_path: Path,
) -> None:
    """Wrong user or password, no credentials, another scheme or garbled base64: 401. With
    postmark.allow_ips set, a client outside it is a 403 even with the right credentials."""
    body = postmark_record("bounce-hard")
    config = with_relays(make_config(tmp_path), allow_ips=("10.0.0.0/8", "127.0.0.0/8"))
    async with run_server(config) as live:
        for auth in (
            (POSTMARK_USER, "pm-0123456789abcdefghijklmnopqrstuX"),
            ("someone", POSTMARK_PASSWORD),
            None,
        ):
            answer = await post_postmark(live, body, auth)
            assert answer.status_code == 401, auth
            assert answer.json()["error"] == "wrong or missing basic auth credentials"
        for header in ("Bearer abc", "Basic !!!not-base64", "Basic"):
            async with live.http() as http:
                answer = await http.post(
                    "/v1/webhooks/postmark", content=body, headers={"authorization": header}
                )
            assert answer.status_code == 401, header
        answer = await post_postmark(live, body)
        assert answer.json() == {"success": True, "processed": 1}
    (tmp_path / "far").mkdir()
    config = with_relays(make_config(tmp_path / "far"), allow_ips=("10.0.0.0/8",))
    async with run_server(config) as live:
        answer = await post_postmark(live, body)
        assert answer.status_code == 403
        assert answer.json()["error"] == "address not in postmark.allow_ips"
        assert await live.runtime.store.mail.suppressed("john@example.com") is None


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("2001:db8::1", True),
        ("192.0.2.1", False),
        ("testclient", False),
        (None, False),
    ],
)
def test_the_allow_list_matches_ipv4_ipv6_and_mapped_addresses(
    host: str | None, allowed: bool
) -> None:
    assert _allowed(host, ("10.0.0.0/8", "2001:db8::/64")) is allowed
