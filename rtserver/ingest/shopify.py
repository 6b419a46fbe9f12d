"""Shopify's webhooks: ``POST /v1/webhooks/shopify``.

Signed with ``X-Shopify-Hmac-Sha256`` (base64 HMAC-SHA256 of the raw body, keyed with
``keys.shopify_secret``); the topic is ``X-Shopify-Topic``. What each topic becomes:

``orders/paid``, ``orders/create`` (when ``financial_status`` is ``paid``)
    One ``Order Completed`` per order (``messageId`` ``shopify-order-<id>``, so both topics and
    their retries store it once): verified revenue, the products, and ``cart_id`` = the order's
    ``checkout_token``, which ends that checkout's cart run. Before it, an identify of the
    customer (``userId`` = the Shopify customer id, else the address) that links the
    checkout's anonymous id, committed first, so a guest's checkout run moves to the customer
    and the order ends it.
``checkouts/create``, ``checkouts/update``
    The cart of a shopper whose browser may never have run the snippet: an identify (address,
    consent), one ``Product Added`` per line item not announced before (the shipped cart
    workflow's trigger, ``cart_id`` = the checkout token), then one ``Checkout Started`` with
    the whole list, which replaces the cart as rtserver reads it (items removed or changed in
    quantity are right in the reminder). A completed checkout, or one with neither customer nor
    address yet, adds nothing.
``products/create``, ``products/update``, ``products/delete``
    The catalog: written (Back in Stock and Price Dropped wake up), or discontinued.
``customers/create``, ``customers/update``
    An identify with the address, names and consent (``email_marketing_consent``).
``customers/redact``
    Erases the address (as ``rtserver forget``).

Other topics answer 200 and do nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from starlette import status
from starlette.requests import Request
from starlette.responses import Response

from rtserver.ingest.intake import Intake
from rtserver.ingest.platforms import Outcome, Platform, money, receive_platform, text
from rtserver.ingest.segment import HTTPFailure
from rtserver.model import Product, RowError, product_from

__all__ = ["CONSENT", "receive"]

CONSENT = {"subscribed": "confirmed_opt_in", "unsubscribed": "unsubscribed"}
"""``email_marketing_consent.state`` → rtserver's consent. ``not_subscribed`` (never asked, or
did not tick the box), ``pending``, ``invalid`` and ``redacted`` leave the profile's consent
as rtserver knows it: Shopify saying nothing is no withdrawal of an opt-in given elsewhere."""
MAX_PRODUCTS = 50
"""Most line items an event lists (an event is at most ``ingest.max_event_bytes``)."""
LIBRARY = {"library": {"name": "rtserver-shopify"}}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _required_id(payload: Mapping[str, Any], key: str = "id") -> str:
    found = text(payload.get(key))
    if found is None:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, f"payload has no {key}")
    return found


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _consent(customer: Mapping[str, Any], accepts: Any = None) -> str | None:
    """The consent a customer record says, else the checkbox of a checkout or an order."""
    state = _object(customer.get("email_marketing_consent")).get("state")
    if isinstance(state, str) and state in CONSENT:
        return CONSENT[state]
    return "confirmed_opt_in" if accepts is True else None


def _traits(email: Any, consent: str | None, *named: Mapping[str, Any]) -> dict[str, Any]:
    """An identify's traits: the address, the first names found in ``named``, the consent."""
    traits: dict[str, Any] = {}
    if isinstance(email, str) and email.strip():
        traits["email"] = email.strip()
    for key in ("first_name", "last_name"):
        value = next((v for n in named if (v := text(n.get(key))) is not None), None)
        if value is not None:
            traits[key] = value
    if consent is not None:
        traits["consent"] = consent
    return traits


def _stamp(payload: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value:
            return {"timestamp": value}
    return {}


def _line(item: Mapping[str, Any]) -> dict[str, Any]:
    """One line item as a Segment product."""
    line: dict[str, Any] = {}
    for key, value in (
        ("product_id", text(item.get("product_id"))),
        ("variant", text(item.get("variant_id"))),
        ("sku", text(item.get("sku"))),
        ("name", text(item.get("title")) or text(item.get("name"))),
        ("price", money(item.get("price"))),
    ):
        if value is not None:
            line[key] = value
    quantity = item.get("quantity")
    line["quantity"] = quantity if isinstance(quantity, int) and quantity > 0 else 1
    return line


def _lines(payload: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], dict[str, Any]]]:
    items = payload.get("line_items")
    listed = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    return [(item, _line(item)) for item in listed[:MAX_PRODUCTS]]


