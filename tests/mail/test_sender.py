"""The outbox drain against a real store, the real mailer and relay, and real SMTP servers on
port 0: what each SMTP reply does to a mail, lost acks and crashes, a hung server (ingest
goes on), the rate and daily limits. Time is a fake clock; the tests wait on the sender's
progress, never on the wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from rtserver.errors import StorageUnavailable
from rtserver.mail.mime import RawMail
from rtserver.mail.render import MailContext, Mailer
from rtserver.mail.sender import Sender, SenderStats, retry_delay
from rtserver.mail.sink import Sink, start_sink
from rtserver.mail.smtp import Outcome, Relay
from rtserver.mail.tokens import Tokens
from rtserver.store.database import Store
from tests.support.mail import (  # noqa: F401 (fixtures)
    NOW,
    SECRET,
    Shop,
    clock_fixture,
    make_sender,
    product,
    shop_config,
    shop_fixture,
    templates_fixture,
)
from tests.support.server import TIMEOUT_UNIT, FakeClock
from tests.support.smtp_server import DROP, Script, SMTPServer


@contextlib.asynccontextmanager
async def running(sender: Sender) -> AsyncIterator[asyncio.Task[None]]:
    """The sender's task, stopped (and its relay closed) on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_UNIT)
        await sender.relay.close()


async def until(
    sender: Sender, predicate: Callable[[], bool], timeout: float = TIMEOUT_UNIT
) -> None:
    """Wait until ``predicate()`` holds, looking again each time the sender makes progress."""
    async with sender.progress:
        await asyncio.wait_for(sender.progress.wait_for(predicate), timeout)


async def idle(sender: Sender, why: str = "next due") -> None:
    """Wait until the sender has nothing to do now and waits for ``why``."""
    await until(sender, lambda: sender.waiting == why)


