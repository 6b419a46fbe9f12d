"""Ingest: the WebSocket, the Segment-compatible HTTP API, inbound webhooks and the snippet.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.ingest import shopify, snippet, webhooks, woocommerce
from rtserver.ingest.budgets import Budgets
from rtserver.ingest.intake import Intake
from rtserver.ingest.relays import guarded_fetch
from rtserver.ingest.segment import receive, recommendations, sdk_routes
from rtserver.ingest.websocket import Ingest

__all__ = [
    "Budgets",
    "Ingest",
    "Intake",
    "guarded_fetch",
    "receive",
    "recommendations",
    "sdk_routes",
    "shopify",
    "snippet",
    "webhooks",
    "woocommerce",
]
