"""What the ingest routes are handed: the settings, the keys in force, where accepted events go,
the store, the clock and what checks SNS messages. Built once by the lifespan
(:mod:`rtserver.runtime`) and read by the WebSocket, the HTTP API and the signed webhooks as
``request.state.intake``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rtserver.clock import Clock
from rtserver.config import Config, Keys
from rtserver.ingest.budgets import Budgets
from rtserver.mail import Sns
from rtserver.model import Submit
from rtserver.store import Store

__all__ = ["Intake"]


@dataclass(frozen=True, slots=True)
class Intake:
    """The ingest routes' dependencies, and nothing else of the running server."""

    config: Config
    keys: Keys
    submit: Submit
    """The pipeline's :meth:`~rtserver.engine.pipeline.Pipeline.submit`."""
    store: Store
    """Replayed webhook ids and the mails that bounce and complaint reports name."""
    clock: Clock
    budgets: Budgets
    """What each client address may still send, and the disk space guard."""
    sns: Sns
    """SNS's signing certificates and subscription confirmations (the ``ses`` webhook)."""
    catalog_changed: Callable[[], None] = lambda: None
    """Wakes the catalog triggers after a write-key or webhook event changed a product."""
    recommend: Callable[[str, float, int], Awaitable[list[Any]]] | None = None
    """``(person id, now, n)``: what a mail to that person would recommend (mail products)."""
