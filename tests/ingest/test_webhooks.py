"""Signed inbound webhooks against a real server, and relay feedback into the
suppression list: a real SMTP server, a real store, requests signed with the reference
Standard Webhooks library."""

from __future__ import annotations

import asyncio
import gzip
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings, strategies as st
from standardwebhooks import Webhook

from tests.support.events import event, shopper, tracked
from tests.support.mail import LAMP, smtp_config
from tests.support.relays import (
    MAILGUN_KEY,
    NOW,
    SENDGRID_EVENTS,
    failed,
    mailgun_body,
    public_b64,
    sendgrid_request,
)
from tests.support.server import (
    WEBHOOK_SECRET,
    FakeClock,
    LiveServer,
    advance,
    leave_mid_body,
    make_config,
    run_server,
    send_batch,
    sent,
)
from tests.support.smtp_server import SMTPServer

PREVIOUS_SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"
OTHER_SECRET = "whsec_GBkaGxwdHh8gISIjJCUmJygpKissLS4v"


def headers(
    body: bytes, at: float, *, webhook_id: str | None = None, secret: str = WEBHOOK_SECRET
) -> dict[str, str]:
    """The Standard Webhooks headers a sender puts on ``body``, signed at ``at``."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(at), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": Webhook(secret).sign(webhook_id, stamp, body.decode()),
        "content-type": "application/json",
    }


async def deliver(
    live: LiveServer, source: str, body: bytes, signed: dict[str, str]
) -> httpx.Response:
    async with live.http() as http:
        return await http.post(f"/v1/webhooks/{source}", content=body, headers=signed)


async def count_events(live: LiveServer) -> int:
    return await live.runtime.store.count_events()


async def test_a_signed_segment_webhook_is_processed_once_however_often_replayed(
    tmp_path: Path,
) -> None:
    """A valid webhook answers 200 and stores its event; the same webhook-id replayed five
    times answers 200 each time and stores nothing more."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        body = orjson.dumps(event(event="Order Completed", userId="u1", properties={"total": 5}))
        signed = headers(body, clock())
        first = await deliver(live, "segment", body, signed)
        assert first.status_code == 200 and first.json() == {"success": True, "processed": 1}
        for _ in range(5):
            again = await deliver(live, "segment", body, signed)
            assert again.status_code == 200 and again.json()["duplicate"] is True
        assert await count_events(live) == 1
        (stored,) = await live.runtime.store.events_of("u:u1")
        assert stored["event"] == "Order Completed"


async def test_a_segment_batch_without_message_ids_is_deduplicated_by_webhook_id(
    tmp_path: Path,
) -> None:
    """Messages without a messageId get ``<webhook-id>-<index>``: processed again (the id
    record lost), they are still stored once; a trusted order counts as verified."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        orders = [
            {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {}},
            {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}},
        ]
        body = orjson.dumps({"batch": orders, "context": {"library": {"name": "shop"}}})
        signed = headers(body, clock(), webhook_id="msg_batch")
        answer = await deliver(live, "segment", body, signed)
        assert answer.json() == {"success": True, "processed": 2}
        ids = {e["messageId"] for e in await live.runtime.store.events_of("u:u1")}
        assert ids == {"msg_batch-0", "msg_batch-1"}
        await live.runtime.store._db.execute("DELETE FROM webhooks")  # as if never noted
        again = await deliver(live, "segment", body, signed)
        assert again.json() == {"success": True, "processed": 2}
        assert await count_events(live) == 2
        (profile,) = await live.runtime.store._read(
            "SELECT orders_count, consent FROM profiles WHERE person_id = 'u:u1'"
        )
        assert tuple(profile) == (1, "soft_opt_in_customer")  # a trusted order makes a customer


async def test_invalid_messages_in_a_segment_webhook_are_reported(tmp_path: Path) -> None:
    """Good messages are stored and bad ones named; nothing good at all is a 400."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        body = orjson.dumps({"batch": [event(), {"type": "track"}]})
        answer = await deliver(live, "segment", body, headers(body, clock()))
        assert answer.status_code == 200 and answer.json()["processed"] == 1
        assert "userId is required" in answer.json()["rejected"][0]["error"]
        for bad, reason in [
            ({"batch": [{"type": "track"}]}, "userId is required"),
            ({"batch": []}, "non-empty list"),
            ([event()], "json object"),
        ]:
            body = orjson.dumps(bad)
            answer = await deliver(live, "segment", body, headers(body, clock()))
            assert answer.status_code == 400 and reason in answer.json()["error"], bad
        body = b"{not json"
        answer = await deliver(live, "segment", body, headers(body, clock()))
        assert answer.status_code == 400
        assert await count_events(live) == 1


