"""The catalog half of the store: the shop's products, the feeds' state, and who cares about a
product.

:class:`CatalogStore` is reached as ``store.catalog``; like the outbox it is part of the store
(all SQL stays behind it). Only trusted sources write here (feeds, write-key events, signed
platform webhooks): browser events never do. Writes run on the writer's thread in one hop and
one transaction each; reads use the read-only connection.

A write reports the :class:`Change` of every known product that came back in stock or got
cheaper, so that the catalog triggers (Back in Stock, Price Dropped) can follow; ``changed_at``
of such a product is the write's time, which keys the triggers' events (one per change).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from rtserver.model import Product

__all__ = ["CatalogStore", "Change", "FeedState"]

InWriter = Callable[..., Awaitable[Any]]
Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]

CHUNK = 500
"""Products read or written per statement batch."""
COLUMNS = (
    "id, sku, name, url, image, price, sale_price, currency, categories, brand, availability, "
    "item_group"
)
UPSERT = f"""
    INSERT INTO products ({COLUMNS}, image_host, source, updated_at, seen_at, changed_at,
        category)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, name = excluded.name,
        url = excluded.url, image = excluded.image, price = excluded.price,
        sale_price = excluded.sale_price, currency = excluded.currency,
        categories = excluded.categories, category = excluded.category, brand = excluded.brand,
        availability = excluded.availability, item_group = excluded.item_group,
        image_host = excluded.image_host, source = excluded.source,
        updated_at = excluded.updated_at, seen_at = excluded.seen_at,
        changed_at = coalesce(excluded.changed_at, products.changed_at)
