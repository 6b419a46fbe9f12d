"""The product catalog: feeds, imports and the catalog triggers.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.catalog.feeds import (
    FORMATS,
    MAX_ROW_BYTES,
    MAX_SHOPIFY_PAGE_BYTES,
    BadRow,
    detect_format,
    parse,
    shopify_page,
)
from rtserver.catalog.imports import Report, import_products
from rtserver.catalog.sync import Feeds
from rtserver.catalog.triggers import BACK_IN_STOCK, PRICE_DROPPED, Triggers

__all__ = [
    "BACK_IN_STOCK",
    "BadRow",
    "FORMATS",
    "Feeds",
    "MAX_ROW_BYTES",
    "MAX_SHOPIFY_PAGE_BYTES",
    "PRICE_DROPPED",
    "Report",
    "Triggers",
    "detect_format",
    "import_products",
    "parse",
    "shopify_page",
]