def parsed(body: bytes) -> EmailMessage:
    message = email.message_from_bytes(body, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(body: bytes) -> str:
    part = parsed(body).get_body(("plain",))
    assert part is not None
    content: str = part.get_content()
    return " ".join(content.split())


@pytest.fixture
async def sink(store: Store, clock: FakeClock) -> AsyncIterator[Sink]:
    sink = await start_sink(store, clock)
    try:
        yield sink
    finally:
        await sink.close()


# Rendering what the person did


async def test_mail_shows_the_runs_cart_and_recommendations(
    shop: Shop, sink: Sink, templates: Path, tmp_path: Path
) -> None:
    """A cart run's mail shows that cart only, and recommends by the person's categories, then
    co-views, then popularity; never a product bought or in the cart."""
    shop.use(
        shop_config(
            tmp_path,
            templates,
            workflow=[
                {
                    "name": "cart",
                    "trigger": "Product Added",
                    "run_key": "properties.cart_id",
                    "step": [{"send": "note"}],
                }
            ],
        )
    )
    ann = await shop.person("ann", "ann@example.com")
    categories = {"p1": "shoes", "p2": "shoes", "p3": "hats", "p4": "socks", "p5": "hats"}
    await shop.stock(*(product(pid, c) for pid, c in categories.items()), product("p6"))
    for pid, category in (("p1", "shoes"), ("p2", "shoes"), ("p3", "hats")):
        await shop.track("ann", "Product Viewed", product_id=pid, category=category)
    await shop.track("ann", "Order Completed", order_id="o1", products=[{"product_id": "p2"}])
    for other in ("bob", "cy"):  # co-viewers of p1; p4 and p5 popular
        await shop.track(other, "Product Viewed", product_id="p1", category="shoes")
        await shop.track(other, "Product Viewed", product_id="p4", category="socks")
    await shop.track("dan", "Product Viewed", product_id="p5", category="hats")
    await shop.track("ann", "Product Added", product_id="p1", cart_id="c1", quantity=2)
    await shop.track("ann", "Product Added", product_id="p6", cart_id="c2")
    assert [r["template"] for r in await shop.store.mail.outbox(person_id=ann)] == ["note"] * 2

    sender = make_sender(shop, sink.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 2)
    mails = {parsed(m["body"])["Subject"]: text_of(m["body"]) for m in await shop.store.mail.sunk()}
    # p1 is in the c1 cart and p2 was bought: p3 (viewed), p5 (popular, in a category she
    # viewed), then p4 (co-viewed with p1 and the most popular).
    assert mails["Note c1"] == "cart: p1x2 recs: p3 p5 p4"
    assert mails["Note c2"] == "cart: p6x1 recs: p1 p3 p5 p4"


@pytest.fixture
async def smtpd() -> AsyncIterator[SMTPServer]:
    async with SMTPServer() as server:
        yield server


async def advance(sender: Sender, clock: FakeClock, seconds: float, why: str = "next due") -> None:
    """Move the clock, wake the sender and wait until it has done what fell due."""
    clock.advance(seconds)
    sender.wake()
    await idle(sender, why)


# SMTP replies


async def test_accepted_mail_is_sent_once_with_a_stable_message_id(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """250: the row is 'sent' at the clock's time after one attempt; the Message-ID is the
    row's; the send is logged at INFO with the mail id."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    caplog.set_level("INFO", logger="rtserver.mail.sender")
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
        await idle(sender, "nothing queued")
    (received,) = smtpd.received
    assert received.rcpt_tos == ["ann@example.com"]
    assert received.message["Message-ID"] == "<m1@example.com>"
    row = await shop.row("m1")
    assert (row["state"], row["attempts"], row["sent_at"], row["last_code"]) == (
        "sent",
        1,
        NOW,
        250,
    )
    assert "mail m1 sent" in caplog.text
    assert sender.stats == SenderStats(sent=1)


async def test_4xx_waits_with_backoff_then_sends(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """421 and 451 leave the mail in retry_wait until now + mail.retry[n] ±20 %; once the
    clock passes that, it is tried again, and sent."""
    smtpd.add(Script(mail="421 4.3.2 service not available"), Script(data="451 4.3.0 later"))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, retry=["1m", "5m"])
    async with running(sender):
        await until(sender, lambda: sender.stats.retried == 1)
        await idle(sender)
        row = await shop.row("m1")
        first = NOW + retry_delay("m1", 1, [60.0, 300.0])
        assert (row["state"], row["next_attempt_at"]) == ("retry_wait", first)
        assert (row["last_code"], row["last_error"]) == (421, "421 4.3.2 service not available")
        assert 48.0 <= first - NOW <= 72.0
        await advance(sender, shop.clock, first - NOW - 1)  # not yet due: nothing happens
        assert (await shop.row("m1"))["attempts"] == 1 and len(smtpd.received) == 0
        await advance(sender, shop.clock, 1)
        row = await shop.row("m1")
        second = shop.clock() + retry_delay("m1", 2, [60.0, 300.0])
        assert (row["state"], row["attempts"], row["next_attempt_at"]) == ("retry_wait", 2, second)
        assert 240.0 <= second - shop.clock() <= 360.0
        await advance(sender, shop.clock, second - shop.clock(), "nothing queued")
    row = await shop.row("m1")
    assert (row["state"], row["attempts"], row["sent_at"]) == ("sent", 3, second)
    assert [r.reply for r in smtpd.received] == ["451 4.3.0 later", "250 OK: queued"]
    assert sender.stats == SenderStats(sent=1, retried=2)


def test_retry_waits_are_jittered_deterministically_and_the_last_repeats() -> None:
    """Each wait is its configured value ±20 %, the same for the same mail and attempt; past
    the list, the last wait repeats."""
    waits = [60.0, 300.0, 900.0]
    for attempt, base in ((1, 60.0), (2, 300.0), (3, 900.0), (4, 900.0), (40, 900.0)):
        delay = retry_delay("m1", attempt, waits)
        assert 0.8 * base <= delay <= 1.2 * base
        assert delay == retry_delay("m1", attempt, waits)
    assert len({retry_delay(f"m{i}", 1, waits) for i in range(20)}) == 20
    assert retry_delay("m1", 0, waits) == retry_delay("m1", 0, waits) >= 48.0


async def test_5_1_1_fails_and_suppresses_the_recipient(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """550 5.1.1 at RCPT: failed, no retry, the address suppressed (hard_bounce); a later mail
    to it ends 'suppressed' at claim and never reaches SMTP."""
    smtpd.add(Script(rcpt="550 5.1.1 user unknown"))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.suppressed == 1)
        await idle(sender, "nothing queued")
        row = await shop.row("m1")
        assert (row["state"], row["last_code"]) == ("failed", 550)
        assert await shop.store.mail.suppressed("ann@example.com") == "hard_bounce"
        await shop.queue("m2", ann)
        sender.wake()
        await until(sender, lambda: sender.stats.dropped == 1)
    row = await shop.row("m2")
    assert (row["state"], row["last_error"], row["attempts"]) == ("suppressed", "hard_bounce", 0)
    assert smtpd.received == []  # refused at RCPT: no content ever went out
    assert sender.stats == SenderStats(suppressed=1, dropped=1)


async def test_5_7_1_fails_with_an_operator_alert_and_no_suppression(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """554 5.7.1 after DATA: failed, an ERROR log for the operator; the address stays
    mailable, and the next mail to it goes out."""
    smtpd.add(Script(data="554 5.7.1 message refused by policy"))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    await shop.queue("m2", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
    assert (await shop.row("m1"))["state"] == "failed"
    assert (await shop.row("m2"))["state"] == "sent"
    assert await shop.store.mail.suppressed("ann@example.com") is None
    alerts = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in alerts] == [
        "operator alert: mail m1 refused by policy: 554 554 5.7.1 message refused by policy"
    ]
    assert sender.stats == SenderStats(sent=1, failed=1)


async def test_other_5xx_fails_without_alert_or_suppression(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 552 (too big) fails the mail, logged as a warning; nothing is suppressed."""
    smtpd.add(Script(data="552 5.3.4 message too big"))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.failed == 1)
    assert (await shop.row("m1"))["last_error"] == "552 5.3.4 message too big"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "mail m1 failed: 552" in caplog.text


async def test_tarpit_times_out_and_the_batch_waits_to_retry(
    shop: Shop, templates: Path, tmp_path: Path
) -> None:
    """A server that accepts TCP and never greets: the relay's timeout ends the attempt and
    the mail waits for its retry; the rest of the batch waits with it, untried, instead of
    each waiting out its own timeout."""
    ann = await shop.person("ann", "ann@example.com")
    for n in range(3):
        await shop.queue(f"m{n}", ann)
    async with SMTPServer(greet=False) as tarpit:
        sender = make_sender(shop, tarpit.port, templates, tmp_path, retry=["1m"])
        sender.relay = Relay("127.0.0.1", tarpit.port, timeout_s=TIMEOUT_UNIT / 50)
        async with running(sender):
            await until(sender, lambda: sender.stats.retried == 1)
            await idle(sender)
        assert tarpit.connections == 1
    first, *rest = [await shop.row(f"m{n}") for n in range(3)]
    later = NOW + retry_delay("m0", 1, [60.0])
    assert (first["state"], first["next_attempt_at"]) == ("retry_wait", later)
    assert "Timeout" in first["last_error"]
    for row in rest:
        assert (row["state"], row["next_attempt_at"]) == ("retry_wait", later)
        assert row["last_error"] == f"not tried: {first['last_error']}"
    assert sender.stats == SenderStats(retried=1)


async def test_a_hung_server_does_not_hold_up_other_tasks(
    shop: Shop, templates: Path, tmp_path: Path
) -> None:
    """While the sender waits on a server that never answers, events still commit on the
    same loop and store; a cancelled send leaves the row 'sending' for recovery."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    async with SMTPServer(greet=False) as tarpit:
        sender = make_sender(shop, tarpit.port, templates, tmp_path)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await until(sender, lambda: sender.in_flight == 1)
        for n in range(50):
            await shop.track("ann", "Product Viewed", product_id=f"p{n}")
        assert len(await shop.store.events_of(ann, limit=100)) == 51  # identify + 50 views
        assert not task.done() and sender.in_flight == 1
        assert (await shop.row("m1"))["state"] == "sending"
        task.cancel()  # a shutdown that cannot wait for the relay's timeout
        await asyncio.wait([task])
        await sender.relay.close()
    assert (await shop.row("m1"))["state"] == "sending"


# Delivery in doubt


async def test_lost_ack_is_ambiguous_and_resent_with_resend(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """The connection drops after the content went out, before the reply: 'ambiguous'; with
    mail.ambiguous = 'resend' it goes again at once, with the same Message-ID."""
    smtpd.add(Script(data=DROP))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, ambiguous="resend")
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
    row = await shop.row("m1")
    assert (row["state"], row["attempts"], row["ambiguous"]) == ("sent", 2, 1)
    ids = [r.message["Message-ID"] for r in smtpd.received]
    assert ids == ["<m1@example.com>"] * 2
    assert sender.stats == SenderStats(sent=1, ambiguous=1)


async def test_lost_ack_with_drop_is_never_resent(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """With mail.ambiguous = 'drop' the ambiguous mail is never claimed again, however late."""
    smtpd.add(Script(data=DROP))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    await shop.queue("m2", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, ambiguous="drop")
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
        await idle(sender, "nothing queued")
        await advance(sender, shop.clock, 30 * 86400, "nothing queued")
    row = await shop.row("m1")
    assert (row["state"], row["attempts"], row["ambiguous"]) == ("ambiguous", 1, 1)
    assert await shop.store.mail.next_due() is None
    assert len(smtpd.received) == 2  # m1 once (lost ack), m2 once
    assert sender.stats == SenderStats(sent=1, ambiguous=1)


@pytest.mark.parametrize("policy", ["resend", "drop"])
async def test_a_mail_left_sending_by_a_crash_turns_ambiguous(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, policy: str
) -> None:
    """A row claimed by a process that died mid-send stays 'sending' until its lease runs
    out, then turns 'ambiguous': resent with 'resend', left alone with 'drop'."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    claims, _ = await shop.store.mail.claim(NOW, 10, 300.0, 86400.0)  # the crashed process
    assert [c.id for c in claims] == ["m1"]
    sender = make_sender(shop, smtpd.port, templates, tmp_path, ambiguous=policy, lease_s=300.0)
    async with running(sender):
        await idle(sender, "nothing queued")  # the lease still runs
        assert (await shop.row("m1"))["state"] == "sending"
        await advance(sender, shop.clock, 301.0, "nothing queued")
    row = await shop.row("m1")
    if policy == "resend":
        assert (row["state"], row["attempts"], row["ambiguous"]) == ("sent", 2, 1)
        assert len(smtpd.received) == 1
    else:
        assert (row["state"], row["ambiguous"], row["last_error"]) == (
            "ambiguous", 1, "lease expired while sending",
        )  # fmt: skip
        assert smtpd.received == []
    assert sender.stats.ambiguous == 1


async def test_leases_that_ran_out_while_down_are_recovered_at_start(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """A sender starting after a long outage recovers the expired leases before anything else."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    await shop.store.mail.claim(NOW, 10, 300.0, 86400.0)
    shop.clock.advance(3600)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
    assert sender.stats == SenderStats(sent=1, ambiguous=1)


# Freshness


async def test_marketing_mail_past_max_age_expires_at_claim(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """A marketing mail decided longer than mail.max_age ago fails as 'expired' unsent; a
    transactional one of the same age still goes."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("old", ann, marketing=True, created=NOW - 25 * 3600)
    await shop.queue("receipt", ann, marketing=False, created=NOW - 25 * 3600)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, max_age="24h")
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1 and sender.stats.expired == 1)
    row = await shop.row("old")
    assert (row["state"], row["last_error"], row["attempts"]) == ("failed", "expired", 0)
    assert [r.rcpt_tos for r in smtpd.received] == [["ann@example.com"]]


