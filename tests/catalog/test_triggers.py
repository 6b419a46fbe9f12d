"""Back in Stock and Price Dropped, end to end on a real server: a catalog write (the shop's
backend, with the write key) changes a product, and exactly the people it concerns get exactly
one mail each, showing the catalog's product."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.events import shopper, tracked
from tests.support.mail import smtp_config
from tests.support.server import FakeClock, LiveServer, advance, run_server, send_batch
from tests.support.smtp_server import SMTPServer

MUG = {"id": "mug", "name": "Stoneware Mug", "price": 20.0, "currency": "EUR",
       "url": "https://shop.example/p/mug", "categories": "Kitchen"}  # fmt: skip


def config(tmp_path: Path, smtpd: SMTPServer) -> Any:
    return smtp_config(tmp_path, smtpd, workflows=("back_in_stock", "price_drop"))


async def people(live: LiveServer) -> None:
    """Ann viewed the mug, Bob asked to be told, Cy looked at something else."""
    async with live.ws() as ws:
        await send_batch(
            ws,
            [
                shopper("ann", "ann@example.com"),
                shopper("bob", "bob@example.com"),
                shopper("cy", "cy@example.com"),
                tracked("ann", "Product Viewed", product_id="mug", name="FORGED"),
                tracked("bob", "Back In Stock Requested", product_id="mug"),
                tracked("cy", "Product Viewed", product_id="plate"),
            ],
        )


async def test_back_in_stock_mails_each_interested_person_once(tmp_path: Path) -> None:
    clock = FakeClock()
    async with SMTPServer() as smtpd, run_server(config(tmp_path, smtpd), clock=clock) as live:
        await live.stock({**MUG, "availability": "out_of_stock"})
        await people(live)
        clock.advance(60)
        await live.stock({**MUG, "availability": "in_stock"})
        received = await smtpd.wait_for(2)
        assert sorted(r.rcpt_tos[0] for r in received) == ["ann@example.com", "bob@example.com"]
        for mail in received:
            assert mail.message["Subject"] == "Stoneware Mug is back in stock"
            assert "FORGED" not in mail.message.get_body(("plain",)).get_content()
        await live.stock({**MUG, "availability": "in_stock"})  # the same again: no news
        assert await live.runtime.triggers.process() == 0
        await advance(live, clock, 3600)
        assert len(await live.runtime.store.mail.outbox()) == 2
        assert live.runtime.triggers.emitted == 2


async def test_a_price_drop_tells_viewers_after_an_hour(tmp_path: Path) -> None:
    clock = FakeClock()
    async with SMTPServer() as smtpd, run_server(config(tmp_path, smtpd), clock=clock) as live:
        await live.stock(MUG)
        await people(live)
        await live.stock({**MUG, "price": 19.5})  # 2.5 %: under the 5 % that counts
        await live.stock({**MUG, "sale_price": 15.0})
        await live.runtime.triggers.process()  # the drop's events are stored: the hour starts
        await advance(live, clock, 3600)
        received = await smtpd.wait_for(2)
        assert sorted(r.rcpt_tos[0] for r in received) == ["ann@example.com", "bob@example.com"]
        text = received[0].message.get_body(("plain",)).get_content()
        assert received[0].message["Subject"] == "Price drop: Stoneware Mug"
        assert "€15.00 (was €20.00)" in text
        assert len(await live.runtime.store.mail.outbox()) == 2
