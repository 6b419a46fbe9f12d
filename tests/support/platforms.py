"""Shop platforms' webhooks as Shopify and WooCommerce send them: the fixture payloads of
``tests/fixtures/<platform>/`` and the signature each platform puts on a body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
from pathlib import Path
from typing import Any

import orjson

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHOPIFY_SECRET = "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"
WOOCOMMERCE_SECRET = "wc-secret-Xq7#Lm2$Rv9@Tz4!Kp8&Hs5"


def payload(platform: str, name: str) -> dict[str, Any]:
    """The fixture ``tests/fixtures/<platform>/<name>.json`` without its ``_source`` note."""
    raw: dict[str, Any] = orjson.loads((FIXTURES / platform / f"{name}.json").read_bytes())
    raw.pop("_source", None)
    return raw


def signature(body: bytes, secret: str) -> str:
    """What both platforms send: the base64 HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(body: bytes, topic: str, secret: str = SHOPIFY_SECRET) -> dict[str, str]:
    """The headers of a Shopify webhook delivery of ``body`` on ``topic``."""
    return {
        "content-type": "application/json",
        "x-shopify-topic": topic,
        "x-shopify-hmac-sha256": signature(body, secret),
        "x-shopify-shop-domain": "lumen-and-co.myshopify.com",
        "x-shopify-api-version": "2024-10",
        "x-shopify-webhook-id": hashlib.md5(body).hexdigest(),
        "x-shopify-triggered-at": "2026-11-25T15:20:14.000000Z",
    }


def woocommerce_headers(
    body: bytes, topic: str, secret: str = WOOCOMMERCE_SECRET
) -> dict[str, str]:
    """The headers of a WooCommerce webhook delivery of ``body`` on ``topic``."""
    resource, _, event = topic.partition(".")
    return {
        "content-type": "application/json",
        "x-wc-webhook-topic": topic,
        "x-wc-webhook-resource": resource,
        "x-wc-webhook-event": event,
        "x-wc-webhook-signature": signature(body, secret),
        "x-wc-webhook-source": "https://shop.example/",
        "x-wc-webhook-id": "3",
        "x-wc-webhook-delivery-id": hashlib.md5(body).hexdigest(),
        "user-agent": "WooCommerce/9.4.2 Hookshot (WordPress/6.7.1)",
    }


def standing(database: str | Path, person_id: str) -> dict[str, Any] | None:
    """A profile's consent, orders and spend, read from the store's file on a connection of
    its own (read-only); None if there is no such profile."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT consent, orders_count, total_spent FROM profiles WHERE person_id = ?",
            (person_id,),
        ).fetchone()
    if row is None:
        return None
    return dict(zip(("consent", "orders_count", "total_spent"), row, strict=True))