def _flip(body: bytes) -> bytes:
    return body[:10] + bytes([body[10] ^ 1]) + body[11:]


async def test_forged_stale_or_altered_webhooks_are_refused(tmp_path: Path) -> None:
    """Stale and future timestamps, a flipped byte, re-serialised JSON, a wrong secret and
    missing headers are 401 with the reason; nothing is stored."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        body = orjson.dumps(event(properties={"b": 1, "a": 2}))
        now = clock()
        reserialised = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
        assert reserialised != body
        cases: list[tuple[bytes, dict[str, str], str]] = [
            (body, headers(body, now - 301), "from now"),
            (body, headers(body, now + 301), "from now"),
            (_flip(body), headers(body, now), "no valid signature"),
            (reserialised, headers(body, now), "no valid signature"),
            (body, headers(body, now, secret=OTHER_SECRET), "no valid signature"),
            (body, {"content-type": "application/json"}, "missing webhook-id"),
        ]
        for sent, signed, reason in cases:
            answer = await deliver(live, "segment", sent, signed)
            assert answer.status_code == 401, reason
            assert reason in answer.json()["error"]
        ok = await deliver(live, "segment", body, headers(body, now - 300))
        assert ok.status_code == 200  # the edge of the tolerance still counts
        assert await count_events(live) == 1


async def test_the_previous_secret_still_verifies_during_a_rotation(tmp_path: Path) -> None:
    """With keys.webhook_secret_previous set, both secrets verify; a third does not."""
    clock = FakeClock()
    config = make_config(tmp_path, keys={"webhook_secret_previous": PREVIOUS_SECRET})
    async with run_server(config, clock=clock) as live:
        for secret, status in [(WEBHOOK_SECRET, 200), (PREVIOUS_SECRET, 200), (OTHER_SECRET, 401)]:
            body = orjson.dumps(event())
            answer = await deliver(live, "segment", body, headers(body, clock(), secret=secret))
            assert answer.status_code == status, secret


async def test_bodies_too_large_compressed_or_for_no_source_are_refused(tmp_path: Path) -> None:
    """A 2 MiB body is 413, a gzip one 415, an unknown source 404; none is read further."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        huge = orjson.dumps({"batch": [event(properties={"pad": "x" * (2 << 20)})]})
        answer = await deliver(live, "segment", huge, headers(huge, clock()))
        assert answer.status_code == 413
        body = orjson.dumps(event())
        zipped = {**headers(body, clock()), "content-encoding": "gzip"}
        async with live.http() as http:
            answer = await http.post(
                "/v1/webhooks/segment", content=gzip.compress(body), headers=zipped
            )
        assert answer.status_code == 415
        answer = await deliver(live, "stripe", body, headers(body, clock()))
        assert answer.status_code == 404 and "segment, mail" in answer.json()["error"]
        assert await count_events(live) == 0


async def _mailed(live: LiveServer, clock: FakeClock, smtpd: SMTPServer) -> Any:
    """Ann's cart reminder, delivered over SMTP; its message."""
    async with live.ws() as ws:
        await send_batch(
            ws, [shopper("u1", "ann@example.com"), tracked("u1", "Product Added", **LAMP)]
        )
    await advance(live, clock, 1800)
    (received,) = await smtpd.wait_for(1)
    await sent(live)
    return received.message


