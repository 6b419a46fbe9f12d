"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real rtserver on a fake clock.

It logs in, watches an event sent over a WebSocket appear in the live feed, sees the cart's
timer pending and then its mail sent and in the sink's inbox (the clock moved by the test),
checks that event data carrying HTML is shown as text (no element made, no alert), opens a
person's timeline, saves a screenshot under demo traffic, and logs out. Every wait is on the
page (Playwright's ``expect``), never on time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from rtserver.dashboard.routes import duration
from tests.support.browser import expect
from tests.support.dashboard import (  # noqa: F401 (sse_exit_flag_reset is autouse)
    PASSWORD,
    XSS,
    dashboard_config,
    sse_exit_flag_reset,
)
from tests.support.events import event, shopper, tracked
from tests.support.server import (
    ORIGIN,
    TIMEOUT_UNIT,
    FakeClock,
    advance,
    run_server,
    send_batch,
    sent,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Dialog, Page

WAIT_MS = 4 * TIMEOUT_UNIT * 1000
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOT = ARTIFACTS / "dashboard.png"
IMG_XSS = '<img src=x onerror="alert(2)">'


async def logged_in(browser: Browser, base: str, dialogs: list[str]) -> Page:
    """A page that went to /dashboard, was sent to the login, and logged in."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.goto(f"{base}/dashboard")
    await expect(page).to_have_url(f"{base}/dashboard/login?next=/dashboard")
    await page.fill("#password", "not it")
    await page.click("#login")
    await expect(page.locator("#login-error")).to_have_text("Wrong password.")
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await expect(page).to_have_url(f"{base}/dashboard")
    await expect(page.locator("#live")).to_have_text("live")
    return page


async def test_dashboard_live_in_chromium(browser: Browser, tmp_path: Path) -> None:
    """Login, a live event, a pending timer then its mail, escaped event data, a person's
    timeline, a screenshot under demo traffic, logout."""
    clock = FakeClock()
    dialogs: list[str] = []
    async with run_server(dashboard_config(tmp_path), clock=clock) as live:
        page = await logged_in(browser, live.http_url, dialogs)
        feed = page.locator("#events-body")

        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("ann", "ann@example.com")])
            added = tracked("ann", "Product Added", cart_id="cart-7", name="Lamp", note=XSS)
            await send_batch(ws, [added, event(event=IMG_XSS, anonymousId="anon-x")])
        await expect(feed).to_contain_text("Product Added")
        await expect(feed).to_contain_text(XSS)  # shown as text...
        await expect(feed).to_contain_text(IMG_XSS)
        assert await page.locator("#events-body script, #events-body img").count() == 0

        # Flows: the cart's timer pending and its run waiting, then gone once the mail went.
        await page.click("#tab-flows")
        await expect(page.locator("#tab-flows")).to_have_attribute("aria-current", "page")
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#timers-body")).to_contain_text("cart-7")
        await expect(page.locator("#runs-body")).to_contain_text("wait_inactive")
        await expect(page.locator('#flows-body tr[data-flow="cart"] [data-k="open"]')).to_have_text(
            "1"
        )
        await advance(live, clock, 1800)
        await expect(page.locator("#timers-body")).to_contain_text("no timers pending")
        await expect(
            page.locator('#flows-body tr[data-flow="cart"] [data-k="mailed"]')
        ).to_have_text("1")  # live, from the funnel's update

        # Messages: the outbox counts it sent, the sink's inbox has it, the preview shows it.
        await page.click("#tab-messages")
        await expect(page.locator("#mail-sent")).to_have_text("1")
        sink = page.locator("#sink-body a")
        await expect(sink).to_have_count(1)
        await sink.click()
        frame = page.frame_locator("iframe[name=mailview]")
        await expect(frame.locator("body")).to_contain_text("Hi Ann")

        # Overview: the funnel agrees (mailed 1), and says as of when.
        await page.click("#tab-overview")
        cart_row = page.locator("#funnel-body tr", has_text="cart")
        await expect(cart_row.locator("td").nth(3)).to_have_text("1")
        await expect(page.locator("#funnel-at")).to_have_text(
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
        )
        # The script writes durations and money as the page does.
        for seconds in (None, 0.4, 5.482815980911255, 725, 4320, 3600, 183_600, 86_460):
            shown = await page.evaluate("(s) => rtDashboard.format.duration(s)", seconds)
            assert shown == duration(seconds), seconds
        assert await page.evaluate("rtDashboard.format.money(49.5)") == "49.50 EUR"

        await page.fill("#filter-person", "anon-x")
        await expect(feed.locator("tr")).to_have_count(1)
        await page.fill("#filter-person", "")

        # Demo traffic for the screenshot: a few shoppers over a few (fake) seconds.
        for second in range(12):
            async with live.ws(origin=ORIGIN) as ws:
                user = f"shopper{second % 4}"
                batch = [
                    tracked(user, "Product Viewed", product_id=f"sku-{i}", price=9.5 + i)
                    for i in range(second % 5 + 1)
                ]
                if second % 3 == 0:
                    batch.append(tracked(user, "Product Added", cart_id=f"c-{second}", price=20))
                await send_batch(ws, batch)
            clock.advance(1)
            seen = await page.evaluate("window.rtDashboard.updates")
            await page.wait_for_function("(seen) => window.rtDashboard.updates > seen", arg=seen)
        await page.click("#tab-system")
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#c-stored")).not_to_have_text("0")
        await page.click("#tab-overview")  # a fresh snapshot: the funnel as it is now
        await expect(page.locator("#funnel-body")).to_contain_text("cart")
        await expect(page.locator("#live")).to_have_text("live")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        print(f"dashboard screenshot: {SCREENSHOT}")

        await page.click("#events-body a >> text=u:ann")
        await expect(page.locator("#person-id")).to_have_text("u:ann")
        timeline = page.locator("#timeline")
        await expect(timeline).to_contain_text("mail cart_reminder sent")
        await expect(timeline).to_contain_text(XSS)
        assert await page.locator("#timeline script").count() == 0

        await page.click("#logout")
        await expect(page).to_have_url(f"{live.http_url}/dashboard/login")
    assert dialogs == []
    assert SCREENSHOT.stat().st_size > 10_000


BANDIT_CART = {
    "name": "cart",
    "trigger": "Product Added",
    "reentry": "always",
    "step": [
        {
            "variant": [{"send": "cart_reminder"}, {"send": "cart_reminder_2"}],
            "selection": "bandit",
        }
    ],
}


async def test_send_time_page_live_in_chromium(browser: Browser, tmp_path: Path) -> None:
    """The Send time page follows the dashboard's stream: a first visit (an engagement), the
    shopper's profile and a cart, sent in one batch while the page is open, show up as the
    shop's heatmap (drawn by the script where the page said there was no engagement yet) and
    as a send of the bandit's arm."""
    dialogs: list[str] = []
    config = dashboard_config(tmp_path, workflow=[BANDIT_CART])
    async with run_server(config, clock=FakeClock()) as live:
        page = await logged_in(browser, live.http_url, dialogs)
        await page.goto(f"{live.http_url}/dashboard/send-time")
        await expect(page.locator("#live")).to_have_text("live")
        await page.wait_for_function("() => window.rtSendTime.applied >= 1")  # the snapshot
        await expect(page.locator("#shop-heatmap-empty")).to_have_count(1)
        arms = page.locator("#bandit-cart-1-arms tr")
        await expect(arms).to_have_count(2)
        assert [await r.locator("td").nth(1).inner_text() for r in await arms.all()] == [
            "0",
            "0",
        ]
        async with live.ws(origin=ORIGIN) as ws:
            added = tracked("ann", "Product Added", cart_id="cart-7", name="Lamp")
            viewed = tracked("ann", "Product Viewed", product_id="p1")
            await send_batch(ws, [viewed, shopper("ann", "ann@example.com"), added])
        await expect(page.locator("#shop-heatmap rect")).to_have_count(7 * 24)
        await expect(page.locator("#shop-heatmap-empty")).to_have_count(0)
        await expect(page.locator("#shop-heatmap-box")).to_contain_text("Busiest hours: ")
        await expect(page.locator("#bandit-cart-1-days svg.shares rect")).to_have_count(2)
        sends = [await r.locator("td").nth(1).inner_text() for r in await arms.all()]
        assert sorted(sends) == ["0", "1"]
        assert await page.locator("#bandit-cart-1-arms td.chance").count() == 2
    assert dialogs == []


TAB_PATHS = (
    "/dashboard",
    "/dashboard/flows",
    "/dashboard/flows/cart",
    "/dashboard/send-time",
    "/dashboard/people",
    "/dashboard/person/u:ann",
    "/dashboard/messages",
    "/dashboard/system",
)
VIEWPORTS = (
    {"width": 1440, "height": 900},
    {"width": 390, "height": 844},
    {"width": 360, "height": 740},
)


async def test_every_tab_fits_a_desktop_and_a_phone(browser: Browser, tmp_path: Path) -> None:
    """Every tab (and a flow's, a person's and the send-time page) at 1440×900, 390×844 and
    360×740, with a mail sent and the live events in: nothing wider than the window (no
    horizontal scrolling), the current tab marked, the tabs reached with the keyboard, and the
    pages that show live figures live (a flow's counts at each step follow the stream)."""
    clock = FakeClock()
    dialogs: list[str] = []
    async with run_server(dashboard_config(tmp_path), clock=clock) as live:
        page = await logged_in(browser, live.http_url, dialogs)
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("ann", "ann@example.com")])
            added = tracked("ann", "Product Added", cart_id="cart-7", name="Lamp " * 40)
            await send_batch(ws, [added])
        await advance(live, clock, 1800)
        await sent(live)
        # A flow's page follows the stream: a second cart shows up at its first step.
        await page.goto(f"{live.http_url}/dashboard/flows/cart")
        first = page.locator('#flow-steps li[data-step="0"]')
        await expect(first.locator('[data-k="entered"]')).to_have_text("1")
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [tracked("ann", "Product Added", cart_id="cart-8")])
        await expect(first.locator('[data-k="entered"]')).to_have_text("2")
        await expect(first.locator('[data-k="waiting"]')).to_have_text("1")
        await expect(page.locator("#flow-open")).to_have_text("1")
        for viewport in VIEWPORTS:
            await page.set_viewport_size(viewport)
            for path in TAB_PATHS:
                await page.goto(f"{live.http_url}{path}")
                if await page.locator("#live").count():
                    await expect(page.locator("#live")).to_have_text("live")
                await expect(page.locator("nav.tabs [aria-current]")).to_have_count(1)
                fits = await page.evaluate(
                    "document.documentElement.scrollWidth <= window.innerWidth"
                )
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert fits, (path, viewport, width)
                ARTIFACTS.mkdir(exist_ok=True)
                if viewport["width"] == 390:
                    name = path.strip("/").replace("/", "_").replace(":", "_")
                    await page.screenshot(
                        path=str(ARTIFACTS / f"tab-{name}-390.png"), full_page=True
                    )
        # The keyboard reaches the tabs, in order, from the top of the page.
        await page.goto(f"{live.http_url}/dashboard")
        seen: list[str] = []
        for _ in range(12):
            await page.keyboard.press("Tab")
            seen.append(await page.evaluate("document.activeElement.id"))
        tabs = [s for s in seen if s.startswith("tab-")]
        assert tabs == ["tab-overview", "tab-flows", "tab-people", "tab-messages", "tab-system"]
    assert dialogs == []
