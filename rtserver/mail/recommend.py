"""What a person did with products, read from their e-commerce events, and the products as a
mail shows them. Pure. (The ranking of recommendations is :mod:`rtserver.mail.ranking`.)

Events follow Segment's e-commerce spec (``product_id`` or ``sku``, ``quantity``, and
``products: [...]`` on ``Cart Viewed``, ``Checkout Started`` and ``Order Completed``). A browser
sends them, so here they only ever give product ids and quantities: a product's name, price,
image and link come from the catalog (:class:`~rtserver.model.Product`, trusted sources only),
never from the event. A product id of the wrong type is dropped, never raised about.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Product",
    "bought_of",
    "cart_of",
    "events_of_cart",
    "id_of",
    "viewed_of",
]

MAX_ID_CHARS = 200
MAX_QUANTITY = 9999
MAX_CART_PRODUCTS = 100
VIEWED = 20
"""A person's most recent distinct product views that rank the recommendations."""

_ADD = "Product Added"
_REMOVE = "Product Removed"
_CART_LISTS = ("Cart Viewed", "Checkout Started")
_ORDER = "Order Completed"


@dataclass(frozen=True, slots=True)
class Product:
    """One product as a mail shows it; ``price`` in ``currency`` (None: the shop's own),
    ``regular_price`` the price before a sale (None: not on sale). ``url`` and ``image`` are
    None unless they point at hosts the shop allows."""

    id: str
    name: str
    price: float | None
    currency: str | None
    image: str | None
    url: str | None
    category: str | None
    quantity: int = 1
    regular_price: float | None = None


def id_of(properties: Mapping[str, Any]) -> str | None:
    """The product id an event's properties (or one entry of ``products``) name, else None."""
    if not isinstance(properties, Mapping):
        return None
    for key in ("product_id", "sku"):
        value = properties.get(key)
        if isinstance(value, bool) or not isinstance(value, str | int):
            continue
        text = str(value).strip()
        if text and len(text) <= MAX_ID_CHARS:
            return text
    return None


def _quantity(value: Any) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return 1
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
        return 1
    return min(int(value), MAX_QUANTITY)


def viewed_of(events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The ids of the products viewed most recently, newest first, each once (``VIEWED`` at
    most)."""
    seen: dict[str, None] = {}
    for name, properties in reversed(events):
        if name != "Product Viewed":
            continue
        pid = id_of(properties)
        if pid is not None and pid not in seen:
            seen[pid] = None
            if len(seen) == VIEWED:
                break
    return list(seen)


def bought_of(events: Iterable[tuple[str, Mapping[str, Any]]]) -> set[str]:
    """Ids of the products in the person's orders (never recommended again)."""
    bought: set[str] = set()
    for name, properties in events:
        if name == _ORDER and isinstance(properties, Mapping):
            listed = properties.get("products")
            entries = listed if isinstance(listed, list) else []
            found = (id_of(p) for p in [properties, *entries[:MAX_CART_PRODUCTS]])
            bought.update(pid for pid in found if pid is not None)
    return bought


def events_of_cart(
    events: Sequence[tuple[str, Mapping[str, Any]]], key: str
) -> Sequence[tuple[str, Mapping[str, Any]]]:
    """The events of the run's cart when the run is keyed by a cart id, else all of them."""
    if key and any(str(p.get("cart_id")) == key for _, p in events if "cart_id" in p):
        return [(n, p) for n, p in events if "cart_id" in p and str(p.get("cart_id")) == key]
    return events


def _add(cart: dict[str, int], pid: str, quantity: int) -> None:
    if pid in cart:
        cart[pid] = min(cart[pid] + quantity, MAX_QUANTITY)
    elif len(cart) < MAX_CART_PRODUCTS:
        cart[pid] = quantity


def _remove(cart: dict[str, int], pid: str, quantity: int) -> None:
    if cart.get(pid, 0) > quantity:
        cart[pid] -= quantity
    else:
        cart.pop(pid, None)


def cart_of(events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, int]]:
    """The cart, as (product id, quantity), after ``(event name, properties)`` pairs, oldest
    first: adds and removes net out, a ``Cart Viewed`` or ``Checkout Started`` list replaces
    it, an order empties it."""
    cart: dict[str, int] = {}
    for name, properties in events:
        if not isinstance(properties, Mapping):
            continue
        if name == _ORDER:
            cart.clear()
        elif name in _CART_LISTS and isinstance(properties.get("products"), list):
            cart.clear()
            for listed in properties["products"][:MAX_CART_PRODUCTS]:
                pid = id_of(listed)
                if pid is not None:
                    _add(cart, pid, _quantity(listed.get("quantity")))
        elif name in (_ADD, _REMOVE):
            pid = id_of(properties)
            if pid is not None:
                (_add if name == _ADD else _remove)(
                    cart, pid, _quantity(properties.get("quantity"))
                )
    return list(cart.items())
