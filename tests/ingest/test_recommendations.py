"""``GET /v1/recommendations``: what a mail would recommend, for the shop's own site, from the
catalog, with the write key only."""

from __future__ import annotations

from pathlib import Path

from tests.support.events import event, shopper, tracked
from tests.support.server import ORIGIN, WRITE_KEY, make_config, run_server, send_batch

PRODUCTS = [
    {"id": f"p{n}", "name": f"Product {n}", "price": 10.0 + n, "categories": c,
     "url": f"http://localhost:8000/p/{n}"}
    for n, c in enumerate(["Kitchen", "Kitchen", "Kitchen", "Garden", "Garden"])
]  # fmt: skip


async def test_recommendations_for_a_user_and_an_anonymous_shopper(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live:
        await live.stock(*PRODUCTS)
        async with live.ws() as ws:
            await send_batch(
                ws,
                [
                    shopper("ann", "ann@example.com"),
                    tracked("ann", "Product Viewed", product_id="p0", name="FORGED"),
                    tracked("ann", "Order Completed", products=[{"product_id": "p1"}]),
                    event(
                        anonymousId="anon-1",
                        event="Product Viewed",
                        properties={"product_id": "p3"},
                    ),
                ],
            )
        async with live.http() as http:
            answer = await http.get("/v1/recommendations", params={"userId": "ann", "n": 3},
                                    auth=(WRITE_KEY, ""))  # fmt: skip
            assert answer.status_code == 200
            products = answer.json()["products"]
            assert len(products) == 3 and "p1" not in {p["id"] for p in products}
            assert {
                "id": "p0", "name": "Product 0", "price": 10.0, "regular_price": None,
                "currency": "EUR", "url": "http://localhost:8000/p/0", "image": None,
                "category": "Kitchen",
            } in products  # fmt: skip
            assert {p["category"] for p in products} == {"Kitchen", "Garden"}
            answer = await http.get("/v1/recommendations", params={"anonymousId": "anon-1"},
                                    auth=(WRITE_KEY, ""))  # fmt: skip
            assert answer.json()["products"][0]["id"] == "p3"
            public = {"key": live.config.keys.public, "userId": "ann"}
            answer = await http.get(
                "/v1/recommendations", params=public, headers={"Origin": ORIGIN}
            )
            assert answer.status_code == 401
            for params, error in (({}, "give userId"), ({"userId": "a", "n": "x"}, "n must")):
                answer = await http.get("/v1/recommendations", params=params, auth=(WRITE_KEY, ""))
                assert answer.status_code == 400 and answer.json()["error"].startswith(error)
