"""Mail contexts: the cart and recommendations a claimed mail is rendered with, and the
caches that keep the shop-wide product reads few (on a real store and a fake clock)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import rtserver.mail.contexts
from tests.support.mail import (  # noqa: F401 (fixtures)
    Shop,
    clock_fixture,
    make_sender,
    product,
    shop_fixture,
    templates_fixture,
)


async def test_co_viewed_products_are_read_once_per_set_for_a_while(
    shop: Shop,
    templates: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """People who viewed the same products share one read of their co-viewed products, for
    POPULAR_TTL_S of the clock; at most CO_VIEWED_SETS sets are kept, the oldest dropped."""
    reads: list[list[str]] = []
    co_viewed = shop.store.mail.co_viewed

    async def counted(ids: Sequence[str], since: float, limit: int) -> Any:
        reads.append(list(ids))
        return await co_viewed(ids, since, limit)

    monkeypatch.setattr(shop.store.mail, "co_viewed", counted)
    await shop.stock(product("p1", "shoes"), product("p2", "shoes"))
    for user, viewed in (("ann", "p1"), ("bob", "p1"), ("cy", "p2"), ("dan", "p2")):
        await shop.person(user, f"{user}@example.com")
        await shop.track(user, "Product Viewed", product_id=viewed, category="shoes")
    await shop.track("dan", "Product Viewed", product_id="p1", category="shoes")
    contexts = make_sender(shop, 9, templates, tmp_path).contexts
    for user in ("ann", "bob", "cy"):
        await shop.queue(f"m-{user}", f"u:{user}")
    claims, _ = await shop.store.mail.claim(shop.clock(), 10, 300.0, 86400.0)
    by_person = {c.person_id: c for c in claims}

    async def recommended(user: str) -> list[str]:
        context = await contexts.build(by_person[f"u:{user}"], shop.clock())
        return [p.id for p in context.recommendations]

    assert await recommended("ann") == await recommended("bob") == ["p1", "p2"]
    assert reads == [["p1"]]
    shop.clock.advance(rtserver.mail.contexts.POPULAR_TTL_S)
    assert await recommended("bob") == ["p1", "p2"]
    assert reads == [["p1"], ["p1"]]
    monkeypatch.setattr(rtserver.mail.contexts, "CO_VIEWED_SETS", 1)
    await recommended("cy")  # p2's set replaces p1's
    await recommended("ann")
    assert reads == [["p1"], ["p1"], ["p2"], ["p1"]]


async def test_picks_shown_and_ignored_sink_and_clicked_ones_rise(
    shop: Shop, templates: Path, tmp_path: Path
) -> None:
    """The signals reach the ranking: a pick mailed five times and never clicked drops out
    of the top two; a product the person clicked in a mail (a person's click, not a
    scanner's) rises into them."""
    await shop.stock(*(product(f"k{i}", "kitchen") for i in range(6)))
    await shop.person("ann", "ann@example.com")
    for pid in ("k0", "k1"):
        await shop.track("ann", "Product Viewed", product_id=pid)
    contexts = make_sender(shop, 9, templates, tmp_path).contexts
    now = shop.clock()
    before = [p.id for p in await contexts.recommendations("u:ann", now, 2)]
    ignored = before[0]
    shown = [(f"m{n}", "u:ann", ignored, None, now) for n in range(5)]
    await shop.store.mail.finish_many([], shown)
    after = [p.id for p in await contexts.recommendations("u:ann", now, 2)]
    assert ignored not in after
    await shop.track("ann", "Email Clicked", product_id="k5", machine=False)
    await shop.track("ann", "Email Clicked", product_id="k4", machine=True)  # a scanner's
    clicked = [p.id for p in await contexts.recommendations("u:ann", now, 2)]
    assert "k5" not in after and "k5" in clicked and "k4" not in clicked
