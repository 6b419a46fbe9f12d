"""Products for mail: read from Segment e-commerce events, the cart, and recommendations. Pure.

The properties follow Segment's e-commerce spec (``product_id`` or ``sku``, ``name``, ``price``,
``currency``, ``image_url``, ``url``, ``category``, ``quantity``, and ``products: [...]`` on
``Cart Viewed``, ``Checkout Started`` and ``Order Completed``). They come from the browser, so
nothing here trusts a type: a field of the wrong type, a non-finite price or a url that is not
http(s) is dropped, never raised about.

Ranking (:func:`recommend`): products of the person's top browsed categories first, then
products viewed together with theirs by other people, then the shop's popular products; never
one already bought or in the cart, never one twice.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Product",
    "bought_of",
    "cart_of",
    "events_of_cart",
    "product_of",
    "products_of",
    "recommend",
    "viewed_of",
]

MAX_TEXT_CHARS = 300
MAX_URL_CHARS = 2048
MAX_QUANTITY = 9999
MAX_CART_PRODUCTS = 100
URL_CACHE = 4096
TOP_CATEGORIES = 2
"""How many of the person's most browsed categories lead the recommendations."""
VIEWED = 20
"""A person's most recent distinct product views that rank the recommendations."""

_ADD = "Product Added"
_REMOVE = "Product Removed"
_CART_LISTS = ("Cart Viewed", "Checkout Started")
_ORDER = "Order Completed"
_UNSAFE_URL_CHAR = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class Product:
    """One product as a mail shows it; ``price`` in ``currency`` (None: the shop's own)."""

    id: str
    name: str
    price: float | None
    currency: str | None
    image: str | None
    url: str | None
    category: str | None
    quantity: int = 1


def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = " ".join(str(value).split())[:limit]
    return text or None