async def test_marketing_mail_whose_retry_would_be_too_late_expires(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """A 451 on a marketing mail whose next try would fall past mail.max_age fails it as
    'expired' now; a transactional mail in the same spot waits for its retry."""
    smtpd.add(Script(data="451 4.7.1 greylisted"), Script(data="451 4.7.1 greylisted"))
    ann = await shop.person("ann", "ann@example.com")
    created = NOW - 24 * 3600 + 30  # 30 s left; the retry waits about a minute
    await shop.queue("offer", ann, marketing=True, created=created)
    await shop.queue("receipt", ann, marketing=False, created=created)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, max_age="24h", retry=["1m"])
    async with running(sender):
        await until(sender, lambda: sender.stats.expired + sender.stats.retried == 2)
    row = await shop.row("offer")
    assert (row["state"], row["last_error"], row["last_code"]) == ("failed", "expired", 451)
    assert (await shop.row("receipt"))["state"] == "retry_wait"
    assert sender.stats == SenderStats(retried=1, expired=1)


# Rendering and rerouting


async def test_a_template_error_fails_that_mail_only(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing template fails its mail with the reason, logged; the next mail goes out."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann, template="nope")
    await shop.queue("m2", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
    row = await shop.row("m1")
    assert (row["state"], row["last_error"]) == (
        "failed",
        "render failed: email/nope.html: missing",
    )
    assert "mail m1 failed" in caplog.text
    assert len(smtpd.received) == 1
    assert sender.stats == SenderStats(sent=1, failed=1)


async def test_test_recipients_reroute_every_mail(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """With mail.test_recipients set, mail goes to them only; X-RT-Original-To keeps the
    real recipient."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    qa = ["qa@example.net", "dev@example.net"]
    sender = make_sender(shop, smtpd.port, templates, tmp_path, test_recipients=qa)
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
    (received,) = smtpd.received
    assert received.rcpt_tos == qa
    assert received.message["To"] == "qa@example.net, dev@example.net"
    assert received.message["X-RT-Original-To"] == "ann@example.com"
    assert (await shop.row("m1"))["recipient"] == "ann@example.com"


# Limits


async def test_rate_limit_holds_mail_until_the_clock_moves(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """At mail.rate_per_s = 2, two mails go out (the burst), then two more each second."""
    ann = await shop.person("ann", "ann@example.com")
    for n in range(5):
        await shop.queue(f"m{n}", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, rate_per_s=2.0)
    async with running(sender):
        await idle(sender, "rate limit")
        assert (sender.stats.sent, len(smtpd.received)) == (2, 2)
        await advance(sender, shop.clock, 0.5, "rate limit")
        assert sender.stats.sent == 3
        await advance(sender, shop.clock, 1.0, "nothing queued")
        assert sender.stats.sent == 5
    assert len(smtpd.received) == 5


async def test_a_slow_rate_sends_one_at_a_time(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """Below one mail a second, the burst is one mail, and the next waits 1/rate (or for its
    due time, when that is later)."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m0", ann)
    await shop.queue("m1", ann, due=NOW + 5)
    await shop.queue("m2", ann, due=NOW + 100)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, rate_per_s=0.1)
    async with running(sender):
        await idle(sender, "rate limit")
        assert sender.stats.sent == 1
        await advance(sender, shop.clock, 9.0, "rate limit")
        assert sender.stats.sent == 1
        await advance(sender, shop.clock, 1.0, "next due")
        assert sender.stats.sent == 2
        await advance(sender, shop.clock, 90.0, "nothing queued")
        assert sender.stats.sent == 3


async def test_daily_limit_waits_for_the_next_utc_day(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """After mail.daily_limit mails in a UTC day, the rest wait for the next day; a sender
    started later that day counts what was already sent."""
    ann = await shop.person("ann", "ann@example.com")
    for n in range(4):
        await shop.queue(f"m{n}", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, daily_limit=2)
    async with running(sender):
        await idle(sender, "daily limit")
        assert sender.stats.sent == 2
    restarted = make_sender(shop, smtpd.port, templates, tmp_path, daily_limit=2)
    async with running(restarted):
        await idle(restarted, "daily limit")
        assert restarted.stats.sent == 0
        midnight = (NOW // 86400 + 1) * 86400
        await advance(restarted, shop.clock, midnight - NOW - 1, "daily limit")
        await advance(restarted, shop.clock, 1, "daily limit")
        assert restarted.stats.sent == 2
    assert len(smtpd.received) == 4


async def test_repeated_doubt_is_resent_with_the_backoff(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """A mail lost after DATA twice in a row is resent at once the first time, and after the
    retry wait the second time (a relay that keeps dropping causes no storm of duplicates)."""
    smtpd.add(Script(data=DROP), Script(data=DROP))
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, retry=["1m"])
    async with running(sender):
        await until(sender, lambda: sender.stats.ambiguous == 2)
        await idle(sender)
        row = await shop.row("m1")
        assert (row["state"], row["attempts"]) == ("ambiguous", 2)
        assert row["next_attempt_at"] == NOW + retry_delay("m1", 2, [60.0])
        await advance(sender, shop.clock, 72.0, "nothing queued")
    assert (await shop.row("m1"))["state"] == "sent"
    assert len(smtpd.received) == 3


# Stopping and failures


class StoppingRelay(Relay):
    """A real relay that sets ``stop`` once it has sent one mail (a shutdown mid-batch)."""

    def __init__(self, port: int, stop: asyncio.Event) -> None:
        super().__init__("127.0.0.1", port, timeout_s=TIMEOUT_UNIT)
        self.stop = stop

    async def send(self, message: RawMail | EmailMessage, **kw: Any) -> Outcome:
        outcome = await super().send(message, **kw)
        self.stop.set()
        return outcome


async def test_stop_gives_back_the_mails_claimed_but_not_tried(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path
) -> None:
    """Stopping mid-batch finishes the mail on the wire, records it, and puts the rest of the
    batch back in the queue, due at once (nothing is left 'sending')."""
    ann = await shop.person("ann", "ann@example.com")
    for n in range(3):
        await shop.queue(f"m{n}", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    stop = asyncio.Event()
    sender.relay = StoppingRelay(smtpd.port, stop)
    await asyncio.wait_for(sender.run(stop), TIMEOUT_UNIT)
    await sender.relay.close()
    states = [(r["id"], r["state"], r["next_attempt_at"]) for r in await shop.store.mail.outbox()]
    assert sorted(states) == [("m0", "sent", NOW), ("m1", "queued", NOW), ("m2", "queued", NOW)]
    assert len(smtpd.received) == 1 and sender.in_flight == 0


@contextlib.contextmanager
def write_locked(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock (until it rolls back)."""
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_a_store_that_cannot_write_is_tried_again(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, db_path: Path
) -> None:
    """While the database is locked, claiming fails and the sender waits, logging it; once
    the lock is gone, a wake sends the mail."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    await shop.store._db.execute("PRAGMA busy_timeout = 0")
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        with write_locked(db_path):
            await idle(sender, "store failed")
        sender.wake()
        await until(sender, lambda: sender.stats.sent == 1)
    assert (await shop.row("m1"))["state"] == "sent"


class LockingRelay(Relay):
    """A real relay that locks the database right after its first send (the outcome's write
    then fails)."""

    def __init__(self, port: int, db_path: Path) -> None:
        super().__init__("127.0.0.1", port, timeout_s=TIMEOUT_UNIT)
        self.db_path = db_path
        self.lock: contextlib.ExitStack = contextlib.ExitStack()

    async def send(self, message: RawMail | EmailMessage, **kw: Any) -> Outcome:
        outcome = await super().send(message, **kw)
        self.lock.enter_context(write_locked(self.db_path))
        return outcome


@pytest.mark.parametrize("then", ["wake", "stop"])
async def test_outcomes_that_could_not_be_written_are_written_later(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, db_path: Path, then: str
) -> None:
    """A sent mail whose outcome could not be recorded (the store locked) is recorded at the
    next round, or when the sender stops, once the store can write again."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    await shop.store._db.execute("PRAGMA busy_timeout = 0")
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    relay = sender.relay = LockingRelay(smtpd.port, db_path)
    async with running(sender):
        await idle(sender, "store failed")
        assert (await shop.row("m1"))["state"] == "sending"
        relay.lock.close()
        if then == "wake":
            sender.wake()
            await idle(sender, "nothing queued")
    assert (await shop.row("m1"))["state"] == "sent"
    assert sender.stats.sent == 1


async def test_outcomes_still_unwritten_at_stop_are_logged(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A sender stopping while the store still cannot write says so at ERROR; the row stays
    'sending' and a later start recovers it as ambiguous."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    await shop.store._db.execute("PRAGMA busy_timeout = 0")
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    relay = sender.relay = LockingRelay(smtpd.port, db_path)
    async with running(sender):
        await idle(sender, "store failed")
    relay.lock.close()
    assert "sender stopped with outcomes it could not record" in caplog.text
    assert (await shop.row("m1"))["state"] == "sending"


class FlakyClock(FakeClock):
    """A fake clock that raises once when told to (a bug somewhere in a round)."""

    fail = False

    def __call__(self) -> float:
        if self.fail:
            self.fail = False
            raise RuntimeError("clock broke")
        return self.now


async def test_an_unexpected_error_in_a_round_is_logged_and_the_sender_goes_on(
    store: Store, smtpd: SMTPServer, templates: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Anything a round raises is logged with its traceback; the task lives on."""
    clock = FlakyClock(NOW)
    shop = Shop(store, clock, shop_config(tmp_path, templates))
    ann = await shop.person("ann", "ann@example.com")
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await idle(sender, "nothing queued")
        clock.fail = True
        sender.wake()
        await idle(sender, "error")
        await shop.queue("m1", ann)
        sender.wake()
        await until(sender, lambda: sender.stats.sent == 1)
    assert "sender round failed" in caplog.text and "clock broke" in caplog.text


class BrokenRelay(Relay):
    """A relay with a bug: it raises instead of returning an outcome."""

    async def send(self, message: RawMail | EmailMessage, **kw: Any) -> Outcome:
        raise RuntimeError("relay bug")


async def test_a_relay_that_raises_leaves_the_mail_in_doubt(
    shop: Shop, templates: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whether a mail left is unknown when the relay raises: it is 'ambiguous'."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, 9, templates, tmp_path, ambiguous="drop")
    sender.relay = BrokenRelay("127.0.0.1", 9)
    async with running(sender):
        await until(sender, lambda: sender.stats.ambiguous == 1)
    row = await shop.row("m1")
    assert (row["state"], row["last_error"]) == (
        "ambiguous",
        "relay error: RuntimeError('relay bug')",
    )
    assert "relay failed on mail m1" in caplog.text


class BuggyMailer(Mailer):
    """A mailer with a bug for one template (not a template error: a crash)."""

    def render_bytes(self, template: str, context: MailContext) -> RawMail:
        if template == "boom":
            raise RuntimeError("mailer bug")
        return super().render_bytes(template, context)


async def test_a_crash_preparing_one_mail_fails_that_mail_only(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """An unexpected error while preparing a mail fails it with the error, logged with its
    traceback; the batch goes on."""
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann, template="boom")
    await shop.queue("m2", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    sender.mailer = BuggyMailer(
        sender.config, "http://rt.test", Tokens(SECRET), template_dir=templates
    )
    async with running(sender):
        await until(sender, lambda: sender.stats.sent == 1)
    row = await shop.row("m1")
    assert (row["state"], row["last_error"]) == (
        "failed",
        "render failed: RuntimeError('mailer bug')",
    )
    assert "mail m1 could not be prepared" in caplog.text


async def test_a_failed_read_of_the_products_retries_the_mail(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a person's products cannot be read (the store failing), the mail waits for a
    retry instead of going out without its cart."""

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("storage unavailable: disk I/O error")

    # A read-only connection cannot be made to fail from outside; inject the store's error.
    monkeypatch.setattr(shop.store.mail, "product_events", unavailable)
    ann = await shop.person("ann", "ann@example.com")
    await shop.queue("m1", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    async with running(sender):
        await until(sender, lambda: sender.stats.retried == 1)
    row = await shop.row("m1")
    assert row["state"] == "retry_wait"
    assert row["last_error"] == (
        "reading the mail's products failed: storage unavailable: disk I/O error"
    )
    assert smtpd.received == []


# Delivery in doubt, in small: lost acks and 4xx on many mails


@pytest.mark.parametrize("policy", ["resend", "drop"])
async def test_lost_acks_and_4xx_over_many_mails(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, policy: str
) -> None:
    """200 mails, 3 % of transactions losing the ack after DATA and 5 % answering 451.
    'resend': every mail ends 'sent' and arrived at least once; the only duplicates are the
    lost acks', with the same Message-ID. 'drop': nothing arrives twice, and exactly the mails
    whose ack was lost are 'ambiguous'."""
    rnd = random.Random(5)
    scripts = [
        Script(data=DROP if roll < 0.03 else "451 4.3.0 later" if roll < 0.08 else "250 OK")
        for roll in (rnd.random() for _ in range(400))
    ]
    smtpd.add(*scripts)
    ann = await shop.person("ann", "ann@example.com")
    mails = 200
    for n in range(mails):
        await shop.queue(f"m{n:03d}", ann)
    sender = make_sender(shop, smtpd.port, templates, tmp_path, ambiguous=policy, retry=["1m"])
    settled = ("next due", "nothing queued")
    async with running(sender):
        for _ in range(10):  # each round of retries falls due a minute (±20 %) later
            await until(sender, lambda: sender.waiting in settled, 4 * TIMEOUT_UNIT)
            if sender.waiting == "nothing queued":
                break
            shop.clock.advance(120.0)
            sender.wake()

    delivered = [r for r in smtpd.received if not r.reply.startswith("451")]
    lost = [r.message["X-RT-Mail-ID"] for r in delivered if r.reply == DROP]
    assert 3 <= len(lost) <= 15 and len(delivered) > len(smtpd.received) - 20  # sanity
    arrived = Counter(r.message["Message-ID"] for r in delivered)
    for r in delivered:  # each copy carries its row's id, on every attempt
        assert r.message["Message-ID"] == f"<{r.message['X-RT-Mail-ID']}@example.com>"
    duplicates = sum(count - 1 for count in arrived.values())
    rows = {r["id"]: r["state"] for r in await shop.store.mail.outbox(limit=1000)}
    if policy == "resend":
        assert set(rows.values()) == {"sent"}
        assert set(arrived) == {f"<m{n:03d}@example.com>" for n in range(mails)}
        assert duplicates == len(lost)
        assert {m for m, count in arrived.items() if count > 1} == {
            f"<{mail}@example.com>" for mail in lost
        }
    else:
        assert duplicates == 0
        assert sorted(m for m, state in rows.items() if state == "ambiguous") == sorted(lost)
        assert {state for m, state in rows.items() if m not in lost} == {"sent"}
        assert sender.stats.ambiguous == len(lost)


async def test_a_stop_cancels_reads_still_running(
    shop: Shop, smtpd: SMTPServer, templates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's products are read for all its mails at once; a mail whose read has not
    finished does not hold back the ones before it, and a stop cancels that read and gives
    the mail back."""
    reads = shop.store.mail.product_events

    async def slow_for_bob(person_id: str, since: float, limit: int = 500) -> Any:
        if person_id == "u:bob":
            await asyncio.Event().wait()  # never: the read is still running at the stop
        return await reads(person_id, since, limit)

    monkeypatch.setattr(shop.store.mail, "product_events", slow_for_bob)
    ann = await shop.person("ann", "ann@example.com")
    bob = await shop.person("bob", "bob@example.com")
    await shop.queue("m1", ann)
    await shop.queue("m2", bob, due=NOW + 0.5)  # claimed in the same batch, after m1
    shop.clock.advance(1)
    sender = make_sender(shop, smtpd.port, templates, tmp_path)
    stop = asyncio.Event()
    sender.relay = StoppingRelay(smtpd.port, stop)
    await asyncio.wait_for(sender.run(stop), TIMEOUT_UNIT)
    await sender.relay.close()
    assert (await shop.row("m1"))["state"] == "sent"
    assert (await shop.row("m2"))["state"] == "queued"
    assert len(smtpd.received) == 1
