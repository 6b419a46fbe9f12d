"""Ingest: the WebSocket, the Segment-compatible HTTP API, inbound webhooks and the snippet.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.ingest import snippet, webhooks
from rtserver.ingest.budgets import Budgets
from rtserver.ingest.intake import Intake
from rtserver.ingest.segment import receive, recommendations, sdk_routes
from rtserver.ingest.websocket import Ingest

__all__ = [
    "Budgets",
    "Ingest",
    "Intake",
    "receive",
    "recommendations",
    "sdk_routes",
    "snippet",
    "webhooks",
]
