"""The configured feeds (``[[catalog.feed]]``), read again on their schedule.

Each read goes through the outbound guard (a feed on a private address needs its
``allow_private``), asks with ``If-None-Match`` and ``If-Modified-Since`` so an unchanged feed
costs one short answer, streams the body to a temporary file (memory stays flat whatever the
feed's size), and imports it off the event loop. A product the feed no longer lists is marked
discontinued, unless the document was cut short. Shopify storefronts are read page by page
(``?limit=250&page=N``) until a short page. What each read did is kept in the store (the feeds
table) and logged; a failed read is tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from typing import BinaryIO

import httpx

from rtserver.catalog.feeds import detect_format, parse, shopify_page
from rtserver.catalog.imports import Report, import_products
from rtserver.clock import Clock
from rtserver.config import FeedConfig
from rtserver.errors import StoreError
from rtserver.hooks import AsyncResolve, DestinationRefused, fetch_into, resolve_async
from rtserver.store import FeedState, Store

__all__ = ["Feeds"]

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0
"""Each connect and read of a feed (not the whole download)."""
MAX_FEED_BYTES = 4 << 30
"""The largest feed read (4 GiB)."""
SHOPIFY_PAGE = 250
MAX_SHOPIFY_PAGES = 400
"""At most 100,000 products from one storefront."""


def _format(feed: FeedConfig) -> str:
    path = urllib.parse.urlsplit(feed.url).path
    return feed.format or detect_format(path) or "google"


def _page_url(url: str, page: int) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k not in ("limit", "page")]
    query += [("limit", str(SHOPIFY_PAGE)), ("page", str(page))]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class Feeds:
    """Reads the configured feeds into the catalog."""

    def __init__(
        self,
        store: Store,
        feeds: Sequence[FeedConfig],
        *,
        currency: str,
        clock: Clock,
        changed: Callable[[], None] = lambda: None,
        resolve: AsyncResolve = resolve_async,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.feeds = tuple(feeds)
        self.currency = currency
        self.clock = clock
        self.changed = changed
        """Called when a read brought products back in stock or made them cheaper."""
        self._resolve = resolve
        self._transport = transport
        self.reads = 0
        """Reads done by :meth:`run` (the dashboard and tests wait on :attr:`progress`)."""
        self.progress = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        """Read each feed when it is due, until ``stop`` is set."""
        while not stop.is_set():
            now = self.clock()
            due_at = []
            for feed in self.feeds:
                state = await self._state(feed)
                due = feed.every + (state.fetched_at if state else -float("inf"))
                if due <= now:
                    await self.read(feed)
                    due = self.clock() + feed.every
                    async with self.progress:
                        self.reads += 1
                        self.progress.notify_all()
                due_at.append(due)
            wait_s = max(1.0, min(due_at, default=3600.0) - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

    async def _state(self, feed: FeedConfig) -> FeedState | None:
        try:
            return await self.store.catalog.feed_state(feed.url)
        except StoreError:
            return None

    async def read(self, feed: FeedConfig) -> Report | None:
        """Read ``feed`` once; the import's report, or None when it had not changed or the read
        failed (logged, and kept as the feed's outcome)."""
        started = self.clock()
        state = await self._state(feed)
        try:
            if _format(feed) == "shopify":
                report, etag, modified = await self._shopify(feed), None, None
            else:
                found = await self._document(feed, state)
                if found is None:
                    logger.info("catalog feed %s: not modified", feed.url)
                    etag = state.etag if state else None
                    modified = state.last_modified if state else None
                    await self._save(feed, etag, modified, "not modified")
                    return None
                report, etag, modified = found
        except (DestinationRefused, OSError, httpx.HTTPError, TimeoutError, StoreError) as exc:
            logger.warning("catalog feed %s: %s; read again in %s", feed.url, exc, feed.every)
            with contextlib.suppress(StoreError):
                await self._save(feed, None, None, f"failed: {exc}")
            return None
        for bad in report.bad[:20]:
            logger.warning("catalog feed %s: %s", feed.url, bad)
        if not report.broken:
            gone = await self.store.catalog.vanished(f"feed:{feed.url}", started, self.clock())
            if gone:
                logger.info("catalog feed %s: %d products gone, marked discontinued", feed.url,
                            gone)  # fmt: skip
        logger.info("catalog feed %s: %s", feed.url, report.summary())
        await self._save(feed, etag, modified, f"ok: {report.summary()}")
        if report.changes:
            self.changed()
        return report

    async def _save(
        self, feed: FeedConfig, etag: str | None, modified: str | None, outcome: str
    ) -> None:
        await self.store.catalog.save_feed_state(
            FeedState(feed.url, etag, modified, self.clock(), outcome)
        )

    async def _fetch(self, feed: FeedConfig, url: str, sink: BinaryIO,
                     headers: dict[str, str]) -> httpx.Headers | None:  # fmt: skip
        return await fetch_into(
            url,
            sink,
            headers=headers,
            allow_private=feed.allow_private,
            timeout_s=TIMEOUT_S,
            max_bytes=MAX_FEED_BYTES,
            resolve=self._resolve,
            transport=self._transport,
        )

    async def _document(
        self, feed: FeedConfig, state: FeedState | None
    ) -> tuple[Report, str | None, str | None] | None:
        """A whole-file feed: None when the server says it has not changed."""
        headers: dict[str, str] = {}
        if state is not None and state.etag:
            headers["if-none-match"] = state.etag
        if state is not None and state.last_modified:
            headers["if-modified-since"] = state.last_modified
        with tempfile.TemporaryFile() as body:
            answer = await self._fetch(feed, feed.url, body, headers)
            if answer is None:
                return None
            body.seek(0)
            rows = parse(body, _format(feed), currency=self.currency, base_url=None)
            report = await import_products(self.store, rows, f"feed:{feed.url}", self.clock)
        return report, answer.get("etag"), answer.get("last-modified")

    async def _shopify(self, feed: FeedConfig) -> Report:
        """A storefront's ``/products.json``, page by page until a short one."""
        parts = urllib.parse.urlsplit(feed.url)
        base = f"{parts.scheme}://{parts.netloc}"
        total = Report()
        for page in range(1, MAX_SHOPIFY_PAGES + 1):
            with tempfile.TemporaryFile() as body:
                await self._fetch(feed, _page_url(feed.url, page), body, {})
                body.seek(0)
                rows, listed = shopify_page(body.read(), currency=self.currency, base_url=base)
            report = await import_products(self.store, rows, f"feed:{feed.url}", self.clock)
            total.imported += report.imported
            total.updated += report.updated
            total.skipped += report.skipped
            total.changes += report.changes
            total.bad += report.bad
            total.broken = total.broken or report.broken
            if listed < SHOPIFY_PAGE:
                break
        return total
