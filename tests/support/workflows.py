"""The cart-abandonment workflow the engine and dashboard tests share: one definition,
and fresh copies of it with some keys replaced."""

from __future__ import annotations

import copy
from typing import Any

CART_WORKFLOW: dict[str, Any] = {
    "name": "cart_abandonment",
    "trigger": "Product Added",
    "run_key": "properties.cart_id",
    "exit_on": ["Order Completed"],
    "reentry": "7d",
    "step": [
        {"wait_inactive": "30m"},
        {"send": "cart_reminder"},
        {"wait_until": "Email Clicked", "timeout": "24h"},
        {
            "if": "not run.wait_met and person.orders_since(run.started) == 0",
            "send": "cart_reminder_2",
        },
    ],
}
"""A cart left 30 minutes gets a reminder; without a click within 24 hours and without an
order since the run started, a second one. One run per cart; an order ends it; the same cart
may start again a week after its run ended."""


def cart_workflow(**changes: Any) -> dict[str, Any]:
    """A fresh deep copy of :data:`CART_WORKFLOW` with the keys of ``changes`` replaced
    (``name="cart"``, ``step=[...]``, ``reentry="always"``...)."""
    return {**copy.deepcopy(CART_WORKFLOW), **changes}
