"""``GET /demo``: a small demo shop that loads the snippet, so the whole loop (events, runs,
timers, mails in the dev sink) can be seen without a real shop.

The page is rtserver's own origin, so it needs no ``server.allowed_origins`` entry. Its sign-up
form identifies with an unverified address, as a real shop page without backend hashes would:
the address gets a double opt-in mail (in the dev sink) whose link verifies it.
"""

from __future__ import annotations

from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from rtserver.links import pages
from rtserver.pipeline import Runtime

__all__ = ["PRODUCTS", "shop"]

PRODUCTS: tuple[dict[str, Any], ...] = (
    {"product_id": "lamp", "name": "Brass Desk Lamp", "price": 49.5, "category": "Lighting"},
    {"product_id": "chair", "name": "Oak Reading Chair", "price": 189.0, "category": "Furniture"},
    {"product_id": "rug", "name": "Wool Rug", "price": 129.0, "category": "Textiles"},
    {"product_id": "vase", "name": "Stoneware Vase", "price": 34.0, "category": "Decor"},
    {"product_id": "throw", "name": "Linen Throw", "price": 59.0, "category": "Textiles"},
    {"product_id": "shelf", "name": "Walnut Shelf", "price": 99.0, "category": "Furniture"},
)
"""The demo catalog (prices in the brand's currency)."""


async def shop(request: Request) -> Response:
    """The demo shop page."""
    runtime = cast(Runtime, request.state.runtime)
    context = {
        "brand": runtime.config.mail.brand,
        "key": runtime.keys.public,
        "products": PRODUCTS,
        "base": str(request.base_url).rstrip("/"),
    }
    return pages.TemplateResponse(request, "demo.html", context)