def _url(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        return None
    return _web_url(value)


@functools.lru_cache(maxsize=URL_CACHE)
def _web_url(value: str) -> str | None:
    """``value`` stripped if it is an http(s) url with a host and no whitespace inside, else
    None (remembered: a mail reads the same few product urls from many events)."""
    url = value.strip()
    if _UNSAFE_URL_CHAR.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


def _price(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    price = float(value)
    return price if math.isfinite(price) and price >= 0 else None


def _currency(value: Any) -> str | None:
    if isinstance(value, str) and len(value.strip()) == 3 and value.strip().isalpha():
        return value.strip().upper()
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


def product_of(properties: Mapping[str, Any]) -> Product | None:
    """The product an event's properties (or one entry of ``products``) describe; None without
    an id."""
    if not isinstance(properties, Mapping):
        return None
    pid = _text(properties.get("product_id")) or _text(properties.get("sku"))
    if pid is None:
        return None
    return Product(
        id=pid,
        name=_text(properties.get("name")) or pid,
        price=_price(properties.get("price")),
        currency=_currency(properties.get("currency")),
        image=_url(properties.get("image_url")),
        url=_url(properties.get("url")),
        category=_text(properties.get("category")),
        quantity=_quantity(properties.get("quantity")),
    )


def products_of(rows: Iterable[Mapping[str, Any]]) -> list[Product]:
    """The products ``rows`` (properties each) describe, those without an id left out."""
    found = (product_of(row) for row in rows)
    return [p for p in found if p is not None]


def viewed_of(events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Product]:
    """The products viewed most recently, newest first, each once (``VIEWED`` at most)."""
    seen: dict[str, Product] = {}
    looked: set[Any] = set()  # raw ids already read: each product is parsed once
    for name, properties in reversed(events):
        if name != "Product Viewed":
            continue
        raw = properties.get("product_id") or properties.get("sku")
        if isinstance(raw, str | int):
            if raw in looked:
                continue
            looked.add(raw)
        product = product_of(properties)
        if product is not None and product.id not in seen:
            seen[product.id] = product
            if len(seen) == VIEWED:
                break
    return list(seen.values())


def bought_of(events: Iterable[tuple[str, Mapping[str, Any]]]) -> set[str]:
    """Ids of the products in the person's orders (never recommended again)."""
    bought: set[str] = set()
    for name, properties in events:
        if name == "Order Completed":
            listed = properties.get("products")
            entries = listed if isinstance(listed, list) else []
            bought.update(p.id for p in products_of([properties, *entries]) if p is not None)
    return bought


def events_of_cart(
    events: Sequence[tuple[str, Mapping[str, Any]]], key: str
) -> Sequence[tuple[str, Mapping[str, Any]]]:
    """The events of the run's cart when the run is keyed by a cart id, else all of them."""
    if key and any(str(p.get("cart_id")) == key for _, p in events if "cart_id" in p):
        return [(n, p) for n, p in events if "cart_id" in p and str(p.get("cart_id")) == key]
    return events


def _products(listed: list[Any]) -> list[Product]:
    found = (product_of(p) for p in listed[:MAX_CART_PRODUCTS] if isinstance(p, Mapping))
    return [p for p in found if p is not None]


def _fresher(old: Product, new: Product) -> Product:
    """``new``'s details where it has them, ``old``'s where it does not."""
    return Product(
        id=old.id,
        name=new.name if new.name != new.id else old.name,
        price=new.price if new.price is not None else old.price,
        currency=new.currency or old.currency,
        image=new.image or old.image,
        url=new.url or old.url,
        category=new.category or old.category,
        quantity=old.quantity,
    )


def _add(cart: dict[str, Product], product: Product) -> None:
    old = cart.get(product.id)
    if old is not None:
        quantity = min(old.quantity + product.quantity, MAX_QUANTITY)
        cart[product.id] = replace(_fresher(old, product), quantity=quantity)
    elif len(cart) < MAX_CART_PRODUCTS:
        cart[product.id] = product


def _remove(cart: dict[str, Product], product: Product) -> None:
    old = cart.get(product.id)
    if old is not None and old.quantity > product.quantity:
        cart[product.id] = replace(old, quantity=old.quantity - product.quantity)
    else:
        cart.pop(product.id, None)


def cart_of(events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Product]:
    """The cart after ``(event name, properties)`` pairs, oldest first: adds and removes net
    out, a ``Cart Viewed`` or ``Checkout Started`` list replaces it, an order empties it."""
    cart: dict[str, Product] = {}
    for name, properties in events:
        if not isinstance(properties, Mapping):
            continue
        if name == _ORDER:
            cart.clear()
        elif name in _CART_LISTS and isinstance(properties.get("products"), list):
            cart.clear()
            for listed in _products(properties["products"]):
                _add(cart, listed)
        elif name in (_ADD, _REMOVE):
            product = product_of(properties)
            if product is not None:
                (_add if name == _ADD else _remove)(cart, product)
    return list(cart.values())


def _top_categories(viewed: Sequence[Product]) -> list[str]:
    """The most viewed categories; a tie goes to the one viewed most recently."""
    counts = Counter(p.category for p in viewed if p.category)
    first_seen: dict[str, int] = {}
    for index, product in enumerate(viewed):
        if product.category:
            first_seen.setdefault(product.category, index)
    ranked = sorted(counts, key=lambda c: (-counts[c], first_seen[c]))
    return ranked[:TOP_CATEGORIES]


def recommend(
    viewed: Sequence[Product],
    co_viewed: Sequence[Product],
    popular: Sequence[Product],
    exclude: Collection[str],
    limit: int = 3,
) -> list[Product]:
    """Up to ``limit`` products: the person's top categories (``viewed`` is newest first), then
    co-viewed, then popular; none in ``exclude`` (bought or in the cart), none twice."""
    if limit <= 0:
        return []
    top = _top_categories(viewed)
    in_top = [
        p for category in top for p in (*viewed, *co_viewed, *popular) if p.category == category
    ]
    chosen: dict[str, Product] = {}
    for product in (*in_top, *co_viewed, *popular):
        if product.id not in exclude and product.id not in chosen:
            chosen[product.id] = product
            if len(chosen) == limit:
                break
    return list(chosen.values())
