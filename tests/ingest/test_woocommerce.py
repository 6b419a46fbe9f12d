"""WooCommerce's webhooks against a real server: the ping, signatures, replays, one order per
order id across its status changes, the catalog and customers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.platforms import WOOCOMMERCE_SECRET, payload, standing, woocommerce_headers
from tests.support.server import FakeClock, LiveServer, leave_mid_body, make_config, run_server

CUSTOMER = "u:26"
KEYS = {"woocommerce_secret": WOOCOMMERCE_SECRET}
URL = "/v1/webhooks/woocommerce"


def config(tmp_path: Path) -> Any:
    return make_config(tmp_path, keys=KEYS, mail={"brand": {"currency": "GBP"}})


async def post(
    live: LiveServer, topic: str, body: dict[str, Any] | bytes, **headers: str
) -> httpx.Response:
    """Deliver ``body`` (a payload, or raw bytes) on ``topic``, signed as WooCommerce signs it."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with live.http() as http:
        return await http.post(
            URL, content=raw, headers={**woocommerce_headers(raw, topic), **headers}
        )


async def deliver(live: LiveServer, topic: str, name: str) -> dict[str, Any]:
    answer = await post(live, topic, payload("woocommerce", name))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def orders(live: LiveServer, person: str = CUSTOMER) -> list[dict[str, Any]]:
    events = await live.runtime.store.events_of(person)
    return [e for e in events if e.get("event") == "Order Completed"]


