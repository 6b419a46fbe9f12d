"""Segment messages as browsers and shops send them, with fresh message ids."""

from __future__ import annotations

import uuid
from typing import Any

from rtserver.model.events import sign_identity
from tests.support.server import IDENTITY_SECRET


def event(kind: str = "track", **fields: Any) -> dict[str, Any]:
    """A valid Segment message with a fresh messageId; ``fields`` override."""
    raw: dict[str, Any] = {
        "type": kind,
        "messageId": str(uuid.uuid4()),
        "anonymousId": "anon-1",
        "timestamp": "2026-11-25T10:00:00Z",
    }
    if kind == "track":
        raw["event"] = "Product Viewed"
        raw["properties"] = {"product_id": "p1", "price": 12.5}
    raw.update(fields)
    return raw


def shopper(user: str, email: str, consent: str = "confirmed_opt_in") -> dict[str, Any]:
    """A browser identify verified by the shop's hashes (marketing consent by default)."""
    return event(
        "identify",
        userId=user,
        traits={"email": email, "first_name": "Ann", "consent": consent},
        context={
            "userHash": sign_identity(IDENTITY_SECRET, user),
            "emailHash": sign_identity(IDENTITY_SECRET, email),
        },
    )


def tracked(user: str, event_name: str, **properties: Any) -> dict[str, Any]:
    """A verified shopper's track event."""
    hashes = {"userHash": sign_identity(IDENTITY_SECRET, user)}
    return event("track", event=event_name, userId=user, context=hashes, properties=properties)
