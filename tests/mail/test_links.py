"""Mail links against a real server: the whole loop from a cart to a click, opens, one-click
unsubscribe (RFC 8058), double opt-in confirmation, and tokens that never redirect."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.requests import Request

from rtserver.mail.links import PIXEL, machine_reason
from rtserver.model.people import email_hash
from tests.support.events import event, shopper, tracked
from tests.support.mail import LAMP, LAMP_PRODUCT, smtp_config
from tests.support.server import (
    TIMEOUT_UNIT,
    FakeClock,
    LiveServer,
    advance,
    make_config,
    run_server,
    send_batch,
    sent,
)
from tests.support.smtp_server import SMTPServer

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}


def links_of(text: str, kind: str) -> list[str]:
    """The paths of ``kind`` links (``/c/``, ``/o/``, ``/u/``) in a rendered part."""
    return [
        urllib.parse.urlsplit(u).path
        for u in re.findall(rf"https?://[^\s\"'<>]+/{kind}/[^\s\"'<>]+", text)
    ]


async def test_cart_to_mail_to_click(tmp_path: Path) -> None:
    """A cart left 30 min gets one mail with the product's name, price and a signed link; the
    click is recorded as Email Clicked and redirects to the product."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            await live.stock(LAMP_PRODUCT)
            async with live.ws() as ws:
                await send_batch(
                    ws, [shopper("u1", "ann@example.com"), tracked("u1", "Product Added", **LAMP)]
                )
            await advance(live, clock, 1800)
            (received,) = await smtpd.wait_for(1)
            message = received.message
            assert received.rcpt_tos == ["ann@example.com"]
            html = message.get_body(("html",)).get_content()
            text = message.get_body(("plain",)).get_content()
            for part in (html, text):
                assert "Brass Desk Lamp" in part and "49.50" in part
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            tokens = live.runtime.tokens
            targets = {p: tokens.read_click(p.rsplit("/", 1)[1]) for p in links_of(html, "c")}
            (click_path, *_) = [p for p, t in targets.items() if t and "/lamp" in t[1]]
            await sent(live)
            clock.advance(60)  # a person reads first; an instant click is a link scanner's
            async with live.http() as http:
                answer = await http.get(click_path, headers=BROWSER)
            assert answer.status_code == 303
            target = urllib.parse.urlsplit(answer.headers["location"])
            assert (target.netloc, target.path) == ("shop.example", "/products/lamp")
            assert "utm_source=rtserver" in target.query
            (clicked, *_) = await live.runtime.store.events_of("u:u1", limit=1)
            assert clicked["event"] == "Email Clicked"
            assert clicked["properties"]["machine"] is False
            (row,) = await live.runtime.store.mail.outbox()
            assert row["state"] == "sent" and clicked["properties"]["mail_id"] == row["id"]
            profile = await live.runtime.store.profile("u:u1")
            assert profile is not None


