"""The snippet in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real rtserver, on a shop page that loads ``/rt.js`` as the README says.

Every wait is on something that happens: a condition in the page (``wait_for_function``), an
HTTP exchange the TCP proxy forwarded, or the server process's ready banner; never on time.
"""

from __future__ import annotations

import signal
import sqlite3
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from rtserver.config.schema import Config
from rtserver.model.events import sign_identity
from tests.support.browser import Shop, proxy_to, serve_shop
from tests.support.server import IDENTITY_SECRET, TIMEOUT_UNIT, make_config, run_server
from tests.support.server_process import ServerProcess, free_port, write_config

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

WAIT_MS = 6 * TIMEOUT_UNIT * 1000
"""The longest a page condition may take; reconnecting after a cut waits out a backoff."""


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    async with serve_shop(Shop(key="pk_dev")) as shop:
        yield shop


async def new_page(browser: Browser) -> Page:
    page = await browser.new_page()
    page.set_default_timeout(WAIT_MS)
    return page


def shop_config(tmp_path: Path, shop: Shop) -> Config:
    return make_config(tmp_path, server={"allowed_origins": [shop.origin]})


async def until(page: Page, condition: str) -> None:
    """Wait until the JavaScript ``condition`` holds in ``page``, with ``s = rt('stats')``."""
    loaded = "window.rt && window.rt.v"  # the snippet, not the stub
    await page.wait_for_function(
        f"() => {{ const s = {loaded} && rt('stats'); return !!s && ({condition}) }}"
    )


