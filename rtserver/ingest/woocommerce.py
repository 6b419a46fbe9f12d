"""WooCommerce's webhooks: ``POST /v1/webhooks/woocommerce``.

Signed with ``X-WC-Webhook-Signature`` (base64 HMAC-SHA256 of the raw body, keyed with
``keys.woocommerce_secret``); the topic is ``X-WC-Webhook-Topic``. When a webhook is saved,
WooCommerce posts an unsigned ``webhook_id=<n>`` form to test the URL: it answers 200 and does
nothing. What each topic becomes:

``order.created``, ``order.updated``
    One ``Order Completed`` per order (``messageId`` ``woocommerce-order-<id>``), the first
    time its status is ``processing`` (paid) or ``completed``: verified revenue and the
    products, for the customer (``userId`` = the WooCommerce customer id, else the billing
    address), after an identify with the billing address and names. It carries no ``cart_id``,
    so it ends every open cart run of the person.
``product.created``, ``product.updated``, ``product.deleted``
    The catalog: written (Back in Stock and Price Dropped wake up), or discontinued.
``customer.created``, ``customer.updated``
    An identify with the address and names. WooCommerce keeps no marketing consent, so the
    profile's consent is left as it is.

Other topics (``customer.deleted``, ``order.deleted``, coupons, actions) answer 200 and do
nothing: erasing a person is ``rtserver forget`` or the dashboard's Erase.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette import status
from starlette.requests import Request
from starlette.responses import Response

from rtserver.ingest.intake import Intake
from rtserver.ingest.platforms import Outcome, Platform, money, receive_platform, text
from rtserver.ingest.segment import HTTPFailure
from rtserver.model import Product, RowError, product_from

__all__ = ["PAID", "product_of", "receive"]

PAID = frozenset({"processing", "completed"})
"""Order statuses that mean the order was paid (or, for ``completed``, also delivered)."""
MAX_PRODUCTS = 50
LIBRARY = {"library": {"name": "rtserver-woocommerce"}}
PING = re.compile(rb"webhook_id=[0-9]{1,20}")


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _required_id(payload: Mapping[str, Any]) -> str:
    found = text(payload.get("id"))
    if found is None:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, "payload has no id")
    return found


def _traits(email: Any, *named: Mapping[str, Any]) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    if isinstance(email, str) and email.strip():
        traits["email"] = email.strip()
    for key in ("first_name", "last_name"):
        value = next((v for n in named if (v := text(n.get(key))) is not None), None)
        if value is not None:
            traits[key] = value
    return traits


def _stamp(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The payload's GMT time as an ISO timestamp (WooCommerce writes it without a zone)."""
    value = payload.get(key)
    return {"timestamp": f"{value}+00:00"} if isinstance(value, str) and value else {}


def _line(item: Mapping[str, Any]) -> dict[str, Any]:
    line: dict[str, Any] = {}
    for key, value in (
        ("product_id", text(item.get("product_id"))),
        ("variant", text(item.get("variation_id")) if item.get("variation_id") else None),
        ("sku", text(item.get("sku"))),
        ("name", text(item.get("name"))),
        ("price", money(item.get("price"))),
    ):
        if value is not None:
            line[key] = value
    quantity = item.get("quantity")
    line["quantity"] = quantity if isinstance(quantity, int) and quantity > 0 else 1
    return line


