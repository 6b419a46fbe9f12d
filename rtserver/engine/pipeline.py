"""The pipeline: the single consumer of the ingest queue.

Ingest (the WebSocket, the HTTP API, webhooks, mail links) hands over batches with
:meth:`Pipeline.submit` (a bounded queue, so a flood pushes back instead of growing memory). The
pipeline takes every batch that arrived while the previous commit ran, drops duplicates, resolves
persons, and commits the whole group in one transaction (group commit), then resolves each batch's
future: only then do clients get their ack. A transient storage failure resolves the futures with
:class:`StorageUnavailable`: nack. When the task stops (cancelled at shutdown), every batch it has
not committed gets :class:`StorageUnavailable` too, so no client waits forever and each one resends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rtserver.clock import Clock
from rtserver.engine.engine import Engine
from rtserver.errors import StorageUnavailable, StoreError
from rtserver.model import Event
from rtserver.store import Changes, Prepared, Store

__all__ = ["Pipeline", "Stats", "Submission"]

logger = logging.getLogger(__name__)


def _new_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return future


@dataclass(eq=False, slots=True)
class Submission:
    """One batch of parsed events waiting to be committed."""

    events: Sequence[Event]
    received_at: float
    fired: Sequence[str] = ()
    """Run ids whose timers came due (a submission of the timer driver)."""
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
        self,
        store: Store,
        *,
        max_queue: int,
        max_group_events: int,
        queue_timeout_s: float,
        engine: Engine | None = None,
        clock: Clock = time.time,
        fire_retry_s: float = 5.0,
    ):
        self.store = store
        self.engine = engine
        self.clock = clock
        self.listeners: list[Callable[[Prepared, Changes], None]] = []
        """Called after each commit with what it wrote (the dashboard hub, tests)."""
        self.fire_retry_s = fire_retry_s
        self.queue: asyncio.Queue[Submission] = asyncio.Queue(maxsize=max_queue)
        self.max_group_events = max_group_events
        self.queue_timeout_s = queue_timeout_s
        self.stats = Stats()
        self.healthy = asyncio.Event()
        """Set while commits succeed; cleared by a failed one (``/readyz`` answers 503), set
        again by the next commit or store probe that succeeds."""
        self.healthy.set()
        self._held: Submission | None = None
        """Taken from the queue but left for the next group, which it would have overfilled."""

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

    async def fire(self, run_ids: list[str]) -> None:
        """Decide the runs whose timers came due (the timer driver's ``on_fire``).

        They go through the queue like events, so one task decides everything, in order. If
        the commit fails, the timers are armed again for a retry: nothing is lost, since they
        are still pending in the store.
        """
        submission = Submission((), self.clock(), fired=run_ids)
        await self.queue.put(submission)
        try:
            await submission.done
        except StoreError:
            if self.engine is not None:
                for run_id in run_ids:
                    self.engine.arm(run_id, self.clock() + self.fire_retry_s)

    async def commit_now(
        self, events: Sequence[Event] = (), received_at: float = 0.0, fired: Sequence[str] = ()
    ) -> None:
        """Decide and commit one batch in the caller's task, bypassing the queue.

        For ``rtserver simulate``, which owns the only task: there is nobody to group with.

        Raises:
            StoreError: the commit failed.
        """
        outcome = await self._commit([Submission(events, received_at, fired=fired)])
        if outcome is not None:
            raise outcome

    async def run(self) -> None:
        """Commit groups until cancelled; then fail every batch not committed (clients resend)."""
        group: list[Submission] = []
        try:
            while True:
                group = await self._take_group()
                outcome = await self._commit(group)
                if outcome is None or isinstance(outcome, StorageUnavailable) or len(group) == 1:
                    self._resolve(group, outcome)
                    group = []
                # Not transient: maybe one batch's fault (a poison event). Retried one by one,
                # it fails alone instead of failing, again and again, whoever it was grouped with.
                while group:
                    alone = group[:1]
                    self._resolve(alone, await self._commit(alone))
                    del group[0]
        finally:
            left = group
            if self._held is not None:
                left.append(self._held)
                self._held = None
            while not self.queue.empty():
                left.append(self.queue.get_nowait())
            self._resolve(left, StorageUnavailable("the pipeline stopped: resend"))

    async def _take_group(self) -> list[Submission]:
        """The next batch and every one queued behind it, up to ``max_group_events``."""
        first, self._held = self._held, None
        if first is None:
            first = await self.queue.get()
        group, count = [first], len(first.events)
        while not self.queue.empty():
            submission = self.queue.get_nowait()
            if count + len(submission.events) > self.max_group_events:
                self._held = submission  # a batch bigger than the limit still goes alone
                break
            group.append(submission)
            count += len(submission.events)
        return group

    async def _commit(self, group: list[Submission]) -> BaseException | None:
        """Commit one group; return what its futures resolve with (None: committed)."""
        events = [e for s in group for e in s.events]
        received = [s.received_at for s in group for _ in s.events]
        fired = [run_id for s in group for run_id in s.fired]
        try:
            plan = self.engine.plan(fired, self.clock()) if self.engine is not None else None
            prepared, changes = await self.store.group_commit(events, received, plan)
            if self.engine is not None:
                merged = [link.person_id for link in prepared.links if link.merge_from]
                self.engine.committed(changes, merged)
            for listener in self.listeners:
                listener(prepared, changes)
        except StoreError as exc:
            self.stats.failed_commits += 1
            self.healthy.clear()
            logger.warning("commit of %d events failed: %s", len(events), exc)
            return exc
        except Exception as exc:  # the task boundary: log, nack, keep the pipeline alive
            self.stats.failed_commits += 1
            self.healthy.clear()
            logger.exception("commit of %d events failed unexpectedly", len(events))
            return StoreError(f"store failed: {exc}")
        self.healthy.set()
        self.stats.commits += 1
        self.stats.stored += len(prepared.fresh)
        self.stats.duplicates += prepared.duplicates
        return None

    def _resolve(self, group: list[Submission], outcome: BaseException | None) -> None:
        for submission in group:
            self.queue.task_done()
            if submission.done.done():  # its waiter went away and cancelled it
                continue
            if outcome is None:
                submission.done.set_result(None)
            else:
                submission.done.set_exception(outcome)
                # Seen: a client that went away never awaits its outcome, and asyncio would
                # log the failure as never retrieved (a waiter still gets it).
                submission.done.exception()

    async def drain(self) -> None:
        """Wait until every queued batch is committed (or has failed)."""
        await self.queue.join()
