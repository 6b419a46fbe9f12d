"""What a mail is rendered with: :class:`Contexts` builds a claimed mail's
:class:`~rtserver.mail.render.MailContext` (the person, the run, the run's cart, the products they
viewed and recommendations) for the sender and for ``rtserver render``'s previews.

Every product a mail shows comes from the catalog: the person's events give only product ids
and quantities. A cart item the catalog does not know shows a neutral name with no link, image
or price; links and images point only at the shop's hosts (:class:`~rtserver.mail.hosts.Hosts`).

The shop's popular products, the feeds' image hosts and the co-viewed products of a set of
viewed products are read at most every ``POPULAR_TTL_S`` of the clock it is given: a batch of
mails, and people who viewed the same few products, share one read.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtserver.config import MailConfig
from rtserver.mail.ranking import Signals, rank
from rtserver.mail.recommend import Product, bought_of, cart_of, events_of_cart, viewed_of
from rtserver.mail.render import MailContext, Mailer
from rtserver.model import Product as CatalogProduct
from rtserver.store import Claim, Store

__all__ = ["Contexts", "UNKNOWN_PRODUCT"]

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
RECOMMENDATIONS = 4
SIGNALS_WINDOW_S = 90 * DAY_S
"""How far back clicks and mails are read: what a person clicked, and what they were shown."""
SIMILAR_PEOPLE = 200
"""People who viewed the same products, whose clicks in mail count for this person."""
TOP_CATEGORIES = 3
"""The person's categories whose newest products join the candidates."""
VIEWED_SHOWN = 4
"""The person's recently viewed products a mail may show (``viewed``)."""
UNKNOWN_PRODUCT = "An item from our shop"
"""The name of a cart item the catalog does not know: never the id or anything a browser sent."""


@dataclass(frozen=True, slots=True)
class Shelf:
    """A person's products as a mail shows them."""

    cart: tuple[Product, ...]
    viewed: tuple[Product, ...]
    product: Product | None
    recommendations: tuple[Product, ...]


