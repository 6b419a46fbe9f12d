"""Segment's own browser library, unmodified, sending to rtserver: headless Chromium (Debian's
package) driven by Playwright loads ``@segment/analytics-next`` (its UMD builds from
``client-js/node_modules``, installed by ``npm ci``) on a shop page of another origin.

The library loads its settings from rtserver (``cdnURL``), then posts to ``/v1/p``, ``/v1/t``,
``/v1/i`` (or ``/v1/b`` when it batches). The waits are on rtserver's commits (a pipeline
listener) and on conditions in the page; never on time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse
from starlette.routing import Route

from rtserver.model import Event
from rtserver.model.events import sign_identity
from tests.support.browser import serve_pages
from tests.support.server import (
    IDENTITY_SECRET,
    TIMEOUT_UNIT,
    LiveServer,
    bound_socket,
    make_config,
    run_server,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

    from rtserver.store.changes import Changes, Prepared

UMD = (
    Path(__file__).resolve().parents[2] / "client-js/node_modules/@segment/analytics-next/dist/umd"
)
"""analytics-next's own builds: ``index.js`` (the ``AnalyticsNext`` global, as npm users get
it) and ``standalone.js`` (what Segment's snippet loads)."""
WAIT_MS = 6 * TIMEOUT_UNIT * 1000
BATCHING = {
    "integrations": {
        "Segment.io": {"deliveryStrategy": {"strategy": "batching", "config": {"size": 3}}}
    }
}
"""Load options that make the library post ``/v1/b`` batches of three."""


@dataclass
class ShopPages:
    """A shop's pages carrying analytics.js, on their own origin; ``cdn`` is rtserver's, set
    once it runs."""

    key: str
    cdn: str = ""
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _page(self, head: str) -> HTMLResponse:
        return HTMLResponse(
            f"<!doctype html><html><head><title>Shop</title>{head}</head>"
            "<body><h1>Shop</h1></body></html>"
        )

    async def npm(self, request: Request) -> HTMLResponse:
        """``AnalyticsBrowser.load({writeKey, cdnURL})``, as a shop bundling the npm package."""
        settings = json.dumps({"writeKey": self.key, "cdnURL": self.cdn})
        return self._page(
            '<script src="/analytics-next.js"></script>'
            "<script>"
            f"window.analytics = AnalyticsNext.AnalyticsBrowser.load({settings});"
            "analytics.then(() => { window.loaded = true },"
            " (e) => { window.loadError = String(e) });"
            "</script>"
        )

    async def snippet(self, request: Request) -> HTMLResponse:
        """Segment's snippet, with the key and rtserver as the CDN: a queue of calls, then
        the standalone build, which reads ``_writeKey``, ``_cdn`` and ``_loadOptions``."""
        stub = (
            "window.analytics = [];"
            "for (const m of ['page', 'track', 'identify', 'alias', 'group', 'screen']) {"
            "  analytics[m] = (...args) => { analytics.push([m, ...args]); return analytics };"
            "}"
            f"analytics._writeKey = {json.dumps(self.key)};"
            f"analytics._cdn = {json.dumps(self.cdn)};"
            f"analytics._loadOptions = {json.dumps(BATCHING)};"
            "analytics.page();"
        )
        return self._page(f'<script>{stub}</script><script async src="/standalone.js"></script>')

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/npm", self.npm),
                Route("/snippet", self.snippet),
                Route("/analytics-next.js", lambda r: FileResponse(UMD / "index.js")),
                Route("/standalone.js", lambda r: FileResponse(UMD / "standalone.js")),
            ]
        )


@dataclass
class Commits:
    """What rtserver's pipeline committed, seen by a listener after each commit."""

    fresh: list[Event] = field(default_factory=list)
    duplicates: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, prepared: Prepared, changes: Changes) -> None:
        self.fresh.extend(prepared.fresh)
        self.duplicates += prepared.duplicates
        self.changed.set()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(6 * TIMEOUT_UNIT):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    async def count(self, n: int) -> list[Event]:
        await self.until(lambda: len(self.fresh) >= n)
        return self.fresh


@dataclass
class Setup:
    live: LiveServer
    shop: ShopPages
    commits: Commits
    requests: list[str]
    page: Page


@pytest.fixture
async def setup(browser: Browser, tmp_path: Path) -> AsyncIterator[Setup]:
    """rtserver (its public_url its own address) allowing the shop's origin, the shop, and a
    page that records every request it makes."""
    async with serve_pages((shop := ShopPages(key="pk_dev")).app()) as port:
        shop.port = port
        sock = bound_socket()
        rt_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = make_config(
            tmp_path, server={"allowed_origins": [shop.origin], "public_url": rt_url}
        )
        async with run_server(config, sock=sock) as live:
            shop.cdn = live.http_url
            commits = Commits()
            live.runtime.pipeline.listeners.append(commits.record)
            page = await browser.new_page()
            page.set_default_timeout(WAIT_MS)
            requests: list[str] = []
            page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
            yield Setup(live, shop, commits, requests, page)
            await page.close()


