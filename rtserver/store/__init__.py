"""The store: every line of SQL, over one SQLite file (schema, writer, outbox, deliveries).

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.store.backup import backup, pending_migrations
from rtserver.store.catalog import Change, FeedState
from rtserver.store.changes import Changes, Prepared
from rtserver.store.database import Store
from rtserver.store.deliveries import Delivery, delivery_row
from rtserver.store.outbox import NEVER, Claim, Dropped
from rtserver.store.polls import PollState
from rtserver.store.retention import purge_forever, purge_old_events
from rtserver.store.writer import Plan, Source

__all__ = [
    "Change",
    "Changes",
    "Claim",
    "Delivery",
    "Dropped",
    "FeedState",
    "NEVER",
    "Plan",
    "PollState",
    "Prepared",
    "Source",
    "Store",
    "backup",
    "delivery_row",
    "pending_migrations",
    "purge_forever",
    "purge_old_events",
]
