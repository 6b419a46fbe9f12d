"""The pipeline: group commit of submitted batches over a real store, acks after commit,
failures, back-pressure and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rtserver.config.schema import IngestConfig
from rtserver.engine.pipeline import Pipeline
from rtserver.errors import StorageUnavailable, StoreError
from rtserver.model.events import Event, parse_event
from rtserver.store.database import Store
from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT


def batch(count: int, **fields: Any) -> list[Event]:
    """``count`` fresh events, built as the server-side API builds them."""
    return [parse_event(event(**fields), IngestConfig(), source="server") for _ in range(count)]


def big_batch(count: int) -> list[Event]:
    """Events large enough to need new database pages."""
    return batch(count, properties={"blob": "x" * 4000})


def committed_count(path: Path) -> int:
    """Events committed to the file, seen from a separate plain sqlite3 connection."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


async def outcomes(*futures: asyncio.Future[None]) -> list[BaseException | None]:
    """What each future resolved with (None: committed), bounded in time."""
    async with asyncio.timeout(TIMEOUT_UNIT):
        return list(await asyncio.gather(*futures, return_exceptions=True))


@contextlib.asynccontextmanager
async def running(pipeline: Pipeline) -> AsyncIterator[asyncio.Task[None]]:
    """The pipeline's task, cancelled on exit as the lifespan does."""
    task = asyncio.create_task(pipeline.run(), name="pipeline")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_pipeline(
    store: Store, *, max_queue: int = 64, max_group_events: int = 1000, timeout_s: float = 5.0
) -> Pipeline:
    return Pipeline(
        store, max_queue=max_queue, max_group_events=max_group_events, queue_timeout_s=timeout_s
    )


async def test_future_resolves_only_after_commit(store: Store, db_path: Path) -> None:
    """A batch's future resolves once its events are committed, and not before."""
    pipeline = make_pipeline(store)
    done = await pipeline.submit(batch(3), 1000.0)
    seen_at_resolution: list[int] = []
    done.add_done_callback(lambda _: seen_at_resolution.append(committed_count(db_path)))
    assert not done.done()
    assert committed_count(db_path) == 0
    async with running(pipeline):
        assert await outcomes(done) == [None]
    assert seen_at_resolution == [3]


async def test_batches_queued_before_the_run_commit_in_one_group(store: Store) -> None:
    """Every batch waiting when the pipeline takes a group goes into one transaction."""
    pipeline = make_pipeline(store)
    futures = [await pipeline.submit(batch(n), 1000.0) for n in (1, 2, 3)]
    async with running(pipeline):
        assert await outcomes(*futures) == [None, None, None]
    assert (pipeline.stats.commits, pipeline.stats.stored) == (1, 6)
    assert await store.count_events() == 6


async def test_each_batch_keeps_its_receive_time(store: Store, db_path: Path) -> None:
    """Events of one group are stored with the receive time of their own batch."""
    pipeline = make_pipeline(store)
    futures = [await pipeline.submit(batch(1), 10.0), await pipeline.submit(batch(2), 20.0)]
    async with running(pipeline):
        await outcomes(*futures)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT received_at FROM events ORDER BY seq").fetchall()
    assert rows == [(10.0,), (20.0,), (20.0,)]


async def test_max_group_events_splits_groups(store: Store) -> None:
    """A group holds at most max_group_events; a bigger batch is committed alone."""
    pipeline = make_pipeline(store, max_group_events=3)
    sizes = (2, 1, 2, 3, 5, 1)  # groups: [2, 1], [2], [3], [5], [1]
    futures = [await pipeline.submit(batch(n), 1000.0) for n in sizes]
    async with running(pipeline):
        assert await outcomes(*futures) == [None] * len(sizes)
    assert (pipeline.stats.commits, pipeline.stats.stored) == (5, sum(sizes))


