"""The demo shop page: served by rtserver, it loads the snippet with the public key."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtserver.config.schema import load_config
from rtserver.tools import demo
from rtserver.tools.demo import demo_config, scaled
from tests.support.events import event
from tests.support.server import (
    TIMEOUT_UNIT,
    FakeClock,
    LiveServer,
    make_config,
    run_server,
    send_batch,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser


async def test_demo_shop_page(live: LiveServer) -> None:
    async with live.http() as http:
        page = await http.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'src="{live.http_url}/rt.js" data-key="{live.config.keys.public}"' in page.text
    assert "Brass Desk Lamp" in page.text and '"product_id": "lamp"' in page.text


async def test_demo_shop_in_a_browser_streams_to_its_own_origin(
    browser: Browser, tmp_path: Path
) -> None:
    """In Chromium, the demo page (no allowed_origins entry needed: it is rtserver's own
    origin) sends its product view and cart add; both are stored, and the sign-up queues the
    double opt-in mail."""
    config = make_config(tmp_path, server={"allowed_origins": []})
    async with run_server(config) as live:
        page = await browser.new_page()
        page.set_default_timeout(6 * TIMEOUT_UNIT * 1000)
        await page.goto(f"{live.http_url}/demo")
        await page.click("[data-product=lamp] >> text=View")
        await page.click("[data-product=lamp] >> text=Add to cart")
        await page.fill("#email", "demo.shopper@example.com")
        await page.click("form >> button")
        await page.wait_for_function("window.rt && rt.v && (rt('stats').acked || 0) >= 5")
        await page.close()
        person = "a:" + await anonymous_id(live)
        events = await live.runtime.store.events_of(person, limit=50)
        names = {e.get("event") or e["type"] for e in events}
        assert {"Product Viewed", "Product Added", "identify", "Signed Up"} <= names
        (confirm,) = await live.runtime.store.mail.outbox()
        assert (
            confirm["template"] == "confirm" and confirm["recipient"] == "demo.shopper@example.com"
        )


async def anonymous_id(live: LiveServer) -> str:
    (row,) = await live.runtime.store._read("SELECT DISTINCT anonymous_id FROM events", ())
    return str(row[0])


ROOT = Path(__file__).resolve().parents[2]


def test_scaled_shortens_every_duration() -> None:
    """Waits, inactivity, timeouts, schedules, re-entry and variants' waits are divided by the
    speed, rounded up to whole seconds; 'never' and 'always' stay."""
    workflow = {
        "name": "w",
        "trigger": "Product Added",
        "reentry": "7d",
        "schedule": "1d",
        "step": [
            {"wait_inactive": "30m"},
            {"wait_until": "Email Clicked", "timeout": "24h"},
            {"variant": [{"name": "a", "weight": 1, "wait": "90s"}, {"name": "b", "wait": "1h"}]},
            {"send": "cart_reminder"},
        ],
    }
    assert scaled(workflow, 60) == {
        "name": "w",
        "trigger": "Product Added",
        "reentry": "10080s",
        "schedule": "1440s",
        "step": [
            {"wait_inactive": "30s"},
            {"wait_until": "Email Clicked", "timeout": "1440s"},
            {"variant": [{"name": "a", "weight": 1, "wait": "2s"}, {"name": "b", "wait": "60s"}]},
            {"send": "cart_reminder"},
        ],
    }
    assert scaled({"reentry": "never"}, 60) == {"reentry": "never"}
    assert scaled({"wait": "5s"}, 60) == {"wait": "1s"}  # never zero


async def test_the_demo_loop_takes_seconds(tmp_path: Path) -> None:
    """`rtserver demo`'s config on the shipped config.toml: a claimed sign-up gets its
    confirmation in the sink, its page's button verifies it, and a cart left 30 s (30 min / 60) gets
    the reminder, with no frequency cap in the way."""
    config = demo_config(ROOT / "config.toml", 60.0, str(tmp_path / "demo.db"))
    assert config.mail.transport == "sink" and config.mail.frequency_cap == "off"
    assert config.store.path == str(tmp_path / "demo.db")
    clock = FakeClock()
    async with run_server(config, clock=clock, stock=demo.catalog(config)) as live:
        own = live.http_url
        async with live.ws(origin=own) as ws:
            claim = event("identify", anonymousId="anon-d", traits={"email": "eve@example.com"})
            await send_batch(ws, [claim])
        (confirmation,) = await sunk(live, 1)
        assert confirmation["recipients"] == ["eve@example.com"]
        message = email.message_from_bytes(confirmation["body"], policy=email.policy.default)
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        (link,) = re.findall(r"https?://\S+/confirm/\S+", text)
        async with live.http() as http:
            path = urllib.parse.urlsplit(link).path
            assert 'method="post"' in (await http.get(path)).text  # the page's button confirms
            assert (await http.post(path)).status_code == 200
        async with live.ws(origin=own) as ws:
            cart = {"cart_id": "c1", "product_id": "lamp", "name": "Brass Desk Lamp", "price": 49.5}
            await send_batch(
                ws, [event(anonymousId="anon-d", event="Product Added", properties=cart)]
            )
        clock.advance(31)
        assert live.runtime.engine is not None and live.runtime.sender is not None
        live.runtime.engine.wake.set()
        (reminder, _) = await sunk(live, 2)
        assert reminder["recipients"] == ["eve@example.com"]
        assert b"Brass Desk Lamp" in reminder["body"]


async def sunk(live: LiveServer, count: int) -> list[dict[str, Any]]:
    """Wait until the dev sink kept ``count`` mails; newest first."""
    sender = live.runtime.sender
    assert sender is not None
    async with asyncio.timeout(4 * TIMEOUT_UNIT), sender.progress:
        while len(mails := await live.runtime.store.mail.sunk()) < count:
            await sender.progress.wait()
    return mails


def test_demo_config_links_to_where_it_is_served_and_holds_no_one_out(tmp_path: Path) -> None:
    """Mail links point at the demo's own address (the --host/--port given, a wildcard bind
    shown as localhost), and no visitor falls into a holdout."""
    shipped = ROOT / "config.toml"
    config = demo_config(shipped, 60.0, str(tmp_path / "d.db"))
    assert config.server.public_url == "http://127.0.0.1:8000"
    assert all(w.get("holdout", 0) == 0 for w in config.workflow)
    assert any("holdout" in w for w in load_config(shipped).workflow)  # the shipped one has
    moved = demo_config(shipped, 60.0, str(tmp_path / "d.db"), host="0.0.0.0", port=9100)
    assert (moved.server.host, moved.server.port) == ("0.0.0.0", 9100)
    assert moved.server.public_url == "http://localhost:9100"
    v6 = demo_config(shipped, 60.0, str(tmp_path / "d.db"), host="::1", port=9100)
    assert v6.server.public_url == "http://[::1]:9100"


async def test_demo_product_pages_images_and_cart_links(live: LiveServer) -> None:
    """The shop's product pages and images are served under /demo (404 for another id); a
    cart link restores the catalog's products it signs (others, and bad tokens, restore
    nothing)."""
    tokens = live.runtime.tokens
    async with live.http() as http:
        page = await http.get("/demo/product/chair")
        missing = await http.get("/demo/product/nope")
        svg = await http.get("/demo/image/lamp.svg")
        no_svg = await http.get("/demo/image/nope.svg")
        good = await http.get(f"/demo/cart/{tokens.cart([('lamp', 2), ('gone', 1)])}")
        bad = await http.get("/demo/cart/not-a-token")
    assert page.status_code == 200 and 'class="card shown" id="chair"' in page.text
    assert missing.status_code == 404 and no_svg.status_code == 404
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.startswith("<svg") and ">B</text>" in svg.text
    assert good.status_code == 200 and 'id="restored"' in good.text
    assert 'var RESTORED = [{"index": 0, "quantity": 2}];' in good.text
    assert bad.status_code == 200 and "var RESTORED = [];" in bad.text


def test_the_demo_catalog_and_brand_live_under_the_demo_shop(tmp_path: Path) -> None:
    """The demo's brand url is its shop, and its products' links and images are under it."""
    config = demo_config(ROOT / "config.toml", 60.0, str(tmp_path / "d.db"), port=9100)
    assert config.mail.brand.url == "http://127.0.0.1:9100/demo"
    lamp = demo.catalog(config)[0]
    assert lamp.url == "http://127.0.0.1:9100/demo/product/lamp"
    assert lamp.image == "http://127.0.0.1:9100/demo/image/lamp.svg"
