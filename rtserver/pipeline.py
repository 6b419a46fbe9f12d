"""The pipeline: the single consumer of the ingest queue.

Ingest and tracking hand over batches with :meth:`Pipeline.submit` (a bounded queue, so a flood
pushes back instead of growing memory). The pipeline takes every batch that arrived while the
previous commit ran, drops duplicates, resolves persons, and commits the whole group in one
transaction (group commit), then resolves each batch's future: only then do clients get their
ack. A transient storage failure resolves the futures with :class:`StorageUnavailable`: nack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rtserver.config import Config
from rtserver.errors import StoreError
from rtserver.events import Event
from rtserver.store import Store

__all__ = ["Clock", "Keys", "Pipeline", "Runtime", "Submission"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``); tests pass a fake one."""


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys in force: from the config or the environment, else generated and stored."""

    public: str
    write: str
    identity_secret: str


def _new_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # A client that went away never awaits its outcome; mark a failure as seen anyway.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


@dataclass(eq=False, slots=True)
class Submission:
    """One batch of parsed events waiting to be committed."""

    events: Sequence[Event]
    received_at: float
    done: asyncio.Future[None] = field(default_factory=_new_future)


@dataclass(slots=True)
class Stats:
    """Counters the pipeline keeps (the metrics endpoint reads them)."""

    stored: int = 0
    duplicates: int = 0
    commits: int = 0
    failed_commits: int = 0


class Pipeline:
    """Group commit of submitted batches; run :meth:`run` as one task."""

    def __init__(
        self, store: Store, *, max_queue: int, max_group_events: int, queue_timeout_s: float
    ):
        self.store = store
        self.queue: asyncio.Queue[Submission] = asyncio.Queue(maxsize=max_queue)
        self.max_group_events = max_group_events
        self.queue_timeout_s = queue_timeout_s
        self.stats = Stats()

    async def submit(self, events: Sequence[Event], received_at: float) -> asyncio.Future[None]:
        """Queue a batch; the returned future resolves once it is committed.

        Raises:
            TimeoutError: the queue stayed full for ``queue_timeout_s`` (overload).
        """
        submission = Submission(events, received_at)
        try:
            self.queue.put_nowait(submission)
        except asyncio.QueueFull:
            async with asyncio.timeout(self.queue_timeout_s):
                await self.queue.put(submission)
        return submission.done

    async def run(self) -> None:
        """Commit groups forever (until cancelled)."""
        while True:
            group = [await self.queue.get()]
            count = len(group[0].events)
            while count < self.max_group_events and not self.queue.empty():
                group.append(self.queue.get_nowait())
                count += len(group[-1].events)
            try:
                await self._commit(group)
            finally:
                for _ in group:
                    self.queue.task_done()

    async def _commit(self, group: list[Submission]) -> None:
        events = [e for s in group for e in s.events]
        received = [s.received_at for s in group for _ in s.events]
        try:
            prepared = await self.store.prepare(events, received)
            await self.store.commit_batch(prepared)
        except StoreError as exc:
            self.stats.failed_commits += 1
            logger.warning("commit of %d events failed: %s", len(events), exc)
            outcome: BaseException | None = exc
        except Exception as exc:  # the task boundary: log, nack, keep the pipeline alive
            self.stats.failed_commits += 1
            logger.exception("commit of %d events failed unexpectedly", len(events))
            outcome = StoreError(f"store failed: {exc}")
        else:
            self.stats.commits += 1
            self.stats.stored += len(prepared.fresh)
            self.stats.duplicates += prepared.duplicates
            outcome = None
        for submission in group:
            if submission.done.done():  # pragma: no cover - only if a waiter cancelled it
                continue
            if outcome is None:
                submission.done.set_result(None)
            else:
                submission.done.set_exception(outcome)

    async def drain(self) -> None:
        """Wait until every queued batch is committed (or has failed)."""
        await self.queue.join()


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the lifespan built, handed to every request as ``request.state.runtime``."""

    config: Config
    store: Store
    pipeline: Pipeline
    keys: Keys
    clock: Clock