async def test_storage_unavailable_nacks_the_group_and_the_pipeline_recovers(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk full: every future of the group gets StorageUnavailable; once there is room
    again, the next group commits."""
    pipeline = make_pipeline(store)
    pages = (await store._db.execute_fetchall("PRAGMA page_count"))[0][0]  # type: ignore[index]
    await store._db.execute(f"PRAGMA max_page_count = {pages}")
    first, second = big_batch(10), big_batch(10)
    futures = [await pipeline.submit(first, 1.0), await pipeline.submit(second, 1.0)]
    async with running(pipeline):
        results = await outcomes(*futures)
        assert all(isinstance(r, StorageUnavailable) for r in results)
        assert results[0] is results[1]  # one group, one outcome
        assert await store.count_events() == 0
        assert "commit of 20 events failed" in caplog.text

        await store._db.execute("PRAGMA max_page_count = 1073741823")
        retried = [await pipeline.submit(first, 2.0), await pipeline.submit(second, 2.0)]
        assert await outcomes(*retried) == [None, None]
    assert await store.count_events() == 20
    assert (pipeline.stats.failed_commits, pipeline.stats.commits) == (1, 1)


async def test_unexpected_error_is_logged_and_the_loop_goes_on(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception that is not a StoreError resolves the group with StoreError, is logged
    with its traceback, and the pipeline keeps committing."""
    broken = await Store.open(tmp_path / "broken.db")
    await broken._db.close()  # its prepare now raises ValueError
    pipeline = make_pipeline(broken)
    try:
        async with running(pipeline) as task:
            [result] = await outcomes(await pipeline.submit(batch(2), 1.0))
            assert type(result) is StoreError
            assert "failed unexpectedly" in caplog.text
            assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
            assert not task.done()

            pipeline.store = store
            assert await outcomes(await pipeline.submit(batch(2), 2.0)) == [None]
    finally:
        await broken.close()
    assert (pipeline.stats.failed_commits, pipeline.stats.commits) == (1, 1)
    assert await store.count_events() == 2


async def test_a_poison_batch_fails_alone(store: Store) -> None:
    """A group failing for good is retried batch by batch, so only the bad batch fails."""
    await store._db.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.message_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poison event'); END"
    )
    pipeline = make_pipeline(store)
    poison = parse_event(event(messageId="poison"), IngestConfig())
    futures = [
        await pipeline.submit(batch(2), 1.0),
        await pipeline.submit([*batch(1), poison], 1.0),
        await pipeline.submit(batch(1), 1.0),
    ]
    async with running(pipeline):
        good, bad, also_good = await outcomes(*futures)
    assert (good, also_good) == (None, None)
    assert type(bad) is StoreError
    assert "poison event" in str(bad)
    assert await store.count_events() == 3
    assert (pipeline.stats.commits, pipeline.stats.failed_commits) == (2, 2)


async def test_stopping_while_retrying_alone_fails_the_rest(store: Store) -> None:
    """Cancelled while retrying a failed group batch by batch, the batches not yet retried
    get StorageUnavailable (the one being retried may have committed just before)."""
    await store._db.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.message_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poison event'); END"
    )
    pipeline = make_pipeline(store)
    poison = parse_event(event(messageId="poison"), IngestConfig())
    futures = [
        await pipeline.submit([poison], 1.0),
        await pipeline.submit(batch(1), 1.0),
        await pipeline.submit(batch(1), 1.0),
    ]
    task = asyncio.create_task(pipeline.run(), name="pipeline")
    [bad] = await outcomes(futures[0])
    assert type(bad) is StoreError
    # The task went straight on to retry the second batch alone and waits inside the store.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    retried, rest = await outcomes(*futures[1:])
    assert retried is None or isinstance(retried, StorageUnavailable)
    assert isinstance(rest, StorageUnavailable)
    async with asyncio.timeout(TIMEOUT_UNIT):
        await pipeline.drain()
    # The batch being retried may still commit on the writer's thread (a trip there cannot be
    # interrupted): its client got a nack and resends, and the resend is deduplicated.
    stored = await store.count_events()
    assert stored == 1 if retried is None else stored in (0, 1)


