"""``GET /demo``: a small demo shop that loads the snippet, so the whole loop (events, runs,
timers, mails in the dev sink) can be seen without a real shop; and what ``rtserver demo``
changes in a config so that loop takes two minutes (:func:`demo_config`).

The page is rtserver's own origin, so it needs no ``server.allowed_origins`` entry. Its sign-up
form identifies with an unverified address, as a real shop page without backend hashes would:
the address gets a double opt-in mail (in the dev sink) whose link verifies it.

The shop lives under ``/demo``, which the demo makes ``mail.brand.url``: its product pages
(``/demo/product/<id>``), their images (``/demo/image/<id>.svg``) and its cart page
(``/demo/cart/<token>``, the mail's "back to your cart": a signed list of catalog product ids
and quantities, never who the cart was of) are all on the shop's own host, so mail links to
them pass the catalog's link-host rule and ``/c/`` redirects there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rtserver.config import BrandConfig, Config, load_config, parse_duration
from rtserver.mail import Links, pages
from rtserver.model import Product

__all__ = [
    "DEMO_STORE",
    "PATH",
    "PRODUCTS",
    "Shop",
    "catalog",
    "demo_config",
    "routes",
    "scaled",
    "shop",
]

PATH = "/demo"
"""Where the shop is served, under ``server.public_url``: the demo's ``mail.brand.url``."""

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
BY_ID = {p["product_id"]: i for i, p in enumerate(PRODUCTS)}
TILES = ("#b45309", "#78350f", "#4d7c0f", "#9a3412", "#1d4ed8", "#6d28d9")
"""Each product image's colour."""


def catalog(config: Config) -> list[Product]:
    """The demo's products as catalog rows: links to the demo page the server serves (its
    public URL's host is always a shop host), prices in the brand's currency."""
    base = config.server.public_url.rstrip("/") + PATH
    return [
        Product(
            id=p["product_id"],
            name=p["name"],
            url=f"{base}/product/{p['product_id']}",
            image=f"{base}/image/{p['product_id']}.svg",
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


def _page(
    request: Request, shown: str = "", restored: list[dict[str, Any]] | None = None
) -> Response:
    demo = cast(Shop, request.state.shop)
    context = {
        "brand": demo.brand,
        "key": demo.public_key,
        "products": PRODUCTS,
        "base": str(request.base_url).rstrip("/"),
        "shown": shown,
        "restored": restored or [],
    }
    return pages.TemplateResponse(request, "demo.html", context)


async def shop(request: Request) -> Response:
    """``GET /demo``: the demo shop page."""
    return _page(request)


async def product(request: Request) -> Response:
    """``GET /demo/product/<id>``: the shop page, that product marked (a product's link)."""
    pid = request.path_params["product_id"]
    if pid not in BY_ID:
        return Response("no such product", status_code=404, media_type="text/plain")
    return _page(request, shown=pid)


async def image(request: Request) -> Response:
    """``GET /demo/image/<id>.svg``: a product's image, a tile with its initial."""
    index = BY_ID.get(request.path_params["product_id"])
    if index is None:
        return Response("no such product", status_code=404, media_type="text/plain")
    name = str(PRODUCTS[index]["name"])
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="240" height="240" viewBox="0 0 240 240">'
        f'<rect width="240" height="240" fill="{TILES[index]}"/>'
        '<text x="120" y="150" font-family="Georgia, serif" font-size="96" fill="#fff" '
        f'text-anchor="middle">{escape(name[0])}</text></svg>'
    )
    headers = {"Cache-Control": "public, max-age=86400"}
    return Response(svg, media_type="image/svg+xml", headers=headers)


async def cart(request: Request) -> Response:
    """``GET /demo/cart/<token>``: the mail's "back to your cart" link; the shop page with the
    signed cart's products back in the cart (products the catalog does not have are left out).
    A bad or expired token shows the shop with an empty cart."""
    links = cast(Links, request.state.links)
    items = links.tokens.read_cart(request.path_params["token"]) or []
    restored = [{"index": BY_ID[pid], "quantity": n} for pid, n in items if pid in BY_ID]
    return _page(request, restored=restored)


routes = [
    Route(PATH, shop),
    Route(f"{PATH}/product/{{product_id}}", product),
    Route(f"{PATH}/image/{{product_id}}.svg", image),
    Route(f"{PATH}/cart/{{token}}", cart),
]
"""The demo shop's pages, mounted by the app."""


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
    the address the demo is served on (``mail.brand.url`` is its shop, ``<public_url>/demo``),
    and every workflow ``speed`` times faster.

    Raises:
        ConfigError: as :func:`~rtserver.config.schema.load_config`.
    """
    served = load_config(path).server
    host = host or served.host
    port = served.port if port is None else port
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    public_url = f"http://{shown}:{port}"
    overrides = {
        "server": {"host": host, "port": port, "public_url": public_url},
        "store": {"path": store},
        "mail": {
            "brand": {"url": public_url + PATH},
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
