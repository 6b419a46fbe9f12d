"""The configured feeds against real local HTTP servers (port 0): each format, bad rows kept
apart, ETag and If-Modified-Since reuse, a vanished product, Shopify's pages, a feed on a
private address refused, and failures kept as the feed's outcome."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest
from werkzeug import Request, Response

from rtserver.catalog.sync import Feeds
from rtserver.config import FeedConfig
from rtserver.store import Store
from tests.support.receiver import Receiver

RSS = """<?xml version="1.0"?>
<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0"><channel>
{items}
</channel></rss>"""
ITEM = """<item><g:id>{id}</g:id><g:title>{title}</g:title><g:price>{price}</g:price>
<g:link>https://shop.example/{id}</g:link><g:availability>{availability}</g:availability>
<g:image_link>https://cdn.example/{id}.jpg</g:image_link></item>"""


def rss(*items: tuple[str, str, str, str]) -> bytes:
    body = "".join(ITEM.format(id=i, title=t, price=p, availability=a) for i, t, p, a in items)
    return RSS.format(items=body).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feeds(store: Store, clock: Clock, *configs: FeedConfig, **kw: Any) -> Feeds:
    return Feeds(store, configs, currency="EUR", clock=clock, **kw)


def feed(receiver: Receiver, path: str, **kw: Any) -> FeedConfig:
    return FeedConfig(url=receiver.url_for(path), allow_private=True, **kw)


async def test_a_google_feed_with_etag_reuse_and_a_vanished_product(store: Store) -> None:
    clock, changed = Clock(), []
    documents = [
        rss(("mug", "Mug", "12.00 EUR", "in stock"), ("cup", "Cup", "free", "in stock"),
            ("jug", "Jug", "30.00 EUR", "out of stock")),
        rss(("mug", "Mug", "9.00 EUR", "in stock"), ("jug", "Jug", "30.00 EUR", "in stock")),
    ]  # fmt: skip
    served: list[str | None] = []

    def handler(request: Request) -> Response:
        served.append(request.headers.get("If-None-Match"))
        version = f'"v{len(documents)}"'
        if request.headers.get("If-None-Match") == version:
            return Response(status=304)
        body = gzip.compress(documents[0])
        return Response(body, headers={"ETag": version, "Last-Modified": "Mon, 07 Dec 2026"})

    async with Receiver.running() as receiver:
        receiver.expect_request("/feed.xml.gz").respond_with_handler(handler)
        config = feed(receiver, "/feed.xml.gz")
        reader = feeds(store, clock, config, changed=lambda: changed.append(1))
        report = await reader.read(config)
        assert report is not None and report.summary() == "imported 2, updated 0, skipped 1"
        assert str(report.bad[0]).startswith("line 2: price = 'free'")
        state = await store.catalog.feed_state(config.url)
        assert state is not None and state.etag == '"v2"' and state.outcome.startswith("ok")
        clock.now += 3600
        assert await reader.read(config) is None  # 304: nothing parsed, nothing changed
        assert served == [None, '"v2"']
        documents.pop(0)
        clock.now += 3600
        report = await reader.read(config)
        assert report is not None and report.summary() == "imported 0, updated 2, skipped 0"
        assert report.changes == 2 and changed == [1]
        catalog = await store.catalog.products(["mug", "jug", "cup"])
        assert catalog["mug"].price == 9.0 and catalog["jug"].buyable
        assert "cup" not in catalog
        assert await store.catalog.feed_image_hosts() == {"cdn.example"}
    documents.append(rss(("jug", "Jug", "30.00 EUR", "in stock")))
    async with Receiver.running() as receiver:
        receiver.expect_request("/feed.xml").respond_with_data(documents[-1])
        gone = feed(receiver, "/feed.xml")
        await feeds(store, clock, gone).read(gone)
        clock.now += 1
        await store.catalog.upsert(
            [p for p in (await store.catalog.products(["mug"])).values()], f"feed:{gone.url}", 0
        )
        clock.now += 1
        assert (await feeds(store, clock, gone).read(gone)) is not None
        assert (await store.catalog.products(["mug"]))["mug"].availability == "discontinued"


@pytest.mark.parametrize(
    ("path", "body", "form"),
    [
        ("/f.tsv", b"id\ttitle\tprice\nmug\tMug\t12.00 EUR\n", ""),
        ("/f.csv", b"id,name,price,categories\nmug,Mug,12,Home > Kitchen\n", ""),
        ("/f", b'{"id": "mug", "name": "Mug", "price": 12}\n', "jsonl"),
    ],
)
async def test_every_format(store: Store, path: str, body: bytes, form: str) -> None:
    async with Receiver.running() as receiver:
        receiver.expect_request(path).respond_with_data(body)
        config = feed(receiver, path, format=form)
        report = await feeds(store, Clock(), config).read(config)
        assert report is not None and report.imported == 1
        assert (await store.catalog.products(["mug"]))["mug"].name == "Mug"


async def test_shopify_is_read_page_by_page(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rtserver.catalog.sync.SHOPIFY_PAGE", 2)
    pages = {
        "1": [{"id": 1, "title": "A", "handle": "a", "variants": [{"price": "5.00"}]},
              {"id": 2, "title": "B", "handle": "b", "variants": [{"price": "6.00"}]}],
        "2": [{"id": 3, "title": "C", "handle": "c", "variants": [{"price": "7.00"}]}],
    }  # fmt: skip

    def handler(request: Request) -> Response:
        assert request.args["limit"] == "2"
        return Response(json.dumps({"products": pages[request.args["page"]]}))

    async with Receiver.running() as receiver:
        receiver.expect_request("/products.json").respond_with_handler(handler)
        config = feed(receiver, "/products.json")
        report = await feeds(store, Clock(), config).read(config)
        assert report is not None and report.imported == 3
        product = (await store.catalog.products(["3"]))["3"]
        assert product.url == f"{receiver.url_for('/').rstrip('/')}/products/c"


async def test_a_private_feed_is_refused_and_failures_are_kept(store: Store) -> None:
    async with Receiver.running() as receiver:
        receiver.expect_request("/feed.xml").respond_with_data(rss())
        receiver.expect_request("/missing.xml").respond_with_data("no", status=404)
        private = FeedConfig(url=receiver.url_for("/feed.xml"))
        missing = feed(receiver, "/missing.xml")
        reader = feeds(store, Clock(), private, missing)
        assert await reader.read(private) is None
        assert await reader.read(missing) is None
        assert receiver.arrived and all(r.path == "/missing.xml" for r in receiver.arrived)
        state = await store.catalog.feed_state(private.url)
        assert state is not None and "loopback" in state.outcome
        state = await store.catalog.feed_state(missing.url)
        assert state is not None and state.outcome == "failed: 404 NOT FOUND"


async def test_the_schedule_reads_each_feed_when_due(store: Store) -> None:
    clock = Clock()
    async with Receiver.running() as receiver:
        receiver.expect_request("/feed.xml").respond_with_data(rss(("mug", "M", "1", "in stock")))
        config = feed(receiver, "/feed.xml")
        reader = feeds(store, clock, config)
        stop = asyncio.Event()
        task = asyncio.create_task(reader.run(stop))
        async with asyncio.timeout(5), reader.progress:
            await reader.progress.wait_for(lambda: reader.reads == 1)
        stop.set()
        await task
        assert len(receiver.arrived) == 1 and await store.catalog.count() == 1
