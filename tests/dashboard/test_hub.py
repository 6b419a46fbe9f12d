"""The dashboard hub, driven directly: batching of commits into updates, the bounded queue that
drops a slow viewer, replay from Last-Event-ID, the ring's bound, snapshots and shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from rtserver.config.schema import IngestConfig
from rtserver.dashboard.hub import EVENTS_KEPT, Changed, Hub, HubClosed, TooManyViewers, Update
from rtserver.model.events import parse_event
from rtserver.store.changes import Changes, Prepared
from tests.support.dashboard import StopAfter
from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT


class Recorder:
    """A ``compose`` that records what it was given and answers with a counter."""

    def __init__(self) -> None:
        self.calls: list[Changed | None] = []
        self.fail = 0

    async def __call__(self, changed: Changed | None) -> dict[str, Any]:
        self.calls.append(changed)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("compose failed")
        if changed is None:
            return {"snapshot": True}
        return {
            "stored": changed.stored,
            "events": [e.message_id for e, _, _ in changed.events],
            "flags": [changed.timers, changed.runs, changed.mail],
        }


def commit(count: int, **changes: Any) -> tuple[Prepared, Changes]:
    events = [parse_event(event(), IngestConfig()) for _ in range(count)]
    prepared = Prepared(events, [1.0] * count, ["a:anon-1"] * count, [], 0)
    return prepared, Changes(**changes)


def data_of(update: Update | None) -> tuple[str, dict[str, Any]]:
    """The event kind and data of an update's frame."""
    assert update is not None
    lines = update.frame.decode().strip().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    assert fields["id"] == update.id
    return fields["event"], orjson.loads(fields["data"])


async def test_commits_are_batched_into_one_update() -> None:
    """Many commits between two updates make one update: all counted, the newest kept."""
    compose = Recorder()
    hub = Hub(compose)
    for _ in range(30):
        hub.on_commit(*commit(3))
    update = await hub.flush()
    kind, data = data_of(update)
    assert kind == "update" and data["stored"] == 90
    assert len(data["events"]) == EVENTS_KEPT
    assert data["flags"] == [False, False, False]
    assert len(compose.calls) == 1 and hub.seq == 1


async def test_commit_flags_what_changed() -> None:
    """Timers, runs (or steps) and outbox changes are flagged; the sender can touch too."""
    hub = Hub(Recorder())
    hub.on_commit(*commit(0, timers={"r1": None}))
    assert data_of(await hub.flush())[1]["flags"] == [True, False, False]
    hub.on_commit(*commit(0, steps=[("r", 1, "p", "w", "send", "{}", False, 1.0)]))
    assert data_of(await hub.flush())[1]["flags"] == [False, True, False]
    hub.on_commit(*commit(0, outbox=[("m",)]))
    assert data_of(await hub.flush())[1]["flags"] == [False, False, True]
    hub.touch(mail=True, timers=True, runs=True)
    assert data_of(await hub.flush())[1]["flags"] == [True, True, True]


async def test_a_new_viewer_starts_with_a_snapshot() -> None:
    """Without Last-Event-ID the first frame is a snapshot with the latest update's id."""
    hub = Hub(Recorder())
    await hub.flush()
    async with hub.subscribe() as subscription:
        first = subscription.queue.get_nowait()
        assert data_of(first) == ("snapshot", {"snapshot": True})
        assert first is not None and first.id == f"{hub.epoch}-1"
        update = await hub.flush()
        assert subscription.queue.get_nowait() is update
    assert not hub.subscribers


async def test_snapshot_is_composed_once_per_update() -> None:
    """Viewers (re)connecting at the same update share one snapshot."""
    compose = Recorder()
    hub = Hub(compose)
    async with hub.subscribe(), hub.subscribe(), hub.subscribe():
        assert compose.calls == [None]
    await hub.flush()
    async with hub.subscribe():
        assert compose.calls.count(None) == 2


async def test_resuming_viewer_gets_what_it_missed() -> None:
    """With a Last-Event-ID still in the ring, exactly the later updates are replayed."""
    hub = Hub(Recorder())
    updates = [await hub.flush() for _ in range(5)]
    assert all(u is not None for u in updates)
    async with hub.subscribe(updates[1].id) as subscription:  # type: ignore[union-attr]
        replayed = [subscription.queue.get_nowait() for _ in range(3)]
        assert replayed == updates[2:]
        assert subscription.queue.empty()
    async with hub.subscribe(updates[-1].id) as subscription:  # type: ignore[union-attr]
        assert subscription.queue.empty()  # up to date: nothing to send


async def test_pending_changes_are_published_before_a_replay() -> None:
    """Changes made while nobody watched reach a resuming viewer (not skipped)."""
    hub = Hub(Recorder())
    last = await hub.flush()
    hub.on_commit(*commit(2))
    assert last is not None
    async with hub.subscribe(last.id) as subscription:
        kind, data = data_of(subscription.queue.get_nowait())
    assert kind == "update" and data["stored"] == 2


@pytest.mark.parametrize(
    "last_id",
    ["", "nope", "000000-1", "{epoch}-x", "{epoch}-99", "{epoch}-1"],
    ids=["empty", "garbage", "other-epoch", "not-a-number", "from-the-future", "fell-off-ring"],
)
async def test_unreplayable_ids_get_a_snapshot(last_id: str) -> None:
    """An id from another run, a garbage one, or one the ring no longer reaches: snapshot."""
    hub = Hub(Recorder(), history=3)
    for _ in range(6):
        await hub.flush()
    assert len(hub.ring) == 3  # the ring is bounded
    async with hub.subscribe(last_id.format(epoch=hub.epoch)) as subscription:
        assert data_of(subscription.queue.get_nowait())[0] == "snapshot"
        assert subscription.queue.empty()


