"""Ingest: the WebSocket, the Segment-compatible HTTP API, inbound webhooks and the snippet.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.ingest import shopify, snippet, webhooks, woocommerce
from rtserver.ingest.budgets import Budgets
from rtserver.ingest.intake import Intake
from rtserver.ingest.relays import guarded_fetch
from rtserver.ingest.segment import (
    CORS_OPTIONS,
    recommendations,
    sdk_routes,
    segment_routes,
    unknown_type,
)
from rtserver.ingest.websocket import Ingest, IngestMount

__all__ = [
    "CORS_OPTIONS",
    "Budgets",
    "Ingest",
    "IngestMount",
    "Intake",
    "guarded_fetch",
    "recommendations",
    "sdk_routes",
    "segment_routes",
    "shopify",
    "snippet",
    "unknown_type",
    "webhooks",
    "woocommerce",
]
