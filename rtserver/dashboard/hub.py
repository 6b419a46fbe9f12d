"""The dashboard hub: what commits changed, batched into a few updates a second, fanned out to
every viewer through a bounded queue each.

The pipeline calls :meth:`Hub.on_commit` after each commit (cheap: it only notes what changed,
keeping the newest events). :meth:`Hub.run` turns the noted changes into one update every
``interval_s`` (``compose`` reads the store for what changed), encodes it once as a
Server-Sent Events frame, keeps it in a ring of recent updates and puts it on each
subscriber's queue with ``put_nowait``. A subscriber whose queue is full has fallen behind: it
is dropped (its queue ends with ``None``, its stream ends), and its browser reconnects with
``Last-Event-ID``; :meth:`Hub.subscribe` replays what it missed from the ring, or, when the
ring no longer reaches back that far (or the id is from before a restart), starts it with a
full snapshot. So a viewer costs one queue slot per update, never a store read, and 100 viewers
cost what one does, plus the writes.

Update ids are ``<epoch>-<seq>``: the epoch is random per hub, so an id from before a restart
is never mistaken for one of this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sse_starlette import ServerSentEvent

from rtserver.clock import Monotonic
from rtserver.model import Event
from rtserver.store import Changes, Prepared

__all__ = ["Changed", "Hub", "HubClosed", "Subscription", "TooManyViewers", "Update"]

logger = logging.getLogger(__name__)

EVENTS_KEPT = 50
"""Newest events noted between two updates (the feed shows the newest, not every one)."""


class TooManyViewers(Exception):
    """``dashboard.max_viewers`` streams are open already."""


class HubClosed(Exception):
    """The server is shutting down: no new streams."""


@dataclass(slots=True)
class Changed:
    """What the commits since the last update changed."""

    events: deque[tuple[Event, str, float]] = field(
        default_factory=lambda: deque(maxlen=EVENTS_KEPT)
    )
    """The newest stored events: (event, person id, received at)."""
    stored: int = 0
    """How many events were stored (all of them, not only those kept)."""
    timers: bool = False
    runs: bool = False
    mail: bool = False

    def __bool__(self) -> bool:
        return bool(self.stored or self.timers or self.runs or self.mail)

    def absorb(self, older: Changed) -> None:
        """Take back changes an update failed to publish (they are older than ours)."""
        merged = deque(older.events, maxlen=EVENTS_KEPT)
        merged.extend(self.events)  # a full deque drops from the left: the oldest go
        self.events = merged
        self.stored += older.stored
        self.timers |= older.timers
        self.runs |= older.runs
        self.mail |= older.mail


Compose = Callable[[Changed | None], Awaitable[dict[str, Any]]]
"""Builds an update's data from what changed; from everything (a snapshot) when given None."""


@dataclass(frozen=True, slots=True)
class Update:
    """One published update: its sequence number, its id, and its encoded SSE frame."""

    seq: int
    id: str
    frame: bytes


class Subscription:
    """One viewer's queue of frames; ``None`` in it ends the stream."""

    def __init__(self, max_queue: int) -> None:
        self.queue: asyncio.Queue[Update | None] = asyncio.Queue(maxsize=max_queue)
        self.dropped = False


