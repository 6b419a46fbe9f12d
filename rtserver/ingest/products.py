"""Catalog updates a trusted source sends as events: ``Product Updated`` (or ``Product
Created``) and ``Product Deleted``, from the write key or a signed webhook.

The product's fields are the event's properties, read by
:func:`~rtserver.model.product_from` (Segment's names: ``product_id``, ``name``, ``price``,
``image_url``, ``url``, ``category``..., or the catalog's own). Such an event is refused,
with the field and the reason, when the catalog cannot use it; the events are stored as any
other. A browser's events never reach this module: browsers contribute product ids only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtserver.model import Event, Product, RowError, product_from

__all__ = ["DELETE", "UPDATE", "catalog_update", "updates_of"]

UPDATE = frozenset({"Product Updated", "Product Created"})
DELETE = "Product Deleted"


def catalog_update(event: Event, currency: str) -> Product | str | None:
    """What ``event`` does to the catalog: a product to write, the id of one to delete, or
    None (not a catalog event, or not from a trusted source).

    Raises:
        RowError: a catalog event whose properties the catalog cannot use.
    """
    if event.source != "server" or event.type != "track":
        return None
    if event.name in UPDATE:
        return product_from(event.properties, currency)
    if event.name == DELETE:
        found = product_from({"name": "-", **event.properties})
        return found.id
    return None


def updates_of(
    events: Sequence[Event], currency: str
) -> tuple[list[Event], list[Product], list[str], list[dict[str, Any]]]:
    """Split ``events``: the ones to store, the products to write, the ids to delete, and
    the refused ones (``messageId`` and ``error``, as the HTTP API reports them)."""
    kept: list[Event] = []
    products: list[Product] = []
    deleted: list[str] = []
    refused: list[dict[str, Any]] = []
    for event in events:
        try:
            update = catalog_update(event, currency)
        except RowError as exc:
            refused.append({"messageId": event.message_id, "error": f"properties.{exc}"})
            continue
        if isinstance(update, Product):
            products.append(update)
        elif isinstance(update, str):
            deleted.append(update)
        kept.append(event)
    return kept, products, deleted, refused
