"""Shopify's webhooks against a real server: signatures, replays, one order per order id, the
catalog, customers and their consent, erasure, and a checkout with no browser events that
leads to a cart reminder over SMTP (or, once paid, to none)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.mail import smtp_config
from tests.support.platforms import SHOPIFY_SECRET, payload, shopify_headers, standing
from tests.support.server import FakeClock, LiveServer, advance, make_config, run_server
from tests.support.smtp_server import SMTPServer

CUSTOMER = "u:7102843011350"
TOKEN = "bd5a8aa1ecd019dd3520ff791ee3a24c"
KEYS = {"shopify_secret": SHOPIFY_SECRET}


def config(tmp_path: Path, **sections: Any) -> Any:
    brand = {"brand": {"url": "https://shop.example", "currency": "EUR"}}
    return make_config(tmp_path, keys=KEYS, mail=brand, **sections)


async def post(
    live: LiveServer, topic: str, body: dict[str, Any] | bytes, **headers: str
) -> httpx.Response:
    """Deliver ``body`` (a payload, or raw bytes) on ``topic``, signed as Shopify signs it."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with live.http() as http:
        return await http.post(
            "/v1/webhooks/shopify", content=raw, headers={**shopify_headers(raw, topic), **headers}
        )


async def deliver(live: LiveServer, topic: str, name: str | None = None) -> dict[str, Any]:
    """Deliver the fixture of ``topic`` (or ``name``); the answer, which must be a 200."""
    answer = await post(live, topic, payload("shopify", name or topic.replace("/", "_")))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def named(live: LiveServer, person: str, name: str) -> list[dict[str, Any]]:
    return [e for e in await live.runtime.store.events_of(person) if e.get("event") == name]


