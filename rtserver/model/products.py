"""Products of the shop's catalog: one record, and the rules every trusted source is read with.
Pure.

The catalog is what mail trusts for a product's name, price, image and link. Its rows come only
from trusted sources (feeds the operator configured or imported, write-key events, signed
platform webhooks), each turned into a :class:`Product` by :func:`product_from`, which accepts
the field names those sources use (Google Merchant's ``link`` and ``image_link``, Segment's
``product_id`` and ``image_url``...) and refuses a row it cannot use with a :class:`RowError`
naming the field and the value. Browser events never reach it: they contribute a product id.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AVAILABILITY",
    "BUYABLE",
    "Product",
    "RowError",
    "product_from",
    "web_url",
]

AVAILABILITY = ("in_stock", "out_of_stock", "preorder", "backorder", "discontinued")
"""The availability values (Google Merchant's, plus ``discontinued`` for a vanished product)."""
BUYABLE = frozenset({"in_stock", "preorder", "backorder"})
"""Availabilities a mail may recommend."""
MAX_ID_CHARS = 200
MAX_TEXT_CHARS = 300
MAX_URL_CHARS = 2048
MAX_CATEGORIES = 10
MAX_PRICE = 1e9

_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id", "product_id", "g:id"),
    "sku": ("sku", "mpn", "g:mpn"),
    "name": ("name", "title", "g:title"),
    "url": ("url", "link", "g:link"),
    "image": ("image", "image_url", "image_link", "g:image_link"),
    "price": ("price", "g:price"),
    "sale_price": ("sale_price", "g:sale_price"),
    "currency": ("currency",),
    "categories": ("categories", "category", "product_type", "g:product_type"),
    "brand": ("brand", "g:brand"),
    "availability": ("availability", "g:availability"),
    "item_group": ("item_group", "item_group_id", "g:item_group_id", "variant_of"),
}
"""Each field of a product, and the names trusted sources give it (the first one found wins)."""
_AVAILABILITY_ALIASES = {
    "in stock": "in_stock",
    "instock": "in_stock",
    "out of stock": "out_of_stock",
    "outofstock": "out_of_stock",
    "pre-order": "preorder",
    "pre_order": "preorder",
    "back order": "backorder",
    "back_order": "backorder",
    "onbackorder": "backorder",
}
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_PRICE = re.compile(r"^\s*([0-9]+(?:[.,][0-9]+)?)\s*([A-Za-z]{3})?\s*$")
_CATEGORY_SPLIT = re.compile(r"\s*(?:>|\|)\s*")


class RowError(ValueError):
    """A row a catalog source cannot use: which field, which value, and why."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(f"{field} = {shown}: {reason}")


@dataclass(frozen=True, slots=True)
class Product:
    """One product of the catalog. ``price`` and ``sale_price`` are in ``currency`` (None: the
    shop's own); ``categories`` run from the broadest to the narrowest; ``item_group`` is the
    product this one is a variant of."""

    id: str
    name: str
    url: str | None = None
    image: str | None = None
    price: float | None = None
    sale_price: float | None = None
    currency: str | None = None
    categories: tuple[str, ...] = ()
    brand: str | None = None
    availability: str = "in_stock"
    sku: str | None = None
    item_group: str | None = None

    @property
    def category(self) -> str | None:
        """The narrowest category, or None."""
        return self.categories[-1] if self.categories else None

    @property
    def current_price(self) -> float | None:
        """What the product costs now: the sale price when there is one, else the price."""
        return self.sale_price if self.sale_price is not None else self.price

    @property
    def buyable(self) -> bool:
        return self.availability in BUYABLE


def web_url(value: str) -> str | None:
    """``value`` stripped if it is an http(s) URL with a host and nothing unsafe inside."""
    url = value.strip()
    if len(url) > MAX_URL_CHARS or _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


def _pick(row: Mapping[str, Any], field: str) -> Any:
    for name in _FIELDS[field]:
        value = row.get(name)
        if value is not None and value != "":
            return value
    return None


def _text(row: Mapping[str, Any], field: str, limit: int = MAX_TEXT_CHARS) -> str | None:
    value = _pick(row, field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError(field, value, "not text")
    text = " ".join(str(value).split())
    if len(text) > limit:
        raise RowError(field, value, f"longer than {limit} characters")
    return text or None


def _url(row: Mapping[str, Any], field: str) -> str | None:
    value = _pick(row, field)
    if value is None:
        return None
    url = web_url(value) if isinstance(value, str) else None
    if url is None:
        raise RowError(field, value, "not an http(s) URL")
    return url


def _currency(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value.strip()) != 3 or not value.strip().isalpha():
        raise RowError(field, value, "not a three-letter currency code")
    return value.strip().upper()


def _price(row: Mapping[str, Any], field: str) -> tuple[float | None, str | None]:
    """A price and the currency written with it (Google's ``"15.00 USD"``), if any."""
    value = _pick(row, field)
    if value is None:
        return None, None
    currency: str | None = None
    if isinstance(value, str):
        found = _PRICE.match(value)
        if found is None:
            raise RowError(field, value, 'not a price (such as 15.00 or "15.00 USD")')
        number = float(found.group(1).replace(",", "."))
        currency = found.group(2).upper() if found.group(2) else None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise RowError(field, value, "not a price")
    if not math.isfinite(number) or not 0 <= number <= MAX_PRICE:
        raise RowError(field, value, "not a price between 0 and 1e9")
    return number, currency


def _categories(row: Mapping[str, Any]) -> tuple[str, ...]:
    value = _pick(row, "categories")
    if value is None:
        return ()
    if isinstance(value, str):
        parts = _CATEGORY_SPLIT.split(value)
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise RowError("categories", value, "not text or a list of text")
    found = tuple(" ".join(p.split())[:MAX_TEXT_CHARS] for p in parts if p.strip())
    return found[:MAX_CATEGORIES]


def _availability(row: Mapping[str, Any]) -> str:
    value = _pick(row, "availability")
    if value is None:
        return "in_stock"
    if isinstance(value, bool):
        return "in_stock" if value else "out_of_stock"
    if not isinstance(value, str):
        raise RowError("availability", value, "not text")
    normal = value.strip().lower()
    normal = _AVAILABILITY_ALIASES.get(normal, normal.replace(" ", "_"))
    if normal not in AVAILABILITY:
        raise RowError("availability", value, f"not one of {', '.join(AVAILABILITY)}")
    return normal


def product_from(row: Mapping[str, Any], currency: str | None = None) -> Product:
    """The product a trusted source's row describes (flat, any of the field names above);
    ``currency`` where the row names none.

    Raises:
        RowError: no id or name, or a field that is not what it should be.
    """
    product_id = _text(row, "id", MAX_ID_CHARS)
    if product_id is None:
        raise RowError("id", _pick(row, "id"), "missing")
    name = _text(row, "name")
    if name is None:
        raise RowError("name", _pick(row, "name"), "missing")
    price, price_currency = _price(row, "price")
    sale_price, sale_currency = _price(row, "sale_price")
    named = _pick(row, "currency")
    stated = _currency(named, "currency") if named is not None else None
    return Product(
        id=product_id,
        name=name,
        url=_url(row, "url"),
        image=_url(row, "image"),
        price=price,
        sale_price=sale_price,
        currency=stated or price_currency or sale_currency or currency,
        categories=_categories(row),
        brand=_text(row, "brand"),
        availability=_availability(row),
        sku=_text(row, "sku", MAX_ID_CHARS),
        item_group=_text(row, "item_group", MAX_ID_CHARS),
    )
