"""The catalog triggers: ``Back in Stock`` and ``Price Dropped`` events for the people a
product's news is for, so that workflows start on them like on any other event.

A catalog write records each change it makes (a product back in stock, or cheaper) in the
same transaction (``store.catalog``); :class:`Triggers` then finds the people it concerns and
stores one event per person and change, through the pipeline, before it marks the change
done. The events' messageIds come from (change, person), so a crash in between repeats
nothing: the store keeps each once, and each person gets exactly one mail per change.

Who hears of what (``[catalog]``):

- Back in Stock: people who asked (``Back In Stock Requested`` with the ``product_id``) or
  carted it within ``back_in_stock_window``; with ``back_in_stock_viewers``, also those who
  viewed it.
- Price Dropped: people who viewed or carted it within ``price_drop_window``, when the price
  fell by ``price_drop_min_percent`` or more.

Changes written by ``rtserver catalog import`` (another process) are picked up within
``CHECK_S``; the server's own writes wake the task at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

from rtserver.clock import Clock
from rtserver.config import CatalogConfig
from rtserver.errors import StoreError
from rtserver.model import Event, Submit, person_event
from rtserver.store import Change, Store

__all__ = ["BACK_IN_STOCK", "PRICE_DROPPED", "Triggers"]

logger = logging.getLogger(__name__)

BACK_IN_STOCK = "Back in Stock"
PRICE_DROPPED = "Price Dropped"
CHECK_S = 60.0
"""How often the task looks for changes another process wrote."""
RETRY_S = 5.0
"""How long the task waits after a storage failure."""
BATCH = 500
"""Events stored per commit."""


def _message_id(name: str, change: Change, person_id: str) -> str:
    digest = hashlib.sha256(f"{change.product.id}|{change.at!r}|{person_id}".encode()).hexdigest()
    return f"rt-{name.lower().replace(' ', '-')}-{digest[:40]}"


class Triggers:
    """Turns catalog changes into events for the people they concern."""

    def __init__(self, store: Store, submit: Submit, config: CatalogConfig, clock: Clock) -> None:
        self.store = store
        self.submit = submit
        self.config = config
        self.clock = clock
        self.emitted = 0
        """Events stored so far (the dashboard and tests read it)."""
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look now: this process wrote catalog changes."""
        self._wake.set()

    async def run(self) -> None:
        """Act on pending changes, then wait for a wake or ``CHECK_S``; until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.process()
                wait_s = CHECK_S
            except (StoreError, TimeoutError) as exc:
                logger.warning("catalog triggers: %s; trying again in %gs", exc, RETRY_S)
                wait_s = RETRY_S
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass

    async def process(self) -> int:
        """Store the events of every pending change; how many events.

        Raises:
            StoreError, TimeoutError: the store failed; the change stays pending.
        """
        total = 0
        while changes := await self.store.catalog.pending_changes():
            for change in changes:
                events = await self._events(change)
                for start in range(0, len(events), BATCH):
                    await (await self.submit(events[start : start + BATCH], self.clock()))
                await self.store.catalog.change_done(change)
                total += len(events)
                if events:
                    logger.info(
                        "catalog: %s %s: %d people told", events[0].name, change.product.id,
                        len(events),
                    )  # fmt: skip
        self.emitted += total
        return total

    async def _events(self, change: Change) -> Sequence[Event]:
        product = change.product
        properties = {
            "product_id": product.id,
            "name": product.name,
            "price": product.current_price,
            "currency": product.currency,
        }
        if change.restocked:
            name = BACK_IN_STOCK
            since = change.at - self.config.back_in_stock_window
            people = await self.store.catalog.interested(
                product.id, since, viewers=self.config.back_in_stock_viewers
            )
        else:
            old, new = change.old_price, product.current_price
            if old is None or new is None or old <= 0:
                return []
            if (old - new) / old * 100 < self.config.price_drop_min_percent:
                return []
            name = PRICE_DROPPED
            properties["old_price"] = old
            since = change.at - self.config.price_drop_window
            people = await self.store.catalog.interested(product.id, since)
        return [
            person_event(person, _message_id(name, change, person), name, dict(properties))
            for person in people
        ]