async def test_ring_edge_is_still_replayable() -> None:
    """The id just before the oldest kept update can still be replayed completely."""
    hub = Hub(Recorder(), history=3)
    updates = [await hub.flush() for _ in range(6)]
    async with hub.subscribe(updates[2].id) as subscription:  # type: ignore[union-attr]
        assert [subscription.queue.get_nowait() for _ in range(3)] == updates[3:]
    assert hub.replay(f"{hub.epoch}-0") is None  # before the edge: gone


async def test_a_long_replay_becomes_a_snapshot() -> None:
    """More missed updates than the viewer's queue holds: a snapshot instead."""
    hub = Hub(Recorder(), max_queue=3, history=100)
    first = await hub.flush()
    for _ in range(5):
        await hub.flush()
    assert first is not None
    async with hub.subscribe(first.id) as subscription:
        assert data_of(subscription.queue.get_nowait())[0] == "snapshot"


async def test_slow_viewer_is_dropped_and_others_keep_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full queue ends that viewer's stream (None), once; a reading viewer is unaffected."""
    hub = Hub(Recorder(), max_queue=3)
    caplog.set_level(logging.INFO, "rtserver.dashboard.hub")
    async with hub.subscribe() as slow, hub.subscribe() as fast:
        fast.queue.get_nowait()
        for _ in range(3):
            await hub.flush()
            fast.queue.get_nowait()
        assert slow.dropped and not fast.dropped
        assert slow.queue.get_nowait() is None and slow.queue.empty()
        assert hub.subscribers == {fast} and hub.dropped == 1
        await hub.flush()
        assert fast.queue.get_nowait() is not None
    assert "dropped" in caplog.text


async def test_viewer_limit() -> None:
    """Past ``max_subscribers`` a subscription is refused; leaving frees the place."""
    hub = Hub(Recorder(), max_subscribers=1)
    async with hub.subscribe():
        with pytest.raises(TooManyViewers):
            async with hub.subscribe():
                pass  # pragma: no cover
    async with hub.subscribe():
        pass


async def test_close_ends_every_stream_and_refuses_new_ones() -> None:
    """Shutdown: each queue ends with None (after nothing else), and subscribing fails."""
    hub = Hub(Recorder())
    async with hub.subscribe() as subscription:
        await hub.flush()
        hub.close()
        assert subscription.queue.get_nowait() is None
        assert not hub.subscribers
    with pytest.raises(HubClosed):
        async with hub.subscribe():
            pass  # pragma: no cover


async def test_failed_update_keeps_its_changes() -> None:
    """When composing fails, what changed is taken back and goes in the next update."""
    compose = Recorder()
    hub = Hub(compose)
    hub.on_commit(*commit(2, timers={"r": None}))
    compose.fail = 1
    with pytest.raises(RuntimeError):
        await hub.flush()
    hub.on_commit(*commit(1))
    data = data_of(await hub.flush())[1]
    assert data["stored"] == 3 and data["flags"][0] is True
    assert len(data["events"]) == 3


def test_absorbed_changes_stay_bounded() -> None:
    """Taking back changes keeps only the newest events, the older ones first in line."""
    older, newer = Changed(), Changed()
    older.events.extend((None, "old", float(i)) for i in range(EVENTS_KEPT))  # type: ignore[misc]
    newer.events.extend((None, "new", float(i)) for i in range(10))  # type: ignore[misc]
    older.stored, newer.stored, older.mail = EVENTS_KEPT, 10, True
    newer.absorb(older)
    assert len(newer.events) == EVENTS_KEPT and newer.stored == EVENTS_KEPT + 10
    assert [p for _, p, _ in newer.events][-10:] == ["new"] * 10 and newer.mail
    assert not Changed() and newer


async def test_snapshot_for_a_page_includes_pending_changes() -> None:
    """A page's snapshot first publishes pending changes, and names the latest update."""
    compose = Recorder()
    hub = Hub(compose)
    hub.on_commit(*commit(1))
    last_id, data = await hub.snapshot()
    assert last_id == f"{hub.epoch}-1" and data == {"snapshot": True}
    assert compose.calls[0] is not None and compose.calls[1] is None


async def test_run_publishes_while_someone_watches() -> None:
    """The batching task sends changes and idle ticks to viewers, survives a failing compose,
    and stops when told."""
    compose = Recorder()
    hub = Hub(compose, interval_s=0.001, idle_s=0.0)
    stop = asyncio.Event()
    async with hub.subscribe() as subscription:
        subscription.queue.get_nowait()  # the snapshot
        compose.fail = 1
        task = asyncio.create_task(hub.run(stop))
        hub.on_commit(*commit(2))
        async with asyncio.timeout(TIMEOUT_UNIT):
            kind, data = data_of(await subscription.queue.get())
        assert kind == "update" and data["stored"] == 2  # kept through the failure
        async with asyncio.timeout(TIMEOUT_UNIT):
            assert data_of(await subscription.queue.get())[1]["stored"] == 0  # an idle tick
    stop.set()
    await asyncio.wait_for(task, TIMEOUT_UNIT)


async def test_run_does_nothing_while_nobody_watches() -> None:
    """Without viewers the task composes nothing: changes wait for the next viewer."""
    compose = Recorder()
    hub = Hub(compose, interval_s=0.001, idle_s=0.0)
    hub.on_commit(*commit(1))
    await asyncio.wait_for(hub.run(StopAfter(20)), TIMEOUT_UNIT)
    assert compose.calls == [] and hub.seq == 0
