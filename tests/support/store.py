"""Events through a real store as the pipeline puts them there: parsed (a browser one with its
identity verified) and committed as one group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtserver.config.schema import IngestConfig
from rtserver.model.events import Event, Source, parse_event, verify_identity
from rtserver.store.changes import Prepared
from rtserver.store.database import Store
from tests.support.server import IDENTITY_SECRET

LIMITS = IngestConfig()


def parse(raw: dict[str, Any], source: Source = "server") -> Event:
    """An accepted event; a browser one goes through identity verification as ingest does."""
    parsed = parse_event(raw, LIMITS, source=source)
    return verify_identity(parsed, IDENTITY_SECRET) if source == "browser" else parsed


async def store_group(store: Store, events: Sequence[Event], at: float = 1000.0) -> Prepared:
    """Prepare and commit one group, as the pipeline does."""
    prepared = await store.prepare(events, [at] * len(events))
    await store.commit_batch(prepared)
    return prepared
