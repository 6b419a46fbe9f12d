"""Importing products into the catalog: rows from a feed parser written in chunks, counted as
new, updated or skipped, with every bad row kept for the report. A bad row never stops an
import, and memory stays bounded by the chunk whatever the feed's size."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from rtserver.catalog.feeds import BadRow
from rtserver.clock import Clock
from rtserver.model import Product
from rtserver.store import Store

__all__ = ["CHUNK", "MAX_REPORTED", "Report", "import_products"]

CHUNK = 1000
"""Products written per transaction."""
MAX_REPORTED = 1000
"""Bad rows kept for the report (the rest are only counted)."""


@dataclass
class Report:
    """What an import did."""

    imported: int = 0
    updated: int = 0
    skipped: int = 0
    changes: int = 0
    """Products back in stock or cheaper: the catalog triggers' news."""
    bad: list[BadRow] = field(default_factory=list)
    broken: bool = False
    """The document itself was cut short or malformed: what came after was not read."""

    def summary(self) -> str:
        return f"imported {self.imported}, updated {self.updated}, skipped {self.skipped}"


async def _write(
    store: Store, chunk: list[Product], source: str, clock: Clock, report: Report
) -> None:
    known = await store.catalog.products([p.id for p in chunk])
    report.updated += len({p.id for p in chunk if p.id in known})
    report.imported += len({p.id for p in chunk if p.id not in known})
    report.changes += len(await store.catalog.upsert(chunk, source, clock()))


async def import_products(
    store: Store, rows: Iterable[Product | BadRow], source: str, clock: Clock
) -> Report:
    """Write the products of ``rows`` to the catalog as from ``source``; the report.

    ``rows`` is read ``CHUNK`` at a time on a worker thread (parsing a large feed takes
    seconds of CPU, which the event loop must not wait on), and each chunk is written in one
    transaction.

    Raises:
        StoreError: the store failed (what was written before stays written).
    """
    report = Report()
    source_rows = iter(rows)

    def next_chunk() -> list[Product | BadRow]:
        return list(itertools.islice(source_rows, CHUNK))

    while chunk := await asyncio.to_thread(next_chunk):
        products: list[Product] = []
        for row in chunk:
            if isinstance(row, BadRow):
                report.skipped += 1
                report.broken = report.broken or row.field == "document"
                if len(report.bad) < MAX_REPORTED:
                    report.bad.append(row)
            else:
                products.append(row)
        if products:
            await _write(store, products, source, clock, report)
    return report