async def stats(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("rt('stats')")
    return result


def stored(db: Path) -> list[dict[str, Any]]:
    """Every stored event, in arrival order: messageId, type, name and the raw body."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT message_id, type, name, body FROM events ORDER BY seq")
        return [
            {"id": mid, "type": kind, "name": name, "body": orjson.loads(body)}
            for mid, kind, name, body in rows.fetchall()
        ]
    finally:
        con.close()


def assert_once(events: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "a messageId stored twice"


def describe(event: dict[str, Any]) -> tuple[str, str]:
    body = event["body"]
    if event["type"] == "page":
        return "page", body["properties"]["path"]
    if event["type"] == "track" and body["event"] == "Stream Tick":
        return "tick", str(body["properties"]["n"])
    return event["type"], event["name"] or ""


async def test_shop_journey_is_stored_exactly_once(
    browser: Browser, shop: Shop, tmp_path: Path
) -> None:
    """Browse, add to cart, view the cart (SPA), log in: each event stored once, in context."""
    config = shop_config(tmp_path, shop)
    async with run_server(config) as live:
        shop.script_base = shop.host = live.http_url
        page = await new_page(browser)
        await page.goto(f"{shop.origin}/?utm_source=news&utm_medium=email&utm_campaign=spring")
        await until(page, "s.acked >= 1")
        await page.click("#p1")  # a real navigation: a new page, a new socket
        await until(page, "s.acked >= 2")  # its page view and the Product Viewed queued inline
        await page.click("#add")
        await page.click("#cart")  # pushState: a page view for /cart, then Cart Viewed
        user_hash = sign_identity(IDENTITY_SECRET, "u-42")
        email_hash = sign_identity(IDENTITY_SECRET, "ada@example.com")
        await page.evaluate(
            "([userHash, emailHash]) => rt('identify', 'u-42', {email: 'ada@example.com'},"
            " {userHash, emailHash})",
            [user_hash, email_hash],
        )
        await page.evaluate("rt('checkoutStarted', {cart_id: 'c1', value: 59.9})")
        await until(page, "s.queued === 0 && s.acked >= 7")

        # Event -> ack latency, measured in the page: each probe is flushed at once (no batching
        # window) and the next waits for its ack.
        for i in range(30):
            await page.evaluate(f"rt('track', 'Latency Probe', {{i: {i}}}); rt('flush')")
            await until(page, f"s.acked >= {8 + i}")
        latency = (await stats(page))["latency"][-30:]
        anonymous_id = (await stats(page))["anonymousId"]
        person = await live.runtime.store.person_of(anonymous_id)

    events = stored(Path(config.store.path))
    assert_once(events)
    seen = Counter(describe(e) for e in events)
    assert seen == Counter(
        {
            ("page", "/"): 1,
            ("page", "/product/p1"): 1,
            ("track", "Product Viewed"): 1,
            ("track", "Product Added"): 1,
            ("page", "/cart"): 1,
            ("track", "Cart Viewed"): 1,
            ("identify", ""): 1,
            ("track", "Checkout Started"): 1,
            ("track", "Latency Probe"): 30,
        }
    )
    bodies = {describe(e): e["body"] for e in events}
    added = bodies["track", "Product Added"]
    assert added["properties"]["product_id"] == "p1"
    assert added["anonymousId"] == anonymous_id
    assert added["context"]["campaign"] == {"source": "news", "medium": "email", "name": "spring"}
    assert (
        added["context"]["page"]["referrer"]
        == f"{shop.origin}/?utm_source=news&utm_medium=email&utm_campaign=spring"
    )
    assert bodies["page", "/cart"]["properties"]["referrer"] == f"{shop.origin}/product/p1"
    assert bodies["identify", ""]["context"]["userHash"] == user_hash
    assert bodies["track", "Checkout Started"]["userId"] == "u-42"
    assert person == "u:u-42"  # the verified identify stitched this browser to the user
    print(
        f"\nevent -> ack latency in the browser over {len(latency)} events (ms): "
        f"median {statistics.median(latency):.1f}, min {min(latency)}, max {max(latency)}"
    )


async def test_server_killed_and_restarted_mid_stream_loses_nothing(
    browser: Browser, shop: Shop, tmp_path: Path
) -> None:
    """kill -9 while the page streams events; restart on the same port and database: every
    event is stored exactly once."""
    port = free_port()
    db = tmp_path / "rtserver.db"
    config = write_config(
        tmp_path / "config.toml",
        {
            "server": {"host": "127.0.0.1", "port": port, "allowed_origins": [shop.origin]},
            "store": {"path": str(db)},
            "ingest": {"events_per_s": 100000.0, "burst_events": 100000},
        },
    )
    server = ServerProcess(config)
    count = 150
    try:
        url = await server.start()
        shop.script_base = shop.host = url
        page = await new_page(browser)
        await page.goto(shop.origin)
        await until(page, "s.acked >= 1")
        await page.evaluate(f"startStream({count}, 10)")
        await until(page, "s.acked >= 40")
        # Frozen, the server takes frames into its socket buffer and acks none: the page has
        # events in flight when the kill comes, and must resend them.
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        await until(page, "s.queued >= 20")
        await server.kill()
        await until(page, "s.fails >= 1")  # it tried to reconnect, and was refused
        await server.start()
        await until(page, "window.streamDone && s.queued === 0")
        after = await stats(page)
        assert await server.terminate(4 * TIMEOUT_UNIT) == 0, server.tail()
    finally:
        await server.kill()

    events = stored(db)
    assert_once(events)
    seen = Counter(describe(e) for e in events)
    assert seen == Counter({("page", "/"): 1} | {("tick", str(n)): 1 for n in range(count)})
    print(
        f"\nkill -9 mid-stream: {count} events stored once; the page connected "
        f"{after['opens']} times, {after['fails']} refused, {after.get('posts', 0)} HTTP posts"
    )


async def test_network_cut_and_restored_through_a_proxy(
    browser: Browser, shop: Shop, tmp_path: Path
) -> None:
    """The network goes (events in flight lost, connections dropped, new ones refused) and
    comes back, twice: the page resends after reconnecting, and a page opened while offline
    sends what the previous one left in localStorage."""
    config = shop_config(tmp_path, shop)
    async with run_server(config) as live, proxy_to(live.port) as proxy:
        shop.script_base = live.http_url
        shop.host = proxy.url
        page = await new_page(browser)
        await page.goto(shop.origin)
        await until(page, "s.acked >= 1")

        proxy.stall()  # first the events go out on the socket and are lost on the way
        await page.evaluate("for (let i = 0; i < 5; i++) rt('track', 'Offline', {i})")
        await proxy.wait_for(lambda: proxy.swallowed > 0)
        proxy.cut()
        await until(page, "s.fails >= 2")  # two refused reconnects: the HTTP fallback is next
        assert not [e for e in stored(Path(config.store.path)) if e["name"] == "Offline"]
        proxy.restore()
        await until(page, "s.queued === 0")

        proxy.cut()
        await page.evaluate("for (let i = 0; i < 5; i++) rt('track', 'Offline Again', {i})")
        await page.click("#p2")  # a new page while offline: the beacon of the old one fails
        await until(page, "s.fails >= 1 && s.queued >= 7")  # 5 inherited, a page view, a view
        proxy.restore()
        await until(page, "s.queued === 0")

    events = stored(Path(config.store.path))
    assert_once(events)
    seen = Counter(describe(e) for e in events)
    assert seen == Counter(
        {
            ("page", "/"): 1,
            ("track", "Offline"): 5,
            ("track", "Offline Again"): 5,
            ("page", "/product/p2"): 1,
            ("track", "Product Viewed"): 1,
        }
    )


async def test_navigation_right_after_track_delivers_by_beacon(
    browser: Browser, shop: Shop, tmp_path: Path
) -> None:
    """The socket is stalled (nothing it carries arrives), the page tracks and leaves at once
    for a page without the snippet: the beacon alone delivers the event."""
    config = shop_config(tmp_path, shop)
    async with run_server(config) as live, proxy_to(live.port) as proxy:
        shop.script_base = live.http_url
        shop.host = proxy.url
        page = await new_page(browser)
        await page.goto(f"{shop.origin}/product/p1")
        await until(page, "s.acked >= 2 && s.queued === 0")
        proxy.stall()
        # Leaving in the same task as the call (the navigation starts at once; the batching
        # window would flush 20 ms later, into the stalled socket anyway).
        await page.evaluate(
            "rt('checkoutStarted', {cart_id: 'c1', value: 59.9});"
            " setTimeout(() => { location.href = '/plain' }, 0)"
        )
        await proxy.wait_for(lambda: proxy.answered("POST /v1/batch", 200) >= 1)
        await page.wait_for_url(f"{shop.origin}/plain")

    events = stored(Path(config.store.path))
    assert_once(events)
    assert [describe(e) for e in events if e["type"] == "track"] == [
        ("track", "Product Viewed"),
        ("track", "Checkout Started"),
    ]


async def test_page_of_a_foreign_origin_is_refused(
    browser: Browser, shop: Shop, tmp_path: Path
) -> None:
    """A page whose Origin is not allowed: the WebSocket handshake and every POST (the
    fallback and the beacon) are refused with 403, and nothing is stored."""
    config = shop_config(tmp_path, shop)
    async with run_server(config) as live, proxy_to(live.port) as proxy:
        shop.script_base = live.http_url
        shop.host = proxy.url
        page = await new_page(browser)
        await page.goto(f"{shop.foreign_origin}/product/p1")
        await page.evaluate("rt('productAdded', {product_id: 'p1', price: 59.9})")
        await proxy.wait_for(lambda: proxy.answered("GET /v1/ws", 403) >= 2)
        await proxy.wait_for(lambda: proxy.answered("POST /v1/batch", 403) >= 1)
        posts = proxy.answered("POST /v1/batch", 403)
        await page.goto(f"{shop.foreign_origin}/plain")  # the beacon on the way out
        await proxy.wait_for(lambda: proxy.answered("POST /v1/batch", 403) > posts)
        assert await live.runtime.store.count_events() == 0
        assert not proxy.answered("POST /v1/batch", 200)
    assert stored(Path(config.store.path)) == []