async def test_submit_times_out_when_the_queue_stays_full(store: Store) -> None:
    """With no room in the bounded queue for queue_timeout_s, submit raises TimeoutError."""
    pipeline = make_pipeline(store, max_queue=1, timeout_s=0.01)
    await pipeline.submit(batch(1), 1.0)
    with pytest.raises(TimeoutError):
        await pipeline.submit(batch(1), 1.0)
    assert pipeline.queue.qsize() == 1


async def test_submit_waits_for_room_in_a_full_queue(store: Store) -> None:
    """A submit on a full queue waits until the pipeline takes a batch, then queues."""
    pipeline = make_pipeline(store, max_queue=1)
    first = await pipeline.submit(batch(1), 1.0)
    waiting = asyncio.create_task(pipeline.submit(batch(1), 1.0))
    async with running(pipeline):
        async with asyncio.timeout(TIMEOUT_UNIT):
            second = await waiting
        assert await outcomes(first, second) == [None, None]
    assert await store.count_events() == 2


async def test_drain_waits_until_queued_batches_are_committed(store: Store) -> None:
    """drain() returns once every queued batch is committed."""
    pipeline = make_pipeline(store, max_group_events=2)
    futures = [await pipeline.submit(batch(2), 1.0) for _ in range(3)]
    async with running(pipeline):
        async with asyncio.timeout(TIMEOUT_UNIT):
            await pipeline.drain()
        assert all(f.done() for f in futures)
        assert await store.count_events() == 6
        async with asyncio.timeout(TIMEOUT_UNIT):
            await pipeline.drain()  # nothing queued: at once


async def test_stats_count_stored_duplicates_and_commits(store: Store) -> None:
    """stats counts stored events, duplicates (within and across groups) and commits."""
    pipeline = make_pipeline(store)
    events = batch(3)
    async with running(pipeline):
        await outcomes(await pipeline.submit([*events, events[0]], 1.0))
        await outcomes(await pipeline.submit([events[1], *batch(1)], 2.0))
    stats = pipeline.stats
    assert (stats.stored, stats.duplicates, stats.commits, stats.failed_commits) == (4, 2, 2, 0)
    assert await store.count_events() == 4


async def test_cancelled_waiter_does_not_stop_the_group(store: Store) -> None:
    """A future cancelled by a client that went away is skipped; its batch is still stored."""
    pipeline = make_pipeline(store)
    gone = await pipeline.submit(batch(1), 1.0)
    kept = await pipeline.submit(batch(1), 1.0)
    gone.cancel()
    async with running(pipeline):
        assert await outcomes(kept) == [None]
    assert gone.cancelled()
    assert await store.count_events() == 2


async def test_stopping_fails_every_batch_not_committed(store: Store) -> None:
    """Cancelled mid-group, the pipeline resolves the group in flight, the batch held back
    and the queued ones with StorageUnavailable, so their clients resend (the group in flight
    may still commit on the writer's thread, or may have committed just before: an ack always
    means stored, a nack may be a batch stored anyway, deduplicated when it is resent)."""
    pipeline = make_pipeline(store, max_group_events=1)
    futures = [await pipeline.submit(batch(1), 1.0) for _ in range(4)]
    task = asyncio.create_task(pipeline.run(), name="pipeline")
    assert await outcomes(futures[0]) == [None]
    # The task went straight on to the next group and now waits inside the store.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    in_flight, *queued = await outcomes(*futures[1:])
    assert in_flight is None or isinstance(in_flight, StorageUnavailable)
    assert all(isinstance(r, StorageUnavailable) for r in queued)
    assert pipeline.queue.empty()
    async with asyncio.timeout(TIMEOUT_UNIT):
        await pipeline.drain()  # every batch is accounted for
    stored = await store.count_events()
    assert stored == 2 if in_flight is None else stored in (1, 2)