class Hub:
    """Batches commits into updates and fans them out; run :meth:`run` as one task."""

    def __init__(
        self,
        compose: Compose,
        *,
        interval_s: float = 0.25,
        max_queue: int = 64,
        history: int = 240,
        max_subscribers: int = 200,
        idle_s: float = 1.0,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        self.compose = compose
        self.interval_s = interval_s
        self.max_queue = max_queue
        self.max_subscribers = max_subscribers
        self.idle_s = idle_s
        """Longest time without an update while anyone watches (the chart keeps moving)."""
        self.monotonic = monotonic
        self.epoch = secrets.token_hex(3)
        self.seq = 0
        self.subscribers: set[Subscription] = set()
        self.dropped = 0
        """Subscribers dropped for falling behind, since start."""
        self.ring: deque[Update] = deque(maxlen=history)
        self.closed = False
        self._changed = Changed()
        self._lock = asyncio.Lock()
        self._snapshot: tuple[int, bytes] | None = None
        self._published_at = -float("inf")

    # Called by the pipeline after every commit: no I/O, no awaits, little work.

    def on_commit(self, prepared: Prepared, changes: Changes) -> None:
        """Note what one commit changed."""
        changed = self._changed
        if prepared.fresh:
            changed.stored += len(prepared.fresh)
            changed.events.extend(
                zip(prepared.fresh[-EVENTS_KEPT:], prepared.people[-EVENTS_KEPT:],
                    prepared.received_at[-EVENTS_KEPT:], strict=True)
            )  # fmt: skip
        if changes.timers:
            changed.timers = True
        if changes.runs or changes.steps:
            changed.runs = True
        if changes.outbox or changes.deliveries:
            changed.mail = True

    def touch(self, *, mail: bool = False, timers: bool = False, runs: bool = False) -> None:
        """Note a change made outside the pipeline (the sender recorded outcomes)."""
        self._changed.mail |= mail
        self._changed.timers |= timers
        self._changed.runs |= runs

    # Publishing.

    def _id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def publish(self, data: dict[str, Any], kind: str = "update") -> Update:
        """Encode ``data`` once, keep it for replay, and queue it for every subscriber."""
        self.seq += 1
        update = Update(self.seq, self._id(self.seq), _frame(data, kind, self._id(self.seq)))
        self.ring.append(update)
        self._published_at = self.monotonic()
        for subscription in list(self.subscribers):
            try:
                subscription.queue.put_nowait(update)
            except asyncio.QueueFull:
                self._drop(subscription)
        return update

    def _drop(self, subscription: Subscription) -> None:
        """End a subscriber's stream: it fell behind (or the hub closes)."""
        self.subscribers.discard(subscription)
        subscription.dropped = True
        while not subscription.queue.empty():
            subscription.queue.get_nowait()
        subscription.queue.put_nowait(None)
        self.dropped += 1
        logger.info("dashboard: a viewer fell %d updates behind and was dropped", self.max_queue)

    async def flush(self) -> Update | None:
        """Publish what changed since the last update (or a tick: counters and the rate)."""
        async with self._lock:
            return await self._flush()

    async def _flush(self) -> Update | None:
        changed, self._changed = self._changed, Changed()
        try:
            data = await self.compose(changed)
        except BaseException:
            self._changed.absorb(changed)
            raise
        return self.publish(data)

    def replay(self, last_id: str | None) -> list[Update] | None:
        """The updates after ``last_id``, or None when they are not all kept (or the id is not
        one of this hub's): the viewer then needs a snapshot."""
        if not last_id:
            return None
        epoch, _, number = last_id.partition("-")
        if epoch != self.epoch or not number.isdigit() or int(number) > self.seq:
            return None
        seq = int(number)
        if seq == self.seq:
            return []
        if not self.ring or seq < self.ring[0].seq - 1:
            return None
        return list(itertools.islice(self.ring, seq - self.ring[0].seq + 1, None))

    @contextlib.asynccontextmanager
    async def subscribe(self, last_id: str | None = None) -> AsyncIterator[Subscription]:
        """A bounded queue of the updates after ``last_id`` (first a snapshot when they cannot
        be replayed), unsubscribed on exit.

        Raises:
            HubClosed: the server is shutting down.
            TooManyViewers: ``max_subscribers`` are subscribed already.
        """
        if self.closed:
            raise HubClosed("the server is shutting down")
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManyViewers(f"{self.max_subscribers} dashboard viewers already")
        subscription = Subscription(self.max_queue)
        async with self._lock:
            if self._changed:
                await self._flush()  # so that the ring is current before it is replayed
            missed = self.replay(last_id)
            if missed is None or len(missed) >= self.max_queue:
                missed = [await self._snapshot_update()]
            for update in missed:
                subscription.queue.put_nowait(update)
            self.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self.subscribers.discard(subscription)

    async def snapshot(self) -> tuple[str, dict[str, Any]]:
        """Everything now, and the id of the latest update it includes (a page rendered from
        it resumes its stream from that id)."""
        async with self._lock:
            if self._changed:
                await self._flush()
            return self._id(self.seq), await self.compose(None)

    async def _snapshot_update(self) -> Update:
        """Everything as of the latest update, as an update with that update's id (composed
        once per update however many viewers (re)connect)."""
        if self._snapshot is None or self._snapshot[0] != self.seq:
            data = await self.compose(None)
            self._snapshot = (self.seq, _frame(data, "snapshot", self._id(self.seq)))
        return Update(self.seq, self._id(self.seq), self._snapshot[1])

    def close(self) -> None:
        """End every stream and refuse new ones (shutdown: uvicorn waits for open responses)."""
        self.closed = True
        for subscription in list(self.subscribers):
            self.subscribers.discard(subscription)
            while not subscription.queue.empty():
                subscription.queue.get_nowait()
            subscription.queue.put_nowait(None)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish an update every ``interval_s`` while anyone watches and something changed
        (at least every ``idle_s``), until ``stop`` is set. Changes made while nobody watches
        wait for the next subscriber, which publishes them before it replays."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            if stop.is_set() or not self.subscribers:
                continue
            due = self.monotonic() - self._published_at >= self.idle_s
            if self._changed or due:
                try:
                    await self.flush()
                except Exception:  # the task boundary: log it, try again next interval
                    logger.exception("dashboard update failed")


def _frame(data: dict[str, Any], kind: str, event_id: str) -> bytes:
    # '<', '>' and '&' only occur inside JSON strings, so escaping them keeps the JSON equal
    # and makes event data inert even where someone pastes a frame into HTML (as ``tojson``).
    text = orjson.dumps(data).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return ServerSentEvent(data=text, event=kind, id=event_id).encode()