def paths_to(requests: list[str], origin: str) -> list[str]:
    """``METHOD /path`` of the requests to ``origin``; every request went to it or the shop."""
    return [
        f"{r.split(' ')[0]} {urlsplit(r.split(' ')[1]).path}"
        for r in requests
        if r.split(" ")[1].startswith(origin + "/")
    ]


async def test_analytics_browser_load_sends_each_call_once_as_browser_events(
    setup: Setup,
) -> None:
    """AnalyticsBrowser.load({writeKey: <public key>, cdnURL: <rtserver>}) with no inline
    settings: page, track, identify and track again land once each, as browser events of the
    page's anonymous person: an identify without userHash does not make the user known, even
    though the library sends its userId with every later event. An identify with the shop's
    userHash then stitches the history to the user."""
    live, page, commits = setup.live, setup.page, setup.commits
    await page.goto(f"{setup.shop.origin}/npm")
    await page.wait_for_function("() => window.loaded || window.loadError")
    assert await page.evaluate("window.loadError") is None
    await page.evaluate(
        """async () => {
            await analytics.page();
            await analytics.track('Product Viewed', {product_id: 'p1', price: 59.9});
            await analytics.identify('u-42', {email: 'ada@example.com'});
            await analytics.track('Product Added', {product_id: 'p1', price: 59.9});
        }"""
    )
    fresh = await commits.count(4)
    anonymous_id = await page.evaluate("analytics.instance.user().anonymousId()")
    store = live.runtime.store
    assert await store.count_events() == 4 and commits.duplicates == 0
    assert [(e.type, e.name) for e in fresh] == [
        ("page", None),
        ("track", "Product Viewed"),
        ("identify", None),
        ("track", "Product Added"),
    ]
    assert {(e.source, e.anonymous_id, e.user_verified) for e in fresh} == {
        ("browser", anonymous_id, False)
    }
    assert [e.user_id for e in fresh] == [None, None, "u-42", "u-42"]
    assert await store.person_of(anonymous_id) is None
    assert await store.profile("u:u-42") is None
    stored = await store.events_of(f"a:{anonymous_id}")
    assert len(stored) == 4 and "writeKey" not in stored[0]
    assert stored[0]["context"]["library"]["name"] == "analytics.js"
    viewed = stored[-1]["properties"]  # newest first: the page view is last
    assert (viewed["path"], viewed["url"]) == ("/npm", f"{setup.shop.origin}/npm")

    user_hash = sign_identity(IDENTITY_SECRET, "u-42")
    await page.evaluate("(h) => analytics.identify('u-42', {}, {userHash: h})", user_hash)
    await commits.count(5)
    assert await store.person_of(anonymous_id) == "u:u-42"
    assert len(await store.events_of("u:u-42")) == 5

    sent = paths_to(setup.requests, live.http_url)
    assert sent == [
        "GET /v1/projects/pk_dev/settings",
        "POST /v1/p",
        "POST /v1/t",
        "POST /v1/i",
        "POST /v1/t",
        "POST /v1/i",
    ]
    assert len(sent) + len(paths_to(setup.requests, setup.shop.origin)) == len(setup.requests)


async def test_the_snippet_with_batching_posts_batches_to_v1_b(setup: Setup) -> None:
    """Segment's snippet (the standalone build) with ``_cdn`` set to rtserver and batching on:
    the queued page view and two later calls go out as one ``/v1/b`` batch, stored once."""
    live, page, commits = setup.live, setup.page, setup.commits
    await page.goto(f"{setup.shop.origin}/snippet")
    await page.wait_for_function("() => window.analytics && window.analytics.initialized")
    await page.evaluate(
        """async () => {
            await analytics.track('Product Viewed', {product_id: 'p2'});
            await analytics.identify('u-7');
        }"""
    )
    fresh = await commits.count(3)
    anonymous_id = await page.evaluate("analytics.user().anonymousId()")
    assert await live.runtime.store.count_events() == 3 and commits.duplicates == 0
    assert sorted((e.type, e.source, e.anonymous_id) for e in fresh) == [
        ("identify", "browser", anonymous_id),
        ("page", "browser", anonymous_id),
        ("track", "browser", anonymous_id),
    ]
    assert await live.runtime.store.person_of(anonymous_id) is None
    sent = paths_to(setup.requests, live.http_url)
    assert sent == ["GET /v1/projects/pk_dev/settings", "POST /v1/b"]
    assert len(sent) + len(paths_to(setup.requests, setup.shop.origin)) == len(setup.requests)
