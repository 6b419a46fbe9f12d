"""Catalog updates sent as events: only the write key (or a signed webhook) writes the
catalog; a browser's ``Product Updated`` is an event like any other and changes nothing; a row
the catalog cannot use is refused with its field, and the rest of the batch goes on."""

from __future__ import annotations

from pathlib import Path

from tests.support.events import event
from tests.support.server import ORIGIN, WRITE_KEY, make_config, run_server


def update(pid: str, kind: str = "Product Updated", **properties: object) -> dict[str, object]:
    return event(
        "track", event=kind, userId="backend", properties={"product_id": pid, **properties}
    )


async def test_write_key_events_write_the_catalog(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live, live.http() as http:
        batch = [
            update("mug", "Product Created", name="Mug", price="12.50"),
            update("cup", name="Cup", price="free"),
            update("old", name="Old"),
        ]
        answer = await http.post("/v1/batch", json={"writeKey": WRITE_KEY, "batch": batch})
        assert answer.status_code == 200
        (refused,) = answer.json()["rejected"]
        assert refused["messageId"] == batch[1]["messageId"]
        assert refused["error"].startswith("properties.price = 'free': not a price")
        catalog = await live.runtime.store.catalog.products(["mug", "cup", "old"])
        assert catalog["mug"].price == 12.5 and catalog["mug"].currency == "EUR"
        assert "cup" not in catalog
        deleted = {"writeKey": WRITE_KEY, **update("old", "Product Deleted")}
        assert (await http.post("/v1/track", json=deleted)).status_code == 200
        assert (await live.runtime.store.catalog.products(["old"]))["old"].availability == (
            "discontinued"
        )
        only_bad = {"writeKey": WRITE_KEY, **update("x", name=["no"])}
        answer = await http.post("/v1/track", json=only_bad)
        assert answer.status_code == 400 and "properties.name" in answer.json()["error"]
        assert await live.runtime.store.count_events() == 3


async def test_a_browser_cannot_write_the_catalog(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live, live.http() as http:
        body = {"writeKey": live.config.keys.public, **update("mug", name="FREE GIFT")}
        answer = await http.post("/v1/track", json=body, headers={"Origin": ORIGIN})
        assert answer.status_code == 200
        assert await live.runtime.store.catalog.products(["mug"]) == {}