def _order(topic: str, order: dict[str, Any]) -> Outcome:
    if topic == "orders/create" and order.get("financial_status") != "paid":
        return Outcome(ignored="order not paid yet")
    order_id = _required_id(order)
    customer = _object(order.get("customer"))
    email = order.get("email") or order.get("contact_email") or customer.get("email")
    user = text(customer.get("id")) or (email.strip().lower() if isinstance(email, str) else None)
    checkout = text(order.get("checkout_token"))
    ids: dict[str, Any] = {"userId": user} if user else {}
    if checkout is not None:
        ids["anonymousId"] = f"shopify-checkout-{checkout}"
    if not ids:  # no customer, address or checkout (a POS sale): still a sale to count
        ids["anonymousId"] = f"shopify-order-{order_id}"
    total = money(order.get("total_price"))
    properties: dict[str, Any] = {"order_id": order_id}
    if total is not None:
        properties["revenue"] = properties["total"] = total
    currency = text(order.get("currency"), 3)
    if currency is not None:
        properties["currency"] = currency
    properties["products"] = [line for _, line in _lines(order)]
    if checkout is not None:
        properties["cart_id"] = checkout
    stamp = _stamp(order, "processed_at", "created_at")
    stages: list[list[dict[str, Any]]] = []
    consent = _consent(customer, order.get("buyer_accepts_marketing"))
    traits = _traits(email, consent, customer, _object(order.get("billing_address")))
    if user is not None and traits:
        # A stage of its own: it moves the checkout's run to this person before the order ends it.
        identify = {"type": "identify", "messageId": f"shopify-order-{order_id}-identify"}
        stages.append([{**identify, **ids, "traits": traits, "context": LIBRARY, **stamp}])
    completed = {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"shopify-order-{order_id}",
        **ids,
        "properties": properties,
        "context": LIBRARY,
        **stamp,
    }
    stages.append([completed])
    return Outcome(stages=stages)


def _checkout(checkout: dict[str, Any]) -> Outcome:
    token = _required_id(checkout, "token")
    if checkout.get("completed_at"):
        return Outcome(ignored="checkout completed: its order counts")
    customer = _object(checkout.get("customer"))
    email = checkout.get("email") or customer.get("email")
    user = text(customer.get("id"))
    has_address = isinstance(email, str) and bool(email.strip())
    if user is None and not has_address:
        return Outcome(ignored="checkout without a customer or an address yet")
    ids: dict[str, Any] = {"anonymousId": f"shopify-checkout-{token}"}
    if user is not None:
        ids["userId"] = user
    prefix = f"shopify-checkout-{token}"
    currency = text(checkout.get("currency") or checkout.get("presentment_currency"), 3)
    base: dict[str, Any] = {"cart_id": token}
    if currency is not None:
        base["currency"] = currency
    stamp = _stamp(checkout, "updated_at", "created_at")
    consent = _consent(customer, checkout.get("buyer_accepts_marketing"))
    traits = _traits(email, consent, customer, _object(checkout.get("billing_address")))
    events: list[dict[str, Any]] = []
    if traits:
        identify_id = f"{prefix}-identify-{_digest([ids, traits])}"
        events.append(
            {"type": "identify", "messageId": identify_id, **ids, "traits": traits,
             "context": LIBRARY, **stamp}
        )  # fmt: skip
    lines = _lines(checkout)
    for item, line in lines:
        key = text(item.get("key")) or text(item.get("id")) or text(item.get("variant_id"))
        if key is None:
            key = _digest(line)
        events.append(
            {"type": "track", "event": "Product Added", "messageId": f"{prefix}-item-{key}",
             **ids, "properties": {**base, **line}, "context": LIBRARY, **stamp}
        )  # fmt: skip
    state = text(checkout.get("updated_at")) or _digest(checkout)
    listed: dict[str, Any] = {**base, "products": [line for _, line in lines]}
    total = money(checkout.get("total_price"))
    if total is not None:
        listed["value"] = total
    events.append(
        {"type": "track", "event": "Checkout Started", "messageId": f"{prefix}-{state}",
         **ids, "properties": listed, "context": LIBRARY, **stamp}
    )  # fmt: skip
    return Outcome(stages=[events])