async def test_the_ping_on_creation_is_answered_and_ignored(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live, live.http() as http:
        form = {"content-type": "application/x-www-form-urlencoded"}
        answer = await http.post(URL, content=b"webhook_id=3", headers=form)
        assert answer.status_code == 200 and answer.json() == {"success": True, "ping": True}
        # Anything else unsigned is refused.
        answer = await http.post(URL, content=b"webhook_id=3&x=1", headers=form)
        assert answer.status_code == 401
        assert await live.runtime.store.count_events() == 0


async def test_signed_accepted_tampered_or_wrong_secret_refused(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live, live.http() as http:
        body = orjson.dumps(payload("woocommerce", "order_updated"))
        signed = woocommerce_headers(body, "order.updated")
        tampered = body.replace(b'"43.00"', b'"4300.00"', 1)
        assert (await http.post(URL, content=tampered, headers=signed)).status_code == 401
        wrong = woocommerce_headers(body, "order.updated", secret="another-secret-0123456789abc")
        answer = await http.post(URL, content=body, headers=wrong)
        assert answer.status_code == 401
        assert "x-wc-webhook-signature" in answer.json()["error"]
        assert await live.runtime.store.count_events() == 0
        answer = await http.post(URL, content=body, headers=signed)
        assert answer.status_code == 200 and answer.json()["processed"] == 2
        (order,) = await orders(live)
        assert order["messageId"] == "woocommerce-order-727"
        assert order["timestamp"] == "2026-11-25T10:13:40+00:00"
        assert order["properties"] | {"products": None} == {
            "order_id": "727",
            "revenue": 43.0,
            "total": 43.0,
            "currency": "GBP",
            "products": None,
        }
        assert order["properties"]["products"] == [
            {"product_id": "93", "sku": "BOARD-WAL", "name": "Walnut Serving Board", "price": 27.0,
             "quantity": 1},
            {"product_id": "22", "variant": "23", "sku": "BALM-100",
             "name": "Beeswax Wood Balm - 100 ml", "price": 6.0, "quantity": 2},
        ]  # fmt: skip
        profile = await live.runtime.store.profile(CUSTOMER)
        assert profile is not None and profile["email"] == "ben.okafor@example.com"
        assert standing(live.config.store.path, CUSTOMER) == {
            "consent": "soft_opt_in_customer",
            "orders_count": 1,
            "total_spent": 43.0,
        }


async def test_unconfigured_source_is_404(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live:
        answer = await post(live, "order.updated", payload("woocommerce", "order_updated"))
    assert answer.status_code == 404
    assert "not configured: set keys.woocommerce_secret" in answer.json()["error"]


async def test_one_order_completed_per_order_across_statuses_and_replays(tmp_path: Path) -> None:
    """pending: nothing; processing: the order; a replay of it and completed: nothing more."""
    async with run_server(config(tmp_path)) as live:
        pending = await deliver(live, "order.created", "order_created")
        assert pending["ignored"] == "order status 'pending' is not paid"
        await deliver(live, "order.updated", "order_updated")
        replay = await deliver(live, "order.updated", "order_updated")
        assert replay == {"success": True, "duplicate": True}
        await deliver(live, "order.updated", "order_completed")
        assert len(await orders(live)) == 1
        facts = standing(live.config.store.path, CUSTOMER)
        assert facts is not None and facts["orders_count"] == 1


async def test_a_guest_order_is_the_billing_address(tmp_path: Path) -> None:
    guest = payload("woocommerce", "order_updated") | {"customer_id": 0}
    nobody = payload("woocommerce", "order_updated") | {"id": 728, "customer_id": 0}
    nobody["billing"] = {**nobody["billing"], "email": ""}
    nobody["line_items"] = "junk"
    async with run_server(config(tmp_path)) as live:
        assert (await post(live, "order.updated", guest)).status_code == 200
        assert len(await orders(live, "u:ben.okafor@example.com")) == 1
        assert (await post(live, "order.updated", nobody)).status_code == 200
        (order,) = await orders(live, "a:woocommerce-order-728")
        assert order["properties"]["products"] == []


async def test_products_reach_the_catalog(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        catalog = live.runtime.store.catalog
        await deliver(live, "product.created", "product_created")
        (product,) = (await catalog.products(["93"])).values()
        assert product.name == "Walnut Serving Board"
        assert product.url == "https://shop.example/product/walnut-serving-board/"
        assert product.image == "https://shop.example/wp-content/uploads/2026/10/board.jpg"
        assert (product.price, product.sale_price, product.currency) == (32.0, None, "GBP")
        assert (product.categories, product.brand) == (("Kitchen", "Serving"), "Grain & Co")
        assert product.availability == "in_stock" and product.sku == "BOARD-WAL"
        await deliver(live, "product.updated", "product_updated")
        (product,) = (await catalog.products(["93"])).values()
        assert (product.price, product.sale_price) == (32.0, 27.0)
        await deliver(live, "product.deleted", "product_deleted")
        (product,) = (await catalog.products(["93"])).values()
        assert product.availability == "discontinued"


async def test_variable_draft_and_bad_products(tmp_path: Path) -> None:
    variable = payload("woocommerce", "product_created") | {
        "id": 94, "type": "variable", "regular_price": "", "price": "18.00", "images": [],
        "categories": None, "brands": [], "stock_status": "outofstock",
    }  # fmt: skip
    draft = payload("woocommerce", "product_created") | {"id": 95, "status": "draft"}
    async with run_server(config(tmp_path)) as live:
        for product in (variable, draft):
            assert (await post(live, "product.updated", product)).status_code == 200
        found = await live.runtime.store.catalog.products(["94", "95"])
        assert (found["94"].price, found["94"].image, found["94"].categories) == (18.0, None, ())
        assert found["94"].availability == "out_of_stock"
        assert found["95"].availability == "discontinued"
        unnamed = payload("woocommerce", "product_created") | {"name": ""}
        answer = await post(live, "product.updated", unnamed)
        assert answer.status_code == 400 and "name" in answer.json()["error"]
        answer = await post(live, "product.deleted", {"name": "no id"})
        assert answer.status_code == 400 and answer.json()["error"] == "payload has no id"


async def test_customers_identify_and_leave_consent_alone(tmp_path: Path) -> None:
    async with run_server(config(tmp_path)) as live:
        await deliver(live, "customer.created", "customer_created")
        await deliver(live, "customer.updated", "customer_updated")
        profile = await live.runtime.store.profile(CUSTOMER)
        assert profile is not None and profile["email"] == "ben.okafor@example.com"
        assert profile["traits"]["last_name"] == "Okafor-Reid"
        assert standing(live.config.store.path, CUSTOMER) == {
            "consent": "none",
            "orders_count": 0,
            "total_spent": 0.0,
        }
        deleted = await deliver(live, "customer.deleted", "customer_deleted")
        assert deleted["ignored"] == "topic 'customer.deleted' is not used"
        assert await live.runtime.store.profile(CUSTOMER) is not None
        empty = await post(live, "customer.updated", {"id": 27, "email": "", "billing": None})
        assert empty.json()["ignored"] == "customer without an address or a name"


async def test_a_store_failure_is_a_503_and_the_webhook_is_not_noted(tmp_path: Path) -> None:
    clock = FakeClock()
    async with run_server(config(tmp_path), clock=clock) as live:
        await live.runtime.store._db.execute("DROP TABLE webhooks")  # replays cannot be read
        answer = await post(live, "product.created", payload("woocommerce", "product_created"))
        assert answer.status_code == 503 and "retry-after" in answer.headers


@pytest.mark.parametrize("path", ["woocommerce", "shopify"])
async def test_a_sender_leaving_mid_body_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    keys = {**KEYS, "shopify_secret": WOOCOMMERCE_SECRET}
    async with run_server(make_config(tmp_path, keys=keys)) as live:
        head = (
            f"POST /v1/webhooks/{path} HTTP/1.1\r\nHost: rtserver\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        await leave_mid_body(live.port, head, b'{"id": ')
        await live.stop()
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
