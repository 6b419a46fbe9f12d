"""The demo shop page: served by rtserver, it loads the snippet with the public key."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import async_playwright

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import TIMEOUT_UNIT, LiveServer, make_config, run_server


async def test_demo_shop_page(live: LiveServer) -> None:
    async with live.http() as http:
        page = await http.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'src="{live.http_url}/rt.js" data-key="{live.config.keys.public}"' in page.text
    assert "Brass Desk Lamp" in page.text and '"product_id": "lamp"' in page.text


async def test_demo_shop_in_a_browser_streams_to_its_own_origin(tmp_path: Path) -> None:
    """In Chromium, the demo page (no allowed_origins entry needed: it is rtserver's own
    origin) sends its product view and cart add; both are stored, and the sign-up queues the
    double opt-in mail."""
    config = make_config(tmp_path, server={"allowed_origins": []})
    async with run_server(config) as live, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(6 * TIMEOUT_UNIT * 1000)
            await page.goto(f"{live.http_url}/demo")
            await page.click("[data-product=lamp] >> text=View")
            await page.click("[data-product=lamp] >> text=Add to cart")
            await page.fill("#email", "demo.shopper@example.com")
            await page.click("form >> button")
            await page.wait_for_function("window.rt && rt.v && (rt('stats').acked || 0) >= 5")
        finally:
            await browser.close()
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