async def test_a_hard_bounce_webhook_suppresses_and_later_mail_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A posted 5.1.1 bounce suppresses the address (hard_bounce) and records Email
    Bounced for the person; the next mail for her ends suppressed, with the reason logged."""
    caplog.set_level(logging.INFO, logger="rtserver")
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            message = await _mailed(live, clock, smtpd)
            report = {
                "type": "bounce",
                "email": "ann@example.com",
                "status": "5.1.1",
                "message_id": message["Message-ID"],
                "reason": "550 5.1.1 user unknown",
            }
            body = orjson.dumps(report)
            answer = await deliver(live, "mail", body, headers(body, clock()))
            assert answer.json() == {"success": True, "processed": 1}
            store = live.runtime.store
            assert await store.mail.suppressed("ann@example.com") == "hard_bounce"
            (bounced, *_) = await store.events_of("u:u1", limit=1)
            assert bounced["event"] == "Email Bounced"
            assert bounced["properties"]["suppressed"] is True
            assert bounced["properties"]["mail_id"] == message["X-RT-Mail-ID"]
            async with live.ws() as ws:
                await send_batch(ws, [tracked("u1", "Product Added", **{**LAMP, "cart_id": "c2"})])
            await advance(live, clock, 1800)
            sender = live.runtime.sender
            assert sender is not None
            async with asyncio.timeout(4), sender.progress:
                while not await store.mail.outbox("suppressed"):
                    await sender.progress.wait()
    assert len(smtpd.received) == 1
    assert "not sent: suppressed (hard_bounce)" in caplog.text


async def test_soft_bounces_are_recorded_never_suppressed(tmp_path: Path) -> None:
    """A 4.2.2 (mailbox full) or a 5.7.1 (policy) bounce is an event, not a suppression."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            message = await _mailed(live, clock, smtpd)
            reports = [
                {"type": "bounce", "status": status, "mail_id": message["X-RT-Mail-ID"]}
                for status in ("4.2.2", "5.7.1")
            ]
            body = orjson.dumps({"events": reports})
            answer = await deliver(live, "mail", body, headers(body, clock()))
            assert answer.json()["processed"] == 2
            store = live.runtime.store
            assert await store.mail.suppressed("ann@example.com") is None
            events = await store.events_of("u:u1", limit=2)
            assert [e["properties"]["status"] for e in events] == ["5.7.1", "4.2.2"]
            assert {e["properties"]["suppressed"] for e in events} == {False}


ARF = """\
From: feedback@mailbox.example
To: abuse@shop.example
Subject: complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="arf"

--arf
Content-Type: text/plain

This is an email abuse report.

--arf
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: mailbox.example feedback loop
Version: 1
Original-Rcpt-To: <ann@example.com>

--arf
Content-Type: text/rfc822-headers

From: Demo Shop <shop@example.com>
To: ann@example.com
Message-ID: {message_id}
X-RT-Mail-ID: {mail_id}
Subject: Your cart

--arf--
"""


async def test_an_arf_complaint_suppresses_the_recipient(tmp_path: Path) -> None:
    """A mailbox provider's ARF report (RFC 5965) suppresses the address (complaint) and
    records Email Marked as Spam on the mail's person."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            message = await _mailed(live, clock, smtpd)
            body = ARF.format(
                message_id=message["Message-ID"], mail_id=message["X-RT-Mail-ID"]
            ).encode()
            signed = {**headers(body, clock()), "content-type": "multipart/report"}
            signed["content-type"] += '; report-type=feedback-report; boundary="arf"'
            answer = await deliver(live, "mail", body, signed)
            assert answer.json() == {"success": True, "processed": 1}
            store = live.runtime.store
            assert await store.mail.suppressed("ann@example.com") == "complaint"
            (complaint, *_) = await store.events_of("u:u1", limit=1)
            assert complaint["event"] == "Email Marked as Spam"


async def test_feedback_for_an_unknown_mail_still_suppresses_its_address(
    tmp_path: Path,
) -> None:
    """A complaint naming an address but no mail rtserver knows suppresses, records nothing;
    one naming neither a known mail nor an address does nothing; a malformed one is 400."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        store = live.runtime.store
        for report in [
            {"type": "complaint", "email": "bob@example.com"},
            {"type": "complaint", "mail_id": "gone-1"},
        ]:
            body = orjson.dumps(report)
            answer = await deliver(live, "mail", body, headers(body, clock()))
            assert answer.json() == {"success": True, "processed": 1}
        assert await store.mail.suppressed("bob@example.com") == "complaint"
        assert await count_events(live) == 0
        body = orjson.dumps({"type": "bounced", "email": "bob@example.com"})
        answer = await deliver(live, "mail", body, headers(body, clock()))
        assert answer.status_code == 400 and "'bounce' or 'complaint'" in answer.json()["error"]


