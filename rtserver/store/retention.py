"""Retention: raw events, and webhook deliveries that ended, are deleted after
``store.retention_days``; once before serving and then every hour."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rtserver.clock import Clock
from rtserver.store.database import Store

__all__ = ["RETENTION_INTERVAL_S", "purge_forever", "purge_old_events"]

logger = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


async def purge_old_events(store: Store, clock: Clock, retention_days: int) -> int:
    """One retention round: delete raw events older than ``retention_days``, and webhook
    deliveries that ended before then; return how many events.

    Failures are logged, not raised: the next round tries again.
    """
    before = clock() - retention_days * 86400.0
    try:
        purged = await store.purge_events(before)
        ended = await store.deliveries.purge(before)
    except Exception:  # the task boundary: log and try again next round
        logger.exception("retention purge failed")
        return 0
    if purged or ended:
        logger.info(
            "retention: purged %d events and %d ended webhook deliveries older than %d days",
            purged, ended, retention_days,
        )  # fmt: skip
    return purged


async def purge_forever(
    store: Store,
    clock: Clock,
    retention_days: int,
    stop: asyncio.Event,
    interval_s: float = RETENTION_INTERVAL_S,
) -> None:
    """Purge every ``interval_s`` until ``stop`` is set (the lifespan already purged once)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        await purge_old_events(store, clock, retention_days)