def _order(order: dict[str, Any]) -> Outcome:
    order_id = _required_id(order)
    state = order.get("status")
    if state not in PAID:
        return Outcome(ignored=f"order status {state!r} is not paid")
    billing = _object(order.get("billing"))
    email = billing.get("email")
    customer = order.get("customer_id")
    user = text(customer) if customer else None
    if user is None and isinstance(email, str) and email.strip():
        user = email.strip().lower()
    ids = {"userId": user} if user else {"anonymousId": f"woocommerce-order-{order_id}"}
    properties: dict[str, Any] = {"order_id": order_id}
    total = money(order.get("total"))
    if total is not None:
        properties["revenue"] = properties["total"] = total
    currency = text(order.get("currency"), 3)
    if currency is not None:
        properties["currency"] = currency
    items = order.get("line_items")
    listed = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    properties["products"] = [_line(i) for i in listed[:MAX_PRODUCTS]]
    stamp = _stamp(order, "date_paid_gmt") or _stamp(order, "date_created_gmt")
    stages: list[list[dict[str, Any]]] = []
    traits = _traits(email, billing)
    if user is not None and traits:
        stages.append(
            [{"type": "identify", "messageId": f"woocommerce-order-{order_id}-identify",
              **ids, "traits": traits, "context": LIBRARY, **stamp}]
        )  # fmt: skip
    completed = {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"woocommerce-order-{order_id}",
        **ids,
        "properties": properties,
        "context": LIBRARY,
        **stamp,
    }
    stages.append([completed])
    return Outcome(stages=stages)


def product_of(payload: Mapping[str, Any], currency: str) -> Product:
    """The catalog's product for a WooCommerce product payload.

    Raises:
        RowError: the payload lacks an id or a name, or a field is not what it should be.
    """
    images = payload.get("images")
    first = images[0] if isinstance(images, list) and images else None
    categories = payload.get("categories")
    brands = payload.get("brands")
    row: dict[str, Any] = {
        "id": text(payload.get("id")),
        "name": payload.get("name"),
        "url": payload.get("permalink"),
        "image": _object(first).get("src"),
        "sku": payload.get("sku"),
        "availability": payload.get("stock_status"),
        "categories": [
            c["name"] for c in categories if isinstance(c, dict) and isinstance(c.get("name"), str)
        ]
        if isinstance(categories, list)
        else None,
        "brand": _object(brands[0]).get("name") if isinstance(brands, list) and brands else None,
    }
    regular = money(payload.get("regular_price"))
    current = money(payload.get("price"))
    sale = money(payload.get("sale_price"))
    if regular is not None:
        row["price"] = regular
        if payload.get("on_sale") and sale is not None and sale < regular:
            row["sale_price"] = sale
    else:
        row["price"] = current  # a variable product: its lowest price
    if payload.get("status", "publish") != "publish":
        row["availability"] = "discontinued"  # draft, pending, private or trashed
    return product_from(row, currency)


def _customer(customer: dict[str, Any]) -> Outcome:
    user = _required_id(customer)
    traits = _traits(customer.get("email"), customer, _object(customer.get("billing")))
    if not traits:
        return Outcome(ignored="customer without an address or a name")
    modified = customer.get("date_modified_gmt") or customer.get("date_created_gmt")
    state = text(modified) or "created"
    identify = {
        "type": "identify",
        "messageId": f"woocommerce-customer-{user}-{state}",
        "userId": user,
        "traits": traits,
        "context": LIBRARY,
        **_stamp(customer, "date_modified_gmt"),
    }
    return Outcome(stages=[[identify]])


def _mapping(intake: Intake, topic: str, payload: dict[str, Any]) -> Outcome:
    if topic in ("order.created", "order.updated"):
        return _order(payload)
    if topic in ("product.created", "product.updated"):
        try:
            return Outcome(products=[product_of(payload, intake.config.mail.brand.currency)])
        except RowError as exc:
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, f"product {exc}") from None
    if topic == "product.deleted":
        return Outcome(discontinued=[_required_id(payload)])
    if topic in ("customer.created", "customer.updated"):
        return _customer(payload)
    return Outcome(ignored=f"topic {topic!r} is not used")


WOOCOMMERCE = Platform(
    name="woocommerce",
    secret_key="woocommerce_secret",
    signature_header="x-wc-webhook-signature",
    topic_header="x-wc-webhook-topic",
    secret=lambda intake: s.reveal() if (s := intake.config.keys.woocommerce_secret) else None,
    mapping=_mapping,
    ping=lambda body: PING.fullmatch(body) is not None,
)


async def receive(request: Request) -> Response:
    """``POST /v1/webhooks/woocommerce``: answer the ping, verify, then apply the topic once."""
    return await receive_platform(request, WOOCOMMERCE)