def product_of(payload: Mapping[str, Any], shop_url: str, currency: str) -> Product:
    """The catalog's product for a Shopify product payload.

    Raises:
        RowError: the payload lacks an id or a title, or a field is not what it should be.
    """
    variants = [v for v in payload.get("variants") or [] if isinstance(v, dict)]
    priced = [
        (price, money(v.get("compare_at_price")))
        for v in variants
        if (price := money(v.get("price"))) is not None
    ]
    row: dict[str, Any] = {
        "id": text(payload.get("id")),
        "name": payload.get("title"),
        "brand": payload.get("vendor"),
        "categories": payload.get("product_type"),
        "sku": next((text(v.get("sku")) for v in variants if text(v.get("sku"))), None),
    }
    handle = text(payload.get("handle"))
    if handle is not None:
        row["url"] = f"{shop_url.rstrip('/')}/products/{handle}"
    image = _object(payload.get("image")).get("src")
    images = payload.get("images")
    if not image and isinstance(images, list) and images and isinstance(images[0], dict):
        image = images[0].get("src")
    row["image"] = image
    if priced:
        price, regular = min(priced)
        if regular is not None and regular > price:
            row["price"], row["sale_price"] = regular, price
        else:
            row["price"] = price
    if payload.get("status", "active") != "active":
        row["availability"] = "discontinued"  # draft or archived: not for sale
    elif variants and not any(_buyable(v) for v in variants):
        row["availability"] = "out_of_stock"
    return product_from(row, currency)


def _buyable(variant: Mapping[str, Any]) -> bool:
    """Whether a variant can be bought: stock left, not tracked, or sold when out of stock."""
    quantity = variant.get("inventory_quantity")
    return (
        variant.get("inventory_management") in (None, "")
        or variant.get("inventory_policy") == "continue"
        or (isinstance(quantity, int) and quantity > 0)
    )


def _customer(customer: dict[str, Any]) -> Outcome:
    user = _required_id(customer)
    traits = _traits(customer.get("email"), _consent(customer), customer)
    if not traits:
        return Outcome(ignored="customer without an address or a name")
    state = text(customer.get("updated_at")) or _digest(customer)
    identify = {
        "type": "identify",
        "messageId": f"shopify-customer-{user}-{state}",
        "userId": user,
        "traits": traits,
        "context": LIBRARY,
        **_stamp(customer, "updated_at"),
    }
    return Outcome(stages=[[identify]])


def _mapping(intake: Intake, topic: str, payload: dict[str, Any]) -> Outcome:
    if topic in ("orders/paid", "orders/create"):
        return _order(topic, payload)
    if topic in ("checkouts/create", "checkouts/update"):
        return _checkout(payload)
    if topic in ("products/create", "products/update"):
        brand = intake.config.mail.brand
        try:
            return Outcome(products=[product_of(payload, brand.url, brand.currency)])
        except RowError as exc:
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, f"product {exc}") from None
    if topic == "products/delete":
        return Outcome(discontinued=[_required_id(payload)])
    if topic in ("customers/create", "customers/update"):
        return _customer(payload)
    if topic == "customers/redact":
        email = _object(payload.get("customer")).get("email")
        if not isinstance(email, str) or not email.strip():
            return Outcome(ignored="redact request without an address")
        return Outcome(forget=[email.strip()])
    return Outcome(ignored=f"topic {topic!r} is not used")


SHOPIFY = Platform(
    name="shopify",
    secret_key="shopify_secret",
    signature_header="x-shopify-hmac-sha256",
    topic_header="x-shopify-topic",
    secret=lambda intake: s.reveal() if (s := intake.config.keys.shopify_secret) else None,
    mapping=_mapping,
)


async def receive(request: Request) -> Response:
    """``POST /v1/webhooks/shopify``: verify, then apply the topic once."""
    return await receive_platform(request, SHOPIFY)
