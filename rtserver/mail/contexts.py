"""What a mail is rendered with: :class:`Contexts` builds a claimed mail's
:class:`~rtserver.mail.render.MailContext` (the person, the run, the run's cart and recommendations)
for the sender and for ``rtserver render``'s previews.

The shop's popular products and the co-viewed products of a set of viewed products are read at
most every ``POPULAR_TTL_S`` of the clock it is given: a batch of mails, and people who viewed
the same few products, share one read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rtserver.config import MailConfig
from rtserver.mail.recommend import (
    Product,
    bought_of,
    cart_of,
    events_of_cart,
    products_of,
    recommend,
    viewed_of,
)
from rtserver.mail.render import MailContext, Mailer
from rtserver.store import Claim, Store

__all__ = ["Contexts"]

DAY_S = 86400.0
PRODUCTS_WINDOW_S = 30 * DAY_S
"""How far back a person's views, cart and orders are read for a mail."""
POPULAR_TTL_S = 300.0
"""How long the shop's popular products are reused before being read again."""
CO_VIEWED_SETS = 1024
"""Sets of viewed products whose co-viewed products are kept (``POPULAR_TTL_S`` each): people
who viewed the same few products (often one popular product) share one read."""
POOL = 8
"""Candidates read from co-views and popularity for the recommendations."""
RECOMMENDATIONS = 3


class Contexts:
    """Builds mail contexts from the store, caching the shop-wide product reads."""

    def __init__(self, store: Store, mailer: Mailer, config: MailConfig) -> None:
        self.store = store
        self.mailer = mailer
        self.config = config
        self._popular: tuple[float, list[Product]] | None = None
        self._popular_lock = asyncio.Lock()
        self._co_viewed: dict[tuple[str, ...], tuple[float, list[Product]]] = {}

    async def build(self, claim: Claim, now: float) -> MailContext:
        """What ``claim`` is rendered with: the person, the run, the run's cart (the events of
        that cart when the run is keyed by its ``cart_id``, else all the person's) and
        recommendations; also what ``rtserver render`` previews.

        Raises:
            StoreError: the person's products could not be read.
        """
        if claim.template == "confirm":
            return self._confirmation(claim, now)
        since = now - PRODUCTS_WINDOW_S
        events = await self.store.mail.product_events(claim.person_id, since)
        viewed = viewed_of(events)
        bought = bought_of(events)
        cart = cart_of(events_of_cart(events, str(claim.run.get("key") or "")))
        co_viewed: list[Product] = []
        if viewed:
            co_viewed = await self._co_viewed_products(tuple(p.id for p in viewed[:POOL]), now)
        popular = await self._popular_products(now)
        recommendations = recommend(
            viewed, co_viewed, popular, bought | {p.id for p in cart}, RECOMMENDATIONS
        )
        return MailContext(
            mail_id=claim.id,
            # Rerouted before rendering, so a DKIM signature covers the To it is sent with.
            to=", ".join(self.config.test_recipients) or claim.recipient,
            now=now,
            person=claim.person,
            run=claim.run,
            cart=tuple(cart),
            recommendations=tuple(recommendations),
            marketing=claim.marketing,
            extra=self._extra(claim),
        )

    def _confirmation(self, claim: Claim, now: float) -> MailContext:
        """A double opt-in mail goes to an address its browser has not proven it owns: it says
        only what the shop configured (brand, the address, the button), so no trait, cart or
        product a browser sent can reach it."""
        return MailContext(
            mail_id=claim.id,
            to=", ".join(self.config.test_recipients) or claim.recipient,
            now=now,
            person={"id": claim.person_id, "email": claim.recipient},
            run={},
            marketing=claim.marketing,
            extra=self._extra(claim),
        )

    def _extra(self, claim: Claim) -> dict[str, Any]:
        """The row's extra data; a double opt-in mail gets its signed confirmation link."""
        if claim.template != "confirm":
            return claim.extra
        token = self.mailer.tokens.confirm(claim.person_id, claim.recipient)
        return {**claim.extra, "confirm_url": f"{self.mailer.public_url}/confirm/{token}"}

    async def _co_viewed_products(self, ids: tuple[str, ...], now: float) -> list[Product]:
        """Products viewed by the viewers of ``ids``, read again after ``POPULAR_TTL_S``."""
        cached = self._co_viewed.get(ids)
        if cached is None or not cached[0] <= now < cached[0] + POPULAR_TTL_S:
            rows = await self.store.mail.co_viewed(list(ids), now - PRODUCTS_WINDOW_S, POOL)
            cached = self._co_viewed[ids] = (now, products_of(rows))
            while len(self._co_viewed) > CO_VIEWED_SETS:
                del self._co_viewed[next(iter(self._co_viewed))]  # the oldest read
        return cached[1]

    async def _popular_products(self, now: float) -> list[Product]:
        async with self._popular_lock:  # a batch's mails ask at once: one of them reads
            cached = self._popular
            if cached is None or not cached[0] <= now < cached[0] + POPULAR_TTL_S:
                rows = await self.store.mail.popular(now - PRODUCTS_WINDOW_S, POOL)
                cached = self._popular = (now, products_of(rows))
            return cached[1]