async def test_signed_accepted_tampered_or_wrong_secret_refused(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        body = orjson.dumps(payload("shopify", "orders_paid"))
        tampered = body.replace(b'"84.45"', b'"8445.00"', 1)
        async with live.http() as http:
            url = "/v1/webhooks/shopify"
            signed = shopify_headers(body, "orders/paid")
            answer = await http.post(url, content=tampered, headers=signed)
            assert answer.status_code == 401
            assert "x-shopify-hmac-sha256" in answer.json()["error"]
            wrong = shopify_headers(body, "orders/paid", secret="shpss_" + "0" * 32)
            assert (await http.post(url, content=body, headers=wrong)).status_code == 401
            unsigned = {k: v for k, v in signed.items() if k != "x-shopify-hmac-sha256"}
            assert (await http.post(url, content=body, headers=unsigned)).status_code == 401
            garbled = {**signed, "x-shopify-hmac-sha256": "not base64!"}
            assert (await http.post(url, content=body, headers=garbled)).status_code == 401
            assert await live.runtime.store.events_of(CUSTOMER) == []
            answer = await http.post(url, content=body, headers=signed)
        assert answer.status_code == 200 and answer.json() == {"success": True, "processed": 2}
        (order,) = await named(live, CUSTOMER, "Order Completed")
        assert order["messageId"] == "shopify-order-5961472819478"
        assert order["properties"]["revenue"] == 84.45
        assert order["properties"]["cart_id"] == TOKEN
        assert order["properties"]["currency"] == "EUR"
        assert order["properties"]["products"] == [
            {"product_id": "8841302786326", "variant": "47120417669398", "sku": "LAMP-BR-01",
             "name": "Brass Desk Lamp", "price": 49.5, "quantity": 1},
            {"product_id": "8841302819094", "variant": "47120417702166", "sku": "SHADE-LN-02",
             "name": "Linen Lamp Shade", "price": 15.0, "quantity": 2},
        ]  # fmt: skip
        profile = await live.runtime.store.profile(CUSTOMER)
        assert profile is not None and profile["email"] == "ann.lee@example.com"
        assert standing(live.config.store.path, CUSTOMER) == {
            "consent": "confirmed_opt_in",
            "orders_count": 1,
            "total_spent": 84.45,
        }


async def test_unconfigured_source_is_404(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live:
        answer = await post(live, "orders/paid", payload("shopify", "orders_paid"))
    assert answer.status_code == 404
    assert "not configured: set keys.shopify_secret" in answer.json()["error"]


async def test_a_replayed_body_is_processed_once(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        first = await deliver(live, "customers/create")
        again = await deliver(live, "customers/create")
        assert first["processed"] == 1 and again == {"success": True, "duplicate": True}
        assert len(await live.runtime.store.events_of(CUSTOMER)) == 1


async def test_orders_never_double_across_topics(tmp_path: Path) -> None:
    """orders/create of a pending order does nothing; orders/create paid and orders/paid (and
    Shopify's retries of either) make one Order Completed."""
    async with run_server(config(tmp_path)) as live:
        pending = await deliver(live, "orders/create", "orders_create_pending")
        assert pending["ignored"] == "order not paid yet" and pending["processed"] == 0
        await deliver(live, "orders/create")
        await deliver(live, "orders/paid")
        assert len(await named(live, CUSTOMER, "Order Completed")) == 1
        facts = standing(live.config.store.path, CUSTOMER)
        assert facts is not None and facts["orders_count"] == 1


async def test_an_order_without_customer_or_address_still_counts(tmp_path: Path) -> None:
    order = payload("shopify", "orders_paid")
    for key in ("customer", "email", "contact_email", "checkout_token"):
        order.pop(key)
    async with run_server(config(tmp_path)) as live:
        assert (await post(live, "orders/paid", order)).status_code == 200
        (stored,) = await named(live, "a:shopify-order-5961472819478", "Order Completed")
        assert "cart_id" not in stored["properties"]


async def test_products_reach_the_catalog(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        catalog = live.runtime.store.catalog
        await deliver(live, "products/create")
        (product,) = (await catalog.products(["8841302786326"])).values()
        assert product.name == "Brass Desk Lamp"
        assert product.url == "https://shop.example/products/brass-desk-lamp"
        assert product.image is not None and product.image.startswith("https://cdn.shopify.com/")
        assert (product.price, product.sale_price, product.currency) == (49.5, None, "EUR")
        assert (product.categories, product.brand) == (("Lighting",), "Lumen & Co")
        assert product.sku == "LAMP-BR-01" and product.availability == "in_stock"
        await deliver(live, "products/update")
        (product,) = (await catalog.products(["8841302786326"])).values()
        assert (product.price, product.sale_price) == (49.5, 39.5)  # the cheapest variant
        await deliver(live, "products/delete")
        (product,) = (await catalog.products(["8841302786326"])).values()
        assert product.availability == "discontinued"


async def test_product_stock_and_status(tmp_path: Path) -> None:
    sold_out = payload("shopify", "products_create")
    for variant in sold_out["variants"]:
        variant["inventory_quantity"] = 0
    del sold_out["image"]
    archived = {**payload("shopify", "products_create"), "id": 2, "status": "archived"}
    untracked = payload("shopify", "products_create") | {"id": 3, "images": [], "image": None}
    untracked["variants"] = [{**v, "inventory_management": None} for v in untracked["variants"]]
    async with run_server(config(tmp_path)) as live:
        for product in (sold_out, archived, untracked):
            assert (await post(live, "products/update", product)).status_code == 200
        found = await live.runtime.store.catalog.products(["8841302786326", "2", "3"])
    assert found["8841302786326"].availability == "out_of_stock"
    assert found["8841302786326"].image is not None  # from the images list
    assert found["2"].availability == "discontinued"
    assert found["3"].availability == "in_stock" and found["3"].image is None


async def test_customers_identify_with_their_consent(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        await deliver(live, "customers/create")
        profile = await live.runtime.store.profile(CUSTOMER)
        assert profile is not None
        assert profile["email"] == "ann.lee@example.com"
        assert profile["traits"]["first_name"] == "Ann"
        facts = standing(live.config.store.path, CUSTOMER)
        assert facts is not None and facts["consent"] == "confirmed_opt_in"
        await deliver(live, "customers/update")
        facts = standing(live.config.store.path, CUSTOMER)
        assert facts is not None and facts["consent"] == "unsubscribed"


async def test_not_subscribed_leaves_consent_alone(tmp_path: Path) -> None:
    """Shopify's not_subscribed is no withdrawal: the soft opt-in of an order stays."""
    customer = payload("shopify", "customers_update")
    customer["email_marketing_consent"]["state"] = "not_subscribed"
    order = payload("shopify", "orders_paid")
    order["buyer_accepts_marketing"] = False
    order["customer"]["email_marketing_consent"] = None
    async with run_server(config(tmp_path)) as live:
        await post(live, "orders/paid", order)
        assert (await post(live, "customers/update", customer)).status_code == 200
        facts = standing(live.config.store.path, CUSTOMER)
        assert facts is not None and facts["consent"] == "soft_opt_in_customer"
        nameless = {"id": 9, "email": None, "first_name": None, "updated_at": None}
        answer = await post(live, "customers/update", nameless)
        assert answer.json()["ignored"] == "customer without an address or a name"


async def test_customers_redact_erases(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        await deliver(live, "customers/create")
        await deliver(live, "orders/paid")
        assert await live.runtime.store.profile(CUSTOMER) is not None
        result = await deliver(live, "customers/redact")
        assert result["processed"] == 1
        assert await live.runtime.store.profile(CUSTOMER) is None
        assert await live.runtime.store.events_of(CUSTOMER) == []
        anonymous = await deliver(live, "customers/redact", "products_delete")  # no customer
        assert anonymous["ignored"] == "redact request without an address"


async def test_other_topics_and_bad_payloads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with run_server(config(tmp_path)) as live:
        with caplog.at_level(logging.DEBUG, "rtserver.ingest.platforms"):
            answer = await post(live, "app/uninstalled", {"id": 1})
        assert answer.status_code == 200
        assert answer.json() == {
            "success": True,
            "ignored": "topic 'app/uninstalled' is not used",
            "processed": 0,
        }
        assert "shopify webhook app/uninstalled ignored" in caplog.text
        assert (await post(live, "orders/paid", b"[1, 2")).status_code == 400
        assert (await post(live, "orders/paid", {"total_price": "1.00"})).status_code == 400
        untitled = {**payload("shopify", "products_create"), "title": ""}
        answer = await post(live, "products/create", untitled)
        assert answer.status_code == 400 and "name" in answer.json()["error"]
        answer = await post(live, "", {"id": 1})
        assert answer.status_code == 400 and "x-shopify-topic" in answer.json()["error"]
        gzipped = await post(live, "orders/paid", {"id": 1}, **{"content-encoding": "gzip"})
        assert gzipped.status_code == 415
        huge = {"id": 1, "customer": {"id": 5}, "financial_status": "paid", "email": "a@b.example",
                "note": "x" * 9000}  # fmt: skip
        assert (await post(live, "orders/paid", huge)).status_code == 200
        bad_address = {"id": 7, "customer": {"id": 6}, "email": "not an address"}
        answer = await post(live, "orders/paid", bad_address)
        assert answer.status_code == 400
        assert answer.json()["error"] == (
            "shopify-order-7-identify: traits.email is not a valid email address"
        )
        assert await live.runtime.store.events_of("u:6") == []  # nothing of it was stored


async def test_checkout_events(tmp_path: Path) -> None:
    """A checkout announces each line item once and lists the whole cart on each change; one
    without contact details yet, or completed, adds nothing."""
    async with run_server(config(tmp_path)) as live:
        await deliver(live, "checkouts/create")
        await deliver(live, "checkouts/update")
        added = await named(live, CUSTOMER, "Product Added")
        assert sorted(e["properties"]["product_id"] for e in added) == [
            "8841302786326",
            "8841302819094",
        ]
        assert {e["properties"]["cart_id"] for e in added} == {TOKEN}
        listed = await named(live, CUSTOMER, "Checkout Started")
        assert [len(e["properties"]["products"]) for e in listed] == [2, 1]  # newest first
        assert listed[0]["properties"]["value"] == 79.5
        anonymous = payload("shopify", "checkouts_create") | {"email": None, "customer": None}
        answer = await post(live, "checkouts/update", anonymous)
        assert answer.json()["ignored"] == "checkout without a customer or an address yet"
        done = payload("shopify", "checkouts_update") | {"completed_at": "2026-11-25T10:20:13Z"}
        answer = await post(live, "checkouts/update", done)
        assert answer.json()["ignored"] == "checkout completed: its order counts"
        odd = payload("shopify", "checkouts_update") | {"updated_at": None, "currency": None}
        odd["line_items"] = [
            {"title": "Gift wrap", "price": "2.00", "quantity": 0},
            {"title": "Tag", "price": True, "product_id": False},
            "junk",
        ]
        assert (await post(live, "checkouts/update", odd)).json()["processed"] == 4


async def checkout_then(live: LiveServer, clock: FakeClock, guest: bool, pay: bool) -> None:
    await deliver(live, "products/create")
    checkout = payload("shopify", "checkouts_update")
    if guest:  # no customer account: the checkbox says the shopper wants mail
        checkout = checkout | {"customer": None, "buyer_accepts_marketing": True}
    assert (await post(live, "checkouts/update", checkout)).status_code == 200
    (run,) = await live.runtime.store.runs("active")
    assert run["key"] == TOKEN
    await advance(live, clock, 600)
    if pay:
        await deliver(live, "orders/paid")
    await advance(live, clock, 1800)


@pytest.mark.parametrize("guest", [False, True], ids=["customer", "guest"])
async def test_a_checkout_without_browser_events_gets_a_cart_reminder(
    tmp_path: Path, guest: bool
) -> None:
    """The shipped cart workflow mails a Shopify checkout left for 30 minutes: to the
    checkout's address, with the checkout's products from the catalog."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(config_smtp(tmp_path, smtpd), clock=clock) as live:
            await checkout_then(live, clock, guest, pay=False)
            (received,) = await smtpd.wait_for(1)
    assert received.rcpt_tos == ["ann.lee@example.com"]
    html = received.message.get_body(("html",)).get_content()
    assert "Brass Desk Lamp" in html and "49.50" in html


@pytest.mark.parametrize("guest", [False, True], ids=["customer", "guest"])
async def test_an_order_for_the_checkout_cancels_the_reminder(tmp_path: Path, guest: bool) -> None:
    """orders/paid with the checkout's token before the wait ends: the run ends, no mail (a
    guest's checkout run moves to the order's customer first)."""
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        async with run_server(config_smtp(tmp_path, smtpd), clock=clock) as live:
            await checkout_then(live, clock, guest, pay=True)
            await advance(live, clock, 3 * 86400)
            assert await live.runtime.store.runs("active") == []
            (ended,) = await live.runtime.store.runs("ended")
            assert ended["person_id"] == CUSTOMER and ended["key"] == TOKEN
            assert await live.runtime.store.mail.outbox() == []
    assert smtpd.received == []


def config_smtp(tmp_path: Path, smtpd: SMTPServer) -> Any:
    return smtp_config(tmp_path, smtpd, keys=KEYS)
