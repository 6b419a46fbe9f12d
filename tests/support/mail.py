"""What the mail tests share.

A shop on a real store and a fake clock (:class:`Shop`, with the ``shop``, ``clock`` and
``templates`` fixtures: a test module imports them as ``shop_fixture``, ``clock_fixture`` and
``templates_fixture``) and a sender on it relaying to a test SMTP server (:func:`make_sender`);
and for tests against a live server, a config whose mail goes out by SMTP with the shipped cart
workflow (:func:`smtp_config`) and a product to put in a cart (:data:`LAMP`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rtserver.config.schema import Config, IngestConfig, load_config
from rtserver.engine.engine import Engine
from rtserver.mail.render import Mailer
from rtserver.mail.sender import Sender
from rtserver.mail.smtp import Relay
from rtserver.mail.tokens import Tokens
from rtserver.model.events import parse_event
from rtserver.model.products import Product
from rtserver.runtime import load_rules
from rtserver.store.database import Store
from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT, FakeClock, make_config
from tests.support.smtp_server import SMTPServer

NOW = 1_800_000_000.0
SECRET = "tokens-secret-0123456789abcdefghijklmnop"
LIMITS = IngestConfig()
NOTE_HTML = """{% block subject %}Note {{ run.get("key") or "" }}{% endblock %}<html><body>
<p>cart:{% for p in cart %} {{ p.id }}x{{ p.quantity }}{% endfor %}</p>
<p>recs:{% for p in recommendations %} {{ p.id }}{% endfor %}</p></body></html>
"""
NOTE_TEXT = """cart:{% for p in cart %} {{ p.id }}x{{ p.quantity }}{% endfor %} \
recs:{% for p in recommendations %} {{ p.id }}{% endfor %}
"""


def product(pid: str, category: str | None = None, **fields: Any) -> Product:
    """A catalog product: ``fields`` as the catalog names them (name, price, url...)."""
    fields.setdefault("name", pid.upper())
    return Product(pid, categories=(category,) if category else (), **fields)


@dataclass
class Shop:
    """A store with persons, their events and queued mails, on a fake clock."""

    store: Store
    clock: FakeClock
    config: Config
    engine: Engine | None = None

    def use(self, config: Config) -> None:
        """Decide later events with ``config``'s workflows."""
        self.config, self.engine = config, None

    async def commit(self, raws: Sequence[dict[str, Any]]) -> None:
        """Commit trusted (server) events and what the config's workflows decide on them."""
        if self.engine is None:
            self.engine = Engine(load_rules(self.config)[0], self.store)
        engine = self.engine
        events = [parse_event(raw, LIMITS, source="server") for raw in raws]
        now = self.clock()
        await self.store.group_commit(events, [now] * len(events), engine.plan([], now))

    async def person(self, user: str, address: str, consent: str = "confirmed_opt_in") -> str:
        """A person with a verified email and a marketing consent; their person id."""
        traits = {"email": address, "consent": consent, "first_name": user.title()}
        await self.commit([event("identify", userId=user, anonymousId=None, traits=traits)])
        return f"u:{user}"

    async def track(self, user: str, name: str, **properties: Any) -> None:
        await self.commit([event(userId=user, anonymousId=None, event=name, properties=properties)])

    async def stock(self, *products: Product) -> None:
        """Put ``products`` in the catalog (as a feed import would)."""
        await self.store.catalog.upsert(list(products), "import", self.clock())

    async def queue(
        self,
        mail_id: str,
        person_id: str,
        *,
        template: str = "note",
        marketing: bool = False,
        recipient: str | None = None,
        created: float | None = None,
        due: float | None = None,
    ) -> None:
        now = self.clock()
        created = now if created is None else created
        due = now if due is None else due
        await self.store.mail.queue(
            [(mail_id, None, None, person_id, "test", template, "", marketing, recipient, due,
              created, now, "{}")]
        )  # fmt: skip

    async def row(self, mail_id: str) -> dict[str, Any]:
        row = await self.store.mail.get(mail_id)
        assert row is not None
        return row


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture(name="templates")
def templates_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    (folder / "email").mkdir(parents=True)
    (folder / "email" / "note.html").write_text(NOTE_HTML)
    (folder / "email" / "note.txt").write_text(NOTE_TEXT)
    return folder


def shop_config(tmp_path: Path, templates: Path, **sections: Any) -> Config:
    mail = {"frequency_cap": "off", "templates": str(templates)}
    return make_config(tmp_path, mail=mail, **sections)


@pytest.fixture(name="shop")
def shop_fixture(store: Store, clock: FakeClock, tmp_path: Path, templates: Path) -> Shop:
    return Shop(store, clock, shop_config(tmp_path, templates))


def make_sender(shop: Shop, port: int, templates: Path, tmp_path: Path, **mail: Any) -> Sender:
    """A sender on the shop's store and clock, relaying to ``127.0.0.1:port``."""
    config = make_config(tmp_path, mail={"rate_per_s": 1000.0, **mail}).mail
    mailer = Mailer(config, "http://rt.test", Tokens(SECRET, shop.clock), template_dir=templates)
    relay = Relay("127.0.0.1", port, timeout_s=TIMEOUT_UNIT)
    return Sender(shop.store, mailer, relay, config, shop.clock)


# A live server that mails by SMTP

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {wf["name"]: wf for wf in load_config(ROOT / "config.toml", env={}).workflow}


LAMP = {
    "cart_id": "c1",
    "product_id": "sku-lamp",
    "name": "Brass Desk Lamp",
    "price": 49.5,
    "currency": "EUR",
    "url": "https://shop.example/products/lamp",
    "image_url": "https://shop.example/img/lamp.jpg",
}


LAMP_PRODUCT = {
    "id": "sku-lamp",
    "name": "Brass Desk Lamp",
    "price": 49.5,
    "currency": "EUR",
    "url": "https://shop.example/products/lamp",
    "image": "https://shop.example/img/lamp.jpg",
    "categories": "Home > Lighting",
}
"""The catalog's row of :data:`LAMP` (put it there with ``LiveServer.stock``)."""


def smtp_config(
    tmp_path: Path,
    smtpd: SMTPServer,
    *,
    workflows: Sequence[str] = ("cart_abandonment",),
    keys: dict[str, Any] | None = None,
    **mail: Any,
) -> Any:
    """Mail by SMTP to ``smtpd``, shipped workflows (the cart's by default), the shop at
    https://shop.example; ``keys`` adds to the test keys (a platform's secret)."""
    return make_config(
        tmp_path,
        keys=keys or {},
        workflow=[SHIPPED[name] for name in workflows],
        mail={
            "transport": "smtp",
            "brand": {"url": "https://shop.example"},
            "smtp": {"host": smtpd.host, "port": smtpd.port, "timeout_s": TIMEOUT_UNIT},
            "frequency_cap": "off",
            **mail,
        },
    )