async def test_a_store_failure_is_a_503_and_the_webhook_is_not_noted(tmp_path: Path) -> None:
    """While the store fails, a webhook is 503 with Retry-After and its id is not noted, so
    the sender's retry is processed once the store is back."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        body = orjson.dumps({"type": "complaint", "email": "bob@example.com"})
        signed = headers(body, clock())
        db = live.runtime.store._db
        await db.execute("DROP TABLE suppressions")  # every suppression write fails now
        answer = await deliver(live, "mail", body, signed)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert not await live.runtime.store.webhook_seen(signed["webhook-id"])


async def test_webhook_ids_are_kept_seven_days(tmp_path: Path) -> None:
    """An id is forgotten once 7 days old (well past the 24 h minimum), when the next
    webhook is noted."""
    clock = FakeClock()
    async with run_server(make_config(tmp_path), clock=clock) as live:
        store = live.runtime.store
        await store.webhook_done("old", "segment", clock())
        clock.advance(7 * 86400 - 1)
        await store.webhook_done("newer", "segment", clock())
        assert await store.webhook_seen("old")
        clock.advance(2)
        await store.webhook_done("newest", "segment", clock())
        assert not await store.webhook_seen("old") and await store.webhook_seen("newer")


async def test_a_sender_leaving_mid_body_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook sender that goes away before its whole body arrived is no app error."""
    async with run_server(make_config(tmp_path)) as live:
        head = (
            b"POST /v1/webhooks/mail HTTP/1.1\r\nHost: rtserver\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        await leave_mid_body(live.port, head, b'{"type": ')
        await live.stop()  # returns once the endpoint has finished
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.fixture
async def live_hooks(tmp_path_factory: pytest.TempPathFactory) -> Any:
    clock = FakeClock()
    async with run_server(make_config(tmp_path_factory.mktemp("hooks")), clock=clock) as live:
        yield live, clock


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(
        st.sampled_from(
            ["type", "email", "status", "bounce_type", "mail_id", "message_id", "events",
             "batch", "event", "userId", "anonymousId", "properties", "traits", "x"]
        ),
        children,
        max_size=6,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    source=st.sampled_from(["segment", "mail"]),
    body=st.one_of(JSON.map(orjson.dumps), st.binary(max_size=300)),
    content_type=st.sampled_from(
        ["application/json", "multipart/report; report-type=feedback-report", "text/plain"]
    ),
)
async def test_any_signed_body_gets_a_clear_answer(
    live_hooks: tuple[LiveServer, FakeClock], source: str, body: bytes, content_type: str
) -> None:
    """Whatever a correctly signed webhook carries, the answer is 200 or a 4xx with a reason,
    never a server error; non-UTF-8 bodies are refused as unsigned."""
    live, clock = live_hooks
    try:
        body.decode()
    except UnicodeDecodeError:
        signed = {"webhook-id": "msg_x", "webhook-timestamp": str(int(clock())),
                  "webhook-signature": "v1,AAAA"}  # fmt: skip
    else:
        signed = headers(body, clock())
    answer = await deliver(live, source, body, {**signed, "content-type": content_type})
    assert answer.status_code in (200, 400, 401), answer.text
    if answer.status_code != 200:
        assert answer.json()["error"]


async def test_relays_post_in_their_own_signed_formats(tmp_path: Path) -> None:
    """Mailgun (HMAC) and SendGrid (ECDSA) webhooks suppress as the rules say, a replay is a
    duplicate, a forged one is a 401, and a relay with no key configured is a 404."""
    signing = ec.generate_private_key(ec.SECP256R1())
    clock = FakeClock(float(NOW))
    keys = {"mailgun_signing_key": MAILGUN_KEY, "sendgrid_public_key": public_b64(signing)}
    async with run_server(make_config(tmp_path, keys=keys), clock=clock) as live:
        store = live.runtime.store
        body = mailgun_body(failed("permanent"))
        answer = await deliver(live, "mailgun", body, {"content-type": "application/json"})
        assert answer.json() == {"success": True, "processed": 1}
        again = await deliver(live, "mailgun", body, {"content-type": "application/json"})
        assert again.json()["duplicate"] is True
        assert await store.mail.suppressed("ann@example.com") == "hard_bounce"
        body, signed = sendgrid_request(signing, SENDGRID_EVENTS)
        answer = await deliver(live, "sendgrid", body, signed)
        assert answer.json() == {"success": True, "processed": 4}
        assert await store.mail.suppressed("di@example.com") == "complaint"
        assert await store.mail.suppressed("cy@example.com") is None  # deferred: recorded only
        malformed = mailgun_body({"event": "failed"})  # signed, but names no recipient
        answer = await deliver(live, "mailgun", malformed, {"content-type": "application/json"})
        assert answer.status_code == 400 and "needs email" in answer.json()["error"]
        forged = mailgun_body(failed("permanent"), key="key-not-the-one-configured-00")
        answer = await deliver(live, "mailgun", forged, {"content-type": "application/json"})
        assert answer.status_code == 401 and "no valid signature" in answer.json()["error"]
    (tmp_path / "bare").mkdir()
    async with run_server(make_config(tmp_path / "bare"), clock=clock) as live:
        for source, key in (
            ("mailgun", "mailgun_signing_key"),
            ("sendgrid", "sendgrid_public_key"),
        ):
            answer = await deliver(live, source, b"{}", {"content-type": "application/json"})
            assert answer.status_code == 404 and f"set keys.{key}" in answer.json()["error"]