async def test_purchase_before_the_deadline_sends_nothing(tmp_path: Path) -> None:
    """An order for the cart before 30 min: no mail reaches SMTP, no outbox row exists."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            async with live.ws() as ws:
                await send_batch(
                    ws, [shopper("u1", "ann@example.com"), tracked("u1", "Product Added", **LAMP)]
                )
                await send_batch(ws, [tracked("u1", "Order Completed", cart_id="c1", revenue=49.5)])
            await advance(live, clock, 3 * 86400)
            assert await live.runtime.store.mail.outbox() == []
            assert await live.runtime.store.runs("active") == []
    assert smtpd.received == []


async def sent_mail(tmp_path: Path, clock: FakeClock, smtpd: SMTPServer, live: LiveServer) -> Any:
    async with live.ws() as ws:
        await send_batch(
            ws, [shopper("u1", "ann@example.com"), tracked("u1", "Product Added", **LAMP)]
        )
    await advance(live, clock, 1800)
    (received,) = await smtpd.wait_for(1)
    return received.message


async def test_one_click_unsubscribe_post_suppresses_at_once(tmp_path: Path) -> None:
    """GET shows a page and changes nothing; POST (no cookies, RFC 8058 body) answers 200
    without a redirect, suppresses the address and marks the profile unsubscribed."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            message = await sent_mail(tmp_path, clock, smtpd, live)
            header = message["List-Unsubscribe"].strip("<>")
            path = urllib.parse.urlsplit(header).path
            store = live.runtime.store
            async with live.http() as http:
                page = await http.get(path)
                assert page.status_code == 200 and "<form" in page.text
                assert await store.mail.suppressed("ann@example.com") is None
                clock.advance(31 * 86400)  # CAN-SPAM: links work for at least 30 days
                done = await http.post(
                    path,
                    content="List-Unsubscribe=One-Click",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
            assert done.status_code == 200 and "unsubscribed" in done.text
            assert await store.mail.suppressed("ann@example.com") == "unsubscribe"
            (latest, *_) = await store.events_of("u:u1", limit=1)
            assert latest["event"] == "Email Unsubscribed"


async def test_open_pixel_records_opens_and_flags_proxies(tmp_path: Path) -> None:
    """The pixel is a GIF whatever the token; a valid one records Email Opened, flagged when an
    image proxy fetched it."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(smtp_config(tmp_path, smtpd), clock=clock) as live:
            message = await sent_mail(tmp_path, clock, smtpd, live)
            html = message.get_body(("html",)).get_content()
            (pixel,) = links_of(html, "o")
            async with live.http() as http:
                bad = await http.get("/o/not-a-token", headers=BROWSER)
                assert bad.content == PIXEL and bad.headers["content-type"] == "image/gif"
                before = await live.runtime.store.count_events()
                assert (await http.get(pixel, headers=BROWSER)).content == PIXEL
                proxy = {"user-agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"}
                await http.get(pixel, headers=proxy)
            assert await live.runtime.store.count_events() == before + 2
            proxied, person = await live.runtime.store.events_of("u:u1", limit=2)
            assert person["properties"]["machine"] is False
            assert proxied["properties"]["machine_reason"] == "image proxy"


async def test_confirmation_link_verifies_the_claimed_address(tmp_path: Path) -> None:
    """Confirming a double opt-in link (its page's button POSTs) moves the claimed address to
    the profile's verified email with consent; a token for another address or a tampered one
    is a 404."""
    config = make_config(tmp_path)
    async with run_server(config) as live:
        claim = event(
            "identify", userId=None, anonymousId="anon-9", traits={"email": "Bo@Example.com"}
        )
        async with live.ws() as ws:
            await send_batch(ws, [claim])
        tokens = live.runtime.tokens
        async with live.http() as http:
            wrong = await http.get(f"/confirm/{tokens.confirm('a:anon-9', 'eve@example.com')}")
            assert wrong.status_code == 404
            assert (await http.get("/confirm/garbage")).status_code == 404
            done = await http.post(f"/confirm/{tokens.confirm('a:anon-9', 'bo@example.com')}")
        assert done.status_code == 200
        profile = await live.runtime.store.profile("a:anon-9")
        assert profile is not None and profile["email"] == "bo@example.com"
        events = [e.get("event") for e in await live.runtime.store.events_of("a:anon-9")]
        assert "Email Confirmed" in events


async def test_unknown_mail_and_bad_tokens_never_redirect(tmp_path: Path) -> None:
    """A validly signed click for a mail that does not exist, and a bad unsubscribe token,
    are 404 pages."""
    async with run_server(make_config(tmp_path)) as live:
        tokens = live.runtime.tokens
        async with live.http() as http:
            ghost = await http.get(f"/c/{tokens.click('nope-1', 'https://shop.example/')}")
            assert ghost.status_code == 404 and "location" not in ghost.headers
            assert (await http.post("/u/garbage")).status_code == 404
            assert (await http.get("/u/garbage")).status_code == 404


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    garbage=st.one_of(
        st.text(min_size=1, max_size=300).map(lambda t: urllib.parse.quote(t, safe="")),
        st.sampled_from(["..%2F..%2Fetc", "%2F%2Fevil.example", "javascript:alert(1)", "x" * 5000]),
    ),
    query=st.sampled_from(
        ["", "?url=//evil.example", "?next=https://evil.example", "?u=%5C%5Cevil"]
    ),
)
async def test_tampered_click_tokens_never_redirect(
    live_links: tuple[LiveServer, httpx.AsyncClient, str], garbage: str, query: str
) -> None:
    """Anything but a token we signed gets a 404, never a 3xx, whatever the query says;
    a signed token with characters flipped too."""
    live, http, valid = live_links
    for token in (garbage, valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")):
        answer = await http.get(f"/c/{token}{query}")
        assert answer.status_code == 404 and "location" not in answer.headers


@pytest.fixture
async def live_links(tmp_path_factory: pytest.TempPathFactory) -> Any:
    async with run_server(make_config(tmp_path_factory.mktemp("links"))) as live:
        valid = live.runtime.tokens.click("m-1", "https://shop.example/")
        async with live.http() as http:
            yield live, http, valid


def request(method: str = "GET", agent: str | None = "Mozilla/5.0 Firefox/133.0") -> Request:
    headers = [(b"user-agent", agent.encode())] if agent else []
    return Request({"type": "http", "method": method, "headers": headers, "path": "/"})


@pytest.mark.parametrize(
    ("method", "agent", "sent_at", "opening", "reason"),
    [
        ("HEAD", "Mozilla/5.0", None, False, "head request"),
        ("GET", None, None, False, "no user agent"),
        ("GET", "Barracuda Sentinel (EE)", None, False, "scanner agent"),
        ("GET", "python-requests/2.32", None, True, "scanner agent"),
        ("GET", "Mozilla/5.0 (via ggpht.com GoogleImageProxy)", None, True, "image proxy"),
        ("GET", "Mozilla/5.0 Firefox/133.0", 995.0, False, "within 10s of delivery"),
        ("GET", "Mozilla/5.0 Firefox/133.0", 995.0, True, None),
        ("GET", "Mozilla/5.0 Firefox/133.0", 900.0, False, None),
        ("GET", "Mozilla/5.0 Firefox/133.0", None, False, None),
    ],
)
def test_machine_reason(
    method: str, agent: str | None, sent_at: float | None, opening: bool, reason: str | None
) -> None:
    """Scanners, proxies and too-fast clicks are told apart from people."""
    assert machine_reason(request(method, agent), sent_at, 1000.0, 10.0, opening=opening) == reason


def test_suppression_entries_are_hashed() -> None:
    """What the suppression list keeps is a hash, stable across case and spaces."""
    assert email_hash(" Ann@Example.COM ") == email_hash("ann@example.com")
    assert "ann" not in email_hash("ann@example.com")


def claim(anon: str, email: str) -> dict[str, Any]:
    """A browser identify with an unverified (claimed) address."""
    return event("identify", userId=None, anonymousId=anon, traits={"email": email})


async def test_double_opt_in_end_to_end_with_caps(tmp_path: Path) -> None:
    """A claimed address gets one confirmation (a second claim the same day gets
    none); one client causes at most ``confirmations_per_ip``; the link verifies the address
    and opts it in."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        config = smtp_config(tmp_path, smtpd, confirmations_per_ip=2)
        async with run_server(config, clock=clock) as live:
            async with live.ws() as ws:
                await send_batch(ws, [claim("anon-1", "bo@example.com")])
                await send_batch(ws, [claim("anon-1", "bo@example.com")])
                await send_batch(ws, [claim("anon-2", "cy@example.com")])
                await send_batch(ws, [claim("anon-3", "di@example.com")])  # over the IP cap
            (to_bo, to_cy) = await smtpd.wait_for(2)
            assert sorted([*to_bo.rcpt_tos, *to_cy.rcpt_tos]) == [
                "bo@example.com",
                "cy@example.com",
            ]
            rows = await sent(live, 2)
            assert {r["template"] for r in rows} == {"confirm"}
            assert len(await live.runtime.store.mail.outbox()) == 2
            bo = to_bo if to_bo.rcpt_tos == ["bo@example.com"] else to_cy
            text = bo.message.get_body(("plain",)).get_content()
            (path,) = [
                urllib.parse.urlsplit(u).path for u in re.findall(r"https?://\S+/confirm/\S+", text)
            ]
            async with live.http() as http:
                assert (await http.post(path)).status_code == 200
            profile = await live.runtime.store.profile("a:anon-1")
            assert profile is not None and profile["email"] == "bo@example.com"
            clock.advance(86400 + 1)  # a day later the address may be asked again
            async with live.ws() as ws:
                await send_batch(ws, [claim("anon-4", "di@example.com")])
            await smtpd.wait_for(3)


LOCKED = "Your account is LOCKED - call +1 555 0100"
"""What an attacker's browser writes into the first name of an address it does not own."""


async def test_a_scanner_get_never_confirms_and_a_token_confirms_once(tmp_path: Path) -> None:
    """GET /confirm/<token> (what link scanners fetch, scripts included) only shows a page
    whose button POSTs, with no script; the POST confirms; the same token again, by POST or
    GET, shows "already confirmed" and records nothing more."""
    async with run_server(make_config(tmp_path)) as live:
        async with live.ws() as ws:
            await send_batch(ws, [claim("anon-9", "bo@example.com")])
        path = f"/confirm/{live.runtime.tokens.confirm('a:anon-9', 'bo@example.com')}"
        async with live.http() as http:
            for agent in ("Microsoft Office/16.0 SafeLinks", "Mozilla/5.0 Chrome/156.0"):
                page = await http.get(path, headers={"user-agent": agent})
                assert page.status_code == 200 and 'method="post"' in page.text
                assert "<script" not in page.text.lower()
            profile = await live.runtime.store.profile("a:anon-9")
            assert profile is not None and profile["email"] is None
            done = await http.post(path)
            assert done.status_code == 200 and "your address is confirmed" in done.text
            again = await http.post(path)
            assert again.status_code == 200 and "already confirmed" in again.text
            later = await http.get(path)
            assert later.status_code == 200 and "already confirmed" in later.text
        profile = await live.runtime.store.profile("a:anon-9")
        assert profile is not None and profile["email"] == "bo@example.com"
        events = [e.get("event") for e in await live.runtime.store.events_of("a:anon-9")]
        assert events.count("Email Confirmed") == 1


async def test_no_browser_text_reaches_a_mail_to_an_address_it_does_not_own(
    tmp_path: Path,
) -> None:
    """An anonymous browser claims an address with an attacker's first name: neither the
    confirmation mail nor, once the owner confirmed, the marketing mail shows that text. A
    first name typed on the confirm page (the mailbox owner's own) is used."""
    welcome = {"name": "welcome", "trigger": "Signed Up", "step": [{"send": "welcome"}]}
    async with SMTPServer() as smtpd:
        smtp = {"host": smtpd.host, "port": smtpd.port, "timeout_s": TIMEOUT_UNIT}
        mail = {"transport": "smtp", "smtp": smtp, "frequency_cap": "off"}
        config = make_config(tmp_path, workflow=[welcome], mail=mail)
        async with run_server(config) as live:
            attack = event(
                "identify",
                userId=None,
                anonymousId="anon-x",
                traits={"email": "victim@corp.example", "first_name": LOCKED},
            )
            async with live.ws() as ws:
                await send_batch(ws, [attack])
            (confirmation,) = await smtpd.wait_for(1)
            assert LOCKED not in confirmation.message.as_string()
            text = confirmation.message.get_body(("plain",)).get_content()
            (path,) = [
                urllib.parse.urlsplit(u).path for u in re.findall(r"https?://\S+/confirm/\S+", text)
            ]
            async with live.http() as http:
                await http.post(path)
            async with live.ws() as ws:
                await send_batch(ws, [event("track", anonymousId="anon-x", event="Signed Up")])
            (_, marketing) = await smtpd.wait_for(2)
            assert marketing.rcpt_tos == ["victim@corp.example"]
            assert LOCKED not in marketing.message.as_string()
            assert "Hi there" in marketing.message.get_body(("plain",)).get_content()
            async with live.ws() as ws:  # the owner's own name, from the confirm page's form
                await send_batch(ws, [claim("anon-y", "ann@corp.example")])
            (*_, second) = await smtpd.wait_for(3)
            text = second.message.get_body(("plain",)).get_content()
            (path,) = [
                urllib.parse.urlsplit(u).path for u in re.findall(r"https?://\S+/confirm/\S+", text)
            ]
            async with live.http() as http:
                await http.post(path, data={"first_name": "Ann"})
            async with live.ws() as ws:
                await send_batch(ws, [event("track", anonymousId="anon-y", event="Signed Up")])
            (*_, greeted) = await smtpd.wait_for(4)
            assert "Hi Ann," in greeted.message.get_body(("plain",)).get_content()


async def test_an_open_of_a_confirmation_starts_no_re_engagement(tmp_path: Path) -> None:
    """The shipped re-engagement starts from opens of marketing mail only: the double opt-in
    mail's open (transactional, marked ``marketing: false``) starts nothing, even once the
    address is confirmed; a cart reminder's open starts it."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        config = smtp_config(tmp_path, smtpd, workflows=("cart_abandonment", "re_engagement"))
        async with run_server(config, clock=clock) as live:
            claim = event(
                "identify", userId=None, anonymousId="anon-9", traits={"email": "bo@example.com"}
            )
            async with live.ws() as ws:
                await send_batch(ws, [claim])
            await advance(live, clock, 1)
            (confirmation,) = await smtpd.wait_for(1)
            html = confirmation.message.get_body(("html",)).get_content()
            (pixel,) = links_of(html, "o")
            tokens = live.runtime.tokens
            async with live.http() as http:
                done = await http.post(f"/confirm/{tokens.confirm('a:anon-9', 'bo@example.com')}")
                assert done.status_code == 200
                clock.advance(60)
                await http.get(pixel, headers=BROWSER)
            opened = await live.runtime.store.events_of("a:anon-9", limit=1)
            assert opened[0]["event"] == "Email Opened"
            assert opened[0]["properties"]["marketing"] is False
            assert await live.runtime.store.runs_of("a:anon-9", 10) == []

            async with live.ws() as ws:
                cart = [shopper("u1", "ann@example.com"), tracked("u1", "Product Added", **LAMP)]
                await send_batch(ws, cart)
            await advance(live, clock, 1800)
            (_, reminder) = await smtpd.wait_for(2)
            (pixel,) = links_of(reminder.message.get_body(("html",)).get_content(), "o")
            async with live.http() as http:
                await http.get(pixel, headers=BROWSER)
            runs = await live.runtime.store.runs_of("u:u1", 10)
            assert "re_engagement" in {r["workflow"] for r in runs}
