"""Product content in mail comes from the catalog, never from a browser: the poisoning probe as
an end-to-end test on a real server, a real WebSocket and a real SMTP server.

An anonymous browser views an existing product with a phishing name, price and URL, often
enough to make it the shop's most popular product. A verified customer who browses three
categories then gets a welcome mail and a cart mail: both show the catalog's products (name,
image, price, a link to the shop's host), picked from what she browsed, and nothing the
attacker sent. ``/c/`` refuses a signed link to another host."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.events import event, shopper, tracked
from tests.support.mail import smtp_config
from tests.support.server import FakeClock, advance, run_server, send_batch, sent
from tests.support.smtp_server import SMTPServer

SHOP = "https://shop.example"
CATALOG = [
    {"id": f"{category[:4].lower()}-{n}", "name": f"{category} {name}", "price": 10.0 * n + 0.5,
     "currency": "EUR", "url": f"{SHOP}/p/{category.lower()}-{n}",
     "image": f"{SHOP}/img/{category.lower()}-{n}.jpg", "categories": f"Home > {category}"}
    for category, names in (
        ("Lighting", ("Brass Lamp", "Floor Lamp", "Pendant")),
        ("Furniture", ("Oak Desk", "Armchair", "Shelf")),
        ("Textiles", ("Wool Rug", "Linen Throw", "Cushion")),
        ("Garden", ("Planter", "Hose", "Bench")),
    )
    for n, name in enumerate(names, 1)
]  # fmt: skip
POISON = {
    "product_id": "ligh-1",
    "name": "FREE GIFT CARD",
    "price": 0,
    "url": "https://phish.example/claim",
    "image_url": "https://phish.example/gift.png",
    "category": "Gift cards",
}
BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}


def anonymous(anonymous_id: str, event_name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return event("track", event=event_name, anonymousId=anonymous_id, properties=properties)


def parts(message: Any) -> tuple[str, str]:
    html = message.get_body(("html",)).get_content()
    return html, message.get_body(("plain",)).get_content()


async def test_a_browser_s_forged_product_fields_reach_no_mail(tmp_path: Path) -> None:
    clock = FakeClock()
    async with SMTPServer() as smtpd:
        config = smtp_config(tmp_path, smtpd, workflows=("cart_abandonment", "welcome"))
        async with run_server(config, clock=clock) as live:
            await live.stock(*CATALOG)
            async with live.ws() as ws:  # the attacker: anonymous, the public key only
                await send_batch(ws, [anonymous(f"evil-{i}", "Product Viewed", POISON)
                                      for i in range(20)])  # fmt: skip
            async with live.ws() as ws:  # the customer browses three categories
                browsing = [
                    tracked(
                        "u1", "Product Viewed", product_id=pid, name="x", url="https://x.example"
                    )
                    for pid in ("furn-1", "text-1", "text-2", "ligh-2", "ligh-3")
                ]
                await send_batch(ws, [shopper("u1", "ann@example.com"), *browsing])
                await send_batch(ws, [tracked("u1", "Signed Up")])
                await send_batch(
                    ws, [tracked("u1", "Product Added", product_id="furn-3", cart_id="c1",
                                 name="FREE GIFT CARD", price=0, url=POISON["url"])]
                )  # fmt: skip
            await advance(live, clock, 1800)
            received = await smtpd.wait_for(2)
            await sent(live, 2)
            mails = {m.message["Subject"]: parts(m.message) for m in received}
            (welcome,) = [p for s, p in mails.items() if "cart" not in s.lower()]
            (cart,) = [p for s, p in mails.items() if "cart" in s.lower()]
            for html, text in (welcome, cart):
                for part in (html, text):
                    assert "FREE GIFT CARD" not in part and "phish.example" not in part
                    assert "x.example" not in part
                images = [i for i in re.findall(r'<img src="([^"]+)"', html) if "/o/" not in i]
                assert images and all(i.startswith(f"{SHOP}/img/") for i in images)
                targets = [
                    live.runtime.tokens.read_click(urllib.parse.urlsplit(u).path.rsplit("/", 1)[1])
                    for u in re.findall(r'href="(https?://[^"]+/c/[^"]+)"', html)
                ]
                hosts = {urllib.parse.urlsplit(t[1]).hostname for t in targets if t}
                assert hosts == {"shop.example"}
            cart_html = cart[0]
            assert "Furniture Shelf" in cart_html and "\u20ac30.50" in cart_html
            # The picks come from what she browsed (three categories), never from the garden
            # she never looked at, nor from the attacker's forged "popular" product.
            shown = re.findall(
                r">((?:Lighting|Furniture|Textiles|Garden) [A-Za-z ]+)</a>", welcome[0] + cart_html
            )
            categories = {name.split()[0] for name in shown}
            assert categories == {"Lighting", "Furniture", "Textiles"}, shown
            # A click on a product is known as that product's (recommendations learn from it),
            # and the products each mail showed are kept (shown and ignored ranks lower).
            link = re.search(r'<a href="(https?://[^"]+/c/[^"]+)"><img', welcome[0])
            assert link is not None
            clock.advance(60)
            async with live.http() as http:
                answer = await http.get(urllib.parse.urlsplit(link.group(1)).path, headers=BROWSER)
            target = urllib.parse.urlsplit(answer.headers["location"]).path
            clicked_id = next(
                p["id"] for p in CATALOG if urllib.parse.urlsplit(p["url"]).path == target
            )
            store = live.runtime.store
            assert await store.mail.clicked(["u:u1"], 0) == {clicked_id: 1}
            shown = await store.mail.shown("u:u1", 0)
            assert shown[clicked_id] >= 1 and "furn-3" not in shown  # in the cart: no pick
            (row, *_) = await live.runtime.store.mail.outbox()
            token = live.runtime.tokens.click(row["id"], "https://phish.example/claim")
            async with live.http() as http:
                answer = await http.get(f"/c/{token}", headers=BROWSER)
            assert answer.status_code == 404 and "location" not in answer.headers
