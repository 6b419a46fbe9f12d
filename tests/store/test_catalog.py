"""The catalog half of the store: products written and read back, the changes the triggers
owe (written in the same transaction), vanished and deleted products, feed state, and who cares
about a product. On a real SQLite file."""

from __future__ import annotations

from rtserver.model.products import Product
from rtserver.store import Change, FeedState, Store
from tests.support.events import event
from tests.support.store import parse, store_group

MUG = Product("mug", "Mug", url="https://shop.example/mug", image="https://cdn.example/m.jpg",
              price=20.0, currency="EUR", categories=("Home", "Kitchen"), brand="Acme",
              sku="M-1", item_group="MUGS")  # fmt: skip


async def test_products_round_trip_and_only_news_is_a_change(store: Store) -> None:
    assert await store.catalog.upsert([MUG, Product("cup", "Cup")], "feed:https://f", 10.0) == []
    assert (await store.catalog.products(["mug", "nope"])) == {"mug": MUG}
    assert await store.catalog.count() == 2
    assert [p.id for p in await store.catalog.listing(limit=1, offset=1)] == ["mug"]
    assert await store.catalog.feed_image_hosts() == {"cdn.example"}
    assert await store.catalog.upsert([], "import", 11.0) == []
    gone = Product("mug", "Mug", price=20.0, availability="out_of_stock")
    assert await store.catalog.upsert([gone], "import", 12.0) == []
    back = Product("mug", "Mug", price=20.0)
    cheaper = Product("cup", "Cup", price=5.0)
    (change,) = await store.catalog.upsert([back, cheaper], "import", 13.0)
    assert change == Change(back, True, None, 13.0)
    assert await store.catalog.upsert([Product("cup", "Cup", price=4.0)], "import", 14.0) == [
        Change(Product("cup", "Cup", price=4.0), False, 5.0, 14.0)
    ]
    pending = await store.catalog.pending_changes()
    assert [(c.product.id, c.at) for c in pending] == [("mug", 13.0), ("cup", 14.0)]
    await store.catalog.change_done(pending[0])
    assert [c.product.id for c in await store.catalog.pending_changes()] == ["cup"]


async def test_vanished_and_deleted_products_are_discontinued(store: Store) -> None:
    await store.catalog.upsert([MUG, Product("cup", "Cup")], "feed:a", 10.0)
    await store.catalog.upsert([Product("cup", "Cup")], "feed:a", 20.0)
    assert await store.catalog.vanished("feed:a", 20.0, 21.0) == 1
    assert (await store.catalog.products(["mug"]))["mug"].availability == "discontinued"
    assert await store.catalog.discontinue(["cup", "nope"], 22.0) == 1
    assert await store.catalog.discontinue([], 22.0) == 0
    assert not (await store.catalog.products(["cup"]))["cup"].buyable


async def test_feed_state(store: Store) -> None:
    assert await store.catalog.feed_state("https://f") is None
    state = FeedState("https://f", '"v1"', "Mon, 07 Dec 2026 10:00:00 GMT", 5.0, "ok")
    await store.catalog.save_feed_state(state)
    assert await store.catalog.feed_state("https://f") == state


async def test_interested_people(store: Store) -> None:
    def tracked(user: str, name: str, pid: str) -> object:
        return parse(event("track", event=name, userId=user, properties={"product_id": pid}))

    await store_group(store, [tracked("old", "Product Viewed", "mug")], at=1.0)
    await store_group(
        store,
        [
            tracked("ann", "Product Viewed", "mug"),
            tracked("bob", "Back In Stock Requested", "mug"),
            tracked("cy", "Product Added", "mug"),
            tracked("dan", "Product Viewed", "cup"),
        ],
        at=100.0,
    )
    assert await store.catalog.interested("mug", 50.0) == ["u:ann", "u:bob", "u:cy"]
    assert await store.catalog.interested("mug", 50.0, viewers=False) == ["u:bob", "u:cy"]
    assert await store.catalog.interested("mug", 0.0) == ["u:ann", "u:bob", "u:cy", "u:old"]