"""


@dataclass(frozen=True, slots=True)
class Change:
    """A known product that came back in stock (``restocked``) or got cheaper (``old_price``
    is what it cost before), as it is after the write; ``at`` keys the triggers' events."""

    product: Product
    restocked: bool
    old_price: float | None
    at: float


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the last read of a feed left: its validators and how it went."""

    url: str
    etag: str | None
    last_modified: str | None
    fetched_at: float
    outcome: str


def _row(product: Product, source: str, now: float, changed: bool) -> tuple[Any, ...]:
    host = urlsplit(product.image).hostname if product.image else None
    return (
        product.id, product.sku, product.name, product.url, product.image, product.price,
        product.sale_price, product.currency, orjson.dumps(list(product.categories)).decode(),
        product.brand, product.availability, product.item_group, host, source, now, now,
        now if changed else None, product.category,
    )  # fmt: skip


def _product(row: Sequence[Any]) -> Product:
    return Product(
        id=row[0],
        sku=row[1],
        name=row[2],
        url=row[3],
        image=row[4],
        price=row[5],
        sale_price=row[6],
        currency=row[7],
        categories=tuple(orjson.loads(row[8])),
        brand=row[9],
        availability=row[10],
        item_group=row[11],
    )


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _change(old: Product | None, new: Product, now: float) -> Change | None:
    """What a catalog trigger cares about in ``old`` becoming ``new`` (None: nothing)."""
    if old is None or not new.buyable:
        return None
    restocked = not old.buyable
    before, after = old.current_price, new.current_price
    cheaper = before is not None and after is not None and after < before
    if not (restocked or cheaper):
        return None
    return Change(new, restocked, before if cheaper else None, now)


def _read_products(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Product]:
    found: dict[str, Product] = {}
    for chunk in _chunks(ids):
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(f"SELECT {COLUMNS} FROM products WHERE id IN ({marks})", chunk)
        found.update((r[0], _product(r)) for r in rows)
    return found


def upsert(
    conn: sqlite3.Connection, products: Sequence[Product], source: str, now: float
) -> list[Change]:
    """Write ``products`` (the last of one id wins) in one transaction; the changes."""
    latest = {p.id: p for p in products}
    changes: list[Change] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = _read_products(conn, list(latest))
        rows = []
        for product in latest.values():
            change = _change(old.get(product.id), product, now)
            if change is not None:
                changes.append(change)
            rows.append(_row(product, source, now, change is not None))
        conn.executemany(UPSERT, rows)
        conn.executemany(
            "INSERT OR IGNORE INTO catalog_changes VALUES (?, ?, ?, ?)",
            [(c.product.id, c.at, c.restocked, c.old_price) for c in changes],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return changes


def discontinue(
    conn: sqlite3.Connection,
    source: str | None,
    ids: Sequence[str] | None,
    before: float,
    now: float,
) -> int:
    """Mark products discontinued: ``ids``, or those of ``source`` not seen since ``before``."""
    if ids is not None:
        marks = ", ".join("?" * len(ids))
        sql = f"id IN ({marks})"
        parameters: tuple[Any, ...] = tuple(ids)
    else:
        sql, parameters = "source = ? AND seen_at < ?", (source, before)
    cursor = conn.execute(
        "UPDATE products SET availability = 'discontinued', updated_at = ? "
        f"WHERE availability != 'discontinued' AND {sql}",
        (now, *parameters),
    )
    return cursor.rowcount


class CatalogStore:
    """The products, the feeds' state and the people a product's news is for
    (``store.catalog``)."""

    def __init__(self, in_writer: InWriter, read: Read) -> None:
        self._in_writer = in_writer
        self._read = read

    async def upsert(self, products: Sequence[Product], source: str, now: float) -> list[Change]:
        """Add or update ``products`` from ``source`` (``feed:<url>``, ``import``, ``events``,
        a platform); the products that came back in stock or got cheaper."""
        if not products:
            return []
        result: list[Change] = await self._in_writer(upsert, products, source, now)
        return result

    async def discontinue(self, ids: Sequence[str], now: float) -> int:
        """Mark ``ids`` discontinued (deleted at their source); how many changed."""
        if not ids:
            return 0
        result: int = await self._in_writer(discontinue, None, list(ids), 0.0, now)
        return result

    async def vanished(self, source: str, seen_before: float, now: float) -> int:
        """Mark ``source``'s products not seen since ``seen_before`` discontinued (gone from
        their feed); how many."""
        result: int = await self._in_writer(discontinue, source, None, seen_before, now)
        return result

    async def products(self, ids: Collection[str]) -> dict[str, Product]:
        """The catalog's products among ``ids``, by id."""
        found: dict[str, Product] = {}
        listed = list(dict.fromkeys(ids))
        for chunk in _chunks(listed):
            marks = ", ".join("?" * len(chunk))
            rows = await self._read(f"SELECT {COLUMNS} FROM products WHERE id IN ({marks})", chunk)
            found.update((r[0], _product(r)) for r in rows)
        return found

    async def in_categories(
        self, categories: Collection[str], per_category: int
    ) -> dict[str, list[str]]:
        """Up to ``per_category`` buyable products of each of ``categories`` (the narrowest
        category), most recently updated first: candidates a person's categories offer."""
        found: dict[str, list[str]] = {}
        for category in categories:
            rows = await self._read(
                "SELECT id FROM products WHERE category = ? "
                "AND availability IN ('in_stock', 'preorder', 'backorder') "
                "ORDER BY updated_at DESC, id LIMIT ?",
                (category, per_category),
            )
            found[category] = [r[0] for r in rows]
        return found

    async def listing(self, limit: int = 100, offset: int = 0) -> list[Product]:
        """Products by id, a page at a time."""
        rows = await self._read(
            f"SELECT {COLUMNS} FROM products ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
        )
        return [_product(r) for r in rows]

    async def count(self) -> int:
        rows = await self._read("SELECT count(*) FROM products", ())
        return int(rows[0][0])

    async def feed_image_hosts(self) -> set[str]:
        """The hosts of the images the configured feeds name."""
        rows = await self._read(
            "SELECT DISTINCT image_host FROM products "
            "WHERE source LIKE 'feed:%' AND image_host IS NOT NULL",
            (),
        )
        return {r[0] for r in rows}

    async def feed_state(self, url: str) -> FeedState | None:
        rows = await self._read(
            "SELECT url, etag, last_modified, fetched_at, outcome FROM feeds WHERE url = ?",
            (url,),
        )
        return FeedState(*rows[0]) if rows else None

    async def save_feed_state(self, state: FeedState) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO feeds (url, etag, last_modified, fetched_at, outcome) "
                "VALUES (?, ?, ?, ?, ?)",
                (state.url, state.etag, state.last_modified, state.fetched_at, state.outcome),
            )

        await self._in_writer(save)

    async def pending_changes(self, limit: int = 100) -> list[Change]:
        """Changes the catalog triggers have not acted on yet, oldest first."""
        rows = await self._read(
            "SELECT product_id, at, restocked, old_price FROM catalog_changes "
            "ORDER BY at, product_id LIMIT ?",
            (limit,),
        )
        products = await self.products([r[0] for r in rows])
        return [Change(products[r[0]], bool(r[2]), r[3], r[1]) for r in rows if r[0] in products]

    async def change_done(self, change: Change) -> None:
        """The triggers acted on ``change`` (their events are stored)."""

        def done(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM catalog_changes WHERE product_id = ? AND at = ?",
                (change.product.id, change.at),
            )

        await self._in_writer(done)

    async def interested(self, product_id: str, since: float, viewers: bool = True) -> list[str]:
        """The people who asked to hear of ``product_id`` (``Back In Stock Requested``) or
        carted it since ``since``, and with ``viewers`` those who viewed it; each once."""
        rows = await self._read(
            "SELECT person_id FROM events INDEXED BY events_product_interest "
            "WHERE product_id = ? AND received_at >= ? "
            "AND name IN ('Product Added', 'Back In Stock Requested')",
            (product_id, since),
        )
        if viewers:
            rows += await self._read(
                "SELECT person_id FROM events INDEXED BY events_product_viewers "
                "WHERE product_id = ? AND received_at >= ? AND name = 'Product Viewed'",
                (product_id, since),
            )
        return sorted({r[0] for r in rows})
