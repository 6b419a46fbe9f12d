"""``GET /demo``: a small demo shop that loads the snippet, so the whole loop (events, runs,
timers, mails in the dev sink) can be seen without a real shop; and what ``rtserver demo``
changes in a config so that loop takes two minutes (:func:`demo_config`).

The page is rtserver's own origin, so it needs no ``server.allowed_origins`` entry. Its sign-up
form identifies with an unverified address, as a real shop page without backend hashes would:
the address gets a double opt-in mail (in the dev sink) whose link verifies it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from rtserver.config import BrandConfig, Config, load_config, parse_duration
from rtserver.mail import pages
from rtserver.model import Product

__all__ = ["DEMO_STORE", "PRODUCTS", "Shop", "catalog", "demo_config", "scaled", "shop"]

DEMO_STORE = "rtserver-demo.db"
"""The demo's own store, so a demo never mixes with (or fills) the real one."""
DURATION_KEYS = frozenset({"wait", "wait_inactive", "timeout", "schedule", "reentry"})
"""Workflow and step keys that hold a duration ('reentry' may also be 'never' or 'always')."""

PRODUCTS: tuple[dict[str, Any], ...] = (
    {"product_id": "lamp", "name": "Brass Desk Lamp", "price": 49.5, "category": "Lighting"},
    {"product_id": "chair", "name": "Oak Reading Chair", "price": 189.0, "category": "Furniture"},
    {"product_id": "rug", "name": "Wool Rug", "price": 129.0, "category": "Textiles"},
    {"product_id": "vase", "name": "Stoneware Vase", "price": 34.0, "category": "Decor"},
    {"product_id": "throw", "name": "Linen Throw", "price": 59.0, "category": "Textiles"},
    {"product_id": "shelf", "name": "Walnut Shelf", "price": 99.0, "category": "Furniture"},
)
"""The demo catalog (prices in the brand's currency)."""


def catalog(config: Config) -> list[Product]:
    """The demo's products as catalog rows: links to the demo page the server serves (its
    public URL's host is always a shop host), prices in the brand's currency."""
    base = config.server.public_url.rstrip("/")
    return [
        Product(
            id=p["product_id"],
            name=p["name"],
            url=f"{base}/demo#{p['product_id']}",
            price=p["price"],
            currency=config.mail.brand.currency,
            categories=(p["category"],),
        )
        for p in PRODUCTS
    ]


@dataclass(frozen=True, slots=True)
class Shop:
    """What the demo page shows: the shop's brand and the public key its snippet sends with."""

    brand: BrandConfig
    public_key: str


async def shop(request: Request) -> Response:
    """The demo shop page."""
    demo = cast(Shop, request.state.shop)
    context = {
        "brand": demo.brand,
        "key": demo.public_key,
        "products": PRODUCTS,
        "base": str(request.base_url).rstrip("/"),
    }
    return pages.TemplateResponse(request, "demo.html", context)


def _faster(value: Any, speed: float) -> Any:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return value  # 'never', 'always', or a mistake that check-config names as it is
    return f"{max(1, math.ceil(seconds / speed))}s"


def scaled(table: Mapping[str, Any], speed: float) -> dict[str, Any]:
    """``table`` (a workflow, a step or a variant) with every duration ``speed`` times
    shorter, rounded up to whole seconds: ``"30m"`` at 60x is ``"30s"``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in DURATION_KEYS:
            value = _faster(value, speed)
        elif key in ("step", "variant") and isinstance(value, list | tuple):
            value = [scaled(v, speed) if isinstance(v, Mapping) else v for v in value]
        out[key] = value
    return out


def demo_config(
    path: str | Path | None,
    speed: float,
    store: str = DEMO_STORE,
    *,
    host: str | None = None,
    port: int | None = None,
) -> Config:
    """The config at ``path`` made for a demo: its own store, mail kept by the dev sink (shown
    in the dashboard's inbox), no frequency cap, quiet hours or holdout (every visitor gets the
    mails the tour promises), a click counted as a person's after a second, links in mail to
    the address the demo is served on, and every workflow ``speed`` times faster.

    Raises:
        ConfigError: as :func:`~rtserver.config.schema.load_config`.
    """
    served = load_config(path).server
    host = host or served.host
    port = served.port if port is None else port
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    overrides = {
        "server": {"host": host, "port": port, "public_url": f"http://{shown}:{port}"},
        "store": {"path": store},
        "mail": {
            "transport": "sink",
            "frequency_cap": "off",
            "quiet_hours": "",
            "scanner_window_s": 1.0,
        },
    }
    demo = load_config(path, overrides=overrides)
    workflows = tuple(
        {**scaled(workflow, speed), **({"holdout": 0} if "holdout" in workflow else {})}
        for workflow in demo.workflow
    )
    return dataclasses.replace(demo, workflow=workflows)