class Contexts:
    """Builds mail contexts from the store, caching the shop-wide product reads."""

    def __init__(self, store: Store, mailer: Mailer, config: MailConfig) -> None:
        self.store = store
        self.mailer = mailer
        self.config = config
        self.hosts = mailer.hosts
        self._popular: tuple[float, list[str]] | None = None
        self._popular_lock = asyncio.Lock()
        self._co_viewed_cache: dict[tuple[str, ...], tuple[float, list[str], dict[str, int]]] = {}

    async def build(self, claim: Claim, now: float) -> MailContext:
        """What ``claim`` is rendered with: the person, the run, the run's cart (the events of
        that cart when the run is keyed by its ``cart_id``, else all the person's), what they
        viewed and recommendations, all from the catalog; also what ``rtserver render``
        previews.

        Raises:
            StoreError: the person's products could not be read.
        """
        if claim.template == "confirm":
            return self._confirmation(claim, now)
        key = str(claim.run.get("key") or "")
        shelf = await self._shelf(claim.person_id, key, now, RECOMMENDATIONS)
        return MailContext(
            mail_id=claim.id,
            # Rerouted before rendering, so a DKIM signature covers the To it is sent with.
            to=", ".join(self.config.test_recipients) or claim.recipient,
            now=now,
            person=claim.person,
            run=claim.run,
            cart=shelf.cart,
            viewed=shelf.viewed,
            product=shelf.product,
            recommendations=shelf.recommendations,
            marketing=claim.marketing,
            extra=self._extra(claim),
        )

    async def recommendations(self, person_id: str, now: float, limit: int) -> list[Product]:
        """What a mail to ``person_id`` would recommend now (``GET /v1/recommendations``)."""
        return list((await self._shelf(person_id, "", now, limit)).recommendations)

    async def _shelf(self, person_id: str, key: str, now: float, limit: int) -> Shelf:
        """The person's products, from the catalog: the cart of the run keyed ``key`` (or all
        of it), what they viewed, the run's product and ``limit`` recommendations."""
        events = await self.store.mail.product_events(person_id, now - PRODUCTS_WINDOW_S)
        viewed_ids = viewed_of(events)
        bought = bought_of(events)
        cart_items = cart_of(events_of_cart(events, key))
        co_viewed_ids: list[str] = []
        similar_clicked: dict[str, int] = {}
        if viewed_ids:
            co_viewed_ids, similar_clicked = await self._co_viewed(tuple(viewed_ids[:POOL]), now)
        popular_ids = await self._popular_ids(now)
        since = now - SIGNALS_WINDOW_S
        clicked = await self.store.mail.clicked([person_id], since)
        shown = await self.store.mail.shown(person_id, since)
        wanted = {*viewed_ids, *co_viewed_ids, *popular_ids, *(pid for pid, _ in cart_items)}
        catalog = await self.store.catalog.products({*wanted, key} if key else wanted)
        viewed_in = Counter(catalog[p].category for p in viewed_ids if p in catalog)
        top = [c for c, _ in viewed_in.most_common() if c][:TOP_CATEGORIES]
        pool = await self.store.catalog.in_categories(top, POOL)
        pooled = {pid for ids in pool.values() for pid in ids} - catalog.keys()
        if pooled:
            catalog = {**catalog, **await self.store.catalog.products(pooled)}
        product = catalog.get(key)
        signals = Signals(
            viewed=viewed_ids,
            co_viewed=co_viewed_ids,
            popular=popular_ids,
            clicked=clicked,
            similar_clicked=similar_clicked,
            shown=shown,
        )
        exclude = bought | {pid for pid, _ in cart_items} | {key}
        picked = rank(signals, catalog, exclude, limit, category_pool=pool)
        return Shelf(
            cart=tuple(self._shown(catalog.get(pid), pid, n) for pid, n in cart_items),
            viewed=tuple(self._buyable(viewed_ids, catalog)[:VIEWED_SHOWN]),
            product=None if product is None else self._shown(product, key),
            recommendations=tuple(self._shown(p, p.id) for p in picked),
        )

    def _shown(self, product: CatalogProduct | None, pid: str, quantity: int = 1) -> Product:
        """``product`` as a mail shows it: links and images only to the shop's hosts; a
        product the catalog does not know gets a neutral name and nothing else."""
        if product is None:
            return Product(pid, UNKNOWN_PRODUCT, None, None, None, None, None, quantity)
        on_sale = product.sale_price is not None and product.price is not None
        return Product(
            id=product.id,
            name=product.name,
            price=product.current_price,
            currency=product.currency,
            image=self.hosts.image(product.image),
            url=self.hosts.link(product.url),
            category=product.category,
            quantity=quantity,
            regular_price=product.price if on_sale else None,
        )

    def _buyable(self, ids: list[str], catalog: Mapping[str, CatalogProduct]) -> list[Product]:
        """The products of ``ids`` the catalog knows and sells, as a mail shows them."""
        return [
            self._shown(catalog[pid], pid) for pid in ids if pid in catalog and catalog[pid].buyable
        ]

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

    async def _co_viewed(
        self, ids: tuple[str, ...], now: float
    ) -> tuple[list[str], dict[str, int]]:
        """Products viewed by the viewers of ``ids``, and the products those viewers clicked
        in mail; read again after ``POPULAR_TTL_S``."""
        cached = self._co_viewed_cache.get(ids)
        if cached is None or not cached[0] <= now < cached[0] + POPULAR_TTL_S:
            since = now - PRODUCTS_WINDOW_S
            found = await self.store.mail.co_viewed(list(ids), since, POOL)
            viewers = await self.store.mail.viewers(list(ids), since, SIMILAR_PEOPLE)
            clicks = await self.store.mail.clicked(viewers, now - SIGNALS_WINDOW_S)
            cached = self._co_viewed_cache[ids] = (now, found, clicks)
            while len(self._co_viewed_cache) > CO_VIEWED_SETS:
                del self._co_viewed_cache[next(iter(self._co_viewed_cache))]  # the oldest read
        return cached[1], cached[2]

    async def _popular_ids(self, now: float) -> list[str]:
        """The shop's popular products; the feeds' image hosts are read along with them."""
        async with self._popular_lock:  # a batch's mails ask at once: one of them reads
            cached = self._popular
            if cached is None or not cached[0] <= now < cached[0] + POPULAR_TTL_S:
                found = await self.store.mail.popular(now - PRODUCTS_WINDOW_S, POOL)
                self.hosts.feed_images = frozenset(await self.store.catalog.feed_image_hosts())
                cached = self._popular = (now, found)
            return cached[1]
